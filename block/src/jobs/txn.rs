//! Job transactions, and a job's way from completion to conclusion (QEMU's JobTxn and
//! job_completed / job_do_finalize / job_finalize_single in job.c).
//!
//! The jobs one QMP `transaction` starts with completion-mode `grouped` share a
//! [`JobTxn`]: none is finalised before all have completed, and one failing or being
//! cancelled cancels the others, so that (for instance) incremental backups of several
//! disks either all move their bitmaps on or none does. A job outside a group is a
//! transaction of one. The completion path lives here because every step of it asks the
//! transaction first.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::events::JobEvent;
use super::job::Job;
use super::status::JobStatus;
use crate::trace;

/// Jobs that complete together (JobTxn).
#[derive(Default)]
pub struct JobTxn {
    jobs: RefCell<Vec<Rc<Job>>>,
    aborting: Cell<bool>,
}

impl std::fmt::Debug for JobTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobTxn({:?})", self.jobs.borrow())
    }
}

impl JobTxn {
    /// An empty transaction (job_txn_new).
    pub fn new() -> Rc<JobTxn> {
        Rc::new(JobTxn::default())
    }

    /// Makes `job` complete with the others of this transaction (job_txn_add_job).
    pub fn add(self: &Rc<Self>, job: &Rc<Job>) {
        *job.txn.borrow_mut() = Some(self.clone());
        self.jobs.borrow_mut().push(job.clone());
    }
}

impl Job {
    /// The jobs of this job's transaction, itself included, in the order they joined.
    fn txn_jobs(self: &Rc<Self>) -> Vec<Rc<Job>> {
        match &*self.txn.borrow() {
            Some(t) => t.jobs.borrow().clone(),
            None => vec![self.clone()],
        }
    }

    /// Whether the job's work is over, successful or not (job_is_completed).
    fn is_completed(&self) -> bool {
        matches!(
            self.status(),
            JobStatus::Waiting
                | JobStatus::Pending
                | JobStatus::Aborting
                | JobStatus::Concluded
                | JobStatus::Null
        )
    }

    /// The job's work is over (job_completed): a failure aborts the transaction; a success
    /// waits for the other jobs, and the last one to finish moves them all to pending.
    pub(super) async fn completed(self: Rc<Self>) {
        self.update_rc();
        trace!(job_completed, "job {} ret {}", self.id(), self.ret.get());
        if self.ret.get() != 0 {
            self.txn_abort().await;
            return;
        }
        self.transition(JobStatus::Waiting);
        let jobs = self.txn_jobs();
        if !jobs.iter().all(|j| j.is_completed()) {
            return;
        }
        for j in &jobs {
            j.transition(JobStatus::Pending);
            if !j.auto_finalize && j.job_type().is_block_job() {
                j.emit(JobEvent::Pending {
                    job_type: j.job_type(),
                    id: j.id().to_string(),
                });
            }
        }
        if jobs.iter().all(|j| j.auto_finalize) {
            self.do_finalize().await;
        }
    }

    /// Aborts the job's transaction (job_completed_txn_abort): the other jobs are
    /// cancelled, waited for, and every job is finalised as failed.
    pub(super) async fn txn_abort(self: Rc<Self>) {
        let txn = self.txn.borrow().clone();
        let Some(txn) = txn else {
            if !self.finalizing.replace(true) {
                self.finalize_single().await;
            }
            return;
        };
        if txn.aborting.replace(true) {
            return;
        }
        let jobs = txn.jobs.borrow().clone();
        for other in jobs.iter().filter(|j| !Rc::ptr_eq(j, &self)) {
            other.cancel_async(true);
            other.enter();
        }
        for other in jobs {
            // job_finish_sync: a cancelled job still has to reach its next yield.
            other.changed.wait_while(|| !other.is_completed()).await;
            if !other.finalizing.replace(true) {
                other.finalize_single().await;
            }
        }
    }

    /// Prepares every job of the transaction, then commits them all, or aborts them all
    /// if one cannot (job_do_finalize).
    pub(super) async fn do_finalize(self: Rc<Self>) {
        let jobs = self.txn_jobs();
        if jobs.iter().any(|j| j.finalizing.get()) {
            return;
        }
        for j in &jobs {
            if j.ret.get() == 0 {
                if let Err(e) = j.driver.prepare(j).await {
                    j.ret.set(-e.errno().max(1));
                    *j.err.borrow_mut() = Some(e.to_string());
                    j.update_rc();
                }
            }
            if j.ret.get() != 0 {
                j.clone().txn_abort().await;
                return;
            }
        }
        for j in jobs {
            if !j.finalizing.replace(true) {
                j.finalize_single().await;
            }
        }
    }

    /// Commits or aborts, cleans up, announces the end and concludes (job_finalize_single).
    async fn finalize_single(self: &Rc<Self>) {
        self.update_rc();
        if self.ret.get() == 0 {
            self.driver.commit(self).await;
        } else {
            self.driver.abort(self).await;
        }
        self.driver.clean(self).await;
        self.held.borrow_mut().clear();
        if self.started.get() && !self.is_internal() && self.job_type().is_block_job() {
            let info = self.event_info();
            if self.is_cancelled() {
                self.emit(JobEvent::Cancelled(info));
            } else {
                let error = self.error();
                self.emit(JobEvent::Completed { info, error });
            }
        }
        // Out of the transaction: the job no longer waits for, or is waited for by, others.
        if let Some(txn) = self.txn.borrow_mut().take() {
            txn.jobs.borrow_mut().retain(|j| !Rc::ptr_eq(j, self));
        }
        self.transition(JobStatus::Concluded);
        if self.auto_dismiss || !self.started.get() {
            self.do_dismiss();
        }
    }
}
