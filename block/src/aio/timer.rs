//! Timers of an AioContext: coroutines sleeping until a deadline (QEMU's QEMUTimer list and
//! qemu_co_sleep_ns). The loop sleeps in epoll no longer than the earliest deadline.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::AioContext;

/// The pending timers, ordered by deadline (ties by creation order).
#[derive(Default)]
pub(crate) struct TimerList {
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    next_id: Cell<u64>,
}

impl TimerList {
    fn insert(&self, deadline: Instant, waker: Waker) -> (Instant, u64) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.timers.borrow_mut().insert((deadline, id), waker);
        (deadline, id)
    }

    fn remove(&self, key: (Instant, u64)) {
        self.timers.borrow_mut().remove(&key);
    }

    /// The earliest deadline, if any timer is pending.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.borrow().keys().next().map(|(d, _)| *d)
    }

    /// Wakes every timer whose deadline has passed.
    pub(crate) fn fire_expired(&self, now: Instant) {
        let expired: Vec<Waker> = {
            let mut timers = self.timers.borrow_mut();
            let later = timers.split_off(&(now, u64::MAX));
            std::mem::replace(&mut *timers, later)
                .into_values()
                .collect()
        };
        for waker in expired {
            waker.wake();
        }
    }
}

/// Suspends the calling coroutine for `duration` (qemu_co_sleep_ns).
pub async fn co_sleep(duration: Duration) {
    let ctx = AioContext::current();
    let deadline = Instant::now() + duration;
    let mut key = None;
    std::future::poll_fn(|cx| {
        if let Some(k) = key.take() {
            ctx.timers.remove(k);
        }
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        key = Some(ctx.timers.insert(deadline, cx.waker().clone()));
        Poll::Pending
    })
    .await
}
