//! The clock throttling runs on: the host's monotonic time, or under qtest the virtual
//! clock the test steps (QEMU's QEMU_CLOCK_REALTIME / QEMU_CLOCK_VIRTUAL in
//! util/qemu-timer.c, which throttle groups pick between by qtest_enabled()).
//!
//! The qtest protocol moves the virtual clock from its own thread; the requests waiting on
//! it live on the main loop, so a step schedules a bottom half there that wakes them to
//! look at the time again.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::aio::AioContextHandle;
use crate::coroutine::CoQueue;

static VIRTUAL: AtomicBool = AtomicBool::new(false);
static VIRTUAL_NS: AtomicI64 = AtomicI64::new(0);
static LOOP: OnceLock<AioContextHandle> = OnceLock::new();
static START: OnceLock<Instant> = OnceLock::new();

thread_local! {
    /// Requests waiting for the virtual clock to move.
    static MOVED: Rc<CoQueue> = Rc::new(CoQueue::new());
}

/// Makes throttling follow the virtual clock, whose steps wake the waiters on `main`'s
/// loop (qtest_enabled()).
pub fn use_virtual_clock(main: AioContextHandle) {
    VIRTUAL.store(true, Ordering::SeqCst);
    let _ = LOOP.set(main);
}

/// The virtual clock in nanoseconds.
pub fn virtual_ns() -> i64 {
    VIRTUAL_NS.load(Ordering::SeqCst)
}

/// Moves the virtual clock to `ns` if that is later (never back); returns the time now.
pub fn advance_virtual_to(ns: i64) -> i64 {
    let now = VIRTUAL_NS.fetch_max(ns, Ordering::SeqCst).max(ns);
    if let Some(main) = LOOP.get() {
        main.schedule_bh(|| MOVED.with(|m| m.restart_all()));
    }
    now
}

/// The throttling clock's time in nanoseconds.
pub fn now_ns() -> i64 {
    if VIRTUAL.load(Ordering::SeqCst) {
        return virtual_ns();
    }
    START.get_or_init(Instant::now).elapsed().as_nanos() as i64
}

/// Waits until the clock may have reached `deadline_ns` (callers look again): a real-time
/// sleep, or until the test next steps the virtual clock.
pub async fn sleep_until(deadline_ns: i64) {
    if VIRTUAL.load(Ordering::SeqCst) {
        let moved = MOVED.with(Rc::clone);
        moved.wait().await;
        return;
    }
    let wait = (deadline_ns - now_ns()).max(0) as u64;
    crate::aio::timer::co_sleep(Duration::from_nanos(wait)).await;
}

/// Wakes every request waiting on the virtual clock, so it looks again (a drained section
/// lifts the limits).
pub fn wake_waiters() {
    MOVED.with(|m| m.restart_all());
}
