//! ATAPI: a CD/DVD-ROM drive behind the ATA registers, driven by 12-byte SCSI/MMC command
//! packets (the PACKET protocol), as a sans-IO state machine like the disk's.
//!
//! QEMU's hw/ide/atapi.c (ide_atapi_cmd, ide_atapi_cmd_reply_end, ide_atapi_cmd_read_pio) and
//! the ATAPI half of hw/ide/core.c (cmd_packet, cmd_identify_packet, the 0x14/0xEB signature).
//!
//! # The PACKET protocol (PIO)
//!
//! 1. The host writes the byte count limit to LBA mid/high and PACKET (0xA0) to Command; the
//!    drive opens the data port for 12 bytes with Interrupt Reason (the Sector Count
//!    register) = CoD: "a command is expected".
//! 2. The host writes the packet; the drive runs it ([`AtaChannel::atapi_packet_received`]).
//! 3. Data-in commands move their reply in *elementary transfers*: each is at most the byte
//!    count limit, announced by an interrupt with Interrupt Reason = IO and the size in LBA
//!    mid/high; a READ reads up to four 2048-byte sectors per block request (BSY meanwhile)
//!    and sends them in elementary transfers that never reach past what was read.
//! 4. The end of the command: status DRDY, Interrupt Reason = IO|CoD, an interrupt; a failure
//!    sets ERR, the sense key in the Error register's high nibble, and the sense data that
//!    REQUEST SENSE returns.
//!
//! The replies themselves are built in [`mmc`]; IDENTIFY PACKET DEVICE in [`identify`].

pub mod identify;
pub mod mmc;

use block::trace;

use super::ata::{AtaChannel, BlockOp, Drive, EndTransfer, Pending, ABRT, BSY, DRDY, DSC, ERR};
use super::commands::{cmd, Done};
use mmc::op;

/// Bytes of a CD data sector (mode 1 user data).
pub const CD_SECTOR_SIZE: usize = 2048;
/// Bytes of a command packet (the 16-byte form is not offered).
pub const ATAPI_PACKET_SIZE: usize = 12;
/// 512-byte block-layer sectors per CD sector.
const SECTORS_PER_CD_SECTOR: u64 = (CD_SECTOR_SIZE / super::ata::SECTOR_SIZE) as u64;

/// Interrupt Reason (the Sector Count register during PACKET): the transfer is a command.
pub const ATAPI_INT_REASON_CD: u8 = 0x01;
/// Interrupt Reason: the transfer goes to the host.
pub const ATAPI_INT_REASON_IO: u8 = 0x02;

/// Command opcode: PACKET.
pub const WIN_PACKETCMD: u8 = 0xA0;
/// Command opcode: DEVICE RESET (ATAPI only).
pub const WIN_DEVICE_RESET: u8 = 0x08;

/// Sense key: the medium could not be read.
const MEDIUM_ERROR: u8 = 0x03;
/// ASC: unrecovered read error.
const ASC_UNRECOVERED_READ_ERROR: u8 = 0x11;

/// Sense data: what went wrong with the last command (SPC sense key, ASC, ASCQ).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sense {
    /// The sense key (NOT READY, ILLEGAL REQUEST...).
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

impl Sense {
    /// Sense data with qualifier 0.
    pub fn new(key: u8, asc: u8) -> Sense {
        Sense { key, asc, ascq: 0 }
    }
}

/// The drive's medium, tray and the progress of the running packet command (QEMU keeps these
/// in IDEState next to the ATA registers).
#[derive(Debug, Default)]
pub struct CdState {
    /// Size of the image in 512-byte sectors (0: no disc).
    pub sectors: u64,
    /// The tray is open: no medium is accessible.
    pub tray_open: bool,
    /// PREVENT MEDIUM REMOVAL is in force: eject fails.
    pub locked: bool,
    /// The sense data REQUEST SENSE returns.
    pub sense: Sense,
    /// A media event GET EVENT STATUS NOTIFICATION has yet to report.
    pub event: Option<mmc::MediaEvent>,
    /// Next CD sector of a READ, `None` while the reply comes from the buffer.
    lba: Option<u64>,
    /// Bytes the command has still to move.
    packet_transfer_size: u64,
    /// Position in the buffer of the next byte to send.
    io_index: usize,
    /// Bytes of the buffer holding data (the reply, or the sectors a READ read last).
    buffer_len: usize,
}

