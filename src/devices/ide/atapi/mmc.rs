//! The MMC commands of a read-only CD/DVD drive, as pure functions from the drive's state and a
//! 12-byte command packet to reply bytes or sense data.
//!
//! QEMU's hw/ide/atapi.c (cmd_inquiry, cmd_read_capacity, cmd_mode_sense, cmd_read_toc_pma_atip,
//! cmd_get_configuration, cmd_get_event_status_notification, cmd_read_disc_information,
//! cmd_mechanism_status). The layouts are those of SPC-3 and MMC-5; every multi-byte field of
//! a packet or a reply is big-endian. Nothing here moves data or raises interrupts: the packet
//! protocol in [`super`] sends what these functions return, cut to the allocation length.

use super::{CdState, Sense, CD_SECTOR_SIZE};

/// Sense key: no error.
pub const NO_SENSE: u8 = 0x00;
/// Sense key: the medium is not accessible (no disc, tray open).
pub const NOT_READY: u8 = 0x02;
/// Sense key: a field of the packet is not acceptable.
pub const ILLEGAL_REQUEST: u8 = 0x05;
/// Sense key: the medium (or power state) changed since the host last looked.
pub const UNIT_ATTENTION: u8 = 0x06;

/// ASC: invalid command operation code.
pub const ASC_ILLEGAL_OPCODE: u8 = 0x20;
/// ASC: logical block address out of range.
pub const ASC_LOGICAL_BLOCK_OOR: u8 = 0x21;
/// ASC: invalid field in command packet.
pub const ASC_INV_FIELD_IN_CMD_PACKET: u8 = 0x24;
/// ASC: not ready to ready change, medium may have changed.
pub const ASC_MEDIUM_MAY_HAVE_CHANGED: u8 = 0x28;
/// ASC: saving parameters not supported.
pub const ASC_SAVING_PARAMETERS_NOT_SUPPORTED: u8 = 0x39;
/// ASC: medium not present.
pub const ASC_MEDIUM_NOT_PRESENT: u8 = 0x3A;
/// ASC: medium removal prevented (the host locked the tray).
pub const ASC_MEDIA_REMOVAL_PREVENTED: u8 = 0x53;

/// Largest capacity (2048-byte sectors) reported as a CD rather than a DVD: 80 minutes.
pub const CD_MAX_SECTORS: u64 = 80 * 60 * 75;

/// MMC profile: CD-ROM.
const PROFILE_CD_ROM: u16 = 0x0008;
/// MMC profile: DVD-ROM.
const PROFILE_DVD_ROM: u16 = 0x0010;

/// The operation codes this drive knows (MMC names, QEMU's GPCMD_* constants).
pub mod op {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// START STOP UNIT (spin, load and eject).
    pub const START_STOP_UNIT: u8 = 0x1B;
    /// PREVENT ALLOW MEDIUM REMOVAL.
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
    /// READ CAPACITY.
    pub const READ_CAPACITY: u8 = 0x25;
    /// READ(10).
    pub const READ_10: u8 = 0x28;
    /// READ TOC/PMA/ATIP.
    pub const READ_TOC_PMA_ATIP: u8 = 0x43;
    /// GET CONFIGURATION.
    pub const GET_CONFIGURATION: u8 = 0x46;
    /// GET EVENT STATUS NOTIFICATION.
    pub const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4A;
    /// READ DISC INFORMATION.
    pub const READ_DISC_INFORMATION: u8 = 0x51;
    /// MODE SENSE(10).
    pub const MODE_SENSE_10: u8 = 0x5A;
    /// READ(12).
    pub const READ_12: u8 = 0xA8;
    /// SET CD SPEED.
    pub const SET_CD_SPEED: u8 = 0xBB;
    /// MECHANISM STATUS.
    pub const MECHANISM_STATUS: u8 = 0xBD;
}

/// A big-endian 16-bit field of a packet.
pub fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

/// A big-endian 32-bit field of a packet.
pub fn be32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

fn invalid_field() -> Sense {
    Sense::new(ILLEGAL_REQUEST, ASC_INV_FIELD_IN_CMD_PACKET)
}

/// Fixed-format sense data (SPC-3 4.5.3), 18 bytes.
pub fn request_sense(sense: Sense) -> Vec<u8> {
    let mut buf = vec![0u8; 18];
    buf[0] = 0x70 | 0x80; // current error, the information field is valid
    buf[2] = sense.key;
    buf[7] = 10; // additional sense length
    buf[12] = sense.asc;
    buf[13] = sense.ascq;
    buf
}

