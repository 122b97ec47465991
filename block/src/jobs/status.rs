//! The job state machine: the states a job passes through, the commands (verbs) a user may
//! send it in each state, and which transitions are legal (QEMU's job.c JobSTT and
//! JobVerbTable, qapi/job.json's JobStatus and JobVerb).
//!
//! A job is created, runs, may pause (standby when it was ready), may become ready (mirror:
//! source and target in sync, waiting for `complete`), then waits for the other jobs of its
//! transaction, is pending finalisation, concludes, and is dismissed into null. Errors and
//! cancellation go through aborting. The tables below are the whole truth: every transition
//! the job code makes is checked against them.

use crate::error::{Error, Result};

/// Where a job is in its life (QEMU's JobStatus), in QEMU's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Not created yet.
    Undefined,
    /// Created, not started.
    Created,
    /// Its coroutine is working.
    Running,
    /// Paused (by the user, a drain or an error with action stop).
    Paused,
    /// Converged and waiting for `complete` (mirror, active commit).
    Ready,
    /// Paused while ready.
    Standby,
    /// Done, waiting for the other jobs of its transaction.
    Waiting,
    /// Waiting for `finalize` (or finalising on its own with auto-finalize).
    Pending,
    /// Failed or cancelled; its changes are being rolled back.
    Aborting,
    /// Finished; its result can be queried until it is dismissed.
    Concluded,
    /// Dismissed: gone from the job list.
    Null,
}

/// Every status, in table order.
pub const ALL_STATUSES: [JobStatus; 11] = [
    JobStatus::Undefined,
    JobStatus::Created,
    JobStatus::Running,
    JobStatus::Paused,
    JobStatus::Ready,
    JobStatus::Standby,
    JobStatus::Waiting,
    JobStatus::Pending,
    JobStatus::Aborting,
    JobStatus::Concluded,
    JobStatus::Null,
];

impl JobStatus {
    /// QEMU's name (what JOB_STATUS_CHANGE and query-jobs print).
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Undefined => "undefined",
            JobStatus::Created => "created",
            JobStatus::Running => "running",
            JobStatus::Paused => "paused",
            JobStatus::Ready => "ready",
            JobStatus::Standby => "standby",
            JobStatus::Waiting => "waiting",
            JobStatus::Pending => "pending",
            JobStatus::Aborting => "aborting",
            JobStatus::Concluded => "concluded",
            JobStatus::Null => "null",
        }
    }

    /// Whether the job has converged (ready or standby: job_is_ready).
    pub fn is_ready(self) -> bool {
        matches!(self, JobStatus::Ready | JobStatus::Standby)
    }

    /// Whether the job's work is over (job_is_completed).
    pub fn is_completed(self) -> bool {
        matches!(
            self,
            JobStatus::Waiting
                | JobStatus::Pending
                | JobStatus::Aborting
                | JobStatus::Concluded
                | JobStatus::Null
        )
    }
}

/// A command a user sends a job (QEMU's JobVerb).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobVerb {
    /// block-job-cancel, job-cancel.
    Cancel,
    /// block-job-pause, job-pause.
    Pause,
    /// block-job-resume, job-resume.
    Resume,
    /// block-job-set-speed.
    SetSpeed,
    /// block-job-complete, job-complete.
    Complete,
    /// block-job-finalize, job-finalize.
    Finalize,
    /// block-job-dismiss, job-dismiss.
    Dismiss,
    /// block-job-change.
    Change,
}

impl JobVerb {
    /// QEMU's name, as the "cannot accept command verb" error prints it.
    pub fn name(self) -> &'static str {
        match self {
            JobVerb::Cancel => "cancel",
            JobVerb::Pause => "pause",
            JobVerb::Resume => "resume",
            JobVerb::SetSpeed => "set-speed",
            JobVerb::Complete => "complete",
            JobVerb::Finalize => "finalize",
            JobVerb::Dismiss => "dismiss",
            JobVerb::Change => "change",
        }
    }
}

// Columns in both tables: U, C, R, P, Y, S, W, D, X, E, N (the JobStatus order).

/// Legal transitions: row = from, column = to (JobSTT).
#[rustfmt::skip]
const STT: [[u8; 11]; 11] = [
    /* U */ [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    /* C */ [0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1],
    /* R */ [0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0],
    /* P */ [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    /* Y */ [0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0],
    /* S */ [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
    /* W */ [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0],
    /* D */ [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0],
    /* X */ [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0],
    /* E */ [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    /* N */ [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
];

/// The states in which each verb is accepted (JobVerbTable).
#[rustfmt::skip]
const VERBS: [(JobVerb, [u8; 11]); 8] = [
    (JobVerb::Cancel,   [0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]),
    (JobVerb::Pause,    [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]),
    (JobVerb::Resume,   [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]),
    (JobVerb::SetSpeed, [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]),
    (JobVerb::Complete, [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]),
    (JobVerb::Finalize, [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
    (JobVerb::Dismiss,  [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
    (JobVerb::Change,   [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]),
];

/// Whether a job may go from `from` to `to`.
pub fn transition_allowed(from: JobStatus, to: JobStatus) -> bool {
    STT[from as usize][to as usize] == 1
}

/// Whether `verb` is accepted in `status`.
pub fn verb_allowed(verb: JobVerb, status: JobStatus) -> bool {
    VERBS
        .iter()
        .find(|(v, _)| *v == verb)
        .is_some_and(|(_, row)| row[status as usize] == 1)
}

/// Checks a verb against the job's state, with QEMU's refusal (job_apply_verb).
pub fn apply_verb(id: &str, verb: JobVerb, status: JobStatus) -> Result<()> {
    let allowed = verb_allowed(verb, status);
    crate::trace!(
        job_apply_verb,
        "job {} in state {}; applying verb {} ({})",
        id,
        status.name(),
        verb.name(),
        if allowed { "allowed" } else { "prohibited" }
    );
    if allowed {
        return Ok(());
    }
    Err(Error::new(
        libc::EPERM,
        format!(
            "Job '{id}' in state '{}' cannot accept command verb '{}'",
            status.name(),
            verb.name()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_only_leaves_undefined_to_be_created_and_null_is_final() {
        for to in ALL_STATUSES {
            assert_eq!(
                transition_allowed(JobStatus::Undefined, to),
                to == JobStatus::Created
            );
            assert!(!transition_allowed(JobStatus::Null, to));
        }
    }

    #[test]
    fn pause_returns_to_the_state_it_left() {
        assert!(transition_allowed(JobStatus::Running, JobStatus::Paused));
        assert!(transition_allowed(JobStatus::Paused, JobStatus::Running));
        assert!(!transition_allowed(JobStatus::Paused, JobStatus::Ready));
        assert!(transition_allowed(JobStatus::Ready, JobStatus::Standby));
        assert!(transition_allowed(JobStatus::Standby, JobStatus::Ready));
        assert!(!transition_allowed(JobStatus::Standby, JobStatus::Running));
    }

    #[test]
    fn verbs_follow_qemus_table() {
        assert!(verb_allowed(JobVerb::Complete, JobStatus::Standby));
        assert!(!verb_allowed(JobVerb::Complete, JobStatus::Running));
        assert!(verb_allowed(JobVerb::Cancel, JobStatus::Pending));
        assert!(!verb_allowed(JobVerb::Cancel, JobStatus::Concluded));
        assert!(verb_allowed(JobVerb::Dismiss, JobStatus::Concluded));
        let e = apply_verb("j0", JobVerb::Complete, JobStatus::Running).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Job 'j0' in state 'running' cannot accept command verb 'complete'"
        );
    }
}
