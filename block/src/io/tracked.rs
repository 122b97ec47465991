//! Request tracking on a node: the list of requests in flight, the wait of serialising
//! requests for overlapping ones, and the guards that undo the bookkeeping when a request
//! ends however it ends (QEMU's tracked_requests and bdrv_wait_serialising_requests in
//! block/io.c).

use std::cell::{Cell, RefCell};

use crate::node::BlockDriverState;
use crate::trace;

/// A request in flight on a node, as other requests see it.
struct TrackedRequest {
    id: u64,
    offset: u64,
    bytes: u64,
    serialising: bool,
    /// Waiting for a conflicting request: others do not wait for it.
    waiting: bool,
}

/// The list of requests in flight on a node (bs->tracked_requests).
///
/// Every request is listed, but the list is searched only while a serialising request is
/// in flight or for a serialising request itself (QEMU's serialising_in_flight), and waiters
/// are woken only when some request waits: the common case costs a push and a removal.
#[derive(Default)]
pub(crate) struct TrackedRequests {
    list: RefCell<Vec<TrackedRequest>>,
    next_id: Cell<u64>,
    /// Serialising requests listed now.
    serialising: Cell<usize>,
    /// Requests waiting for a conflicting one to finish.
    waiters: Cell<usize>,
}

/// Removes a tracked request when the request finishes, however it finishes.
pub(super) struct TrackedGuard<'a> {
    bs: &'a BlockDriverState,
    id: u64,
    serialising: bool,
}

impl Drop for TrackedGuard<'_> {
    fn drop(&mut self) {
        let tracked = &self.bs.tracked;
        {
            let mut list = tracked.list.borrow_mut();
            // Newest requests sit at the end and usually finish first.
            if let Some(i) = list.iter().rposition(|r| r.id == self.id) {
                list.swap_remove(i);
            }
        }
        if self.serialising {
            tracked.serialising.set(tracked.serialising.get() - 1);
        }
        if tracked.waiters.get() > 0 {
            self.bs.tracked_done.restart_all();
        }
    }
}

/// Counts a request waiting in `track` for as long as it waits (also when it is dropped).
struct WaiterGuard<'a>(&'a Cell<usize>);

impl<'a> WaiterGuard<'a> {
    fn new(count: &'a Cell<usize>) -> Self {
        count.set(count.get() + 1);
        WaiterGuard(count)
    }
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Counts a request in flight on a node for as long as it lives.
pub(super) struct InFlightGuard<'a>(&'a BlockDriverState);

impl<'a> InFlightGuard<'a> {
    pub(super) fn new(bs: &'a BlockDriverState) -> Self {
        bs.in_flight.inc();
        InFlightGuard(bs)
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// Counts a write when it finishes (bdrv_co_write_req_finish's write_gen): a flush tells
/// from the count whether anything was written since the last one.
pub(super) struct WriteGenGuard<'a>(pub(super) &'a BlockDriverState);

impl Drop for WriteGenGuard<'_> {
    fn drop(&mut self) {
        self.0.write_gen.set(self.0.write_gen.get() + 1);
    }
}
impl BlockDriverState {
    /// Registers a request and waits for overlapping ones it must not interleave with: a
    /// serialising request waits for every overlapping request, and any request waits for
    /// an overlapping serialising one (bdrv_wait_serialising_requests). As in QEMU, a
    /// request that is itself waiting is not waited for, so no two requests can wait for
    /// each other, and a request suspended (by blkdebug) holds up only what overlaps it.
    pub(super) async fn track(
        &self,
        offset: u64,
        bytes: u64,
        serialising: bool,
    ) -> TrackedGuard<'_> {
        let tracked = &self.tracked;
        let id = tracked.next_id.get();
        tracked.next_id.set(id + 1);
        if serialising {
            tracked.serialising.set(tracked.serialising.get() + 1);
        }
        // Only a serialising request, ours or another's, can make this one wait.
        let may_conflict = tracked.serialising.get() > 0;
        tracked.list.borrow_mut().push(TrackedRequest {
            id,
            offset,
            bytes,
            serialising,
            waiting: may_conflict,
        });
        let guard = TrackedGuard {
            bs: self,
            id,
            serialising,
        };
        if !may_conflict {
            return guard;
        }
        let conflicts = || {
            let mut list = tracked.list.borrow_mut();
            let found = list.iter().any(|r| {
                r.id != id
                    && !r.waiting
                    && (serialising || r.serialising)
                    && r.offset < offset + bytes
                    && offset < r.offset + r.bytes
            });
            if !found {
                if let Some(me) = list.iter_mut().find(|r| r.id == id) {
                    me.waiting = false;
                }
            }
            found
        };
        if conflicts() {
            trace!(
                bdrv_co_wait_serialising,
                "bs {:p} offset {} bytes {}",
                self,
                offset,
                bytes
            );
            let _waiter = WaiterGuard::new(&tracked.waiters);
            self.tracked_done.wait_while(conflicts).await;
        }
        guard
    }
}
