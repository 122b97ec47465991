//! Data commands: IDENTIFY, READ/WRITE SECTOR(S) and MULTIPLE (EXT), VERIFY, FLUSH, errors.

use super::*;

#[test]
fn identify_raises_one_irq_and_reports_capacity_and_multiple() {
    let mut r = Rig::new(SMALL);
    let w = r.identify();
    assert_eq!(r.irqs, 1);
    assert_eq!(w[0], 0x0040);
    assert_eq!(w[47], 0x8010);
    assert_eq!(w[49] & 0x0300, 0x0200, "LBA, no DMA");
    assert_eq!(w[59], 0x0110);
    assert_eq!(w[60] as u64 | (w[61] as u64) << 16, SMALL);
    assert_eq!(w[100] as u64 | (w[101] as u64) << 16, SMALL);
    assert_eq!(w[83] & 0x3400, 0x3400, "LBA48, FLUSH, FLUSH EXT");
    assert_eq!(w[85] & 0x20, 0x20, "write cache on");
    // After the last word: DRQ off, no further interrupt, data port reads zero.
    assert_eq!(r.status(), DRDY | DSC);
    assert_eq!(r.ch.data_read(2), 0);
    assert_eq!(r.irqs, 1);
}

#[test]
fn identify_reads_the_same_with_32_bit_accesses() {
    let mut r = Rig::new(SMALL);
    let words = r.identify();
    r.command(cmd::IDENTIFY);
    let mut bytes = Vec::new();
    for _ in 0..128 {
        bytes.extend_from_slice(&r.ch.data_read(4).to_le_bytes());
    }
    let again: Vec<u16> = bytes
        .chunks(2)
        .map(|w| u16::from_le_bytes([w[0], w[1]]))
        .collect();
    assert_eq!(words, again);
    assert_eq!(r.status(), DRDY | DSC);
}

#[test]
fn byte_reads_of_the_data_port_are_not_transfers() {
    let mut r = Rig::new(SMALL);
    r.command(cmd::IDENTIFY);
    assert_eq!(r.ch.data_read(1), 0xFF);
    assert_eq!(r.ch.data_read(2), 0x0040, "word 0 still next");
}

#[test]
fn read_sectors_interrupts_per_sector_and_advances_the_address() {
    let mut r = Rig::new(SMALL);
    r.lba28(100, 3);
    r.command(cmd::READ);
    for i in 0..3 {
        assert_eq!(r.irqs, i + 1);
        assert_eq!(r.status(), DRDY | DSC | DRQ);
        assert_eq!(r.rep_in(2, 512), pattern(100 + i as u64));
    }
    assert_eq!(r.irqs, 3);
    assert_eq!(r.status(), DRDY | DSC);
    assert_eq!(r.read(reg::LBA_LOW), 103);
    assert_eq!(r.read(reg::COUNT), 0);
    assert_eq!(
        r.disk.ops[0],
        BlockOp::Read {
            sector: 100,
            count: 1
        }
    );
}

#[test]
fn sector_count_zero_means_256_for_lba28() {
    let mut r = Rig::new(SMALL);
    r.lba28(0, 0);
    r.command(cmd::READ_MULTIPLE);
    assert_eq!(r.ch.drives[0].remaining, 256 - 16);
    for i in 0..16u64 {
        assert_eq!(r.status(), DRDY | DSC | DRQ);
        let block = r.rep_in(4, 16 * 512);
        assert_eq!(&block[..512], &pattern(i * 16)[..]);
    }
    assert_eq!(r.irqs, 16);
    assert_eq!(r.status(), DRDY | DSC);
}

#[test]
fn read_multiple_moves_blocks_with_a_short_last_block() {
    let mut r = Rig::new(SMALL);
    r.lba28(1000, 37);
    r.command(cmd::READ_MULTIPLE);
    let mut got = Vec::new();
    for (i, n) in [16, 16, 5].into_iter().enumerate() {
        assert_eq!(r.irqs, i as u32 + 1);
        assert_eq!(r.status(), DRDY | DSC | DRQ);
        // One rep insd larger than the block: the excess reads zero and moves nothing.
        let mut block = r.rep_in(4, 16 * 512 + 64);
        assert!(block[n * 512..].iter().all(|b| *b == 0));
        block.truncate(n * 512);
        got.extend(block);
    }
    let want: Vec<u8> = (1000..1037).flat_map(pattern).collect();
    assert_eq!(got, want);
    assert_eq!(r.status(), DRDY | DSC);
    assert_eq!(r.irqs, 3);
}

