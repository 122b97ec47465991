//! The `pc` machine: memory, KVM, the platform devices on their buses, the firmware
//! configuration, and the run/reset cycle of the whole emulator.
//!
//! QEMU's hw/i386/pc_piix.c (pc_init1) and softmmu/runstate.c (the main loop's reset and
//! shutdown requests). A [`Machine`] is built fresh for every boot: a guest reset drops it
//! and builds a new one (same configuration, same output files, same drives), which is the
//! simplest way to give the guest pristine RAM, firmware and device state (unlike QEMU, CMOS
//! RAM the guest wrote does not survive the reset). With `-no-reboot` a reset ends the run.

mod qtest;
mod virtio;

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use block::aio::AioContextHandle;

use crate::boot::{bios, linux};
use crate::bus::{lock, Bql, DeviceRef, IoBuses};
use crate::chardev::{spawn_stdin_reader, CharBackend, CharInput, CharOut};
use crate::devices::acpi::{self as pm, Piix4Pm, PM_BASE, PM_BLOCK_LEN, SCI_IRQ};
use crate::devices::cmos::{Cmos, CMOS_PORT, RTC_IRQ};
use crate::devices::debugcon::{DebugCon, DEBUGCON_PORT};
use crate::devices::fw_cfg::{self, e820_bytes, E820Type, FwCfg, FW_CFG_PORT_SEL};
use crate::devices::i8042::{I8042, I8042_COMMAND, I8042_DATA, KBD_IRQ};
use crate::devices::ide::piix::LEGACY_PORTS;
use crate::devices::ide::{
    ChannelWiring, DriveConfig, DriveKind, IdeBlockSubmitter, IdePorts, Piix3Ide,
};
use crate::devices::pci::{pc_pci_bus, BarKind, PciBarWindow, PciHost, PCI_CONFIG_ADDRESS};
use crate::devices::serial::{SerialPort, COM1_BASE, COM1_IRQ};
use crate::devices::{Port92, ResetRequest};
use crate::error::MachineError;
use crate::kvm::vcpu::{run_loop, RunExit};
use crate::kvm::{cpu, Vm};
use crate::main_loop::MainLoop;
use crate::memory::{GuestRam, HIGHMEM_START, KVM_RESERVED};
use crate::vm_config::VmConfig;
use virtio::VirtioDisks;

/// How the guest starts.
pub enum Boot {
    /// Through this firmware image.
    Bios(Vec<u8>),
    /// Directly into a bzImage.
    Linux {
        /// The bzImage path.
        kernel: std::path::PathBuf,
        /// The initrd contents.
        initrd: Option<Vec<u8>>,
        /// The command line.
        cmdline: String,
    },
}

/// Output streams that outlive a machine reset.
#[derive(Clone)]
pub struct Outputs {
    /// COM1's output, if COM1 exists.
    pub serial: Option<CharOut>,
    /// The debug console's output, if any.
    pub debugcon: Option<CharOut>,
    /// Where stdin goes, when COM1 is on stdio.
    pub serial_input: Option<CharInput>,
}

/// One boot of the machine.
pub struct Machine {
    vm: Vm,
    bql: Bql,
    reset: ResetRequest,
    entry: Option<linux::EntryState>,
    alive: Arc<AtomicBool>,
    _virtio: VirtioDisks,
    // Dropped last: KVM's memory slots point into it.
    _ram: GuestRam,
}

fn dev<T: crate::bus::BusDevice + 'static>(d: T) -> DeviceRef {
    Arc::new(Mutex::new(d))
}

impl Machine {
    /// Builds memory, the VM and the devices; starts the RTC's timer on the main loop.
    pub fn new(
        cfg: &VmConfig,
        boot: &Boot,
        out: &Outputs,
        main: AioContextHandle,
    ) -> Result<Machine, MachineError> {
        let firmware = match boot {
            Boot::Bios(image) => Some(image.as_slice()),
            Boot::Linux { .. } => None,
        };
        let ram = GuestRam::new(cfg.ram_size, firmware)?;
        let entry = match boot {
            Boot::Bios(_) => None,
            Boot::Linux {
                kernel,
                initrd,
                cmdline,
            } => {
                let mut f = File::open(kernel).map_err(|e| {
                    MachineError::Machine(format!(
                        "could not open kernel file '{}': {}",
                        kernel.display(),
                        os_error(&e)
                    ))
                })?;
                Some(linux::load(&ram, &mut f, initrd.as_deref(), cmdline)?)
            }
        };
        let vm = Vm::new(&ram)?;
        let reset = ResetRequest::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (buses, cmos, serial, virtio) = build_devices(cfg, &ram, &vm, &reset, out, &main)?;
        let bql = Bql::new(buses);
        start_rtc_timer(&main, bql.clone(), cmos, alive.clone());
        if let (Some(port), Some(input)) = (serial, &out.serial_input) {
            input.connect(bql.clone(), port);
        }
        Ok(Machine {
            vm,
            bql,
            reset,
            entry,
            alive,
            _virtio: virtio,
            _ram: ram,
        })
    }

