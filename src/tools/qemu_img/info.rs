//! `qemu-img info`: describe an image and the nodes below it (qemu-img.c's img_info,
//! block/qapi.c's bdrv_query_block_graph_info and bdrv_node_info_dump).
//!
//! The description is built as a QAPI BlockGraphInfo in JSON form (members in schema order),
//! then either pretty-printed as JSON or dumped for people: "image:", "file format:", sizes,
//! "Format specific information:", and a "Child node '/file':" section per child.

use std::collections::HashSet;

use block::snapshot::SnapshotInfo;
use block::{BlockDriverState, OpenFlags};
use serde_json::{json, Map, Value};

use super::cli::{self, error_exit, error_report, long, OpenSpec, OutputFormat};
use super::cli::{OPT_BACKING_CHAIN, OPT_IMAGE_OPTS, OPT_OBJECT, OPT_OUTPUT};
use super::human::size_to_str;
use crate::qjson;

const LONG: &[crate::tools::getopt::LongOpt] = &[
    long("help", false, 'h'),
    long("format", true, 'f'),
    long("output", true, OPT_OUTPUT),
    long("backing-chain", false, OPT_BACKING_CHAIN),
    long("object", true, OPT_OBJECT),
    long("image-opts", false, OPT_IMAGE_OPTS),
    long("force-share", false, 'U'),
];

/// Runs `qemu-img info`.
pub fn run(args: &[String]) -> i32 {
    let parsed = match cli::getopt(args, ":f:hU", LONG) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut spec = OpenSpec::default();
    let mut output = None;
    let mut chain = false;
    for opt in parsed.opts {
        match opt.key {
            'h' => return super::help::print_help(),
            'f' => spec.fmt = opt.arg,
            'U' => spec.flags.force_share = true,
            OPT_OUTPUT => output = opt.arg,
            OPT_BACKING_CHAIN => chain = true,
            OPT_OBJECT => {
                if let Err(rc) = cli::object_add(opt.arg.as_deref().unwrap_or_default()) {
                    return rc;
                }
            }
            OPT_IMAGE_OPTS => spec.image_opts = true,
            _ => {}
        }
    }
    if parsed.operands.len() != 1 {
        return error_exit("Expecting one image file name");
    }
    spec.filename = parsed.operands[0].clone();
    let Some(format) = cli::parse_output(output.as_deref()) else {
        return 1;
    };
    spec.flags = OpenFlags {
        read_only: true,
        no_backing: true,
        no_io: true,
        force_share: spec.flags.force_share,
        ..OpenFlags::default()
    };
    let Some(list) = cli::run_co(collect_image_info_list(spec, chain)) else {
        return 1;
    };
    match format {
        OutputFormat::Human => {
            for (i, info) in list.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print!("{}", dump_human_image_info(info, 0, "/"));
            }
        }
        OutputFormat::Json if chain => println!("{}", qjson::to_pretty(&Value::Array(list))),
        OutputFormat::Json => println!("{}", qjson::to_pretty(&list[0])),
    }
    0
}

/// Opens the image, and with `chain` each backing file in turn, collecting their graph
/// infos (collect_image_info_list). Errors are reported; None means exit status 1.
async fn collect_image_info_list(mut spec: OpenSpec, chain: bool) -> Option<Vec<Value>> {
    let mut seen = HashSet::new();
    let mut list = Vec::new();
    loop {
        if !seen.insert(spec.filename.clone()) {
            error_report(&format!(
                "Backing file '{}' creates an infinite loop.",
                spec.filename
            ));
            return None;
        }
        let blk = cli::img_open(&spec).await?;
        let info = match query_block_graph_info(&blk.bs()).await {
            Ok(info) => info,
            Err(e) => {
                error_report(&e.to_string());
                return None;
            }
        };
        let _ = blk.close().await;
        let next = info.get("full-backing-filename").and_then(Value::as_str);
        let next_fmt = info.get("backing-filename-format").and_then(Value::as_str);
        let (next, next_fmt) = (next.map(str::to_string), next_fmt.map(str::to_string));
        list.push(info);
        match next {
            Some(name) if chain => {
                spec.filename = name;
                spec.fmt = next_fmt;
                spec.image_opts = false;
            }
            _ => return Some(list),
        }
    }
}

