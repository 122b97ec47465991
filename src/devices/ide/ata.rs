//! One ATA channel (two drive slots) as a sans-IO state machine: registers in, block requests
//! and an interrupt level out.
//!
//! QEMU's hw/ide/core.c (ide_ioport_read/write, ide_data_*, ide_ctrl_write, ide_bus_exec_cmd).
//! A channel is eight command-block registers at base+0..7 (Data, Error/Features, Sector Count,
//! LBA low/mid/high, Device, Status/Command) and one control register (Alternate Status /
//! Device Control). Writes to the command block reach both drives; reads come from the one
//! selected by the Device register's DEV bit. This type performs no I/O: when a command needs
//! the disk it queues a [`BlockRequest`] that the glue ([`super::IdeBlockSubmitter`]) takes with
//! [`AtaChannel::take_request`] and answers with [`AtaChannel::complete`]; the interrupt line is
//! [`AtaChannel::irq_level`]. The commands live in [`super::commands`], the data port in
//! [`super::data_port`].
//!
//! Interrupts follow the hardware rather than QEMU's shortcut: an event sets a pending bit
//! whatever nIEN says; the line is `pending && !nIEN`; reading Status (not Alternate Status),
//! writing Command and reset clear it.

use std::collections::VecDeque;

use block::trace;

use super::atapi::CdState;
pub use super::identify::{DriveConfig, DriveKind};
use super::identify::{Geometry, MAX_MULT_SECTORS};

/// Status: busy.
pub const BSY: u8 = 0x80;
/// Status: device ready.
pub const DRDY: u8 = 0x40;
/// Status: device seek complete (obsolete, still set by disks).
pub const DSC: u8 = 0x10;
/// Status: data request, the data port is open for one DRQ block.
pub const DRQ: u8 = 0x08;
/// Status: error, see the Error register.
pub const ERR: u8 = 0x01;

/// Error: uncorrectable data (a failed read).
pub const UNC: u8 = 0x40;
/// Error: address not found (outside the disk).
pub const IDNF: u8 = 0x10;
/// Error: command aborted.
pub const ABRT: u8 = 0x04;

/// Device Control: interrupts disabled.
pub const NIEN: u8 = 0x02;
/// Device Control: software reset.
pub const SRST: u8 = 0x04;
/// Device Control: reads return the previous ("high order byte") register values.
pub const HOB: u8 = 0x80;

/// Device register: LBA addressing instead of CHS.
pub const DEV_LBA: u8 = 0x40;
/// Device register: device 1 selected.
pub const DEV_SELECT: u8 = 0x10;
/// Device register: head number / LBA bits 27:24.
pub const DEV_HEAD: u8 = 0x0F;
/// Device register bits that always read as one (obsolete bits 7 and 5).
const DEV_ALWAYS_ON: u8 = 0xA0;

/// Sector size of the PIO protocol.
pub const SECTOR_SIZE: usize = 512;

/// Command-block register offsets from the channel base.
pub mod reg {
    /// Data (16/32-bit accesses; 8-bit ones are not data transfers).
    pub const DATA: u8 = 0;
    /// Error (read) / Features (write).
    pub const ERROR_FEATURES: u8 = 1;
    /// Sector Count.
    pub const COUNT: u8 = 2;
    /// LBA low / sector number.
    pub const LBA_LOW: u8 = 3;
    /// LBA mid / cylinder low.
    pub const LBA_MID: u8 = 4;
    /// LBA high / cylinder high.
    pub const LBA_HIGH: u8 = 5;
    /// Device / head.
    pub const DEVICE: u8 = 6;
    /// Status (read) / Command (write).
    pub const STATUS_COMMAND: u8 = 7;
}

/// Identifies one block request so a late completion can be recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestId {
    /// The drive slot (0 master, 1 slave).
    pub unit: usize,
    pub(super) seq: u64,
}

/// The disk operation a command needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockOp {
    /// Read `count` sectors at `sector`; complete with the bytes.
    Read {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        count: u32,
    },
    /// Write `data` (whole sectors) at `sector`; `fua` when the drive's write cache is off.
    Write {
        /// First sector.
        sector: u64,
        /// The sectors' bytes.
        data: Vec<u8>,
        /// Force unit access: the write must be stable before it completes.
        fua: bool,
    },
    /// Make every completed write stable.
    Flush,
}

