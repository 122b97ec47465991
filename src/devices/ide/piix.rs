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
use crate::devices::pci::{ConfigSpace, PciFunction, PCI_COMMAND};

/// PCI vendor ID (Intel).
pub const VENDOR_ID: u16 = 0x8086;
/// PCI device ID of the PIIX3 IDE function.
pub const DEVICE_ID: u16 = 0x7010;
/// Class code: mass storage, IDE, legacy mode with bus mastering advertised (0x010180).
pub const CLASS_CODE: u32 = 0x010180;

/// Port bases, control ports and ISA IRQs of the primary and secondary channel.
pub const LEGACY_PORTS: [(u16, u16, u32); 2] = [(0x1F0, 0x3F6, 14), (0x170, 0x376, 15)];

/// Writable bits of the PCI command register: I/O space and bus master.
const COMMAND_WMASK: u16 = 0x0005;
const STATUS: usize = 0x06;
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
    config: ConfigSpace,
    channels: [AtaChannel; 2],
}

impl Piix3Ide {
    /// The function with up to two drives per channel: `drives[channel][unit]`.
    pub fn new(drives: [[Option<DriveConfig>; 2]; 2]) -> Piix3Ide {
        let [[m0, s0], [m1, s1]] = drives;
        let (p, s) = (LEGACY_PORTS[0], LEGACY_PORTS[1]);
        let mut ide = Piix3Ide {
            config: config_space(),
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
        self.config = config_space();
        for ch in &mut self.channels {
            ch.reset();
        }
    }

    /// Maps a port to its channel register, if a decoding channel owns it.
    pub fn decode(&self, port: u16) -> Option<IdePort> {
        LEGACY_PORTS
            .iter()
            .enumerate()
            .filter(|(channel, _)| {
                let mut idetim_hi = [0u8];
                self.config.read(IDETIM + 1 + 2 * channel, &mut idetim_hi);
                idetim_hi[0] & IDE_DECODE_ENABLE != 0
            })
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

    /// Handles `data.len() / size` port reads of `size` bytes as a vCPU exit delivers them
    /// (a `rep ins` arrives as one buffer). Returns the channel touched, or `None` if the port
    /// is not ours (then `data` is left alone).
    ///
    /// The data port moves the whole buffer in order. On other registers each access of
    /// `size` bytes is split into byte accesses of consecutive ports, as QEMU's port layer
    /// does for registers that are 8 bits wide.
    pub fn pio_read(&mut self, port: u16, size: usize, data: &mut [u8]) -> Option<usize> {
        match self.decode(port)? {
            IdePort::Command { channel, reg } => {
                let ch = &mut self.channels[channel];
                if reg == 0 && size >= 2 {
                    ch.data_read_buf(size, data);
                } else {
                    for access in data.chunks_mut(size.max(1)) {
                        for (i, byte) in access.iter_mut().enumerate() {
                            let r = reg + i as u8;
                            *byte = if r < 8 { ch.ioport_read(r) } else { 0xFF };
                        }
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

    /// Handles port writes (see [`Piix3Ide::pio_read`] for how buffers are split).
    pub fn pio_write(&mut self, port: u16, size: usize, data: &[u8]) -> Option<usize> {
        match self.decode(port)? {
            IdePort::Command { channel, reg } => {
                let ch = &mut self.channels[channel];
                if reg == 0 && size >= 2 {
                    ch.data_write_buf(size, data);
                } else {
                    for access in data.chunks(size.max(1)) {
                        for (i, byte) in access.iter().enumerate() {
                            let r = reg + i as u8;
                            if r < 8 {
                                ch.ioport_write(r, *byte);
                            }
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

/// The function's configuration space at power-on: IDs, class, both channels decoding.
fn config_space() -> ConfigSpace {
    let mut c = ConfigSpace::new(VENDOR_ID, DEVICE_ID, CLASS_CODE, 0);
    c.set_word(STATUS, 0x0280); // DEVSEL medium, fast back-to-back
    c.set_wmask(PCI_COMMAND, COMMAND_WMASK as u8);
    c.set_wmask(PCI_COMMAND + 1, (COMMAND_WMASK >> 8) as u8);
    c.set_writable(TIMING_REGS.start, TIMING_REGS.len());
    c.set_byte(IDETIM + 1, IDE_DECODE_ENABLE);
    c.set_byte(IDETIM + 3, IDE_DECODE_ENABLE);
    c
}

/// On the PCI bus at 00:01.1; its ports are on the port bus through [`super::IdePorts`].
impl PciFunction for Piix3Ide {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_read(ide: &mut Piix3Ide, offset: usize, size: usize) -> u32 {
        let mut b = [0u8; 4];
        PciFunction::config_read(ide, offset, &mut b[..size]);
        u32::from_le_bytes(b)
    }

    fn config_write(ide: &mut Piix3Ide, offset: usize, size: usize, val: u32) {
        PciFunction::config_write(ide, offset, &val.to_le_bytes()[..size]);
    }

    #[test]
    fn config_space_identifies_a_legacy_pio_piix3_ide() {
        let mut ide = Piix3Ide::new([[None, None], [None, None]]);
        assert_eq!(config_read(&mut ide, 0, 4), 0x7010_8086);
        assert_eq!(config_read(&mut ide, 0x08, 4) >> 8, CLASS_CODE);
        assert_eq!(config_read(&mut ide, 0x41, 1) & 0x80, 0x80);
        assert_eq!(config_read(&mut ide, 0x43, 1) & 0x80, 0x80);
        // No BARs: sizing reads back zero.
        for bar in (0x10..0x28).step_by(4) {
            config_write(&mut ide, bar, 4, 0xFFFF_FFFF);
            assert_eq!(config_read(&mut ide, bar, 4), 0);
        }
        config_write(&mut ide, 0x00, 4, 0);
        assert_eq!(config_read(&mut ide, 0, 4), 0x7010_8086);
        config_write(&mut ide, 0x40, 4, 0xA307_E307);
        assert_eq!(config_read(&mut ide, 0x40, 4), 0xA307_E307);
        config_write(&mut ide, 0x04, 2, 0xFFFF);
        assert_eq!(config_read(&mut ide, 0x04, 2), 0x0005);
        assert_eq!(config_read(&mut ide, 0xFC, 4), 0);
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
        config_write(&mut ide, 0x43, 1, 0);
        assert_eq!(ide.decode(0x177), None);
        let mut b = [0u8; 1];
        assert_eq!(ide.pio_read(0x177, 1, &mut b), None);
        assert_eq!(
            ide.decode(0x1F0),
            Some(IdePort::Command { channel: 0, reg: 0 })
        );
    }

    #[test]
    fn port_buffers_reach_the_channel_registers_and_data_port() {
        use crate::devices::ide::identify::DriveInfo;
        let disk = DriveConfig {
            kind: Default::default(),
            info: DriveInfo::qemu_default(2048, 0),
            read_only: false,
            write_cache: true,
        };
        let mut ide = Piix3Ide::new([[Some(disk), None], [None, None]]);
        assert_eq!(ide.pio_write(0x1F7, 1, &[0xEC]), Some(0));
        let mut status = [0u8; 1];
        ide.pio_read(0x3F6, 1, &mut status);
        assert_eq!(status[0], 0x58);
        // One `rep insd` exit for the whole page, then a lone 16-bit read finds no data.
        let mut page = [0u8; 512];
        ide.pio_read(0x1F0, 4, &mut page);
        assert_eq!(u16::from_le_bytes([page[120], page[121]]), 2048, "word 60");
        let mut word = [0xFFu8; 2];
        ide.pio_read(0x1F0, 2, &mut word);
        assert_eq!(word, [0, 0]);
        // A 16-bit read of 0x1F2 is Sector Count then LBA low; the empty secondary reads 0.
        ide.pio_read(0x1F2, 2, &mut word);
        assert_eq!(word, [1, 1]);
        ide.pio_read(0x177, 1, &mut status);
        assert_eq!(status[0], 0);
    }
}
