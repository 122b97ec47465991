//! `-device`: the device models a drive can be attached to, and their properties
//! (QEMU's qdev property parsing for `ide-hd` and `virtio-blk-pci`).

use block::error_action::OnError;
use block::Options;

use super::{VmConfig, IDE_BUSES, IDE_UNITS};
use crate::devices::virtio::pci::VirtioPciConf;
use crate::drives::DriveInterface;
use crate::error::MachineError;

/// `-device DRIVER,...`: `ide-hd,drive=ID[,bus=ide.N][,unit=M]` attaches an `if=none` drive.
pub(super) fn parse_device(cfg: &mut VmConfig, arg: &str) -> Result<(), MachineError> {
    let mut opts = Options::parse_keyval(arg, Some("driver"))
        .map_err(|e| MachineError::Config(e.to_string()))?;
    let driver = opts.take("driver").unwrap_or_default();
    match driver.as_str() {
        "ide-hd" | "ide-cd" => {}
        d if is_virtio_blk(d) => return parse_virtio_device(cfg, arg),
        "virtio-scsi" | "virtio-scsi-pci" => {
            let bus = super::scsi::parse_hba(&cfg.scsi_buses, &mut opts, |t| {
                cfg.iothreads.iter().any(|i| i == t)
            })
            .map_err(MachineError::Config)?;
            cfg.scsi_buses.push(bus);
            return Ok(());
        }
        "scsi-hd" => {
            let disk = super::scsi::parse_disk(&cfg.scsi_buses, &mut opts)
                .map_err(MachineError::Config)?;
            if !cfg.drives.iter().any(|d| d.id == disk.drive) {
                return Err(MachineError::Config(format!(
                    "Property 'scsi-hd.drive' can't find value '{}'",
                    disk.drive
                )));
            }
            cfg.scsi_disks.push(disk);
            return Ok(());
        }
        _ => {
            return Err(MachineError::Config(format!(
                "'{driver}' is not a valid device model name"
            )))
        }
    }
    let Some(drive) = opts.take("drive") else {
        return Err(MachineError::Config("No drive specified".to_string()));
    };
    let bus = match opts.take("bus") {
        None => None,
        Some(b) => match b.as_str() {
            "ide.0" => Some(0),
            "ide.1" => Some(1),
            _ => return Err(MachineError::Config(format!("Bus '{b}' not found"))),
        },
    };
    let unit = opts
        .take_u64("unit")
        .map_err(|e| MachineError::Config(e.to_string()))?;
    // The qdev id names the device for the monitor; rqemu's IDE slots are found by drive.
    opts.take("id");
    let on_error = (
        take_device_on_error(&mut opts, &driver, "rerror")?,
        take_device_on_error(&mut opts, &driver, "werror")?,
    );
    if let Some((key, _)) = opts.iter().next() {
        return Err(MachineError::Config(format!(
            "Property '{driver}.{key}' not found"
        )));
    }
    let Some(d) = cfg.drives.iter().find(|d| d.id == drive) else {
        return Err(MachineError::Config(format!(
            "Property '{driver}.drive' can't find value '{drive}'"
        )));
    };
    let in_use = cfg
        .ide
        .iter()
        .flatten()
        .any(|s| s.as_deref() == Some(&drive))
        || cfg.virtio_disks.iter().any(|v| v.drive == drive);
    if d.interface != DriveInterface::None || in_use {
        return Err(MachineError::Config(format!(
            "Property '{driver}.drive' can't take value '{drive}', it's in use"
        )));
    }
    let (bus, unit) = ide_device_slot(cfg, bus, unit)?;
    set_on_error(cfg, &drive, on_error);
    cfg.ide[bus][unit] = Some(drive);
    cfg.ide_cdrom[bus][unit] = driver == "ide-cd";
    Ok(())
}

