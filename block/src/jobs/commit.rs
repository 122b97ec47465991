//! block-commit of an intermediate layer: copy what `top` and the layers down to `base`
//! hold into `base`, then drop them from the chain (QEMU's block/commit.c). Committing the
//! active layer — the one the guest writes — is a mirror instead ([`super::mirror`]'s
//! `commit_active_start`), because the guest keeps dirtying it.
//!
//! While it runs, a `commit_top` filter sits above `top`, where the overlay's backing link
//! pointed. When done the overlay is re-linked onto `base` in the graph and in its header.

use std::cell::RefCell;
use std::rc::Rc;

use async_trait::async_trait;

use super::block_job::OnError;
use super::events::{ErrorAction, JobType};
use super::job::{Job, JobDriver};
use super::CommonOptions;
use crate::driver::{PreallocMode, RequestFlags, StatusFlags};
use crate::error::{Error, Result};
use crate::graph::blockers::{check_not_busy, OpBlocker};
use crate::graph::permissions::{self, Perm};
use crate::graph::reopen::{FrozenChain, ReadWriteClaim};
use crate::iov::IoVector;
use crate::node::BlockDriverState;
use crate::trace;

/// The bytes copied per iteration (COMMIT_BUFFER_SIZE).
const COMMIT_BUFFER_SIZE: u64 = 512 << 10;

/// The arguments of block-commit.
#[derive(Clone, Debug, Default)]
pub struct CommitOptions {
    /// Id, speed, finalize/dismiss flags.
    pub common: CommonOptions,
    /// The backing file name the overlay records for `base`.
    pub backing_file: Option<String>,
    /// Name of the commit_top filter node.
    pub filter_node_name: Option<String>,
    /// What to do on I/O errors.
    pub on_error: OnError,
}

struct Commit {
    active: Rc<BlockDriverState>,
    top: Rc<BlockDriverState>,
    base: Rc<BlockDriverState>,
    opts: CommitOptions,
    filter: RefCell<Option<Rc<BlockDriverState>>>,
    /// The base and the overlay, made writable for the job when they were read-only.
    /// Shared with [`commit_start`], which undoes it when the job cannot be created.
    reopened: Rc<RefCell<Vec<ReadWriteClaim>>>,
    /// The job's write permission on the base, given up before the base is made
    /// read-only again (a read-only node may have no writer).
    base_write: RefCell<Option<permissions::PermHandle>>,
    /// The copy buffer, one for the whole job: a fresh 512 KiB buffer per iteration costs
    /// its page faults every time (QEMU's commit_run allocates its buffer once too).
    buf: IoVector,
}

