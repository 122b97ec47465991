//! block-stream: copy what a node reads from its backing chain (down to an optional base)
//! into the node itself, then make the base its backing file (QEMU's block/stream.c).
//!
//! The copy is a copy-on-read of each range that is unallocated in the node but allocated
//! above the base: the generic request path reads it from the chain and writes the same
//! bytes into the node, so the guest may keep writing meanwhile — its newer data is simply
//! allocated already and skipped. QEMU 10 reads through a copy-on-read filter node; here the
//! job marks its own reads copy-on-read on the node, and the filter QEMU inserts above it
//! (driver `copy-on-read`, named by `filter-node-name`) only passes requests through, so that
//! the graph, its node names and the jobs it blocks look as they do in QEMU.
//!
//! The job remembers the node just above the base rather than the base (s->above_base):
//! another job may replace what lies below it (a commit finishing there), and the node then
//! backs onto whatever is below that node when this job ends.

use std::cell::RefCell;
use std::rc::Rc;

use async_trait::async_trait;

use super::block_job::OnError;
use super::events::{ErrorAction, JobType};
use super::job::{Job, JobDriver};
use super::CommonOptions;
use crate::driver::{DriverClass, RequestFlags, StatusFlags};
use crate::error::Result;
use crate::graph::blockers::{check_not_busy, OpBlocker};
use crate::graph::permissions::{self, Perm};
use crate::graph::reopen::{FrozenChain, ReadWriteClaim};
use crate::iov::IoVector;
use crate::node::BlockDriverState;
use crate::trace;

/// The bytes examined per iteration (STREAM_CHUNK).
const STREAM_CHUNK: u64 = 512 << 10;

/// The arguments of block-stream.
#[derive(Clone, Debug, Default)]
pub struct StreamOptions {
    /// Id, speed, finalize/dismiss flags.
    pub common: CommonOptions,
    /// The node that stays as backing file; `None` streams the whole chain.
    pub base: Option<Rc<BlockDriverState>>,
    /// The lowest node to copy from, instead of `base` (its backing file stays).
    pub bottom: Option<Rc<BlockDriverState>>,
    /// Name of the filter node inserted above the streamed node.
    pub filter_node_name: Option<String>,
    /// The backing file name to record instead of the base's filename.
    pub backing_file: Option<String>,
    /// What to do on read errors.
    pub on_error: OnError,
}

/// The filter above the streamed node (QEMU's is the copy-on-read driver).
pub static STREAM_TOP: DriverClass = super::top_filter::top_class("copy-on-read");

struct Stream {
    bs: Rc<BlockDriverState>,
    /// The lowest node copied from; `None`: the whole chain.
    above_base: Option<Rc<BlockDriverState>>,
    opts: StreamOptions,
    filter: RefCell<Option<Rc<BlockDriverState>>>,
    /// What the filter's link takes on `bs` (cor_child_perm's write-unchanged): the node
    /// cannot be made read-only under the job. Given up with the filter.
    filter_perm: RefCell<Option<permissions::PermHandle>>,
    /// The node made writable for the job, made read-only again at the end.
    /// Shared with [`start`], which undoes it when the job cannot be created.
    reopened: Rc<RefCell<Option<ReadWriteClaim>>>,
    /// The buffer the copy-on-read fills, one for the whole job (a fresh one per chunk
    /// costs its page faults every time).
    buf: IoVector,
}

