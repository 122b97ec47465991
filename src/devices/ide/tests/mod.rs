//! Tests of the ATA state machine, driven register by register as guests do, with a
//! synchronous fake disk standing in for the block layer; and of the glue with a real loop.

mod atapi;
mod control;
mod glue;
mod rw;

use std::collections::HashMap;

use super::ata::*;
use super::commands::cmd;
use super::identify::DriveInfo;

/// A sparse in-memory disk; sector `n` reads as `pattern(n)` until written.
pub(super) struct FakeDisk {
    pub written: HashMap<u64, Vec<u8>>,
    pub fail_next: bool,
    pub ops: Vec<BlockOp>,
}

pub(super) fn pattern(sector: u64) -> Vec<u8> {
    (0..SECTOR_SIZE)
        .map(|i| (sector as usize * 7 + i) as u8 ^ (sector >> 24) as u8)
        .collect()
}

impl FakeDisk {
    fn sector(&self, n: u64) -> Vec<u8> {
        self.written.get(&n).cloned().unwrap_or_else(|| pattern(n))
    }

    fn perform(&mut self, op: &BlockOp) -> Result<Vec<u8>, block::Error> {
        self.ops.push(op.clone());
        if std::mem::take(&mut self.fail_next) {
            return Err(block::Error::from_errno(libc::EIO));
        }
        Ok(match op {
            BlockOp::Read { sector, count } => (0..*count as u64)
                .flat_map(|i| self.sector(sector + i))
                .collect(),
            BlockOp::Write { sector, data, .. } => {
                for (i, chunk) in data.chunks(SECTOR_SIZE).enumerate() {
                    self.written.insert(sector + i as u64, chunk.to_vec());
                }
                Vec::new()
            }
            BlockOp::Flush => Vec::new(),
        })
    }
}

/// A channel with a master disk and the fake block layer behind it.
pub(super) struct Rig {
    pub ch: AtaChannel,
    pub disk: FakeDisk,
    /// Requests taken but not completed yet (when `auto` is off).
    pub held: Vec<BlockRequest>,
    pub auto: bool,
    /// Rising edges of the interrupt line seen so far.
    pub irqs: u32,
}

pub(super) const SMALL: u64 = 4096;

pub(super) fn drive(sectors: u64) -> DriveConfig {
    DriveConfig {
        kind: DriveKind::Disk,
        info: DriveInfo::qemu_default(sectors, 0),
        read_only: false,
        write_cache: true,
    }
}

impl Rig {
    pub fn new(sectors: u64) -> Rig {
        Rig::with(Some(drive(sectors)), None)
    }

    pub fn with(master: Option<DriveConfig>, slave: Option<DriveConfig>) -> Rig {
        Rig {
            ch: AtaChannel::new(master, slave, 0x1F0, 0x3F6),
            disk: FakeDisk {
                written: HashMap::new(),
                fail_next: false,
                ops: Vec::new(),
            },
            held: Vec::new(),
            auto: true,
            irqs: 0,
        }
    }

    /// What glue does after every access: count IRQ edges, perform requests.
    pub fn settle(&mut self) {
        loop {
            self.irqs += self.ch.irq_update().iter().filter(|l| **l).count() as u32;
            let Some(req) = self.ch.take_request() else {
                break;
            };
            if self.auto {
                let r = self.disk.perform(&req.op);
                self.ch.complete(req.id, r);
            } else {
                self.held.push(req);
            }
        }
    }

    /// Completes the held requests in order.
    pub fn release(&mut self) {
        for req in std::mem::take(&mut self.held) {
            let r = self.disk.perform(&req.op);
            self.ch.complete(req.id, r);
        }
        self.settle();
    }

    pub fn write(&mut self, reg: u8, val: u8) {
        self.ch.ioport_write(reg, val);
        self.settle();
    }

    pub fn read(&mut self, reg: u8) -> u8 {
        let v = self.ch.ioport_read(reg);
        self.settle();
        v
    }

    pub fn status(&mut self) -> u8 {
        self.read(reg::STATUS_COMMAND)
    }

    pub fn error(&mut self) -> u8 {
        self.read(reg::ERROR_FEATURES)
    }

    pub fn control(&mut self, val: u8) {
        self.ch.control_write(val);
        self.settle();
    }

    /// Loads an LBA28 taskfile (device 0).
    pub fn lba28(&mut self, lba: u64, count: u8) {
        self.write(reg::COUNT, count);
        self.write(reg::LBA_LOW, lba as u8);
        self.write(reg::LBA_MID, (lba >> 8) as u8);
        self.write(reg::LBA_HIGH, (lba >> 16) as u8);
        self.write(reg::DEVICE, 0xE0 | ((lba >> 24) as u8 & 0x0F));
    }

    /// Loads an LBA48 taskfile: high bytes first, as the HOB registers require.
    pub fn lba48(&mut self, lba: u64, count: u16) {
        self.write(reg::COUNT, (count >> 8) as u8);
        self.write(reg::LBA_LOW, (lba >> 24) as u8);
        self.write(reg::LBA_MID, (lba >> 32) as u8);
        self.write(reg::LBA_HIGH, (lba >> 40) as u8);
        self.write(reg::COUNT, count as u8);
        self.write(reg::LBA_LOW, lba as u8);
        self.write(reg::LBA_MID, (lba >> 8) as u8);
        self.write(reg::LBA_HIGH, (lba >> 16) as u8);
        self.write(reg::DEVICE, 0x40);
    }

    pub fn command(&mut self, c: u8) {
        self.write(reg::STATUS_COMMAND, c);
    }

    /// A `rep insw`/`insd` of `len` bytes.
    pub fn rep_in(&mut self, size: usize, len: usize) -> Vec<u8> {
        let mut buf = vec![0xAA; len];
        self.ch.data_read_buf(size, &mut buf);
        self.settle();
        buf
    }

    pub fn rep_out(&mut self, size: usize, data: &[u8]) {
        self.ch.data_write_buf(size, data);
        self.settle();
    }

    pub fn identify(&mut self) -> Vec<u16> {
        self.command(cmd::IDENTIFY);
        assert_eq!(self.status(), DRDY | DSC | DRQ);
        let page = self.rep_in(2, 512);
        page.chunks(2)
            .map(|w| u16::from_le_bytes([w[0], w[1]]))
            .collect()
    }
}