impl CdState {
    /// A drive holding an image of `sectors` 512-byte sectors.
    pub fn new(sectors: u64) -> CdState {
        CdState {
            sectors,
            ..CdState::default()
        }
    }

    /// Whether a disc can be read: one is loaded and the tray is closed.
    pub fn medium_present(&self) -> bool {
        !self.tray_open && self.sectors > 0
    }

    /// Capacity in 2048-byte blocks, 0 without a medium.
    pub fn blocks(&self) -> u64 {
        if self.medium_present() {
            self.sectors / SECTORS_PER_CD_SECTOR
        } else {
            0
        }
    }

    /// Forgets the running command (reset).
    pub fn abort_transfer(&mut self) {
        self.lba = None;
        self.packet_transfer_size = 0;
        self.io_index = 0;
        self.buffer_len = 0;
    }
}

/// Commands a pending unit attention does not fail (they report state, they do not use it).
fn allows_unit_attention(opcode: u8) -> bool {
    matches!(
        opcode,
        op::INQUIRY | op::REQUEST_SENSE | op::GET_CONFIGURATION | op::GET_EVENT_STATUS_NOTIFICATION
    )
}

/// Commands that need a readable disc.
fn needs_medium(opcode: u8) -> bool {
    matches!(
        opcode,
        op::TEST_UNIT_READY
            | op::READ_CAPACITY
            | op::READ_10
            | op::READ_12
            | op::READ_TOC_PMA_ATIP
            | op::READ_DISC_INFORMATION
    )
}

impl Drive {
    fn cd(&mut self) -> &mut CdState {
        self.cd.as_mut().expect("ATAPI path taken for a disk")
    }

    /// Sets Interrupt Reason in the Sector Count register.
    fn set_int_reason(&mut self, reason: u8) {
        self.nsector = (self.nsector & !7) | reason;
    }
}

impl AtaChannel {
    /// The ATA commands of a packet device: `Some` for those it handles differently from a
    /// disk (or refuses), `None` for the shared ones (diagnostics, power, SET FEATURES).
    pub(super) fn atapi_ata_command(&mut self, val: u8) -> Option<Done> {
        Some(match val {
            WIN_PACKETCMD => self.cmd_packet(),
            cmd::IDENTIFY_PACKET => self.cmd_identify_packet(),
            cmd::IDENTIFY => {
                // The ATAPI way of saying "not a disk": abort with the packet signature.
                let d = self.cur();
                d.set_signature();
                d.fail(ABRT);
                Done::Now
            }
            WIN_DEVICE_RESET => {
                let d = self.cur();
                d.cd().abort_transfer();
                d.transfer_stop();
                d.diagnostic();
                Done::Later // no interrupt: the host polls BSY
            }
            cmd::DIAGNOSE
            | cmd::CHECK_POWER_MODE
            | cmd::CHECK_POWER_MODE2
            | cmd::SET_FEATURES
            | cmd::STANDBY_NOW1
            | cmd::IDLE_IMMEDIATE
            | cmd::STANDBY
            | cmd::SET_IDLE1 => return None,
            _ => {
                self.cur().fail(ABRT);
                Done::Now
            }
        })
    }

