//! The PIIX3 IDE function (PCI 8086:7010) in legacy mode, PIO only: its configuration space
//! and the routing of the legacy ports to its two ATA channels.
//!
//! QEMU's hw/ide/piix.c. In legacy mode (programming interface 0x80) the channels sit at the
//! ISA addresses 0x1F0-0x1F7/0x3F6 (IRQ14) and 0x170-0x177/0x376 (IRQ15) whatever the BARs
//! say, so BAR0-3 read as zero; BAR4 (bus-master DMA) is absent, which makes Linux's ata_piix
//! fall back to PIO. A channel's ports decode only while its IDE Decode Enable bit (bit 15 of
//! IDETIM, config 0x41/0x43 bit 7) is set; this model presets both, as a direct-boot VMM must
//! (SeaBIOS sets them itself, QEMU's reset does not). IDETIM/SIDETIM (0x40-0x47) are plain
//! storage that ata_piix programs with PIO timings.

use super::ata::{AtaChannel, DriveConfig};

/// PCI vendor ID (Intel).
pub const VENDOR_ID: u16 = 0x8086;
/// PCI device ID of the PIIX3 IDE function.
pub const DEVICE_ID: u16 = 0x7010;
/// Class code: mass storage, IDE, legacy mode with bus mastering advertised (0x010180).
pub const CLASS_CODE: u32 = 0x010180;

/// Port bases, control ports and ISA IRQs of the primary and secondary channel.
pub const LEGACY_PORTS: [(u16, u16, u32); 2] = [(0x1F0, 0x3F6, 14), (0x170, 0x376, 15)];

const COMMAND: usize = 0x04;
/// Writable bits of the PCI command register: I/O space and bus master.
const COMMAND_WMASK: u16 = 0x0005;
const STATUS: usize = 0x06;
const INTERRUPT_LINE: usize = 0x3C;
const IDETIM: usize = 0x40;
const TIMING_REGS: std::ops::Range<usize> = 0x40..0x48;
/// IDETIM bit 15: the channel's legacy ports decode.
const IDE_DECODE_ENABLE: u8 = 0x80;

/// Which register of which channel a port reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdePort {
    /// A command-block register (0-7) of a channel.
    Command {
        /// 0 primary, 1 secondary.
        channel: usize,
        /// Register offset from the channel base.
        reg: u8,
    },
    /// The Alternate Status / Device Control register of a channel.
    Control {
        /// 0 primary, 1 secondary.
        channel: usize,
    },
}

/// The PIIX3 IDE function: configuration space plus two channels.
pub struct Piix3Ide {
    config: [u8; 256],
    channels: [AtaChannel; 2],
}

impl Piix3Ide {
    /// The function with up to two drives per channel: `drives[channel][unit]`.
    pub fn new(drives: [[Option<DriveConfig>; 2]; 2]) -> Piix3Ide {
        let [[m0, s0], [m1, s1]] = drives;
        let (p, s) = (LEGACY_PORTS[0], LEGACY_PORTS[1]);
        let mut ide = Piix3Ide {
            config: [0; 256],
            channels: [
                AtaChannel::new(m0, s0, p.0, p.1),
                AtaChannel::new(m1, s1, s.0, s.1),
            ],
        };
        ide.reset();
        ide
    }

    /// Machine reset: configuration registers to their defaults, both channels reset.
    pub fn reset(&mut self) {
        let c = &mut self.config;
        c.fill(0);
        c[0..2].copy_from_slice(&VENDOR_ID.to_le_bytes());
        c[2..4].copy_from_slice(&DEVICE_ID.to_le_bytes());
        c[STATUS..STATUS + 2].copy_from_slice(&0x0280u16.to_le_bytes()); // DEVSEL medium, fast b2b
        c[0x09..0x0C].copy_from_slice(&CLASS_CODE.to_le_bytes()[..3]);
        c[IDETIM + 1] = IDE_DECODE_ENABLE;
        c[IDETIM + 3] = IDE_DECODE_ENABLE;
        for ch in &mut self.channels {
            ch.reset();
        }
    }