#[test]
fn write_sectors_gets_drq_without_irq_then_one_irq_per_sector() {
    let mut r = Rig::new(SMALL);
    r.lba28(7, 2);
    r.command(cmd::WRITE);
    assert_eq!(r.irqs, 0);
    assert_eq!(r.ch.alt_status_read(), DRDY | DSC | DRQ);
    r.rep_out(2, &[0x11; 512]);
    assert_eq!(r.irqs, 1);
    assert_eq!(r.status(), DRDY | DSC | DRQ);
    r.rep_out(4, &[0x22; 512]);
    assert_eq!(r.irqs, 2);
    assert_eq!(r.status(), DRDY | DSC);
    assert_eq!(r.disk.written[&7], vec![0x11; 512]);
    assert_eq!(r.disk.written[&8], vec![0x22; 512]);
    assert!(matches!(r.disk.ops[0], BlockOp::Write { fua: false, .. }));
}

#[test]
fn write_multiple_with_partial_last_block() {
    let mut r = Rig::new(SMALL);
    r.write(reg::COUNT, 4);
    r.command(cmd::SET_MULTIPLE);
    assert_eq!(r.status(), DRDY | DSC);
    r.lba28(50, 6);
    r.command(cmd::WRITE_MULTIPLE);
    assert_eq!(r.irqs, 1, "only SET MULTIPLE so far");
    let data: Vec<u8> = (0..6 * 512).map(|i| (i / 512 + 1) as u8).collect();
    r.rep_out(2, &data[..4 * 512]);
    assert_eq!(r.status(), DRDY | DSC | DRQ);
    r.rep_out(2, &data[4 * 512..]);
    assert_eq!(r.status(), DRDY | DSC);
    assert_eq!(r.irqs, 3);
    let sizes: Vec<usize> = r
        .disk
        .ops
        .iter()
        .map(|op| match op {
            BlockOp::Write { data, .. } => data.len() / 512,
            _ => 0,
        })
        .collect();
    assert_eq!(sizes, vec![4, 2]);
    assert_eq!(r.disk.written[&55], vec![6; 512]);
}

#[test]
fn set_multiple_accepts_powers_of_two_up_to_16_and_zero_disables() {
    let mut r = Rig::new(SMALL);
    for (n, ok) in [(8, true), (3, false), (32, false), (16, true), (0, true)] {
        r.write(reg::COUNT, n);
        r.command(cmd::SET_MULTIPLE);
        let want = if ok { DRDY | DSC } else { DRDY | ERR };
        assert_eq!(r.status(), want, "SET MULTIPLE {n}");
    }
    assert_eq!(r.identify()[59], 0, "multiple mode off");
    r.lba28(0, 1);
    r.command(cmd::READ_MULTIPLE);
    assert_eq!((r.status(), r.error()), (DRDY | ERR, ABRT));
    r.command(cmd::WRITE_MULTIPLE_EXT);
    assert_eq!((r.status(), r.error()), (DRDY | ERR, ABRT));
}

#[test]
fn lba48_reads_beyond_2_pow_28_with_hob_count() {
    let big = 1u64 << 30;
    let mut r = Rig::new(big);
    let lba = (1u64 << 28) + 0x12345;
    r.lba48(lba, 0x0102);
    r.command(cmd::READ_MULTIPLE_EXT);
    assert_eq!(r.ch.drives[0].remaining, 0x102 - 16);
    assert_eq!(r.rep_in(2, 16 * 512)[..512], pattern(lba)[..]);
    assert_eq!(
        r.disk.ops[0],
        BlockOp::Read {
            sector: lba,
            count: 16
        }
    );
    // The address registers advance past the block read ahead; HOB shows the high bytes.
    let next = lba + 32;
    r.control(HOB);
    assert_eq!(r.read(reg::LBA_LOW), (next >> 24) as u8);
    assert_eq!(r.read(reg::COUNT), 1, "HOB count as written");
    r.control(0);
    assert_eq!(r.read(reg::LBA_LOW), next as u8);
    assert_eq!(r.read(reg::LBA_MID), (next >> 8) as u8);
}

