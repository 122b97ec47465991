//! The system emulator's command line, parsed the way qemu-system-x86_64 reads it
//! (QEMU's softmmu/vl.c `qemu_init` option loop plus the option descriptions of qemu-options.hx).
//!
//! Every option is a single-dash word followed by at most one argument (`-m 512`, `-drive
//! file=x,if=none`); a double dash is accepted too. Errors follow QEMU's shape,
//! `PROG: -opt ARG: message`, so scripts written for QEMU read them the same way.

use std::fmt;
use std::path::PathBuf;

mod boot;
mod device;
mod drive;
mod monitor;
pub mod scsi;
mod usage;

use block::Options;
pub use boot::BootOptions;

use crate::chardev::{parse_chardev, CharBackend};
use crate::drives::{DriveInterface, DriveOptions};
use crate::error::MachineError;
use device::parse_device;
pub use device::{VirtioDiskConfig, FIRST_VIRTIO_SLOT};
use drive::{parse_blockdev, parse_drive};
pub use monitor::{Chardev, ChardevBackend, MonitorConfig, MonitorMode};
/// The SeaBIOS image QEMU's `pc` machine loads by default.
pub const DEFAULT_BIOS: &str = "/usr/share/seabios/bios-256k.bin";
/// Default guest RAM (QEMU's default_ram_size for pc: 128 MiB).
pub const DEFAULT_RAM: u64 = 128 << 20;

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
    pub drives: Vec<DriveOptions>,
    /// virtio-blk-pci disks (`-device virtio-blk-pci`, `-drive if=virtio`), in order.
    pub virtio_disks: Vec<VirtioDiskConfig>,
    /// The drive id of each IDE disk, by channel and unit (`-drive if=ide`, `-device ide-hd`).
    pub ide: [[Option<String>; IDE_UNITS]; IDE_BUSES],
    /// Which IDE slots hold a CD-ROM drive rather than a disk (`media=cdrom`, `-cdrom`, `ide-cd`).
    pub ide_cdrom: [[bool; IDE_UNITS]; IDE_BUSES],
    /// COM1.
    pub serial: CharBackend,
    /// The debug console at port 0x402.
    pub debugcon: CharBackend,
    /// `-nographic`: no display, serial on stdio, SeaBIOS told to print on COM1.
    pub nographic: bool,
    /// `-no-reboot`: a guest reset ends the run instead of restarting the machine.
    pub no_reboot: bool,
    /// `-boot`: boot order, menu, and (`reboot-timeout=`) how long SeaBIOS waits after "No
    /// bootable device" before it reboots (see [`VmConfig::boot_fail_wait`]).
    pub boot: BootOptions,
    /// The accelerator: KVM runs the guest, qtest runs no vCPU at all.
    pub accel: Accel,
    /// `-S`: do not start the vCPUs until the monitor says `cont`.
    pub start_paused: bool,
    /// `-chardev` backends, by id.
    pub chardevs: Vec<Chardev>,
    /// `-mon`, `-qmp`, `-monitor`: the monitors, in order.
    pub monitors: Vec<MonitorConfig>,
    /// `-qtest`: where the qtest protocol is spoken.
    pub qtest: Option<ChardevBackend>,
    /// `-object iothread,id=`: the iothreads' ids.
    pub iothreads: Vec<String>,
    /// `-M none`: QEMU's empty machine, which rqemu offers only under qtest.
    pub machine_none: bool,
    /// The SCSI buses of `-device virtio-scsi` (qtest only).
    pub scsi_buses: Vec<scsi::ScsiBus>,
    /// The `-device scsi-hd` disks (qtest only).
    pub scsi_disks: Vec<scsi::ScsiDisk>,
}

