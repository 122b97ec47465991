//! PCI bus 0 behind configuration mechanism #1, the i440FX host bridge and the PIIX3 ISA
//! bridge.
//!
//! QEMU's hw/pci/pci.c (config space with write masks, BAR sizing), hw/pci/pci_host.c (the
//! 0xCF8 address latch and 0xCFC data window), hw/pci-host/i440fx.c and hw/isa/piix.c.
//! Software reaches a function's 256-byte configuration space by writing
//! `0x80000000 | bus << 16 | device << 11 | function << 8 | register` to 0xCF8 and then
//! accessing 0xCFC-0xCFF. Each byte of a config space has a write mask: read-only bytes (IDs,
//! class) ignore writes, and a BAR's mask clears its low size bits, so writing all-ones and
//! reading back yields the size, which is how firmware sizes BARs.
//!
//! Functions plug in with [`PciBus::add`] at a devfn (`device << 3 | function`): the host
//! bridge at 00:00.0, the ISA bridge at 00:01.0, and later the IDE function at 00:01.1 and
//! virtio functions from 00:02.0. Accesses to their BARs arrive through [`PciBarWindow`],
//! the fallback of the port and memory buses: it finds the enabled BAR that decodes the
//! address and calls the function's `bar_read`/`bar_write` with the offset inside it.

use std::sync::{Arc, Mutex};

use super::ResetRequest;
use crate::bus::{lock, BusDevice};
use crate::error::MachineError;

/// Standard header offsets.
pub const PCI_VENDOR_ID: usize = 0x00;
/// Device ID offset.
pub const PCI_DEVICE_ID: usize = 0x02;
/// Command register offset.
pub const PCI_COMMAND: usize = 0x04;
/// Status register offset.
pub const PCI_STATUS: usize = 0x06;
/// Revision ID offset.
pub const PCI_REVISION_ID: usize = 0x08;
/// Class code (prog-if, subclass, class) offset.
pub const PCI_CLASS_PROG: usize = 0x09;
/// Header type offset (bit 7: multi-function).
pub const PCI_HEADER_TYPE: usize = 0x0E;
/// First BAR offset.
pub const PCI_BASE_ADDRESS_0: usize = 0x10;
/// Subsystem vendor ID offset.
pub const PCI_SUBSYSTEM_VENDOR_ID: usize = 0x2C;
/// Interrupt Line offset (the IRQ firmware routed INTx to).
pub const PCI_INTERRUPT_LINE: usize = 0x3C;
/// Interrupt Pin offset (1 = INTA#).
pub const PCI_INTERRUPT_PIN: usize = 0x3D;

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports (bit 0 of the register set).
    Io,
    /// 32-bit memory.
    Mem32,
}

/// A function's 256-byte configuration space with its write mask.
pub struct ConfigSpace {
    data: [u8; 256],
    wmask: [u8; 256],
}

impl ConfigSpace {
    /// A type-0 header with the given IDs and class (`class << 8 | prog_if` in `class_code`).
    pub fn new(vendor: u16, device: u16, class_code: u32, revision: u8) -> ConfigSpace {
        let mut c = ConfigSpace {
            data: [0; 256],
            wmask: [0; 256],
        };
        c.set_word(PCI_VENDOR_ID, vendor);
        c.set_word(PCI_DEVICE_ID, device);
        c.data[PCI_REVISION_ID] = revision;
        c.data[PCI_CLASS_PROG..PCI_CLASS_PROG + 3].copy_from_slice(&class_code.to_le_bytes()[..3]);
        // Command: I/O space, memory space, bus master, and INTx disable are guest-writable.
        c.wmask[PCI_COMMAND] = 0x07;
        c.wmask[PCI_COMMAND + 1] = 0x04;
        c.wmask[PCI_INTERRUPT_LINE] = 0xFF;
        c
    }

