//! The system emulator's command line, parsed the way qemu-system-x86_64 reads it
//! (QEMU's softmmu/vl.c `qemu_init` option loop plus the option descriptions of qemu-options.hx).
//!
//! Every option is a single-dash word followed by at most one argument (`-m 512`, `-drive
//! file=x,if=none`); a double dash is accepted too. Errors follow QEMU's shape,
//! `PROG: -opt ARG: message`, so scripts written for QEMU read them the same way.

use std::fmt;
use std::path::PathBuf;

use crate::devices::virtio::machine::{self as virtio, VirtioDiskConfig};
use block::Options;

/// The SeaBIOS image QEMU's `pc` machine loads by default.
pub const DEFAULT_BIOS: &str = "/usr/share/seabios/bios-256k.bin";
/// Default guest RAM (QEMU's default_ram_size for pc: 128 MiB).
pub const DEFAULT_RAM: u64 = 128 << 20;

/// Where a character stream (serial port, debug console) goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CharBackend {
    /// The process's stdout (and stdin for input).
    Stdio,
    /// Appended to a file created or truncated at start.
    File(PathBuf),
    /// Discarded.
    Null,
    /// Not connected at all (`none`).
    None,
}

/// Which device a `-drive` is meant for (`if=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveInterface {
    /// An IDE disk on the PIIX3 controller.
    Ide,
    /// A virtio-blk-pci device.
    Virtio,
    /// No device: the drive is only a named backend for `-device ...,drive=ID`.
    None,
}

/// One `-drive` or `-blockdev`: what to open, with which options.
#[derive(Clone, Debug)]
pub struct DriveConfig {
    /// The option text as given, for error messages (`-drive file=x: ...`).
    pub origin: String,
    /// The drive's id (`id=` / `node-name=`), unique per machine.
    pub id: String,
    /// The interface it attaches to.
    pub interface: DriveInterface,
    /// The filename, when given with `file=` as a plain string.
    pub filename: Option<String>,
    /// The remaining block options for `bdrv_open` (driver=, cache.*, aio=, file.*...).
    pub options: Options,
    /// The flags derived from `readonly=`, `snapshot=`, `cache=`, `aio=`.
    pub flags: block::OpenFlags,
}

/// IDE channels of the PIIX3 and drives per channel (QEMU's `ide.0`/`ide.1`, units 0 and 1).
pub const IDE_BUSES: usize = 2;
/// Master and slave.
pub const IDE_UNITS: usize = 2;

/// Everything needed to build and run one machine.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Guest RAM in bytes.
    pub ram_size: u64,
    /// The firmware image.
    pub bios: PathBuf,
    /// `-kernel`: a bzImage booted directly instead of through the BIOS.
    pub kernel: Option<PathBuf>,
    /// `-initrd`.
    pub initrd: Option<PathBuf>,
    /// `-append`.
    pub append: String,
    /// `-drive` and `-blockdev` options, in order.
    pub drives: Vec<DriveConfig>,
    /// virtio-blk-pci disks (`-device virtio-blk-pci`, `-drive if=virtio`), in order.
    pub virtio_disks: Vec<crate::devices::virtio::machine::VirtioDiskConfig>,
    /// The drive id of each IDE disk, by channel and unit (`-drive if=ide`, `-device ide-hd`).
    pub ide: [[Option<String>; IDE_UNITS]; IDE_BUSES],
    /// COM1.
    pub serial: CharBackend,
    /// The debug console at port 0x402.
    pub debugcon: CharBackend,
    /// `-nographic`: no display, serial on stdio, SeaBIOS told to print on COM1.
    pub nographic: bool,
    /// `-no-reboot`: a guest reset ends the run instead of restarting the machine.
    pub no_reboot: bool,
    /// `-boot reboot-timeout=MS`: how long SeaBIOS waits after "No bootable device"
    /// before it reboots; `None` = the default (see [`VmConfig::boot_fail_wait`]).
    pub reboot_timeout: Option<i64>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            ram_size: DEFAULT_RAM,
            bios: PathBuf::from(DEFAULT_BIOS),
            kernel: None,
            initrd: None,
            append: String::new(),
            drives: Vec::new(),
            virtio_disks: Vec::new(),
            ide: Default::default(),
            serial: CharBackend::Null,
            debugcon: CharBackend::None,
            nographic: false,
            no_reboot: false,
            reboot_timeout: None,
        }
    }
}