    /// Runs the guest on the calling thread (the vCPU thread) until it resets or stops.
    pub fn run(self) -> Result<RunExit, MachineError> {
        let _kickable = crate::runstate::enter_vcpu_thread();
        let mut vcpu = self.vm.create_vcpu(0)?;
        if let Some(entry) = &self.entry {
            cpu::enter_linux(&vcpu, entry)?;
        }
        run_loop(&mut vcpu, &self.bql, &self.reset)
    }
}

impl Drop for Machine {
    /// Stops the machine's timers on the main loop.
    fn drop(&mut self) {
        self.alive.store(false, Ordering::SeqCst);
    }
}

type Built = (
    IoBuses,
    Arc<Mutex<Cmos>>,
    Option<Arc<Mutex<SerialPort>>>,
    VirtioDisks,
);

/// Creates the platform devices and registers their port ranges.
fn build_devices(
    cfg: &VmConfig,
    ram: &GuestRam,
    vm: &Vm,
    reset: &ResetRequest,
    out: &Outputs,
    main: &AioContextHandle,
) -> Result<Built, MachineError> {
    let mut buses = IoBuses::default();
    let pio = &mut buses.pio;
    let serial = out
        .serial
        .clone()
        .map(|o| Arc::new(Mutex::new(SerialPort::new(vm.irq(COM1_IRQ), o))));
    if let Some(port) = &serial {
        pio.insert(COM1_BASE as u64, 8, port.clone())?;
    }
    let mut rtc = Cmos::new(vm.irq(RTC_IRQ));
    rtc.set_memory(ram.below_4g(), ram.above_4g());
    rtc.set_cpus(1);
    rtc.set_boot_order(cfg.boot.cmos_order([2, 3, 1]));
    let cmos = Arc::new(Mutex::new(rtc));
    pio.insert(CMOS_PORT as u64, 2, cmos.clone())?;
    let kbc = dev(I8042::new(vm.irq(KBD_IRQ), reset.clone()));
    pio.insert(I8042_DATA as u64, 1, kbc.clone())?;
    pio.insert(I8042_COMMAND as u64, 1, kbc)?;
    pio.insert(0x92, 1, dev(Port92::new(reset.clone())))?;
    let ide = build_ide(cfg, vm, main, pio)?;
    let mut pci_bus = pc_pci_bus(ide);
    let pm = Arc::new(Mutex::new(Piix4Pm::new(vm.irq(SCI_IRQ), reset.clone())));
    pci_bus.add(pm::DEVFN, pm.clone())?;
    pio.insert(PM_BASE as u64, PM_BLOCK_LEN as u64, pm)?;
    let virtio = virtio::plug_all(&cfg.virtio_disks, &mut pci_bus, vm, ram.memory(), main)?;
    let pci = Arc::new(Mutex::new(PciHost::new(pci_bus, reset.clone())));
    pio.insert(PCI_CONFIG_ADDRESS as u64, 8, pci.clone())?;
    pio.set_fallback(dev(PciBarWindow::new(pci.clone(), BarKind::Io)));
    buses
        .mmio
        .set_fallback(dev(PciBarWindow::new(pci, BarKind::Mem32)));
    if let Some(o) = &out.debugcon {
        pio.insert(DEBUGCON_PORT as u64, 1, dev(DebugCon::new(o.clone())))?;
    }
    pio.insert(FW_CFG_PORT_SEL as u64, 2, dev(firmware_config(cfg, ram)?))?;
    Ok((buses, cmos, serial, virtio))
}