    /// PACKET: open the data port for the command packet (ide's cmd_packet). No interrupt:
    /// the host waits for DRQ.
    fn cmd_packet(&mut self) -> Done {
        let d = self.cur();
        if d.feature & 0x01 != 0 {
            d.fail(ABRT); // DMA: this drive does PIO only
            return Done::Now;
        }
        d.status = DRDY | DSC;
        d.set_int_reason(ATAPI_INT_REASON_CD);
        d.transfer_start(ATAPI_PACKET_SIZE, EndTransfer::AtapiPacket);
        Done::Later
    }

    fn cmd_identify_packet(&mut self) -> Done {
        let d = self.cur();
        let Some(config) = &d.config else {
            return Done::Now;
        };
        let page = identify::identify_packet_page(&config.info);
        d.buffer[..page.len()].copy_from_slice(&page);
        d.status = DRDY | DSC;
        d.transfer_start(page.len(), EndTransfer::Stop);
        self.set_irq();
        Done::Later
    }

    /// The host wrote the whole packet: run it (QEMU's ide_atapi_cmd).
    pub(super) fn atapi_packet_received(&mut self) {
        let mut p = [0u8; ATAPI_PACKET_SIZE];
        p.copy_from_slice(&self.cur().buffer[..ATAPI_PACKET_SIZE]);
        trace!(
            ide_atapi_cmd,
            "IDEState: {:p}; cmd: 0x{:02x}",
            &self.drives[self.unit],
            p[0]
        );
        let cd = self.cur().cd();
        if cd.sense.key == mmc::UNIT_ATTENTION && !allows_unit_attention(p[0]) {
            let sense = cd.sense;
            return self.atapi_error(sense);
        }
        if needs_medium(p[0]) && !cd.medium_present() {
            return self.atapi_error(Sense::new(mmc::NOT_READY, mmc::ASC_MEDIUM_NOT_PRESENT));
        }
        if p[0] != op::REQUEST_SENSE && cd.sense.key != mmc::UNIT_ATTENTION {
            cd.sense = Sense::default(); // sense data describes the last command only
        }
        if let Err(sense) = self.atapi_dispatch(&p) {
            self.atapi_error(sense);
        }
    }

    /// Runs one MMC command: a reply, a read, or a status.
    fn atapi_dispatch(&mut self, p: &[u8; ATAPI_PACKET_SIZE]) -> Result<(), Sense> {
        use mmc::be16;
        let cd = self.cur().cd();
        let (reply, max) = match p[0] {
            op::TEST_UNIT_READY | op::SET_CD_SPEED => (Vec::new(), 0),
            op::REQUEST_SENSE => {
                let sense = std::mem::take(&mut cd.sense);
                (mmc::request_sense(sense), p[4] as usize)
            }
            op::INQUIRY => (mmc::inquiry(p)?, be16(p, 3) as usize),
            op::READ_CAPACITY => (mmc::read_capacity(cd), 8),
            op::READ_10 => return self.atapi_read(mmc::be32(p, 2), be16(p, 7) as u32),
            op::READ_12 => return self.atapi_read(mmc::be32(p, 2), mmc::be32(p, 6)),
            op::MODE_SENSE_10 => (mmc::mode_sense(cd, p)?, be16(p, 7) as usize),
            op::READ_TOC_PMA_ATIP => (mmc::read_toc(cd, p)?, be16(p, 7) as usize),
            op::GET_CONFIGURATION => (mmc::get_configuration(cd, p)?, be16(p, 7) as usize),
            op::GET_EVENT_STATUS_NOTIFICATION => {
                (mmc::get_event_status(cd, p)?, be16(p, 7) as usize)
            }
            op::READ_DISC_INFORMATION => (mmc::read_disc_information(p)?, be16(p, 7) as usize),
            op::MECHANISM_STATUS => (mmc::mechanism_status(), be16(p, 8) as usize),
            op::START_STOP_UNIT => {
                start_stop_unit(cd, p[4])?;
                (Vec::new(), 0)
            }
            op::PREVENT_ALLOW_MEDIUM_REMOVAL => {
                cd.locked = p[4] & 0x01 != 0;
                (Vec::new(), 0)
            }
            _ => return Err(Sense::new(mmc::ILLEGAL_REQUEST, mmc::ASC_ILLEGAL_OPCODE)),
        };
        self.atapi_reply(&reply, max);
        Ok(())
    }

