//! One job: its coroutine, the pause points it yields at, and its way through the state
//! machine from creation to dismissal (QEMU's job.c).
//!
//! A job's work is a [`JobDriver`]'s `run`, executed in a coroutine on the AioContext. The
//! job yields only at points it chooses (`pause_point`, `sleep`, `yield_`): that is where a
//! pause, a cancel or a new speed takes effect, so a pause never interrupts a copy half-way.
//! When `run` returns, the job completes: on success it waits for the other jobs of its
//! transaction, becomes pending, and is finalised (prepare, then commit or abort, then
//! clean) either at once (auto-finalize) or on `finalize`; it then concludes and, with
//! auto-dismiss, disappears. That second half lives in [`super::txn`].

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use futures_lite::future;

use super::events::{JobEvent, JobType};
use super::manager::JobManager;
use super::ratelimit::RateLimit;
use super::status::{transition_allowed, JobStatus};
use crate::aio::timer::co_sleep;
use crate::coroutine::{co_spawn, CoQueue};
use crate::error::{strerror, Error, Result};
use crate::trace;

/// What a kind of job does (QEMU's JobDriver and BlockJobDriver callbacks).
#[async_trait(?Send)]
pub trait JobDriver {
    /// The job type.
    fn job_type(&self) -> JobType;

    /// The job's work; it yields at pause points and returns when done, failed or cancelled.
    async fn run(&self, job: &Rc<Job>) -> Result<()>;

    /// Makes the result visible, if that can still fail (graph changes): before commit.
    async fn prepare(&self, _job: &Rc<Job>) -> Result<()> {
        Ok(())
    }

    /// Called after success.
    async fn commit(&self, _job: &Rc<Job>) {}

    /// Called after failure or cancellation: roll back.
    async fn abort(&self, _job: &Rc<Job>) {}

    /// Called after commit or abort: release what the job held.
    async fn clean(&self, _job: &Rc<Job>) {}

    /// Whether `complete` applies to this kind of job (mirror, active commit).
    fn can_complete(&self) -> bool {
        false
    }

    /// The user asked a ready job to finish (block-job-complete).
    fn complete(&self, _job: &Rc<Job>) -> Result<()> {
        Err(Error::invalid("This job cannot be completed"))
    }

    /// A cancel request: returns whether it counts as forced. Jobs without a soft
    /// cancel treat every cancel as forced (QEMU's missing .cancel).
    fn cancel(&self, _job: &Rc<Job>, _force: bool) -> bool {
        true
    }
}

/// Flags of a new job (JOB_MANUAL_FINALIZE, JOB_MANUAL_DISMISS).
#[derive(Clone, Copy, Debug, Default)]
pub struct JobFlags {
    /// Wait for `finalize` in pending.
    pub manual_finalize: bool,
    /// Stay concluded until `dismiss`.
    pub manual_dismiss: bool,
}

/// A job (QEMU's Job with BlockJob's speed, limit and I/O status).
pub struct Job {
    id: Option<String>,
    pub(super) driver: Box<dyn JobDriver>,
    manager: Weak<JobManager>,
    pub(super) status: Cell<JobStatus>,
    pub(super) pause_count: Cell<u32>,
    paused: Cell<bool>,
    pub(super) user_paused: Cell<bool>,
    busy: Cell<bool>,
    pub(super) started: Cell<bool>,
    pub(super) deferred: Cell<bool>,
    pub(super) finalizing: Cell<bool>,
    cancelled: Cell<bool>,
    force_cancel: Cell<bool>,
    pub(super) auto_finalize: bool,
    pub(super) auto_dismiss: bool,
    pub(super) ret: Cell<i32>,
    pub(super) err: RefCell<Option<String>>,
    progress: Cell<(u64, u64)>,
    pub(super) speed: Cell<u64>,
    pub(super) limit: RefCell<RateLimit>,
    pub(super) iostatus: Cell<super::block_job::IoStatus>,
    timer_pending: Cell<bool>,
    entered: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    pub(super) changed: CoQueue,
    /// What the job holds on nodes (op blockers, permission claims), released when it
    /// finalises (block_job_remove_all_bdrv).
    pub(super) held: RefCell<Vec<Box<dyn std::any::Any>>>,
    /// The transaction whose jobs complete together (None: a transaction of one).
    pub(super) txn: RefCell<Option<Rc<super::txn::JobTxn>>>,
}

