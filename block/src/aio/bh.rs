//! Bottom halves: callbacks deferred to a later iteration of an AioContext's loop.
//!
//! QEMU's util/async.c (aio_bh_schedule_oneshot, aio_bh_poll). A bottom half is how work
//! crosses from "inside some call" to "on the loop, later": a worker thread finishing a
//! syscall, a vCPU thread submitting a request, or a completion that must not run inside the
//! submitting call. Any thread may schedule one through an [`AioContextHandle`]; it always runs
//! on the context's home thread, in the order scheduled.
//!
//! One difference from QEMU: QEMU pushes a scheduled BH onto the head of its list, so the BHs
//! of one slice run newest first; here a slice runs oldest first, which is easier to reason
//! about. It shows only when several requests fail inside their submitting call (qemu-io then
//! reports their errors in the opposite order).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::Kick;

/// A bottom half that may be scheduled from any thread.
pub type RemoteBh = Box<dyn FnOnce() + Send>;
/// A bottom half scheduled from the home thread; it may capture thread-local state.
pub type LocalBh = Box<dyn FnOnce()>;

/// The cross-thread queue of a context, with the kick that wakes its loop.
pub(crate) struct BhQueue {
    queue: Mutex<VecDeque<RemoteBh>>,
    /// The emptied queue of the last slice, kept for its capacity.
    spare: Mutex<VecDeque<RemoteBh>>,
    kick: Arc<Kick>,
}

impl BhQueue {
    pub(crate) fn new(kick: Arc<Kick>) -> BhQueue {
        BhQueue {
            queue: Mutex::new(VecDeque::new()),
            spare: Mutex::new(VecDeque::new()),
            kick,
        }
    }

    pub(crate) fn push(&self, bh: RemoteBh) {
        self.queue.lock().unwrap().push_back(bh);
        self.kick.kick();
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.queue.lock().unwrap().is_empty()
    }

    /// Takes the BHs queued now (a slice), leaving the spare queue in their place.
    pub(crate) fn take(&self) -> VecDeque<RemoteBh> {
        let mut slice = std::mem::take(&mut *self.spare.lock().unwrap());
        std::mem::swap(&mut slice, &mut *self.queue.lock().unwrap());
        slice
    }

    /// Keeps a slice's emptied queue as the next spare.
    pub(crate) fn recycle(&self, slice: VecDeque<RemoteBh>) {
        debug_assert!(slice.is_empty());
        *self.spare.lock().unwrap() = slice;
    }
}

/// The home-thread queue, and the emptied queue of the last slice kept for its capacity
/// (a loop iteration then allocates nothing for its BHs' list).
#[derive(Default)]
pub(crate) struct LocalBhQueue {
    queue: RefCell<VecDeque<LocalBh>>,
    spare: RefCell<VecDeque<LocalBh>>,
}

impl LocalBhQueue {
    pub(crate) fn push(&self, bh: LocalBh) {
        self.queue.borrow_mut().push_back(bh);
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.queue.borrow().is_empty()
    }

    /// Takes the BHs queued now (a slice), leaving the spare queue in their place.
    pub(crate) fn take(&self) -> VecDeque<LocalBh> {
        let mut slice = self.spare.take();
        std::mem::swap(&mut slice, &mut *self.queue.borrow_mut());
        slice
    }

    /// Keeps a slice's emptied queue as the next spare.
    pub(crate) fn recycle(&self, slice: VecDeque<LocalBh>) {
        debug_assert!(slice.is_empty());
        *self.spare.borrow_mut() = slice;
    }
}

/// A thread-safe reference to an AioContext, for scheduling bottom halves on it from other
/// threads (worker threads, vCPU threads).
#[derive(Clone)]
pub struct AioContextHandle {
    queue: Arc<BhQueue>,
}

impl AioContextHandle {
    pub(crate) fn new(queue: Arc<BhQueue>) -> AioContextHandle {
        AioContextHandle { queue }
    }

    /// Schedules `f` to run on the context's home thread.
    pub fn schedule_bh(&self, f: impl FnOnce() + Send + 'static) {
        self.queue.push(Box::new(f));
    }
}
