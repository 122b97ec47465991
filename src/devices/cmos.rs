//! The MC146818 real-time clock and its 128 bytes of CMOS RAM at ports 0x70/0x71
//! (QEMU's hw/rtc/mc146818rtc.c, plus the values hw/i386/pc.c stores in CMOS at start).
//!
//! Port 0x70 selects a register (bit 7 is the NMI mask, ignored here), port 0x71 reads or
//! writes it. Registers 0x00-0x09 and 0x32 hold the time in BCD or binary (status B bit 2)
//! and in 24- or 12-hour form (B bit 1); status A selects the periodic-interrupt rate, B
//! enables interrupts, reading C returns and clears the interrupt flags and lowers IRQ 8, and
//! D reports valid RAM. The rest is storage; the BIOS reads memory sizes (0x30/0x31,
//! 0x34/0x35, 0x5B-0x5D), the boot order (0x3D, 0x38) and the CPU count (0x5F) from it.
//! The guest's clock runs as the host's UTC clock plus whatever offset the guest set.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Irq;
use crate::bus::BusDevice;

/// The index port; the data port follows it.
pub const CMOS_PORT: u16 = 0x70;
/// The RTC's ISA IRQ.
pub const RTC_IRQ: u32 = 8;

const REG_A: usize = 0x0A;
const REG_B: usize = 0x0B;
const REG_C: usize = 0x0C;
const REG_D: usize = 0x0D;
const REG_CENTURY: usize = 0x32;
const A_UIP: u8 = 0x80;
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_DM_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;

/// The clock fields, in register order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    sec: u32,
    min: u32,
    hour: u32,
    wday: u32,
    mday: u32,
    month: u32,
    year: i64,
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

impl DateTime {
    fn from_unix(t: i64) -> DateTime {
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400) as u32;
        let (year, month, mday) = civil_from_days(days);
        DateTime {
            sec: secs % 60,
            min: secs / 60 % 60,
            hour: secs / 3600,
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            wday: ((days + 4).rem_euclid(7) + 1) as u32,
            mday,
            month,
            year,
        }
    }

    fn to_unix(self) -> i64 {
        let days = days_from_civil(self.year, self.month.clamp(1, 12), self.mday.clamp(1, 31));
        days * 86_400 + (self.hour * 3600 + self.min * 60 + self.sec) as i64
    }
}

/// The RTC and CMOS RAM.
pub struct Cmos {
    index: usize,
    ram: [u8; 128],
    /// Guest time minus host time, in seconds.
    offset: i64,
    irq: Irq,
    now: fn() -> i64,
}

fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Cmos {
    /// A clock at host UTC time raising `irq` (IRQ 8), with QEMU's power-on status values.
    pub fn new(irq: Irq) -> Cmos {
        Self::with_clock(irq, host_now)
    }

    fn with_clock(irq: Irq, now: fn() -> i64) -> Cmos {
        let mut ram = [0u8; 128];
        ram[REG_A] = 0x26;
        ram[REG_B] = B_24H;
        ram[REG_D] = 0x80;
        Cmos {
            index: 0,
            ram,
            offset: 0,
            irq,
            now,
        }
    }

    /// Stores a byte of CMOS RAM (machine setup).
    pub fn set(&mut self, reg: usize, value: u8) {
        self.ram[reg & 0x7F] = value;
    }

    /// Stores the memory-size registers for `below_4g` and `above_4g` bytes of RAM.
    pub fn set_memory(&mut self, below_4g: u64, above_4g: u64) {
        // Base memory: 640 KiB.
        self.set(0x15, 0x80);
        self.set(0x16, 0x02);
        let ext_kib = (below_4g.saturating_sub(1 << 20) >> 10).min(0xFFFF) as u16;
        for reg in [0x17, 0x30] {
            self.set(reg, ext_kib as u8);
            self.set(reg + 1, (ext_kib >> 8) as u8);
        }
        let above_16m = (below_4g.saturating_sub(16 << 20) >> 16).min(0xFFFF) as u16;
        self.set(0x34, above_16m as u8);
        self.set(0x35, (above_16m >> 8) as u8);
        let high = (above_4g >> 16).min(0xFF_FFFF) as u32;
        self.set(0x5B, high as u8);
        self.set(0x5C, (high >> 8) as u8);
        self.set(0x5D, (high >> 16) as u8);
    }

    /// Stores the CPU count (0x5F holds count - 1) and the equipment byte (FPU, PS/2 mouse).
    pub fn set_cpus(&mut self, cpus: u8) {
        self.set(0x5F, cpus.saturating_sub(1));
        self.set(0x14, 0x06);
    }

    /// Stores the boot order as up to three devices: 1 floppy, 2 hard disk, 3 CD-ROM.
    pub fn set_boot_order(&mut self, order: [u8; 3]) {
        self.set(0x3D, order[1] << 4 | order[0]);
        // Low bit clear: check the floppy boot signature (QEMU's fd_bootchk default).
        self.set(0x38, order[2] << 4);
    }

    fn binary_mode(&self) -> bool {
        self.ram[REG_B] & B_DM_BINARY != 0
    }

    fn encode_reg(&self, v: u32) -> u8 {
        if self.binary_mode() {
            v as u8
        } else {
            (((v / 10) << 4) | (v % 10)) as u8
        }
    }

    fn decode_reg(&self, v: u8) -> u32 {
        if self.binary_mode() {
            v as u32
        } else {
            (v >> 4) as u32 * 10 + (v & 0x0F) as u32
        }
    }

    fn current(&self) -> DateTime {
        DateTime::from_unix((self.now)() + self.offset)
    }

    fn read_time(&self, reg: usize) -> Option<u8> {
        let t = self.current();
        Some(match reg {
            0x00 => self.encode_reg(t.sec),
            0x02 => self.encode_reg(t.min),
            0x04 if self.ram[REG_B] & B_24H != 0 => self.encode_reg(t.hour),
            0x04 => {
                let h12 = if t.hour.is_multiple_of(12) {
                    12
                } else {
                    t.hour % 12
                };
                self.encode_reg(h12) | if t.hour >= 12 { 0x80 } else { 0 }
            }
            0x06 => self.encode_reg(t.wday),
            0x07 => self.encode_reg(t.mday),
            0x08 => self.encode_reg(t.month),
            0x09 => self.encode_reg(t.year.rem_euclid(100) as u32),
            REG_CENTURY => self.encode_reg(t.year.div_euclid(100) as u32),
            _ => return None,
        })
    }

    fn write_time(&mut self, reg: usize, value: u8) -> bool {
        let mut t = self.current();
        match reg {
            0x00 => t.sec = self.decode_reg(value),
            0x02 => t.min = self.decode_reg(value),
            0x04 if self.ram[REG_B] & B_24H != 0 => t.hour = self.decode_reg(value),
            0x04 => {
                let h = self.decode_reg(value & 0x7F) % 12;
                t.hour = h + if value & 0x80 != 0 { 12 } else { 0 };
            }
            0x06 => return true,
            0x07 => t.mday = self.decode_reg(value),
            0x08 => t.month = self.decode_reg(value),
            0x09 => t.year = t.year - t.year.rem_euclid(100) + self.decode_reg(value) as i64,
            REG_CENTURY => t.year = self.decode_reg(value) as i64 * 100 + t.year.rem_euclid(100),
            _ => return false,
        }
        self.offset = t.to_unix() - (self.now)();
        true
    }

    fn read_reg(&mut self, reg: usize) -> u8 {
        match reg {
            // UIP stays clear: the guest never catches an update in progress.
            REG_A => self.ram[REG_A] & !A_UIP,
            REG_C => {
                let flags = self.ram[REG_C];
                self.ram[REG_C] = 0;
                self.irq.set_level(false);
                flags
            }
            _ => self.read_time(reg).unwrap_or(self.ram[reg]),
        }
    }

    fn write_reg(&mut self, reg: usize, value: u8) {
        match reg {
            REG_A => self.ram[REG_A] = value & !A_UIP,
            REG_B => {
                // Update-ended and alarm interrupts are not generated; keep the bits readable.
                self.ram[REG_B] = value & (B_SET | B_PIE | B_AIE | B_UIE | 0x0F);
            }
            REG_C | REG_D => {}
            _ => {
                if !self.write_time(reg, value) {
                    self.ram[reg] = value;
                }
            }
        }
    }

    /// The periodic interrupt's period, if the guest enabled it (status B PIE and a rate in A).
    pub fn periodic_period(&self) -> Option<Duration> {
        let rate = self.ram[REG_A] & 0x0F;
        if self.ram[REG_B] & B_PIE == 0 || rate == 0 {
            return None;
        }
        // Rates 1 and 2 alias 8 and 9 (256 and 128 Hz) on the MC146818.
        let rate = if rate <= 2 { rate + 7 } else { rate };
        Some(Duration::from_nanos(1_000_000_000 >> (16 - rate as u32)))
    }

    /// One period elapsed: flag it in C and raise IRQ 8 if the interrupt is enabled.
    pub fn periodic_tick(&mut self) {
        if self.ram[REG_B] & B_PIE != 0 {
            self.ram[REG_C] |= C_PF | C_IRQF;
            self.irq.set_level(true);
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = match offset {
            1 => self.read_reg(self.index),
            _ => 0xFF,
        };
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match offset {
            0 => self.index = (data[0] & 0x7F) as usize,
            _ => self.write_reg(self.index, data[0]),
        }
    }
}

#[cfg(test)]
mod tests;
