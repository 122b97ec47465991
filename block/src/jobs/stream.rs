//! block-stream: copy what a node reads from its backing chain (down to an optional base)
//! into the node itself, then make the base its backing file (QEMU's block/stream.c).
//!
//! The copy is a copy-on-read of each range that is unallocated in the node but allocated
//! above the base: the generic request path reads it from the chain and writes the same
//! bytes into the node, so the guest may keep writing meanwhile — its newer data is simply
//! allocated already and skipped. QEMU 10 reads through a copy-on-read filter node; here the
//! job marks its own reads copy-on-read on the node.

use std::rc::Rc;

use async_trait::async_trait;

use super::block_job::OnError;
use super::events::{ErrorAction, JobType};
use super::job::{Job, JobDriver};
use super::CommonOptions;
use crate::driver::{RequestFlags, StatusFlags};
use crate::error::Result;
use crate::graph::blockers::OpBlocker;
use crate::graph::reopen::FrozenChain;
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
    /// The backing file name to record instead of the base's filename.
    pub backing_file: Option<String>,
    /// What to do on read errors.
    pub on_error: OnError,
}

struct Stream {
    bs: Rc<BlockDriverState>,
    opts: StreamOptions,
}

/// Starts streaming into `bs` (stream_start).
pub fn stream_start(bs: &Rc<BlockDriverState>, opts: StreamOptions) -> Result<Rc<Job>> {
    if let Some(base) = &opts.base {
        super::check_in_chain(bs, base)?;
    }
    let blocker = OpBlocker::block_for_job(bs, JobType::Stream.name())?;
    let stream = Stream {
        bs: bs.clone(),
        opts: opts.clone(),
    };
    // The links from `bs` down to the node above the base stay while the job runs.
    let above_base = opts.base.as_ref().and_then(|b| super::find_overlay(bs, b));
    let frozen = FrozenChain::new(bs, above_base.as_ref());
    let job = opts
        .common
        .create(Box::new(stream), vec![Box::new(blocker), Box::new(frozen)])?;
    job.start();
    Ok(job)
}

impl Stream {
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
        let (status, _) = backing
            .co_block_status_above(self.opts.base.as_deref(), false, offset, n)
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
                    let buf = IoVector::alloc(n as usize);
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
        if self.bs.backing().is_none() {
            return Ok(());
        }
        // Everything above the base now lives in the node: drop the layers in between.
        super::set_backing(
            &self.bs,
            self.opts.base.as_ref(),
            self.opts.backing_file.as_deref(),
        )
        .await
    }
}