impl VmConfig {
    /// The value of fw_cfg `etc/boot-fail-wait` in milliseconds (-1: wait forever).
    ///
    /// QEMU's default is -1; with `-no-reboot` rqemu defaults to 0 instead, so that a
    /// machine with nothing to boot ends the run rather than idling forever.
    pub fn boot_fail_wait(&self) -> i64 {
        match self.reboot_timeout {
            Some(ms) => ms,
            None if self.no_reboot => 0,
            None => -1,
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Build and run a machine.
    Run(Box<VmConfig>),
    /// Print this text (e.g. `-machine help`) and exit successfully.
    Print(String),
}

/// A command-line error, printed as `PROG: CONTEXT: MESSAGE` (CONTEXT may be empty).
#[derive(Debug, PartialEq, Eq)]
pub struct CliError {
    /// The offending option and argument, e.g. `-m abc`.
    pub context: String,
    /// What is wrong.
    pub message: String,
}

impl CliError {
    fn new(context: impl Into<String>, message: impl Into<String>) -> CliError {
        CliError {
            context: context.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.context.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.context, self.message)
        }
    }
}

/// The machine list `-machine help` prints (QEMU's layout: name padded to 20 columns).
pub fn machine_help() -> String {
    let mut s = String::from("Supported machines are:\n");
    for (name, desc) in [
        (
            "pc",
            "Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-10.0)",
        ),
        (
            "pc-i440fx-10.0",
            "Standard PC (i440FX + PIIX, 1996) (default)",
        ),
    ] {
        s.push_str(&format!("{name:<20} {desc}\n"));
    }
    s
}

/// Options that take an argument; everything else in [`FLAGS`] takes none.
const WITH_ARG: &[&str] = &[
    "m", "bios", "kernel", "initrd", "append", "drive", "blockdev", "device", "serial", "debugcon",
    "trace", "machine", "M", "accel", "boot", "smp", "display", "vga", "net",
];
const FLAGS: &[&str] = &["nographic", "no-reboot", "enable-kvm", "nodefaults"];

/// Parses the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Command, CliError> {
    let mut cfg = VmConfig::default();
    let mut serial_given = false;
    // QEMU creates devices after all drives, so `-device` may name a later `-drive`.
    let mut devices = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let word = &args[i];
        i += 1;
        let Some(name) = word.strip_prefix('-').filter(|n| !n.is_empty()) else {
            // A bare word is QEMU's "hda" shorthand: the IDE primary master.
            let drive = format!("file={},index=0,media=disk", word.replace(',', ",,"));
            parse_drive(&mut cfg, &drive).map_err(|m| CliError::new(word.as_str(), m))?;
            continue;
        };
        let name = name.strip_prefix('-').unwrap_or(name);
        match name {
            "h" | "help" => return Ok(Command::Print(usage::usage())),
            "version" => return Ok(Command::Print(usage::version())),
            _ => {}
        }
        if FLAGS.contains(&name) {
            apply_flag(&mut cfg, name);
            continue;
        }
        if !WITH_ARG.contains(&name) {
            return Err(CliError::new(word.as_str(), "invalid option"));
        }
        let Some(arg) = args.get(i) else {
            return Err(CliError::new(word.as_str(), "requires an argument"));
        };
        i += 1;
        let ctx = format!("{word} {arg}");
        if name == "serial" {
            serial_given = true;
        }
        if name == "device" {
            devices.push((ctx, arg.clone()));
            continue;
        }
        if let Some(text) = apply_option(&mut cfg, name, arg).map_err(|m| CliError::new(ctx, m))? {
            return Ok(Command::Print(text));
        }
    }
    for (ctx, arg) in devices {
        parse_device(&mut cfg, &arg).map_err(|m| CliError::new(ctx, m))?;
    }
    if cfg.kernel.is_none() {
        // QEMU's wording, and no context: the options may come in any order.
        if cfg.initrd.is_some() {
            return Err(CliError::new(
                "",
                "-initrd only allowed with -kernel option",
            ));
        }
        if !cfg.append.is_empty() {
            return Err(CliError::new(
                "",
                "-append only allowed with -kernel option",
            ));
        }
    }
    if cfg.nographic && !serial_given {
        cfg.serial = CharBackend::Stdio;
    }
    Ok(Command::Run(Box::new(cfg)))
}

