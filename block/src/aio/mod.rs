//! AioContext: the main loop that runs request coroutines, bottom halves and fd handlers.
//!
//! QEMU's util/async.c + util/aio-posix.c. One AioContext belongs to one thread (the "home"
//! thread); all block-graph state is touched only from there. It is built from two crates that
//! do the generic work: `async-executor` runs the coroutines (Rust futures) and `async-io`
//! waits on file descriptors (epoll) and timers. On top sit the QEMU concepts:
//!
//! * bottom halves ([`bh`]): one-shot callbacks, schedulable from any thread, run in FIFO
//!   slices on the home thread — how completions get back to devices and tools;
//! * the thread pool ([`thread_pool`]) and io_uring ([`io_uring`]) engines, where request
//!   coroutines yield while the kernel or a worker does the I/O;
//! * event notifiers ([`notifier`]): eventfds a coroutine or handler can wait on.

pub mod bh;
pub mod io_uring;
pub mod notifier;
pub mod thread_pool;

use std::cell::{Cell, OnceCell};
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use async_executor::{LocalExecutor, Task};

use crate::error::Result;
pub use bh::AioContextHandle;
use bh::{BhQueue, LocalBhQueue};

/// The event loop of one thread (QEMU's AioContext).
pub struct AioContext {
    executor: LocalExecutor<'static>,
    remote_bhs: std::sync::Arc<BhQueue>,
    local_bhs: LocalBhQueue,
    dispatcher: OnceCell<Task<()>>,
    running: Cell<bool>,
    thread_pool: OnceCell<Rc<thread_pool::ThreadPool>>,
    io_uring: OnceCell<Rc<io_uring::IoUringEngine>>,
}

thread_local! {
    static CURRENT: OnceCell<Rc<AioContext>> = const { OnceCell::new() };
}

impl AioContext {
    /// The AioContext of the calling thread, created on first use
    /// (qemu_get_current_aio_context).
    pub fn current() -> Rc<AioContext> {
        CURRENT.with(|c| c.get_or_init(|| Rc::new(AioContext::new())).clone())
    }

    fn new() -> AioContext {
        AioContext {
            executor: LocalExecutor::new(),
            remote_bhs: std::sync::Arc::new(BhQueue::default()),
            local_bhs: LocalBhQueue::default(),
            dispatcher: OnceCell::new(),
            running: Cell::new(false),
            thread_pool: OnceCell::new(),
            io_uring: OnceCell::new(),
        }
    }

    /// A handle other threads use to schedule bottom halves on this context.
    pub fn handle(&self) -> AioContextHandle {
        AioContextHandle::new(self.remote_bhs.clone())
    }

    /// Starts a coroutine on this context (qemu_coroutine_create + aio_co_enter). It first
    /// runs on the next loop iteration, never inside this call.
    pub fn spawn<T: 'static>(&self, coroutine: impl Future<Output = T> + 'static) -> Task<T> {
        self.executor.spawn(coroutine)
    }

    /// Schedules a bottom half from the home thread: `f` runs on a later loop iteration
    /// (qemu_bh_schedule on a one-shot BH, aio_bh_schedule_oneshot).
    pub fn schedule_bh(&self, f: impl FnOnce() + 'static) {
        self.local_bhs.push(Box::new(f));
        self.remote_bhs.notify();
    }

    /// Runs the loop until `future` completes and returns its output (the tools' way of
    /// waiting, like QEMU's `AIO_WAIT_WHILE` / `bdrv_poll_co`). Not re-entrant.
    pub fn run_until<T>(self: &Rc<Self>, future: impl Future<Output = T>) -> T {
        assert!(
            !self.running.replace(true),
            "AioContext::run_until is not re-entrant"
        );
        let me = self.clone();
        self.dispatcher
            .get_or_init(|| self.executor.spawn(me.dispatch_bottom_halves()));
        let out = async_io::block_on(self.executor.run(future));
        self.running.set(false);
        out
    }

    /// The home-thread loop body that runs bottom halves, in slices: BHs scheduled while a
    /// slice runs wait for the next one (QEMU's aio_bh_poll splices the list the same way).
    async fn dispatch_bottom_halves(self: Rc<Self>) {
        loop {
            let listener = self.remote_bhs.listen();
            if self.run_bottom_halves() {
                // Let the coroutines a slice woke run before the next slice.
                futures_lite::future::yield_now().await;
            } else {
                listener.await;
            }
        }
    }

    /// Runs one slice of pending bottom halves; returns whether any ran.
    fn run_bottom_halves(&self) -> bool {
        let remote = self.remote_bhs.take();
        let local = self.local_bhs.take();
        let ran = !remote.is_empty() || !local.is_empty();
        for bh in remote {
            bh();
        }
        for bh in local {
            bh();
        }
        ran
    }

    /// The context's thread pool for blocking system calls (created on first use).
    pub fn thread_pool(&self) -> Rc<thread_pool::ThreadPool> {
        self.thread_pool
            .get_or_init(|| Rc::new(thread_pool::ThreadPool::new(self.handle())))
            .clone()
    }

    /// The context's io_uring engine (created on first use).
    pub fn io_uring(&self) -> Result<Rc<io_uring::IoUringEngine>> {
        if let Some(engine) = self.io_uring.get() {
            return Ok(engine.clone());
        }
        let engine = io_uring::IoUringEngine::new()?;
        Ok(self.io_uring.get_or_init(|| engine).clone())
    }
}

/// Suspends the calling coroutine for `duration` (qemu_co_sleep_ns).
pub async fn co_sleep(duration: Duration) {
    async_io::Timer::after(duration).await;
}

#[cfg(test)]
mod tests;
