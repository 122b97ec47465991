//! Replacing a node under its parents, and putting filters above a node and taking them
//! away again, while the graph is in use (QEMU's bdrv_replace_node, bdrv_append and
//! bdrv_drop_filter in block.c).
//!
//! Every parent link to the old node — a BlockBackend's root, a node's child — is pointed
//! at the new one, in one step between two requests (the caller drains first where a
//! request could be half-way through). Nodes below the new node keep their links: pointing
//! them at it would make a loop.

use std::rc::Rc;

use crate::driver::{BlockDriver, DriverClass};
use crate::error::Result;
use crate::node::BlockDriverState;

/// Points every parent of `from` at `to` instead (bdrv_replace_node).
pub fn replace_node(from: &Rc<BlockDriverState>, to: &Rc<BlockDriverState>) {
    crate::trace!(
        bdrv_replace_node,
        "from {} to {}",
        from.node_name(),
        to.node_name()
    );
    let below_to = super::subtree(to);
    for (node, role) in super::node_parents(from) {
        if !below_to.iter().any(|n| Rc::ptr_eq(n, &node)) {
            node.attach_child(&role, to.clone());
        }
    }
    for parent in super::root_parents() {
        if Rc::ptr_eq(&parent.root(), from) {
            parent.set_root(to.clone());
        }
    }
}

/// Points every parent of `from` at `to` if the permissions the moving parent nodes hold on
/// `from` are compatible with those held on `to`; refuses with EPERM otherwise, changing
/// nothing (bdrv_replace_node with its permission update).
pub fn try_replace_node(from: &Rc<BlockDriverState>, to: &Rc<BlockDriverState>) -> Result<()> {
    let below_to = super::subtree(to);
    let moving: Vec<Rc<BlockDriverState>> = super::node_parents(from)
        .into_iter()
        .map(|(node, _)| node)
        .filter(|node| !below_to.iter().any(|n| Rc::ptr_eq(n, node)))
        .collect();
    super::permissions::move_claims(from, to, &moving)?;
    replace_node(from, to);
    Ok(())
}

/// Creates a filter node of `class` with `driver` above `bs` (its child under `role`) and
/// puts it in `bs`'s place under every parent (bdrv_open of the filter + bdrv_append).
pub async fn insert_filter(
    bs: &Rc<BlockDriverState>,
    class: &'static DriverClass,
    node_name: Option<String>,
    role: &str,
    driver: Box<dyn BlockDriver>,
) -> Result<Rc<BlockDriverState>> {
    let implicit = node_name.is_none();
    let filter = Rc::new(BlockDriverState::new(
        class,
        node_name.unwrap_or_else(super::auto_node_name),
        bs.filename(),
        bs.open_flags(),
        crate::node::DetectZeroes::Off,
    ));
    filter.implicit.set(implicit);
    filter.attach_child(role, bs.clone());
    if filter.drv.set(driver).is_err() {
        unreachable!("a new node has no driver yet");
    }
    filter.limits.set(filter.drv().refresh_limits(&filter));
    filter.refresh_total_bytes().await?;
    super::register(&filter);
    replace_node(bs, &filter);
    Ok(filter)
}

/// Takes a filter out of the graph: its parents point at its only child again
/// (bdrv_drop_filter).
pub fn drop_filter(filter: &Rc<BlockDriverState>) {
    if let Some(child) = filter.children().into_iter().next() {
        replace_node(filter, &child.bs);
    }
}
