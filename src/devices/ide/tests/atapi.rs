//! The ATAPI CD-ROM: signature and identification, the PACKET protocol with its byte count
//! limits, each MMC command, sense data and the tray.

use super::super::atapi::mmc::{self, op};
use super::super::atapi::{ATAPI_INT_REASON_CD, ATAPI_INT_REASON_IO, WIN_PACKETCMD};
use super::*;

/// 2048-byte sectors on the test disc.
const CD_BLOCKS: u64 = 300;

fn cdrom(sectors: u64) -> DriveConfig {
    DriveConfig {
        kind: DriveKind::Cdrom,
        info: DriveInfo::qemu_cdrom(sectors, 2),
        read_only: true,
        write_cache: false,
    }
}

/// What one packet command did.
struct Reply {
    data: Vec<u8>,
    /// Byte counts of the DRQ blocks, as announced in LBA mid/high.
    blocks: Vec<usize>,
    status: u8,
    error: u8,
    reason: u8,
}

impl Rig {
    fn cd() -> Rig {
        Rig::with(Some(cdrom(CD_BLOCKS * 4)), None)
    }

    /// Sends `packet` with byte count limit `bcl` and reads every DRQ block as a host does.
    fn packet(&mut self, packet: &[u8], bcl: u16) -> Reply {
        let mut p = [0u8; 12];
        p[..packet.len()].copy_from_slice(packet);
        self.write(reg::ERROR_FEATURES, 0);
        self.write(reg::LBA_MID, bcl as u8);
        self.write(reg::LBA_HIGH, (bcl >> 8) as u8);
        self.command(WIN_PACKETCMD);
        assert_eq!(self.ch.alt_status_read() & (DRQ | BSY), DRQ, "packet DRQ");
        assert_eq!(self.read(reg::COUNT) & 3, ATAPI_INT_REASON_CD);
        let irqs = self.irqs;
        self.rep_out(2, &p);
        let (mut data, mut blocks) = (Vec::new(), Vec::new());
        while self.ch.alt_status_read() & DRQ != 0 {
            assert_eq!(self.read(reg::COUNT) & 3, ATAPI_INT_REASON_IO);
            let n = self.read(reg::LBA_MID) as usize | (self.read(reg::LBA_HIGH) as usize) << 8;
            assert!(
                n <= bcl as usize && n > 0,
                "block of {n} bytes, limit {bcl}"
            );
            blocks.push(n);
            self.status(); // acknowledge the block's interrupt
                           // Whole words: an odd count ends in a pad byte.
            let mut words = self.rep_in(2, n.div_ceil(2) * 2);
            words.truncate(n);
            data.extend(words);
        }
        assert!(self.irqs > irqs, "an interrupt ends the command");
        let reason = self.read(reg::COUNT) & 3;
        let error = self.error();
        Reply {
            data,
            blocks,
            status: self.status(),
            error,
            reason,
        }
    }

    fn sense(&mut self) -> (u8, u8) {
        let r = self.packet(&[op::REQUEST_SENSE, 0, 0, 0, 18], 0xFFFE);
        assert_eq!(r.data.len(), 18);
        assert_eq!(r.data[0], 0xF0);
        (r.data[2], r.data[12])
    }
}

fn ok(r: &Reply) {
    assert_eq!(r.status & (ERR | BSY | DRQ), 0, "status {:#x}", r.status);
    assert_eq!(r.status & DRDY, DRDY);
    assert_eq!(r.reason, ATAPI_INT_REASON_IO | ATAPI_INT_REASON_CD);
}

fn check_condition(r: &Reply, key: u8) {
    assert_eq!(r.status & ERR, ERR);
    assert_eq!(r.error >> 4, key);
    assert_eq!(r.reason, ATAPI_INT_REASON_IO | ATAPI_INT_REASON_CD);
}

fn read10(lba: u32, count: u16) -> Vec<u8> {
    let mut p = vec![op::READ_10, 0];
    p.extend_from_slice(&lba.to_be_bytes());
    p.push(0);
    p.extend_from_slice(&count.to_be_bytes());
    p
}

fn cd_sector(lba: u64) -> Vec<u8> {
    (lba * 4..lba * 4 + 4).flat_map(pattern).collect()
}

