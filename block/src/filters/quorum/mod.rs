//! quorum: a node that keeps the same data on several children and votes on what reads
//! return (QEMU's block/quorum.c).
//!
//! Writes, write-zeroes and flushes go to every child and succeed when at least
//! `vote-threshold` children succeed; otherwise the error most failing children returned is
//! the request's. Reads follow `read-pattern`: `quorum` (the default) reads every child and
//! returns the version of the data at least `vote-threshold` of them agree on, reporting the
//! children that disagreed and, with `rewrite-corrupted=on`, writing the winning data back
//! to them; no such version fails the read with EIO. `fifo` reads the first child and moves
//! to the next only when a read fails. `blkverify=on` (two children, threshold 2) treats any
//! difference between the two as fatal, as the blkverify driver does.
//!
//! Unlike the filters beside it, a quorum node has no single child to pass requests to; its
//! children are `children.0`, `children.1`..., each opened like any other node (an inline
//! description or the name of an existing node). How the node is opened and named is in
//! [`open`], the vote itself in [`vote`], what it reports in [`report`].

mod join;
mod open;
pub mod report;
pub mod vote;

use std::rc::Rc;

use async_trait::async_trait;

use crate::driver::{
    BlockDriver, BlockLimits, BlockStatus, DriverClass, RequestFlags, StatusFlags,
};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::BlockDriverState;
use join::join_all;
use report::OpType;
use vote::ReadVerdict;

/// The quorum driver class (`driver=quorum,vote-threshold=N,children.0...`).
pub static QUORUM: DriverClass = DriverClass {
    format_name: "quorum",
    protocol_name: None,
    is_format: false,
    probe: None,
    open: |bs, options| Box::pin(open::open(bs, options)),
    create: None,
    create_options: &[],
};

/// How reads pick the children they read (QuorumReadPattern).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPattern {
    /// Read every child and vote.
    Quorum,
    /// Read the first child, the next one only if that fails.
    Fifo,
}

/// An open quorum node (BDRVQuorumState).
pub struct Quorum {
    /// The children in index order (`children.0` first).
    children: Vec<Rc<BlockDriverState>>,
    /// How many children must agree, or succeed (vote-threshold).
    threshold: usize,
    /// Any difference between the two children ends the process (blkverify=on).
    blkverify: bool,
    /// Children out-voted on a read get the winning data written back.
    rewrite_corrupted: bool,
    read_pattern: ReadPattern,
}

impl Quorum {
    /// The children, `children.0` first.
    pub fn children(&self) -> &[Rc<BlockDriverState>] {
        &self.children
    }

    /// The outcome of a request every child was sent (quorum_has_too_much_io_failed): the
    /// failures are reported, and with fewer than `threshold` successes the request fails
    /// with the error most of the failures share.
    fn tally(
        &self,
        op: OpType,
        offset: u64,
        bytes: u64,
        results: Vec<Result<()>>,
    ) -> (Vec<usize>, Result<()>) {
        let mut ok = Vec::new();
        let mut failures = Vec::new();
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Ok(()) => ok.push(i),
                Err(e) => {
                    report::bad(op, offset, bytes, &self.children[i], Some(&e));
                    failures.push((i, e));
                }
            }
        }
        let verdict = if ok.len() >= self.threshold {
            Ok(())
        } else {
            Err(vote::vote_error(&failures).unwrap_or_else(|| Error::from_errno(libc::EIO)))
        };
        (ok, verdict)
    }

    /// Reads every child and votes (read_quorum_children + quorum_vote).
    async fn read_quorum(&self, bs: &BlockDriverState, offset: u64, qiov: &IoVector) -> Result<()> {
        let len = qiov.len();
        let bufs: Vec<IoVector> = self.children.iter().map(|_| IoVector::alloc(len)).collect();
        let results = join_all(
            self.children
                .iter()
                .zip(&bufs)
                .map(|(child, buf)| child.co_preadv(offset, buf, RequestFlags::empty()))
                .collect(),
        )
        .await;
        let (ok, verdict) = self.tally(OpType::Read, offset, len as u64, results);
        verdict?;
        // Buffers of one length from one allocator are split alike: comparing the pieces
        // compares the data.
        let same = |a: usize, b: usize| bufs[a].slices() == bufs[b].slices();
        if self.blkverify {
            if let [a, b] = ok[..] {
                if let Some(at) = bufs[a].compare(&bufs[b]) {
                    blkverify_mismatch(offset, len as u64, offset + at as u64);
                }
            }
        }
        match vote::decide_read(&ok, self.threshold, same) {
            ReadVerdict::Data { index, bad } => {
                qiov.copy_from(0, &bufs[index], 0, len);
                for &i in &bad {
                    report::bad(OpType::Read, offset, len as u64, &self.children[i], None);
                }
                if self.rewrite_corrupted && !bad.is_empty() {
                    self.rewrite(offset, &bufs[index], &bad).await;
                }
                Ok(())
            }
            ReadVerdict::NoQuorum => {
                report::failure(bs, offset, len as u64);
                Err(Error::from_errno(libc::EIO))
            }
        }
    }

    /// Writes the winning data over the children that returned something else
    /// (quorum_rewrite_bad_versions). Failures are ignored: this only tries to repair data
    /// already known to be corrupted, and the read itself has its answer.
    async fn rewrite(&self, offset: u64, data: &IoVector, bad: &[usize]) {
        join_all(
            bad.iter()
                .map(|&i| self.children[i].co_pwritev(offset, data, RequestFlags::empty()))
                .collect(),
        )
        .await;
    }

    /// Reads the children in order until one succeeds (read_fifo_child).
    async fn read_fifo(&self, offset: u64, qiov: &IoVector) -> Result<()> {
        let mut last = Error::from_errno(libc::EIO);
        for child in &self.children {
            match child.co_preadv(offset, qiov, RequestFlags::empty()).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    report::bad(OpType::Read, offset, qiov.len() as u64, child, Some(&e));
                    last = e;
                }
            }
        }
        Err(last)
    }
}

