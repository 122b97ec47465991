//! Drained sections: while a node is drained, no new request from a BlockBackend reaches
//! it, and the section begins only once the requests already in flight in it and above it
//! have finished (QEMU's bdrv_drained_begin/end and blk_wait_while_drained).
//!
//! A job drains a node before it changes the graph around it (mirror before it pivots), so
//! that no guest request is caught half-way through nodes that are being rewired.

use std::cell::Cell;
use std::rc::Rc;

use crate::coroutine::CoQueue;
use crate::node::BlockDriverState;

thread_local! {
    /// Drained sections open on this thread: requests only look for one when it is not 0.
    static ACTIVE: Cell<u32> = const { Cell::new(0) };
    /// Woken whenever a drained section ends.
    static ENDED: Rc<CoQueue> = Rc::new(CoQueue::new());
}

/// An open drained section; it ends when dropped (bdrv_drained_end).
pub struct DrainedSection {
    bs: Rc<BlockDriverState>,
}

/// Begins a drained section on `bs` (bdrv_drained_begin): from now on BlockBackends hold
/// back new requests to graphs containing `bs`; returns once nothing is in flight in `bs`
/// or in the nodes above it.
pub async fn drained_begin(bs: &Rc<BlockDriverState>) -> DrainedSection {
    bs.graph.quiesce.set(bs.graph.quiesce.get() + 1);
    ACTIVE.with(|a| a.set(a.get() + 1));
    // Throttled requests waiting in the section must pass to let it begin.
    crate::throttle::clock::wake_waiters();
    crate::trace!(bdrv_drained_begin, "bs {:p}", Rc::as_ptr(bs));
    let mut nodes = super::ancestors(bs);
    nodes.push(bs.clone());
    while let Some(busy) = nodes.iter().find(|n| n.in_flight.get() > 0) {
        busy.in_flight.drained().await;
    }
    DrainedSection { bs: bs.clone() }
}

impl Drop for DrainedSection {
    fn drop(&mut self) {
        let q = &self.bs.graph.quiesce;
        q.set(q.get() - 1);
        ACTIVE.with(|a| a.set(a.get() - 1));
        crate::trace!(bdrv_drained_end, "bs {:p}", Rc::as_ptr(&self.bs));
        ENDED.with(|e| e.restart_all());
    }
}

/// Whether a drained section covers `bs`, a node above it or a node below it: a drained
/// section waits for the requests of the nodes above the drained one, so a request held
/// in `bs` must pass in all three cases (what lifts throttling).
pub fn in_drained_section(bs: &Rc<BlockDriverState>) -> bool {
    if ACTIVE.with(Cell::get) == 0 {
        return false;
    }
    let below = super::subtree(bs);
    crate::graph::all_nodes().iter().any(|n| {
        n.graph.quiesce.get() > 0
            && (below.iter().any(|c| Rc::ptr_eq(c, n))
                || super::subtree(n).iter().any(|c| Rc::ptr_eq(c, bs)))
    })
}

/// Whether a node of the graph under `root` is drained.
fn graph_is_drained(root: &Rc<BlockDriverState>) -> bool {
    ACTIVE.with(Cell::get) > 0
        && super::subtree(root)
            .iter()
            .any(|n| n.graph.quiesce.get() > 0)
}

/// Holds a new request of a BlockBackend back while its graph is drained
/// (blk_wait_while_drained). Costs one thread-local read when nothing is drained.
pub async fn wait_while_drained(root: impl Fn() -> Rc<BlockDriverState>) {
    if ACTIVE.with(Cell::get) == 0 {
        return;
    }
    let ended = ENDED.with(Rc::clone);
    ended.wait_while(|| graph_is_drained(&root())).await;
}