/// Starts committing `top` (below the active layer `active`) into `base` (commit_start).
pub async fn commit_start(
    active: &Rc<BlockDriverState>,
    top: &Rc<BlockDriverState>,
    base: &Rc<BlockDriverState>,
    opts: CommitOptions,
) -> Result<Rc<Job>> {
    if Rc::ptr_eq(top, base) {
        return Err(Error::invalid("cannot commit an image into itself"));
    }
    if Rc::ptr_eq(active, top) {
        return Err(Error::invalid(
            "Top image is the active layer: commit it with commit_active_start",
        ));
    }
    super::check_in_chain(active, top)?;
    super::check_in_chain(top, base)?;
    let overlay = super::find_overlay(active, top).expect("top is in the chain");
    // The layers from top down to the base are the job's, and so is the active layer (as
    // in QEMU, even though only the overlay's link changes); the overlay must not be busy.
    let mut layers = vec![top.clone()];
    while !Rc::ptr_eq(layers.last().expect("not empty"), base) {
        let below = layers.last().and_then(|n| super::filter_or_cow(n));
        layers.push(below.expect("base is below top"));
    }
    for node in &layers {
        check_not_busy(node)?;
    }
    check_not_busy(&overlay)?;
    let mut claims: Vec<Box<dyn std::any::Any>> = Vec::new();
    // The job belongs to the device's node, which is blocked whatever part of its chain is
    // committed (block_job_create on the active layer), the overlay of top included.
    claims.push(Box::new(OpBlocker::block_for_job(active, "commit")?));
    for node in &layers {
        claims.push(Box::new(OpBlocker::block_for_job(node, "commit")?));
    }
    let mut reopened = Vec::new();
    for node in [base, &overlay] {
        match ReadWriteClaim::take(node).await {
            Ok(r) => reopened.extend(r),
            Err(e) => {
                for r in reopened {
                    ReadWriteClaim::restore(r).await;
                }
                return Err(e);
            }
        }
    }
    let mut base_write = None;
    let user = format!(
        "commit job '{}'",
        opts.common.job_id.as_deref().unwrap_or("")
    );
    let claimed = permissions::claim(
        base,
        &user,
        "base",
        Perm::WRITE | Perm::RESIZE | Perm::CONSISTENT_READ,
        Perm::CONSISTENT_READ | Perm::WRITE_UNCHANGED,
    );
    let filter = match claimed {
        Ok(c) => {
            base_write = Some(c);
            super::top_filter::insert(
                top,
                &super::top_filter::COMMIT_TOP,
                opts.filter_node_name.clone(),
                None,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            drop(base_write);
            for r in reopened {
                r.restore().await;
            }
            return Err(e);
        }
    };
    // The links from the filter down to the base stay while the job runs.
    claims.push(Box::new(FrozenChain::new(&filter, Some(base))));
    let common = opts.common.clone();
    let commit = Commit {
        active: active.clone(),
        top: top.clone(),
        base: base.clone(),
        opts,
        filter: RefCell::new(Some(filter.clone())),
        reopened: Rc::new(RefCell::new(reopened)),
        base_write: RefCell::new(base_write),
        buf: IoVector::alloc(COMMIT_BUFFER_SIZE as usize),
    };
    let restore = commit.reopened.clone();
    let job = common.create(Box::new(commit), claims);
    match job {
        Ok(job) => {
            job.start();
            Ok(job)
        }
        Err(e) => {
            crate::graph::replace::drop_filter(&filter);
            let reopened = std::mem::take(&mut *restore.borrow_mut());
            for r in reopened {
                r.restore().await;
            }
            Err(e)
        }
    }
}

impl Commit {
    /// Copies one stretch: returns how many bytes it covered and whether it copied them.
    async fn one_iteration(&self, offset: u64, len: u64) -> (Result<()>, u64, bool, bool) {
        let want = COMMIT_BUFFER_SIZE.min(len - offset);
        let status = self
            .top
            .co_block_status_above(Some(&self.base), false, offset, want)
            .await;
        let (status, _) = match status {
            Ok(s) => s,
            Err(e) => return (Err(e), 0, false, true),
        };
        let n = status.bytes.max(1).min(want);
        let copy = status.flags.contains(StatusFlags::ALLOCATED);
        trace!(
            commit_one_iteration,
            "job {:p} offset {} bytes {} is_allocated {}",
            self,
            offset,
            n,
            copy
        );
        if !copy {
            return (Ok(()), n, false, true);
        }
        let buf = self.buf.slice(0, n as usize);
        if let Err(e) = self
            .top
            .co_preadv(offset, &buf, RequestFlags::empty())
            .await
        {
            return (Err(e), n, true, true);
        }
        let written = self
            .base
            .co_pwritev(offset, &buf, RequestFlags::empty())
            .await;
        (written, n, true, false)
    }

    fn remove_filter(&self) {
        if let Some(filter) = self.filter.borrow_mut().take() {
            crate::graph::replace::drop_filter(&filter);
        }
    }
}

#[async_trait(?Send)]
impl JobDriver for Commit {
    fn job_type(&self) -> JobType {
        JobType::Commit
    }

    async fn run(&self, job: &Rc<Job>) -> Result<()> {
        let len = self.top.getlength();
        job.progress_set_remaining(len);
        if self.base.getlength() < len {
            self.base.co_truncate(len, false, PreallocMode::Off).await?;
        }
        let mut offset = 0;
        while offset < len {
            job.ratelimit_sleep().await;
            if job.is_cancelled() {
                break;
            }
            let (result, n, copied, error_in_source) = self.one_iteration(offset, len).await;
            if let Err(e) = result {
                match job.error_action(self.opts.on_error, error_in_source, e.errno()) {
                    ErrorAction::Report => return Err(e),
                    _ => continue,
                }
            }
            job.progress_update(n);
            if copied {
                job.ratelimit_processed_bytes(n);
            }
            offset += n;
        }
        Ok(())
    }

    async fn prepare(&self, _job: &Rc<Job>) -> Result<()> {
        self.remove_filter();
        self.base.co_flush().await?;
        // bdrv_drop_intermediate: the overlay of top now backs onto base.
        let overlay = super::find_overlay(&self.active, &self.top)
            .ok_or_else(|| Error::invalid("the commit's top left the backing chain"))?;
        super::set_backing(
            &overlay,
            Some(&self.base),
            self.opts.backing_file.as_deref(),
        )
        .await
    }

    async fn clean(&self, _job: &Rc<Job>) {
        self.remove_filter();
        // Write permission is given up before the base is made read-only again.
        self.base_write.borrow_mut().take();
        let reopened = std::mem::take(&mut *self.reopened.borrow_mut());
        for r in reopened {
            r.restore().await;
        }
    }
}
