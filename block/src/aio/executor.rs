//! The run queue of an AioContext: where woken coroutines wait for the loop to resume them.
//!
//! QEMU resumes a coroutine by entering it directly (aio_co_wake), or from another thread by
//! scheduling it on its context (aio_co_schedule). Here every coroutine is an `async_task`
//! task: waking it, from any thread, puts its `Runnable` at the back of this queue and kicks
//! the loop, and the loop runs the queue. A general-purpose executor (async-executor) adds
//! work-stealing queues and a registry of live tasks; a context belongs to one thread and
//! needs neither, and a request's wakeups are a large part of what a request costs.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_task::{Runnable, Task};

use super::Kick;

/// Coroutines run per call of [`Executor::run_ready`], so that one that keeps waking itself
/// cannot starve bottom halves and file descriptors (async-executor uses 200 too).
const RUN_BUDGET: usize = 200;

/// The coroutines of one AioContext.
pub(crate) struct Executor {
    queue: Arc<RunQueue>,
}

/// Woken coroutines, in the order they were woken.
struct RunQueue {
    ready: Mutex<VecDeque<Runnable>>,
    kick: Arc<Kick>,
}

impl Executor {
    pub(crate) fn new(kick: Arc<Kick>) -> Executor {
        Executor {
            queue: Arc::new(RunQueue {
                ready: Mutex::new(VecDeque::new()),
                kick,
            }),
        }
    }

    /// Starts `future` as a coroutine; it first runs when the loop next runs the queue.
    pub(crate) fn spawn<T: 'static>(&self, future: impl Future<Output = T> + 'static) -> Task<T> {
        let queue = Arc::downgrade(&self.queue);
        let schedule = move |runnable: Runnable| match queue.upgrade() {
            Some(queue) => {
                queue.ready.lock().unwrap().push_back(runnable);
                queue.kick.kick();
            }
            // The context is gone: dropping the runnable drops the coroutine.
            None => drop(runnable),
        };
        // spawn_local: the coroutine may hold thread-bound state (Rc); async-task checks
        // that it is only ever polled and dropped on this thread.
        let (runnable, task) = async_task::spawn_local(future, schedule);
        runnable.schedule();
        task
    }

    /// Runs woken coroutines, including those they wake, until none is left or the budget
    /// is spent; returns whether any ran.
    pub(crate) fn run_ready(&self) -> bool {
        let mut ran = 0;
        while ran < RUN_BUDGET {
            // The lock is released before the coroutine runs: it may wake others.
            let next = self.queue.ready.lock().unwrap().pop_front();
            let Some(runnable) = next else {
                break;
            };
            runnable.run();
            ran += 1;
        }
        ran > 0
    }

    /// Whether a woken coroutine waits to run.
    pub(crate) fn has_ready(&self) -> bool {
        !self.queue.ready.lock().unwrap().is_empty()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Dropping a runnable drops its coroutine, which may wake, and so queue, others.
        loop {
            let ready = std::mem::take(&mut *self.queue.ready.lock().unwrap());
            if ready.is_empty() {
                break;
            }
            drop(ready);
        }
    }
}
