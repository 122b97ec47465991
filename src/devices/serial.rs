//! The COM1 UART: an 8250/16550 at 0x3F8 on IRQ 4 (QEMU's hw/char/serial.c).
//!
//! The register model is vm-superio's `Serial`; this module connects it to an interrupt line,
//! to a character backend for output, and to the stdin reader for input (chardev.rs).

use std::io;

use vm_superio::{Serial, Trigger};

use super::Irq;
use crate::bus::BusDevice;
use crate::chardev::{CharOut, CharReceiver};

/// COM1's first port.
pub const COM1_BASE: u16 = 0x3F8;
/// COM1's ISA IRQ.
pub const COM1_IRQ: u32 = 4;

/// vm-superio signals "interrupt" as one call; on the ISA bus that is an edge on IRQ 4.
pub struct IrqTrigger(pub Irq);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.pulse();
        Ok(())
    }
}

/// The UART as a bus device.
pub struct SerialPort {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, CharOut>,
}

impl SerialPort {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: Irq, out: CharOut) -> SerialPort {
        SerialPort {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }
}

impl CharReceiver for SerialPort {
    fn receive(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.uart.read(offset as u8);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        // The only error is a failed interrupt trigger, which cannot fail here.
        let _ = self.uart.write(offset as u8, data[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::TestIrq;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    #[test]
    fn transmit_with_thre_interrupt_and_scratch_register() {
        let irq = Arc::new(TestIrq::default());
        let mut port = SerialPort::new(irq.clone(), CharOut::Null);
        // SeaBIOS's detection: write IER, read it back.
        port.write(0x3F8, 1, &[0x02]);
        let mut b = [0u8];
        port.read(0x3F8, 1, &mut b);
        assert_eq!(b[0], 0x02);
        // Reading IIR acknowledges a pending THR-empty interrupt, so the next one is new.
        port.read(0x3F8, 2, &mut b);
        let edges = irq.edges.load(Ordering::SeqCst);
        port.write(0x3F8, 0, b"A");
        assert!(
            irq.edges.load(Ordering::SeqCst) > edges,
            "THR empty interrupt"
        );
        port.write(0x3F8, 7, &[0x5A]);
        port.read(0x3F8, 7, &mut b);
        assert_eq!(b[0], 0x5A);
        port.read(0x3F8, 5, &mut b);
        assert_eq!(b[0] & 0x60, 0x60, "LSR: transmitter empty");
    }

    #[test]
    fn received_bytes_are_read_from_rbr() {
        let mut port = SerialPort::new(Arc::new(TestIrq::default()), CharOut::Null);
        assert_eq!(port.receive(b"hi"), 2);
        let mut b = [0u8];
        port.read(0x3F8, 5, &mut b);
        assert_eq!(b[0] & 1, 1, "LSR: data ready");
        port.read(0x3F8, 0, &mut b);
        assert_eq!(b[0], b'h');
    }
}
