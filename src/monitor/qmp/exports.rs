//! The NBD server and block exports from the monitor: nbd-server-start/-stop, the older
//! nbd-server-add/-remove, block-export-add/-del and query-block-exports (QEMU's
//! blockdev-nbd.c and block/export/export.c, their QMP halves). The exports themselves are
//! [`crate::block_export`]; this module checks the arguments as QAPI does and sends
//! BLOCK_EXPORT_DELETED for each export that goes.

use serde_json::{json, Map, Value};

use super::block::lookup_bs;
use super::{Args, CmdResult, QmpError};
use crate::block_export::{self, ExportSpec, ListenAddr};
use crate::monitor::events;

/// Connections the server accepts at once when `max-connections` is not given
/// (NBD_DEFAULT_MAX_CONNECTIONS).
const DEFAULT_MAX_CONNECTIONS: i64 = 100;

fn generic(e: String) -> QmpError {
    QmpError::generic(e)
}

fn deleted(ids: Vec<String>) {
    for id in ids {
        events::emit("BLOCK_EXPORT_DELETED", Some(json!({ "id": id })));
    }
}

/// A member of a nested object, which must be a string.
fn member_str(map: &mut Map<String, Value>, path: &str, key: &str) -> Result<String, QmpError> {
    match map.remove(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(QmpError::generic(format!(
            "Invalid parameter type for '{path}.{key}', expected: string"
        ))),
        None => Err(QmpError::generic(format!(
            "Parameter '{path}.{key}' is missing"
        ))),
    }
}

/// `addr` of nbd-server-start, a SocketAddressLegacy: `{"type": T, "data": {...}}`.
fn listen_addr(addr: Value) -> Result<ListenAddr, QmpError> {
    let Value::Object(mut addr) = addr else {
        return Err(QmpError::generic(
            "Invalid parameter type for 'addr', expected: object",
        ));
    };
    let kind = member_str(&mut addr, "addr", "type")?;
    let mut data = match addr.remove("data") {
        Some(Value::Object(d)) => d,
        Some(_) => {
            return Err(QmpError::generic(
                "Invalid parameter type for 'addr.data', expected: object",
            ))
        }
        None => return Err(QmpError::generic("Parameter 'addr.data' is missing")),
    };
    let parsed = match kind.as_str() {
        "unix" => ListenAddr::Unix(member_str(&mut data, "addr.data", "path")?.into()),
        "inet" => {
            let host = member_str(&mut data, "addr.data", "host")?;
            let port = member_str(&mut data, "addr.data", "port")?;
            ListenAddr::Inet(host, port)
        }
        "fd" | "vsock" => {
            return Err(QmpError::generic(format!(
                "nbd-server-start: an address of type '{kind}' is not supported by rqemu yet"
            )))
        }
        other => {
            return Err(QmpError::generic(format!(
                "Parameter 'addr.type' does not accept value '{other}'"
            )))
        }
    };
    if let Some(key) = data.keys().chain(addr.keys()).next() {
        return Err(QmpError::generic(format!(
            "Parameter 'addr.data.{key}' is unexpected"
        )));
    }
    Ok(parsed)
}

/// `nbd-server-start addr [tls-creds] [max-connections]`.
pub async fn nbd_server_start(mut args: Args) -> CmdResult {
    let addr = args
        .opt_value("addr")
        .ok_or_else(|| QmpError::generic("Parameter 'addr' is missing"))?;
    let tls_creds = args.opt_str("tls-creds")?;
    if args.opt_str("tls-authz")?.is_some() {
        return Err(QmpError::generic(
            "nbd-server-start: tls-authz is not supported by rqemu yet",
        ));
    }
    let max = args
        .opt_int("max-connections")?
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    args.finish()?;
    let addr = listen_addr(addr)?;
    let max = usize::try_from(max)
        .map_err(|_| QmpError::generic("Parameter 'max-connections' expects uint32"))?;
    block_export::nbd_server_start(&addr, max, tls_creds.as_deref()).map_err(generic)?;
    Ok(json!({}))
}

/// `nbd-server-stop`.
pub async fn nbd_server_stop(args: Args) -> CmdResult {
    args.finish()?;
    deleted(block_export::nbd_server_stop().map_err(generic)?);
    Ok(json!({}))
}

/// The `bitmaps` of an export: names of bitmaps on the exported node.
fn bitmap_names(v: Option<Value>) -> Result<Vec<String>, QmpError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let Value::Array(list) = v else {
        return Err(QmpError::generic(
            "Invalid parameter type for 'bitmaps', expected: array",
        ));
    };
    list.into_iter()
        .map(|b| match b {
            Value::String(s) => Ok(s),
            _ => Err(QmpError::generic(
                "block-export-add: bitmaps given as {node, name} are not supported by rqemu yet",
            )),
        })
        .collect()
}

