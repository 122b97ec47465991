//! `-device virtio-scsi[-pci]` and `-device scsi-hd`: a SCSI host adapter and the disks on
//! its bus (QEMU's hw/scsi/virtio-scsi.c and hw/scsi/scsi-disk.c as qdev configures them).
//!
//! rqemu has no SCSI emulation for a guest yet: these devices exist only under
//! `-accel qtest`, where no guest runs and a disk's role is to hold its drive's
//! BlockBackend under the device's id for the monitor (query-block's `qdev`). The KVM
//! machine refuses them, naming the missing emulation.

use block::Options;

use super::VmConfig;

/// A SCSI disk: its qdev id and the drive or node it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiDisk {
    /// The device's `id=` (empty when none was given).
    pub id: String,
    /// The drive id or node name of `drive=`.
    pub drive: String,
}

/// `virtio-scsi,id=ID[,iothread=...]`: a host adapter whose bus is `ID.0`.
pub(super) fn parse_hba(cfg: &mut VmConfig, opts: &mut Options) -> Result<(), String> {
    let id = opts.take("id");
    if let Some(iothread) = opts.take("iothread") {
        if !cfg.iothreads.contains(&iothread) {
            return Err(format!(
                "Property 'virtio-scsi-pci.iothread' can't find value '{iothread}'"
            ));
        }
    }
    if let Some((key, _)) = opts.iter().next() {
        return Err(format!("Property 'virtio-scsi-pci.{key}' not found"));
    }
    let bus = match id {
        Some(id) => format!("{id}.0"),
        None => format!("scsi{}.0", cfg.scsi_buses.len()),
    };
    cfg.scsi_buses.push(bus);
    Ok(())
}

/// `scsi-hd,drive=D[,id=ID][,bus=B]`: checks the bus and returns the disk.
pub fn parse_disk(buses: &[String], opts: &mut Options) -> Result<ScsiDisk, String> {
    let drive = opts
        .take("drive")
        .ok_or_else(|| "No drive specified".to_string())?;
    let id = opts.take("id").unwrap_or_default();
    match opts.take("bus") {
        Some(bus) if !buses.contains(&bus) => return Err(format!("Bus '{bus}' not found")),
        None if buses.is_empty() => {
            return Err("No 'SCSI' bus found for device 'scsi-hd'".to_string())
        }
        _ => {}
    }
    for key in ["scsi-id", "lun", "channel"] {
        opts.take(key);
    }
    if let Some((key, _)) = opts.iter().next() {
        return Err(format!("Property 'scsi-hd.{key}' not found"));
    }
    Ok(ScsiDisk { id, drive })
}
