//! virtio-pci: a virtio device presented as a PCI function, legacy and modern at once.
//!
//! QEMU's hw/virtio/virtio-pci.c. Like QEMU's default "transitional" device it has both
//! register interfaces, each switchable off (`disable-legacy`, `disable-modern`):
//!
//! * legacy (virtio 0.9.5): device 1af4:1001, revision 0, an I/O BAR0 holding a 20-byte
//!   header then the device configuration (see [`legacy`]);
//! * modern (virtio 1.0): device 1af4:1042 when legacy is off, revision 1, vendor-specific
//!   capabilities that point into a 64-bit memory BAR4 with four 4 KiB windows: common
//!   configuration, ISR, device configuration, notifications (see [`modern`]).
//!
//! This module is plain registers with no bus: the machine routes config-space accesses to
//! [`VirtioPciDevice::config_read`]/[`config_write`](VirtioPciDevice::config_write) and BAR
//! accesses to [`VirtioPciDevice::bar_read`]/[`bar_write`](VirtioPciDevice::bar_write).
//!
//! Queue notifications: each queue has an [`EventNotifier`] (an eventfd) that the device's
//! handler waits on in the main loop. A notify-register write that reaches us is turned into
//! `set()` on it; the machine can instead register the same eventfd with KVM as an ioeventfd
//! at the addresses [`VirtioPciDevice::ioevents`] lists, so kicks skip the vCPU exit. The
//! addresses move when the guest reprograms a BAR or the command register: the machine
//! re-reads `ioevents()` after config writes and re-registers what changed.
//! Interrupts: INTx pin A through the [`Interrupt`] trait (in the machine KVM_IRQ_LINE on
//! the routed GSI, see [`super::kvm_glue`]), asserted while
//! the ISR is non-zero; reading the ISR clears it and drops the line.

pub mod legacy;
pub mod modern;

use std::sync::{Arc, Mutex};

use block::aio::notifier::EventNotifier;

use super::{SharedCore, VirtioCore, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::lock;
use crate::devices::{Irq, IrqLine};

/// Red Hat / Qumranet, the virtio PCI vendor.
pub const PCI_VENDOR_ID_REDHAT_QUMRANET: u16 = 0x1af4;
/// PCI command: I/O space decode.
pub const PCI_COMMAND_IO: u16 = 1;
/// PCI command: memory space decode.
pub const PCI_COMMAND_MEMORY: u16 = 2;
/// PCI command: bus master.
pub const PCI_COMMAND_MASTER: u16 = 4;
/// PCI command: INTx disabled.
pub const PCI_COMMAND_INTX_DISABLE: u16 = 0x400;
/// PCI status: interrupt pending.
const PCI_STATUS_INTERRUPT: u8 = 0x08;
/// PCI status: capability list present.
const PCI_STATUS_CAP_LIST: u8 = 0x10;

/// The BAR of the legacy registers.
pub const LEGACY_BAR: usize = 0;
/// The BAR of the modern registers.
pub const MODERN_BAR: usize = 4;

/// Transport properties (QEMU's `-device virtio-blk-pci,disable-legacy=..,disable-modern=..`).
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioPciConf {
    /// No legacy interface (modern-only device 1af4:1040+type).
    pub disable_legacy: bool,
    /// No modern interface (legacy-only, as `disable-modern=on`).
    pub disable_modern: bool,
}

/// Where a queue notification lands, for a KVM ioeventfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEventAddress {
    /// A port-I/O address.
    Pio(u64),
    /// A guest-physical MMIO address.
    Mmio(u64),
}

/// One ioeventfd the machine should register: writes to `addr` (of `len` bytes, 0 = any,
/// matching `datamatch` if set) signal queue `queue`'s notifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoEvent {
    /// The address.
    pub addr: IoEventAddress,
    /// Access length to match, 0 for any.
    pub len: u32,
    /// Value to match, if any.
    pub datamatch: Option<u64>,
    /// The queue it kicks.
    pub queue: usize,
}

