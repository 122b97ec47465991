//! `-drive` and `-blockdev`: the drives to open, their open flags, and the IDE slot an
//! `if=ide` drive takes (QEMU's drive_new in blockdev.c).

use block::error_action::OnError;
use block::Options;

use super::{check_unique_id, VmConfig, IDE_BUSES, IDE_UNITS};
use crate::drives::{DriveInterface, DriveOptions};
use crate::error::MachineError;

/// Splits `readonly=`, `snapshot=`, `cache=`, `aio=` off `opts` into open flags.
fn take_open_flags(opts: &mut Options) -> Result<block::OpenFlags, MachineError> {
    let err = |e: block::Error| MachineError::Config(e.to_string());
    let mut flags = block::OpenFlags::default();
    if let Some(ro) = opts.take_bool("readonly").map_err(err)? {
        flags.read_only = ro;
    }
    if let Some(ro) = opts.take_bool("read-only").map_err(err)? {
        flags.read_only = ro;
    }
    flags.snapshot = opts.take_bool("snapshot").map_err(err)?.unwrap_or(false);
    if let Some(cache) = opts.take("cache") {
        flags.cache = block::node::CacheMode::parse(&cache).map_err(err)?;
    }
    if let Some(aio) = opts.take("aio") {
        flags.aio = block::node::AioMode::parse(&aio).map_err(err)?;
    }
    Ok(flags)
}

/// Splits `rerror=` and `werror=` off `opts` (blockdev.c's parse_block_error_action).
fn take_on_error(opts: &mut Options) -> Result<(OnError, OnError), MachineError> {
    let mut policy = |key: &str, is_read: bool| match opts.take(key) {
        None => Ok(OnError::Auto),
        Some(name) => OnError::parse_drive_option(&name, is_read)
            .map_err(|e| MachineError::Config(e.to_string())),
    };
    Ok((policy("rerror", true)?, policy("werror", false)?))
}

/// `-drive file=,format=,if=,index=,bus=,unit=,media=,id=,cache=,aio=,readonly=,snapshot=,
/// rerror=,werror=`
/// (QEMU's drive_new): opens a drive and, for `if=ide`, attaches it as an IDE disk.
pub(super) fn parse_drive(cfg: &mut VmConfig, arg: &str) -> Result<(), MachineError> {
    let mut opts =
        Options::parse_keyval(arg, None).map_err(|e| MachineError::Config(e.to_string()))?;
    let interface = match opts.take("if").as_deref() {
        None | Some("ide") => DriveInterface::Ide,
        Some("virtio") => DriveInterface::Virtio,
        Some("none") => DriveInterface::None,
        Some(other) => {
            return Err(MachineError::Config(format!(
                "unsupported bus type '{other}'"
            )))
        }
    };
    let index = take_index(&mut opts)?;
    let slot = match interface {
        DriveInterface::Ide => Some(ide_slot(cfg, index)?),
        _ => None,
    };
    let cdrom = match opts.take("media").as_deref() {
        None | Some("disk") => false,
        Some("cdrom") if interface == DriveInterface::Virtio => {
            return Err(MachineError::Config(
                "media=cdrom is only supported with if=ide".to_string(),
            ))
        }
        Some("cdrom") => true,
        Some(other) => return Err(MachineError::Config(format!("'{other}' invalid media"))),
    };
    let on_error = take_on_error(&mut opts)?;
    let mut flags = take_open_flags(&mut opts)?;
    flags.read_only |= cdrom; // a CD is never written
    if let Some(format) = opts.take("format") {
        opts.set("driver", format);
    }
    let id = match (opts.take("id"), slot) {
        (Some(id), _) => id,
        (None, Some((bus, unit))) if cdrom => format!("ide{bus}-cd{unit}"),
        (None, Some((bus, unit))) => format!("ide{bus}-hd{unit}"),
        (None, None) => format!("none{}", index.unwrap_or(cfg.drives.len() as u64)),
    };
    let filename = opts.take("file");
    // A CD-ROM drive may start without a disc (QEMU's empty drive); a disk may not.
    let empty =
        filename.is_none() && !opts.contains("file.filename") && !opts.contains("file.driver");
    if empty && !cdrom {
        return Err(MachineError::Config(
            "A block device must be specified for \"file\"".to_string(),
        ));
    }
    check_unique_id(cfg, &id)?;
    if let Some((bus, unit)) = slot {
        cfg.ide[bus][unit] = Some(id.clone());
        cfg.ide_cdrom[bus][unit] = cdrom;
    }
    cfg.drives.push(DriveOptions {
        origin: format!("-drive {arg}"),
        id,
        interface,
        filename,
        options: opts,
        flags,
        blockdev: false,
        empty,
        on_error,
    });
    Ok(())
}

/// The `index=` of a `-drive`, or the one `bus=`/`unit=` name.
fn take_index(opts: &mut Options) -> Result<Option<u64>, MachineError> {
    let err = |e: block::Error| MachineError::Config(e.to_string());
    let index = opts.take_u64("index").map_err(err)?;
    let bus = opts.take_u64("bus").map_err(err)?;
    let unit = opts.take_u64("unit").map_err(err)?;
    match (index, bus, unit) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(MachineError::Config(
            "index cannot be used with bus and unit".to_string(),
        )),
        (Some(i), None, None) => Ok(Some(i)),
        (None, None, None) => Ok(None),
        (None, b, u) => Ok(Some(
            b.unwrap_or(0)
                .saturating_mul(IDE_UNITS as u64)
                .saturating_add(u.unwrap_or(0)),
        )),
    }
}

/// The (bus, unit) an `if=ide` drive takes: `index` (bus * 2 + unit) or the first free one.
fn ide_slot(cfg: &VmConfig, index: Option<u64>) -> Result<(usize, usize), MachineError> {
    let index = index.unwrap_or_else(|| {
        let free = cfg.ide.iter().flatten().position(|s| s.is_none());
        free.unwrap_or(IDE_BUSES * IDE_UNITS) as u64
    });
    let (bus, unit) = (index / IDE_UNITS as u64, index % IDE_UNITS as u64);
    if bus >= IDE_BUSES as u64 {
        return Err(MachineError::Config(format!(
            "machine type does not support if=ide,bus={bus},unit={unit}"
        )));
    }
    if cfg.ide[bus as usize][unit as usize].is_some() {
        return Err(MachineError::Config(format!(
            "drive with bus={bus}, unit={unit} (index={index}) exists"
        )));
    }
    Ok((bus as usize, unit as usize))
}

/// `-blockdev driver=...,node-name=...,...` (QMP blockdev-add on the command line).
pub(super) fn parse_blockdev(arg: &str) -> Result<DriveOptions, MachineError> {
    let mut opts = if arg.starts_with('{') {
        Options::parse_json_filename(&format!("json:{arg}"))
            .map_err(|e| MachineError::Config(e.to_string()))?
    } else {
        Options::parse_keyval(arg, None).map_err(|e| MachineError::Config(e.to_string()))?
    };
    if !opts.contains("driver") {
        return Err(MachineError::Config(
            "Parameter 'driver' is missing".to_string(),
        ));
    }
    let Some(id) = opts.take("node-name") else {
        return Err(MachineError::Config(
            "A node-name is required for -blockdev".to_string(),
        ));
    };
    let flags = take_open_flags(&mut opts)?;
    Ok(DriveOptions {
        origin: format!("-blockdev {arg}"),
        id,
        interface: DriveInterface::None,
        filename: None,
        options: opts,
        flags,
        blockdev: true,
        empty: false,
        on_error: (OnError::Auto, OnError::Auto),
    })
}
