//! The ATA commands of a PIO-only disk and the completion of their block requests.
//!
//! QEMU's hw/ide/core.c (ide_cmd_table, cmd_*, ide_sector_read/write and their callbacks).
//! A command runs from the Command register write: it either finishes at once (status, one
//! interrupt), opens the data port (IDENTIFY, writes: DRQ), or queues a block request and
//! stays BSY until [`AtaChannel::complete`]. Data-in commands interrupt once per DRQ block as
//! the block becomes readable; data-out commands interrupt after each block is written.
//!
//! Where this disk differs from QEMU, it follows the ATA standard: addresses outside the disk
//! fail at once with IDNF (QEMU: ABRT after the first block), a read the image cannot serve
//! reports UNC, writes to a read-only drive abort before any data moves, and INITIALIZE
//! DEVICE PARAMETERS refuses zero sectors per track.

use block::trace;

use super::ata::*;
use super::identify::{identify_page, Geometry, IdentifyState, MAX_MULT_SECTORS};

/// Command opcodes (ATA-7 names, QEMU's WIN_* constants).
pub mod cmd {
    /// RECALIBRATE.
    pub const RECALIBRATE: u8 = 0x10;
    /// READ SECTOR(S).
    pub const READ: u8 = 0x20;
    /// READ SECTOR(S) without retries (obsolete).
    pub const READ_ONCE: u8 = 0x21;
    /// READ SECTOR(S) EXT.
    pub const READ_EXT: u8 = 0x24;
    /// READ MULTIPLE EXT.
    pub const READ_MULTIPLE_EXT: u8 = 0x29;
    /// WRITE SECTOR(S).
    pub const WRITE: u8 = 0x30;
    /// WRITE SECTOR(S) without retries (obsolete).
    pub const WRITE_ONCE: u8 = 0x31;
    /// WRITE SECTOR(S) EXT.
    pub const WRITE_EXT: u8 = 0x34;
    /// WRITE MULTIPLE EXT.
    pub const WRITE_MULTIPLE_EXT: u8 = 0x39;
    /// READ VERIFY SECTOR(S).
    pub const VERIFY: u8 = 0x40;
    /// READ VERIFY SECTOR(S) without retries (obsolete).
    pub const VERIFY_ONCE: u8 = 0x41;
    /// READ VERIFY SECTOR(S) EXT.
    pub const VERIFY_EXT: u8 = 0x42;
    /// SEEK.
    pub const SEEK: u8 = 0x70;
    /// EXECUTE DEVICE DIAGNOSTIC.
    pub const DIAGNOSE: u8 = 0x90;
    /// INITIALIZE DEVICE PARAMETERS.
    pub const SPECIFY: u8 = 0x91;
    /// STANDBY IMMEDIATE (old opcode).
    pub const STANDBY_NOW2: u8 = 0x94;
    /// IDLE IMMEDIATE (old opcode).
    pub const IDLE_IMMEDIATE2: u8 = 0x95;
    /// STANDBY (old opcode).
    pub const STANDBY2: u8 = 0x96;
    /// IDLE (old opcode).
    pub const SET_IDLE2: u8 = 0x97;
    /// IDENTIFY PACKET DEVICE (ATAPI only).
    pub const IDENTIFY_PACKET: u8 = 0xA1;
    /// READ MULTIPLE.
    pub const READ_MULTIPLE: u8 = 0xC4;
    /// WRITE MULTIPLE.
    pub const WRITE_MULTIPLE: u8 = 0xC5;
    /// SET MULTIPLE MODE.
    pub const SET_MULTIPLE: u8 = 0xC6;
    /// STANDBY IMMEDIATE.
    pub const STANDBY_NOW1: u8 = 0xE0;
    /// IDLE IMMEDIATE.
    pub const IDLE_IMMEDIATE: u8 = 0xE1;
    /// STANDBY.
    pub const STANDBY: u8 = 0xE2;
    /// IDLE.
    pub const SET_IDLE1: u8 = 0xE3;
    /// CHECK POWER MODE.
    pub const CHECK_POWER_MODE: u8 = 0xE5;
    /// CHECK POWER MODE (old opcode).
    pub const CHECK_POWER_MODE2: u8 = 0x98;
    /// FLUSH CACHE.
    pub const FLUSH_CACHE: u8 = 0xE7;
    /// FLUSH CACHE EXT.
    pub const FLUSH_CACHE_EXT: u8 = 0xEA;
    /// IDENTIFY DEVICE.
    pub const IDENTIFY: u8 = 0xEC;
    /// SET FEATURES.
    pub const SET_FEATURES: u8 = 0xEF;
}

