//! The thread pool: where coroutines send blocking system calls (QEMU's aio=threads).
//!
//! QEMU's util/thread-pool.c. A coroutine submits a closure (a preadv, an fdatasync...) and
//! yields. A worker thread runs it, records the result, and puts the request on the pool's
//! completion list; the first completion of a batch schedules the pool's completion bottom
//! half on the AioContext, which wakes every finished coroutine on the home thread. Workers are
//! started on demand up to `max_threads` and retire after a while idle.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::AioContextHandle;
use crate::trace;

/// Default upper bound on worker threads (QEMU: 64).
pub const DEFAULT_MAX_THREADS: usize = 64;
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

/// A pool of worker threads bound to one AioContext.
pub struct ThreadPool {
    shared: Arc<Shared>,
}

struct Shared {
    work: Mutex<WorkQueue>,
    work_ready: Condvar,
    max_threads: usize,
    completions: Mutex<Vec<Arc<dyn Completion>>>,
    completion_bh_scheduled: AtomicBool,
    ctx: AioContextHandle,
    next_id: AtomicU64,
}

#[derive(Default)]
struct WorkQueue {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

/// A finished request waiting for the completion bottom half to wake its coroutine.
trait Completion: Send + Sync {
    fn wake(&self);
}

struct Slot<R> {
    state: Mutex<(Option<R>, Option<Waker>)>,
}

impl<R: Send> Completion for Slot<R> {
    fn wake(&self) {
        let waker = self.state.lock().unwrap().1.take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl ThreadPool {
    pub(crate) fn new(ctx: AioContextHandle) -> ThreadPool {
        ThreadPool {
            shared: Arc::new(Shared {
                work: Mutex::new(WorkQueue::default()),
                work_ready: Condvar::new(),
                max_threads: DEFAULT_MAX_THREADS,
                completions: Mutex::new(Vec::new()),
                completion_bh_scheduled: AtomicBool::new(false),
                ctx,
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Runs `work` on a worker thread; the returned future completes, on the home thread,
    /// with its result (thread_pool_submit_co; the queueing is thread_pool_submit_aio, whose
    /// trace event it emits).
    pub fn submit<R, F>(&self, work: F) -> impl Future<Output = R>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        ThreadPoolRequest {
            shared: self.shared.clone(),
            slot: Arc::new(Slot {
                state: Mutex::new((None, None)),
            }),
            work: Some(Box::new(work)),
        }
    }

    /// Number of worker threads alive now (for tests and `info`).
    pub fn threads(&self) -> usize {
        self.shared.work.lock().unwrap().threads
    }
}

struct ThreadPoolRequest<R, F> {
    shared: Arc<Shared>,
    slot: Arc<Slot<R>>,
    work: Option<Box<F>>,
}

impl<R, F> Future for ThreadPoolRequest<R, F>
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    type Output = R;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<R> {
        // SAFETY-free: every field is Unpin (Arc, Option<Box<_>>).
        let this = self.get_mut();
        {
            let mut state = this.slot.state.lock().unwrap();
            if let Some(result) = state.0.take() {
                return Poll::Ready(result);
            }
            state.1 = Some(cx.waker().clone());
        }
        if let Some(work) = this.work.take() {
            this.shared.queue(this.slot.clone(), work);
        }
        Poll::Pending
    }
}

impl Shared {
    fn queue<R, F>(self: &Arc<Self>, slot: Arc<Slot<R>>, work: Box<F>)
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        trace!(
            thread_pool_submit_aio,
            "pool {:p} req {}",
            Arc::as_ptr(self),
            id
        );
        let me = self.clone();
        let job: Job = Box::new(move || {
            let result = work();
            slot.state.lock().unwrap().0 = Some(result);
            trace!(
                thread_pool_complete_aio,
                "pool {:p} req {}",
                Arc::as_ptr(&me),
                id
            );
            me.complete(slot);
        });
        let mut q = self.work.lock().unwrap();
        q.jobs.push_back(job);
        if q.idle == 0 && q.threads < self.max_threads {
            q.threads += 1;
            drop(q);
            self.spawn_worker();
        } else {
            // A busy worker takes the job when it looks for the next one; waking costs a
            // futex call per request, so only when a worker is actually waiting.
            let waiting = q.idle > 0;
            drop(q);
            if waiting {
                self.work_ready.notify_one();
            }
        }
    }

    fn complete(self: &Arc<Self>, done: Arc<dyn Completion>) {
        self.completions.lock().unwrap().push(done);
        if !self.completion_bh_scheduled.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            self.ctx.schedule_bh(move || me.completion_bh());
        }
    }

    /// Runs on the home thread: wakes every coroutine whose request finished.
    fn completion_bh(&self) {
        self.completion_bh_scheduled.store(false, Ordering::Release);
        let done = std::mem::take(&mut *self.completions.lock().unwrap());
        for request in done {
            request.wake();
        }
    }

    fn spawn_worker(self: &Arc<Self>) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("worker".into())
            .spawn(move || me.worker_loop());
        if spawned.is_err() {
            // Out of threads: the queued job is picked up by an existing worker.
            self.work.lock().unwrap().threads -= 1;
        }
    }

    fn worker_loop(&self) {
        let mut q = self.work.lock().unwrap();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                drop(q);
                job();
                q = self.work.lock().unwrap();
                continue;
            }
            q.idle += 1;
            let (guard, timeout) = self.work_ready.wait_timeout(q, IDLE_TIMEOUT).unwrap();
            q = guard;
            q.idle -= 1;
            if timeout.timed_out() && q.jobs.is_empty() {
                q.threads -= 1;
                return;
            }
        }
    }
}
