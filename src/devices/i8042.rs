//! The i8042 keyboard controller with a keyboard that answers commands but never types
//! (QEMU's hw/input/pckbd.c + ps2.c, reduced).
//!
//! Port 0x64 reads the status and takes controller commands; port 0x60 carries data both
//! ways. Firmware and Linux use it to test the controller (0xAA -> 0x55), read and write the
//! command byte (0x20/0x60), reset the keyboard (0xFF -> ACK 0xFA, BAT 0xAA), and to reset the
//! machine: command 0xFE, or clearing bit 0 of the output port (0xD1), pulses the CPU's reset
//! line. A keyboard that answers promptly saves SeaBIOS its multi-second timeouts.

use std::collections::VecDeque;

use super::{Irq, ResetRequest};
use crate::bus::BusDevice;

/// The data port.
pub const I8042_DATA: u16 = 0x60;
/// The status/command port.
pub const I8042_COMMAND: u16 = 0x64;
/// The keyboard's ISA IRQ.
pub const KBD_IRQ: u32 = 1;

const STAT_OBF: u8 = 0x01;
const STAT_SYS: u8 = 0x04;
const STAT_CMD: u8 = 0x08;
const STAT_UNLOCKED: u8 = 0x10;
const CTR_KBDINT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const KBD_ACK: u8 = 0xFA;

/// What the next byte written to port 0x60 means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// A command to the keyboard.
    Keyboard,
    /// The new command byte (after 0x60).
    CommandByte,
    /// The new output port (after 0xD1).
    OutputPort,
    /// A byte for the mouse (after 0xD4): no mouse, dropped.
    Mouse,
    /// The argument of a keyboard command (LEDs, typematic rate, scancode set).
    KeyboardArg,
}

/// The controller and its keyboard.
pub struct I8042 {
    ctr: u8,
    status_cmd: bool,
    output_port: u8,
    pending: Pending,
    queue: VecDeque<u8>,
    irq: Irq,
    reset: ResetRequest,
}

impl I8042 {
    /// A controller raising `irq` (IRQ 1) and asking `reset` for machine resets.
    pub fn new(irq: Irq, reset: ResetRequest) -> I8042 {
        I8042 {
            ctr: CTR_KBDINT | CTR_SYS,
            status_cmd: false,
            output_port: 0x03,
            pending: Pending::Keyboard,
            queue: VecDeque::new(),
            irq,
            reset,
        }
    }

    fn status(&self) -> u8 {
        let mut s = STAT_UNLOCKED;
        if !self.queue.is_empty() {
            s |= STAT_OBF;
        }
        if self.ctr & CTR_SYS != 0 {
            s |= STAT_SYS;
        }
        if self.status_cmd {
            s |= STAT_CMD;
        }
        s
    }

    fn push(&mut self, byte: u8) {
        // A real 8042 holds one byte; a short queue keeps multi-byte replies in order.
        if self.queue.len() < 16 {
            self.queue.push_back(byte);
        }
    }

    fn update_irq(&self) {
        self.irq
            .set_level(!self.queue.is_empty() && self.ctr & CTR_KBDINT != 0);
    }

