//! `-device virtio-scsi[-pci]` and `-device scsi-hd`: a SCSI host adapter and the disks on
//! its bus (QEMU's hw/scsi/virtio-scsi.c and hw/scsi/scsi-disk.c as qdev configures them).
//!
//! rqemu has no SCSI emulation for a guest yet: these devices exist only under
//! `-accel qtest`, where no guest runs and a disk's role is to hold its drive's
//! BlockBackend under the device's id for the monitor (query-block's `qdev`). The KVM
//! machine refuses them, naming the missing emulation.

use block::Options;

/// A SCSI disk: its qdev id, the drive or node it holds, and the iothread of its bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiDisk {
    /// The device's `id=` (empty when none was given).
    pub id: String,
    /// The drive id or node name of `drive=`.
    pub drive: String,
    /// The iothread whose AioContext the disk's drive moves to (its adapter's).
    pub iothread: Option<String>,
}

/// The bus of a host adapter: its name (`ID.0`) and the iothread the adapter runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiBus {
    /// `ID.0`.
    pub name: String,
    /// `iothread=`: an iothread's id.
    pub iothread: Option<String>,
}

/// `virtio-scsi,id=ID[,iothread=...]`: a host adapter whose bus is `ID.0`, next to
/// `buses`; `iothread_exists` resolves the iothread link (empty: none).
pub fn parse_hba(
    buses: &[ScsiBus],
    opts: &mut Options,
    iothread_exists: impl Fn(&str) -> bool,
) -> Result<ScsiBus, String> {
    let id = opts.take("id");
    let iothread = opts.take("iothread").filter(|t| !t.is_empty());
    if let Some(iothread) = &iothread {
        if !iothread_exists(iothread) {
            return Err(format!(
                "Property 'virtio-scsi-pci.iothread' can't find value '{iothread}'"
            ));
        }
    }
    if let Some((key, _)) = opts.iter().next() {
        return Err(format!("Property 'virtio-scsi-pci.{key}' not found"));
    }
    let name = match &id {
        Some(id) => format!("{id}.0"),
        None => format!("scsi{}.0", buses.len()),
    };
    if let (Some(id), true) = (&id, buses.iter().any(|b| b.name == name)) {
        return Err(format!("Duplicate ID '{id}' for device"));
    }
    Ok(ScsiBus { name, iothread })
}

/// `scsi-hd,drive=D[,id=ID][,bus=B][,share-rw=on|off]`: checks the bus (the first one when
/// none is named) and returns the disk.
pub fn parse_disk(buses: &[ScsiBus], opts: &mut Options) -> Result<ScsiDisk, String> {
    let drive = opts
        .take("drive")
        .ok_or_else(|| "No drive specified".to_string())?;
    let id = opts.take("id").unwrap_or_default();
    let bus = match opts.take("bus") {
        Some(bus) => buses
            .iter()
            .find(|b| b.name == bus)
            .ok_or_else(|| format!("Bus '{bus}' not found"))?,
        None => buses
            .first()
            .ok_or_else(|| "No 'SCSI' bus found for device 'scsi-hd'".to_string())?,
    };
    for key in ["scsi-id", "lun", "channel"] {
        opts.take(key);
    }
    // Sharing write access with other users is what the permission checks would allow;
    // rqemu's devices take no permissions of their own yet, so it only has to be valid.
    opts.take_bool("share-rw").map_err(|e| e.to_string())?;
    if let Some((key, _)) = opts.iter().next() {
        return Err(format!("Property 'scsi-hd.{key}' not found"));
    }
    Ok(ScsiDisk {
        id,
        drive,
        iothread: bus.iothread.clone(),
    })
}