/// blkverify mode found the children differ: like QEMU, say where and end the process,
/// since the point of the mode is to stop at the first divergence.
fn blkverify_mismatch(offset: u64, bytes: u64, at: u64) -> ! {
    eprintln!("quorum: offset={offset} bytes={bytes} contents mismatch at offset {at}");
    std::process::exit(1)
}

#[async_trait(?Send)]
impl BlockDriver for Quorum {
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        match self.read_pattern {
            ReadPattern::Quorum => self.read_quorum(bs, offset, qiov).await,
            ReadPattern::Fifo => self.read_fifo(offset, qiov).await,
        }
    }

    async fn co_pwritev(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        let results = join_all(
            self.children
                .iter()
                .map(|child| child.co_pwritev(offset, qiov, flags))
                .collect(),
        )
        .await;
        self.tally(OpType::Write, offset, qiov.len() as u64, results)
            .1
    }

    async fn co_pwrite_zeroes(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        let flags = flags - RequestFlags::ZERO_WRITE;
        let results = join_all(
            self.children
                .iter()
                .map(|child| child.co_pwrite_zeroes(offset, bytes, flags))
                .collect(),
        )
        .await;
        self.tally(OpType::Write, offset, bytes, results).1
    }

    async fn co_flush(&self, _bs: &BlockDriverState) -> Option<Result<()>> {
        // One child after the other, as QEMU's quorum_co_flush, and voted on like a write.
        let mut failures = Vec::new();
        for (i, child) in self.children.iter().enumerate() {
            if let Err(e) = child.co_flush().await {
                report::bad(OpType::Flush, 0, 0, child, Some(&e));
                failures.push((i, e));
            }
        }
        let succeeded = self.children.len() - failures.len();
        Some(match vote::vote_error(&failures) {
            Some(e) if succeeded < self.threshold => Err(e),
            _ => Ok(()),
        })
    }

    async fn co_block_status(
        &self,
        _bs: &BlockDriverState,
        want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        // The children may disagree on how far an answer holds: zeroes are claimed only as
        // far as every child reads zeroes, data as far as any child has data.
        let mut zero_bytes = bytes;
        let mut data_bytes = 0;
        for child in &self.children {
            match child
                .co_block_status_above(None, want_zero, offset, bytes)
                .await
            {
                Ok((status, _)) if status.flags.contains(StatusFlags::ZERO) => {
                    zero_bytes = zero_bytes.min(status.bytes);
                }
                Ok((status, _)) => data_bytes = data_bytes.max(status.bytes),
                Err(e) => {
                    report::bad(OpType::Read, offset, bytes, child, Some(&e));
                    data_bytes = bytes;
                    break;
                }
            }
        }
        Ok(if data_bytes > 0 {
            BlockStatus::new(StatusFlags::DATA, data_bytes)
        } else {
            BlockStatus::new(StatusFlags::ZERO, zero_bytes)
        })
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        // A quorum only makes sense over children of one size.
        let first = self.children[0].getlength();
        if self.children.iter().any(|c| c.getlength() != first) {
            return Err(Error::from_errno(libc::EIO));
        }
        Ok(first)
    }

    async fn co_get_allocated_file_size(&self, _bs: &BlockDriverState) -> Result<Option<u64>> {
        // What the children hold together (bdrv_sum_allocated_file_size).
        let mut total = None;
        for child in &self.children {
            if let Some(n) = child.co_get_allocated_file_size().await? {
                total = Some(total.unwrap_or(0) + n);
            }
        }
        Ok(total)
    }

    fn refresh_limits(&self, _bs: &BlockDriverState) -> BlockLimits {
        // What every child can take (bdrv_merge_limits over the data children).
        let mut limits = BlockLimits::default();
        for child in &self.children {
            let c = child.limits();
            limits.request_alignment = limits.request_alignment.max(c.request_alignment);
            limits.max_transfer = match (limits.max_transfer, c.max_transfer) {
                (0, m) | (m, 0) => m,
                (a, b) => a.min(b),
            };
            limits.pwrite_zeroes_alignment = limits
                .pwrite_zeroes_alignment
                .max(c.pwrite_zeroes_alignment);
            limits.pdiscard_alignment = limits.pdiscard_alignment.max(c.pdiscard_alignment);
            limits.min_mem_alignment = limits.min_mem_alignment.max(c.min_mem_alignment);
        }
        limits
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