/// The BlockNodeInfo of one node, members in QAPI schema order (bdrv_do_query_node_info).
pub async fn query_node_info(bs: &BlockDriverState) -> block::Result<Map<String, Value>> {
    let mut info = Map::new();
    info.insert("filename".into(), json!(bs.filename()));
    info.insert("format".into(), json!(bs.format_name()));
    let drv_info = bs.drv().get_info(bs).ok();
    if let Some(di) = &drv_info {
        info.insert("dirty-flag".into(), json!(di.is_dirty));
    }
    if let Some(actual) = bs.co_get_allocated_file_size().await? {
        info.insert("actual-size".into(), json!(actual));
    }
    info.insert("virtual-size".into(), json!(bs.getlength()));
    if let Some(di) = drv_info.filter(|d| d.cluster_size != 0) {
        info.insert("cluster-size".into(), json!(di.cluster_size));
    }
    if let Some((name, fmt)) = bs.drv().backing_file_name(bs) {
        info.insert("backing-filename".into(), json!(name));
        // Where no directory can be found for a relative name (a node named by a json:
        // description of several files), there is no full name to show
        // (bdrv_get_full_backing_filename).
        if let Ok(full) = block::open::bdrv_make_absolute_filename(bs, &name) {
            info.insert("full-backing-filename".into(), json!(full));
        }
        if let Some(fmt) = fmt {
            info.insert("backing-filename-format".into(), json!(fmt));
        }
    }
    if let Some(list) = block::snapshot::bdrv_snapshot_list(bs)
        .ok()
        .filter(|l| !l.is_empty())
    {
        let list: Vec<Value> = list.iter().map(snapshot_info_json).collect();
        info.insert("snapshots".into(), Value::Array(list));
    }
    if let Some(specific) = bs.drv().get_specific_info(bs) {
        info.insert("format-specific".into(), specific);
    }
    if bs.drv().is_encrypted() {
        info.insert("encrypted".into(), json!(true));
    }
    Ok(info)
}

/// A snapshot as QAPI's SnapshotInfo, members in schema order.
fn snapshot_info_json(sn: &SnapshotInfo) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(sn.id_str));
    m.insert("name".into(), json!(sn.name));
    m.insert("vm-state-size".into(), json!(sn.vm_state_size));
    m.insert("date-sec".into(), json!(sn.date_sec));
    m.insert("date-nsec".into(), json!(sn.date_nsec));
    m.insert(
        "vm-clock-sec".into(),
        json!(sn.vm_clock_nsec / 1_000_000_000),
    );
    m.insert(
        "vm-clock-nsec".into(),
        json!(sn.vm_clock_nsec % 1_000_000_000),
    );
    if sn.icount != u64::MAX {
        m.insert("icount".into(), json!(sn.icount));
    }
    Value::Object(m)
}

/// A SnapshotInfo back from its QAPI form (for the human dump).
fn snapshot_info_from_json(v: &Value) -> SnapshotInfo {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    SnapshotInfo {
        id_str: v["id"].as_str().unwrap_or("").to_string(),
        name: v["name"].as_str().unwrap_or("").to_string(),
        vm_state_size: n("vm-state-size"),
        date_sec: n("date-sec") as u32,
        date_nsec: n("date-nsec") as u32,
        vm_clock_nsec: n("vm-clock-sec") * 1_000_000_000 + n("vm-clock-nsec"),
        icount: v["icount"].as_u64().unwrap_or(u64::MAX),
    }
}

/// The BlockGraphInfo of a node: its BlockNodeInfo plus its children's, recursively.
pub fn query_block_graph_info(
    bs: &BlockDriverState,
) -> block::coroutine::LocalBoxFuture<'_, block::Result<Value>> {
    Box::pin(async move {
        let mut info = query_node_info(bs).await?;
        let mut children = Vec::new();
        for child in bs.children() {
            let child_info = query_block_graph_info(&child.bs).await?;
            children.push(json!({"name": child.name, "info": child_info}));
        }
        info.insert("children".into(), Value::Array(children));
        Ok(Value::Object(info))
    })
}

