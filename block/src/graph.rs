//! The nodes of the block graph, found by node name (QEMU's `graph_bdrv_states` list in
//! block.c, with bdrv_find_node and bdrv_next_all_states).
//!
//! Every node opened on a thread is listed here by a weak reference, so the list never
//! keeps a node alive: a node lives as long as its parents (a BlockBackend, another node,
//! the monitor that added it) hold it. Node names are unique among the live nodes; a name
//! taken by a live node is refused when a second node asks for it, as QEMU refuses it.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use crate::error::{Error, Result};
use crate::node::BlockDriverState;

thread_local! {
    static NODES: RefCell<Vec<Weak<BlockDriverState>>> = const { RefCell::new(Vec::new()) };
}

/// Fails if a live node already has `name` (bdrv_assign_node_name's duplicate check).
pub fn check_node_name_free(name: &str) -> Result<()> {
    if find_node(name).is_some() {
        return Err(Error::invalid(format!(
            "node-name '{name}' is already in use"
        )));
    }
    Ok(())
}

/// Lists a freshly opened node.
pub(crate) fn register(bs: &Rc<BlockDriverState>) {
    NODES.with(|n| {
        let mut nodes = n.borrow_mut();
        nodes.retain(|w| w.strong_count() > 0);
        nodes.push(Rc::downgrade(bs));
    });
}

/// The live node named `name` (bdrv_find_node).
pub fn find_node(name: &str) -> Option<Rc<BlockDriverState>> {
    all_nodes().into_iter().find(|bs| bs.node_name() == name)
}

/// Every live node, oldest first (bdrv_next_all_states).
pub fn all_nodes() -> Vec<Rc<BlockDriverState>> {
    NODES.with(|n| n.borrow().iter().filter_map(Weak::upgrade).collect())
}

/// The nodes that have `child` as a child, with the child's role (bdrv_parents of a node,
/// BlockBackends aside).
pub fn node_parents(child: &Rc<BlockDriverState>) -> Vec<(Rc<BlockDriverState>, String)> {
    let mut parents = Vec::new();
    for bs in all_nodes() {
        for c in bs.children() {
            if Rc::ptr_eq(&c.bs, child) {
                parents.push((bs.clone(), c.name));
            }
        }
    }
    parents
}