/// How a command left the drive.
pub(super) enum Done {
    /// Finished: clear BSY, set DSC on success, interrupt.
    Now,
    /// Finished, status left without DSC (power-management commands, diagnostics).
    NowNoDsc,
    /// A transfer or a block request continues it.
    Later,
}

impl AtaChannel {
    /// Executes a Command register write (ide_bus_exec_cmd).
    pub(super) fn exec_cmd(&mut self, val: u8) {
        trace!(
            ide_bus_exec_cmd,
            "IDE exec cmd: bus {:p}; state {:p}; cmd 0x{:02x}",
            self,
            &self.drives[self.unit],
            val
        );
        // Commands to an absent device 1 go nowhere; a busy drive ignores new commands.
        let absent_slave = self.unit == 1 && !self.drives[1].present();
        if absent_slave || self.cur().status & (BSY | DRQ) != 0 {
            return;
        }
        let d = self.cur();
        d.status = DRDY | BSY;
        d.error = 0;
        let done = if self.cur().present() {
            self.dispatch(val)
        } else {
            self.cur().fail(ABRT);
            Done::Now
        };
        let d = self.cur();
        match done {
            Done::Later => {}
            Done::Now | Done::NowNoDsc => {
                d.status &= !BSY;
                if matches!(done, Done::Now) && d.error == 0 {
                    d.status |= DSC;
                }
                self.set_irq();
            }
        }
    }

    fn dispatch(&mut self, val: u8) -> Done {
        use cmd::*;
        if self.cur().cd.is_some() {
            if let Some(done) = self.atapi_ata_command(val) {
                return done;
            }
        }
        match val {
            READ | READ_ONCE | READ_EXT => self.cmd_read(val == READ_EXT, 1),
            READ_MULTIPLE | READ_MULTIPLE_EXT => {
                let mult = self.cur().mult_sectors as u32;
                self.cmd_read(val == READ_MULTIPLE_EXT, mult)
            }
            WRITE | WRITE_ONCE | WRITE_EXT => self.cmd_write(val == WRITE_EXT, 1),
            WRITE_MULTIPLE | WRITE_MULTIPLE_EXT => {
                let mult = self.cur().mult_sectors as u32;
                self.cmd_write(val == WRITE_MULTIPLE_EXT, mult)
            }
            VERIFY | VERIFY_ONCE | VERIFY_EXT => self.cmd_verify(val == VERIFY_EXT),
            IDENTIFY => self.cmd_identify(),
            SET_MULTIPLE => self.cmd_set_multiple(),
            SET_FEATURES => self.cmd_set_features(),
            FLUSH_CACHE | FLUSH_CACHE_EXT => self.cmd_flush(),
            CHECK_POWER_MODE | CHECK_POWER_MODE2 => {
                self.cur().nsector = 0xFF; // active or idle
                Done::Now
            }
            RECALIBRATE | SEEK => Done::Now,
            STANDBY_NOW1 | IDLE_IMMEDIATE | STANDBY | SET_IDLE1 | STANDBY_NOW2
            | IDLE_IMMEDIATE2 | STANDBY2 | SET_IDLE2 => Done::NowNoDsc,
            SPECIFY => self.cmd_specify(),
            DIAGNOSE => {
                self.cur().diagnostic();
                Done::NowNoDsc
            }
            // PACKET, IDENTIFY PACKET, DMA, SMART, security... are not for this disk.
            _ => self.abort(),
        }
    }

    fn abort(&mut self) -> Done {
        self.cur().fail(ABRT);
        Done::Now
    }