/// The PIIX3 IDE function (00:01.1) with the `-drive if=ide` / `-device ide-hd` disks: its
/// legacy ports on the port bus, IRQ14/15 on the in-kernel PIC, requests to the main loop.
fn build_ide(
    cfg: &VmConfig,
    vm: &Vm,
    main: &AioContextHandle,
    pio: &mut crate::bus::Bus,
) -> Result<Arc<Mutex<Piix3Ide>>, MachineError> {
    let mut disks: [[Option<DriveConfig>; 2]; 2] = Default::default();
    for (bus, units) in cfg.ide.iter().enumerate() {
        for (unit, id) in units.iter().enumerate() {
            if let Some(id) = id {
                let index = (bus * units.len() + unit) as u32;
                let kind = match cfg.ide_cdrom[bus][unit] {
                    true => DriveKind::Cdrom,
                    false => DriveKind::Disk,
                };
                disks[bus][unit] = Some(DriveConfig::query(main, id, index, kind)?);
            }
        }
    }
    let device = Arc::new(Mutex::new(Piix3Ide::new(disks)));
    let wiring = LEGACY_PORTS
        .iter()
        .zip(&cfg.ide)
        .map(|(&(_, _, irq), units)| ChannelWiring {
            drives: units.clone().map(|id| id.map(Arc::from)),
            irq: vm.irq(irq),
        })
        .collect();
    let ports = dev(IdePorts::new(IdeBlockSubmitter::new(
        main,
        device.clone(),
        wiring,
    )?));
    for (base, ctl, _) in LEGACY_PORTS {
        pio.insert(base as u64, 8, ports.clone())?;
        pio.insert(ctl as u64, 1, ports.clone())?;
    }
    Ok(device)
}

/// What SeaBIOS learns through fw_cfg: RAM layout, CPU count, console and boot policy.
fn firmware_config(cfg: &VmConfig, ram: &GuestRam) -> Result<FwCfg, MachineError> {
    let mut fw = FwCfg::default();
    fw.add_bytes(
        fw_cfg::FW_CFG_RAM_SIZE,
        ram.ram_size().to_le_bytes().to_vec(),
    );
    fw.add_u16(fw_cfg::FW_CFG_NOGRAPHIC, cfg.nographic as u16);
    fw.add_u16(fw_cfg::FW_CFG_NB_CPUS, 1);
    fw.add_u16(fw_cfg::FW_CFG_MAX_CPUS, 1);
    fw.add_u16(fw_cfg::FW_CFG_BOOT_MENU, cfg.boot.menu as u16);
    if let Some(ms) = cfg.boot.splash_time {
        fw.add_file("etc/boot-menu-wait", ms.to_le_bytes().to_vec())?;
    }
    let mut e820 = vec![
        (KVM_RESERVED.0, KVM_RESERVED.1, E820Type::Reserved),
        (0, ram.below_4g(), E820Type::Ram),
    ];
    if ram.above_4g() > 0 {
        e820.push((HIGHMEM_START, ram.above_4g(), E820Type::Ram));
    }
    fw.add_file("etc/e820", e820_bytes(&e820))?;
    fw.add_file("bootorder", virtio::bootorder(&cfg.virtio_disks))?;
    let wait = cfg.boot_fail_wait() as i32;
    fw.add_file("etc/boot-fail-wait", wait.to_le_bytes().to_vec())?;
    crate::boot::acpi::build().install(&mut fw)?;
    if cfg.nographic && cfg.serial != CharBackend::None {
        // SeaBIOS's serial console: its text screen goes to COM1.
        fw.add_file("etc/sercon-port", COM1_BASE.to_le_bytes().to_vec())?;
    }
    Ok(fw)
}

/// The RTC's periodic interrupt is a timer on the main loop (QEMU's RTC uses a QEMUTimer
/// there too): a coroutine that sleeps one period, then ticks the device under the BQL.
fn start_rtc_timer(
    main: &AioContextHandle,
    bql: Bql,
    cmos: Arc<Mutex<Cmos>>,
    alive: Arc<AtomicBool>,
) {
    main.schedule_bh(move || {
        let ticker = async move {
            while alive.load(Ordering::SeqCst) {
                let period = {
                    let _bql = bql.lock();
                    lock(&cmos).periodic_period()
                };
                block::aio::co_sleep(period.unwrap_or(Duration::from_millis(10))).await;
                if period.is_some() {
                    let _bql = bql.lock();
                    lock(&cmos).periodic_tick();
                }
            }
        };
        block::AioContext::current().spawn(ticker).detach();
    });
}