fn apply_flag(cfg: &mut VmConfig, name: &str) {
    match name {
        "nographic" => cfg.nographic = true,
        "no-reboot" => cfg.no_reboot = true,
        // -enable-kvm: KVM is the only accelerator; -nodefaults: there are no default devices.
        _ => {}
    }
}

/// Applies one option with an argument; `Ok(Some(text))` means "print text and exit".
fn apply_option(cfg: &mut VmConfig, name: &str, arg: &str) -> Result<Option<String>, String> {
    match name {
        "m" => cfg.ram_size = parse_ram_size(arg)?,
        "bios" => cfg.bios = PathBuf::from(arg),
        "kernel" => cfg.kernel = Some(PathBuf::from(arg)),
        "initrd" => cfg.initrd = Some(PathBuf::from(arg)),
        "append" => cfg.append = arg.to_string(),
        "drive" => {
            parse_drive(cfg, arg)?;
            let virtio = cfg
                .drives
                .last()
                .filter(|d| d.interface == DriveInterface::Virtio);
            if let Some(disk) = virtio.map(|d| VirtioDiskConfig::for_drive(&d.id, &d.origin)) {
                cfg.virtio_disks.push(disk);
            }
        }
        "blockdev" => {
            let drive = parse_blockdev(arg)?;
            check_unique_id(cfg, &drive.id)?;
            cfg.drives.push(drive);
        }
        "serial" => cfg.serial = parse_chardev(arg)?,
        "debugcon" => cfg.debugcon = parse_chardev(arg)?,
        "trace" => return block::trace::configure(arg),
        "machine" | "M" => return parse_machine(arg),
        "accel" => parse_accel(arg)?,
        "boot" => cfg.reboot_timeout = parse_boot(arg)?.or(cfg.reboot_timeout),
        "smp" => parse_smp(arg)?,
        "display" | "vga" | "net" if arg == "none" => {}
        _ => return Err(format!("'{arg}' is not supported by rqemu")),
    }
    Ok(None)
}

fn check_unique_id(cfg: &VmConfig, id: &str) -> Result<(), String> {
    if cfg.drives.iter().any(|d| d.id == id) {
        return Err(format!("Duplicate ID '{id}' for drive"));
    }
    Ok(())
}

/// `-m 512`, `-m 1G`, `-m size=1G`: a plain number means MiB.
fn parse_ram_size(arg: &str) -> Result<u64, String> {
    let value = arg.strip_prefix("size=").unwrap_or(arg);
    // qemu_strtosz_MiB: without a suffix the unit is MiB.
    let Ok(bytes) = block::options::strtosz_unit(value, 20) else {
        return Err(
            "Parameter 'size' expects a non-negative number below 2^64\n\
             Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
             and exabytes, respectively."
                .to_string(),
        );
    };
    // 1 MiB is the BIOS area; 16 GiB keeps the e820 layout and the test machines sane.
    if !(2 << 20..=16 << 30).contains(&bytes) {
        return Err(format!(
            "RAM size {bytes} is not supported by rqemu (use 2M to 16G)"
        ));
    }
    Ok(bytes & !0xfff)
}

