//! Coroutines: how a request waits without blocking its thread.
//!
//! QEMU's util/qemu-coroutine*.c. QEMU runs each request on its own stack and switches stacks
//! when it waits. In Rust a request is an `async fn`: the compiler turns it into a state machine
//! that returns `Pending` where QEMU would `qemu_coroutine_yield()`, and the AioContext's
//! executor resumes it when its waker fires — the same shape without separate stacks.
//! `co_spawn` is `qemu_coroutine_create` + `aio_co_enter`; [`CoQueue`] is QEMU's CoQueue (a
//! wait list of coroutines); [`CoMutex`] is QEMU's CoMutex (a lock held across yields);
//! [`CoroutinePool`] keeps finished request coroutines for reuse (QEMU's coroutine pool).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};

use event_listener::{Event, IntoNotification};

use crate::aio::AioContext;

/// A boxed coroutine that stays on its thread; recursion through the graph (a node calling
/// its child's generic path) needs one level of boxing.
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A mutex a coroutine may hold while it waits for I/O (QEMU's CoMutex).
pub type CoMutex<T> = async_lock::Mutex<T>;

/// Starts `coroutine` on the current thread's AioContext and lets it run to completion
/// on its own (a detached coroutine, as QEMU's `qemu_coroutine_enter` of a fresh one).
pub fn co_spawn(coroutine: impl Future<Output = ()> + 'static) {
    AioContext::current().spawn(coroutine).detach();
}

/// A queue of coroutines waiting for a condition (QEMU's CoQueue).
///
/// A waiter must re-check its condition after waking: `restart_all` wakes every waiter, and
/// the condition may have changed again before a waiter runs.
#[derive(Default)]
pub struct CoQueue {
    event: Event,
}

impl CoQueue {
    /// An empty queue.
    pub fn new() -> CoQueue {
        CoQueue::default()
    }

    /// Waits until `restart_all` is called (qemu_co_queue_wait). Register interest before
    /// releasing the state that made you wait: use [`CoQueue::wait_while`] for that.
    pub async fn wait(&self) {
        self.event.listen().await;
    }

    /// Waits while `condition()` holds, re-checking after each wakeup. The listener is
    /// registered before each check, so a restart between check and wait is never lost.
    pub async fn wait_while(&self, mut condition: impl FnMut() -> bool) {
        // Fast path: most requests never wait, and a listener costs an allocation.
        if !condition() {
            return;
        }
        loop {
            let listener = self.event.listen();
            if !condition() {
                return;
            }
            listener.await;
        }
    }

    /// Wakes every waiting coroutine (qemu_co_queue_restart_all).
    pub fn restart_all(&self) {
        self.event.notify(usize::MAX);
    }

    /// Wakes one more waiting coroutine (qemu_co_queue_next): each call wakes another
    /// waiter, even while one woken earlier has not run yet, so that a resource freed
    /// twice is offered to two waiters.
    pub fn restart_one(&self) {
        self.event.notify(1.additional());
    }
}

/// A counter of requests in flight with a way to wait for it to reach zero (QEMU's
/// `in_flight` + `AIO_WAIT_WHILE` for drain).
#[derive(Default)]
pub struct InFlight {
    count: RefCell<u64>,
    idle: CoQueue,
}

impl InFlight {
    /// Counts one more request.
    pub fn inc(&self) {
        *self.count.borrow_mut() += 1;
    }

    /// Counts one request done; wakes drainers when none remain.
    pub fn dec(&self) {
        let mut c = self.count.borrow_mut();
        *c -= 1;
        if *c == 0 {
            self.idle.restart_all();
        }
    }

    /// Requests in flight now.
    pub fn get(&self) -> u64 {
        *self.count.borrow()
    }

    /// Waits until no request is in flight.
    pub async fn drained(&self) {
        self.idle.wait_while(|| *self.count.borrow() > 0).await;
    }
}

/// Work for a [`CoroutinePool`]: one request, run to completion by a pooled coroutine.
pub trait PoolJob: 'static {
    /// Runs the request.
    fn run(self) -> impl Future<Output = ()>;
}

/// Idle coroutines a pool keeps (QEMU keeps a batch of 64 per thread).
const POOL_MAX_IDLE: usize = 64;

/// Long-lived coroutines that run jobs one after another (QEMU's coroutine pool).
///
/// Spawning a task per request costs an allocation, a copy of the request's whole state
/// machine into it and the executor's bookkeeping. A pooled coroutine is allocated once
/// with room for the largest job and then only waits for the next job. A job still first
/// runs on a later loop iteration, as a freshly spawned coroutine would, and jobs start in
/// the order submitted. Idle coroutines hold the pool weakly: dropping the pool lets them
/// finish.
pub struct CoroutinePool<J: PoolJob> {
    queue: RefCell<VecDeque<J>>,
    idle: RefCell<Vec<Waker>>,
}

impl<J: PoolJob> CoroutinePool<J> {
    /// An empty pool; coroutines are started on demand.
    pub fn new() -> Rc<CoroutinePool<J>> {
        Rc::new(CoroutinePool {
            queue: RefCell::new(VecDeque::new()),
            idle: RefCell::new(Vec::new()),
        })
    }

    /// Queues `job` and wakes an idle coroutine for it, or starts one.
    pub fn submit(self: &Rc<Self>, job: J) {
        self.queue.borrow_mut().push_back(job);
        let idle = self.idle.borrow_mut().pop();
        match idle {
            Some(waker) => waker.wake(),
            None => co_spawn(pool_worker(Rc::downgrade(self))),
        }
    }

    /// The next job, or `None` when the pool is gone or has enough idle coroutines. An
    /// idle coroutine waits with its waker on the idle list; `submit` takes it off to wake
    /// it, so each idle coroutine is listed at most once.
    fn next_job(pool: &Weak<Self>) -> impl Future<Output = Option<J>> + '_ {
        std::future::poll_fn(move |cx| {
            let Some(pool) = pool.upgrade() else {
                return Poll::Ready(None);
            };
            if let Some(job) = pool.queue.borrow_mut().pop_front() {
                return Poll::Ready(Some(job));
            }
            let mut idle = pool.idle.borrow_mut();
            if idle.len() >= POOL_MAX_IDLE {
                return Poll::Ready(None);
            }
            idle.push(cx.waker().clone());
            Poll::Pending
        })
    }
}

/// The body of a pooled coroutine: run jobs while there are any, then wait idle.
async fn pool_worker<J: PoolJob>(pool: Weak<CoroutinePool<J>>) {
    while let Some(job) = CoroutinePool::next_job(&pool).await {
        job.run().await;
    }
}