/// The human dump of a graph info and its children (dump_human_image_info).
pub fn dump_human_image_info(info: &Value, indentation: usize, path: &str) -> String {
    let children = info["children"].as_array().cloned().unwrap_or_default();
    let mut out = node_info_dump(info, indentation, children.is_empty());
    for child in &children {
        let name = child["name"].as_str().unwrap_or("");
        out += &format!(
            "{:ind$}Child node '{path}{name}':\n",
            "",
            ind = indentation * 4
        );
        out += &dump_human_image_info(&child["info"], indentation + 1, &format!("{path}{name}/"));
    }
    out
}

/// One node's human dump (bdrv_node_info_dump); a leaf below the root is a protocol node
/// and names its fields accordingly ("filename", "protocol type", "file length").
fn node_info_dump(info: &Value, indentation: usize, protocol: bool) -> String {
    let ind = " ".repeat(indentation * 4);
    let protocol = protocol && indentation > 0;
    let s = |k: &str| info[k].as_str().unwrap_or("").to_string();
    let virtual_size = info["virtual-size"].as_u64().unwrap_or(0);
    let disk = info["actual-size"]
        .as_u64()
        .map_or("unavailable".to_string(), size_to_str);
    let (l1, l2, l3) = if protocol {
        ("filename", "protocol type", "file length")
    } else {
        ("image", "file format", "virtual size")
    };
    let mut out = format!(
        "{ind}{l1}: {}\n{ind}{l2}: {}\n{ind}{l3}: {} ({virtual_size} bytes)\n{ind}disk size: {disk}\n",
        s("filename"),
        s("format"),
        size_to_str(virtual_size)
    );
    if info["encrypted"].as_bool() == Some(true) {
        out += &format!("{ind}encrypted: yes\n");
    }
    if let Some(cs) = info["cluster-size"].as_u64() {
        out += &format!("{ind}cluster_size: {cs}\n");
    }
    if info["dirty-flag"].as_bool() == Some(true) {
        out += &format!("{ind}cleanly shut down: no\n");
    }
    if let Some(backing) = info["backing-filename"].as_str() {
        out += &format!("{ind}backing file: {backing}");
        match info["full-backing-filename"].as_str() {
            None => out += " (cannot determine actual path)",
            Some(full) if full != backing => out += &format!(" (actual path: {full})"),
            Some(_) => {}
        }
        out += "\n";
        if let Some(fmt) = info["backing-filename-format"].as_str() {
            out += &format!("{ind}backing file format: {fmt}\n");
        }
    }
    if let Some(list) = info["snapshots"].as_array() {
        let list: Vec<SnapshotInfo> = list.iter().map(snapshot_info_from_json).collect();
        out += &format!("{ind}Snapshot list:\n");
        out += &super::snapshot::snapshot_table(&list, &ind);
    }
    if let Some(data) = info.get("format-specific").and_then(|f| f.get("data")) {
        if !is_empty_dump(data) {
            out += &format!("{ind}Format specific information:\n");
            out += &dump_qobject(indentation + 1, data);
        }
    }
    out
}

fn is_empty_dump(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Dumps a QAPI value as block/qapi.c's dump_qobject: dashes in keys become spaces, lists
/// print "[i]:" entries, nested containers indent by four.
pub fn dump_qobject(indentation: usize, v: &Value) -> String {
    let ind = " ".repeat(indentation * 4);
    let mut out = String::new();
    let entries: Vec<(String, &Value)> = match v {
        Value::Object(m) => qjson::qdict_order(m)
            .into_iter()
            .map(|(k, v)| (k.replace('-', " "), v))
            .collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("[{i}]"), v))
            .collect(),
        scalar => return scalar_text(scalar),
    };
    for (key, value) in entries {
        if value.is_object() || value.is_array() {
            out += &format!("{ind}{key}:\n");
            out += &dump_qobject(indentation + 1, value);
        } else {
            out += &format!("{ind}{key}: {}\n", scalar_text(value));
        }
    }
    out
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