/// The INTx pin: the device's level, gated by the command register's INTx-disable bit. Only
/// changes reach the line, so a burst of completions costs one interrupt, not one each.
struct IntxPin {
    line: Irq,
    state: Mutex<IntxState>,
}

#[derive(Default)]
struct IntxState {
    level: bool,
    disabled: bool,
    output: bool,
}

impl IntxPin {
    fn state(&self) -> std::sync::MutexGuard<'_, IntxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn level(&self) -> bool {
        self.state().level
    }

    fn update(&self, change: impl FnOnce(&mut IntxState)) {
        let mut st = self.state();
        change(&mut st);
        let out = st.level && !st.disabled;
        if out != st.output {
            st.output = out;
            block::trace!(virtio_pci_intx, "pin {:p} level {}", self, out as u8);
            self.line.set_level(out);
        }
    }
}

impl IrqLine for IntxPin {
    fn set_level(&self, asserted: bool) {
        self.update(|st| st.level = asserted);
    }
}

/// A virtio device on PCI (QEMU's VirtIOPCIProxy).
pub struct VirtioPciDevice {
    pub(crate) config: [u8; 256],
    wmask: [u8; 256],
    bar_sizes: [u64; 6],
    pub(crate) core: SharedCore,
    pub(crate) device: Box<dyn VirtioDevice>,
    notifiers: Vec<Arc<EventNotifier>>,
    intx: Arc<IntxPin>,
    legacy: bool,
    modern: bool,
    pub(crate) regs: modern::CommonRegs,
}

