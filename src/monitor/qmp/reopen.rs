//! `blockdev-reopen`: new options for live nodes, all applied or none (QEMU's blockdev.c
//! qmp_blockdev_reopen; the work is block::graph::reopen's bdrv_reopen_multiple).
//!
//! The arguments are QAPI's BlockdevOptions: before anything changes they are checked the
//! way QEMU's input visitor checks them (a null where a value is required, an unknown
//! driver), then each node is found by its mandatory node name.

use block::graph::reopen::{bdrv_reopen_multiple, ReopenRequest, NULL_CHILD};
use serde_json::{json, Map, Value};

use super::{Args, CmdResult, QmpError};
use crate::drives;

/// The child references of BlockdevOptions that are a BlockdevRef (never null).
const CHILD_REFS: [&str; 4] = ["file", "image", "test", "raw"];

/// Checks the types QAPI's visitor checks, and turns a null `backing` into the flattened
/// options' null reference.
fn check_types(map: &mut Map<String, Value>, path: &str) -> Result<(), QmpError> {
    for (key, value) in map.iter_mut() {
        let here = format!("{path}.{key}");
        match value {
            Value::Null if key == "backing" => *value = Value::String(NULL_CHILD.to_string()),
            Value::Null if CHILD_REFS.contains(&key.as_str()) => {
                return Err(QmpError::generic(format!(
                    "Invalid parameter type for '{key}', expected: BlockdevRef"
                )))
            }
            Value::Null => {
                return Err(QmpError::generic(format!(
                    "Invalid parameter type for '{here}', expected: string"
                )))
            }
            Value::String(d) if key == "driver" && block::registry::find_driver(d).is_none() => {
                return Err(QmpError::generic(format!(
                    "Parameter 'driver' does not accept value '{d}'"
                )))
            }
            Value::Object(sub) => check_types(sub, &here)?,
            _ => {}
        }
    }
    Ok(())
}

/// `blockdev-reopen options=[BlockdevOptions...]`.
pub async fn blockdev_reopen(mut args: Args) -> CmdResult {
    let list = match args.opt_value("options") {
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(QmpError::generic(
                "Invalid parameter type for 'options', expected: array",
            ))
        }
        None => return Err(QmpError::generic("Parameter 'options' is missing")),
    };
    args.finish()?;
    let mut requests = Vec::new();
    for (i, item) in list.into_iter().enumerate() {
        let Value::Object(mut map) = item else {
            return Err(QmpError::generic(format!(
                "Invalid parameter type for 'options[{i}]', expected: object"
            )));
        };
        check_types(&mut map, &format!("options[{i}]"))?;
        if !map.contains_key("driver") {
            return Err(QmpError::generic(format!(
                "Parameter 'options[{i}].driver' is missing"
            )));
        }
        let Some(Value::String(name)) = map.get("node-name").cloned() else {
            return Err(QmpError::generic("node-name not specified"));
        };
        let bs = block::graph::find_node(&name).ok_or_else(|| {
            QmpError::generic(format!("Failed to find node with node-name='{name}'"))
        })?;
        let options = block::Options::parse_json_filename(&Value::Object(map).to_string())?;
        requests.push(ReopenRequest { bs, options });
    }
    for old in bdrv_reopen_multiple(requests).await? {
        if !super::block::in_use(&old) && !drives::is_monitor_node(&old) {
            super::block::close_unreferenced(old).await?;
        }
    }
    Ok(json!({}))
}
