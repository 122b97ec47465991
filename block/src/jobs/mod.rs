//! Block jobs: long-running operations on a live graph — stream, commit, mirror, backup —
//! that copy data in the background while the guest keeps using its disk (QEMU's job.c,
//! blockjob.c, block/stream.c, commit.c, mirror.c, backup.c).
//!
//! Read [`status`] first (the state machine and its tables), then [`job`] (one job's
//! coroutine, its pause points and its way to conclusion), [`block_job`] (speed, error
//! policy, the query fields), [`txn`] (completion, finalisation and the jobs that complete
//! together), [`manager`] (the job list and its observers) and [`events`].
//! The job kinds build on them and on [`crate::graph`]: [`stream`] and [`commit`] copy along
//! a backing chain and shorten it, [`mirror`] keeps a target in sync under a filter and
//! pivots the guest onto it, [`backup`] saves what guest writes would overwrite.

pub mod backup;
pub mod block_copy;
pub mod block_job;
pub mod commit;
pub mod copy_before_write;
pub mod events;
pub mod job;
pub mod manager;
pub mod mirror;
pub mod ratelimit;
pub mod status;
pub mod stream;
pub mod top_filter;
pub mod txn;
mod verbs;

pub use block_job::{BlockJobInfo, IoStatus, JobInfo, OnError};
pub use events::{BlockJobEventInfo, ErrorAction, IoOperation, JobEvent, JobType};
pub use job::{Job, JobDriver, JobFlags};
pub use manager::{JobManager, JobObserver};
pub use status::{JobStatus, JobVerb};
pub use txn::JobTxn;

use std::rc::Rc;

use crate::error::{Error, Result};
use crate::node::BlockDriverState;

/// What every block job is started with (the common arguments of the QMP commands).
#[derive(Clone, Debug, Default)]
pub struct CommonOptions {
    /// The job id; `None` makes an internal job.
    pub job_id: Option<String>,
    /// Speed limit in bytes per second (0: none).
    pub speed: i64,
    /// Wait for `finalize` / `dismiss`.
    pub flags: JobFlags,
    /// The transaction the job completes with (a grouped QMP `transaction`).
    pub txn: Option<Rc<JobTxn>>,
}

impl CommonOptions {
    /// Creates the job with these options, hands it the claims it holds on nodes while it
    /// lives, and sets its speed (block_job_create).
    pub(crate) fn create(
        &self,
        driver: Box<dyn JobDriver>,
        claims: Vec<Box<dyn std::any::Any>>,
    ) -> Result<Rc<Job>> {
        let job = Job::create(self.job_id.as_deref(), driver, self.flags)?;
        for claim in claims {
            job.hold(claim);
        }
        if let Some(txn) = &self.txn {
            txn.add(&job);
        }
        if self.speed != 0 {
            if let Err(e) = job.set_speed(self.speed) {
                job.cancel(true);
                return Err(e);
            }
        }
        Ok(job)
    }
}

/// The next node down a chain: a filter's filtered child, else the backing node
/// (bdrv_filter_or_cow_bs).
pub fn filter_or_cow(bs: &BlockDriverState) -> Option<Rc<BlockDriverState>> {
    if bs.drv().is_filter() {
        bs.filtered()
    } else {
        bs.backing()
    }
}

/// The node whose backing (or filtered) child is `bs`, searching down from `top`
/// (bdrv_find_overlay).
pub fn find_overlay(
    top: &Rc<BlockDriverState>,
    bs: &Rc<BlockDriverState>,
) -> Option<Rc<BlockDriverState>> {
    let mut node = top.clone();
    loop {
        let below = filter_or_cow(&node)?;
        if Rc::ptr_eq(&below, bs) {
            return Some(node);
        }
        node = below;
    }
}

/// Refuses a `base` that is not below `top` in its backing chain.
pub(crate) fn check_in_chain(
    top: &Rc<BlockDriverState>,
    base: &Rc<BlockDriverState>,
) -> Result<()> {
    match find_overlay(top, base) {
        Some(_) => Ok(()),
        None => Err(Error::invalid(format!(
            "Node '{}' is not a backing image of '{}'",
            base.node_name(),
            top.node_name()
        ))),
    }
}

/// The backing file name and format a node records for `base` (what bdrv_change_backing_file
/// is given): an explicit `backing-file`, else the filename and format of the base, or of
/// the node below it when the base is a filter (another job's, gone when that job ends).
pub(crate) fn backing_reference(
    base: Option<&Rc<BlockDriverState>>,
    backing_file: Option<&str>,
) -> (Option<String>, Option<&'static str>) {
    match base.map(BlockDriverState::skip_filters) {
        None => (None, None),
        Some(b) => (
            Some(backing_file.map_or_else(|| b.filename(), str::to_string)),
            Some(b.format_name()),
        ),
    }
}

/// Re-links `bs` onto `base` (or no backing) in the graph and in its image header
/// (bdrv_set_backing_hd + bdrv_change_backing_file).
pub(crate) async fn set_backing(
    bs: &Rc<BlockDriverState>,
    base: Option<&Rc<BlockDriverState>>,
    backing_file: Option<&str>,
) -> Result<()> {
    match base {
        Some(b) => {
            // A base that the chain opened below `bs` is now opened by `bs` itself
            // (bdrv_set_backing_hd's inherits_from update).
            let mut up = b.inherits_from.borrow().upgrade();
            while let Some(p) = up {
                if Rc::ptr_eq(&p, bs) {
                    *b.inherits_from.borrow_mut() = Rc::downgrade(bs);
                    break;
                }
                up = p.inherits_from.borrow().upgrade();
            }
            bs.attach_child("backing", b.clone())
        }
        None => bs.detach_child("backing"),
    }
    let (name, fmt) = backing_reference(base, backing_file);
    bs.drv()
        .co_change_backing_file(bs, name.as_deref(), fmt)
        .await
}