    /// Reads `size` (1, 2 or 4) bytes of configuration space at `offset`, little-endian;
    /// bytes past the 256-byte space read as 0xFF.
    pub fn config_read(&self, offset: usize, size: usize) -> u32 {
        (0..size.min(4)).fold(0, |acc, i| {
            let byte = self.config.get(offset + i).copied().unwrap_or(0xFF);
            acc | (byte as u32) << (8 * i)
        })
    }

    /// Writes `size` bytes of configuration space; read-only bits keep their value.
    pub fn config_write(&mut self, offset: usize, size: usize, val: u32) {
        for i in 0..size.min(4) {
            let byte = (val >> (8 * i)) as u8;
            let at = offset + i;
            let mask = match at {
                COMMAND => COMMAND_WMASK as u8,
                a if a == COMMAND + 1 => (COMMAND_WMASK >> 8) as u8,
                INTERRUPT_LINE => 0xFF,
                a if TIMING_REGS.contains(&a) => 0xFF,
                _ => 0,
            };
            if let Some(slot) = self.config.get_mut(at) {
                *slot = (*slot & !mask) | (byte & mask);
            }
        }
    }

    /// Maps a port to its channel register, if a decoding channel owns it.
    pub fn decode(&self, port: u16) -> Option<IdePort> {
        LEGACY_PORTS
            .iter()
            .enumerate()
            .filter(|(channel, _)| self.config[IDETIM + 1 + 2 * channel] & IDE_DECODE_ENABLE != 0)
            .find_map(|(channel, &(base, ctl, _))| {
                if (base..base + 8).contains(&port) {
                    Some(IdePort::Command {
                        channel,
                        reg: (port - base) as u8,
                    })
                } else if port == ctl {
                    Some(IdePort::Control { channel })
                } else {
                    None
                }
            })
    }

    /// A channel.
    pub fn channel(&mut self, index: usize) -> &mut AtaChannel {
        &mut self.channels[index]
    }

    /// Handles a port read of `data.len()` bytes as a vCPU exit delivers it (a `rep ins`
    /// arrives as one buffer). Returns the channel touched, or `None` if the port is not ours
    /// (then `data` is left alone).
    ///
    /// The data port moves bytes in order whatever the access width. On other registers a
    /// buffer of up to 4 bytes is one wide access, split into byte accesses of consecutive
    /// ports as QEMU's port layer does; a longer buffer is a `rep insb` of the same port.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) -> Option<usize> {
        match self.decode(port)? {
            IdePort::Command { channel, reg } => {
                let ch = &mut self.channels[channel];
                if reg == 0 && data.len() >= 2 {
                    ch.data_read_buf(access_size(data.len()), data);
                } else {
                    let wide = data.len() <= 4;
                    for (i, byte) in data.iter_mut().enumerate() {
                        let r = if wide { reg + i as u8 } else { reg };
                        *byte = if r < 8 { ch.ioport_read(r) } else { 0xFF };
                    }
                }
                Some(channel)
            }
            IdePort::Control { channel } => {
                let status = self.channels[channel].alt_status_read();
                data.fill(status);
                Some(channel)
            }
        }
    }

    /// Handles a port write (see [`Piix3Ide::pio_read`] for how buffers are split).
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> Option<usize> {
        match self.decode(port)? {
            IdePort::Command { channel, reg } => {
                let ch = &mut self.channels[channel];
                if reg == 0 && data.len() >= 2 {
                    ch.data_write_buf(access_size(data.len()), data);
                } else {
                    let wide = data.len() <= 4;
                    for (i, byte) in data.iter().enumerate() {
                        let r = if wide { reg + i as u8 } else { reg };
                        if r < 8 {
                            ch.ioport_write(r, *byte);
                        }
                    }
                }
                Some(channel)
            }
            IdePort::Control { channel } => {
                for byte in data {
                    self.channels[channel].control_write(*byte);
                }
                Some(channel)
            }
        }
    }
}