/// `-device virtio-blk-pci,drive=ID,...`: attaches an `if=none` drive to a virtio disk.
fn parse_virtio_device(cfg: &mut VmConfig, arg: &str) -> Result<(), MachineError> {
    let disk = parse_virtio_blk(arg)?;
    let id = disk.drive.as_str();
    let Some(d) = cfg.drives.iter().find(|d| d.id == id) else {
        return Err(MachineError::Config(format!(
            "Property 'virtio-blk-pci.drive' can't find value '{id}'"
        )));
    };
    let in_use = cfg.ide.iter().flatten().any(|s| s.as_deref() == Some(id))
        || cfg.virtio_disks.iter().any(|v| v.drive == id);
    if d.interface != DriveInterface::None || in_use {
        return Err(MachineError::Config(format!(
            "Property 'virtio-blk-pci.drive' can't take value '{id}', it's in use"
        )));
    }
    set_on_error(cfg, &disk.drive.clone(), disk.on_error);
    cfg.virtio_disks.push(disk);
    Ok(())
}

/// A device's `rerror=`/`werror=` property (BlockdevOnError; `auto`, the default, keeps the
/// drive's policy).
fn take_device_on_error(
    opts: &mut Options,
    driver: &str,
    key: &str,
) -> Result<OnError, MachineError> {
    match opts.take(key) {
        None => Ok(OnError::Auto),
        Some(v) => parse_on_error(driver, key, &v),
    }
}

fn parse_on_error(driver: &str, key: &str, value: &str) -> Result<OnError, MachineError> {
    OnError::parse(value).map_err(|_| {
        MachineError::Config(format!(
            "Property '{driver}.{key}' doesn't take value '{value}'"
        ))
    })
}

/// Applies a device's error policies to its drive (blkconf_apply_backend_options'
/// blk_set_on_error, which keeps the drive's policy where the device says `auto`).
fn set_on_error(cfg: &mut VmConfig, drive: &str, (rerror, werror): (OnError, OnError)) {
    if let Some(d) = cfg.drives.iter_mut().find(|d| d.id == drive) {
        if rerror != OnError::Auto {
            d.on_error.0 = rerror;
        }
        if werror != OnError::Auto {
            d.on_error.1 = werror;
        }
    }
}

/// The slot `-device ide-hd` takes: the first free one on the given (or any) bus.
fn ide_device_slot(
    cfg: &VmConfig,
    bus: Option<usize>,
    unit: Option<u64>,
) -> Result<(usize, usize), MachineError> {
    if let Some(u) = unit.filter(|u| *u >= IDE_UNITS as u64) {
        return Err(MachineError::Config(format!(
            "Can't create IDE unit {u}, bus supports only {IDE_UNITS} units"
        )));
    }
    let buses = bus.map_or(0..IDE_BUSES, |b| b..b + 1);
    for b in buses {
        if let Some(u) = unit {
            if cfg.ide[b][u as usize].is_some() {
                return Err(MachineError::Config(format!("IDE unit {u} is in use")));
            }
            return Ok((b, u as usize));
        }
        if let Some(u) = (0..IDE_UNITS).find(|u| cfg.ide[b][*u].is_none()) {
            return Ok((b, u));
        }
    }
    Err(MachineError::Config("IDE bus is full".to_string()))
}

/// The first PCI slot handed out to virtio disks without `addr=` (00:01 is the PIIX3).
pub const FIRST_VIRTIO_SLOT: u8 = 2;

/// One `-device virtio-blk-pci,...` (or `-drive if=virtio`).
#[derive(Clone, Debug)]
pub struct VirtioDiskConfig {
    /// The option text, for error messages.
    pub origin: String,
    /// The id of the `-drive`/`-blockdev` it serves.
    pub drive: String,
    /// `serial=`: the GET_ID answer.
    pub serial: String,
    /// Transport: `disable-legacy=`, `disable-modern=`.
    pub transport: VirtioPciConf,
    /// `addr=SLOT[.0]`: the PCI slot, else the next free one.
    pub slot: Option<u8>,
    /// `bootindex=N`: the disk's place in the firmware's boot order.
    pub bootindex: Option<u32>,
    /// `rerror=`, `werror=`: the device's error policies (`Auto`: the drive's).
    pub on_error: (OnError, OnError),
}

impl VirtioDiskConfig {
    /// The device `-drive if=virtio` creates for drive `id`.
    pub fn for_drive(id: &str, origin: &str) -> VirtioDiskConfig {
        VirtioDiskConfig {
            origin: origin.to_string(),
            drive: id.to_string(),
            serial: String::new(),
            transport: VirtioPciConf::default(),
            slot: None,
            bootindex: None,
            on_error: (OnError::Auto, OnError::Auto),
        }
    }
}

