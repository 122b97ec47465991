//! `query-blockstats`: each drive's I/O accounting and, node by node down its graph, what
//! the nodes record (QEMU's block/qapi.c: qmp_query_blockstats, bdrv_query_bds_stats,
//! bdrv_query_blk_stats).
//!
//! The device-level counters come from the BlockBackend's accounting of the device's
//! requests; a node contributes its highest written offset. rqemu has no zoned devices and
//! merges no requests, so those counters read zero, as they do in QEMU for such a drive.

use std::rc::Rc;

use block::accounting::{AcctType, BlockAcctStats};
use block::BlockDriverState;
use serde_json::{json, Map, Value};

use super::block_query::skip_implicit_filters;
use super::{Args, CmdResult};
use crate::drives;

/// BlockDeviceStats: the counters of `acct` (zero for a node) and the node's highest write.
fn device_stats(acct: Option<&BlockAcctStats>, wr_highest_offset: u64) -> Value {
    let c = |k| acct.map(|a| a.counts(k)).unwrap_or_default();
    let (rd, wr, fl, un) = (
        c(AcctType::Read),
        c(AcctType::Write),
        c(AcctType::Flush),
        c(AcctType::Unmap),
    );
    let mut v = json!({
        "rd_bytes": rd.bytes, "wr_bytes": wr.bytes, "zone_append_bytes": 0,
        "unmap_bytes": un.bytes, "rd_operations": rd.ops, "wr_operations": wr.ops,
        "zone_append_operations": 0, "flush_operations": fl.ops,
        "unmap_operations": un.ops, "rd_total_time_ns": rd.total_time_ns,
        "wr_total_time_ns": wr.total_time_ns, "zone_append_total_time_ns": 0,
        "flush_total_time_ns": fl.total_time_ns, "unmap_total_time_ns": un.total_time_ns,
        "wr_highest_offset": wr_highest_offset, "rd_merged": 0, "wr_merged": 0,
        "zone_append_merged": 0, "unmap_merged": 0,
        "failed_rd_operations": rd.failed, "failed_wr_operations": wr.failed,
        "failed_zone_append_operations": 0, "failed_flush_operations": fl.failed,
        "failed_unmap_operations": un.failed, "invalid_rd_operations": 0,
        "invalid_wr_operations": 0, "invalid_zone_append_operations": 0,
        "invalid_flush_operations": 0, "invalid_unmap_operations": 0,
        "account_invalid": false, "account_failed": false, "timed_stats": []
    });
    if let Some(idle) = acct.and_then(BlockAcctStats::idle_time_ns) {
        v["idle_time_ns"] = json!(idle);
    }
    v
}

/// BlockStats of a node and, below it, its data child (`parent`) and backing node
/// (bdrv_query_bds_stats with blk_level).
fn node_stats(bs: &Rc<BlockDriverState>, acct: Option<&BlockAcctStats>) -> Map<String, Value> {
    let bs = skip_implicit_filters(bs.clone());
    let mut m = Map::new();
    m.insert("node-name".into(), json!(bs.node_name()));
    m.insert("stats".into(), device_stats(acct, bs.wr_highest_offset()));
    if let Some(file) = bs.file() {
        m.insert("parent".into(), Value::Object(node_stats(&file, None)));
    }
    if let Some(backing) = bs.backing().filter(|_| bs.file().is_some()) {
        m.insert("backing".into(), Value::Object(node_stats(&backing, None)));
    }
    m
}

/// `query-blockstats`: one entry per drive.
pub async fn query_blockstats(mut args: Args) -> CmdResult {
    if args.opt_bool("query-nodes")?.unwrap_or(false) {
        args.finish()?;
        let nodes = block::graph::all_nodes();
        let stats = nodes.iter().rev().map(|bs| {
            let mut m = Map::new();
            m.insert("node-name".into(), json!(bs.node_name()));
            m.insert("stats".into(), device_stats(None, bs.wr_highest_offset()));
            Value::Object(m)
        });
        return Ok(Value::Array(stats.collect()));
    }
    args.finish()?;
    let mut list = Vec::new();
    for (name, blk) in drives::named_backends() {
        let mut m = Map::new();
        m.insert("device".into(), json!(name));
        m.extend(node_stats(&blk.bs(), Some(blk.stats())));
        list.push(Value::Object(m));
    }
    Ok(Value::Array(list))
}