fn parse_machine(arg: &str) -> Result<Option<String>, String> {
    let opts = Options::parse_keyval(arg, Some("type")).map_err(|e| e.to_string())?;
    for (key, value) in opts.iter() {
        match (key, value) {
            ("type", "help") => return Ok(Some(machine_help())),
            ("type", "pc" | "pc-i440fx-10.0") => {}
            ("type", other) => {
                return Err(format!(
                    "unsupported machine type: \"{other}\"\nUse -machine help to list supported machines"
                ))
            }
            ("accel", v) => parse_accel(v)?,
            _ => return Err(format!("Invalid parameter '{key}'")),
        }
    }
    Ok(None)
}

fn parse_accel(arg: &str) -> Result<(), String> {
    let accel = arg.split(',').next().unwrap_or("");
    match accel {
        "kvm" => Ok(()),
        "tcg" | "xen" | "hvf" | "whpx" | "nvmm" | "qtest" => Err(format!(
            "accelerator {accel} is not supported by rqemu (only kvm)"
        )),
        _ => Err(format!("invalid accelerator {accel}")),
    }
}

/// `-boot reboot-timeout=MS` (other -boot keys are accepted and ignored: boot order comes
/// from the devices, and menus have no user here).
fn parse_boot(arg: &str) -> Result<Option<i64>, String> {
    let opts = Options::parse_keyval(arg, Some("order")).map_err(|e| e.to_string())?;
    let mut timeout = None;
    for (key, value) in opts.iter() {
        match key {
            "reboot-timeout" => {
                let ms: i64 = value
                    .parse()
                    .map_err(|_| "Parameter 'reboot-timeout' expects a number".to_string())?;
                if !(-1..=0xffff).contains(&ms) {
                    return Err(
                        "reboot timeout is invalid, it should be a value between -1 and 65535"
                            .to_string(),
                    );
                }
                timeout = Some(ms);
            }
            "order" | "once" | "menu" | "splash-time" | "strict" => {}
            _ => return Err(format!("Invalid parameter '{key}'")),
        }
    }
    Ok(timeout)
}

fn parse_smp(arg: &str) -> Result<(), String> {
    let opts = Options::parse_keyval(arg, Some("cpus")).map_err(|e| e.to_string())?;
    for (key, value) in opts.iter() {
        if value != "1" {
            return Err(format!(
                "{key}={value}: more than one vCPU is not supported by rqemu yet"
            ));
        }
    }
    Ok(())
}

/// `stdio`, `file:PATH`, `null`, `none` (QEMU's -serial / -debugcon character backends).
pub fn parse_chardev(arg: &str) -> Result<CharBackend, String> {
    match arg {
        "stdio" => Ok(CharBackend::Stdio),
        "null" => Ok(CharBackend::Null),
        "none" => Ok(CharBackend::None),
        _ => match arg.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(CharBackend::File(PathBuf::from(path))),
            _ => Err(format!("'{arg}' is not a valid char driver")),
        },
    }
}