#[test]
fn a_packet_device_shows_the_atapi_signature_and_identifies_only_by_packet() {
    let mut rig = Rig::cd();
    assert_eq!(rig.read(reg::LBA_MID), 0x14);
    assert_eq!(rig.read(reg::LBA_HIGH), 0xEB);
    assert_eq!(rig.read(reg::COUNT), 1);
    assert_eq!(rig.status(), 0, "no DRDY: not a disk");
    rig.command(cmd::IDENTIFY);
    assert_eq!(rig.status(), DRDY | ERR);
    assert_eq!(rig.error(), ABRT);
    assert_eq!(
        (rig.read(reg::LBA_MID), rig.read(reg::LBA_HIGH)),
        (0x14, 0xEB)
    );
    rig.command(cmd::IDENTIFY_PACKET);
    assert_eq!(rig.status(), DRDY | DSC | DRQ);
    let page = rig.rep_in(2, 512);
    assert_eq!(u16::from_le_bytes([page[0], page[1]]), 0x85C0);
    assert_eq!(&page[54..66], b"EQUMD DVR-MO");
    assert_eq!(u16::from_le_bytes([page[164], page[165]]) & 0x10, 0x10);
    // Disk commands abort; a disk aborts PACKET.
    rig.lba28(0, 1);
    rig.command(cmd::READ);
    assert_eq!(rig.status(), DRDY | ERR);
    let mut disk = Rig::new(SMALL);
    disk.command(WIN_PACKETCMD);
    assert_eq!(disk.status(), DRDY | ERR);
    // DEVICE RESET: the signature, status 0, no interrupt.
    rig.write(reg::LBA_MID, 0);
    let irqs = rig.irqs;
    rig.command(super::super::atapi::WIN_DEVICE_RESET);
    assert_eq!(rig.irqs, irqs);
    assert_eq!(rig.status(), 0);
    assert_eq!((rig.read(reg::LBA_MID), rig.error()), (0x14, 0x01));
    // A software reset brings the signature back.
    rig.control(SRST);
    rig.control(0);
    assert_eq!(
        (rig.read(reg::LBA_MID), rig.read(reg::LBA_HIGH)),
        (0x14, 0xEB)
    );
}

#[test]
fn inquiry_and_read_capacity_describe_the_drive_and_disc() {
    let mut rig = Rig::cd();
    let r = rig.packet(&[op::INQUIRY, 0, 0, 0, 36], 0xFFFE);
    ok(&r);
    assert_eq!(r.data.len(), 36);
    assert_eq!(&r.data[..2], &[0x05, 0x80]);
    assert_eq!(&r.data[8..32], b"QEMU    QEMU DVD-ROM    ");
    // The allocation length cuts the reply.
    assert_eq!(rig.packet(&[op::INQUIRY, 0, 0, 0, 5], 0xFFFE).data.len(), 5);
    let r = rig.packet(&[op::READ_CAPACITY], 0xFFFE);
    ok(&r);
    assert_eq!(mmc::be32(&r.data, 0) as u64, CD_BLOCKS - 1);
    assert_eq!(mmc::be32(&r.data, 4), 2048);
    ok(&rig.packet(&[op::TEST_UNIT_READY], 0));
    ok(&rig.packet(&[op::SET_CD_SPEED, 0, 0xFF, 0xFF], 0));
}

#[test]
fn reads_move_2048_byte_sectors_within_the_byte_count_limit() {
    let mut rig = Rig::cd();
    // SeaBIOS's limit: one sector per DRQ block.
    let r = rig.packet(&read10(5, 3), 2048);
    ok(&r);
    assert_eq!(r.blocks, vec![2048; 3]);
    assert_eq!(r.data, (5..8).flat_map(cd_sector).collect::<Vec<_>>());
    // A large limit: a block holds what one request read (four sectors), 0xFFFF acts even.
    let r = rig.packet(&read10(10, 6), 0xFFFF);
    ok(&r);
    assert_eq!(r.blocks, vec![8192, 4096]);
    assert_eq!(r.data, (10..16).flat_map(cd_sector).collect::<Vec<_>>());
    // An odd small limit: even blocks, none crossing what the buffer holds.
    let r = rig.packet(&read10(CD_BLOCKS as u32 - 1, 1), 1001);
    ok(&r);
    assert_eq!(r.blocks, vec![1000, 1000, 48]);
    assert_eq!(r.data, cd_sector(CD_BLOCKS - 1));
    // READ(12), and a count of zero moves nothing.
    let mut p = vec![op::READ_12, 0, 0, 0, 0, 7, 0, 0, 0, 2];
    p.resize(12, 0);
    assert_eq!(
        rig.packet(&p, 0xFFFE).data,
        (7..9).flat_map(cd_sector).collect::<Vec<_>>()
    );
    let r = rig.packet(&read10(0, 0), 0xFFFE);
    ok(&r);
    assert!(r.data.is_empty());
    // Every block request asked for whole CD sectors.
    assert!(rig.disk.ops.iter().all(|o| matches!(o,
        BlockOp::Read { sector, count } if sector % 4 == 0 && count % 4 == 0)));
}