/// A request the glue must perform and then report with [`AtaChannel::complete`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRequest {
    /// Pass back to `complete`.
    pub id: RequestId,
    /// What to do.
    pub op: BlockOp,
}

/// What happens when the host has moved the last byte of a DRQ block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EndTransfer {
    /// No transfer or the last one ended: close the data port.
    Stop,
    /// A data-in block of a read command was consumed: read the next one or finish.
    SectorRead,
    /// A data-out block of a write command was filled: write it.
    SectorWrite,
    /// The host wrote an ATAPI command packet: run it.
    AtapiPacket,
    /// The host read an ATAPI DRQ block: send the next one or end the command.
    AtapiReply,
}

/// The request a drive waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pending {
    Read(u32),
    Write(u32),
    Flush,
    /// Sectors (of 2048 bytes) of an ATAPI READ.
    AtapiRead(u32),
}

/// Registers and command state of one drive slot (QEMU's IDEState).
pub(super) struct Drive {
    pub(super) config: Option<DriveConfig>,
    pub(super) feature: u8,
    pub(super) nsector: u8,
    pub(super) sector: u8,
    pub(super) lcyl: u8,
    pub(super) hcyl: u8,
    pub(super) hob_feature: u8,
    pub(super) hob_nsector: u8,
    pub(super) hob_sector: u8,
    pub(super) hob_lcyl: u8,
    pub(super) hob_hcyl: u8,
    pub(super) select: u8,
    pub(super) status: u8,
    pub(super) error: u8,
    /// The running command uses 48-bit addressing.
    pub(super) lba48: bool,
    /// Sectors the running read/write command has still to move.
    pub(super) remaining: u32,
    /// Sectors per DRQ block of the running command.
    pub(super) block_sectors: u32,
    pub(super) mult_sectors: u8,
    pub(super) chs: Geometry,
    pub(super) write_cache: bool,
    pub(super) buffer: Vec<u8>,
    pub(super) data_pos: usize,
    pub(super) data_end: usize,
    pub(super) end_transfer: EndTransfer,
    pub(super) pending: Option<(u64, Pending)>,
    /// A software reset arrived while a request was in flight: finish it on completion.
    pub(super) reset_on_completion: bool,
    /// The medium and packet state of a CD-ROM drive; `None` for a disk.
    pub(super) cd: Option<CdState>,
}

impl Drive {
    fn new(config: Option<DriveConfig>) -> Drive {
        let sectors = config.as_ref().map_or(0, |c| c.info.sectors);
        let write_cache = config.as_ref().is_some_and(|c| c.write_cache);
        let cd = config
            .as_ref()
            .filter(|c| c.kind == DriveKind::Cdrom)
            .map(|_| CdState::new(sectors));
        let mut d = Drive {
            config,
            feature: 0,
            nsector: 0,
            sector: 0,
            lcyl: 0,
            hcyl: 0,
            hob_feature: 0,
            hob_nsector: 0,
            hob_sector: 0,
            hob_lcyl: 0,
            hob_hcyl: 0,
            select: DEV_ALWAYS_ON,
            status: 0,
            error: 0,
            lba48: false,
            remaining: 0,
            block_sectors: 1,
            mult_sectors: MAX_MULT_SECTORS,
            chs: Geometry::guess(sectors),
            write_cache,
            buffer: vec![0; MAX_MULT_SECTORS as usize * SECTOR_SIZE],
            data_pos: 0,
            data_end: 0,
            end_transfer: EndTransfer::Stop,
            pending: None,
            reset_on_completion: false,
            cd,
        };
        d.reset();
        d.diagnostic();
        d
    }

    pub(super) fn present(&self) -> bool {
        self.config.is_some()
    }