    /// Sends `data`, cut to the allocation length `max` (ide_atapi_cmd_reply).
    fn atapi_reply(&mut self, data: &[u8], max: usize) {
        let len = data.len().min(max);
        let d = self.cur();
        d.buffer[..len].copy_from_slice(&data[..len]);
        d.status = DRDY | DSC;
        let cd = d.cd();
        cd.abort_transfer();
        cd.packet_transfer_size = len as u64;
        cd.buffer_len = len;
        self.atapi_reply_end();
    }

    /// READ(10)/(12): `count` sectors from `lba`, one block request per sector.
    fn atapi_read(&mut self, lba: u32, count: u32) -> Result<(), Sense> {
        let cd = self.cur().cd();
        let (lba, count) = (lba as u64, count as u64);
        if lba + count > cd.blocks() {
            return Err(Sense::new(mmc::ILLEGAL_REQUEST, mmc::ASC_LOGICAL_BLOCK_OOR));
        }
        trace!(
            ide_atapi_cmd_read,
            "IDEState: {:p}; read pio: LBA={} nb_sectors={}",
            &self.drives[self.unit],
            lba,
            count
        );
        let d = self.cur();
        d.status = DRDY | DSC;
        let cd = d.cd();
        cd.abort_transfer();
        cd.lba = Some(lba);
        cd.packet_transfer_size = count * CD_SECTOR_SIZE as u64;
        // An empty buffer: the first sectors are read before any data moves.
        self.atapi_reply_end();
        Ok(())
    }

    /// Moves the command on after each DRQ block (QEMU's ide_atapi_cmd_reply_end): end the
    /// command, read the next sectors, or start the next elementary transfer.
    ///
    /// An elementary transfer never reaches past what the buffer holds, so a host that reads
    /// the announced byte count in one go always finds the data there (QEMU instead announces
    /// up to the byte count limit and refills the buffer within the transfer).
    pub(super) fn atapi_reply_end(&mut self) {
        let unit = self.unit;
        let me = &self.drives[unit] as *const Drive;
        let d = self.cur();
        let Some(cd) = d.cd.as_mut() else {
            return;
        };
        trace!(
            ide_atapi_cmd_reply_end,
            "IDEState {:p} packet_transfer_size={} elementary_transfer_size={} io_buffer_index={}",
            me,
            cd.packet_transfer_size,
            cd.buffer_len - cd.io_index,
            cd.io_index
        );
        if cd.packet_transfer_size == 0 {
            d.transfer_stop();
            d.status = DRDY | DSC;
            d.set_int_reason(ATAPI_INT_REASON_IO | ATAPI_INT_REASON_CD);
            trace!(
                ide_atapi_cmd_reply_end_eot,
                "IDEState: {:p}; status=0x{:x}",
                me,
                d.status
            );
            return self.set_irq();
        }
        if let Some(lba) = cd.lba.filter(|_| cd.io_index >= cd.buffer_len) {
            let fits = (d.buffer.len() / CD_SECTOR_SIZE) as u64;
            let n = (cd.packet_transfer_size / CD_SECTOR_SIZE as u64).min(fits);
            d.status |= BSY;
            let op = BlockOp::Read {
                sector: lba * SECTORS_PER_CD_SECTOR,
                count: (n * SECTORS_PER_CD_SECTOR) as u32,
            };
            return self.submit(unit, op, Pending::AtapiRead(n as u32));
        }
        let limit = (d.hcyl as usize) << 8 | d.lcyl as usize;
        trace!(
            ide_atapi_cmd_reply_end_bcl,
            "IDEState: {:p}; byte_count_limit={}",
            me,
            limit
        );
        let buffered = cd.buffer_len - cd.io_index;
        let mut size = buffered.min(cd.packet_transfer_size as usize);
        if size > limit {
            size = limit & !1; // a limited transfer moves whole words
        }
        if size == 0 {
            // A byte count limit of 0 (or 1) would never move a byte.
            let sense = Sense::new(mmc::ILLEGAL_REQUEST, mmc::ASC_INV_FIELD_IN_CMD_PACKET);
            return self.atapi_error(sense);
        }
        let start = cd.io_index;
        cd.packet_transfer_size -= size as u64;
        cd.io_index += size;
        d.lcyl = size as u8;
        d.hcyl = (size >> 8) as u8;
        d.set_int_reason(ATAPI_INT_REASON_IO);
        d.transfer_start_at(start, size, EndTransfer::AtapiReply);
        trace!(
            ide_atapi_cmd_reply_end_new,
            "IDEState: {:p}; new transfer status=0x{:x}",
            me,
            d.status
        );
        self.set_irq();
    }

