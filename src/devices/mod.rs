//! The PC's platform devices, and the two signals they send out of the device model:
//! interrupt lines and reset requests.
//!
//! QEMU keeps these in hw/ (hw/pci-host/i440fx.c, hw/isa/piix.c, hw/char/serial.c,
//! hw/rtc/mc146818rtc.c, hw/input/pckbd.c, hw/nvram/fw_cfg.c, hw/char/debugcon.c). The 8259
//! PICs, the IOAPIC and the PIT are not here: KVM emulates them in the kernel.

pub mod acpi;
pub mod cmos;
pub mod debugcon;
pub mod fw_cfg;
pub mod i8042;
pub mod ide;
pub mod pci;
pub mod serial;
pub mod virtio;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// An interrupt line into the interrupt controllers, as a device drives it (QEMU's qemu_irq,
/// pci_set_irq): the machine implements it with KVM_IRQ_LINE (for PCI INTx on the GSI the
/// Interrupt Line names, shared), and tests with a flag.
pub trait IrqLine: Send + Sync {
    /// Drives the line to `level`.
    fn set_level(&self, level: bool);

    /// An edge: raise then lower (ISA devices that signal events, like the UART).
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// A shared interrupt line.
pub type Irq = Arc<dyn IrqLine>;

/// Set by a device that asks for a system reset (keyboard controller 0xFE, port 0x92 bit 0,
/// 0xCF9) or a power-off (ACPI S5); the vCPU loop checks it after every exit (QEMU's
/// qemu_system_reset_request / qemu_system_shutdown_request).
#[derive(Clone, Default)]
pub struct ResetRequest(Arc<AtomicBool>, Arc<AtomicBool>);

impl ResetRequest {
    /// Asks for a reset.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a reset was asked for, clearing the request.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }

    /// Asks for the machine to power off.
    pub fn request_power_off(&self) {
        self.1.store(true, Ordering::SeqCst);
    }

    /// Whether a power-off was asked for.
    pub fn power_off_requested(&self) -> bool {
        self.1.load(Ordering::SeqCst)
    }
}

/// A line that only remembers its level and counts rising edges, for device unit tests.
#[cfg(test)]
#[derive(Default)]
pub struct TestIrq {
    /// Current level.
    pub level: AtomicBool,
    /// Rising edges seen.
    pub edges: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl IrqLine for TestIrq {
    fn set_level(&self, level: bool) {
        if level && !self.level.swap(true, Ordering::SeqCst) {
            self.edges.fetch_add(1, Ordering::SeqCst);
        }
        self.level.store(level, Ordering::SeqCst);
    }
}

/// Port 0x92, "System Control Port A" (QEMU's hw/i386/pc.c port92): bit 1 gates A20,
/// writing bit 0 resets the machine. KVM always has A20 enabled; the bit is only stored.
pub struct Port92 {
    value: u8,
    reset: ResetRequest,
}

impl Port92 {
    /// A port with A20 reported off, as at power-on.
    pub fn new(reset: ResetRequest) -> Port92 {
        Port92 { value: 0, reset }
    }
}

impl crate::bus::BusDevice for Port92 {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.value;
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        self.value = data[0] & 0x02;
        if data[0] & 0x01 != 0 {
            self.reset.request();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;

    #[test]
    fn port92_keeps_a20_and_resets_on_bit0() {
        let reset = ResetRequest::default();
        let mut p = Port92::new(reset.clone());
        p.write(0x92, 0, &[0x02]);
        let mut b = [0u8];
        p.read(0x92, 0, &mut b);
        assert_eq!(b[0], 0x02);
        assert!(!reset.take());
        p.write(0x92, 0, &[0x03]);
        assert!(reset.take());
        assert!(!reset.take(), "the request is consumed");
    }
}