/// Standard INQUIRY data: a removable CD/DVD device (peripheral type 5).
pub fn inquiry(p: &[u8]) -> Result<Vec<u8>, Sense> {
    if p[1] & 1 != 0 {
        return Err(invalid_field()); // vital product data pages are not offered
    }
    let mut buf = vec![0u8; 36];
    buf[0] = 0x05; // CD/DVD device
    buf[1] = 0x80; // removable medium
    buf[2] = 0x00; // no claimed SPC version (ATAPI devices report 0)
    buf[3] = 0x21; // ATAPI transport, response data format 2
    buf[4] = 36 - 5; // additional length
    buf[8..16].copy_from_slice(b"QEMU    ");
    buf[16..32].copy_from_slice(b"QEMU DVD-ROM    ");
    buf[32..36].copy_from_slice(b"2.5+");
    Ok(buf)
}

/// READ CAPACITY: the last logical block and the 2048-byte block length.
pub fn read_capacity(cd: &CdState) -> Vec<u8> {
    let last = cd.blocks().saturating_sub(1).min(u32::MAX as u64) as u32;
    let mut buf = last.to_be_bytes().to_vec();
    buf.extend_from_slice(&(CD_SECTOR_SIZE as u32).to_be_bytes());
    buf
}

/// MODE SENSE(10): the read error recovery page (0x01) and the capabilities page (0x2A).
pub fn mode_sense(cd: &CdState, p: &[u8]) -> Result<Vec<u8>, Sense> {
    let (control, page) = (p[2] >> 6, p[2] & 0x3F);
    match control {
        0 | 2 => {} // current and default values are the same
        3 => {
            return Err(Sense::new(
                ILLEGAL_REQUEST,
                ASC_SAVING_PARAMETERS_NOT_SUPPORTED,
            ))
        }
        _ => return Err(invalid_field()), // nothing is changeable
    }
    let mut buf = vec![0u8; 8];
    buf[2] = 0x70; // medium type: 120 mm disc (as QEMU reports)
    match page {
        0x01 => buf.extend_from_slice(&error_recovery_page()),
        0x2A => buf.extend_from_slice(&capabilities_page(cd)),
        0x3F => {
            buf.extend_from_slice(&error_recovery_page());
            buf.extend_from_slice(&capabilities_page(cd));
        }
        _ => return Err(invalid_field()),
    }
    let len = (buf.len() - 2) as u16;
    buf[..2].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// Page 0x01, read error recovery: retries only.
fn error_recovery_page() -> [u8; 8] {
    [0x01, 0x06, 0x00, 0x05, 0, 0, 0, 0]
}

/// Page 0x2A, CD/DVD capabilities and mechanical status.
fn capabilities_page(cd: &CdState) -> [u8; 28] {
    let mut pg = [0u8; 28];
    pg[0] = 0x2A;
    pg[1] = 0x1A; // page length
    pg[2] = 0x3B; // reads CD-R, CD-RW, DVD-ROM, DVD-R, DVD-RAM... (method 2 too)
    pg[4] = 0x71; // audio play, composite, digital ports, multi-session
    pg[5] = 0x60; // CD-DA commands, accurate stream
                  // Tray loading mechanism, eject, the lock jumper absent, lock state.
    pg[6] = 0x29 | if cd.locked { 0x02 } else { 0 };
    pg[8..10].copy_from_slice(&706u16.to_be_bytes()); // max speed, kB/s (4x)
    pg[10..12].copy_from_slice(&2u16.to_be_bytes()); // volume levels
    pg[12..14].copy_from_slice(&512u16.to_be_bytes()); // buffer, KiB
    pg[14..16].copy_from_slice(&706u16.to_be_bytes()); // current speed
    pg
}

/// LBA to the minute/second/frame address of a CD (75 frames a second, 2 s of lead-in).
fn lba_to_msf(lba: u64) -> [u8; 4] {
    let f = lba + 150;
    [0, (f / 75 / 60) as u8, (f / 75 % 60) as u8, (f % 75) as u8]
}

/// One track address in LBA or MSF form.
fn address(lba: u64, msf: bool) -> [u8; 4] {
    if msf {
        lba_to_msf(lba)
    } else {
        (lba as u32).to_be_bytes()
    }
}

/// READ TOC/PMA/ATIP: formats 0 (the TOC of one data track) and 1 (session information).
pub fn read_toc(cd: &CdState, p: &[u8]) -> Result<Vec<u8>, Sense> {
    let msf = p[1] & 0x02 != 0;
    let format = match p[2] & 0x0F {
        0 => p[9] >> 6, // older drivers put the format in the control byte
        f => f,
    };
    let start_track = p[6];
    let mut buf = vec![0u8; 4];
    match format {
        0 => {
            if start_track > 1 && start_track != 0xAA {
                return Err(invalid_field());
            }
            buf[2] = 1; // first track
            buf[3] = 1; // last track
            if start_track <= 1 {
                buf.extend_from_slice(&[0, 0x14, 1, 0]); // data track 1, ADR 1
                buf.extend_from_slice(&address(0, msf));
            }
            buf.extend_from_slice(&[0, 0x14, 0xAA, 0]); // lead-out
            buf.extend_from_slice(&address(cd.blocks(), msf));
        }
        1 => {
            buf[2] = 1; // first complete session
            buf[3] = 1; // last complete session
            buf.extend_from_slice(&[0, 0x14, 1, 0]);
            buf.extend_from_slice(&address(0, msf));
        }
        _ => return Err(invalid_field()), // raw TOC, PMA, ATIP: not for a pressed data disc
    }
    let len = (buf.len() - 2) as u16;
    buf[..2].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// GET CONFIGURATION: the profile list, core, morphing and removable medium features.
pub fn get_configuration(cd: &CdState, p: &[u8]) -> Result<Vec<u8>, Sense> {
    let (rt, start) = (p[1] & 0x03, be16(p, 2));
    if rt == 3 {
        return Err(invalid_field());
    }
    let current = match cd.blocks() {
        0 => 0,
        n if n > CD_MAX_SECTORS => PROFILE_DVD_ROM,
        _ => PROFILE_CD_ROM,
    };
    let mut buf = vec![0u8; 8];
    buf[6..8].copy_from_slice(&current.to_be_bytes());
    let mut profiles = vec![0x00, 0x00, 0x03, 8];
    for profile in [PROFILE_DVD_ROM, PROFILE_CD_ROM] {
        profiles.extend_from_slice(&profile.to_be_bytes());
        profiles.extend_from_slice(&[(profile == current) as u8, 0]);
    }
    let core = vec![0x00, 0x01, 0x0B, 8, 0, 0, 0, 2, 1, 0, 0, 0]; // ATAPI, DBE
    let morphing = vec![0x00, 0x02, 0x07, 4, 0x02, 0, 0, 0]; // asynchronous GESN
    let lock = if cd.locked { 0x01 } else { 0 };
    let removable = vec![0x00, 0x03, 0x03, 4, 0x29 | lock, 0, 0, 0];
    for feature in [profiles, core, morphing, removable] {
        let code = be16(&feature, 0);
        let wanted = match rt {
            2 => code == start,
            _ => code >= start,
        };
        if wanted {
            buf.extend_from_slice(&feature);
        }
    }
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// The media event a GET EVENT STATUS NOTIFICATION reports once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// The host asked for an eject (the tray opened).
    EjectRequest = 1,
    /// A medium was loaded.
    NewMedia = 2,
}

/// GET EVENT STATUS NOTIFICATION, polled: the media class only. Takes the pending event.
pub fn get_event_status(cd: &mut CdState, p: &[u8]) -> Result<Vec<u8>, Sense> {
    if p[1] & 1 == 0 {
        return Err(invalid_field()); // asynchronous notification is not supported
    }
    const MEDIA_CLASS: u8 = 1 << 4;
    let mut buf = vec![0u8; 4];
    buf[3] = MEDIA_CLASS; // supported classes
    if p[4] & MEDIA_CLASS == 0 {
        buf[2] = 0x80; // no event available
    } else {
        buf[2] = 0x04; // media class
        let event = cd.event.take().map_or(0, |e| e as u8);
        let status = (cd.medium_present() as u8) << 1 | cd.tray_open as u8;
        buf.extend_from_slice(&[event, status, 0, 0]);
    }
    let len = (buf.len() - 2) as u16;
    buf[..2].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// READ DISC INFORMATION (data type 0): one complete session with one track.
pub fn read_disc_information(p: &[u8]) -> Result<Vec<u8>, Sense> {
    if p[1] & 0x07 != 0 {
        return Err(invalid_field()); // track resources / POW resources
    }
    let mut buf = vec![0u8; 34];
    buf[..2].copy_from_slice(&32u16.to_be_bytes());
    buf[2] = 0x0E; // last session complete, disc finalized
    buf[3] = 1; // first track
    buf[4] = 1; // sessions
    buf[5] = 1; // first track of the last session
    buf[6] = 1; // last track of the last session
    buf[7] = 0x20; // unrestricted use
    Ok(buf)
}

/// MECHANISM STATUS: no changer, one slot, idle.
pub fn mechanism_status() -> Vec<u8> {
    let mut buf = vec![0u8; 8];
    buf[5] = 1; // slots
    buf
}