    /// The completion of a read of `n` sectors (QEMU's cd_read_sector callback).
    pub(super) fn atapi_read_done(&mut self, n: u32, result: Result<Vec<u8>, block::Error>) {
        let len = n as usize * CD_SECTOR_SIZE;
        let d = self.cur();
        d.status &= !BSY;
        match result {
            Ok(data) if data.len() == len => {
                d.buffer[..len].copy_from_slice(&data);
                let cd = d.cd();
                cd.lba = cd.lba.map(|l| l + n as u64);
                cd.io_index = 0;
                cd.buffer_len = len;
                self.atapi_reply_end();
            }
            Err(e) if e.errno() == libc::ENOMEDIUM => {
                self.atapi_error(Sense::new(mmc::NOT_READY, mmc::ASC_MEDIUM_NOT_PRESENT))
            }
            _ => self.atapi_error(Sense::new(MEDIUM_ERROR, ASC_UNRECOVERED_READ_ERROR)),
        }
    }

    /// Fails the command: CHECK CONDITION with `sense` (ide_atapi_cmd_error).
    fn atapi_error(&mut self, sense: Sense) {
        trace!(
            ide_atapi_cmd_error,
            "IDEState: {:p}; sense=0x{:x} asc=0x{:x}",
            &self.drives[self.unit],
            sense.key,
            sense.asc
        );
        let d = self.cur();
        d.transfer_stop();
        d.error = sense.key << 4;
        d.status = DRDY | ERR;
        d.set_int_reason(ATAPI_INT_REASON_IO | ATAPI_INT_REASON_CD);
        let cd = d.cd();
        cd.abort_transfer();
        cd.sense = sense;
        self.set_irq();
    }
}

/// START STOP UNIT: with LoEj, Start=0 opens the tray (unless locked) and Start=1 closes it,
/// which loads the disc again: a new-media event and a medium-changed unit attention.
fn start_stop_unit(cd: &mut CdState, flags: u8) -> Result<(), Sense> {
    let (start, load_eject) = (flags & 0x01 != 0, flags & 0x02 != 0);
    if !load_eject {
        return Ok(()); // spinning up or down changes nothing visible
    }
    if !start && !cd.tray_open {
        if cd.locked {
            let mut sense = Sense::new(mmc::NOT_READY, mmc::ASC_MEDIA_REMOVAL_PREVENTED);
            sense.ascq = 0x02;
            return Err(sense);
        }
        cd.tray_open = true;
        cd.event = Some(mmc::MediaEvent::EjectRequest);
    } else if start && cd.tray_open {
        cd.tray_open = false;
        if cd.sectors > 0 {
            cd.event = Some(mmc::MediaEvent::NewMedia);
            cd.sense = Sense::new(mmc::UNIT_ATTENTION, mmc::ASC_MEDIUM_MAY_HAVE_CHANGED);
        }
    }
    Ok(())
}