/// The unit of a data-port buffer: DRQ blocks are whole sectors, so 4- and 2-byte units move
/// the same bytes; only the width of a lone access matters and it equals the buffer length.
fn access_size(len: usize) -> usize {
    if len.is_multiple_of(4) {
        4
    } else {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_identifies_a_legacy_pio_piix3_ide() {
        let mut ide = Piix3Ide::new([[None, None], [None, None]]);
        assert_eq!(ide.config_read(0, 4), 0x7010_8086);
        assert_eq!(ide.config_read(0x08, 4) >> 8, CLASS_CODE);
        assert_eq!(ide.config_read(0x41, 1) & 0x80, 0x80);
        assert_eq!(ide.config_read(0x43, 1) & 0x80, 0x80);
        // No BARs: sizing reads back zero.
        for bar in (0x10..0x28).step_by(4) {
            ide.config_write(bar, 4, 0xFFFF_FFFF);
            assert_eq!(ide.config_read(bar, 4), 0);
        }
        ide.config_write(0x00, 4, 0);
        assert_eq!(ide.config_read(0, 4), 0x7010_8086);
        ide.config_write(0x40, 4, 0xA307_E307);
        assert_eq!(ide.config_read(0x40, 4), 0xA307_E307);
        ide.config_write(0x04, 2, 0xFFFF);
        assert_eq!(ide.config_read(0x04, 2), 0x0005);
        assert_eq!(ide.config_read(0xFE, 4), 0xFFFF_0000);
    }

    #[test]
    fn ports_route_to_channels_while_decode_is_enabled() {
        let mut ide = Piix3Ide::new([[None, None], [None, None]]);
        assert_eq!(
            ide.decode(0x1F7),
            Some(IdePort::Command { channel: 0, reg: 7 })
        );
        assert_eq!(ide.decode(0x3F6), Some(IdePort::Control { channel: 0 }));
        assert_eq!(
            ide.decode(0x170),
            Some(IdePort::Command { channel: 1, reg: 0 })
        );
        assert_eq!(ide.decode(0x376), Some(IdePort::Control { channel: 1 }));
        assert_eq!(ide.decode(0x3F7), None);
        assert_eq!(ide.decode(0x1F8), None);
        ide.config_write(0x43, 1, 0);
        assert_eq!(ide.decode(0x177), None);
        let mut b = [0u8; 1];
        assert_eq!(ide.pio_read(0x177, &mut b), None);
        assert_eq!(
            ide.decode(0x1F0),
            Some(IdePort::Command { channel: 0, reg: 0 })
        );
    }

    #[test]
    fn port_buffers_reach_the_channel_registers_and_data_port() {
        use crate::devices::ide::identify::DriveInfo;
        let disk = DriveConfig {
            info: DriveInfo::qemu_default(2048, 0),
            read_only: false,
            write_cache: true,
        };
        let mut ide = Piix3Ide::new([[Some(disk), None], [None, None]]);
        assert_eq!(ide.pio_write(0x1F7, &[0xEC]), Some(0));
        let mut status = [0u8; 1];
        ide.pio_read(0x3F6, &mut status);
        assert_eq!(status[0], 0x58);
        // One `rep insd` exit for the whole page, then a lone 16-bit read finds no data.
        let mut page = [0u8; 512];
        ide.pio_read(0x1F0, &mut page);
        assert_eq!(u16::from_le_bytes([page[120], page[121]]), 2048, "word 60");
        let mut word = [0xFFu8; 2];
        ide.pio_read(0x1F0, &mut word);
        assert_eq!(word, [0, 0]);
        // A 16-bit read of 0x1F2 is Sector Count then LBA low; the empty secondary reads 0.
        ide.pio_read(0x1F2, &mut word);
        assert_eq!(word, [1, 1]);
        ide.pio_read(0x177, &mut status);
        assert_eq!(status[0], 0);
    }
}
