//! `device_add`: plugging a disk device in while the machine runs (QEMU's
//! system/qdev-monitor.c qmp_device_add). rqemu plugs the devices that only hold a drive
//! under qtest (`scsi-hd` on a virtio-scsi bus); the others are not hot-pluggable yet.

use serde_json::{json, Value};

use super::{Args, CmdResult, QmpError};
use crate::drives;
use crate::vm_config::scsi;

/// `device_add driver=scsi-hd,drive=D[,id=ID][,bus=B]`.
pub async fn device_add(mut args: Args) -> CmdResult {
    let driver = args.str("driver")?;
    if driver != "scsi-hd" {
        return Err(QmpError::generic(format!(
            "device_add: hot-plugging '{driver}' is not supported by rqemu yet"
        )));
    }
    let props = Value::Object(args.into_rest());
    let mut opts = block::Options::parse_json_filename(&props.to_string())
        .map_err(|e| QmpError::generic(e.to_string()))?;
    let disk = scsi::parse_disk(&drives::scsi_buses(), &mut opts).map_err(QmpError::generic)?;
    drives::attach_device(&disk.id, &disk.drive).ok_or_else(|| {
        QmpError::generic(format!(
            "Property 'scsi-hd.drive' can't find value '{}'",
            disk.drive
        ))
    })?;
    Ok(json!({}))
}
