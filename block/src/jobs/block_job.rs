//! What a block job adds to a job: a speed limit, a policy for I/O errors, the I/O status
//! and the fields query-block-jobs reports (QEMU's blockjob.c).

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::events::{BlockJobEventInfo, JobEvent, JobType};
use super::job::Job;
use super::ratelimit::SLICE;
use super::status::{apply_verb, JobStatus, JobVerb};
use crate::error::{Error, Result};
pub use crate::error_action::{ErrorAction, IoOperation, IoStatus, OnError};
use crate::graph::blockers::OpBlocker;
use crate::node::BlockDriverState;

/// A block job as query-block-jobs describes it (BlockJobInfo).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockJobInfo {
    /// The job type.
    pub job_type: JobType,
    /// The job id.
    pub device: String,
    /// Total progress.
    pub len: u64,
    /// Current progress.
    pub offset: u64,
    /// Whether the coroutine is working.
    pub busy: bool,
    /// Whether a user paused it.
    pub paused: bool,
    /// Speed limit in bytes per second.
    pub speed: u64,
    /// The I/O status.
    pub io_status: IoStatus,
    /// Whether it is ready for `complete`.
    pub ready: bool,
    /// The status.
    pub status: JobStatus,
    /// Whether it finalises itself.
    pub auto_finalize: bool,
    /// Whether it dismisses itself.
    pub auto_dismiss: bool,
    /// Why it failed, once it did.
    pub error: Option<String>,
}

/// A job as query-jobs describes it (JobInfo).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// The job id.
    pub id: String,
    /// The job type.
    pub job_type: JobType,
    /// The status.
    pub status: JobStatus,
    /// Current progress.
    pub current_progress: u64,
    /// Total progress.
    pub total_progress: u64,
    /// Why it failed, once it did.
    pub error: Option<String>,
}

impl Job {
    /// Whether the job works on `bs`, one of the nodes it blocked (block_job_has_bdrv).
    pub fn has_bdrv(&self, bs: &Rc<BlockDriverState>) -> bool {
        self.held.borrow().iter().any(|claim| {
            claim
                .downcast_ref::<OpBlocker>()
                .is_some_and(|b| Rc::ptr_eq(b.node(), bs))
        })
    }

    /// block-job-set-speed (block_job_set_speed): bytes per second, 0 for no limit.
    pub fn set_speed(&self, speed: i64) -> Result<()> {
        apply_verb(self.id(), JobVerb::SetSpeed, self.status())?;
        let Ok(speed) = u64::try_from(speed) else {
            return Err(Error::invalid(
                "Parameter 'speed' expects a non-negative value",
            ));
        };
        let old = self.speed.get();
        self.limit.borrow_mut().set_speed(speed, SLICE);
        self.speed.set(speed);
        if speed != 0 && speed <= old {
            return Ok(());
        }
        // A faster (or no) limit: cut the current sleep short.
        self.enter_if_sleeping();
        Ok(())
    }

    /// The speed limit.
    pub fn speed(&self) -> u64 {
        self.speed.get()
    }

    /// Accounts bytes copied against the limit (block_job_ratelimit_processed_bytes).
    pub fn ratelimit_processed_bytes(&self, n: u64) {
        self.limit.borrow_mut().calculate_delay(n, Instant::now());
    }

    /// Sleeps as long as the limit asks; yields at least once, so that a pause or cancel
    /// takes effect and the guest's requests run (block_job_ratelimit_sleep).
    pub async fn ratelimit_sleep(&self) {
        loop {
            let delay = self.limit.borrow_mut().calculate_delay(0, Instant::now());
            self.sleep(delay).await;
            if delay == Duration::ZERO || self.is_cancelled() {
                break;
            }
        }
    }

    /// Applies the error policy to a failed request, announces BLOCK_JOB_ERROR and, for
    /// stop, pauses the job as if the user had (block_job_error_action).
    pub fn error_action(&self, on_err: OnError, is_read: bool, errno: i32) -> ErrorAction {
        let action = on_err.action(errno);
        if !self.is_internal() {
            self.emit(JobEvent::Error {
                device: self.id().to_string(),
                operation: IoOperation::of(is_read),
                action,
            });
        }
        if action == ErrorAction::Stop {
            if !self.user_paused.get() {
                self.pause();
                self.user_paused.set(true);
            }
            self.iostatus.set(IoStatus::of_errno(errno));
        }
        action
    }

    /// The fields BLOCK_JOB_READY/COMPLETED/CANCELLED carry.
    pub(super) fn event_info(&self) -> BlockJobEventInfo {
        let (offset, len) = self.progress();
        BlockJobEventInfo {
            job_type: self.job_type(),
            device: self.id().to_string(),
            len,
            offset,
            speed: self.speed(),
        }
    }

    /// What query-block-jobs reports (block_job_query).
    pub fn block_job_info(&self) -> BlockJobInfo {
        let (offset, len) = self.progress();
        BlockJobInfo {
            job_type: self.job_type(),
            device: self.id().to_string(),
            len,
            offset,
            busy: self.is_busy(),
            paused: self.is_user_paused(),
            speed: self.speed(),
            io_status: self.iostatus.get(),
            ready: self.is_ready(),
            status: self.status(),
            auto_finalize: self.auto_finalize(),
            auto_dismiss: self.auto_dismiss(),
            error: self.error(),
        }
    }

    /// What query-jobs reports (job_query_single).
    pub fn job_info(&self) -> JobInfo {
        let (current, total) = self.progress();
        JobInfo {
            id: self.id().to_string(),
            job_type: self.job_type(),
            status: self.status(),
            current_progress: current,
            total_progress: total,
            error: self.error(),
        }
    }
}