#[test]
fn lba48_count_zero_means_65536_and_ext_writes_land_high() {
    let mut r = Rig::new(1 << 30);
    r.lba48(5, 0);
    r.command(cmd::READ_EXT);
    assert_eq!(r.ch.drives[0].remaining, 65535);
    r.ch.reset();
    let lba = (1u64 << 29) + 3;
    r.lba48(lba, 1);
    r.command(cmd::WRITE_EXT);
    r.rep_out(2, &[0x5A; 512]);
    assert_eq!(r.status(), DRDY | DSC);
    assert_eq!(r.disk.written[&lba], vec![0x5A; 512]);
}

#[test]
fn out_of_range_commands_fail_with_idnf_before_any_transfer() {
    let mut r = Rig::new(SMALL);
    let cases: [(u64, u8, u8); 4] = [
        (SMALL, 1, cmd::READ),
        (SMALL - 1, 2, cmd::READ_MULTIPLE),
        (SMALL, 1, cmd::WRITE),
        (SMALL + 10, 1, cmd::VERIFY),
    ];
    for (lba, count, c) in cases {
        let irqs = r.irqs;
        r.lba28(lba, count);
        r.command(c);
        assert_eq!(r.irqs, irqs + 1);
        assert_eq!(
            (r.status(), r.error()),
            (DRDY | ERR, IDNF),
            "cmd {c:#x} lba {lba}"
        );
    }
    r.lba48(1 << 40, 1);
    r.command(cmd::READ_EXT);
    assert_eq!((r.status(), r.error()), (DRDY | ERR, IDNF));
    assert!(r.disk.ops.is_empty());
    // The last sector itself is fine, and VERIFY in range succeeds.
    r.lba28(SMALL - 1, 1);
    r.command(cmd::VERIFY);
    assert_eq!(r.status(), DRDY | DSC);
    r.command(cmd::READ);
    assert_eq!(r.rep_in(2, 512), pattern(SMALL - 1));
}

#[test]
fn address_registers_rewritten_mid_transfer_are_checked_again() {
    // A guest may rewrite the LBA registers between DRQ blocks: the next block's address is
    // checked against the drive again (a fuzz finding: a write at sector 257040 of 2048).
    let mut r = Rig::new(SMALL);
    r.lba28(SMALL - 2, 2);
    r.command(cmd::WRITE);
    r.rep_out(2, &[0x11; 512]);
    assert_eq!(r.status(), DRDY | DSC | DRQ);
    r.lba28(SMALL + 100, 1);
    r.rep_out(2, &[0x22; 512]);
    assert_eq!((r.status(), r.error()), (DRDY | ERR, IDNF));
    assert!(
        r.disk.written.keys().all(|&s| s < SMALL),
        "{:?}",
        r.disk.written.keys()
    );
}

#[test]
fn block_errors_report_unc_on_reads_and_abrt_on_writes_and_flushes() {
    let mut r = Rig::new(SMALL);
    r.disk.fail_next = true;
    r.lba28(3, 2);
    r.command(cmd::READ);
    assert_eq!(r.irqs, 1);
    assert_eq!((r.status(), r.error()), (DRDY | ERR, UNC));
    r.lba28(3, 1);
    r.command(cmd::WRITE);
    r.disk.fail_next = true;
    r.rep_out(2, &[1; 512]);
    assert_eq!((r.status(), r.error()), (DRDY | ERR, ABRT));
    r.disk.fail_next = true;
    r.command(cmd::FLUSH_CACHE);
    assert_eq!((r.status(), r.error()), (DRDY | ERR, ABRT));
    // The drive is usable again.
    r.command(cmd::FLUSH_CACHE);
    assert_eq!(r.status(), DRDY | DSC);
}

