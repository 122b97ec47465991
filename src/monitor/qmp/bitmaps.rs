//! The dirty bitmap commands: block-dirty-bitmap-add/-remove/-clear/-enable/-disable/-merge,
//! x-debug-block-dirty-bitmap-sha256, and the `dirty-bitmaps` list of a node's query
//! (QEMU's block/monitor/bitmap-qmp-cmds.c and bdrv_query_dirty_bitmaps). The operations
//! are the block layer's ([`block::dirty_bitmap::qmp`]); this module finds the node and the
//! bitmap by QEMU's rules and gives `transaction` the same steps with a way back.

use std::rc::Rc;

use block::bitmap_qmp::{self as ops, AddOptions};
use block::dirty_bitmap::BdrvDirtyBitmap;
use block::BlockDriverState;
use serde_json::{json, Value};

use super::block::lookup_bs;
use super::{Args, CmdResult, QmpError};

/// The node a bitmap command's `node` names, by device or node name.
pub fn bitmap_node(args: &mut Args) -> Result<Rc<BlockDriverState>, QmpError> {
    let node = args.str("node")?;
    lookup_bs(Some(&node), Some(&node))
}

/// The node and bitmap a command names, with QEMU's messages (block_dirty_bitmap_lookup).
pub fn lookup(args: &mut Args) -> Result<(Rc<BlockDriverState>, Rc<BdrvDirtyBitmap>), QmpError> {
    let node = args.str("node")?;
    let name = args.str("name")?;
    let bs = lookup_bs(Some(&node), Some(&node))
        .map_err(|_| QmpError::generic(format!("Node '{node}' not found")))?;
    let bm = ops::lookup(&bs, &name)?;
    Ok((bs, bm))
}

/// The arguments of block-dirty-bitmap-add beyond node and name.
pub fn add_options(args: &mut Args) -> Result<AddOptions, QmpError> {
    let granularity =
        match args.opt_int("granularity")? {
            Some(g) => Some(u32::try_from(g).map_err(|_| {
                QmpError::generic("Granularity must be power of 2 and at least 512")
            })?),
            None => None,
        };
    Ok(AddOptions {
        granularity,
        persistent: args.opt_bool("persistent")?.unwrap_or(false),
        disabled: args.opt_bool("disabled")?.unwrap_or(false),
    })
}

/// `block-dirty-bitmap-add`.
pub async fn add(mut args: Args) -> CmdResult {
    let bs = bitmap_node(&mut args)?;
    let name = args.str("name")?;
    let opts = add_options(&mut args)?;
    args.finish()?;
    ops::add(&bs, &name, opts).await?;
    Ok(json!({}))
}

/// `block-dirty-bitmap-remove`.
pub async fn remove(mut args: Args) -> CmdResult {
    let (bs, bm) = lookup(&mut args)?;
    args.finish()?;
    ops::remove(&bs, &bm.name().unwrap_or_default()).await?;
    Ok(json!({}))
}

/// A command that changes one bitmap: clear, enable, disable.
async fn simple(mut args: Args, op: fn(&BlockDriverState, &str) -> block::Result<()>) -> CmdResult {
    let (bs, bm) = lookup(&mut args)?;
    args.finish()?;
    op(&bs, &bm.name().unwrap_or_default())?;
    Ok(json!({}))
}

/// `block-dirty-bitmap-clear`.
pub async fn clear(args: Args) -> CmdResult {
    simple(args, ops::clear).await
}

/// `block-dirty-bitmap-enable`.
pub async fn enable(args: Args) -> CmdResult {
    simple(args, ops::enable).await
}

/// `block-dirty-bitmap-disable`.
pub async fn disable(args: Args) -> CmdResult {
    simple(args, ops::disable).await
}

/// The source bitmaps of block-dirty-bitmap-merge: a name on the target's node, or a
/// node and name (BlockDirtyBitmapOrStr).
fn merge_sources(
    bs: &Rc<BlockDriverState>,
    list: Value,
) -> Result<Vec<(Rc<BlockDriverState>, String)>, QmpError> {
    let Value::Array(items) = list else {
        return Err(QmpError::generic(
            "Invalid parameter type for 'bitmaps', expected: array",
        ));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::String(name) => Ok((bs.clone(), name)),
            Value::Object(m) => {
                let mut a = Args::new(m);
                let node = a.str("node")?;
                let name = a.str("name")?;
                a.finish()?;
                let src = lookup_bs(Some(&node), Some(&node))
                    .map_err(|_| QmpError::generic(format!("Node '{node}' not found")))?;
                Ok((src, name))
            }
            _ => Err(QmpError::generic(
                "Invalid parameter type for 'bitmaps.0', expected: string or object",
            )),
        })
        .collect()
}

/// Runs block-dirty-bitmap-merge's arguments; returns the target bitmap (for a
/// transaction to restore).
pub fn do_merge(args: &mut Args) -> Result<Rc<BdrvDirtyBitmap>, QmpError> {
    let bs = bitmap_node(args)?;
    let target = args.str("target")?;
    let list = args
        .opt_value("bitmaps")
        .ok_or_else(|| QmpError::generic("Parameter 'bitmaps' is missing"))?;
    let sources = merge_sources(&bs, list)?;
    let refs: Vec<(&BlockDriverState, &str)> =
        sources.iter().map(|(b, n)| (&**b, n.as_str())).collect();
    let dst = ops::lookup(&bs, &target)?;
    ops::merge(&bs, &target, &refs)?;
    Ok(dst)
}

/// `block-dirty-bitmap-merge`.
pub async fn merge(mut args: Args) -> CmdResult {
    do_merge(&mut args)?;
    args.finish()?;
    Ok(json!({}))
}

/// `x-debug-block-dirty-bitmap-sha256`.
pub async fn sha256(mut args: Args) -> CmdResult {
    let (bs, bm) = lookup(&mut args)?;
    args.finish()?;
    Ok(json!({"sha256": ops::sha256(&bs, &bm.name().unwrap_or_default())?}))
}

/// The `dirty-bitmaps` of a node's BlockDeviceInfo, anonymous ones included
/// (bdrv_query_dirty_bitmaps); None when the node has none.
pub fn query_dirty_bitmaps(bs: &BlockDriverState) -> Option<Value> {
    let list: Vec<Value> = bs
        .dirty_bitmaps()
        .iter()
        .map(|bm| {
            let mut v = json!({"count": bm.count(), "granularity": bm.granularity(),
                "recording": bm.recording(), "busy": bm.busy(), "persistent": bm.persistent()});
            if let Some(name) = bm.name() {
                v["name"] = json!(name);
            }
            if bm.inconsistent() {
                v["inconsistent"] = json!(true);
            }
            v
        })
        .collect();
    (!list.is_empty()).then_some(Value::Array(list))
}