/// `-device DRIVER,...`: `ide-hd,drive=ID[,bus=ide.N][,unit=M]` attaches an `if=none` drive.
fn parse_device(cfg: &mut VmConfig, arg: &str) -> Result<(), String> {
    let mut opts = Options::parse_keyval(arg, Some("driver")).map_err(|e| e.to_string())?;
    let driver = opts.take("driver").unwrap_or_default();
    match driver.as_str() {
        "ide-hd" => {}
        "ide-cd" => return Err("device 'ide-cd' (CD-ROM) is not supported by rqemu".to_string()),
        d if virtio::is_virtio_blk(d) => return parse_virtio_device(cfg, arg),
        _ => return Err(format!("'{driver}' is not a valid device model name")),
    }
    let Some(drive) = opts.take("drive") else {
        return Err("No drive specified".to_string());
    };
    let bus = match opts.take("bus") {
        None => None,
        Some(b) => match b.as_str() {
            "ide.0" => Some(0),
            "ide.1" => Some(1),
            _ => return Err(format!("Bus '{b}' not found")),
        },
    };
    let unit = opts.take_u64("unit").map_err(|e| e.to_string())?;
    if let Some((key, _)) = opts.iter().next() {
        return Err(format!("Property 'ide-hd.{key}' not found"));
    }
    let Some(d) = cfg.drives.iter().find(|d| d.id == drive) else {
        return Err(format!(
            "Property 'ide-hd.drive' can't find value '{drive}'"
        ));
    };
    let in_use = cfg
        .ide
        .iter()
        .flatten()
        .any(|s| s.as_deref() == Some(&drive))
        || cfg.virtio_disks.iter().any(|v| v.drive == drive);
    if d.interface != DriveInterface::None || in_use {
        return Err(format!(
            "Property 'ide-hd.drive' can't take value '{drive}', it's in use"
        ));
    }
    let (bus, unit) = ide_device_slot(cfg, bus, unit)?;
    cfg.ide[bus][unit] = Some(drive);
    Ok(())
}

/// `-device virtio-blk-pci,drive=ID,...`: attaches an `if=none` drive to a virtio disk.
fn parse_virtio_device(cfg: &mut VmConfig, arg: &str) -> Result<(), String> {
    let disk = virtio::parse_device(arg)?;
    let id = disk.drive.as_str();
    let Some(d) = cfg.drives.iter().find(|d| d.id == id) else {
        return Err(format!(
            "Property 'virtio-blk-pci.drive' can't find value '{id}'"
        ));
    };
    let in_use = cfg.ide.iter().flatten().any(|s| s.as_deref() == Some(id))
        || cfg.virtio_disks.iter().any(|v| v.drive == id);
    if d.interface != DriveInterface::None || in_use {
        return Err(format!(
            "Property 'virtio-blk-pci.drive' can't take value '{id}', it's in use"
        ));
    }
    cfg.virtio_disks.push(disk);
    Ok(())
}

/// The slot `-device ide-hd` takes: the first free one on the given (or any) bus.
fn ide_device_slot(
    cfg: &VmConfig,
    bus: Option<usize>,
    unit: Option<u64>,
) -> Result<(usize, usize), String> {
    if let Some(u) = unit.filter(|u| *u >= IDE_UNITS as u64) {
        return Err(format!(
            "Can't create IDE unit {u}, bus supports only {IDE_UNITS} units"
        ));
    }
    let buses = bus.map_or(0..IDE_BUSES, |b| b..b + 1);
    for b in buses {
        if let Some(u) = unit {
            if cfg.ide[b][u as usize].is_some() {
                return Err(format!("IDE unit {u} is in use"));
            }
            return Ok((b, u as usize));
        }
        if let Some(u) = (0..IDE_UNITS).find(|u| cfg.ide[b][*u].is_none()) {
            return Ok((b, u));
        }
    }
    Err("IDE bus is full".to_string())
}