/// Runs the emulator: boots, and boots again after each guest reset unless `-no-reboot`.
pub fn run(cfg: &VmConfig) -> Result<(), MachineError> {
    if cfg.accel == crate::vm_config::Accel::Qtest {
        return qtest::run(cfg);
    }
    if cfg.machine_none {
        return Err(MachineError::Machine(
            "machine 'none' is supported by rqemu only with -accel qtest".to_string(),
        ));
    }
    if !cfg.scsi_buses.is_empty() {
        return Err(MachineError::Device(
            "virtio-scsi: SCSI emulation for a guest is not supported by rqemu yet \
             (the device exists only with -accel qtest)"
                .to_string(),
        ));
    }
    if cfg.start_paused {
        return Err(MachineError::Machine(
            "-S: starting a KVM guest paused is not supported by rqemu yet \
                    (only with -accel qtest)"
                .to_string(),
        ));
    }
    let boot = prepare_boot(cfg)?;
    // Before any other thread starts: they all inherit the blocked termination signals.
    crate::runstate::init().map_err(MachineError::Machine)?;
    let out = open_outputs(cfg)?;
    let main = MainLoop::start(cfg.drives.clone()).map_err(MachineError::Machine)?;
    crate::monitor::qmp::machine::init(cfg.accel, false);
    crate::monitor::start_all(cfg, &main.handle()).map_err(MachineError::Machine)?;
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(crate::kvm::KVM_DEVICE)
    {
        return Err(MachineError::Machine(format!(
            "Could not access KVM kernel module: {}",
            os_error(&e)
        )));
    }
    // `-boot once=` is for the first boot only.
    let mut cfg = std::borrow::Cow::Borrowed(cfg);
    while !crate::runstate::stop_requested() {
        let machine = Machine::new(&cfg, &boot, &out, main.handle())?;
        if cfg.boot.once.is_some() {
            cfg.to_mut().boot.once = None;
        }
        let vcpu = std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || machine.run())
            .map_err(|e| MachineError::Machine(format!("cannot start the vCPU thread: {e}")))?;
        let exit = vcpu
            .join()
            .map_err(|_| MachineError::Machine("the vCPU thread panicked".to_string()))??;
        if exit != RunExit::Reset || cfg.no_reboot {
            break;
        }
    }
    main.shutdown();
    Ok(())
}

/// Reads the firmware or the kernel files named on the command line.
fn prepare_boot(cfg: &VmConfig) -> Result<Boot, MachineError> {
    let Some(kernel) = &cfg.kernel else {
        return Ok(Boot::Bios(bios::load_bios(&cfg.bios)?));
    };
    File::open(kernel).map_err(|e| {
        MachineError::Machine(format!(
            "could not open kernel file '{}': {}",
            kernel.display(),
            os_error(&e)
        ))
    })?;
    let initrd = match &cfg.initrd {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            MachineError::Machine(format!(
                "could not load initial ram disk '{}': {}",
                path.display(),
                os_error(&e)
            ))
        })?),
        None => None,
    };
    Ok(Boot::Linux {
        kernel: kernel.clone(),
        initrd,
        cmdline: cfg.append.clone(),
    })
}

/// An I/O error as strerror() words it, without Rust's " (os error N)" suffix.
fn os_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => block::error::strerror(errno),
        None => e.to_string(),
    }
}

fn open_outputs(cfg: &VmConfig) -> Result<Outputs, MachineError> {
    let open = |opt: &str, backend: &CharBackend| -> Result<Option<CharOut>, MachineError> {
        if *backend == CharBackend::None {
            return Ok(None);
        }
        CharOut::open(backend).map(Some).map_err(|e| {
            MachineError::Machine(match backend {
                CharBackend::File(path) => format!(
                    "{opt} file:{0}: Could not open '{0}': {1}",
                    path.display(),
                    os_error(&e)
                ),
                _ => format!("{opt}: {}", os_error(&e)),
            })
        })
    };
    let serial_input = (cfg.serial == CharBackend::Stdio).then(|| {
        let input = CharInput::default();
        spawn_stdin_reader(input.clone());
        input
    });
    Ok(Outputs {
        serial: open("-serial", &cfg.serial)?,
        debugcon: open("-debugcon", &cfg.debugcon)?,
        serial_input,
    })
}