    fn command(&mut self, cmd: u8) {
        block::trace!(pckbd_kbd_write_command, "0x{:02x}", cmd);
        self.status_cmd = true;
        match cmd {
            0x20 => self.push(self.ctr),
            0x60 => self.pending = Pending::CommandByte,
            0xA7 | 0xA8 | 0xAD | 0xAE => {}
            0xA9 | 0xAB => self.push(0x00),
            0xAA => {
                self.ctr |= CTR_SYS;
                self.push(0x55);
            }
            0xD0 => self.push(self.output_port),
            0xD1 => self.pending = Pending::OutputPort,
            0xD4 => self.pending = Pending::Mouse,
            // 0xF0-0xFF pulse output-port bits low for 6 us; bit 0 is the CPU reset line.
            0xF0..=0xFF if cmd & 0x01 == 0 => self.reset.request(),
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        block::trace!(pckbd_kbd_write_data, "0x{:02x}", byte);
        self.status_cmd = false;
        let pending = std::mem::replace(&mut self.pending, Pending::Keyboard);
        match pending {
            Pending::CommandByte => self.ctr = byte,
            Pending::OutputPort => {
                self.output_port = byte;
                if byte & 0x01 == 0 {
                    self.reset.request();
                }
            }
            Pending::Mouse => {}
            Pending::KeyboardArg => self.push(KBD_ACK),
            Pending::Keyboard => self.keyboard_command(byte),
        }
    }

    fn keyboard_command(&mut self, byte: u8) {
        match byte {
            0xFF => {
                self.push(KBD_ACK);
                self.push(0xAA);
            }
            0xF2 => {
                self.push(KBD_ACK);
                self.push(0xAB);
                self.push(0x83);
            }
            0xED | 0xF0 | 0xF3 => {
                self.push(KBD_ACK);
                self.pending = Pending::KeyboardArg;
            }
            0xEE => self.push(0xEE),
            _ => self.push(KBD_ACK),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = if base == I8042_COMMAND as u64 {
            self.status()
        } else {
            let byte = self.queue.pop_front().unwrap_or(0);
            self.update_irq();
            byte
        };
    }

    fn write(&mut self, base: u64, _offset: u64, data: &[u8]) {
        if base == I8042_COMMAND as u64 {
            self.command(data[0]);
        } else {
            self.data(data[0]);
        }
        self.update_irq();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::TestIrq;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    fn kbc() -> (I8042, ResetRequest, Arc<TestIrq>) {
        let reset = ResetRequest::default();
        let irq = Arc::new(TestIrq::default());
        (I8042::new(irq.clone(), reset.clone()), reset, irq)
    }

    fn inb(k: &mut I8042, port: u16) -> u8 {
        let mut b = [0u8];
        k.read(port as u64, 0, &mut b);
        b[0]
    }

    #[test]
    fn command_fe_requests_a_reset() {
        let (mut k, reset, _) = kbc();
        k.write(0x64, 0, &[0xFE]);
        assert!(reset.take());
    }

    #[test]
    fn output_port_bit0_clear_requests_a_reset() {
        let (mut k, reset, _) = kbc();
        k.write(0x64, 0, &[0xD1]);
        k.write(0x60, 0, &[0x03]);
        assert!(!reset.take(), "A20 on, reset line high");
        k.write(0x64, 0, &[0xD1]);
        k.write(0x60, 0, &[0x02]);
        assert!(reset.take());
    }

    #[test]
    fn self_test_and_command_byte_round_trip() {
        let (mut k, _, _) = kbc();
        assert_eq!(inb(&mut k, 0x64) & STAT_OBF, 0);
        k.write(0x64, 0, &[0xAA]);
        assert_eq!(inb(&mut k, 0x64) & STAT_OBF, STAT_OBF);
        assert_eq!(inb(&mut k, 0x60), 0x55);
        k.write(0x64, 0, &[0x60]);
        k.write(0x60, 0, &[0x44]);
        k.write(0x64, 0, &[0x20]);
        assert_eq!(inb(&mut k, 0x60), 0x44);
        assert_eq!(inb(&mut k, 0x64) & STAT_SYS, STAT_SYS);
    }

    #[test]
    fn keyboard_reset_acks_and_passes_bat_with_an_interrupt() {
        let (mut k, _, irq) = kbc();
        k.write(0x60, 0, &[0xFF]);
        assert!(irq.level.load(Ordering::SeqCst), "IRQ 1 with KBDINT set");
        assert_eq!(inb(&mut k, 0x60), KBD_ACK);
        assert_eq!(inb(&mut k, 0x60), 0xAA);
        assert!(!irq.level.load(Ordering::SeqCst), "queue drained");
        k.write(0x60, 0, &[0xF0]);
        k.write(0x60, 0, &[0x02]);
        assert_eq!(inb(&mut k, 0x60), KBD_ACK);
        assert_eq!(
            inb(&mut k, 0x60),
            KBD_ACK,
            "the argument is acknowledged too"
        );
    }
}