/// Whether `-device DRIVER` names a virtio-blk PCI device.
pub(super) fn is_virtio_blk(driver: &str) -> bool {
    matches!(driver, "virtio-blk-pci" | "virtio-blk")
}

fn parse_bool(prop: &str, v: &str) -> Result<bool, MachineError> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(MachineError::Config(format!(
            "Parameter '{prop}' expects 'on' or 'off' (got '{v}')"
        ))),
    }
}

/// `addr=S` or `addr=S.F` (hex, as QEMU): function must be 0, slots 2-31 are free for us.
fn parse_addr(v: &str) -> Result<u8, MachineError> {
    let bad = || {
        MachineError::Config(format!(
            "Property 'virtio-blk-pci.addr' doesn't take value '{v}'"
        ))
    };
    let (slot, func) = v.split_once('.').unwrap_or((v, "0"));
    let slot = u8::from_str_radix(slot.trim_start_matches("0x"), 16).map_err(|_| bad())?;
    let func = u8::from_str_radix(func, 16).map_err(|_| bad())?;
    if slot >= 32 || func >= 8 {
        return Err(bad());
    }
    if func != 0 || slot < FIRST_VIRTIO_SLOT {
        return Err(MachineError::Config(format!(
            "addr={v}: rqemu plugs virtio disks only at function 0 of slots 02-1f"
        )));
    }
    Ok(slot)
}

/// Parses `virtio-blk-pci,drive=ID,serial=S,num-queues=1,disable-legacy=,disable-modern=,
/// addr=,bootindex=,rerror=,werror=` (what rqemu supports of QEMU's properties).
pub(super) fn parse_virtio_blk(arg: &str) -> Result<VirtioDiskConfig, MachineError> {
    let mut parts = arg.split(',');
    let driver = parts.next().unwrap_or("");
    let mut disk = VirtioDiskConfig::for_drive("", &format!("-device {arg}"));
    let mut drive = None;
    for prop in parts {
        let (key, value) = prop.split_once('=').unwrap_or((prop, "on"));
        match key {
            "drive" => drive = Some(value.to_string()),
            "serial" => disk.serial = value.to_string(),
            "num-queues" => match value.parse::<u32>() {
                Ok(1) => {}
                Ok(0) => {
                    return Err(MachineError::Config(
                        "num-queues property must be larger than 0".to_string(),
                    ))
                }
                Ok(n) => {
                    return Err(MachineError::Config(format!(
                        "num-queues={n}: multiqueue virtio-blk is not supported by rqemu \
                         (only num-queues=1)"
                    )))
                }
                Err(_) => {
                    return Err(MachineError::Config(format!(
                        "Property '{driver}.num-queues' doesn't take value '{value}'"
                    )))
                }
            },
            "disable-legacy" if value == "auto" => {}
            "disable-legacy" => disk.transport.disable_legacy = parse_bool(key, value)?,
            "disable-modern" => disk.transport.disable_modern = parse_bool(key, value)?,
            "addr" => disk.slot = Some(parse_addr(value)?),
            "rerror" => disk.on_error.0 = parse_on_error(driver, key, value)?,
            "werror" => disk.on_error.1 = parse_on_error(driver, key, value)?,
            "bootindex" => {
                let n = value.parse::<u32>().map_err(|_| {
                    MachineError::Config(format!(
                        "Property '{driver}.bootindex' doesn't take value '{value}'"
                    ))
                })?;
                disk.bootindex = Some(n);
            }
            "id" => {}
            _ => {
                return Err(MachineError::Config(format!(
                    "Property '{driver}.{key}' not found"
                )))
            }
        }
    }
    if disk.transport.disable_legacy && disk.transport.disable_modern {
        return Err(MachineError::Config(
            "device cannot work as neither modern nor legacy mode is enabled".to_string(),
        ));
    }
    disk.drive = drive.ok_or_else(|| MachineError::Config("drive property not set".to_string()))?;
    Ok(disk)
}
