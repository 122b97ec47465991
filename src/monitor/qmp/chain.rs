//! Finding the nodes block-stream and block-commit name in a backing chain, by node name or
//! by filename, with QEMU's errors (blockdev.c's qmp_block_stream/qmp_block_commit
//! argument checks, block.c's bdrv_find_backing_image and bdrv_chain_contains).

use std::rc::Rc;

use block::BlockDriverState;

use super::block::lookup_bs;
use super::{Args, QmpError};

/// The nodes below `top` through backing links and filters (bdrv_filter_or_cow_bs), each
/// with the nearest node above it that is not a filter: the overlay whose backing file it
/// is, or through which it is reached.
fn below(top: &Rc<BlockDriverState>) -> Vec<(Rc<BlockDriverState>, Rc<BlockDriverState>)> {
    let mut out = Vec::new();
    let mut overlay = top.clone();
    let mut node = top.clone();
    while let Some(b) = block::jobs::filter_or_cow(&node) {
        if !node.drv().is_filter() {
            overlay = node.clone();
        }
        out.push((overlay.clone(), b.clone()));
        node = b;
    }
    out
}

/// A file's name that is the same for every spelling of it (symlinks, `..`).
fn canonical(name: &str) -> String {
    std::fs::canonicalize(name).map_or_else(|_| name.to_string(), |p| p.display().to_string())
}

/// The node below `top` whose file is `name`, as given or relative to the overlay that
/// refers to it (bdrv_find_backing_image).
pub fn find_backing_image(top: &Rc<BlockDriverState>, name: &str) -> Option<Rc<BlockDriverState>> {
    // Filters have no file of their own to be named by (bdrv_backing_chain_next skips them).
    below(top).into_iter().find_map(|(overlay, b)| {
        if b.drv().is_filter() {
            return None;
        }
        let file = b.filename();
        let resolved = block::open::resolve_relative(&overlay.filename(), name);
        (file == name || canonical(&resolved) == canonical(&file)).then_some(b)
    })
}

/// Whether `bs` is `top` or in its backing chain (bdrv_chain_contains).
pub fn chain_contains(top: &Rc<BlockDriverState>, bs: &Rc<BlockDriverState>) -> bool {
    Rc::ptr_eq(top, bs) || below(top).iter().any(|(_, b)| Rc::ptr_eq(b, bs))
}

/// A node by node name alone, with QEMU's "Cannot find device='' nor node-name=..." error.
pub fn node(name: &str) -> Result<Rc<BlockDriverState>, QmpError> {
    lookup_bs(None, Some(name))
}

/// The node named `name` below `bs` in its chain; else "Node 'NAME' `relation` 'BS'".
fn below_node(
    bs: &Rc<BlockDriverState>,
    name: &str,
    relation: &str,
) -> Result<Rc<BlockDriverState>, QmpError> {
    let b = node(name)?;
    if Rc::ptr_eq(&b, bs) || !chain_contains(bs, &b) {
        return Err(QmpError::generic(format!(
            "Node '{name}' {relation} '{}'",
            bs.node_name()
        )));
    }
    Ok(b)
}

/// block-stream's `base`, `base-node` and `bottom`: the base, or the bottom node.
pub struct StreamRange {
    /// The node that stays the backing file.
    pub base: Option<Rc<BlockDriverState>>,
    /// The lowest node streamed from.
    pub bottom: Option<Rc<BlockDriverState>>,
}

/// Reads and checks block-stream's base arguments for streaming into `bs`.
pub fn stream_range(bs: &Rc<BlockDriverState>, args: &mut Args) -> Result<StreamRange, QmpError> {
    let base = args.opt_str("base")?;
    let base_node = args.opt_str("base-node")?;
    let bottom = args.opt_str("bottom")?;
    let both = |a: &str, b: &str| {
        QmpError::generic(format!(
            "'{a}' and '{b}' cannot be specified at the same time"
        ))
    };
    if base.is_some() && base_node.is_some() {
        return Err(both("base", "base-node"));
    }
    if base.is_some() && bottom.is_some() {
        return Err(both("base", "bottom"));
    }
    if base_node.is_some() && bottom.is_some() {
        return Err(both("base-node", "bottom"));
    }
    let mut range = StreamRange {
        base: None,
        bottom: None,
    };
    if let Some(name) = base {
        range.base = Some(find_backing_image(bs, &name).ok_or_else(|| {
            QmpError::generic(format!("Can't find '{name}' in the backing chain"))
        })?);
    }
    if let Some(name) = base_node {
        range.base = Some(below_node(bs, &name, "is not a backing image of")?);
    }
    if let Some(name) = bottom {
        range.bottom = Some(below_node(bs, &name, "is not in a chain starting from")?);
    }
    Ok(range)
}

/// block-commit's `top`/`top-node` and `base`/`base-node` in the chain of `active`: the
/// top (the active layer when none is named) and the base (the chain's bottom by default).
pub fn commit_range(
    active: &Rc<BlockDriverState>,
    args: &mut Args,
) -> Result<(Rc<BlockDriverState>, Rc<BlockDriverState>), QmpError> {
    let top_file = args.opt_str("top")?;
    let top_node = args.opt_str("top-node")?;
    let base_file = args.opt_str("base")?;
    let base_node = args.opt_str("base-node")?;
    let exclusive =
        |a: &str, b: &str| QmpError::generic(format!("'{a}' and '{b}' are mutually exclusive"));
    if top_node.is_some() && top_file.is_some() {
        return Err(exclusive("top-node", "top"));
    }
    if base_node.is_some() && base_file.is_some() {
        return Err(exclusive("base-node", "base"));
    }
    let top = match (&top_node, &top_file) {
        (Some(name), _) => node(name)?,
        (None, Some(file)) if *file == active.filename() => active.clone(),
        (None, Some(file)) => find_backing_image(active, file)
            .ok_or_else(|| QmpError::generic(format!("Top image file {file} not found")))?,
        (None, None) => active.clone(),
    };
    if !chain_contains(active, &top) {
        return Err(QmpError::generic(format!(
            "'{}' is not in this backing file chain",
            top_node.unwrap_or_else(|| top.node_name().to_string())
        )));
    }
    let base = match (&base_node, &base_file) {
        (Some(name), _) => node(name)?,
        (None, Some(file)) => find_backing_image(&top, file).ok_or_else(|| {
            QmpError::generic(format!("Can't find '{file}' in the backing chain"))
        })?,
        (None, None) => below(&top)
            .last()
            .map(|(_, b)| b.clone())
            .ok_or_else(|| QmpError::generic("Top image has no backing file to commit into"))?,
    };
    if !chain_contains(&top, &base) {
        return Err(QmpError::generic(format!(
            "'{}' is not in this backing file chain",
            base_node.unwrap_or_else(|| base.node_name().to_string())
        )));
    }
    if Rc::ptr_eq(&top, &base) {
        return Err(QmpError::generic("cannot commit an image into itself"));
    }
    Ok((top, base))
}
