//! The virtio-pci function as the machine's PCI bus sees it, with its KVM fast paths: queue
//! kicks through ioeventfds and INTx on the GSI its Interrupt Line names.
//!
//! QEMU's virtio_pci_ioeventfd_assign / memory_region_add_eventfd (kvm_set_ioeventfd_*) and
//! INTx as hw/virtio/virtio-pci.c and hw/isa/piix.c drive it (pci_set_irq, piix3_set_irq_level).
//!
//! * Kicks: each queue's [`EventNotifier`] is handed to KVM (a dup of its fd) as an ioeventfd
//!   on the legacy notify port (`outw` of the queue index) and on the modern doorbell. A kick
//!   then costs no exit to user space: KVM signals the eventfd, and the main loop, which waits
//!   on it, runs the queue. The addresses follow the BARs: after every config-space write the
//!   set the device wants ([`VirtioPciDevice::ioevents`]) is compared with the registered one
//!   and the difference is (un)registered. A kick KVM does not match (another access size)
//!   still arrives as an exit and reaches the same notifier through `bar_write`.
//! * Interrupts: virtio's INTx is level-triggered and its ISR is read-to-clear, and the line
//!   follows the ISR exactly, as QEMU's virtio_pci_notify / virtio_pci_isr_read drive it with
//!   pci_set_irq and pci_irq_deassert (KVM_IRQ_LINE through the PIIX3): asserted when a
//!   completion sets the ISR, deasserted the moment the driver reads it. A resampling irqfd
//!   cannot do that: KVM keeps its line up until the guest EOIs the interrupt, and a driver
//!   that polls the ISR with the line masked in the PIC never EOIs, so the stale level is
//!   delivered the moment the line is unmasked, before the completion it should announce
//!   (the virtio guest's `intx` check saw an ISR of 0 that way, most often over rbd, whose
//!   completions are slow enough to lose that race).
//!   The GSI is the Interrupt Line register as firmware programs it (SeaBIOS writes there
//!   the ISA IRQ it routed the slot's PIRQ to through the PIIX3); several functions may
//!   share one, so [`IsaIrqLevels`] ORs their pins per GSI as the PIIX3's pic_levels does.

use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

use block::aio::notifier::EventNotifier;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::pci::{IoEvent, IoEventAddress as VirtioIoAddr, VirtioPciDevice, LEGACY_BAR};
use super::pci::{MODERN_BAR, PCI_VENDOR_ID_REDHAT_QUMRANET};
use crate::devices::pci::{BarKind, ConfigSpace, PciFunction, PCI_COMMAND, PCI_INTERRUPT_LINE};
use crate::devices::IrqLine;
use crate::error::MachineError;