    /// Sets a 16-bit value (little-endian, as all of config space).
    pub fn set_word(&mut self, off: usize, v: u16) {
        self.data[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Sets a byte.
    pub fn set_byte(&mut self, off: usize, v: u8) {
        self.data[off] = v;
    }

    /// Sets which bits of the byte at `off` the guest may write.
    pub fn set_wmask(&mut self, off: usize, mask: u8) {
        self.wmask[off] = mask;
    }

    /// Makes `[off, off + len)` writable by the guest (plain storage registers).
    pub fn set_writable(&mut self, off: usize, len: usize) {
        self.wmask[off..off + len].fill(0xFF);
    }

    /// Declares BAR `index` of `size` bytes (a power of two); its low bits read as the type.
    pub fn set_bar(&mut self, index: usize, kind: BarKind, size: u32) {
        assert!(index < 6 && size.is_power_of_two(), "invalid BAR");
        let off = PCI_BASE_ADDRESS_0 + 4 * index;
        let (type_bits, min) = match kind {
            BarKind::Io => (0x1u32, 4),
            BarKind::Mem32 => (0x0u32, 16),
        };
        let mask = !(size.max(min) - 1);
        self.data[off..off + 4].copy_from_slice(&type_bits.to_le_bytes());
        self.wmask[off..off + 4].copy_from_slice(&mask.to_le_bytes());
    }

    /// The address a BAR currently decodes (type bits masked off), if it is enabled in the
    /// command register.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let off = PCI_BASE_ADDRESS_0 + 4 * index;
        let raw = self.dword(off);
        let (addr, enable_bit) = if raw & 1 == 1 {
            (raw & !0x3, 0x1)
        } else {
            (raw & !0xF, 0x2)
        };
        (self.data[PCI_COMMAND] & enable_bit != 0 && addr != 0).then_some(addr as u64)
    }

    /// The kind, address and size of BAR `index` while it decodes (command register enable
    /// bit set, address programmed); `None` for unimplemented or disabled BARs.
    pub fn bar_region(&self, index: usize) -> Option<(BarKind, u64, u64)> {
        let off = PCI_BASE_ADDRESS_0 + 4 * index;
        let mask = u32::from_le_bytes(self.wmask[off..off + 4].try_into().unwrap());
        if mask == 0 {
            return None;
        }
        let kind = if self.dword(off) & 1 == 1 {
            BarKind::Io
        } else {
            BarKind::Mem32
        };
        let size = (!mask as u64 + 1) & 0xFFFF_FFFF;
        Some((kind, self.bar_address(index)?, size))
    }

    /// Reads a little-endian dword.
    pub fn dword(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.data[off..off + 4].try_into().unwrap())
    }

    /// Reads `data.len()` bytes at `off` (the caller keeps the access inside the space).
    pub fn read(&self, off: usize, data: &mut [u8]) {
        data.copy_from_slice(&self.data[off..off + data.len()]);
    }

    /// Writes through the write mask.
    pub fn write(&mut self, off: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let m = self.wmask[off + i];
            self.data[off + i] = (self.data[off + i] & !m) | (b & m);
        }
    }
}

/// One PCI function as the bus sees it.
pub trait PciFunction: Send {
    /// Its configuration space.
    fn config(&self) -> &ConfigSpace;
    /// Its configuration space, mutably.
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// A config read; override to compute registers on the fly.
    fn config_read(&mut self, off: usize, data: &mut [u8]) {
        self.config().read(off, data);
    }

    /// A config write; override to react to registers (BAR moves, enable bits).
    fn config_write(&mut self, off: usize, data: &[u8]) {
        self.config_mut().write(off, data);
    }

    /// A read of `data.len()` bytes at `offset` inside BAR `bar`.
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }

    /// A write at `offset` inside BAR `bar`.
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// A function as the bus holds it: shared, because some functions are also reached through
/// their fixed ports (the IDE function's legacy ports) and by their completions.
pub type PciFunctionRef = Arc<Mutex<dyn PciFunction>>;

/// Bus 0: up to 32 devices of 8 functions each.
pub struct PciBus {
    functions: Vec<Option<PciFunctionRef>>,
}

impl Default for PciBus {
    fn default() -> Self {
        PciBus {
            functions: (0..256).map(|_| None).collect(),
        }
    }
}

impl PciBus {
    /// Plugs `function` in at `devfn`; fails if the slot is taken.
    pub fn add(&mut self, devfn: u8, function: PciFunctionRef) -> Result<(), MachineError> {
        let slot = &mut self.functions[devfn as usize];
        if slot.is_some() {
            return Err(MachineError::Device(format!(
                "PCI slot {:02x}.{} is already in use",
                devfn >> 3,
                devfn & 7
            )));
        }
        *slot = Some(function);
        Ok(())
    }

    /// Reads config space of `devfn`; absent functions read all-ones (vendor 0xFFFF).
    pub fn config_read(&mut self, devfn: u8, off: usize, data: &mut [u8]) {
        match &self.functions[devfn as usize] {
            Some(f) => {
                lock(f).config_read(off, data);
                block::trace!(
                    pci_cfg_read,
                    "{:02x}:{:02x}.{:x} @0x{:x} -> 0x{:x}",
                    0,
                    devfn >> 3,
                    devfn & 7,
                    off,
                    le_value(data)
                );
            }
            None => data.fill(0xFF),
        }
    }

