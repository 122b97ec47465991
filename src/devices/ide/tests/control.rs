//! Channel control: software reset, nIEN, HOB readback, device selection, busy rules.

use super::*;

#[test]
fn power_on_shows_the_ata_signature() {
    let mut r = Rig::new(SMALL);
    assert_eq!(r.status(), DRDY | DSC);
    assert_eq!(r.error(), 0x01);
    let sig: Vec<u8> = (2..=5).map(|reg| r.read(reg)).collect();
    assert_eq!(sig, vec![1, 1, 0, 0]);
    assert_eq!(r.read(reg::DEVICE), 0xA0);
}

#[test]
fn software_reset_aborts_a_transfer_and_restores_the_signature() {
    let mut r = Rig::new(SMALL);
    r.lba28(9, 4);
    r.write(reg::DEVICE, 0xF0); // select the (absent) slave
    r.write(reg::DEVICE, 0xE0);
    r.command(cmd::READ);
    assert_eq!(r.status(), DRDY | DSC | DRQ);
    r.control(NIEN | SRST);
    assert_eq!(r.ch.alt_status_read() & BSY, BSY);
    r.control(NIEN);
    assert_eq!(r.status(), DRDY | DSC);
    assert_eq!(r.error(), 0x01);
    let sig: Vec<u8> = (2..=5).map(|reg| r.read(reg)).collect();
    assert_eq!(sig, vec![1, 1, 0, 0]);
    assert_eq!(r.ch.data_read(2), 0, "transfer gone");
    assert_eq!(r.ch.drives[0].mult_sectors, 16);
    assert_eq!(r.irqs, 1, "the read's IRQ only; reset raises none");
}

#[test]
fn software_reset_selects_device_0() {
    let mut r = Rig::with(Some(drive(SMALL)), Some(drive(SMALL)));
    r.write(reg::DEVICE, 0xB0);
    assert_eq!(r.ch.unit, 1);
    r.control(SRST);
    r.control(0);
    assert_eq!(r.ch.unit, 0);
    assert_eq!(r.read(reg::DEVICE), 0xA0);
}

#[test]
fn software_reset_waits_for_the_request_in_flight() {
    let mut r = Rig::new(SMALL);
    r.auto = false;
    r.lba28(0, 1);
    r.command(cmd::READ);
    assert_eq!(r.held.len(), 1);
    r.control(SRST);
    r.control(0);
    assert_eq!(r.status() & BSY, BSY, "busy until the request is back");
    r.release();
    assert_eq!(r.status(), DRDY | DSC);
    assert_eq!(r.read(reg::COUNT), 1);
    assert_eq!(r.ch.data_read(2), 0, "the late data is not offered");
    assert_eq!(r.irqs, 0);
}

#[test]
fn completions_from_before_a_hardware_reset_are_ignored() {
    let mut r = Rig::new(SMALL);
    r.auto = false;
    r.lba28(0, 1);
    r.command(cmd::READ);
    r.ch.reset();
    r.release();
    assert_eq!(r.status(), DRDY | DSC);
    assert_eq!(r.irqs, 0);
}

#[test]
fn nien_masks_the_line_but_keeps_the_interrupt_pending() {
    let mut r = Rig::new(SMALL);
    r.control(NIEN);
    r.command(cmd::CHECK_POWER_MODE);
    assert!(!r.ch.irq_level());
    assert_eq!(r.irqs, 0);
    r.control(0);
    assert!(r.ch.irq_level(), "pending interrupt shows once unmasked");
    assert_eq!(r.irqs, 1);
    assert_eq!(r.ch.alt_status_read(), DRDY | DSC);
    assert!(r.ch.irq_level(), "alternate status does not acknowledge");
    r.status();
    assert!(!r.ch.irq_level());
    // Polled use, as SeaBIOS does: nIEN set, status read, nIEN cleared: no interrupt.
    r.control(NIEN);
    r.command(cmd::CHECK_POWER_MODE);
    r.status();
    r.control(0);
    assert!(!r.ch.irq_level());
    // Writing a command acknowledges a pending interrupt too.
    r.command(cmd::SEEK);
    assert!(r.ch.irq_level());
    r.lba28(0, 1);
    r.command(cmd::WRITE);
    assert!(!r.ch.irq_level());
}

#[test]
fn hob_reads_the_previous_register_values_until_a_register_write() {
    let mut r = Rig::new(SMALL);
    for (reg, (old, new)) in [
        (2u8, (0x12, 0x34)),
        (3, (0x56, 0x78)),
        (4, (0x9A, 0xBC)),
        (5, (0xDE, 0xF0)),
    ] {
        r.write(reg, old);
        r.write(reg, new);
    }
    r.write(reg::ERROR_FEATURES, 0x11);
    r.write(reg::ERROR_FEATURES, 0x22);
    r.control(HOB);
    let hob: Vec<u8> = (1..=5).map(|reg| r.read(reg)).collect();
    assert_eq!(hob, vec![0x11, 0x12, 0x56, 0x9A, 0xDE]);
    r.write(reg::DEVICE, 0xE0);
    assert_eq!(
        r.read(reg::COUNT),
        0x34,
        "a register write ends HOB readback"
    );
}

