//! Reopening live nodes with new options: read-only <-> read-write, the cache and
//! zero-detection modes, a driver's tunables, and the `file` and `backing` children
//! (attaching another node, detaching with null, inserting or removing a filter), for
//! several nodes at once, all or nothing (QEMU's block.c: bdrv_reopen_queue_child,
//! bdrv_reopen_multiple, bdrv_reopen_prepare/commit/abort).
//!
//! A reopen first queues the nodes: each requested node, then the children it opened
//! itself (its `inherits_from` children), which get the `file.*` / `backing.*` part of
//! its options, or their own old options when the parent names them by reference.
//! Every queued node is then prepared ([`prepare`]): nothing changes yet, a driver only
//! stages what it will apply. The new graph's permissions are checked, and only then is
//! every node committed; any error before that leaves the graph as it was.

pub mod order;
mod prepare;
pub mod read_only;

pub use read_only::{bdrv_reopen_set_read_only, ReadWriteClaim};

use std::rc::Rc;

use crate::error::Result;
use crate::node::{BlockDriverState, DetectZeroes, OpenFlags};
use crate::options::Options;

/// How a JSON null child reference (`"backing": null`) travels in flattened options,
/// where a plain empty string is a (missing) node name.
pub const NULL_CHILD: &str = "\0null";

/// One node to reopen and its complete new options (flattened, children included).
pub struct ReopenRequest {
    /// The node.
    pub bs: Rc<BlockDriverState>,
    /// Its new options.
    pub options: Options,
}

/// A queued node (BDRVReopenState).
struct Entry {
    bs: Rc<BlockDriverState>,
    options: Options,
    /// What the node records as its explicit options once committed.
    explicit: Options,
    /// Neither `backing` nor `backing.*` was given.
    backing_missing: bool,
    staged: Option<Staged>,
}

/// What a prepared node will become.
struct Staged {
    flags: OpenFlags,
    detect_zeroes: DetectZeroes,
    driver: Box<dyn std::any::Any>,
    /// Child roles that change, to another node or to none.
    children: Vec<(String, Option<Rc<BlockDriverState>>)>,
    /// The graphs a new link moves to another AioContext, with that context.
    moves: Vec<(Rc<BlockDriverState>, String)>,
}

/// Options a child inherits from its parent unless it sets them itself
/// (bdrv_inherited_options, bdrv_backing_options).
fn inherit(role: &str, child: &mut Options, parent: &Options) {
    for key in ["cache.direct", "cache.no-flush"] {
        if let Some(v) = parent.get(key) {
            child.set_default(key, v);
        }
    }
    if role == "backing" {
        child.set_default("read-only", "on");
    } else {
        for key in ["read-only", "discard"] {
            if let Some(v) = parent.get(key) {
                child.set_default(key, v);
            }
        }
    }
}

/// Queues `bs` and, recursively, the children it opened (bdrv_reopen_queue_child).
fn queue_child(
    queue: &mut Vec<Entry>,
    bs: &Rc<BlockDriverState>,
    mut options: Options,
    keep_old: bool,
    parent: Option<(&str, &Options)>,
) {
    if queue.iter().any(|e| Rc::ptr_eq(&e.bs, bs)) {
        return;
    }
    if keep_old {
        bs.drv()
            .join_options(&mut options, &bs.explicit_options.borrow());
    }
    let backing_missing = !keep_old
        && !options.contains("backing")
        && !options.iter().any(|(k, _)| k.starts_with("backing."));
    let mut explicit = options.clone();
    if let Some((role, parent_opts)) = parent {
        inherit(role, &mut options, parent_opts);
    }
    let mut children = Vec::new();
    for c in bs.children() {
        let inherited =
            c.bs.inherits_from
                .borrow()
                .upgrade()
                .is_some_and(|p| Rc::ptr_eq(&p, bs));
        if !inherited {
            continue;
        }
        match options.get(&c.name) {
            // A reference to the current child keeps its options; another node or null
            // replaces it, so the current child is not reopened.
            Some(name) if name == c.bs.node_name() => children.push((c, Options::new(), true)),
            Some(_) => {}
            None => {
                let sub = options.extract_prefix(&c.name);
                explicit.extract_prefix(&c.name);
                // Its old options are kept when the parent's are (child_keep_old).
                children.push((c, sub, keep_old));
            }
        }
    }
    let index = queue.len();
    queue.push(Entry {
        bs: bs.clone(),
        options: options.clone(),
        explicit,
        backing_missing,
        staged: None,
    });
    for (c, sub, keep) in children {
        queue_child(
            queue,
            &c.bs,
            sub,
            keep,
            Some((&c.name, &queue[index].options.clone())),
        );
    }
}