/// The nodes from `bs` down to `above_base` (all of the chain without one), each with the
/// job's blocker. As qmp_block_stream and stream_start check, in this order: no node on the
/// way is busy, then no link on the way belongs to another job's filter (which cannot be
/// frozen, QEMU's never_freeze).
fn claim_chain(
    bs: &Rc<BlockDriverState>,
    above_base: Option<&Rc<BlockDriverState>>,
) -> Result<Vec<Box<dyn std::any::Any>>> {
    let mut nodes = vec![bs.clone()];
    loop {
        let node = nodes.last().expect("not empty");
        if above_base.is_some_and(|a| Rc::ptr_eq(a, node)) {
            break;
        }
        match node.backing() {
            Some(below) => nodes.push(below),
            None => break,
        }
    }
    for node in &nodes {
        check_not_busy(node)?;
    }
    for node in nodes.iter().skip(1) {
        if super::top_filter::is_job_filter(node) {
            return Err(crate::error::Error::invalid(format!(
                "Cannot freeze 'backing' link to '{}'",
                node.node_name()
            )));
        }
    }
    let mut claims: Vec<Box<dyn std::any::Any>> = Vec::new();
    for node in &nodes {
        claims.push(Box::new(OpBlocker::block_for_job(
            node,
            JobType::Stream.name(),
        )?));
    }
    // The links from `bs` down to the node above the base stay while the job runs
    // (bdrv_freeze_backing_chain): a reopen may not change them.
    claims.push(Box::new(FrozenChain::new(bs, above_base)));
    Ok(claims)
}

/// Starts streaming into `bs` (stream_start).
pub async fn stream_start(bs: &Rc<BlockDriverState>, opts: StreamOptions) -> Result<Rc<Job>> {
    let above_base = match (&opts.bottom, &opts.base) {
        (Some(bottom), _) => Some(bottom.clone()),
        (None, Some(base)) => {
            super::check_in_chain(bs, base)?;
            super::find_overlay(bs, base)
        }
        (None, None) => None,
    };
    if above_base.as_ref().is_some_and(|a| Rc::ptr_eq(a, bs)) {
        // Nothing lies between the node and its base: nothing to copy, nothing to block.
        let claims = vec![
            Box::new(OpBlocker::block_for_job(bs, JobType::Stream.name())?)
                as Box<dyn std::any::Any>,
        ];
        return start(bs, above_base, opts, claims, None, None).await;
    }
    let mut claims = claim_chain(bs, above_base.as_ref())?;
    let reopened = ReadWriteClaim::take(bs).await?;
    let filter =
        match super::top_filter::insert(bs, &STREAM_TOP, opts.filter_node_name.clone(), None).await
        {
            Ok(f) => f,
            Err(e) => {
                if let Some(r) = reopened {
                    r.restore().await;
                }
                return Err(e);
            }
        };
    let filter_perm = permissions::claim(
        bs,
        &permissions::node_user(&filter),
        "backing",
        Perm::WRITE_UNCHANGED,
        Perm::all(),
    );
    let filter_perm = match filter_perm
        .and_then(|p| OpBlocker::block_for_job(&filter, JobType::Stream.name()).map(|b| (p, b)))
    {
        Ok((p, b)) => {
            claims.push(Box::new(b));
            p
        }
        Err(e) => {
            crate::graph::replace::drop_filter(&filter);
            if let Some(r) = reopened {
                r.restore().await;
            }
            return Err(e);
        }
    };
    let filter = Some((filter, filter_perm));
    start(bs, above_base, opts, claims, filter, reopened).await
}

async fn start(
    bs: &Rc<BlockDriverState>,
    above_base: Option<Rc<BlockDriverState>>,
    opts: StreamOptions,
    claims: Vec<Box<dyn std::any::Any>>,
    filter: Option<(Rc<BlockDriverState>, permissions::PermHandle)>,
    reopened: Option<ReadWriteClaim>,
) -> Result<Rc<Job>> {
    let (filter, filter_perm) = filter.unzip();
    let stream = Stream {
        bs: bs.clone(),
        above_base,
        opts: opts.clone(),
        filter: RefCell::new(filter.clone()),
        filter_perm: RefCell::new(filter_perm),
        reopened: Rc::new(RefCell::new(reopened)),
        buf: IoVector::alloc(STREAM_CHUNK as usize),
    };
    let restore = stream.reopened.clone();
    // A job that cannot be created (a bad id) never runs its clean: undo the filter and
    // the reopen here.
    match opts.common.create(Box::new(stream), claims) {
        Ok(job) => {
            job.start();
            Ok(job)
        }
        Err(e) => {
            if let Some(f) = filter {
                crate::graph::replace::drop_filter(&f);
            }
            let reopened = restore.borrow_mut().take();
            if let Some(r) = reopened {
                r.restore().await;
            }
            Err(e)
        }
    }
}

