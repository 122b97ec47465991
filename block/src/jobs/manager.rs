//! The jobs of a thread's AioContext: lookup by id, the lists query-jobs and
//! query-block-jobs print, and the observers that hear every job event (QEMU's global job
//! list in job.c, job_get, job_next, and the QAPI event emitters the monitor provides).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::block_job::{BlockJobInfo, JobInfo};
use super::events::JobEvent;
use super::job::Job;
use crate::coroutine::CoQueue;
use crate::error::{Error, Result};

/// An observer of job events (a monitor, a test).
pub type JobObserver = Rc<dyn Fn(&JobEvent)>;

/// The jobs of one AioContext and their observers.
#[derive(Default)]
pub struct JobManager {
    jobs: RefCell<Vec<Rc<Job>>>,
    observers: RefCell<Vec<(u64, JobObserver)>>,
    next_observer: Cell<u64>,
    /// Jobs between the end of their work (or a cancel, a finalize) and the state they
    /// stop in: concluded, dismissed, pending or waiting for the rest of their transaction.
    completing: Cell<usize>,
    settled: CoQueue,
}

/// One job's completion in progress, counted until dropped.
pub(super) struct Completing(Rc<JobManager>);

impl Drop for Completing {
    fn drop(&mut self) {
        let m = &self.0;
        m.completing.set(m.completing.get() - 1);
        if m.completing.get() == 0 {
            m.settled.restart_all();
        }
    }
}

thread_local! {
    static CURRENT: Rc<JobManager> = Rc::new(JobManager::default());
}

impl JobManager {
    /// The manager of the calling thread's AioContext.
    pub fn current() -> Rc<JobManager> {
        CURRENT.with(Rc::clone)
    }

    pub(super) fn add(&self, job: Rc<Job>) {
        // QEMU inserts at the head: the newest job is listed first.
        self.jobs.borrow_mut().insert(0, job);
    }

    pub(super) fn remove(&self, job: &Job) {
        self.jobs
            .borrow_mut()
            .retain(|j| !std::ptr::eq(Rc::as_ptr(j), job));
    }

    /// Counts a completion in progress until the returned guard is dropped.
    pub(super) fn completing(self: &Rc<Self>) -> Completing {
        self.completing.set(self.completing.get() + 1);
        Completing(self.clone())
    }

    /// Waits until no job is in the middle of its completion. QEMU completes a job in one
    /// go under the BQL, and its monitor, dispatching from the iohandler context, never
    /// runs a command in between; the monitor waits here so that a command sees a job
    /// before its completion or after it (a failed job already dismissed, not aborting).
    pub async fn settled(&self) {
        self.settled.wait_while(|| self.completing.get() > 0).await;
    }

    /// The job with this id (job_get).
    pub fn find(&self, id: &str) -> Option<Rc<Job>> {
        self.jobs
            .borrow()
            .iter()
            .find(|j| !j.is_internal() && j.id() == id)
            .cloned()
    }

    /// The job with this id, or QMP's block-job-* error (find_block_job).
    pub fn find_block_job(&self, id: &str) -> Result<Rc<Job>> {
        self.find(id)
            .ok_or_else(|| Error::invalid(format!("Block job '{id}' not found")))
    }

    /// The job with this id, or QMP's job-* error (find_job).
    pub fn find_job(&self, id: &str) -> Result<Rc<Job>> {
        self.find(id).ok_or_else(|| Error::invalid("Job not found"))
    }

    /// Every job, internal ones included, newest first.
    pub fn jobs(&self) -> Vec<Rc<Job>> {
        self.jobs.borrow().clone()
    }

    /// query-block-jobs.
    pub fn query_block_jobs(&self) -> Vec<BlockJobInfo> {
        self.user_jobs()
            .filter(|j| j.job_type().is_block_job())
            .map(|j| j.block_job_info())
            .collect()
    }

    /// query-jobs.
    pub fn query_jobs(&self) -> Vec<JobInfo> {
        self.user_jobs().map(|j| j.job_info()).collect()
    }

    fn user_jobs(&self) -> impl Iterator<Item = Rc<Job>> {
        self.jobs().into_iter().filter(|j| !j.is_internal())
    }

    /// Adds an observer of every job event; returns its handle for `unsubscribe`.
    pub fn subscribe(&self, observer: JobObserver) -> u64 {
        let id = self.next_observer.get();
        self.next_observer.set(id + 1);
        self.observers.borrow_mut().push((id, observer));
        id
    }

    /// Removes an observer.
    pub fn unsubscribe(&self, handle: u64) {
        self.observers.borrow_mut().retain(|(id, _)| *id != handle);
    }

    pub(super) fn emit(&self, event: &JobEvent) {
        // Observers may subscribe or query jobs while they run: call them on a copy.
        let observers: Vec<JobObserver> = self
            .observers
            .borrow()
            .iter()
            .map(|(_, o)| o.clone())
            .collect();
        for o in observers {
            o(event);
        }
    }

    /// Cancels every job and waits for them to end (job_cancel_sync_all, at shutdown).
    pub async fn cancel_sync_all(&self) {
        while let Some(job) = self.jobs().into_iter().next() {
            job.cancel(true);
            // A concluded job waiting for dismiss was dismissed by the cancel.
            let _ = job.wait_concluded().await;
            if job.status() == super::status::JobStatus::Concluded {
                job.cancel(true);
            }
        }
    }
}