/// Reopens the requested nodes (bdrv_reopen_multiple): all of them change, or none.
/// Returns the children the reopen detached, for the caller to close if nothing else
/// holds them.
pub async fn bdrv_reopen_multiple(
    requests: Vec<ReopenRequest>,
) -> Result<Vec<Rc<BlockDriverState>>> {
    let mut queue = Vec::new();
    for r in requests {
        queue_child(&mut queue, &r.bs, r.options, false, None);
    }
    for e in &queue {
        e.bs.in_flight.drained().await;
    }
    for e in queue.iter_mut() {
        let staged = prepare::prepare(e).await?;
        e.staged = Some(staged);
    }
    prepare::check_permissions(&queue)?;
    let mut detached = Vec::new();
    for e in queue {
        let staged = e.staged.expect("every node was prepared");
        let bs = &e.bs;
        bs.set_open_flags(staged.flags, staged.detect_zeroes);
        // Moved while the two graphs are still apart; prepare checked that they may.
        for (node, ctx) in &staged.moves {
            let _ = crate::graph::aio_context::change(node, ctx);
        }
        for (role, new) in staged.children {
            if let Some(old) = bs.child(&role) {
                let inherited = old.inherits_from.borrow().upgrade();
                if inherited.is_some_and(|p| Rc::ptr_eq(&p, bs)) {
                    *old.inherits_from.borrow_mut() = std::rc::Weak::new();
                }
                detached.push(old);
            }
            match new {
                Some(child) => bs.attach_child(&role, child),
                None => bs.detach_child(&role),
            }
        }
        // The driver sees its new children (a format whose `file` changed reads the new one).
        bs.drv().reopen_commit(bs, staged.driver).await;
        let mut explicit = e.explicit;
        for c in bs.children() {
            explicit.extract_prefix(&c.name);
            explicit.take(&c.name);
        }
        explicit.take("backing");
        *bs.explicit_options.borrow_mut() = explicit;
        bs.limits.set(bs.drv().refresh_limits(bs));
        bs.refresh_total_bytes().await?;
    }
    Ok(detached)
}

/// Freezes the `backing` links from `top` down to `base` (exclusive) for a job
/// (bdrv_freeze_backing_chain): a reopen may not change them until the guard is dropped.
pub struct FrozenChain {
    nodes: Vec<Rc<BlockDriverState>>,
}

impl FrozenChain {
    /// Freezes the links below `top`, stopping at `base` (None: the whole chain).
    pub fn new(top: &Rc<BlockDriverState>, base: Option<&Rc<BlockDriverState>>) -> FrozenChain {
        let mut nodes = Vec::new();
        let mut node = top.clone();
        while base.is_none_or(|b| !Rc::ptr_eq(b, &node)) {
            let Some(below) = node.backing() else { break };
            node.frozen.borrow_mut().push("backing".to_string());
            nodes.push(node);
            node = below;
        }
        FrozenChain { nodes }
    }
}

impl Drop for FrozenChain {
    fn drop(&mut self) {
        for bs in &self.nodes {
            let mut frozen = bs.frozen.borrow_mut();
            if let Some(i) = frozen.iter().position(|r| r == "backing") {
                frozen.remove(i);
            }
        }
    }
}