/// Which accelerator runs the machine (`-accel`, `-machine accel=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accel {
    /// The guest runs under KVM.
    #[default]
    Kvm,
    /// No vCPU runs; a test drives the machine over the qtest protocol (QEMU's accel/qtest).
    Qtest,
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
            ide_cdrom: Default::default(),
            serial: CharBackend::Null,
            debugcon: CharBackend::None,
            nographic: false,
            no_reboot: false,
            boot: BootOptions::default(),
            accel: Accel::Kvm,
            start_paused: false,
            chardevs: Vec::new(),
            monitors: Vec::new(),
            qtest: None,
            iothreads: Vec::new(),
            machine_none: false,
            scsi_buses: Vec::new(),
            scsi_disks: Vec::new(),
        }
    }
}

impl VmConfig {
    /// The value of fw_cfg `etc/boot-fail-wait` in milliseconds (-1: wait forever).
    ///
    /// QEMU's default is -1; with `-no-reboot` rqemu defaults to 0 instead, so that a
    /// machine with nothing to boot ends the run rather than idling forever.
    pub fn boot_fail_wait(&self) -> i64 {
        match self.boot.reboot_timeout {
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
        ("none", "empty machine"),
    ] {
        s.push_str(&format!("{name:<20} {desc}\n"));
    }
    s
}

/// Options that take an argument; everything else in [`FLAGS`] takes none.
const WITH_ARG: &[&str] = &[
    "m",
    "bios",
    "kernel",
    "initrd",
    "append",
    "drive",
    "blockdev",
    "device",
    "serial",
    "debugcon",
    "trace",
    "machine",
    "M",
    "accel",
    "boot",
    "smp",
    "display",
    "vga",
    "net",
    "object",
    "cdrom",
    "chardev",
    "mon",
    "qmp",
    "qmp-pretty",
    "monitor",
    "qtest",
    "incoming",
];
const FLAGS: &[&str] = &["nographic", "no-reboot", "enable-kvm", "nodefaults", "S"];

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
        if name == "device" && arg == "help" {
            return Ok(Command::Print(usage::device_help()));
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
        "S" => cfg.start_paused = true,
        // -enable-kvm: KVM is the only accelerator; -nodefaults: there are no default devices.
        _ => {}
    }
}

/// Applies one option with an argument; `Ok(Some(text))` means "print text and exit".
fn apply_option(cfg: &mut VmConfig, name: &str, arg: &str) -> Result<Option<String>, MachineError> {
    match name {
        "m" => cfg.ram_size = parse_ram_size(arg)?,
        "bios" => cfg.bios = PathBuf::from(arg),
        "kernel" => cfg.kernel = Some(PathBuf::from(arg)),
        "initrd" => cfg.initrd = Some(PathBuf::from(arg)),
        "append" => cfg.append = arg.to_string(),
        "drive" if arg == "format=help" => return Ok(Some(usage::format_help())),
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
        "serial" => cfg.serial = parse_chardev(arg).map_err(MachineError::Config)?,
        "debugcon" => cfg.debugcon = parse_chardev(arg).map_err(MachineError::Config)?,
        "trace" => return block::trace::configure(arg).map_err(MachineError::Config),
        "object" => parse_object(cfg, arg)?,
        "machine" | "M" => return parse_machine(cfg, arg),
        "accel" => cfg.accel = parse_accel(arg)?,
        "chardev" => monitor::parse_chardev_option(cfg, arg)?,
        "mon" => monitor::parse_mon(cfg, arg)?,
        "qmp" => {
            monitor::parse_monitor_shorthand(cfg, arg, MonitorMode::Control { pretty: false })?
        }
        "qmp-pretty" => {
            monitor::parse_monitor_shorthand(cfg, arg, MonitorMode::Control { pretty: true })?
        }
        "monitor" => monitor::parse_monitor_shorthand(cfg, arg, MonitorMode::Readline)?,
        "qtest" => monitor::parse_qtest(cfg, arg)?,
        "incoming" => {
            return Err(MachineError::Config(
                "migration is not supported by rqemu".to_string(),
            ))
        }
        "boot" => cfg.boot.parse(arg)?,
        "cdrom" => parse_drive(
            cfg,
            &format!("file={},index=2,media=cdrom", arg.replace(',', ",,")),
        )?,
        "smp" => parse_smp(arg)?,
        "display" | "vga" | "net" if arg == "none" => {}
        _ => {
            return Err(MachineError::Config(format!(
                "'{arg}' is not supported by rqemu"
            )))
        }
    }
    Ok(None)
}

