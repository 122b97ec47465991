//! The PM function: configuration defaults, PM1 registers, the timer, S5 power-off, the SCI.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;
use crate::devices::TestIrq;

fn pm() -> (Piix4Pm, ResetRequest, Arc<TestIrq>) {
    let power = ResetRequest::default();
    let sci = Arc::new(TestIrq::default());
    (Piix4Pm::new(sci.clone(), power.clone()), power, sci)
}

fn read16(pm: &mut Piix4Pm, offset: u16) -> u16 {
    let mut b = [0u8; 2];
    pm.read(PM_BASE as u64, offset as u64, &mut b);
    u16::from_le_bytes(b)
}

fn read32(pm: &mut Piix4Pm, offset: u16) -> u32 {
    let mut b = [0u8; 4];
    pm.read(PM_BASE as u64, offset as u64, &mut b);
    u32::from_le_bytes(b)
}

fn write16(pm: &mut Piix4Pm, offset: u16, val: u16) {
    pm.write(PM_BASE as u64, offset as u64, &val.to_le_bytes());
}

#[test]
fn config_space_identifies_piix4_pm_decoding_at_0x600() {
    let (mut pm, _, _) = pm();
    let mut b = [0u8; 4];
    PciFunction::config_read(&mut pm, 0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x7113_8086);
    PciFunction::config_read(&mut pm, 0x40, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x601);
    // SeaBIOS writes the same base; the I/O space bit stays.
    PciFunction::config_write(&mut pm, 0x40, &0x600u32.to_le_bytes());
    PciFunction::config_read(&mut pm, 0x40, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x601);
    assert_eq!(read16(&mut pm, PM1_CNT), SCI_EN);
    PciFunction::config_read(&mut pm, 0x58, &mut b);
    assert_eq!(
        u32::from_le_bytes(b) & 1 << 25,
        1 << 25,
        "APMC_EN: no SMM to set up"
    );
    // Decode off: the block reads as absent and ignores writes.
    PciFunction::config_write(&mut pm, 0x80, &[0]);
    assert_eq!(read16(&mut pm, PM1_CNT), 0xFFFF);
}

#[test]
fn s5_with_slp_en_powers_off_other_writes_do_not() {
    let (mut pm, power, _) = pm();
    write16(&mut pm, PM1_CNT, SCI_EN | 1 << 10); // SLP_TYP 1 without SLP_EN
    assert!(!power.power_off_requested());
    assert_eq!(read16(&mut pm, PM1_CNT), SCI_EN | 1 << 10);
    write16(&mut pm, PM1_CNT, SCI_EN | 5 << 10 | SLP_EN); // another sleep type
    assert!(!power.power_off_requested());
    write16(&mut pm, PM1_CNT, SLP_TYP_S5 << 10 | SLP_EN);
    assert!(power.power_off_requested());
    assert_eq!(read16(&mut pm, PM1_CNT) & SLP_EN, 0, "SLP_EN reads 0");
    // A byte write of the high half works too.
    let (mut pm, power, _) = self::pm();
    pm.write(PM_BASE as u64, (PM1_CNT + 1) as u64, &[(SLP_EN >> 8) as u8]);
    assert!(power.power_off_requested());
}

#[test]
fn the_timer_runs_at_3_58_mhz_in_24_bits() {
    let (mut pm, _, _) = pm();
    let t0 = read32(&mut pm, PM_TMR);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let t1 = read32(&mut pm, PM_TMR);
    let delta = t1.wrapping_sub(t0) & 0xFF_FFFF;
    assert!((70_000..400_000).contains(&delta), "{delta} ticks in 20 ms");
    assert!(t1 < 1 << 24);
    assert_eq!(read32(&mut pm, PM_TMR) >> 24, 0);
}

#[test]
fn status_bits_clear_by_writing_one_and_drive_the_sci_with_enables() {
    let (mut pm, _, sci) = pm();
    pm.pm1_sts = PWRBTN_STS | WAK_STS;
    write16(&mut pm, 2, PWRBTN_STS);
    assert!(
        sci.level.load(Ordering::SeqCst),
        "enabled status raises the SCI"
    );
    write16(&mut pm, PM1_EVT, WAK_STS);
    assert_eq!(read16(&mut pm, PM1_EVT) & !TMR_STS, PWRBTN_STS);
    write16(&mut pm, PM1_EVT, PWRBTN_STS);
    assert_eq!(read16(&mut pm, PM1_EVT) & !TMR_STS, 0);
    assert!(!sci.level.load(Ordering::SeqCst));
}
