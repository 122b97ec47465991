use super::*;
use crate::devices::TestIrq;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// 2026-11-22 02:59:30 UTC, a Sunday.
fn fixed_now() -> i64 {
    1_795_316_370
}

fn cmos() -> (Cmos, Arc<TestIrq>) {
    let irq = Arc::new(TestIrq::default());
    (Cmos::with_clock(irq.clone(), fixed_now), irq)
}

fn rd(c: &mut Cmos, reg: u8) -> u8 {
    c.write(0x70, 0, &[reg]);
    let mut b = [0u8];
    c.read(0x70, 1, &mut b);
    b[0]
}

fn wr(c: &mut Cmos, reg: u8, v: u8) {
    c.write(0x70, 0, &[reg]);
    c.write(0x70, 1, &[v]);
}

#[test]
fn calendar_conversions_round_trip() {
    let t = DateTime::from_unix(fixed_now());
    assert_eq!((t.year, t.month, t.mday), (2026, 11, 22));
    assert_eq!((t.hour, t.min, t.sec), (2, 59, 30));
    assert_eq!(t.wday, 1, "Sunday");
    assert_eq!(t.to_unix(), fixed_now());
    assert_eq!(DateTime::from_unix(951_782_400).mday, 29, "2000-02-29");
}

#[test]
fn time_reads_in_bcd_by_default_and_binary_when_asked() {
    let (mut c, _) = cmos();
    assert_eq!(rd(&mut c, 0x00), 0x30);
    assert_eq!(rd(&mut c, 0x02), 0x59);
    assert_eq!(rd(&mut c, 0x04), 0x02);
    assert_eq!(rd(&mut c, 0x07), 0x22);
    assert_eq!(rd(&mut c, 0x08), 0x11);
    assert_eq!(rd(&mut c, 0x09), 0x26);
    assert_eq!(rd(&mut c, 0x32), 0x20);
    wr(&mut c, 0x0B, B_24H | B_DM_BINARY);
    assert_eq!(rd(&mut c, 0x02), 59);
    wr(&mut c, 0x0B, 0);
    assert_eq!(rd(&mut c, 0x04), 0x02, "2 AM in 12-hour mode");
}

#[test]
fn setting_the_clock_moves_the_offset() {
    let (mut c, _) = cmos();
    wr(&mut c, 0x09, 0x30);
    assert_eq!(rd(&mut c, 0x09), 0x30);
    assert_eq!(rd(&mut c, 0x08), 0x11, "other fields keep running");
    wr(&mut c, 0x04, 0x13);
    assert_eq!(rd(&mut c, 0x04), 0x13);
}

#[test]
fn status_registers_power_on_values_and_uip_reads_clear() {
    let (mut c, _) = cmos();
    assert_eq!(rd(&mut c, 0x0A), 0x26);
    assert_eq!(rd(&mut c, 0x0B), 0x02);
    assert_eq!(rd(&mut c, 0x0D), 0x80);
    wr(&mut c, 0x0A, 0xA6);
    assert_eq!(rd(&mut c, 0x0A), 0x26);
    wr(&mut c, 0x0D, 0x00);
    assert_eq!(rd(&mut c, 0x0D), 0x80, "D is read-only");
}

#[test]
fn periodic_interrupt_sets_c_and_reading_c_lowers_irq8() {
    let (mut c, irq) = cmos();
    assert_eq!(c.periodic_period(), None);
    wr(&mut c, 0x0B, B_24H | B_PIE);
    assert_eq!(c.periodic_period(), Some(Duration::from_nanos(976_562)));
    c.periodic_tick();
    assert!(irq.level.load(Ordering::SeqCst));
    assert_eq!(rd(&mut c, 0x0C), C_IRQF | C_PF);
    assert!(!irq.level.load(Ordering::SeqCst));
    assert_eq!(rd(&mut c, 0x0C), 0, "C clears on read");
}

#[test]
fn memory_boot_order_and_cpu_registers() {
    let (mut c, _) = cmos();
    c.set_memory(16 << 20, 0);
    assert_eq!(
        rd(&mut c, 0x30) as u16 | (rd(&mut c, 0x31) as u16) << 8,
        15 * 1024
    );
    assert_eq!(rd(&mut c, 0x17), rd(&mut c, 0x30));
    c.set_memory(128 << 20, 0);
    assert_eq!(
        rd(&mut c, 0x34) as u16 | (rd(&mut c, 0x35) as u16) << 8,
        112 * 16
    );
    assert_eq!(rd(&mut c, 0x5B), 0);
    c.set_memory(0xC000_0000, 1 << 30);
    assert_eq!(
        rd(&mut c, 0x30),
        0xFF,
        "extended memory saturates at 0xFFFF KiB"
    );
    let high =
        rd(&mut c, 0x5B) as u32 | (rd(&mut c, 0x5C) as u32) << 8 | (rd(&mut c, 0x5D) as u32) << 16;
    assert_eq!(high, (1 << 30) >> 16);
    c.set_boot_order([2, 1, 3]);
    assert_eq!(rd(&mut c, 0x3D), 0x12);
    assert_eq!(rd(&mut c, 0x38), 0x30);
    c.set_cpus(1);
    assert_eq!(rd(&mut c, 0x5F), 0);
    wr(&mut c, 0x40, 0xAB);
    assert_eq!(rd(&mut c, 0x40), 0xAB, "plain CMOS RAM");
    assert_eq!(
        rd(&mut c, 0x80 | 0x40),
        0xAB,
        "bit 7 of the index is the NMI mask"
    );
}
