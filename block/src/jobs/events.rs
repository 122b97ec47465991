//! What jobs announce: the events a monitor turns into JOB_STATUS_CHANGE and the
//! BLOCK_JOB_READY/COMPLETED/CANCELLED/ERROR/PENDING QMP events (QEMU's job.c
//! qapi_event_send_job_status_change and blockjob.c's block_job_event_* notifiers).
//!
//! The block layer knows no monitor: it hands each event to the observers subscribed on the
//! [`super::JobManager`], in the order the state machine produces them.

use super::status::JobStatus;

/// The kind of a job (QEMU's JobType), which `type` fields print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobType {
    /// block-commit.
    Commit,
    /// block-stream.
    Stream,
    /// drive-mirror, blockdev-mirror (and active commit runs as a mirror of type commit).
    Mirror,
    /// drive-backup, blockdev-backup.
    Backup,
    /// blockdev-create: a job, but not a block job (no BLOCK_JOB_* events, not in
    /// query-block-jobs).
    Create,
}

impl JobType {
    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            JobType::Commit => "commit",
            JobType::Stream => "stream",
            JobType::Mirror => "mirror",
            JobType::Backup => "backup",
            JobType::Create => "create",
        }
    }

    /// Whether jobs of this type are block jobs, announced by BLOCK_JOB_* events
    /// (is_block_job).
    pub fn is_block_job(self) -> bool {
        self != JobType::Create
    }
}

pub use crate::error_action::{ErrorAction, IoOperation};

/// The common fields of BLOCK_JOB_READY/COMPLETED/CANCELLED.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockJobEventInfo {
    /// The job type.
    pub job_type: JobType,
    /// The job id (`device` in the event).
    pub device: String,
    /// Total progress (`len`).
    pub len: u64,
    /// Current progress (`offset`).
    pub offset: u64,
    /// The speed limit, bytes per second (0: none).
    pub speed: u64,
}

/// One event about a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobEvent {
    /// JOB_STATUS_CHANGE: the job entered `status`.
    StatusChange {
        /// The job id.
        id: String,
        /// The new status.
        status: JobStatus,
    },
    /// BLOCK_JOB_READY: the job converged and waits for `complete`.
    Ready(BlockJobEventInfo),
    /// BLOCK_JOB_COMPLETED: the job finished; `error` says why it failed, if it did.
    Completed {
        /// Progress and identity.
        info: BlockJobEventInfo,
        /// The failure's message.
        error: Option<String>,
    },
    /// BLOCK_JOB_CANCELLED: the job was cancelled.
    Cancelled(BlockJobEventInfo),
    /// BLOCK_JOB_ERROR: an I/O error met the job's error policy.
    Error {
        /// The job id.
        device: String,
        /// What failed.
        operation: IoOperation,
        /// What the policy made of it.
        action: ErrorAction,
    },
    /// BLOCK_JOB_PENDING: the job waits for `finalize` (auto-finalize off).
    Pending {
        /// The job type.
        job_type: JobType,
        /// The job id.
        id: String,
    },
}

impl JobEvent {
    /// The QMP event's name.
    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::StatusChange { .. } => "JOB_STATUS_CHANGE",
            JobEvent::Ready(_) => "BLOCK_JOB_READY",
            JobEvent::Completed { .. } => "BLOCK_JOB_COMPLETED",
            JobEvent::Cancelled(_) => "BLOCK_JOB_CANCELLED",
            JobEvent::Error { .. } => "BLOCK_JOB_ERROR",
            JobEvent::Pending { .. } => "BLOCK_JOB_PENDING",
        }
    }
}