    /// The function, BAR and offset that decode `[addr, addr + len)` in `kind` space.
    fn find_bar(&self, kind: BarKind, addr: u64, len: u64) -> Option<(usize, usize, u64)> {
        self.functions.iter().enumerate().find_map(|(devfn, f)| {
            let f = lock(f.as_ref()?);
            let cfg = f.config();
            (0..6).find_map(|bar| match cfg.bar_region(bar) {
                Some((k, base, size)) if k == kind && addr >= base && addr + len <= base + size => {
                    Some((devfn, bar, addr - base))
                }
                _ => None,
            })
        })
    }

    /// Dispatches a BAR read; returns false (and all-ones) when no BAR decodes `addr`.
    pub fn bar_read(&mut self, kind: BarKind, addr: u64, data: &mut [u8]) -> bool {
        match self.find_bar(kind, addr, data.len() as u64) {
            Some((devfn, bar, off)) => {
                if let Some(f) = &self.functions[devfn] {
                    lock(f).bar_read(bar, off, data);
                }
                true
            }
            None => {
                data.fill(0xFF);
                false
            }
        }
    }

    /// Dispatches a BAR write; returns false when no BAR decodes `addr`.
    pub fn bar_write(&mut self, kind: BarKind, addr: u64, data: &[u8]) -> bool {
        let Some((devfn, bar, off)) = self.find_bar(kind, addr, data.len() as u64) else {
            return false;
        };
        if let Some(f) = &self.functions[devfn] {
            lock(f).bar_write(bar, off, data);
        }
        true
    }

    /// Writes config space of `devfn`; writes to absent functions are dropped.
    pub fn config_write(&mut self, devfn: u8, off: usize, data: &[u8]) {
        if let Some(f) = &self.functions[devfn as usize] {
            block::trace!(
                pci_cfg_write,
                "{:02x}:{:02x}.{:x} @0x{:x} <- 0x{:x}",
                0,
                devfn >> 3,
                devfn & 7,
                off,
                le_value(data)
            );
            lock(f).config_write(off, data);
        }
    }
}

/// A little-endian access as a number, for traces.
fn le_value(data: &[u8]) -> u32 {
    data.iter().rev().fold(0, |v, &b| v << 8 | b as u32)
}

/// The i440FX host bridge, 00:00.0 (8086:1237). Its PAM registers (0x59-0x5F) steer the
/// 0xC0000-0xFFFFF window between ROM and RAM; here that window is always RAM, so they are
/// storage that reads back what SeaBIOS wrote.
pub struct I440fx {
    config: ConfigSpace,
}

/// The first PAM register.
pub const I440FX_PAM0: usize = 0x59;
/// The SMRAM control register.
pub const I440FX_SMRAM: usize = 0x72;

impl Default for I440fx {
    fn default() -> Self {
        let mut config = ConfigSpace::new(0x8086, 0x1237, 0x06_00_00, 0x02);
        config.set_word(PCI_SUBSYSTEM_VENDOR_ID, 0x1AF4);
        config.set_word(PCI_SUBSYSTEM_VENDOR_ID + 2, 0x1100);
        config.set_writable(I440FX_PAM0, 7);
        config.set_writable(I440FX_SMRAM, 1);
        I440fx { config }
    }
}

impl PciFunction for I440fx {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}

/// The PIIX3 PCI-to-ISA bridge, 00:01.0 (8086:7000), multi-function so that software also
/// scans 00:01.1 (IDE). Registers 0x60-0x63 route PIRQA-D to ISA IRQs (bit 7 = disabled);
/// firmware programs them and the PCI Interrupt Line registers together.
pub struct Piix3Isa {
    config: ConfigSpace,
}

/// The first PIRQ route control register.
pub const PIIX_PIRQC: usize = 0x60;

impl Default for Piix3Isa {
    fn default() -> Self {
        let mut config = ConfigSpace::new(0x8086, 0x7000, 0x06_01_00, 0x00);
        config.set_byte(PCI_HEADER_TYPE, 0x80);
        config.set_word(PCI_SUBSYSTEM_VENDOR_ID, 0x1AF4);
        config.set_word(PCI_SUBSYSTEM_VENDOR_ID + 2, 0x1100);
        for i in 0..4 {
            config.set_byte(PIIX_PIRQC + i, 0x80);
        }
        config.set_writable(PIIX_PIRQC, 4);
        // Top of memory, misc. status, deterministic latency: storage for firmware.
        config.set_writable(0x69, 1);
        config.set_writable(0x6A, 2);
        config.set_writable(0x82, 1);
        Piix3Isa { config }
    }
}

