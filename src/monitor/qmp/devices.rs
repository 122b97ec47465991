//! `device_add`: plugging a disk device in while the machine runs (QEMU's
//! system/qdev-monitor.c qmp_device_add). rqemu plugs the devices that only hold a drive
//! under qtest (`virtio-scsi` adapters, possibly in an iothread, and `scsi-hd` disks on
//! their buses); the others are not hot-pluggable yet.

use std::cell::RefCell;

use serde_json::{json, Value};

use super::{Args, CmdResult, QmpError};
use crate::drives;
use crate::vm_config::scsi::{self, ScsiBus};

thread_local! {
    /// The SCSI buses of the machine: the command line's and those device_add plugged.
    static SCSI_BUSES: RefCell<Vec<ScsiBus>> = const { RefCell::new(Vec::new()) };
}

/// Records the SCSI buses the command line created (for device_add's `bus=`).
pub fn set_scsi_buses(buses: Vec<ScsiBus>) {
    SCSI_BUSES.with(|b| *b.borrow_mut() = buses);
}

fn scsi_buses() -> Vec<ScsiBus> {
    SCSI_BUSES.with(|b| b.borrow().clone())
}

/// `device_add driver=virtio-scsi|scsi-hd,...`.
pub async fn device_add(mut args: Args) -> CmdResult {
    let driver = args.str("driver")?;
    let props = Value::Object(args.into_rest());
    let mut opts = block::Options::parse_json_filename(&props.to_string())
        .map_err(|e| QmpError::generic(e.to_string()))?;
    match driver.as_str() {
        "virtio-scsi" | "virtio-scsi-pci" => {
            let bus = scsi::parse_hba(&scsi_buses(), &mut opts, block::objects::iothread::exists)
                .map_err(QmpError::generic)?;
            SCSI_BUSES.with(|b| b.borrow_mut().push(bus));
        }
        "scsi-hd" => {
            let disk = scsi::parse_disk(&scsi_buses(), &mut opts).map_err(QmpError::generic)?;
            let attached = drives::attach_device(&disk.id, &disk.drive, disk.iothread.as_deref());
            let Some(attached) = attached else {
                return Err(QmpError::generic(format!(
                    "Property 'scsi-hd.drive' can't find value '{}'",
                    disk.drive
                )));
            };
            attached.map_err(QmpError::generic)?;
        }
        _ => {
            return Err(QmpError::generic(format!(
                "device_add: hot-plugging '{driver}' is not supported by rqemu yet"
            )))
        }
    }
    Ok(json!({}))
}