    /// Register reset (QEMU's ide_reset): power-on values, multiple mode 16, no transfer.
    fn reset(&mut self) {
        trace!(ide_reset, "IDEstate {:p}", self);
        self.feature = 0;
        self.error = 0;
        self.nsector = 0;
        self.sector = 0;
        self.lcyl = 0;
        self.hcyl = 0;
        self.hob_feature = 0;
        self.hob_nsector = 0;
        self.hob_sector = 0;
        self.hob_lcyl = 0;
        self.hob_hcyl = 0;
        self.select = DEV_ALWAYS_ON;
        self.status = DRDY | DSC;
        self.lba48 = false;
        self.remaining = 0;
        self.mult_sectors = MAX_MULT_SECTORS;
        self.transfer_stop();
        if let Some(cd) = &mut self.cd {
            cd.abort_transfer();
        }
    }

    /// The signature a drive shows after reset or diagnostics: Count 1, LBA low 1, and LBA
    /// mid/high 0x00/0x00 for a disk, 0x14/0xEB for a packet device, 0xFF/0xFF for no drive.
    pub(super) fn set_signature(&mut self) {
        self.select &= !DEV_HEAD;
        self.nsector = 1;
        self.sector = 1;
        (self.lcyl, self.hcyl) = match (self.present(), self.cd.is_some()) {
            (false, _) => (0xFF, 0xFF),
            (true, false) => (0x00, 0x00),
            (true, true) => (0x14, 0xEB),
        };
    }

    /// Result of EXECUTE DEVICE DIAGNOSTIC and of a software reset: signature, status
    /// DRDY|DSC (0 for a packet device, which must not look like a ready disk), error 0x01
    /// ("device 0 passed").
    pub(super) fn diagnostic(&mut self) {
        self.set_signature();
        self.status = if self.cd.is_some() { 0 } else { DRDY | DSC };
        self.error = 0x01;
    }

    /// Opens the data port for `len` bytes of the buffer (ide_transfer_start).
    pub(super) fn transfer_start(&mut self, len: usize, end: EndTransfer) {
        self.transfer_start_at(0, len, end);
    }

    /// Opens the data port for `len` bytes of the buffer from `start`.
    pub(super) fn transfer_start_at(&mut self, start: usize, len: usize, end: EndTransfer) {
        trace!(ide_transfer_start, "IDEState {:p} size {}", self, len);
        self.data_pos = start;
        self.data_end = start + len;
        self.end_transfer = end;
        if self.status & ERR == 0 {
            self.status |= DRQ;
        }
    }

    /// Closes the data port (ide_transfer_stop).
    pub(super) fn transfer_stop(&mut self) {
        self.data_pos = 0;
        self.data_end = 0;
        self.end_transfer = EndTransfer::Stop;
        self.status &= !DRQ;
    }

    /// Fails the running command: DRDY|ERR with `error` and no transfer.
    pub(super) fn fail(&mut self, error: u8) {
        self.transfer_stop();
        self.status = DRDY | ERR;
        self.error = error;
    }

    /// Whether the open transfer goes from device to host.
    pub(super) fn data_in(&self) -> bool {
        !matches!(
            self.end_transfer,
            EndTransfer::SectorWrite | EndTransfer::AtapiPacket
        )
    }
}

/// One IDE channel: two drive slots, the Device Control register and the interrupt.
pub struct AtaChannel {
    pub(super) drives: [Drive; 2],
    pub(super) unit: usize,
    control: u8,
    irq_pending: bool,
    irq_reported: bool,
    /// The line went low at some point since the last `irq_update`.
    irq_dropped: bool,
    next_seq: u64,
    requests: VecDeque<BlockRequest>,
    pub(super) base: u16,
    ctl: u16,
}

impl AtaChannel {
    /// A channel with the given drives; `base`/`ctl` are its port addresses (for traces).
    pub fn new(
        master: Option<DriveConfig>,
        slave: Option<DriveConfig>,
        base: u16,
        ctl: u16,
    ) -> Self {
        AtaChannel {
            drives: [Drive::new(master), Drive::new(slave)],
            unit: 0,
            control: 0,
            irq_pending: false,
            irq_reported: false,
            irq_dropped: false,
            next_seq: 0,
            requests: VecDeque::new(),
            base,
            ctl,
        }
    }