/// A second descriptor for the eventfd behind `notifier`, in the type kvm-ioctls takes.
fn dup_eventfd(notifier: &EventNotifier) -> Result<EventFd, MachineError> {
    // SAFETY: dup of a descriptor we own; the result is checked before use.
    let fd = unsafe { libc::dup(notifier.as_raw_fd()) };
    if fd < 0 {
        return Err(MachineError::Device(format!(
            "cannot duplicate an eventfd: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `fd` is a fresh descriptor of an eventfd that nothing else owns.
    Ok(unsafe { EventFd::from_raw_fd(fd) })
}

/// The PCI INTx levels on each ISA IRQ (QEMU's PIIX3 pic_levels): a GSI is asserted while
/// any pin routed to it is. One per machine, shared by its functions' [`IntxLine`]s.
pub struct IsaIrqLevels {
    vm: Arc<VmFd>,
    /// How many asserted pins each GSI 0-15 has.
    count: Mutex<[u32; 16]>,
}

impl IsaIrqLevels {
    /// No pin asserted yet.
    pub fn new(vm: Arc<VmFd>) -> Arc<IsaIrqLevels> {
        Arc::new(IsaIrqLevels {
            vm,
            count: Mutex::new([0; 16]),
        })
    }

    /// One more (`up`) or one fewer asserted pin on `gsi`; KVM_IRQ_LINE when the OR changes.
    fn change(&self, gsi: u32, up: bool) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        let n = &mut count[gsi as usize];
        let before = *n > 0;
        *n = if up { *n + 1 } else { n.saturating_sub(1) };
        if (*n > 0) != before {
            block::trace!(virtio_pci_gsi, "gsi {} level {}", gsi, up as u8);
            if let Err(e) = self.vm.set_irq_line(gsi, up) {
                eprintln!("rqemu: KVM_IRQ_LINE gsi {gsi} failed: {e}");
            }
        }
    }
}

/// What an [`IntxLine`] drives: its GSI and whether its pin is asserted.
#[derive(Default)]
struct IntxRoute {
    gsi: Option<u32>,
    asserted: bool,
}

/// One function's INTx pin on the GSI its Interrupt Line names (see the module comment).
pub struct IntxLine {
    levels: Arc<IsaIrqLevels>,
    route: Mutex<IntxRoute>,
}

impl IntxLine {
    /// A deasserted pin not yet routed to any GSI.
    pub fn new(levels: Arc<IsaIrqLevels>) -> IntxLine {
        IntxLine {
            levels,
            route: Mutex::new(IntxRoute::default()),
        }
    }

    fn route_state(&self) -> std::sync::MutexGuard<'_, IntxRoute> {
        self.route.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the pin to the GSI of Interrupt Line value `line` (ISA IRQs 1-15 but the
    /// cascade; anything else unroutes it). An asserted pin leaves the old GSI and asserts
    /// the new one.
    pub fn route(&self, line: u8) {
        let want = (1..16).contains(&line).then_some(u32::from(line));
        let want = want.filter(|&g| g != 2);
        let mut st = self.route_state();
        if st.gsi == want {
            return;
        }
        if st.asserted {
            if let Some(old) = st.gsi {
                self.levels.change(old, false);
            }
            if let Some(new) = want {
                self.levels.change(new, true);
            }
        }
        st.gsi = want;
    }
}

impl IrqLine for IntxLine {
    fn set_level(&self, asserted: bool) {
        let mut st = self.route_state();
        if st.asserted == asserted {
            return;
        }
        st.asserted = asserted;
        if let Some(gsi) = st.gsi {
            self.levels.change(gsi, asserted);
        }
    }
}

/// The ioeventfds registered for one device's queues.
struct IoEventFds {
    vm: Arc<VmFd>,
    fds: Vec<EventFd>,
    active: Vec<IoEvent>,
}

impl IoEventFds {
    fn kvm_addr(ev: &IoEvent) -> IoEventAddress {
        match ev.addr {
            VirtioIoAddr::Pio(a) => IoEventAddress::Pio(a),
            VirtioIoAddr::Mmio(a) => IoEventAddress::Mmio(a),
        }
    }

    /// Registers (`assign`) or removes one ioeventfd.
    fn apply(&self, ev: &IoEvent, assign: bool) -> Result<(), kvm_ioctls::Error> {
        let fd = &self.fds[ev.queue];
        let addr = Self::kvm_addr(ev);
        match (ev.len, ev.datamatch, assign) {
            (2, Some(v), true) => self.vm.register_ioevent(fd, &addr, v as u16),
            (2, Some(v), false) => self.vm.unregister_ioevent(fd, &addr, v as u16),
            (_, _, true) => self.vm.register_ioevent(fd, &addr, NoDatamatch),
            (_, _, false) => self.vm.unregister_ioevent(fd, &addr, NoDatamatch),
        }
    }

    /// Makes the registered set equal to `wanted`.
    fn sync(&mut self, wanted: Vec<IoEvent>) {
        for ev in self.active.iter().filter(|ev| !wanted.contains(ev)) {
            if let Err(e) = self.apply(ev, false) {
                eprintln!("rqemu: KVM_IOEVENTFD deassign {:?} failed: {e}", ev.addr);
            }
        }
        let mut now = Vec::new();
        for ev in wanted {
            if self.active.contains(&ev) {
                now.push(ev);
                continue;
            }
            // Without the ioeventfd the kick still works, through a vCPU exit.
            match self.apply(&ev, true) {
                Ok(()) => now.push(ev),
                Err(e) => eprintln!("rqemu: KVM_IOEVENTFD {:?} failed: {e}", ev.addr),
            }
        }
        self.active = now;
    }
}

/// A [`VirtioPciDevice`] plugged into the machine's [`crate::devices::pci::PciBus`].
///
/// The bus decodes BARs from a [`ConfigSpace`]; the device keeps its own config bytes (with
/// a 64-bit BAR4). `shadow` mirrors the command register and the BAR addresses the bus needs
/// for decoding; everything else goes to the device. BAR4 decodes only below 4 GiB, where
/// SeaBIOS puts it unless the 32-bit window is full.
pub struct VirtioPciFunction {
    dev: VirtioPciDevice,
    shadow: ConfigSpace,
    ioevents: IoEventFds,
    irq: Arc<IntxLine>,
}

impl VirtioPciFunction {
    /// Wraps `dev`, whose INTx is `irq`; kicks get ioeventfds on `vm`.
    pub fn new(
        dev: VirtioPciDevice,
        irq: Arc<IntxLine>,
        vm: Arc<VmFd>,
    ) -> Result<VirtioPciFunction, MachineError> {
        let mut shadow = ConfigSpace::new(PCI_VENDOR_ID_REDHAT_QUMRANET, 0, 0, 0);
        if dev.bar_size(LEGACY_BAR) != 0 {
            shadow.set_bar(LEGACY_BAR, BarKind::Io, dev.bar_size(LEGACY_BAR) as u32);
        }
        if dev.bar_size(MODERN_BAR) != 0 {
            shadow.set_bar(MODERN_BAR, BarKind::Mem32, dev.bar_size(MODERN_BAR) as u32);
        }
        let fds = dev
            .notifiers()
            .iter()
            .map(|n| dup_eventfd(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VirtioPciFunction {
            dev,
            shadow,
            ioevents: IoEventFds {
                vm,
                fds,
                active: Vec::new(),
            },
            irq,
        })
    }

    fn raw_dword(&mut self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        self.dev.config_read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// Brings the shadow, the ioeventfds and the INTx GSI up to date after a write.
    fn sync(&mut self) {
        let command = self.dev.command().to_le_bytes();
        self.shadow.write(PCI_COMMAND, &command[..1]);
        let bar = |i: usize| 0x10 + 4 * i;
        if self.dev.bar_size(LEGACY_BAR) != 0 {
            let v = self.raw_dword(bar(LEGACY_BAR));
            self.shadow.write(bar(LEGACY_BAR), &v.to_le_bytes());
        }
        if self.dev.bar_size(MODERN_BAR) != 0 {
            let lo = self.raw_dword(bar(MODERN_BAR));
            let hi = self.raw_dword(bar(MODERN_BAR + 1));
            let v = if hi == 0 { lo } else { 0 };
            self.shadow.write(bar(MODERN_BAR), &v.to_le_bytes());
        }
        self.ioevents.sync(self.dev.ioevents());
        let mut line = [0u8];
        self.dev.config_read(PCI_INTERRUPT_LINE, &mut line);
        self.irq.route(line[0]);
    }
}

impl PciFunction for VirtioPciFunction {
    fn config(&self) -> &ConfigSpace {
        &self.shadow
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.shadow
    }

    fn config_read(&mut self, off: usize, data: &mut [u8]) {
        self.dev.config_read(off, data);
    }

    fn config_write(&mut self, off: usize, data: &[u8]) {
        self.dev.config_write(off, data);
        self.sync();
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        self.dev.bar_read(bar, offset, data);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.dev.bar_write(bar, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pci::PciBus;
    use crate::devices::virtio::block::{VirtioBlk, VirtioBlkConf};
    use crate::devices::virtio::pci::VirtioPciConf;
    use crate::memory::GuestRam;

    fn kvm_or_skip() -> bool {
        if crate::kvm::available() {
            return true;
        }
        assert!(
            std::env::var("RQEMU_REQUIRE_KVM").as_deref() != Ok("1"),
            "KVM is required (RQEMU_REQUIRE_KVM=1) but /dev/kvm is not usable"
        );
        eprintln!("skipping: /dev/kvm not available");
        false
    }

    /// A VM with an irqchip and 16 MiB of RAM, or None (skipped) without KVM.
    fn test_vm() -> Option<(crate::kvm::Vm, GuestRam)> {
        if !kvm_or_skip() {
            return None;
        }
        let ram = GuestRam::new(16 << 20, None).unwrap();
        let vm = crate::kvm::Vm::new(&ram).unwrap();
        Some((vm, ram))
    }

    fn cfg_write(bus: &mut PciBus, devfn: u8, off: usize, v: u32) {
        bus.config_write(devfn, off, &v.to_le_bytes());
    }

    /// The bus decodes the BARs where the guest puts them, kicks get ioeventfds that follow
    /// the BARs (re-registering the same address would fail with EEXIST, so a stale set
    /// would show as an error), and INTx follows the Interrupt Line.
    #[test]
    fn bars_ioeventfds_and_intx_follow_the_guest() {
        let Some((vm, _ram)) = test_vm() else { return };
        let model = VirtioBlk::new(VirtioBlkConf::default(), 8, false);
        let irq = Arc::new(IntxLine::new(IsaIrqLevels::new(vm.fd().clone())));
        let dev =
            VirtioPciDevice::new(Box::new(model), VirtioPciConf::default(), irq.clone()).unwrap();
        let notifier = dev.notifiers()[0].clone();
        let f = VirtioPciFunction::new(dev, irq.clone(), vm.fd().clone()).unwrap();
        let mut bus = PciBus::default();
        let devfn = 2 << 3;
        bus.add(devfn, Arc::new(Mutex::new(f))).unwrap();
        let mut b = [0u8; 4];
        bus.config_read(devfn, 0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1001_1af4);
        // KVM refuses a second ioeventfd on a matching address: that tells what is registered.
        let probe = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let taken = |addr: u64| {
            let at = IoEventAddress::Pio(addr);
            match vm.fd().register_ioevent(&probe, &at, 0u16) {
                Ok(()) => {
                    vm.fd().unregister_ioevent(&probe, &at, 0u16).unwrap();
                    false
                }
                Err(_) => true,
            }
        };
        for (io, mem) in [(0xc000u32, 0xfebf_0000u32), (0xc080, 0xfeb0_0000)] {
            cfg_write(&mut bus, devfn, 0x10, io | 1);
            cfg_write(&mut bus, devfn, 0x20, mem | 0xc);
            cfg_write(&mut bus, devfn, 0x24, 0);
            cfg_write(&mut bus, devfn, 0x04, 7);
            // Legacy queue-size register through the I/O BAR; device config through BAR4.
            let mut q = [0u8; 2];
            assert!(bus.bar_read(BarKind::Io, u64::from(io) + 0x0c, &mut q));
            assert_eq!(u16::from_le_bytes(q), 256);
            let mut cap = [0u8; 4];
            assert!(bus.bar_read(BarKind::Mem32, u64::from(mem) + 0x2000, &mut cap));
            assert_eq!(u32::from_le_bytes(cap), 8);
            // A kick through the bus (what a vCPU exit does) reaches the queue's notifier.
            assert!(bus.bar_write(BarKind::Io, u64::from(io) + 0x10, &0u16.to_le_bytes()));
            assert!(notifier.test_and_clear());
            assert!(taken(u64::from(io) + 0x10), "ioeventfd at the BAR");
        }
        assert!(!taken(0xc010), "the old address was released");
        // BAR4 above 4 GiB does not decode here; the I/O BAR still does.
        cfg_write(&mut bus, devfn, 0x24, 1);
        let mut cap = [0u8; 4];
        assert!(!bus.bar_read(BarKind::Mem32, 0xfeb0_2000, &mut cap));
        // Decoding off: nothing decodes, all ioeventfds go.
        cfg_write(&mut bus, devfn, 0x04, 0);
        assert!(!bus.bar_read(BarKind::Io, 0xc08c, &mut cap[..2]));
        assert!(!taken(0xc090));
        bus.config_write(devfn, PCI_INTERRUPT_LINE, &[11]);
        assert_eq!(irq.route_state().gsi, Some(11));
        bus.config_write(devfn, PCI_INTERRUPT_LINE, &[10]);
        assert_eq!(irq.route_state().gsi, Some(10));
        bus.config_write(devfn, PCI_INTERRUPT_LINE, &[0xff]);
        assert_eq!(irq.route_state().gsi, None);
    }

    /// The slave PIC's IRR (ISA IRQs 8-15), with IRQ 10 and 11 level-triggered as SeaBIOS
    /// sets them in the ELCR for PCI.
    fn slave_irr(vm: &VmFd, set_level_mode: bool) -> u8 {
        let mut chip = kvm_bindings::kvm_irqchip {
            chip_id: kvm_bindings::KVM_IRQCHIP_PIC_SLAVE,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip).unwrap();
        // SAFETY: for KVM_IRQCHIP_PIC_SLAVE the kernel fills the union's `pic` member.
        let irr = unsafe { chip.chip.pic.irr };
        if set_level_mode {
            // SAFETY: as above; a plain byte of the same member.
            unsafe { chip.chip.pic.elcr |= 0x0c };
            vm.set_irqchip(&chip).unwrap();
        }
        irr
    }

    /// The pin follows the ISR: deasserting it drops the GSI at once (no EOI needed, so a
    /// driver that polls the ISR with the line masked leaves nothing pending), a GSI shared
    /// by two pins stays up while either asserts, and a routed-away pin takes its level along.
    #[test]
    fn intx_level_follows_the_pin_on_shared_gsis() {
        let Some((vm, _ram)) = test_vm() else { return };
        let fd = vm.fd().clone();
        slave_irr(&fd, true);
        let levels = IsaIrqLevels::new(fd.clone());
        let (a, b) = (IntxLine::new(levels.clone()), IntxLine::new(levels));
        a.route(11);
        b.route(11);
        let irq11 = 1 << 3;
        a.set_level(true);
        assert_eq!(slave_irr(&fd, false) & irq11, irq11);
        a.set_level(false);
        assert_eq!(
            slave_irr(&fd, false) & irq11,
            0,
            "deasserted without an EOI"
        );
        a.set_level(true);
        b.set_level(true);
        a.set_level(false);
        assert_eq!(slave_irr(&fd, false) & irq11, irq11, "b still asserts");
        b.route(10);
        assert_eq!(slave_irr(&fd, false) & 0x0c, 1 << 2, "b moved to IRQ 10");
        b.set_level(false);
        assert_eq!(slave_irr(&fd, false) & 0x0c, 0);
        // An unrouted pin drives nothing, and routing it while asserted raises the GSI.
        let c = IntxLine::new(IsaIrqLevels::new(fd.clone()));
        c.set_level(true);
        assert_eq!(slave_irr(&fd, false) & 0x0c, 0);
        c.route(10);
        assert_eq!(slave_irr(&fd, false) & 0x0c, 1 << 2);
    }
}
