//! `device_add` and `device_del`: plugging a disk device in and out while the machine runs
//! (QEMU's system/qdev-monitor.c qmp_device_add, qmp_device_del). rqemu plugs the devices
//! that only hold a drive under qtest (`virtio-scsi` adapters, possibly in an iothread, and
//! `scsi-hd` disks on their buses); the others are not hot-pluggable yet.

use std::cell::RefCell;

use block::jobs::JobManager;
use serde_json::{json, Value};

use super::block::{close_unreferenced, in_use};
use super::{Args, CmdResult, ErrorClass, QmpError};
use crate::drives;
use crate::monitor::events::emit;
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

/// `device_del id`: unplugs a disk device. No guest acknowledges the unplug under qtest,
/// so the device goes at once (DEVICE_DELETED). A `-drive` goes with its device: the jobs
/// on its node are cancelled, and its nodes close once those jobs have ended
/// (blockdev_auto_del).
pub async fn device_del(mut args: Args) -> CmdResult {
    let id = args.str("id")?;
    args.finish()?;
    let drive = drives::detach_device(&id).ok_or_else(|| {
        QmpError::new(
            ErrorClass::DeviceNotFound,
            format!("Device '{id}' not found"),
        )
    })?;
    let gone = drives::auto_del(&drive);
    emit(
        "DEVICE_DELETED",
        Some(json!({"device": id, "path": format!("/machine/peripheral/{id}")})),
    );
    let Some(blk) = gone else {
        return Ok(json!({}));
    };
    // The root, and below the filters jobs put there, the node the jobs work on.
    let root = blk.bs();
    drop(blk);
    let below = super::block_query::skip_implicit_filters(root.clone());
    let jobs: Vec<_> = JobManager::current()
        .jobs()
        .into_iter()
        .filter(|j| j.has_bdrv(&root) || j.has_bdrv(&below))
        .collect();
    for job in &jobs {
        job.cancel(false);
    }
    block::coroutine::co_spawn(async move {
        for job in jobs {
            let _ = job.wait_concluded().await;
        }
        // The filters are gone with the jobs: the node that was below them is the root.
        let root = super::block_query::skip_implicit_filters(root);
        if !in_use(&root) && !drives::is_monitor_node(&root) {
            if let Err(e) = close_unreferenced(root).await {
                eprintln!("rqemu: closing the nodes of drive '{drive}': {e}");
            }
        }
    });
    Ok(json!({}))
}