#[test]
fn an_absent_slave_reads_zero_and_ignores_commands() {
    let mut r = Rig::new(SMALL);
    r.write(reg::DEVICE, 0xB0);
    assert_eq!(r.status(), 0);
    assert_eq!(r.ch.alt_status_read(), 0);
    assert_eq!(r.error(), 0);
    r.write(reg::COUNT, 0x55);
    assert_eq!(r.read(reg::COUNT), 0x55, "a latch, as on QEMU");
    r.command(cmd::IDENTIFY);
    assert_eq!(r.irqs, 0);
    r.write(reg::DEVICE, 0xA0);
    assert_eq!(r.read(reg::COUNT), 0x55, "the master latched the write");
    assert_eq!(r.status(), DRDY | DSC);
}

#[test]
fn a_channel_without_drives_floats_to_zero() {
    let mut r = Rig::with(None, None);
    assert_eq!(r.status(), 0);
    r.write(reg::DEVICE, 0xA0);
    assert_eq!(r.read(reg::DEVICE), 0);
    r.command(cmd::IDENTIFY);
    assert_eq!(r.ch.drives[0].error, ABRT);
}

#[test]
fn the_slave_drive_works_independently() {
    let mut slave = drive(SMALL);
    slave.info.serial = "SLAVE".into();
    let mut r = Rig::with(Some(drive(SMALL)), Some(slave));
    r.write(reg::DEVICE, 0xB0);
    let w = r.identify();
    assert_eq!(w[10], u16::from_be_bytes(*b"SL"));
    r.write(reg::DEVICE, 0xA0);
    assert_eq!(r.identify()[10], u16::from_be_bytes(*b"QM"));
}

#[test]
fn commands_are_ignored_while_busy_or_in_a_transfer() {
    let mut r = Rig::new(SMALL);
    r.auto = false;
    r.command(cmd::FLUSH_CACHE);
    r.command(cmd::CHECK_POWER_MODE);
    assert_eq!(r.held.len(), 1);
    r.release();
    r.auto = true;
    r.lba28(0, 1);
    r.command(cmd::WRITE);
    r.command(cmd::READ);
    assert_eq!(r.status(), DRDY | DSC | DRQ);
    assert!(r.disk.ops.len() == 1, "only the flush ran");
    // Data reads during a data-out transfer read zero and do not move.
    assert_eq!(r.ch.data_read(2), 0);
    r.rep_out(2, &[9; 512]);
    assert_eq!(r.status(), DRDY | DSC);
}

#[test]
fn execute_device_diagnostic_sets_the_signature() {
    let mut r = Rig::new(SMALL);
    r.lba28(0x123456, 9);
    r.command(cmd::DIAGNOSE);
    assert_eq!(r.irqs, 1);
    assert_eq!(r.status(), DRDY | DSC);
    assert_eq!(r.error(), 0x01);
    let sig: Vec<u8> = (2..=5).map(|reg| r.read(reg)).collect();
    assert_eq!(sig, vec![1, 1, 0, 0]);
}

#[test]
fn an_immediate_command_after_an_unacknowledged_irq_gives_a_fresh_edge() {
    let mut r = Rig::new(SMALL);
    r.ch.ioport_write(reg::STATUS_COMMAND, cmd::SEEK);
    assert_eq!(r.ch.irq_update(), &[true]);
    r.ch.ioport_write(reg::STATUS_COMMAND, cmd::SEEK);
    assert_eq!(r.ch.irq_update(), &[false, true]);
    r.ch.ioport_read(reg::STATUS_COMMAND);
    assert_eq!(r.ch.irq_update(), &[false]);
    assert_eq!(r.ch.irq_update(), &[] as &[bool]);
}

#[test]
fn interrupt_edges_are_traced_as_ide_bus_set_irq() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("trace.log");
    let arg = format!("ide_bus_set_irq,file={}", log.display());
    assert_eq!(block::trace::configure(&arg), Ok(None));
    let mut r = Rig::new(SMALL);
    r.ch.ioport_write(reg::STATUS_COMMAND, cmd::SEEK);
    r.ch.irq_update();
    r.ch.ioport_write(reg::STATUS_COMMAND, cmd::SEEK);
    r.ch.irq_update();
    // Other tests of this process may trace their own channels: keep this one's lines.
    let bus = format!("bus {:p} ", &r.ch);
    let levels: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(":ide_bus_set_irq ") && l.contains(&bus))
        .map(|l| l.rsplit(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(levels, ["1", "0", "1"]);
}