    /// Turns the Sector Count registers into the command's sector count: 0 means 256 for
    /// LBA28 and 65536 for LBA48 (ide_cmd_lba48_transform).
    fn load_count(&mut self, lba48: bool) -> u32 {
        let d = self.cur();
        d.lba48 = lba48;
        let count = if lba48 {
            (d.hob_nsector as u32) << 8 | d.nsector as u32
        } else {
            d.nsector as u32
        };
        match (count, lba48) {
            (0, false) => 256,
            (0, true) => 65536,
            (n, _) => n,
        }
    }

    /// The address in the taskfile (ide_get_sector); `None` for an impossible CHS address.
    pub(super) fn get_sector(&mut self) -> Option<u64> {
        let d = self.cur();
        if d.select & DEV_LBA != 0 {
            if d.lba48 {
                let bytes = [
                    d.sector,
                    d.lcyl,
                    d.hcyl,
                    d.hob_sector,
                    d.hob_lcyl,
                    d.hob_hcyl,
                ];
                return Some(bytes.iter().rev().fold(0, |acc, b| acc << 8 | *b as u64));
            }
            let top = (d.select & DEV_HEAD) as u64;
            return Some(
                top << 24 | (d.hcyl as u64) << 16 | (d.lcyl as u64) << 8 | d.sector as u64,
            );
        }
        let (cyl, head, sect) = (
            (d.hcyl as u64) << 8 | d.lcyl as u64,
            d.select & DEV_HEAD,
            d.sector,
        );
        let g = d.chs;
        if sect == 0 || sect > g.sectors || head >= g.heads {
            return None;
        }
        Some((cyl * g.heads as u64 + head as u64) * g.sectors as u64 + sect as u64 - 1)
    }

    /// Writes an address back into the taskfile (ide_set_sector).
    pub(super) fn set_sector(&mut self, n: u64) {
        let d = self.cur();
        if d.select & DEV_LBA != 0 {
            d.sector = n as u8;
            d.lcyl = (n >> 8) as u8;
            d.hcyl = (n >> 16) as u8;
            if d.lba48 {
                d.hob_sector = (n >> 24) as u8;
                d.hob_lcyl = (n >> 32) as u8;
                d.hob_hcyl = (n >> 40) as u8;
            } else {
                d.select = (d.select & !DEV_HEAD) | ((n >> 24) as u8 & DEV_HEAD);
            }
        } else {
            let g = d.chs;
            let per_cyl = g.heads as u64 * g.sectors as u64;
            let (cyl, r) = (n / per_cyl, n % per_cyl);
            d.hcyl = (cyl >> 8) as u8;
            d.lcyl = cyl as u8;
            d.select = (d.select & !DEV_HEAD) | ((r / g.sectors as u64) as u8 & DEV_HEAD);
            d.sector = (r % g.sectors as u64) as u8 + 1;
        }
    }

    /// The registers' sector, if `count` sectors from it lie inside the drive.
    fn range_start(&mut self, count: u32) -> Option<u64> {
        let capacity = self.cur().config.as_ref().map_or(0, |c| c.info.sectors);
        self.get_sector()
            .filter(|&s| s <= capacity && count as u64 <= capacity - s)
    }

    /// Validates the command's range; on failure the command fails with IDNF.
    fn check_range(&mut self, count: u32) -> bool {
        let ok = self.range_start(count).is_some();
        if !ok {
            self.cur().fail(IDNF);
        }
        ok
    }

    /// The sector the next DRQ block of `n` sectors starts at. The guest may rewrite the
    /// address registers between blocks, so each block is checked against the drive again
    /// (ide_sect_range_ok in ide_sector_read/ide_sector_write); out of range, the command
    /// fails with IDNF and None is returned.
    fn block_sector(&mut self, n: u32) -> Option<u64> {
        let sector = self.range_start(n);
        if sector.is_none() {
            self.cur().fail(IDNF);
            self.set_irq();
        }
        sector
    }

