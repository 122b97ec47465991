//! The glue between an ATA channel (vCPU threads, under the device lock) and its drives'
//! BlockBackends (the main loop thread): requests out as bottom halves, completions back.
//!
//! QEMU's hw/ide/core.c calls blk_aio_preadv/pwritev/flush straight from the port write,
//! under the BQL, and gets its callback from a bottom half of the same main loop. Here the
//! vCPU thread does not own the block graph, so [`IdeBlockSubmitter::after_access`] ships
//! each [`BlockRequest`] to the loop as a `Send` bottom half; there it becomes
//! `blk.aio_*`, whose completion bottom half locks the device, calls
//! [`AtaChannel::complete`] and moves the interrupt line.

use std::sync::{mpsc, Arc, Mutex};

use block::aio::AioContextHandle;
use block::{Error, IoVector, RequestFlags};

use super::ata::{AtaChannel, BlockOp, BlockRequest, DriveConfig, DriveKind, SECTOR_SIZE};
use super::identify::DriveInfo;
use super::piix::Piix3Ide;
use crate::bus::{lock, BusDevice};
use crate::devices::Irq;
use crate::drives;

impl DriveConfig {
    /// The drive a backend makes for `-drive if=ide,index=N`: its size in whole sectors, its
    /// read-only flag and its cache mode (on the loop thread, before the device is built).
    pub fn for_backend(blk: &block::BlockBackend, index: u32, kind: DriveKind) -> DriveConfig {
        let sectors = blk.getlength() / SECTOR_SIZE as u64;
        DriveConfig {
            kind,
            info: match kind {
                DriveKind::Disk => DriveInfo::qemu_default(sectors, index),
                DriveKind::Cdrom => DriveInfo::qemu_cdrom(sectors, index),
            },
            read_only: blk.is_read_only(),
            write_cache: blk.write_cache(),
        }
    }

    /// Asks the loop behind `ctx` for the drive registered as `id` (the machine is built on
    /// another thread than the one owning the backends) and describes it as IDE drive `index`.
    pub fn query(
        ctx: &AioContextHandle,
        id: &str,
        index: u32,
        kind: DriveKind,
    ) -> Result<DriveConfig, String> {
        let (tx, rx) = mpsc::channel();
        let name = id.to_string();
        ctx.schedule_bh(move || {
            let cfg = drives::lookup(&name).map(|blk| DriveConfig::for_backend(&blk, index, kind));
            let _ = tx.send(cfg);
        });
        rx.recv()
            .ok()
            .flatten()
            .ok_or_else(|| format!("drive '{id}' is not open on the main loop"))
    }
}

/// A device that holds ATA channels, so one glue serves PIIX3 and a bare channel alike.
pub trait AtaController: Send + 'static {
    /// Channel `index`.
    fn ata_channel(&mut self, index: usize) -> &mut AtaChannel;
}

impl AtaController for Piix3Ide {
    fn ata_channel(&mut self, index: usize) -> &mut AtaChannel {
        self.channel(index)
    }
}

impl AtaController for AtaChannel {
    fn ata_channel(&mut self, _index: usize) -> &mut AtaChannel {
        self
    }
}

/// How one channel is wired: its drives' ids and its interrupt line.
#[derive(Clone)]
pub struct ChannelWiring {
    /// Drive id (`-drive id=`) of the master and slave slot.
    pub drives: [Option<Arc<str>>; 2],
    /// The channel's interrupt line.
    pub irq: Irq,
}

/// Carries a controller's block requests to the main loop and their completions back.
pub struct IdeBlockSubmitter<D: AtaController> {
    ctx: AioContextHandle,
    device: Arc<Mutex<D>>,
    channels: Arc<Vec<ChannelWiring>>,
}

impl<D: AtaController> Clone for IdeBlockSubmitter<D> {
    fn clone(&self) -> Self {
        IdeBlockSubmitter {
            ctx: self.ctx.clone(),
            device: self.device.clone(),
            channels: self.channels.clone(),
        }
    }
}