impl Piix3Isa {
    /// The ISA IRQ PIRQ `n` (0-3 = A-D) is routed to, if enabled.
    pub fn pirq_route(&self, n: usize) -> Option<u8> {
        let mut b = [0u8];
        self.config.read(PIIX_PIRQC + n, &mut b);
        (b[0] & 0x80 == 0).then_some(b[0] & 0x0F)
    }
}

impl PciFunction for Piix3Isa {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}

/// The host side of configuration mechanism #1 at 0xCF8-0xCFF, with the PIIX3 Reset Control
/// Register at 0xCF9 that shares the range (byte accesses there are not config addresses).
pub struct PciHost {
    address: u32,
    bus: PciBus,
    rcr: u8,
    reset: ResetRequest,
}

/// First port of the range [`PciHost`] claims.
pub const PCI_CONFIG_ADDRESS: u16 = 0xCF8;

impl PciHost {
    /// A host over `bus`; `reset` is raised by a 0xCF9 write with bit 2 set.
    pub fn new(bus: PciBus, reset: ResetRequest) -> PciHost {
        PciHost {
            address: 0,
            bus,
            rcr: 0,
            reset,
        }
    }

    /// The bus behind the host.
    pub fn bus_mut(&mut self) -> &mut PciBus {
        &mut self.bus
    }

    /// The addressed (devfn, register) if the enable bit is set and it names bus 0.
    fn target(&self, port_offset: usize, len: usize) -> Option<(u8, usize)> {
        let a = self.address;
        if a & 0x8000_0000 == 0 || (a >> 16) & 0xFF != 0 {
            return None;
        }
        let reg = (a & 0xFC) as usize + port_offset;
        (reg + len <= 256).then_some((((a >> 8) & 0xFF) as u8, reg))
    }
}

impl BusDevice for PciHost {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (1, 1) => data[0] = self.rcr,
            (4..=7, _) => match self.target(offset as usize - 4, data.len()) {
                Some((devfn, reg)) => self.bus.config_read(devfn, reg, data),
                None => data.fill(0xFF),
            },
            _ => data.fill(0xFF),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => self.address = u32::from_le_bytes(data.try_into().unwrap()),
            (1, 1) => {
                // Bit 2 starts the reset that bit 1 selects (hard or soft: same here).
                if data[0] & 0x04 != 0 {
                    self.reset.request();
                }
                self.rcr = data[0] & 0x02;
            }
            (4..=7, _) => {
                if let Some((devfn, reg)) = self.target(offset as usize - 4, data.len()) {
                    self.bus.config_write(devfn, reg, data);
                }
            }
            _ => {}
        }
    }
}

/// Routes a bus's unclaimed accesses to the PCI BARs of one kind (set as the port bus's
/// fallback for I/O BARs and the memory bus's for memory BARs).
pub struct PciBarWindow {
    host: Arc<Mutex<PciHost>>,
    kind: BarKind,
}

impl PciBarWindow {
    /// A window onto `host`'s BARs of `kind`.
    pub fn new(host: Arc<Mutex<PciHost>>, kind: BarKind) -> PciBarWindow {
        PciBarWindow { host, kind }
    }
}

impl BusDevice for PciBarWindow {
    fn read(&mut self, _base: u64, addr: u64, data: &mut [u8]) {
        lock(&self.host).bus_mut().bar_read(self.kind, addr, data);
    }

    fn write(&mut self, _base: u64, addr: u64, data: &[u8]) {
        lock(&self.host).bus_mut().bar_write(self.kind, addr, data);
    }
}

/// The standard bus 0 of the `pc` machine: host bridge, ISA bridge and, as function 1 of
/// the PIIX3, its IDE controller.
pub fn pc_pci_bus(ide: PciFunctionRef) -> PciBus {
    let mut bus = PciBus::default();
    let functions: [(u8, PciFunctionRef); 3] = [
        (0x00, Arc::new(Mutex::new(I440fx::default()))),
        (0x08, Arc::new(Mutex::new(Piix3Isa::default()))),
        (0x09, ide),
    ];
    for (devfn, f) in functions {
        bus.add(devfn, f).expect("fixed slots are distinct");
    }
    bus
}

#[cfg(test)]
mod tests;
