//! The COM1 UART (8250/16550 at 0x3F8, IRQ 4), and the character backends that carry a
//! guest's byte streams to the host (QEMU's hw/char/serial.c and chardev/).
//!
//! The register model is vm-superio's `Serial`; this module connects it to an interrupt line
//! and to an output (stdout, a file, nothing), and feeds it input from stdin.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};

use super::Irq;
use crate::bus::{lock, Bql, BusDevice};
use crate::vm_config::CharBackend;

/// COM1's first port.
pub const COM1_BASE: u16 = 0x3F8;
/// COM1's ISA IRQ.
pub const COM1_IRQ: u32 = 4;

/// Where output bytes of a character device go; every write is flushed, so the host sees
/// a guest's line as soon as the guest sent it.
#[derive(Clone)]
pub enum CharOut {
    /// The process's stdout.
    Stdout,
    /// A file, shared so that it outlives a machine reset.
    File(Arc<File>),
    /// Nowhere.
    Null,
}

impl CharOut {
    /// Opens the output side of a backend (`file:` paths are created or truncated).
    pub fn open(backend: &CharBackend) -> io::Result<CharOut> {
        Ok(match backend {
            CharBackend::Stdio => CharOut::Stdout,
            CharBackend::File(path) => CharOut::File(Arc::new(File::create(path)?)),
            CharBackend::Null | CharBackend::None => CharOut::Null,
        })
    }
}

impl Write for CharOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            CharOut::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf)?;
                out.flush()?;
            }
            CharOut::File(f) => (&**f).write_all(buf)?,
            CharOut::Null => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            CharOut::Stdout => io::stdout().flush(),
            _ => Ok(()),
        }
    }
}

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

    /// Queues received bytes; returns how many fit in the receive FIFO.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
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

/// Where stdin's bytes go: the COM1 of the machine currently running. A guest reset builds a
/// new machine; [`SerialInput::connect`] points the one stdin reader at its UART.
#[derive(Clone, Default)]
pub struct SerialInput(Arc<Mutex<Option<InputTarget>>>);

/// A machine's device lock and its UART.
type InputTarget = (Bql, Arc<Mutex<SerialPort>>);

impl SerialInput {
    /// Sends further input to `port`, delivered under `bql`.
    pub fn connect(&self, bql: Bql, port: Arc<Mutex<SerialPort>>) {
        *lock(&self.0) = Some((bql, port));
    }

    /// Hands as much of `bytes` to the UART as its FIFO takes; 0 when none is connected.
    fn deliver(&self, bytes: &[u8]) -> usize {
        let Some((bql, port)) = lock(&self.0).clone() else {
            return 0;
        };
        let _bql = bql.lock();
        let taken = lock(&port).receive(bytes);
        taken
    }
}

/// Starts the thread that copies stdin into COM1's receive FIFO (QEMU's stdio chardev);
/// while the FIFO is full, or no machine is connected, the thread waits.
pub fn spawn_stdin_reader(input: SerialInput) {
    let spawned = std::thread::Builder::new()
        .name("serial-stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            let stdin = io::stdin();
            while let Ok(n @ 1..) = stdin.lock().read(&mut buf) {
                let mut pending = &buf[..n];
                while !pending.is_empty() {
                    let taken = input.deliver(pending);
                    pending = &pending[taken..];
                    if taken == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("rqemu: warning: no serial input: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::TestIrq;
    use std::sync::atomic::Ordering;

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