impl VirtioPciDevice {
    /// Wraps `device`; `irq` is its INTx line.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        conf: VirtioPciConf,
        irq: Irq,
    ) -> block::Result<VirtioPciDevice> {
        if conf.disable_legacy && conf.disable_modern {
            return Err(block::Error::invalid(
                "device cannot work as neither modern nor legacy mode is enabled",
            ));
        }
        let intx = Arc::new(IntxPin {
            line: irq,
            state: Mutex::new(IntxState::default()),
        });
        let n = device.num_queues();
        let mut core = VirtioCore::new(n, device.queue_max_size(), intx.clone());
        // VERSION_1 belongs to the modern transport; legacy registers show only bits 0-31.
        let version_1 = if conf.disable_modern {
            0
        } else {
            1 << VIRTIO_F_VERSION_1
        };
        core.host_features = device.host_features() | version_1;
        let notifiers = (0..n)
            .map(|_| EventNotifier::new().map(Arc::new))
            .collect::<block::Result<Vec<_>>>()?;
        let mut dev = VirtioPciDevice {
            config: [0; 256],
            wmask: [0; 256],
            bar_sizes: [0; 6],
            core: Arc::new(Mutex::new(core)),
            device,
            notifiers,
            intx,
            legacy: !conf.disable_legacy,
            modern: !conf.disable_modern,
            regs: modern::CommonRegs::default(),
        };
        dev.init_config();
        Ok(dev)
    }

    fn init_config(&mut self) {
        let ty = self.device.device_type();
        let (device_id, revision) = if self.legacy {
            (0x1000 + ty - 1, 0)
        } else {
            (0x1040 + ty, 1)
        };
        self.set_word(0x00, PCI_VENDOR_ID_REDHAT_QUMRANET);
        self.set_word(0x02, device_id);
        self.config[0x08] = revision;
        self.config[0x0b] = 0x01; // class: mass storage, subclass 0 (SCSI), prog-if 0
        self.set_word(0x2c, PCI_VENDOR_ID_REDHAT_QUMRANET);
        self.set_word(0x2e, ty);
        self.config[0x3d] = 1; // INTA#
        self.wmask[0x04] = (PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER) as u8;
        self.wmask[0x05] = (PCI_COMMAND_INTX_DISABLE >> 8) as u8;
        self.wmask[0x0c] = 0xff;
        self.wmask[0x0d] = 0xff;
        self.wmask[0x3c] = 0xff;
        if self.legacy {
            let size = (20 + self.device.config_len() as u64).next_power_of_two();
            self.add_bar(LEGACY_BAR, size, 0x1);
        }
        if self.modern {
            // 64-bit, prefetchable memory BAR (type bits 0b1100), as QEMU's modern BAR.
            self.add_bar(MODERN_BAR, modern::BAR_SIZE, 0xc);
            self.config[0x06] |= PCI_STATUS_CAP_LIST;
            modern::add_capabilities(self);
        }
    }

    fn add_bar(&mut self, bar: usize, size: u64, type_bits: u32) {
        let reg = 0x10 + 4 * bar;
        self.bar_sizes[bar] = size;
        self.set_long(reg, type_bits);
        let type_mask = if type_bits & 1 == 1 { !0x3 } else { !0xf };
        let mask = !(size as u32 - 1) & type_mask;
        self.wmask[reg..reg + 4].copy_from_slice(&mask.to_le_bytes());
        if type_bits & 0x4 != 0 {
            self.wmask[reg + 4..reg + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        }
    }

    pub(crate) fn set_word(&mut self, at: usize, v: u16) {
        self.config[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn set_long(&mut self, at: usize, v: u32) {
        self.config[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn writable(&mut self, at: usize, len: usize) {
        self.wmask[at..at + len].fill(0xff);
    }

    fn word(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.config[at], self.config[at + 1]])
    }

    /// The PCI command register.
    pub fn command(&self) -> u16 {
        self.word(0x04)
    }

    /// The guest-assigned address of `bar`, if decoding is on and the BAR is assigned.
    pub fn bar_address(&self, bar: usize) -> Option<u64> {
        let size = *self.bar_sizes.get(bar)?;
        if size == 0 {
            return None;
        }
        let reg = 0x10 + 4 * bar;
        let lo = u32::from_le_bytes(self.config[reg..reg + 4].try_into().unwrap());
        let (addr, enabled) = if lo & 1 == 1 {
            (u64::from(lo & !0x3), self.command() & PCI_COMMAND_IO != 0)
        } else {
            let hi = u32::from_le_bytes(self.config[reg + 4..reg + 8].try_into().unwrap());
            (
                u64::from(lo & !0xf) | u64::from(hi) << 32,
                self.command() & PCI_COMMAND_MEMORY != 0,
            )
        };
        (enabled && addr != 0).then_some(addr)
    }

    /// The size of `bar` (0 if absent).
    pub fn bar_size(&self, bar: usize) -> u64 {
        self.bar_sizes.get(bar).copied().unwrap_or(0)
    }

    /// The shared virtio state, for the device's queue handler.
    pub fn core(&self) -> SharedCore {
        self.core.clone()
    }

    /// The queue notifiers (one eventfd per queue), for the handler and for KVM.
    pub fn notifiers(&self) -> Vec<Arc<EventNotifier>> {
        self.notifiers.clone()
    }

    /// The ioeventfds to register now (see the module comment).
    pub fn ioevents(&self) -> Vec<IoEvent> {
        let mut out = Vec::new();
        for queue in 0..self.notifiers.len() {
            if let (true, Some(base)) = (self.legacy, self.bar_address(LEGACY_BAR)) {
                let addr = IoEventAddress::Pio(base + legacy::VIRTIO_PCI_QUEUE_NOTIFY);
                out.push(IoEvent {
                    addr,
                    len: 2,
                    datamatch: Some(queue as u64),
                    queue,
                });
            }
            if let (true, Some(base)) = (self.modern, self.bar_address(MODERN_BAR)) {
                let addr = IoEventAddress::Mmio(base + modern::notify_offset(queue));
                out.push(IoEvent {
                    addr,
                    len: 0,
                    datamatch: None,
                    queue,
                });
            }
        }
        out
    }

    /// Signals queue `q`'s notifier (virtio_queue_notify); an out-of-range index is ignored.
    pub(crate) fn notify(&self, q: u64) {
        if let Some(n) = usize::try_from(q).ok().and_then(|q| self.notifiers.get(q)) {
            n.set();
        }
    }

    /// Resets device and transport (virtio_pci_reset).
    pub(crate) fn reset(&mut self) {
        lock(&self.core).reset();
        self.device.reset();
        self.regs = modern::CommonRegs::default();
    }

    /// Sets the device status register; 0 resets the device (virtio_set_status).
    pub(crate) fn set_status(&mut self, val: u8) {
        if val == 0 {
            return self.reset();
        }
        let mut core = lock(&self.core);
        let modern_driver = core.has_feature(VIRTIO_F_VERSION_1);
        let mut val = val;
        if modern_driver && val & super::VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            // A driver that asked for features we do not have must not see FEATURES_OK.
            let staged = self.regs.driver_features;
            if staged & !core.host_features != 0 {
                val &= !super::VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        // NEEDS_RESET is the device's to set and the driver's to clear only by reset.
        core.status = val | (core.status & super::VIRTIO_CONFIG_S_NEEDS_RESET);
    }

    /// Applies the driver's feature choice to core and device (virtio_set_features).
    pub(crate) fn set_features(&mut self, features: u64) {
        let mut core = lock(&self.core);
        core.set_guest_features(features);
        let accepted = core.guest_features;
        drop(core);
        self.device.set_features(accepted);
    }

    /// Reads PCI configuration space at `offset` (pci_default_read_config).
    pub fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        if self.modern && modern::in_pci_cfg_window(offset, data.len()) {
            return modern::pci_cfg_read(self, data);
        }
        let intx = self.intx.level();
        for (i, d) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i);
            *d = self.config.get(at).copied().unwrap_or(0xff);
            if at == 0x06 && intx {
                *d |= PCI_STATUS_INTERRUPT;
            }
        }
    }

    /// Writes PCI configuration space; only writable bits change (pci_default_write_config).
    pub fn config_write(&mut self, offset: usize, data: &[u8]) {
        if self.modern && modern::in_pci_cfg_window(offset, data.len()) {
            return modern::pci_cfg_write(self, data);
        }
        for (i, &v) in data.iter().enumerate() {
            let Some(m) = offset
                .checked_add(i)
                .and_then(|at| self.wmask.get(at))
                .copied()
            else {
                break;
            };
            let c = &mut self.config[offset + i];
            *c = (*c & !m) | (v & m);
        }
        let disabled = self.command() & PCI_COMMAND_INTX_DISABLE != 0;
        self.intx.update(|st| st.disabled = disabled);
    }

    /// Reads `data.len()` bytes of `bar` at `offset`.
    pub fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match bar {
            LEGACY_BAR if self.legacy => legacy::read(self, offset, data),
            MODERN_BAR if self.modern => modern::read(self, offset, data),
            _ => {}
        }
    }

    /// Writes `data` to `bar` at `offset`.
    pub fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            LEGACY_BAR if self.legacy => legacy::write(self, offset, data),
            MODERN_BAR if self.modern => modern::write(self, offset, data),
            _ => {}
        }
    }
}

/// An access's bytes as a little-endian integer.
pub(crate) fn le_value(data: &[u8]) -> u64 {
    data.iter().rev().fold(0, |v, &b| v << 8 | u64::from(b))
}

/// Stores the low bytes of `v` into `data`, little-endian.
pub(crate) fn put_le(data: &mut [u8], v: u64) {
    for (i, d) in data.iter_mut().enumerate() {
        // Accesses wider than 8 bytes read zeroes beyond the value.
        *d = v.checked_shr(8 * i as u32).unwrap_or(0) as u8;
    }
}
