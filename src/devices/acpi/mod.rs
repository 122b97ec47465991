//! The PIIX4 power management function (PCI 00:01.3, 8086:7113): the ACPI fixed hardware of
//! the `pc` machine, so that an OS can power it off (S5) the way the FADT and DSDT describe.
//!
//! QEMU's hw/acpi/piix4.c and hw/acpi/core.c (acpi_pm1_evt_*, acpi_pm1_cnt_write,
//! acpi_pm_tmr_*). Configuration register PMBA (0x40) holds the base of a 64-byte I/O block
//! that decodes while PMREGMISC (0x80) bit 0 is set; the block starts with
//!
//! - PM1 event: PM1_STS (write 1 to clear: TMR_STS, PWRBTN_STS...) and PM1_EN, whose
//!   common bits drive the SCI (IRQ 9, level);
//! - PM1 control: SCI_EN, and SLP_TYP with SLP_EN: writing SLP_TYP 0 (the DSDT's `\_S5`)
//!   with SLP_EN powers the machine off, and rqemu exits as QEMU does;
//! - the PM timer: a free-running 24-bit counter at 3.579545 MHz (SeaBIOS times its delays
//!   with it once it finds this function).
//!
//! Like the IDE function's decode bits, PMBA and PMREGMISC come up programmed with the
//! values SeaBIOS writes (base [`PM_BASE`], enabled), so a directly booted kernel finds the
//! block where the FADT says; the block is registered at that fixed base and does not follow
//! a PMBA the guest moves elsewhere (it then reads as absent). SCI_EN is set from power-on:
//! there is no SMI command port to switch into ACPI mode. Timer overflow (TMR_STS) is
//! reported when the status is read; nothing raises the power button yet (QEMU's comes from
//! the monitor's system_powerdown).

use std::time::Instant;

use crate::bus::BusDevice;
use crate::devices::pci::{ConfigSpace, PciFunction};
use crate::devices::{Irq, ResetRequest};

/// PCI vendor ID (Intel).
pub const VENDOR_ID: u16 = 0x8086;
/// PCI device ID of the PIIX4 power management function.
pub const DEVICE_ID: u16 = 0x7113;
/// Class code: bridge, other.
pub const CLASS_CODE: u32 = 0x068000;
/// Devfn of the function (00:01.3).
pub const DEVFN: u8 = 0x0B;

/// Where the PM I/O block lives (SeaBIOS's PORT_ACPI_PM_BASE, QEMU's too).
pub const PM_BASE: u16 = 0x600;
/// Length of the PM I/O block.
pub const PM_BLOCK_LEN: u16 = 64;
/// Offset of the PM1 event block (PM1_STS, PM1_EN).
pub const PM1_EVT: u16 = 0x00;
/// Offset of the PM1 control block.
pub const PM1_CNT: u16 = 0x04;
/// Offset of the PM timer.
pub const PM_TMR: u16 = 0x08;
/// The SCI's ISA IRQ.
pub const SCI_IRQ: u32 = 9;

/// PM1_STS / PM1_EN: the timer's bit 23 changed.
pub const TMR_STS: u16 = 1 << 0;
/// PM1_STS / PM1_EN: the power button was pressed.
pub const PWRBTN_STS: u16 = 1 << 8;
/// PM1_STS: the machine woke up.
pub const WAK_STS: u16 = 1 << 15;
/// PM1_CNT: SCI interrupts instead of SMIs.
pub const SCI_EN: u16 = 1 << 0;
/// PM1_CNT: the sleep type field.
pub const SLP_TYP_MASK: u16 = 7 << 10;
/// PM1_CNT: enter the sleep state in SLP_TYP.
pub const SLP_EN: u16 = 1 << 13;
/// The SLP_TYP of soft off on the PIIX4.
pub const SLP_TYP_S5: u16 = 0;

/// Frequency of the PM timer in Hz.
pub const PM_TIMER_FREQUENCY: u64 = 3_579_545;

const PMBA: usize = 0x40;
const PMREGMISC: usize = 0x80;
const SMBBA: usize = 0x90;
const SMBHSTCFG: usize = 0xD2;
const INTERRUPT_PIN: usize = 0x3D;
const DEVACTB: usize = 0x58;

/// The function: configuration space, PM1 registers and the timer's origin.
pub struct Piix4Pm {
    config: ConfigSpace,
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    /// The timer overflows (bit 23 changes) already acknowledged.
    tmr_overflows: u64,
    start: Instant,
    sci: Irq,
    power: ResetRequest,
}