impl Stream {
    /// The node that stays below: what lies below `above_base` now (bdrv_filter_or_cow_bs).
    fn base(&self) -> Option<Rc<BlockDriverState>> {
        self.above_base.as_ref().and_then(|a| a.backing())
    }

    fn remove_filter(&self) {
        self.filter_perm.borrow_mut().take();
        if let Some(filter) = self.filter.borrow_mut().take() {
            crate::graph::replace::drop_filter(&filter);
        }
    }

    /// Whether the range at `offset` needs copying, and how long the answer holds.
    async fn needs_copy(&self, offset: u64, len: u64) -> Result<(bool, u64)> {
        let want = STREAM_CHUNK.min(len - offset);
        let (allocated, n) = self.bs.co_is_allocated(offset, want).await?;
        if allocated {
            return Ok((false, n));
        }
        let Some(backing) = self.bs.backing() else {
            return Ok((false, n));
        };
        let base = self.base();
        let (status, _) = backing
            .co_block_status_above(base.as_deref(), false, offset, n)
            .await?;
        if status.bytes == 0 {
            // Past the end of the backing chain: nothing more to copy.
            return Ok((false, len - offset));
        }
        Ok((status.flags.contains(StatusFlags::ALLOCATED), status.bytes))
    }
}

#[async_trait(?Send)]
impl JobDriver for Stream {
    fn job_type(&self) -> JobType {
        JobType::Stream
    }

    async fn run(&self, job: &Rc<Job>) -> Result<()> {
        if self
            .above_base
            .as_ref()
            .is_some_and(|a| Rc::ptr_eq(a, &self.bs))
        {
            // The base is the node's own backing file: nothing to stream.
            return Ok(());
        }
        let len = self.bs.getlength();
        job.progress_set_remaining(len);
        let mut error = None;
        let mut offset = 0;
        while offset < len {
            // Yield with no request pending, even without a limit: pauses and cancels land.
            job.ratelimit_sleep().await;
            if job.is_cancelled() {
                break;
            }
            let mut copy = false;
            let mut result = self.needs_copy(offset, len).await;
            let mut n = *result.as_ref().map(|(_, n)| n).unwrap_or(&0);
            if let Ok((c, _)) = result {
                copy = c;
                trace!(
                    stream_one_iteration,
                    "job {} offset {} bytes {} copy {}",
                    job.id(),
                    offset,
                    n,
                    copy
                );
                if copy {
                    let buf = self.buf.slice(0, n as usize);
                    result = self
                        .bs
                        .co_preadv(offset, &buf, RequestFlags::COPY_ON_READ)
                        .await
                        .map(|_| (true, n));
                }
            }
            if let Err(e) = result {
                match job.error_action(self.opts.on_error, true, e.errno()) {
                    ErrorAction::Stop => continue,
                    ErrorAction::Report => return Err(e),
                    ErrorAction::Ignore => {
                        error.get_or_insert(e);
                        n = n.max(512).min(len - offset);
                    }
                }
            }
            job.progress_update(n);
            if copy {
                job.ratelimit_processed_bytes(n);
            }
            offset += n;
        }
        error.map_or(Ok(()), Err)
    }

    async fn prepare(&self, _job: &Rc<Job>) -> Result<()> {
        self.remove_filter();
        if self.bs.backing().is_none() {
            return Ok(());
        }
        if self
            .above_base
            .as_ref()
            .is_some_and(|a| Rc::ptr_eq(a, &self.bs))
        {
            return Ok(());
        }
        // Everything above the base now lives in the node: drop the layers in between.
        let base = self.base();
        super::set_backing(&self.bs, base.as_ref(), self.opts.backing_file.as_deref()).await
    }

    async fn clean(&self, _job: &Rc<Job>) {
        self.remove_filter();
        let reopened = self.reopened.borrow_mut().take();
        if let Some(r) = reopened {
            r.restore().await;
        }
    }
}
