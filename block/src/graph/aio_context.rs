//! Which AioContext each node belongs to, and moving a connected graph to another one
//! (QEMU's block.c: bdrv_get_aio_context, bdrv_change_aio_context,
//! bdrv_try_change_aio_context, the context check of bdrv_attach_child_common; and the
//! BlockBackend's side, block-backend.c blk_root_change_aio_ctx).
//!
//! A node and everything connected to it, children and parents alike, belong to one
//! AioContext: the main loop's, or an iothread's (named by the iothread's id). Moving one
//! node moves its whole connected graph, and a user that cannot follow refuses the move: a
//! BlockBackend held by a device. Linking two nodes of different contexts moves the child's
//! graph to the parent's context, or else the parent's graph to the child's.
//!
//! rqemu keeps these assignments and QEMU's refusals, so that a graph is put together, or
//! refused, as QEMU would; every node is still served by the thread that opened it, since
//! iothreads do not run requests of their own yet (`crate::objects::iothread`).

use std::rc::Rc;

use super::{node_parents, root_parents, RootParent};
use crate::error::{Error, Result};
use crate::node::BlockDriverState;

/// The main loop's context (qemu_get_aio_context), as this module names contexts.
pub const MAIN_CONTEXT: &str = "";

/// The context `bs` belongs to: an iothread's id, or [`MAIN_CONTEXT`].
pub fn get(bs: &BlockDriverState) -> String {
    bs.graph.aio_context.borrow().clone()
}

/// The nodes connected to `bs` (itself first), and the backends whose root is one of them.
fn connected(bs: &Rc<BlockDriverState>) -> (Vec<Rc<BlockDriverState>>, Vec<Rc<dyn RootParent>>) {
    let roots = root_parents();
    let mut nodes: Vec<Rc<BlockDriverState>> = Vec::new();
    let mut todo = vec![bs.clone()];
    while let Some(n) = todo.pop() {
        if nodes.iter().any(|m| Rc::ptr_eq(m, &n)) {
            continue;
        }
        todo.extend(n.children().into_iter().map(|c| c.bs));
        todo.extend(node_parents(&n).into_iter().map(|(p, _)| p));
        nodes.push(n);
    }
    let backends = roots
        .into_iter()
        .filter(|r| nodes.iter().any(|n| Rc::ptr_eq(n, &r.root())))
        .collect();
    (nodes, backends)
}

/// Checks that the graph of `bs` may move to `ctx` (bdrv_change_aio_context's first
/// pass): every backend on it must be free to follow.
pub fn check_change(bs: &Rc<BlockDriverState>, ctx: &str) -> Result<()> {
    let (nodes, backends) = connected(bs);
    if nodes.iter().all(|n| get(n) == ctx) {
        return Ok(());
    }
    if backends.iter().any(|b| !b.can_change_aio_context()) {
        return Err(Error::invalid(
            "Cannot change iothread of active block backend",
        ));
    }
    Ok(())
}

/// Moves the graph of `bs` to `ctx` (bdrv_try_change_aio_context), or refuses as
/// [`check_change`] does and changes nothing.
pub fn change(bs: &Rc<BlockDriverState>, ctx: &str) -> Result<()> {
    check_change(bs, ctx)?;
    for n in connected(bs).0 {
        *n.graph.aio_context.borrow_mut() = ctx.to_string();
    }
    Ok(())
}

/// The move that linking `child` below `parent` needs (bdrv_attach_child_common): none
/// when they share a context; else the child's graph to the parent's context or, if that
/// is refused, the parent's graph to the child's; if both are refused, the first refusal.
pub fn plan_attach(
    parent: &Rc<BlockDriverState>,
    child: &Rc<BlockDriverState>,
) -> Result<Option<(Rc<BlockDriverState>, String)>> {
    let (parent_ctx, child_ctx) = (get(parent), get(child));
    if parent_ctx == child_ctx {
        return Ok(None);
    }
    match check_change(child, &parent_ctx) {
        Ok(()) => Ok(Some((child.clone(), parent_ctx))),
        Err(e) => match check_change(parent, &child_ctx) {
            Ok(()) => Ok(Some((parent.clone(), child_ctx))),
            Err(_) => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AioContext, BlockBackend, OpenFlags, Options};

    fn null_node(name: &str) -> Rc<BlockDriverState> {
        let mut o = Options::new();
        o.set("driver", "null-co");
        o.set("node-name", name);
        let open = crate::open::bdrv_open(None, o, OpenFlags::default());
        AioContext::current().run_until(open).unwrap()
    }

    fn planned(p: Option<(Rc<BlockDriverState>, String)>) -> Option<(String, String)> {
        p.map(|(n, ctx)| (n.node_name().to_string(), ctx))
    }

    #[test]
    fn a_link_moves_whichever_graph_may_follow() {
        let (a, b) = (null_node("ctx-a"), null_node("ctx-b"));
        assert_eq!(get(&a), MAIN_CONTEXT);
        assert_eq!(planned(plan_attach(&a, &b).unwrap()), None);
        // A device in an iothread pins its graph there.
        let blk_a = BlockBackend::new(a.clone());
        change(&a, "io0").unwrap();
        blk_a.attach_dev();
        let refused = change(&a, "io1").unwrap_err().to_string();
        assert!(refused.contains("Cannot change iothread of active block backend"));
        assert_eq!(get(&a), "io0");
        // The free child follows its parent; a pinned child pulls a free parent along.
        let expect = Some(("ctx-b".to_string(), "io0".to_string()));
        assert_eq!(planned(plan_attach(&a, &b).unwrap()), expect);
        let expect = Some(("ctx-b".to_string(), "io0".to_string()));
        assert_eq!(planned(plan_attach(&b, &a).unwrap()), expect);
        // Two pinned graphs in different iothreads cannot be linked.
        let blk_b = BlockBackend::new(b.clone());
        change(&b, "io1").unwrap();
        blk_b.attach_dev();
        assert!(plan_attach(&a, &b).is_err());
        assert_eq!((get(&a), get(&b)), ("io0".to_string(), "io1".to_string()));
    }
}