#[test]
fn out_of_range_reads_fail_with_sense_data_request_sense_reports() {
    let mut rig = Rig::cd();
    let r = rig.packet(&read10(CD_BLOCKS as u32 - 1, 2), 2048);
    check_condition(&r, mmc::ILLEGAL_REQUEST);
    assert!(r.data.is_empty());
    assert_eq!(
        rig.sense(),
        (mmc::ILLEGAL_REQUEST, mmc::ASC_LOGICAL_BLOCK_OOR)
    );
    // Reported once: the next REQUEST SENSE finds nothing.
    assert_eq!(rig.sense(), (mmc::NO_SENSE, 0));
    // An unknown opcode and a zero byte count limit.
    check_condition(&rig.packet(&[0xFF], 0xFFFE), mmc::ILLEGAL_REQUEST);
    assert_eq!(rig.sense(), (mmc::ILLEGAL_REQUEST, mmc::ASC_ILLEGAL_OPCODE));
    let r = rig.packet(&read10(0, 1), 0);
    check_condition(&r, mmc::ILLEGAL_REQUEST);
    // A failed block read is a medium error.
    rig.disk.fail_next = true;
    check_condition(&rig.packet(&read10(0, 1), 2048), 0x03);
}

#[test]
fn eject_empties_the_drive_and_loading_raises_a_unit_attention() {
    let mut rig = Rig::cd();
    // Locked: the eject is refused.
    ok(&rig.packet(&[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1], 0));
    let r = rig.packet(&[op::START_STOP_UNIT, 0, 0, 0, 0x02], 0);
    check_condition(&r, mmc::NOT_READY);
    assert_eq!(
        rig.sense(),
        (mmc::NOT_READY, mmc::ASC_MEDIA_REMOVAL_PREVENTED)
    );
    ok(&rig.packet(&[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0], 0));
    ok(&rig.packet(&[op::START_STOP_UNIT, 0, 0, 0, 0x02], 0));
    // No medium: the commands that need one fail NOT READY / MEDIUM NOT PRESENT.
    for p in [
        vec![op::TEST_UNIT_READY],
        vec![op::READ_CAPACITY],
        read10(0, 1),
    ] {
        check_condition(&rig.packet(&p, 2048), mmc::NOT_READY);
        assert_eq!(rig.sense(), (mmc::NOT_READY, mmc::ASC_MEDIUM_NOT_PRESENT));
    }
    let gesn = [op::GET_EVENT_STATUS_NOTIFICATION, 1, 0, 0, 0x10, 0, 0, 0, 8];
    let r = rig.packet(&gesn, 0xFFFE);
    assert_eq!(
        &r.data[2..6],
        &[0x04, 0x10, 1, 0x01],
        "eject request, tray open"
    );
    // Loading: a new-media event, then one unit attention for the commands that use the
    // medium; INQUIRY passes through it.
    ok(&rig.packet(&[op::START_STOP_UNIT, 0, 0, 0, 0x03], 0));
    let r = rig.packet(&gesn, 0xFFFE);
    assert_eq!(&r.data[2..6], &[0x04, 0x10, 2, 0x02], "new media, present");
    ok(&rig.packet(&[op::INQUIRY, 0, 0, 0, 36], 0xFFFE));
    check_condition(&rig.packet(&[op::TEST_UNIT_READY], 0), mmc::UNIT_ATTENTION);
    assert_eq!(
        rig.sense(),
        (mmc::UNIT_ATTENTION, mmc::ASC_MEDIUM_MAY_HAVE_CHANGED)
    );
    ok(&rig.packet(&[op::TEST_UNIT_READY], 0));
    let r = rig.packet(&gesn, 0xFFFE);
    assert_eq!(&r.data[2..6], &[0x04, 0x10, 0, 0x02], "no event");
    // Not polled: refused.
    check_condition(
        &rig.packet(
            &[op::GET_EVENT_STATUS_NOTIFICATION, 0, 0, 0, 0x10, 0, 0, 0, 8],
            0xFFFE,
        ),
        mmc::ILLEGAL_REQUEST,
    );
}