impl Piix4Pm {
    /// The function at power-on; `sci` is IRQ 9, `power` is how it asks for power-off.
    pub fn new(sci: Irq, power: ResetRequest) -> Piix4Pm {
        let mut config = ConfigSpace::new(VENDOR_ID, DEVICE_ID, CLASS_CODE, 0x03);
        config.set_byte(INTERRUPT_PIN, 0x01);
        config.set_writable(PMBA, 4);
        config.set_wmask(PMBA, 0xC0); // 64-byte aligned; bit 0 (I/O space) reads 1
        config.set_writable(PMREGMISC, 1);
        config.set_writable(SMBBA, 4);
        config.set_writable(SMBHSTCFG, 1);
        config.set_word(PMBA, PM_BASE | 1);
        config.set_byte(PMREGMISC, 0x01);
        // There is no SMM: DEVACTB's APMC_EN reads set, which tells SeaBIOS that SMM is
        // already initialised (QEMU does the same when SMM is off) instead of waiting forever
        // for an SMI handler to run.
        config.set_byte(DEVACTB + 3, 0x02);
        Piix4Pm {
            config,
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: SCI_EN,
            tmr_overflows: 0,
            start: Instant::now(),
            sci,
            power,
        }
    }

    /// The timer's count since power-on.
    fn ticks(&self) -> u64 {
        let ns = self.start.elapsed().as_nanos();
        (ns * PM_TIMER_FREQUENCY as u128 / 1_000_000_000) as u64
    }

    /// Whether the block decodes at [`PM_BASE`].
    fn decodes(&self) -> bool {
        let base = self.config.dword(PMBA) as u16 & !(PM_BLOCK_LEN - 1);
        self.config.dword(PMREGMISC) & 1 != 0 && base == PM_BASE
    }

    /// PM1_STS with the timer's overflow folded in.
    fn status(&self) -> u16 {
        let overflowed = self.ticks() >> 23 != self.tmr_overflows;
        self.pm1_sts | if overflowed { TMR_STS } else { 0 }
    }

    fn update_sci(&self) {
        let pending = self.status() & self.pm1_en & (TMR_STS | PWRBTN_STS) != 0;
        self.sci.set_level(pending && self.pm1_cnt & SCI_EN != 0);
    }

    /// A 16-bit register of the block, for reads.
    fn read_reg(&self, offset: u16) -> u32 {
        match offset {
            0..=1 => self.status() as u32,
            2..=3 => self.pm1_en as u32,
            4..=5 => self.pm1_cnt as u32,
            8..=11 => (self.ticks() & 0x00FF_FFFF) as u32,
            _ => 0,
        }
    }

    /// A write of `val` to the 16-bit register at `offset` (only PM1 has writable ones).
    fn write_reg(&mut self, offset: u16, val: u16) {
        match offset {
            PM1_EVT => {
                if val & TMR_STS != 0 {
                    self.tmr_overflows = self.ticks() >> 23;
                }
                self.pm1_sts &= !(val & !TMR_STS);
            }
            0x02 => self.pm1_en = val,
            PM1_CNT => {
                // SLP_EN is write-only: it triggers and never reads back.
                self.pm1_cnt = val & !SLP_EN;
                if val & SLP_EN != 0 && val & SLP_TYP_MASK == SLP_TYP_S5 << 10 {
                    self.power.request_power_off();
                }
            }
            _ => {}
        }
    }
}

/// Accesses of 1, 2 or 4 bytes: each byte lands in its 16-bit register (PM1 registers are
/// word-sized; 32-bit accesses reach two of them, or the whole timer).
impl BusDevice for Piix4Pm {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if !self.decodes() {
            return data.fill(0xFF);
        }
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset as u16 + i as u16;
            let reg_start = if (PM_TMR..PM_TMR + 4).contains(&at) {
                PM_TMR
            } else {
                at & !1
            };
            *byte = (self.read_reg(reg_start) >> (8 * (at - reg_start))) as u8;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if !self.decodes() {
            return;
        }
        let offset = offset as u16;
        match *data {
            [lo, hi] if offset & 1 == 0 => self.write_reg(offset, u16::from_le_bytes([lo, hi])),
            [a, b, c, d] if offset & 3 == 0 => {
                self.write_reg(offset, u16::from_le_bytes([a, b]));
                self.write_reg(offset + 2, u16::from_le_bytes([c, d]));
            }
            [byte] => {
                let (reg, shift) = (offset & !1, 8 * (offset & 1));
                // Status bits are write-1-to-clear: the other byte must clear nothing.
                let keep = if reg == PM1_EVT {
                    0
                } else {
                    self.read_reg(reg) as u16 & !(0xFF << shift)
                };
                self.write_reg(reg, keep | (byte as u16) << shift);
            }
            _ => {} // unaligned: no register takes it
        }
        self.update_sci();
    }
}

impl PciFunction for Piix4Pm {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}

#[cfg(test)]
mod tests;
