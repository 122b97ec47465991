//! The commands a user sends a job — pause, resume, complete, cancel, finalize, dismiss —
//! each checked against the verb table before it acts (QEMU's job.c job_user_pause,
//! job_user_resume, job_complete, job_user_cancel, job_finalize, job_dismiss).

use std::rc::Rc;

use super::job::Job;
use super::status::{apply_verb, JobVerb};
use crate::error::{Error, Result};

impl Job {
    /// block-job-pause / job-pause (job_user_pause).
    pub fn user_pause(&self) -> Result<()> {
        apply_verb(self.id(), JobVerb::Pause, self.status())?;
        if self.user_paused.get() {
            return Err(Error::invalid("Job is already paused"));
        }
        self.user_paused.set(true);
        self.pause();
        Ok(())
    }

    /// block-job-resume / job-resume (job_user_resume); clears an error status.
    pub fn user_resume(&self) -> Result<()> {
        if !self.user_paused.get() || self.pause_count.get() == 0 {
            return Err(Error::invalid("Can't resume a job that was not paused"));
        }
        apply_verb(self.id(), JobVerb::Resume, self.status())?;
        self.iostatus.set(super::block_job::IoStatus::Ok);
        self.user_paused.set(false);
        self.resume();
        Ok(())
    }

    /// block-job-complete / job-complete (job_complete).
    pub fn user_complete(self: &Rc<Self>) -> Result<()> {
        apply_verb(self.id(), JobVerb::Complete, self.status())?;
        if self.cancel_requested() || !self.driver.can_complete() {
            return Err(Error::invalid(format!(
                "The active block job '{}' cannot be completed",
                self.id()
            )));
        }
        self.driver.complete(self)
    }

    /// block-job-cancel / job-cancel (job_user_cancel).
    pub fn user_cancel(self: &Rc<Self>, force: bool) -> Result<()> {
        apply_verb(self.id(), JobVerb::Cancel, self.status())?;
        self.cancel(force);
        Ok(())
    }

    /// job-finalize / block-job-finalize (job_finalize).
    pub fn user_finalize(self: &Rc<Self>) -> Result<()> {
        apply_verb(self.id(), JobVerb::Finalize, self.status())?;
        self.spawn_completion(|job| async move { job.do_finalize().await });
        Ok(())
    }

    /// job-dismiss / block-job-dismiss (job_dismiss).
    pub fn user_dismiss(&self) -> Result<()> {
        apply_verb(self.id(), JobVerb::Dismiss, self.status())?;
        self.do_dismiss();
        Ok(())
    }
}
