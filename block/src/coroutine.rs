//! Coroutines: how a request waits without blocking its thread.
//!
//! QEMU's util/qemu-coroutine*.c. QEMU runs each request on its own stack and switches stacks
//! when it waits. In Rust a request is an `async fn`: the compiler turns it into a state machine
//! that returns `Pending` where QEMU would `qemu_coroutine_yield()`, and the AioContext's
//! executor resumes it when its waker fires — the same shape without separate stacks.
//! `co_spawn` is `qemu_coroutine_create` + `aio_co_enter`; [`CoQueue`] is QEMU's CoQueue (a
//! wait list of coroutines); [`CoMutex`] is QEMU's CoMutex (a lock held across yields).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;

use event_listener::Event;

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