/// Whether a job id is acceptable (id_wellformed): a letter, then letters, digits, `-._`.
fn id_wellformed(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

impl Job {
    /// Creates a job in the current thread's manager (job_create); `id` None makes an
    /// internal job, which announces nothing and is not listed.
    pub fn create(
        id: Option<&str>,
        driver: Box<dyn JobDriver>,
        flags: JobFlags,
    ) -> Result<Rc<Job>> {
        let manager = JobManager::current();
        if let Some(id) = id {
            if !id_wellformed(id) {
                return Err(Error::invalid(format!("Invalid job ID '{id}'")));
            }
            if manager.find(id).is_some() {
                return Err(Error::invalid(format!("Job ID '{id}' already in use")));
            }
        }
        let job = Rc::new(Job {
            id: id.map(str::to_string),
            driver,
            manager: Rc::downgrade(&manager),
            status: Cell::new(JobStatus::Undefined),
            pause_count: Cell::new(1),
            paused: Cell::new(true),
            user_paused: Cell::new(false),
            busy: Cell::new(false),
            started: Cell::new(false),
            deferred: Cell::new(false),
            finalizing: Cell::new(false),
            cancelled: Cell::new(false),
            force_cancel: Cell::new(false),
            auto_finalize: !flags.manual_finalize,
            auto_dismiss: !flags.manual_dismiss,
            ret: Cell::new(0),
            err: RefCell::new(None),
            progress: Cell::new((0, 0)),
            speed: Cell::new(0),
            limit: RefCell::new(RateLimit::default()),
            iostatus: Cell::new(super::block_job::IoStatus::Ok),
            timer_pending: Cell::new(false),
            entered: Cell::new(false),
            waker: RefCell::new(None),
            changed: CoQueue::new(),
            held: RefCell::new(Vec::new()),
            txn: RefCell::new(None),
        });
        job.transition(JobStatus::Created);
        manager.add(job.clone());
        Ok(job)
    }

    /// Keeps `claim` (an op blocker, a permission) until the job finalises.
    pub fn hold(&self, claim: Box<dyn std::any::Any>) {
        self.held.borrow_mut().push(claim);
    }

    /// The job id ("" for an internal job).
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or("")
    }

    /// Whether the job is internal (no id).
    pub fn is_internal(&self) -> bool {
        self.id.is_none()
    }

    /// The job type.
    pub fn job_type(&self) -> JobType {
        self.driver.job_type()
    }

    /// The current status.
    pub fn status(&self) -> JobStatus {
        self.status.get()
    }

    /// Whether the coroutine is working rather than waiting at a yield.
    pub fn is_busy(&self) -> bool {
        self.busy.get()
    }

    /// Whether the job sits at a pause point.
    pub fn is_paused(&self) -> bool {
        self.paused.get()
    }

    /// Whether a user paused it (and has not resumed it).
    pub fn is_user_paused(&self) -> bool {
        self.user_paused.get()
    }

    /// Whether it finalises on its own.
    pub fn auto_finalize(&self) -> bool {
        self.auto_finalize
    }

    /// Whether it disappears on its own once concluded.
    pub fn auto_dismiss(&self) -> bool {
        self.auto_dismiss
    }

    /// Whether the job is cancelled for good (job_is_cancelled: a forced cancel).
    pub fn is_cancelled(&self) -> bool {
        self.force_cancel.get()
    }

    /// Whether any cancel was asked for (job_cancel_requested): a soft cancel of a ready
    /// mirror only asks it to finish without pivoting.
    pub fn cancel_requested(&self) -> bool {
        self.cancelled.get()
    }

    /// The failure message, once the job failed.
    pub fn error(&self) -> Option<String> {
        (self.ret.get() != 0).then(|| self.err.borrow().clone().unwrap_or_default())
    }

    /// The errno-style result: 0, or the negative errno it failed with.
    pub fn ret(&self) -> i32 {
        self.ret.get()
    }

    /// (current, total) progress.
    pub fn progress(&self) -> (u64, u64) {
        self.progress.get()
    }

    /// Counts `done` bytes of work finished (job_progress_update).
    pub fn progress_update(&self, done: u64) {
        let (cur, total) = self.progress.get();
        self.progress.set((cur + done, total.max(cur + done)));
    }

    /// Says how much work remains (job_progress_set_remaining).
    pub fn progress_set_remaining(&self, remaining: u64) {
        let (cur, _) = self.progress.get();
        self.progress.set((cur, cur + remaining));
    }

    /// Adds work discovered on the way (job_progress_increase_remaining).
    pub fn progress_increase_remaining(&self, delta: u64) {
        let (cur, total) = self.progress.get();
        self.progress.set((cur, total + delta));
    }

    pub(super) fn emit(&self, event: JobEvent) {
        if let Some(manager) = self.manager.upgrade() {
            manager.emit(&event);
        }
    }

    /// Moves to `to`, which the transition table must allow (job_state_transition).
    pub(super) fn transition(&self, to: JobStatus) {
        let from = self.status.get();
        let allowed = transition_allowed(from, to);
        trace!(
            job_state_transition,
            "job {} (ret: {}) attempting {} transition ({}-->{})",
            self.id(),
            self.ret.get(),
            if allowed { "allowed" } else { "disallowed" },
            from.name(),
            to.name()
        );
        assert!(allowed, "illegal job transition {from:?} -> {to:?}");
        self.status.set(to);
        if let Some(id) = &self.id {
            if from != to {
                self.emit(JobEvent::StatusChange {
                    id: id.clone(),
                    status: to,
                });
            }
        }
        self.changed.restart_all();
    }

    /// Starts the job's coroutine (job_start).
    pub fn start(self: &Rc<Self>) {
        assert!(!self.started.get() && self.paused.get());
        self.started.set(true);
        self.pause_count.set(self.pause_count.get() - 1);
        self.busy.set(true);
        self.paused.set(false);
        self.transition(JobStatus::Running);
        let job = self.clone();
        co_spawn(async move { job.co_entry().await });
    }

    async fn co_entry(self: Rc<Self>) {
        // Every job may be paused before it does anything (a job created paused).
        self.pause_point().await;
        let result = self.driver.run(&self).await;
        if let Err(e) = result {
            self.ret.set(-e.errno().max(1));
            *self.err.borrow_mut() = Some(e.to_string());
        }
        self.deferred.set(true);
        // Completion may drain nodes: the job is no longer doing I/O of its own.
        self.busy.set(false);
        let _completing = self.manager.upgrade().map(|m| m.completing());
        self.completed().await;
    }

    /// Wakes the job's coroutine if it waits at a yield and `cond` holds (job_enter_cond).
    fn enter_cond(&self, cond: impl FnOnce(&Job) -> bool) {
        if !self.started.get() || self.deferred.get() || self.busy.get() || !cond(self) {
            return;
        }
        self.timer_pending.set(false);
        self.busy.set(true);
        self.entered.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Wakes the job's coroutine (job_enter).
    pub fn enter(&self) {
        self.enter_cond(|_| true);
    }

    /// Yields until entered, or until `sleep` has passed (job_do_yield).
    async fn do_yield(&self, sleep: Option<Duration>) {
        self.busy.set(false);
        self.entered.set(false);
        self.timer_pending.set(sleep.is_some());
        let entered = std::future::poll_fn(|cx| {
            if self.entered.get() {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        });
        match sleep {
            None => entered.await,
            Some(d) if d.is_zero() => future::or(entered, future::yield_now()).await,
            Some(d) => future::or(entered, co_sleep(d)).await,
        }
        self.waker.borrow_mut().take();
        self.timer_pending.set(false);
        self.busy.set(true);
    }

    /// Pauses here if a pause was asked for (job_pause_point).
    pub async fn pause_point(&self) {
        if self.pause_count.get() == 0 || self.is_cancelled() {
            return;
        }
        let status = self.status.get();
        self.transition(if status == JobStatus::Ready {
            JobStatus::Standby
        } else {
            JobStatus::Paused
        });
        self.paused.set(true);
        self.do_yield(None).await;
        self.paused.set(false);
        self.transition(status);
    }

    /// Yields until entered (job_yield).
    pub async fn yield_(&self) {
        if self.is_cancelled() {
            return;
        }
        if self.pause_count.get() == 0 {
            self.do_yield(None).await;
        }
        self.pause_point().await;
    }

    /// Sleeps for `d`, or until entered; pauses if asked (job_sleep_ns). Even a zero sleep
    /// yields once, so that other coroutines (the guest's requests) run.
    pub async fn sleep(&self, d: Duration) {
        if self.is_cancelled() {
            return;
        }
        if self.pause_count.get() == 0 {
            self.do_yield(Some(d)).await;
        }
        self.pause_point().await;
    }

    /// Whether a pause waits for the job's next pause point: a job with requests of its
    /// own in flight lets them finish first, so a paused job does no I/O.
    pub fn pause_requested(&self) -> bool {
        self.pause_count.get() > 0 && !self.is_cancelled()
    }

    /// Asks the job to pause at its next pause point (job_pause).
    pub fn pause(&self) {
        self.pause_count.set(self.pause_count.get() + 1);
        if !self.paused.get() {
            self.enter();
        }
    }

    /// Takes back one pause (job_resume); the job continues when none is left.
    pub fn resume(&self) {
        assert!(self.pause_count.get() > 0);
        self.pause_count.set(self.pause_count.get() - 1);
        if self.pause_count.get() == 0 {
            self.enter_cond(|j| !j.timer_pending.get());
        }
    }

    /// Cancels the job (job_cancel): a running job notices at its next yield.
    pub fn cancel(self: &Rc<Self>, force: bool) {
        if self.status() == JobStatus::Concluded {
            self.do_dismiss();
            return;
        }
        self.cancel_async(force);
        if !self.started.get() {
            self.spawn_completion(|job| async move { job.completed().await });
        } else if self.deferred.get() {
            // Done already: only a forced cancel still turns the result into an abort.
            if self.is_cancelled() {
                self.spawn_completion(|job| async move { job.txn_abort().await });
            }
        } else {
            self.enter();
        }
    }

    pub(super) fn spawn_completion<F: std::future::Future<Output = ()> + 'static>(
        self: &Rc<Self>,
        f: impl FnOnce(Rc<Job>) -> F,
    ) {
        let completing = self.manager.upgrade().map(|m| m.completing());
        let completion = f(self.clone());
        co_spawn(async move {
            completion.await;
            drop(completing);
        });
    }

    pub(super) fn cancel_async(self: &Rc<Self>, force: bool) {
        let force = self.driver.cancel(self, force);
        if self.user_paused.get() {
            // The cancel takes the user's pause away; the caller enters the job.
            self.user_paused.set(false);
            self.pause_count.set(self.pause_count.get() - 1);
        }
        if force || !self.deferred.get() {
            self.cancelled.set(true);
            self.force_cancel.set(self.force_cancel.get() | force);
        }
    }

    pub(super) fn do_dismiss(&self) {
        self.held.borrow_mut().clear();
        self.busy.set(false);
        self.paused.set(false);
        self.deferred.set(true);
        self.transition(JobStatus::Null);
        if let Some(manager) = self.manager.upgrade() {
            manager.remove(self);
        }
    }

    /// Turns a cancel into -ECANCELED and any failure into aborting (job_update_rc).
    pub(super) fn update_rc(&self) {
        if self.ret.get() == 0 && self.is_cancelled() {
            self.ret.set(-libc::ECANCELED);
        }
        if self.ret.get() != 0 {
            if self.err.borrow().is_none() {
                *self.err.borrow_mut() = Some(strerror(-self.ret.get()));
            }
            self.transition(JobStatus::Aborting);
        }
    }

    /// Waits until the job has concluded or is gone (the wait of job_finish_sync) and
    /// returns its result.
    pub async fn wait_concluded(&self) -> Result<()> {
        self.changed
            .wait_while(|| !matches!(self.status(), JobStatus::Concluded | JobStatus::Null))
            .await;
        match self.ret.get() {
            0 => Ok(()),
            ret => Err(Error::new(-ret, self.error().unwrap_or_default())),
        }
    }

    /// Waits until the job reaches `status`, or has concluded.
    pub async fn wait_status(&self, status: JobStatus) {
        self.changed
            .wait_while(|| {
                let s = self.status();
                s != status && !matches!(s, JobStatus::Concluded | JobStatus::Null)
            })
            .await;
    }

    /// Whether a ready job is converged (job_is_ready).
    pub fn is_ready(&self) -> bool {
        self.status().is_ready()
    }

    /// Announces that the job converged (job_transition_to_ready).
    pub fn transition_to_ready(&self) {
        self.transition(JobStatus::Ready);
        if !self.is_internal() {
            self.emit(JobEvent::Ready(self.event_info()));
        }
    }

    /// Kicks a job sleeping on its timer (set-speed's job_enter_cond with job_timer_pending).
    pub(super) fn enter_if_sleeping(&self) {
        self.enter_cond(|j| j.timer_pending.get());
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Job({} '{}' {})",
            self.job_type().name(),
            self.id(),
            self.status().name()
        )
    }
}
