//! Request tracking on a node: the list of requests in flight, and the wait of serialising
//! requests for overlapping ones (QEMU's tracked_requests and bdrv_wait_serialising_requests
//! in block/io.c). A node owns one list; the generic request path (`crate::io`) registers
//! every request in it.

use std::cell::{Cell, RefCell};

use crate::coroutine::CoQueue;

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
pub(crate) struct TrackedRequests {
    list: RefCell<Vec<TrackedRequest>>,
    next_id: Cell<u64>,
    /// Serialising requests listed now.
    serialising: Cell<usize>,
    /// Requests waiting for a conflicting one to finish.
    waiters: Cell<usize>,
    /// Woken when a request finishes while some request waits.
    done: CoQueue,
}

impl Default for TrackedRequests {
    fn default() -> Self {
        TrackedRequests {
            list: RefCell::new(Vec::new()),
            next_id: Cell::new(0),
            serialising: Cell::new(0),
            waiters: Cell::new(0),
            done: CoQueue::new(),
        }
    }
}

/// Removes a tracked request when the request finishes, however it finishes.
pub(crate) struct TrackedGuard<'a> {
    tracked: &'a TrackedRequests,
    id: u64,
    serialising: bool,
}

impl Drop for TrackedGuard<'_> {
    fn drop(&mut self) {
        let tracked = self.tracked;
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
            tracked.done.restart_all();
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

impl TrackedRequests {
    /// Registers a request and waits for overlapping ones it must not interleave with: a
    /// serialising request waits for every overlapping request, and any request waits for
    /// an overlapping serialising one (bdrv_wait_serialising_requests). As in QEMU, a
    /// request that is itself waiting is not waited for, so no two requests can wait for
    /// each other, and a request suspended (by blkdebug) holds up only what overlaps it.
    /// `bs` names the node in the trace.
    pub(crate) async fn track(
        &self,
        bs: *const (),
        offset: u64,
        bytes: u64,
        serialising: bool,
    ) -> TrackedGuard<'_> {
        let tracked = self;
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
            tracked: self,
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
                bs,
                offset,
                bytes
            );
            let _waiter = WaiterGuard::new(&tracked.waiters);
            self.done.wait_while(conflicts).await;
        }
        guard
    }
}
