//! `object-add`: user-creatable objects from the monitor, as `-object` creates them on the
//! command line (QEMU's qom/qom-qmp-cmds.c qmp_object_add).

use serde_json::{json, Value};

use super::{Args, CmdResult, QmpError};

/// `object-add`: `qom-type`, `id` and the type's properties (nested ones such as a
/// throttle group's `limits` as `limits.KEY`).
pub async fn object_add(mut args: Args) -> CmdResult {
    let qom_type = args.str("qom-type")?;
    let props = Value::Object(args.into_rest());
    let opts = block::Options::parse_json_filename(&props.to_string())
        .map_err(|e| QmpError::generic(e.to_string()))?;
    block::objects::user_creatable_add(&qom_type, opts)?;
    Ok(json!({}))
}
