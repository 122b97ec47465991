//! Changing the graph while it is in use: drained sections that hold requests back,
//! replacing a node under its parents and inserting filters above a node, the permissions
//! each user of a node holds, and the blockers jobs put on the nodes they use (QEMU's
//! block.c bdrv_replace_node/bdrv_append/bdrv_check_perm, block/io.c bdrv_drained_*,
//! bdrv_op_block).
//!
//! A node does not know its parents. Every node opened on a thread is listed here by a weak
//! reference (QEMU's `graph_bdrv_states`, with bdrv_find_node and bdrv_next_all_states), so
//! the list never keeps a node alive; the parents of a node are the listed nodes that have
//! it as a child, and the BlockBackends whose root it is. Node names are unique among the
//! live nodes, as QEMU refuses a name a live node holds.

pub mod aio_context;
pub mod blockers;
pub mod drain;
pub mod permissions;
pub mod reopen;
pub mod replace;

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::node::BlockDriverState;

thread_local! {
    static NODES: RefCell<Vec<Weak<BlockDriverState>>> = const { RefCell::new(Vec::new()) };
    /// The root parents (BlockBackends) of this thread's graphs.
    static ROOTS: RefCell<Vec<Weak<dyn RootParent>>> = const { RefCell::new(Vec::new()) };
}

/// Number of the next automatically named node (`#block001`...).
static NEXT_NODE: AtomicU64 = AtomicU64::new(1);

/// A fresh automatic node name (`#block001`...), for nodes opened without `node-name`.
pub(crate) fn auto_node_name() -> String {
    format!("#block{:03}", NEXT_NODE.fetch_add(1, Ordering::Relaxed))
}

/// A parent that holds a graph by its root rather than as a child: a BlockBackend (QEMU's
/// BdrvChild of role root). Node replacement repoints it like any other parent link.
pub trait RootParent {
    /// The root node it holds.
    fn root(&self) -> Rc<BlockDriverState>;
    /// Points it at another root node.
    fn set_root(&self, bs: Rc<BlockDriverState>);
    /// The device name it has for the monitor; empty when it has none.
    fn name(&self) -> String {
        String::new()
    }
    /// Whether it can follow its root into another AioContext: not when a device holds it
    /// (blk_root_change_aio_ctx).
    fn can_change_aio_context(&self) -> bool {
        true
    }
}

/// The name of the device whose root `bs` is, else its node name, as the monitor names a
/// node in its messages (bdrv_get_device_or_node_name).
pub fn device_or_node_name(bs: &Rc<BlockDriverState>) -> String {
    root_parents()
        .into_iter()
        .filter(|p| Rc::ptr_eq(&p.root(), bs))
        .map(|p| p.name())
        .find(|n| !n.is_empty())
        .unwrap_or_else(|| bs.node_name().to_string())
}

/// Lists a root parent, by a weak reference (bdrv_root_attach_child's side of the list).
pub fn add_root_parent(parent: Weak<dyn RootParent>) {
    ROOTS.with(|r| {
        let mut roots = r.borrow_mut();
        roots.retain(|w| w.strong_count() > 0);
        roots.push(parent);
    });
}

/// The live root parents.
pub(crate) fn root_parents() -> Vec<Rc<dyn RootParent>> {
    ROOTS.with(|r| r.borrow().iter().filter_map(Weak::upgrade).collect())
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

/// Gives a node being opened its place in the list, before its driver opens the backing
/// file (QEMU names a node in bdrv_open_common, ahead of the backing's open).
pub(crate) fn reserve_place(bs: &BlockDriverState) {
    bs.graph
        .place
        .set(NEXT_PLACE.fetch_add(1, Ordering::Relaxed));
}

/// Number of the next place in the node list.
static NEXT_PLACE: AtomicU64 = AtomicU64::new(1);

/// Lists a freshly opened node, at the place it reserved.
pub(crate) fn register(bs: &Rc<BlockDriverState>) {
    if bs.graph.place.get() == 0 {
        reserve_place(bs);
    }
    NODES.with(|n| {
        let mut nodes = n.borrow_mut();
        nodes.retain(|w| w.strong_count() > 0);
        let place = bs.graph.place.get();
        let at = nodes
            .iter()
            .position(|w| w.upgrade().is_some_and(|o| o.graph.place.get() > place))
            .unwrap_or(nodes.len());
        nodes.insert(at, Rc::downgrade(bs));
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

/// The nodes above `bs`: every live node with `bs` below it.
pub fn ancestors(bs: &Rc<BlockDriverState>) -> Vec<Rc<BlockDriverState>> {
    all_nodes()
        .into_iter()
        .filter(|n| !Rc::ptr_eq(n, bs) && subtree(n).iter().any(|s| Rc::ptr_eq(s, bs)))
        .collect()
}