fn check_unique_id(cfg: &VmConfig, id: &str) -> Result<(), MachineError> {
    if cfg.drives.iter().any(|d| d.id == id) {
        return Err(MachineError::Config(format!(
            "Duplicate ID '{id}' for drive"
        )));
    }
    Ok(())
}

/// `-m 512`, `-m 1G`, `-m size=1G`: a plain number means MiB.
fn parse_ram_size(arg: &str) -> Result<u64, MachineError> {
    let value = arg.strip_prefix("size=").unwrap_or(arg);
    // qemu_strtosz_MiB: without a suffix the unit is MiB.
    let Ok(bytes) = block::options::strtosz_unit(value, 20) else {
        return Err(MachineError::Config(
            "Parameter 'size' expects a non-negative number below 2^64\n\
             Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
             and exabytes, respectively."
                .to_string(),
        ));
    };
    // 1 MiB is the BIOS area; 16 GiB keeps the e820 layout and the test machines sane.
    if !(2 << 20..=16 << 30).contains(&bytes) {
        return Err(MachineError::Config(format!(
            "RAM size {bytes} is not supported by rqemu (use 2M to 16G)"
        )));
    }
    Ok(bytes & !0xfff)
}

/// `-object`: objects are created at once, before any drive is opened; the iothreads'
/// ids are remembered too, for the devices that name one.
fn parse_object(cfg: &mut VmConfig, arg: &str) -> Result<(), MachineError> {
    let opts = Options::parse_keyval(arg, Some("qom-type"))
        .map_err(|e| MachineError::Config(e.to_string()))?;
    block::objects::user_creatable_add_from_str(arg)
        .map_err(|e| MachineError::Config(e.to_string()))?;
    if let (Some("iothread"), Some(id)) = (opts.get("qom-type"), opts.get("id")) {
        cfg.iothreads.push(id.to_string());
    }
    Ok(())
}

fn parse_machine(cfg: &mut VmConfig, arg: &str) -> Result<Option<String>, MachineError> {
    let opts = Options::parse_keyval(arg, Some("type"))
        .map_err(|e| MachineError::Config(e.to_string()))?;
    for (key, value) in opts.iter() {
        match (key, value) {
            ("type", "help") => return Ok(Some(machine_help())),
            ("type", "pc" | "pc-i440fx-10.0") => cfg.machine_none = false,
            ("type", "none") => cfg.machine_none = true,
            ("type", other) => {
                return Err(MachineError::Config(format!(
                    "unsupported machine type: \"{other}\"\nUse -machine help to list supported machines"
                )))
            }
            ("accel", v) => cfg.accel = parse_accel(v)?,
            _ => return Err(MachineError::Config(format!("Invalid parameter '{key}'"))),
        }
    }
    Ok(None)
}

fn parse_accel(arg: &str) -> Result<Accel, MachineError> {
    let accel = arg.split(',').next().unwrap_or("");
    match accel {
        "kvm" => Ok(Accel::Kvm),
        "qtest" => Ok(Accel::Qtest),
        "tcg" | "xen" | "hvf" | "whpx" | "nvmm" => Err(MachineError::Config(format!(
            "accelerator {accel} is not supported by rqemu (only kvm and qtest)"
        ))),
        _ => Err(MachineError::Config(format!("invalid accelerator {accel}"))),
    }
}

fn parse_smp(arg: &str) -> Result<(), MachineError> {
    let opts = Options::parse_keyval(arg, Some("cpus"))
        .map_err(|e| MachineError::Config(e.to_string()))?;
    for (key, value) in opts.iter() {
        if value != "1" {
            return Err(MachineError::Config(format!(
                "{key}={value}: more than one vCPU is not supported by rqemu yet"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