/// Splits `readonly=`, `snapshot=`, `cache=`, `aio=` off `opts` into open flags.
fn take_open_flags(opts: &mut Options) -> Result<block::OpenFlags, String> {
    let err = |e: block::Error| e.to_string();
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

/// `-drive file=,format=,if=,index=,bus=,unit=,media=,id=,cache=,aio=,readonly=,snapshot=`
/// (QEMU's drive_new): opens a drive and, for `if=ide`, attaches it as an IDE disk.
fn parse_drive(cfg: &mut VmConfig, arg: &str) -> Result<(), String> {
    let mut opts = Options::parse_keyval(arg, None).map_err(|e| e.to_string())?;
    let interface = match opts.take("if").as_deref() {
        None | Some("ide") => DriveInterface::Ide,
        Some("virtio") => DriveInterface::Virtio,
        Some("none") => DriveInterface::None,
        Some(other) => return Err(format!("unsupported bus type '{other}'")),
    };
    let index = take_index(&mut opts)?;
    let slot = match interface {
        DriveInterface::Ide => Some(ide_slot(cfg, index)?),
        _ => None,
    };
    match opts.take("media").as_deref() {
        None | Some("disk") => {}
        Some("cdrom") => return Err("media=cdrom (ide-cd) is not supported by rqemu".to_string()),
        Some(other) => return Err(format!("'{other}' invalid media")),
    }
    let flags = take_open_flags(&mut opts)?;
    if let Some(format) = opts.take("format") {
        opts.set("driver", format);
    }
    let id = match (opts.take("id"), slot) {
        (Some(id), _) => id,
        (None, Some((bus, unit))) => format!("ide{bus}-hd{unit}"),
        (None, None) => format!("none{}", index.unwrap_or(cfg.drives.len() as u64)),
    };
    let filename = opts.take("file");
    if filename.is_none() && !opts.contains("file.filename") && !opts.contains("file.driver") {
        return Err("A block device must be specified for \"file\"".to_string());
    }
    check_unique_id(cfg, &id)?;
    if let Some((bus, unit)) = slot {
        cfg.ide[bus][unit] = Some(id.clone());
    }
    cfg.drives.push(DriveConfig {
        origin: format!("-drive {arg}"),
        id,
        interface,
        filename,
        options: opts,
        flags,
    });
    Ok(())
}

/// The `index=` of a `-drive`, or the one `bus=`/`unit=` name.
fn take_index(opts: &mut Options) -> Result<Option<u64>, String> {
    let err = |e: block::Error| e.to_string();
    let index = opts.take_u64("index").map_err(err)?;
    let bus = opts.take_u64("bus").map_err(err)?;
    let unit = opts.take_u64("unit").map_err(err)?;
    match (index, bus, unit) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            Err("index cannot be used with bus and unit".to_string())
        }
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
fn ide_slot(cfg: &VmConfig, index: Option<u64>) -> Result<(usize, usize), String> {
    let index = index.unwrap_or_else(|| {
        let free = cfg.ide.iter().flatten().position(|s| s.is_none());
        free.unwrap_or(IDE_BUSES * IDE_UNITS) as u64
    });
    let (bus, unit) = (index / IDE_UNITS as u64, index % IDE_UNITS as u64);
    if bus >= IDE_BUSES as u64 {
        return Err(format!(
            "machine type does not support if=ide,bus={bus},unit={unit}"
        ));
    }
    if cfg.ide[bus as usize][unit as usize].is_some() {
        return Err(format!(
            "drive with bus={bus}, unit={unit} (index={index}) exists"
        ));
    }
    Ok((bus as usize, unit as usize))
}

/// `-blockdev driver=...,node-name=...,...` (QMP blockdev-add on the command line).
fn parse_blockdev(arg: &str) -> Result<DriveConfig, String> {
    let mut opts = if arg.starts_with('{') {
        Options::parse_json_filename(&format!("json:{arg}")).map_err(|e| e.to_string())?
    } else {
        Options::parse_keyval(arg, None).map_err(|e| e.to_string())?
    };
    if !opts.contains("driver") {
        return Err("Parameter 'driver' is missing".to_string());
    }
    let Some(id) = opts.take("node-name") else {
        return Err("A node-name is required for -blockdev".to_string());
    };
    let flags = take_open_flags(&mut opts)?;
    Ok(DriveConfig {
        origin: format!("-blockdev {arg}"),
        id,
        interface: DriveInterface::None,
        filename: None,
        options: opts,
        flags,
    })
}

mod usage;

#[cfg(test)]
mod tests;