#[test]
fn writes_to_a_read_only_drive_abort() {
    let mut cfg = drive(SMALL);
    cfg.read_only = true;
    let mut r = Rig::with(Some(cfg), None);
    for c in [
        cmd::WRITE,
        cmd::WRITE_EXT,
        cmd::WRITE_MULTIPLE,
        cmd::WRITE_MULTIPLE_EXT,
    ] {
        r.lba28(0, 1);
        r.command(c);
        assert_eq!((r.status(), r.error()), (DRDY | ERR, ABRT));
    }
    r.command(cmd::READ);
    assert_eq!(r.status(), DRDY | DSC | DRQ);
}

#[test]
fn flush_stays_busy_until_the_request_completes() {
    let mut r = Rig::new(SMALL);
    r.auto = false;
    for c in [cmd::FLUSH_CACHE, cmd::FLUSH_CACHE_EXT] {
        let irqs = r.irqs;
        r.command(c);
        assert_eq!(r.status() & BSY, BSY);
        assert_eq!(r.irqs, irqs);
        r.release();
        assert_eq!(r.irqs, irqs + 1);
        assert_eq!(r.status(), DRDY | DSC);
    }
    assert_eq!(r.disk.ops, vec![BlockOp::Flush, BlockOp::Flush]);
}

#[test]
fn set_features_write_cache_and_transfer_mode() {
    let mut r = Rig::new(SMALL);
    let set = |r: &mut Rig, feature: u8, count: u8| {
        r.write(reg::ERROR_FEATURES, feature);
        r.write(reg::COUNT, count);
        r.command(cmd::SET_FEATURES);
        r.status()
    };
    assert_eq!(set(&mut r, 0x03, 0x0C), DRDY | DSC, "PIO4");
    assert_eq!(set(&mut r, 0x03, 0x45), DRDY | ERR, "UDMA5: no DMA here");
    assert_eq!(set(&mut r, 0x77, 0), DRDY | ERR, "unknown feature");
    assert_eq!(set(&mut r, 0x82, 0), DRDY | DSC, "cache off flushes");
    assert_eq!(r.disk.ops, vec![BlockOp::Flush]);
    assert_eq!(r.identify()[85] & 0x20, 0);
    r.lba28(1, 1);
    r.command(cmd::WRITE);
    r.rep_out(2, &[3; 512]);
    assert!(matches!(r.disk.ops[1], BlockOp::Write { fua: true, .. }));
    assert_eq!(set(&mut r, 0x02, 0), DRDY | DSC);
    assert_eq!(r.identify()[85] & 0x20, 0x20);
}

#[test]
fn chs_addressing_follows_initialize_device_parameters() {
    let mut r = Rig::new(SMALL);
    // Default geometry 16 heads x 63 sectors: C=1 H=2 S=5 is (1*16+2)*63+4.
    let chs_read = |r: &mut Rig, cyl: u16, head: u8, sect: u8| {
        r.write(reg::COUNT, 1);
        r.write(reg::LBA_LOW, sect);
        r.write(reg::LBA_MID, cyl as u8);
        r.write(reg::LBA_HIGH, (cyl >> 8) as u8);
        r.write(reg::DEVICE, 0xA0 | head);
        r.command(cmd::READ);
        r.status()
    };
    assert_eq!(chs_read(&mut r, 1, 2, 5), DRDY | DSC | DRQ);
    assert_eq!(r.rep_in(2, 512), pattern(18 * 63 + 4));
    assert_eq!(
        chs_read(&mut r, 0, 0, 0),
        DRDY | ERR,
        "sector 0 does not exist"
    );
    // 4 heads, 17 sectors per track.
    r.write(reg::COUNT, 17);
    r.write(reg::DEVICE, 0xA3);
    r.command(cmd::SPECIFY);
    assert_eq!(r.status(), DRDY | DSC);
    assert_eq!(chs_read(&mut r, 2, 1, 1), DRDY | DSC | DRQ);
    assert_eq!(r.rep_in(2, 512), pattern((2 * 4 + 1) * 17));
    let w = r.identify();
    assert_eq!((w[55], w[56]), (4, 17));
    assert_eq!((w[3], w[6]), (16, 63), "default geometry unchanged");
    r.write(reg::COUNT, 0);
    r.command(cmd::SPECIFY);
    assert_eq!(r.status(), DRDY | ERR);
}