    fn cmd_read(&mut self, lba48: bool, block: u32) -> Done {
        if block == 0 {
            return self.abort(); // READ MULTIPLE with multiple mode off
        }
        let count = self.load_count(lba48);
        if !self.check_range(count) {
            return Done::Now;
        }
        let d = self.cur();
        d.remaining = count;
        d.block_sectors = block;
        self.sector_read();
        Done::Later
    }

    /// Starts reading the next DRQ block, or ends the command after the last one
    /// (ide_sector_read). Also the end-of-transfer action of a data-in block.
    pub(super) fn sector_read(&mut self) {
        let unit = self.unit;
        let d = self.cur();
        d.status = DRDY | DSC;
        d.error = 0;
        if d.remaining == 0 {
            d.transfer_stop();
            return;
        }
        d.status |= BSY;
        let n = d.remaining.min(d.block_sectors);
        let Some(sector) = self.block_sector(n) else {
            return;
        };
        trace!(ide_sector_read, "sector={} nsectors={}", sector, n);
        self.submit(unit, BlockOp::Read { sector, count: n }, Pending::Read(n));
    }

    fn cmd_write(&mut self, lba48: bool, block: u32) -> Done {
        let read_only = self.cur().config.as_ref().is_none_or(|c| c.read_only);
        if block == 0 || read_only {
            return self.abort();
        }
        let count = self.load_count(lba48);
        if !self.check_range(count) {
            return Done::Now;
        }
        let d = self.cur();
        d.remaining = count;
        d.block_sectors = block;
        d.status = DRDY | DSC;
        let n = count.min(block) as usize;
        d.transfer_start(n * SECTOR_SIZE, EndTransfer::SectorWrite);
        Done::Later
    }

    /// The host filled a data-out block: write it (ide_sector_write). The block is queued as
    /// a `BlockOp::Write`; `glue::IdeBlockSubmitter::after_access` queues it for the main
    /// loop, where `IdeBlockSubmitter::start` calls `blk_aio_pwritev`
    /// (`BlockBackend::aio_pwritev`) on the drive's backend, which its `glue::IdeBus` holds,
    /// and `write_done` (ide_sector_write_cb) runs when it completes.
    pub(super) fn sector_write(&mut self) {
        let unit = self.unit;
        let d = self.cur();
        d.status = DRDY | DSC | BSY;
        let n = d.remaining.min(d.block_sectors);
        let data = d.buffer[..n as usize * SECTOR_SIZE].to_vec();
        let fua = !d.write_cache;
        let Some(sector) = self.block_sector(n) else {
            return;
        };
        trace!(ide_sector_write, "sector={} nsectors={}", sector, n);
        let op = BlockOp::Write { sector, data, fua };
        self.submit(unit, op, Pending::Write(n));
    }

    fn cmd_verify(&mut self, lba48: bool) -> Done {
        let count = self.load_count(lba48);
        self.check_range(count);
        Done::Now
    }

    fn cmd_identify(&mut self) -> Done {
        let d = self.cur();
        let Some(config) = &d.config else {
            return self.abort();
        };
        let page = identify_page(&config.info, &d.identify_state());
        d.buffer[..SECTOR_SIZE].copy_from_slice(&page);
        d.status = DRDY | DSC;
        d.transfer_start(SECTOR_SIZE, EndTransfer::Stop);
        self.set_irq();
        Done::Later
    }

    fn cmd_set_multiple(&mut self) -> Done {
        let d = self.cur();
        let n = d.nsector;
        if n > MAX_MULT_SECTORS || n & n.wrapping_sub(1) != 0 {
            return self.abort();
        }
        d.mult_sectors = n; // 0 turns multiple mode off
        Done::Now
    }

    fn cmd_set_features(&mut self) -> Done {
        let d = self.cur();
        match d.feature {
            0x02 => d.write_cache = true,
            0x82 => {
                // Disabling the cache must not lose what it holds.
                d.write_cache = false;
                return self.cmd_flush();
            }
            0x03 => {
                // Transfer mode: only PIO (default, or mode 0-4 with flow control).
                let mode = d.nsector;
                if !(mode <= 0x01 || (0x08..=0x0C).contains(&mode)) {
                    return self.abort();
                }
            }
            // Look-ahead, power-on defaults, APM, acoustic: accepted, nothing to change.
            0x55 | 0xAA | 0x66 | 0xCC | 0x05 | 0x85 | 0x42 | 0xC2 => {}
            _ => return self.abort(),
        }
        Done::Now
    }

