//! Block queries: what the graph looks like (QEMU's block/qapi.c: bdrv_block_device_info,
//! bdrv_query_image_info, qmp_query_block, qmp_query_named_block_nodes) and the job lists.
//!
//! Objects are built in QAPI schema order; the monitor prints them in QEMU's QDict order.

use std::rc::Rc;

use block::node::DetectZeroes;
use block::{BlockBackend, BlockDriverState};
use serde_json::{json, Map, Value};

use super::{Args, CmdResult};
use crate::drives;
use crate::tools::qemu_img::info::query_node_info;

/// The backing node, what `backing-image` and `backing_file_depth` follow (QEMU's
/// bdrv_filter_or_cow_bs also follows filters; the graph has no filter flag yet). A
/// device's view (query-block) passes over the filters jobs inserted without a name, which
/// its user did not ask for; a node's view (query-named-block-nodes) shows them.
fn filter_or_cow_child(bs: &BlockDriverState, device_view: bool) -> Option<Rc<BlockDriverState>> {
    let below = bs.backing()?;
    Some(if device_view {
        skip_implicit_filters(below)
    } else {
        below
    })
}

/// ImageInfo of a node and, nested, of the nodes below it (bdrv_query_image_info with
/// `backing-image`).
fn image_info(
    bs: &BlockDriverState,
    device_view: bool,
) -> block::coroutine::LocalBoxFuture<'_, block::Result<Value>> {
    Box::pin(async move {
        let mut info = query_node_info(bs).await?;
        if let Some(below) = filter_or_cow_child(bs, device_view) {
            info.insert(
                "backing-image".into(),
                image_info(&below, device_view).await?,
            );
        }
        Ok(Value::Object(info))
    })
}

fn detect_zeroes_name(mode: DetectZeroes) -> &'static str {
    match mode {
        DetectZeroes::Off => "off",
        DetectZeroes::On => "on",
        DetectZeroes::Unmap => "unmap",
    }
}

/// BlockDeviceInfo of a node (bdrv_block_device_info), without throttling (none is built:
/// every limit reads 0, as QEMU reports a node without a throttle group).
pub async fn block_device_info(
    bs: &Rc<BlockDriverState>,
    device_view: bool,
) -> block::Result<Value> {
    let mut m = Map::new();
    m.insert("file".into(), json!(bs.filename()));
    m.insert("node-name".into(), json!(bs.node_name()));
    m.insert("ro".into(), json!(bs.is_read_only()));
    m.insert("drv".into(), json!(bs.format_name()));
    if let Some((name, _)) = bs.drv().backing_file_name(bs) {
        m.insert("backing_file".into(), json!(name));
    }
    let mut depth = 0;
    let mut below = filter_or_cow_child(bs, device_view);
    while let Some(b) = below {
        depth += 1;
        below = filter_or_cow_child(&b, device_view);
    }
    m.insert("backing_file_depth".into(), json!(depth));
    m.insert("encrypted".into(), json!(bs.drv().is_encrypted()));
    m.insert(
        "detect_zeroes".into(),
        json!(detect_zeroes_name(bs.detect_zeroes())),
    );
    for key in ["bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr"] {
        m.insert(key.into(), json!(0));
    }
    m.insert("image".into(), image_info(bs, device_view).await?);
    m.insert("write_threshold".into(), json!(0));
    let cache = bs.open_flags().cache;
    m.insert(
        "cache".into(),
        json!({"writeback": cache.writeback, "direct": cache.direct, "no-flush": cache.no_flush}),
    );
    m.insert("active".into(), json!(true));
    if let Some(bitmaps) = super::bitmaps::query_dirty_bitmaps(bs) {
        m.insert("dirty-bitmaps".into(), bitmaps);
    }
    Ok(Value::Object(m))
}

/// The node a device-level query reports for `bs`: below the filters jobs inserted
/// without a name (bdrv_skip_implicit_filters).
pub fn skip_implicit_filters(mut bs: Rc<BlockDriverState>) -> Rc<BlockDriverState> {
    while bs.is_implicit() {
        match bs.filtered() {
            Some(below) => bs = below,
            None => break,
        }
    }
    bs
}

/// BlockInfo of a backend (bdrv_query_info); `qdev` is the id of the device holding it.
async fn block_info(
    device: &str,
    qdev: Option<String>,
    blk: &BlockBackend,
) -> block::Result<Value> {
    let mut m = Map::new();
    m.insert("device".into(), json!(device));
    if let Some(qdev) = qdev {
        m.insert("qdev".into(), json!(qdev));
    }
    m.insert("type".into(), json!("unknown"));
    m.insert("removable".into(), json!(false));
    m.insert("locked".into(), json!(false));
    let bs = skip_implicit_filters(blk.bs());
    m.insert("inserted".into(), block_device_info(&bs, true).await?);
    if let Some(status) = blk.iostatus() {
        m.insert("io-status".into(), json!(status.name()));
    }
    Ok(Value::Object(m))
}

/// `query-block`: every drive, and the backends devices hold over nodes (no device name).
pub async fn query_block(args: Args) -> CmdResult {
    args.finish()?;
    let mut list = Vec::new();
    for (name, blk) in drives::named_backends() {
        list.push(block_info(&name, drives::device_id(&name), &blk).await?);
    }
    for device in drives::empty_drives() {
        list.push(json!({"device": device, "locked": false, "removable": true,
                         "tray_open": false, "type": "unknown"}));
    }
    for (node, blk) in drives::device_backends() {
        list.push(block_info("", drives::device_id(&node), &blk).await?);
    }
    Ok(Value::Array(list))
}

/// `query-named-block-nodes [flat]`: every node; `flat` leaves out the nested backing images.
pub async fn query_named_block_nodes(mut args: Args) -> CmdResult {
    let flat = args.opt_bool("flat")?.unwrap_or(false);
    args.finish()?;
    let mut list = Vec::new();
    for bs in block::graph::all_nodes().iter().rev() {
        let mut info = block_device_info(bs, false).await?;
        if flat {
            if let Some(image) = info.get_mut("image").and_then(Value::as_object_mut) {
                image.remove("backing-image");
            }
        }
        list.push(info);
    }
    Ok(Value::Array(list))
}