#[test]
fn mode_sense_toc_configuration_disc_information_and_mechanism_status() {
    let mut rig = Rig::cd();
    let r = rig.packet(&[op::MODE_SENSE_10, 0, 0x2A, 0, 0, 0, 0, 0, 64], 0xFFFE);
    ok(&r);
    assert_eq!(mmc::be16(&r.data, 0) as usize, r.data.len() - 2);
    assert_eq!(&r.data[8..10], &[0x2A, 0x1A]);
    let all = rig.packet(&[op::MODE_SENSE_10, 0, 0x3F, 0, 0, 0, 0, 0, 255], 0xFFFE);
    assert_eq!(all.data.len(), 8 + 8 + 28);
    let saved = rig.packet(&[op::MODE_SENSE_10, 0, 0xEA, 0, 0, 0, 0, 0, 64], 0xFFFE);
    check_condition(&saved, mmc::ILLEGAL_REQUEST);
    assert_eq!(rig.sense().1, mmc::ASC_SAVING_PARAMETERS_NOT_SUPPORTED);
    check_condition(
        &rig.packet(&[op::MODE_SENSE_10, 0, 0x05, 0, 0, 0, 0, 0, 64], 0xFFFE),
        mmc::ILLEGAL_REQUEST,
    );
    // TOC: track 1 at LBA 0, the lead-out at the capacity; MSF adds the 2 s lead-in.
    let r = rig.packet(&[op::READ_TOC_PMA_ATIP, 0, 0, 0, 0, 0, 1, 0, 100], 0xFFFE);
    ok(&r);
    assert_eq!(r.data.len(), 20);
    assert_eq!(&r.data[2..4], &[1, 1]);
    assert_eq!((r.data[6], mmc::be32(&r.data, 8)), (1, 0));
    assert_eq!(
        (r.data[14], mmc::be32(&r.data, 16) as u64),
        (0xAA, CD_BLOCKS)
    );
    let r = rig.packet(
        &[op::READ_TOC_PMA_ATIP, 0x02, 0, 0, 0, 0, 1, 0, 100],
        0xFFFE,
    );
    assert_eq!(&r.data[8..12], &[0, 0, 2, 0]);
    let r = rig.packet(&[op::READ_TOC_PMA_ATIP, 0, 1, 0, 0, 0, 0, 0, 12], 0xFFFE);
    assert_eq!(r.data.len(), 12);
    check_condition(
        &rig.packet(&[op::READ_TOC_PMA_ATIP, 0, 0, 0, 0, 0, 2, 0, 100], 0xFFFE),
        mmc::ILLEGAL_REQUEST,
    );
    // Configuration: the CD-ROM profile is current.
    let r = rig.packet(&[op::GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 1, 0], 0xFFFE);
    ok(&r);
    assert_eq!(mmc::be32(&r.data, 0) as usize, r.data.len() - 4);
    assert_eq!(mmc::be16(&r.data, 6), 0x0008);
    let one = rig.packet(&[op::GET_CONFIGURATION, 2, 0, 3, 0, 0, 0, 1, 0], 0xFFFE);
    assert_eq!(one.data.len(), 8 + 8);
    assert_eq!(mmc::be16(&one.data, 8), 0x0003);
    // Disc information and mechanism status.
    let r = rig.packet(
        &[op::READ_DISC_INFORMATION, 0, 0, 0, 0, 0, 0, 0, 34],
        0xFFFE,
    );
    ok(&r);
    assert_eq!((r.data.len(), r.data[2]), (34, 0x0E));
    let r = rig.packet(&[op::MECHANISM_STATUS, 0, 0, 0, 0, 0, 0, 0, 0, 8], 0xFFFE);
    ok(&r);
    assert_eq!(r.data, vec![0, 0, 0, 0, 0, 1, 0, 0]);
}