/// `block-export-add type=nbd id node-name [writable] [name] [description] [bitmaps]
/// [allocation-depth]`.
pub async fn block_export_add(mut args: Args) -> CmdResult {
    let kind = args.str("type")?;
    let id = args.str("id")?;
    let node = args.str("node-name")?;
    let writable = args.opt_bool("writable")?.unwrap_or(false);
    let writethrough = args.opt_bool("writethrough")?.unwrap_or(false);
    if args.opt_value("iothread").is_some() || args.opt_value("fixed-iothread").is_some() {
        return Err(QmpError::generic(
            "block-export-add: iothread is not supported by rqemu yet",
        ));
    }
    args.opt_bool("allow-inactive")?;
    let name = args.opt_str("name")?;
    let description = args.opt_str("description")?;
    let bitmaps = bitmap_names(args.opt_value("bitmaps"))?;
    let allocation_depth = args.opt_bool("allocation-depth")?.unwrap_or(false);
    match kind.as_str() {
        "nbd" => {}
        "vhost-user-blk" | "fuse" | "vduse-blk" => {
            return Err(QmpError::generic(format!(
                "block-export-add: exports of type '{kind}' are not supported by rqemu"
            )))
        }
        other => {
            return Err(QmpError::generic(format!(
                "Parameter 'type' does not accept value '{other}'"
            )))
        }
    }
    args.finish()?;
    block_export::check_id_free(&id).map_err(generic)?;
    let bs = lookup_bs(None, Some(node.as_str()))?;
    let spec = ExportSpec {
        id,
        node,
        writable,
        writethrough,
        name,
        description,
        bitmaps,
        allocation_depth,
    };
    block_export::block_export_add(spec, bs).map_err(generic)?;
    Ok(json!({}))
}

/// `nbd-server-add device [name] [description] [writable] [bitmap]`: an NBD export whose id
/// is its name, of a drive or node; a read-only one is exported read-only.
pub async fn nbd_server_add(mut args: Args) -> CmdResult {
    let device = args.str("device")?;
    let name = args.opt_str("name")?;
    let description = args.opt_str("description")?;
    let writable = args.opt_bool("writable")?.unwrap_or(false);
    let bitmap = args.opt_str("bitmap")?;
    args.finish()?;
    if !block_export::nbd_server_running() {
        return Err(QmpError::generic("NBD server not running"));
    }
    let name = name.unwrap_or_else(|| device.clone());
    block_export::check_id_free(&name).map_err(generic)?;
    let bs = lookup_bs(Some(device.as_str()), Some(device.as_str()))?;
    let spec = ExportSpec {
        id: name.clone(),
        node: bs.node_name().to_string(),
        writable: writable && !bs.is_read_only(),
        writethrough: false,
        name: Some(name),
        description,
        bitmaps: bitmap.into_iter().collect(),
        allocation_depth: false,
    };
    block_export::block_export_add(spec, bs).map_err(generic)?;
    Ok(json!({}))
}

/// The `mode` of a removal: "safe" (the default) or "hard".
fn hard_mode(mode: Option<String>) -> Result<bool, QmpError> {
    match mode.as_deref() {
        None | Some("safe") => Ok(false),
        Some("hard") => Ok(true),
        Some(other) => Err(QmpError::generic(format!(
            "Parameter 'mode' does not accept value '{other}'"
        ))),
    }
}

/// `block-export-del id [mode]`.
pub async fn block_export_del(mut args: Args) -> CmdResult {
    let id = args.str("id")?;
    let hard = hard_mode(args.opt_str("mode")?)?;
    args.finish()?;
    block_export::block_export_del(&id, hard).map_err(generic)?;
    deleted(vec![id]);
    Ok(json!({}))
}

/// `nbd-server-remove name [mode]`.
pub async fn nbd_server_remove(mut args: Args) -> CmdResult {
    let name = args.str("name")?;
    let hard = hard_mode(args.opt_str("mode")?)?;
    args.finish()?;
    if !block_export::nbd_server_running() {
        return Err(QmpError::generic("NBD server not running"));
    }
    block_export::block_export_del(&name, hard).map_err(generic)?;
    deleted(vec![name]);
    Ok(json!({}))
}

/// `query-block-exports`.
pub async fn query_block_exports(args: Args) -> CmdResult {
    args.finish()?;
    let list: Vec<Value> = block_export::list()
        .into_iter()
        .map(|(id, node)| {
            json!({"type": "nbd", "id": id, "node-name": node, "shutting-down": false})
        })
        .collect();
    Ok(Value::Array(list))
}