    fn cmd_flush(&mut self) -> Done {
        let unit = self.unit;
        self.cur().status |= BSY;
        self.submit(unit, BlockOp::Flush, Pending::Flush);
        Done::Later
    }

    fn cmd_specify(&mut self) -> Done {
        let d = self.cur();
        if d.nsector == 0 {
            return self.abort();
        }
        d.chs.heads = (d.select & DEV_HEAD) + 1;
        d.chs.sectors = d.nsector;
        Done::Now
    }

    /// Reports the result of a block request (the ide_*_cb callbacks). `data` holds the
    /// sectors of a read; an error's errno picks nothing finer than UNC (reads) or ABRT.
    pub fn complete(&mut self, id: RequestId, result: Result<Vec<u8>, block::Error>) {
        let unit = id.unit;
        let Some((seq, pending)) = self.drives.get(unit).and_then(|d| d.pending) else {
            return;
        };
        if seq != id.seq {
            return; // from before a hardware reset
        }
        self.drives[unit].pending = None;
        if self.drives[unit].reset_on_completion {
            self.drives[unit].reset_on_completion = false;
            if !self.soft_reset_held() {
                self.finish_soft_reset(unit);
            }
            return;
        }
        // The completion belongs to its drive even if the guest selected the other one since.
        let selected = std::mem::replace(&mut self.unit, unit);
        if let Pending::AtapiRead(n) = pending {
            // The packet protocol decides itself when the host hears of it.
            self.atapi_read_done(n, result);
            self.unit = selected;
            return;
        }
        match pending {
            Pending::Read(n) => self.read_done(n, result),
            Pending::Write(n) => self.write_done(n, result.map(|_| ())),
            Pending::AtapiRead(_) => unreachable!("handled above"),
            Pending::Flush => {
                let d = self.cur();
                match result {
                    Ok(_) => d.status = DRDY | DSC,
                    Err(_) => d.fail(ABRT),
                }
            }
        }
        self.unit = selected;
        self.set_irq();
    }

    /// A read of `n` sectors finished: start the PIO data-in phase (ide_sector_read_cb).
    fn read_done(&mut self, n: u32, result: Result<Vec<u8>, block::Error>) {
        let len = n as usize * SECTOR_SIZE;
        let d = self.cur();
        d.status &= !BSY;
        match result {
            Ok(data) if data.len() == len => d.buffer[..len].copy_from_slice(&data),
            _ => return d.fail(UNC),
        }
        let next = self.get_sector().unwrap_or(0) + n as u64;
        self.set_sector(next);
        let d = self.cur();
        d.remaining -= n;
        d.nsector = d.remaining as u8;
        d.transfer_start(len, EndTransfer::SectorRead);
    }

    /// A write of `n` sectors finished: ask for the next block or end (ide_sector_write_cb).
    fn write_done(&mut self, n: u32, result: Result<(), block::Error>) {
        let d = self.cur();
        d.status &= !BSY;
        if result.is_err() {
            return d.fail(ABRT);
        }
        d.remaining -= n;
        d.nsector = d.remaining as u8;
        let next = self.get_sector().unwrap_or(0) + n as u64;
        self.set_sector(next);
        let d = self.cur();
        if d.remaining == 0 {
            d.transfer_stop();
        } else {
            let n1 = d.remaining.min(d.block_sectors) as usize;
            d.transfer_start(n1 * SECTOR_SIZE, EndTransfer::SectorWrite);
        }
    }
}

impl Drive {
    /// The identity state IDENTIFY reports.
    pub(super) fn identify_state(&self) -> IdentifyState {
        let sectors = self.config.as_ref().map_or(0, |c| c.info.sectors);
        IdentifyState {
            default_chs: Geometry::guess(sectors),
            current_chs: self.chs,
            mult_sectors: self.mult_sectors,
            write_cache: self.write_cache,
        }
    }
}
