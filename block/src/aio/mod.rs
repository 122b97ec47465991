//! AioContext: the main loop that runs request coroutines, bottom halves and fd handlers.
//!
//! QEMU's util/async.c + util/aio-posix.c. One AioContext belongs to one thread (the "home"
//! thread); all block-graph state is touched only from there. Its loop, [`AioContext::run_until`],
//! is QEMU's `aio_poll` turned around a future:
//!
//! 1. run the coroutines that are ready (Rust futures, tasks on the context's [`executor`]);
//! 2. run the pending bottom halves ([`bh`]), which may make more coroutines ready;
//! 3. when nothing is ready, sleep in epoll ([`epoll`]) until a file descriptor
//!    turns readable — an io_uring completion eventfd, a KVM ioeventfd — a timer expires, or
//!    another thread kicks the loop;
//! 4. wake the coroutines waiting on what happened, and go round again.
//!
//! The engines where request coroutines wait for I/O are the thread pool ([`thread_pool`]) and
//! io_uring ([`io_uring`]); [`notifier`] is the eventfd wrapper, [`timer`] the timer list.

pub mod bh;
mod epoll;
mod executor;
pub mod io_uring;
pub mod notifier;
pub mod thread_pool;
pub mod timer;

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{BorrowedFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use crate::error::{Error, Result};
/// A spawned coroutine's handle: dropping it cancels the coroutine.
pub use async_task::Task;
pub use bh::AioContextHandle;
use bh::{BhQueue, LocalBhQueue};
pub use timer::co_sleep;

/// The event loop of one thread (QEMU's AioContext).
pub struct AioContext {
    executor: executor::Executor,
    kick: Arc<Kick>,
    remote_bhs: Arc<BhQueue>,
    local_bhs: LocalBhQueue,
    fd_waiters: RefCell<HashMap<RawFd, FdWaiter>>,
    timers: timer::TimerList,
    running: Cell<bool>,
    thread_pool: OnceCell<Rc<thread_pool::ThreadPool>>,
    io_uring: OnceCell<Rc<io_uring::IoUringEngine>>,
}

/// A coroutine waiting for a descriptor to become readable.
struct FdWaiter {
    /// Which open descriptor the registration belongs to: fd numbers are reused after a
    /// close, so a different token for the same number means "register afresh".
    token: u64,
    waker: Option<Waker>,
    ready: bool,
}

/// How other threads (and wakers) get a sleeping loop going again (QEMU's aio_notify with
/// its notify_me/notified pair): `woken` records that something happened; `sleeping` says
/// the loop is in, or about to enter, epoll and needs the eventfd write to return from it.
pub(crate) struct Kick {
    epoll: epoll::Epoll,
    /// Written to interrupt the wait; registered with `epoll` under [`KICK_KEY`].
    notifier: notifier::EventNotifier,
    woken: AtomicBool,
    sleeping: AtomicBool,
}

impl Kick {
    /// Marks the loop as having work; interrupts epoll only when the loop may be sleeping.
    pub(crate) fn kick(&self) {
        self.woken.store(true, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            self.notifier.set();
        }
    }
}

impl Wake for Kick {
    fn wake(self: Arc<Self>) {
        self.kick();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.kick();
    }
}

static NEXT_FD_TOKEN: AtomicU64 = AtomicU64::new(1);

/// A fresh token naming one open descriptor for [`AioContext::wait_readable`]: fd numbers
/// are reused after a close, tokens are not.
pub fn new_fd_token() -> u64 {
    NEXT_FD_TOKEN.fetch_add(1, Ordering::Relaxed)
}

/// The epoll key of the kick notifier; other descriptors are keyed by their number.
const KICK_KEY: u64 = u64::MAX;

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
        let epoll =
            epoll::Epoll::new().expect("cannot create an epoll instance for the AioContext");
        let notifier =
            notifier::EventNotifier::new().expect("cannot create the AioContext's eventfd");
        epoll
            .add_edge(notifier.as_raw_fd(), KICK_KEY)
            .expect("cannot register the AioContext's eventfd");
        let kick = Arc::new(Kick {
            epoll,
            notifier,
            woken: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
        });
        AioContext {
            executor: executor::Executor::new(kick.clone()),
            remote_bhs: Arc::new(BhQueue::new(kick.clone())),
            kick,
            local_bhs: LocalBhQueue::default(),
            fd_waiters: RefCell::new(HashMap::new()),
            timers: timer::TimerList::default(),
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
    }

    /// Runs the loop until `future` completes and returns its output (the tools' way of
    /// waiting, like QEMU's `AIO_WAIT_WHILE` / `bdrv_poll_co`). Not re-entrant.
    pub fn run_until<T>(self: &Rc<Self>, future: impl Future<Output = T>) -> T {
        assert!(
            !self.running.replace(true),
            "AioContext::run_until is not re-entrant"
        );
        let waker = Waker::from(self.kick.clone());
        let mut cx = Context::from_waker(&waker);
        let mut main = pin!(future);
        let mut events = Vec::new();
        let out = loop {
            self.kick.woken.store(false, Ordering::SeqCst);
            // 1: the coroutines: `future` first, then every one that is ready.
            if let Poll::Ready(out) = main.as_mut().poll(&mut cx) {
                break out;
            }
            self.executor.run_ready();
            // 2: bottom halves; they usually make coroutines ready, so go round again.
            if self.run_bottom_halves() {
                continue;
            }
            // 3: sleep until an fd, a timer or a kick.
            self.wait_for_events(&mut events);
            // 4: wake what happened.
            self.dispatch_fd_events(&events);
            self.timers.fire_expired(Instant::now());
        };
        self.running.set(false);
        out
    }

    /// Runs one slice of pending bottom halves; returns whether any ran. BHs scheduled
    /// while a slice runs wait for the next one (QEMU's aio_bh_poll splices the list so).
    fn run_bottom_halves(&self) -> bool {
        let mut remote = self.remote_bhs.take();
        let mut local = self.local_bhs.take();
        let ran = !remote.is_empty() || !local.is_empty();
        for bh in remote.drain(..) {
            bh();
        }
        for bh in local.drain(..) {
            bh();
        }
        // The emptied lists keep their capacity for the next slices.
        self.remote_bhs.recycle(remote);
        self.local_bhs.recycle(local);
        ran
    }

    fn wait_for_events(&self, events: &mut Vec<u64>) {
        events.clear();
        self.kick.sleeping.store(true, Ordering::SeqCst);
        // Checked after announcing the sleep: a kick from now on also writes the eventfd.
        let nothing_pending = !self.kick.woken.load(Ordering::SeqCst)
            && !self.executor.has_ready()
            && !self.remote_bhs.has_pending()
            && !self.local_bhs.has_pending();
        if nothing_pending {
            let timeout = self
                .timers
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            self.kick.epoll.wait(events, timeout);
        }
        self.kick.sleeping.store(false, Ordering::SeqCst);
    }

    fn dispatch_fd_events(&self, events: &[u64]) {
        let mut waiters = self.fd_waiters.borrow_mut();
        for &key in events {
            if key == KICK_KEY {
                // Edge-triggered: the read only keeps the counter from growing.
                self.kick.notifier.test_and_clear();
                continue;
            }
            if let Some(w) = waiters.get_mut(&(key as RawFd)) {
                w.ready = true;
                if let Some(waker) = w.waker.take() {
                    waker.wake();
                }
            }
        }
    }

    /// Waits until `fd` becomes readable (an fd handler in QEMU's terms). `token` names the
    /// open descriptor (an EventNotifier's id): the first wait registers it with epoll,
    /// edge-triggered, and later waits cost no system call. An edge that arrives while
    /// nobody waits is remembered, and registering a descriptor that is already readable
    /// reports it, so waiting first and reading after misses nothing; a wake-up may be
    /// stale (the data went with an earlier read), so the caller reads and, finding
    /// nothing, waits again. It must keep the descriptor open while waiting.
    pub async fn wait_readable(&self, fd: BorrowedFd<'_>, token: u64) -> Result<()> {
        self.wait_for(fd, token, libc::EPOLLIN).await
    }

    /// Waits until `fd` becomes writable, as [`AioContext::wait_readable`] waits for input.
    /// A descriptor is watched for one direction only: a socket whose writes may block is
    /// watched for output through a `dup` of it (QEMU's fd handlers have both callbacks on
    /// one registration; one waker per registration keeps this loop simpler).
    pub async fn wait_writable(&self, fd: BorrowedFd<'_>, token: u64) -> Result<()> {
        self.wait_for(fd, token, libc::EPOLLOUT).await
    }

    async fn wait_for(&self, fd: BorrowedFd<'_>, token: u64, events: i32) -> Result<()> {
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        self.register(raw, token, events)?;
        std::future::poll_fn(|cx| {
            let mut waiters = self.fd_waiters.borrow_mut();
            let w = waiters
                .get_mut(&raw)
                .expect("registered descriptors have a waiter");
            if std::mem::take(&mut w.ready) {
                Poll::Ready(Ok(()))
            } else {
                w.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn register(&self, raw: RawFd, token: u64, events: i32) -> Result<()> {
        let mut waiters = self.fd_waiters.borrow_mut();
        if waiters.get(&raw).is_some_and(|w| w.token == token) {
            return Ok(());
        }
        // A new descriptor, or a reused number: epoll dropped the old one when it was closed.
        self.kick
            .epoll
            .add_edge_for(raw, raw as u64, events)
            .map_err(Error::from)?;
        waiters.insert(
            raw,
            FdWaiter {
                token,
                waker: None,
                ready: false,
            },
        );
        Ok(())
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

#[cfg(test)]
mod tests;