    /// The selected drive.
    pub(super) fn cur(&mut self) -> &mut Drive {
        &mut self.drives[self.unit]
    }

    /// Whether Status and Error reads of the selected slot float to zero: no drive on the
    /// channel, or device 1 selected and absent. (The other registers are latches and read
    /// back while any drive is present, as on QEMU; a prober then sees status 0.)
    fn selected_absent(&self) -> bool {
        self.no_drives() || (self.unit == 1 && !self.drives[1].present())
    }

    fn no_drives(&self) -> bool {
        !self.drives[0].present() && !self.drives[1].present()
    }

    /// Hardware reset (power-on, machine reset): both drives, device 0 selected, no IRQ.
    pub fn reset(&mut self) {
        for d in &mut self.drives {
            d.reset();
            d.diagnostic();
            d.pending = None;
            d.reset_on_completion = false;
        }
        self.unit = 0;
        self.control = 0;
        self.lower_irq();
        self.requests.clear();
    }

    /// The level of the channel's interrupt line (IRQ14/15).
    pub fn irq_level(&self) -> bool {
        self.irq_pending && self.control & NIEN == 0
    }

    /// The line transitions since the last call, for the glue to signal: empty, one level, or
    /// `[false, true]` when an acknowledged interrupt was raised again within one access (a
    /// command that completes at once must still give the PIC a fresh edge).
    pub fn irq_update(&mut self) -> &'static [bool] {
        let level = self.irq_level();
        let dropped = std::mem::take(&mut self.irq_dropped);
        let edges: &'static [bool] = match (std::mem::replace(&mut self.irq_reported, level), level)
        {
            (true, true) if dropped => &[false, true],
            (false, true) => &[true],
            (true, false) => &[false],
            _ => &[],
        };
        for &level in edges {
            trace!(ide_bus_set_irq, "bus {:p} level {}", self, level as u8);
        }
        edges
    }

    /// Acknowledges the interrupt (Status read, Command write, reset).
    fn lower_irq(&mut self) {
        self.irq_pending = false;
        self.irq_dropped = true;
    }

    /// Raises the interrupt (ide_bus_set_irq); nIEN only masks the line.
    pub(super) fn set_irq(&mut self) {
        self.irq_pending = true;
    }

    /// The next block request to perform, if a command started one.
    pub fn take_request(&mut self) -> Option<BlockRequest> {
        self.requests.pop_front()
    }

    /// Queues `op` for the selected drive, which waits for it as `pending`.
    pub(super) fn submit(&mut self, unit: usize, op: BlockOp, pending: Pending) {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.drives[unit].pending = Some((seq, pending));
        self.requests.push_back(BlockRequest {
            id: RequestId { unit, seq },
            op,
        });
    }

    /// Reads a command-block register (8-bit access; base+0 here is not the data port).
    pub fn ioport_read(&mut self, reg: u8) -> u8 {
        let hob = self.control & HOB != 0;
        let absent = self.selected_absent();
        let d = &self.drives[self.unit];
        let val = match reg & 7 {
            reg::DATA => 0xFF,
            reg::ERROR_FEATURES | reg::STATUS_COMMAND if absent => 0,
            _ if self.no_drives() => 0,
            reg::DEVICE => d.select,
            reg::ERROR_FEATURES => pick(hob, d.hob_feature, d.error),
            reg::COUNT => pick(hob, d.hob_nsector, d.nsector),
            reg::LBA_LOW => pick(hob, d.hob_sector, d.sector),
            reg::LBA_MID => pick(hob, d.hob_lcyl, d.lcyl),
            reg::LBA_HIGH => pick(hob, d.hob_hcyl, d.hcyl),
            _ => d.status,
        };
        if reg & 7 == reg::STATUS_COMMAND {
            self.lower_irq();
        }
        trace!(
            ide_ioport_read,
            "IDE PIO rd @ 0x{:x} ({}); val 0x{:02x}; bus {:p} IDEState {:p}",
            self.base.wrapping_add((reg & 7) as u16),
            reg_name(reg, false),
            val,
            self,
            &self.drives[self.unit]
        );
        val
    }

    /// Writes a command-block register; Command starts a command.
    pub fn ioport_write(&mut self, reg: u8, val: u8) {
        trace!(
            ide_ioport_write,
            "IDE PIO wr @ 0x{:x} ({}); val 0x{:02x}; bus {:p} IDEState {:p}",
            self.base.wrapping_add((reg & 7) as u16),
            reg_name(reg, true),
            val,
            self,
            &self.drives[self.unit]
        );
        let reg = reg & 7;
        if reg == reg::DATA {
            return;
        }
        // Any command-block write ends HOB readback.
        self.control &= !HOB;
        match reg {
            reg::DEVICE => {
                for d in &mut self.drives {
                    d.select = val | DEV_ALWAYS_ON;
                }
                self.unit = usize::from(val & DEV_SELECT != 0);
            }
            reg::STATUS_COMMAND => {
                self.lower_irq();
                self.exec_cmd(val);
            }
            _ => {
                for d in &mut self.drives {
                    let (hob, cur) = match reg {
                        reg::ERROR_FEATURES => (&mut d.hob_feature, &mut d.feature),
                        reg::COUNT => (&mut d.hob_nsector, &mut d.nsector),
                        reg::LBA_LOW => (&mut d.hob_sector, &mut d.sector),
                        reg::LBA_MID => (&mut d.hob_lcyl, &mut d.lcyl),
                        _ => (&mut d.hob_hcyl, &mut d.hcyl),
                    };
                    *hob = *cur;
                    *cur = val;
                }
            }
        }
    }

    /// Reads Alternate Status: Status without clearing the interrupt.
    pub fn alt_status_read(&self) -> u8 {
        let val = if self.selected_absent() {
            0
        } else {
            self.drives[self.unit].status
        };
        trace!(
            ide_status_read,
            "IDE PIO rd @ 0x{:x} (Alt Status); val 0x{:02x}; bus {:p}; IDEState {:p}",
            self.ctl,
            val,
            self,
            &self.drives[self.unit]
        );
        val
    }

    /// Writes Device Control: nIEN masks the line, HOB selects readback, and an SRST pulse
    /// resets both drives (BSY while SRST is held, the signature once it is released).
    pub fn control_write(&mut self, val: u8) {
        trace!(
            ide_ctrl_write,
            "IDE PIO wr @ 0x{:x} (Device Control); val 0x{:02x}; bus {:p}",
            self.ctl,
            val,
            self
        );
        let was = self.control;
        self.control = val;
        if was & NIEN == 0 && val & NIEN != 0 {
            self.irq_dropped = true;
        }
        if was & SRST == 0 && val & SRST != 0 {
            for d in &mut self.drives {
                d.transfer_stop();
                d.status |= BSY;
                d.reset_on_completion = d.pending.is_some();
            }
            self.lower_irq();
        } else if was & SRST != 0 && val & SRST == 0 {
            for unit in 0..2 {
                if !self.drives[unit].reset_on_completion {
                    self.finish_soft_reset(unit);
                }
            }
        }
    }

    /// Whether the host holds SRST set.
    pub(super) fn soft_reset_held(&self) -> bool {
        self.control & SRST != 0
    }

    /// The end of a software reset for one drive: registers reset, diagnostic result, device 0
    /// selected. No interrupt (ATA software reset protocol).
    pub(super) fn finish_soft_reset(&mut self, unit: usize) {
        let d = &mut self.drives[unit];
        d.reset();
        d.diagnostic();
        d.reset_on_completion = false;
        self.unit = 0;
    }
}

fn pick(hob: bool, hob_val: u8, val: u8) -> u8 {
    if hob {
        hob_val
    } else {
        val
    }
}

/// QEMU's register names in traces.
fn reg_name(reg: u8, write: bool) -> &'static str {
    match (reg & 7, write) {
        (0, _) => "Data",
        (1, false) => "Error",
        (1, true) => "Features",
        (2, _) => "Sector Count",
        (3, _) => "Sector Number",
        (4, _) => "Cylinder Low",
        (5, _) => "Cylinder High",
        (6, _) => "Device/Head",
        (_, false) => "Status",
        (_, true) => "Command",
    }
}