#[test]
fn non_data_commands_complete_with_one_irq() {
    let mut r = Rig::new(SMALL);
    let cases = [
        (cmd::CHECK_POWER_MODE, DRDY | DSC),
        (cmd::STANDBY_NOW1, DRDY),
        (cmd::IDLE_IMMEDIATE, DRDY),
        (cmd::STANDBY, DRDY),
        (cmd::SET_IDLE1, DRDY),
        (cmd::SEEK, DRDY | DSC),
        (cmd::RECALIBRATE, DRDY | DSC),
    ];
    for (i, (c, status)) in cases.into_iter().enumerate() {
        r.command(c);
        assert_eq!(r.irqs, i as u32 + 1);
        assert_eq!(r.status(), status, "cmd {c:#x}");
    }
    r.command(cmd::CHECK_POWER_MODE);
    assert_eq!(r.read(reg::COUNT), 0xFF);
}

#[test]
fn unknown_commands_and_identify_packet_abort() {
    let mut r = Rig::new(SMALL);
    for c in [cmd::IDENTIFY_PACKET, 0xC8, 0x25, 0xB0, 0xFF, 0x00] {
        r.command(c);
        assert_eq!((r.status(), r.error()), (DRDY | ERR, ABRT), "cmd {c:#x}");
    }
    assert_eq!(r.irqs, 6);
}

/// The PIO command stream Linux's ata_piix sends (platform notes, section 1.3): polled probe
/// with nIEN, then interrupt-driven READ/WRITE MULTIPLE (EXT) with 32-bit transfers, the
/// interrupt handler reading Status once per interrupt.
#[test]
fn linux_libata_pio_sequence() {
    let mut r = Rig::new(1 << 20);
    r.control(0x0A);
    let w = r.identify();
    assert_eq!(w[59], 0x0110, "multi 16 valid: Linux uses C4/C5");
    r.write(reg::ERROR_FEATURES, 0x03);
    r.write(reg::COUNT, 0x0C);
    r.command(cmd::SET_FEATURES);
    assert_eq!(r.status(), DRDY | DSC);
    assert_eq!(r.identify()[64], 0x0003);
    r.control(0x08);
    let irqs = r.irqs;
    // 512 sectors = 32 blocks of 16: one interrupt each, status read by the handler.
    r.lba48(4096, 512);
    r.command(cmd::READ_MULTIPLE_EXT);
    for block in 0..32u64 {
        assert_eq!(r.irqs, irqs + block as u32 + 1);
        assert_eq!(r.status(), DRDY | DSC | DRQ);
        let data = r.rep_in(4, 16 * 512);
        assert_eq!(data[..512], pattern(4096 + 16 * block)[..]);
    }
    assert_eq!(r.ch.alt_status_read(), DRDY | DSC);
    // WRITE MULTIPLE: first block from the polling task, then one interrupt per block.
    let irqs = r.irqs;
    r.lba28(8192, 40);
    r.command(cmd::WRITE_MULTIPLE);
    for block in 0..3u32 {
        assert_eq!(r.ch.alt_status_read(), DRDY | DSC | DRQ);
        let n = if block == 2 { 8 } else { 16 };
        r.rep_out(4, &vec![block as u8 + 1; n * 512]);
        assert_eq!(r.irqs, irqs + block + 1);
        r.status();
    }
    assert_eq!(r.disk.written[&(8192 + 39)], vec![3; 512]);
    for c in [cmd::FLUSH_CACHE, cmd::STANDBY_NOW1] {
        r.command(c);
        assert_eq!(r.status() & (BSY | ERR | DRQ), 0);
    }
    assert_eq!(r.irqs, irqs + 5);
}