impl<D: AtaController> IdeBlockSubmitter<D> {
    /// Glue for `device`, whose channel `i` is wired as `channels[i]`; requests run on the
    /// loop behind `ctx`, where the drives are registered in [`crate::drives`].
    pub fn new(ctx: AioContextHandle, device: Arc<Mutex<D>>, channels: Vec<ChannelWiring>) -> Self {
        IdeBlockSubmitter {
            ctx,
            device,
            channels: Arc::new(channels),
        }
    }

    /// The device lock the vCPU threads take for port accesses.
    pub fn device(&self) -> &Arc<Mutex<D>> {
        &self.device
    }

    /// Called with the device locked after every access to channel `index` (and after a
    /// completion): moves the interrupt line and sends new block requests to the loop.
    pub fn after_access(&self, dev: &mut D, index: usize) {
        let Some(wiring) = self.channels.get(index) else {
            return;
        };
        let ch = dev.ata_channel(index);
        for &level in ch.irq_update() {
            wiring.irq.set_level(level);
        }
        while let Some(req) = ch.take_request() {
            let drive = wiring.drives.get(req.id.unit).cloned().flatten();
            let me = self.clone();
            self.ctx
                .schedule_bh(move || me.run_on_loop(index, drive, req));
        }
    }

    /// On the loop thread: starts the request on the drive's backend.
    fn run_on_loop(self, index: usize, drive: Option<Arc<str>>, req: BlockRequest) {
        let Some(blk) = drive.and_then(|id| drives::lookup(&id)) else {
            let err = Error::new(libc::ENOMEDIUM, "IDE drive not registered on this loop");
            return self.complete(index, req.id, Err(err));
        };
        let id = req.id;
        match req.op {
            BlockOp::Read { sector, count } => {
                let qiov = IoVector::alloc(count as usize * SECTOR_SIZE);
                let data = qiov.clone();
                let cb = move |r: block::Result<()>| {
                    self.complete(index, id, r.map(|()| data.to_vec()));
                };
                blk.aio_preadv(
                    sector * SECTOR_SIZE as u64,
                    qiov,
                    RequestFlags::empty(),
                    Box::new(cb),
                );
            }
            BlockOp::Write { sector, data, fua } => {
                let flags = if fua {
                    RequestFlags::FUA
                } else {
                    RequestFlags::empty()
                };
                let qiov = IoVector::from_slice(&data);
                let cb =
                    move |r: block::Result<()>| self.complete(index, id, r.map(|()| Vec::new()));
                blk.aio_pwritev(sector * SECTOR_SIZE as u64, qiov, flags, Box::new(cb));
            }
            BlockOp::Flush => {
                let cb =
                    move |r: block::Result<()>| self.complete(index, id, r.map(|()| Vec::new()));
                blk.aio_flush(Box::new(cb));
            }
        }
    }

    /// The completion bottom half: under the device lock, report and move the line.
    fn complete(&self, index: usize, id: super::ata::RequestId, result: block::Result<Vec<u8>>) {
        let mut dev = lock(&self.device);
        dev.ata_channel(index).complete(id, result);
        self.after_access(&mut dev, index);
    }
}

/// The legacy port ranges of a PIIX3 IDE function on the port bus: each access runs under the
/// device lock, then the glue moves the interrupt line and ships new block requests.
pub struct IdePorts(IdeBlockSubmitter<Piix3Ide>);

impl IdePorts {
    /// The ports of the function behind `glue`.
    pub fn new(glue: IdeBlockSubmitter<Piix3Ide>) -> IdePorts {
        IdePorts(glue)
    }
}

impl BusDevice for IdePorts {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        self.read_string(base, offset, data.len(), data);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        self.write_string(base, offset, data.len(), data);
    }

    /// A whole `rep ins` in one call: the data port copies it out of the sector buffer.
    fn read_string(&mut self, base: u64, offset: u64, size: usize, data: &mut [u8]) {
        let mut dev = lock(self.0.device());
        match dev.pio_read((base + offset) as u16, size, data) {
            Some(channel) => self.0.after_access(&mut dev, channel),
            None => data.fill(0xFF),
        }
    }

    /// A whole `rep outs` in one call.
    fn write_string(&mut self, base: u64, offset: u64, size: usize, data: &[u8]) {
        let mut dev = lock(self.0.device());
        if let Some(channel) = dev.pio_write((base + offset) as u16, size, data) {
            self.0.after_access(&mut dev, channel);
        }
    }
}
