//! Changing the graph while it is in use: drained sections that hold requests back,
//! replacing a node under its parents and inserting filters above a node, the permissions
//! each user of a node holds, and the blockers jobs put on the nodes they use (QEMU's
//! block.c bdrv_replace_node/bdrv_append/bdrv_check_perm, block/io.c bdrv_drained_*,
//! bdrv_op_block).
//!
//! A node does not know its parents; the parents of a node are found by walking down from
//! the roots: every [`crate::BlockBackend`] of the thread.

pub mod blockers;
pub mod drain;
pub mod permissions;
pub mod replace;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::node::BlockDriverState;

/// What the graph layer keeps on each node.
#[derive(Default)]
pub struct GraphState {
    /// Drained sections open on the node (quiesce_counter).
    pub(crate) quiesce: Cell<u32>,
    /// Permissions taken on the node by its users.
    pub(crate) perms: RefCell<Vec<permissions::PermClaim>>,
    /// Why operations on the node are blocked (a job uses it), if they are.
    pub(crate) blocker: RefCell<Option<String>>,
}

/// Every node reachable from `root` (itself included), each once, parents before children.
pub fn subtree(root: &Rc<BlockDriverState>) -> Vec<Rc<BlockDriverState>> {
    let mut seen: Vec<Rc<BlockDriverState>> = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(bs) = stack.pop() {
        if seen.iter().any(|s| Rc::ptr_eq(s, &bs)) {
            continue;
        }
        for c in bs.children().into_iter().rev() {
            stack.push(c.bs);
        }
        seen.push(bs);
    }
    seen
}

/// Every node of every BlockBackend's graph on this thread.
pub fn all_nodes() -> Vec<Rc<BlockDriverState>> {
    let mut all: Vec<Rc<BlockDriverState>> = Vec::new();
    for blk in crate::backend::BlockBackend::all() {
        for bs in subtree(&blk.bs()) {
            if !all.iter().any(|s| Rc::ptr_eq(s, &bs)) {
                all.push(bs);
            }
        }
    }
    all
}

/// The nodes above `bs` in the BlockBackends' graphs: every node with `bs` below it.
pub fn ancestors(bs: &Rc<BlockDriverState>) -> Vec<Rc<BlockDriverState>> {
    all_nodes()
        .into_iter()
        .filter(|n| !Rc::ptr_eq(n, bs) && subtree(n).iter().any(|s| Rc::ptr_eq(s, bs)))
        .collect()
}
