//! A node's name and directory (QEMU's bdrv_refresh_filename, bdrv_dirname and
//! bdrv_make_absolute_filename in block.c).
//!
//! A node that a plain filename cannot reopen as it is (a quorum of several files, a
//! blkdebug node with rules given as options) is named by a `json:` description of the
//! options it was opened with, printed in the order QEMU's QDict walks its members.
//!
//! Relative names an image stores (backing files, extents) are found in the base directory
//! of its node: a format or filter node has the directory of the child holding its data, a
//! protocol node named by a path has that path's directory. A node only a `json:` object
//! describes has none, and a relative name stored in the image above it cannot be resolved.

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::node::BlockDriverState;

/// What a node was opened with, as bdrv_refresh_filename rebuilds it (full_open_options): a
/// node named by a `json:` description is that description; a format over a file is the
/// format and its file; anything else is its driver and filename.
pub fn full_open_options(bs: &BlockDriverState) -> Value {
    let name = bs.filename();
    if let Some(Ok(described)) = name.strip_prefix("json:").map(serde_json::from_str) {
        return described;
    }
    match bs.file() {
        Some(file) if bs.class().is_format => {
            json!({"driver": bs.format_name(), "file": full_open_options(&file)})
        }
        _ => json!({"driver": bs.format_name(), "filename": name}),
    }
}

/// `json:` and the description on one line, each object's members in QDict order
/// (qobject_to_json).
pub fn json_name(description: &Value) -> String {
    format!("json:{}", qdict_json(description))
}

fn qdict_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let keys = crate::graph::reopen::order::qdict_order(map.keys().map(String::as_str));
            let members: Vec<String> = keys
                .iter()
                .map(|k| format!("{}: {}", json!(k), qdict_json(&map[*k])))
                .collect();
            format!("{{{}}}", members.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(qdict_json).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// Whether a node's name reopens it by itself (a non-empty exact_filename in QEMU): not
/// when it is a `json:` description.
pub fn is_exact_filename(name: &str) -> bool {
    !name.is_empty() && !name.starts_with("json:")
}

/// The directory relative names in `bs` are resolved against, ending in '/' (or empty for
/// the current directory), or why there is none (bdrv_dirname).
pub fn bdrv_dirname(bs: &BlockDriverState) -> Result<String> {
    // The primary child: a format's file, a filter's filtered child. A format opening its
    // backing file asks before its driver is in place; it is no filter.
    let primary = if bs.drv.get().is_some_and(|d| d.is_filter()) {
        bs.filtered()
    } else {
        bs.file()
    };
    if let Some(child) = primary {
        return bdrv_dirname(&child);
    }
    let name = bs.filename();
    // A URI's path is not a directory to look in (NBD has no directories of exports).
    if !is_exact_filename(&name) || name.contains("://") {
        return Err(Error::invalid(format!(
            "Cannot generate a base directory for {} nodes",
            bs.format_name()
        )));
    }
    Ok(match name.rfind('/') {
        Some(slash) => name[..=slash].to_string(),
        None => String::new(),
    })
}

/// Whether a name needs no directory to be found: an absolute path, or one that names its
/// protocol (`nbd:...`, `json:{...}`; a ':' before any '/', as QEMU's path_has_protocol).
fn is_self_contained(name: &str) -> bool {
    name.starts_with('/')
        || name
            .find([':', '/'])
            .is_some_and(|i| name.as_bytes()[i] == b':')
}

/// `name` resolved against the directory of `relative_to` (bdrv_make_absolute_filename).
pub fn bdrv_make_absolute_filename(relative_to: &BlockDriverState, name: &str) -> Result<String> {
    if is_self_contained(name) {
        return Ok(name.to_string());
    }
    Ok(bdrv_dirname(relative_to)? + name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_print_members_in_qdict_order() {
        let o = json!({
            "driver": "quorum",
            "vote-threshold": 2,
            "read-pattern": "fifo",
            "children": [{"driver": "file", "filename": "a.qcow2"}],
        });
        // As QEMU 10.0.2's qemu-img info prints the same node.
        assert_eq!(
            json_name(&o),
            r#"json:{"read-pattern": "fifo", "children": [{"driver": "file", "filename": "a.qcow2"}], "driver": "quorum", "vote-threshold": 2}"#
        );
        // As its iotest 099 shows a blkdebug node with a rule.
        let o = json!({
            "driver": "blkdebug",
            "inject-error.0.event": "l1_update",
            "image": {"driver": "file", "filename": "t.qcow2"},
        });
        assert_eq!(
            json_name(&o),
            r#"json:{"image": {"driver": "file", "filename": "t.qcow2"}, "driver": "blkdebug", "inject-error.0.event": "l1_update"}"#
        );
    }

    #[test]
    fn names_with_a_protocol_or_a_root_need_no_directory() {
        assert!(is_self_contained("/a/b"));
        assert!(is_self_contained("nbd:localhost:10809"));
        assert!(is_self_contained("json:{\"driver\": \"raw\"}"));
        assert!(!is_self_contained("base.qcow2"));
        assert!(!is_self_contained("dir/with:colon"));
    }
}
