//! The glue between an ATA channel (vCPU threads, under the device lock) and its drives'
//! BlockBackends (the main loop thread): requests out through a queue, completions back.
//!
//! QEMU's hw/ide/core.c calls blk_aio_preadv/pwritev/flush straight from the port write,
//! under the BQL, on the `blk` of the drive's IDEState, and gets its callback from a bottom
//! half of the same main loop. Here the vCPU thread does not own the block graph:
//! [`IdeBlockSubmitter::after_access`] queues each [`BlockRequest`] and kicks the loop, where
//! the controller's [`IdeBus`]es (one per channel, holding the BlockBackend of each slot,
//! resolved once when the controller is wired, as the virtio-blk handler holds its own) turn
//! it into `blk.aio_*`. The completion bottom half locks the device, calls
//! [`AtaChannel::complete`] and moves the interrupt line. A failed request first meets the
//! drive's error policy (`rerror=`/`werror=`); one that stops the VM waits here, its command
//! BSY, and is queued again when the VM resumes.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use block::aio::notifier::EventNotifier;
use block::aio::AioContextHandle;
use block::error_action::ErrorAction;
use block::{AioContext, BlockBackend, Error, IoVector, RequestFlags};

use super::ata::{AtaChannel, BlockOp, BlockRequest, DriveConfig, DriveKind, SECTOR_SIZE};
use super::identify::DriveInfo;
use super::piix::Piix3Ide;
use crate::block_error::blk_error_action;
use crate::bus::{lock, BusDevice};
use crate::devices::Irq;
use crate::drives;
use crate::error::MachineError;
use crate::runstate::vm;

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
    ) -> Result<DriveConfig, MachineError> {
        let (tx, rx) = mpsc::channel();
        let name = id.to_string();
        ctx.schedule_bh(move || {
            let cfg = match drives::lookup(&name) {
                Some(blk) => Ok(DriveConfig::for_backend(&blk, index, kind)),
                // The ATAPI model has no tray without a disc yet; qtest machines have no
                // guest to see one.
                None if drives::empty_drives().contains(&name) => Err(format!(
                    "drive '{name}' has no medium: an empty CD-ROM drive is only supported \
                     with -accel qtest yet"
                )),
                None => Err(format!("drive '{name}' is not open on the main loop")),
            };
            let _ = tx.send(cfg);
        });
        rx.recv()
            .map_err(|_| {
                MachineError::Device(format!("drive '{id}' is not open on the main loop"))
            })?
            .map_err(MachineError::Device)
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

/// Block requests on their way from the vCPU side to the loop, with their channel index.
struct RequestQueue {
    pending: Mutex<VecDeque<(usize, BlockRequest)>>,
    /// Set after every push: the loop's [`IdeBus`]es wait on it.
    kick: EventNotifier,
    /// The controller is gone: the loop side stops serving.
    stopped: AtomicBool,
    /// Requests an error stopped the VM on (`werror=stop`...), retried when it resumes
    /// (QEMU's bus->error_status and ide_restart_bh).
    retry: Mutex<Vec<(usize, BlockRequest)>>,
}

/// Carries a controller's block requests to the main loop and their completions back.
pub struct IdeBlockSubmitter<D: AtaController> {
    device: Arc<Mutex<D>>,
    channels: Arc<Vec<ChannelWiring>>,
    queue: Arc<RequestQueue>,
}

impl<D: AtaController> Clone for IdeBlockSubmitter<D> {
    fn clone(&self) -> Self {
        IdeBlockSubmitter {
            device: self.device.clone(),
            channels: self.channels.clone(),
            queue: self.queue.clone(),
        }
    }
}

impl<D: AtaController> IdeBlockSubmitter<D> {
    /// Glue for `device`, whose channel `i` is wired as `channels[i]`. On the loop behind
    /// `ctx`, each channel's drives are looked up once in [`crate::drives`] and served from
    /// then on by its [`IdeBus`].
    pub fn new(
        ctx: &AioContextHandle,
        device: Arc<Mutex<D>>,
        channels: Vec<ChannelWiring>,
    ) -> Result<Self, MachineError> {
        let queue = RequestQueue {
            pending: Mutex::new(VecDeque::new()),
            kick: EventNotifier::new()
                .map_err(|e| MachineError::Device(format!("IDE request queue: {e}")))?,
            stopped: AtomicBool::new(false),
            retry: Mutex::new(Vec::new()),
        };
        let glue = IdeBlockSubmitter {
            device,
            channels: Arc::new(channels),
            queue: Arc::new(queue),
        };
        let on_loop = glue.clone();
        ctx.schedule_bh(move || {
            AioContext::current().spawn(on_loop.serve()).detach();
        });
        Ok(glue)
    }

    /// Stops the loop side once the requests queued so far are started.
    fn stop(&self) {
        self.queue.stopped.store(true, Ordering::SeqCst);
        self.queue.kick.set();
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
        let mut queued = false;
        while let Some(req) = ch.take_request() {
            lock(&self.queue.pending).push_back((index, req));
            queued = true;
        }
        if queued {
            self.queue.kick.set();
        }
    }

    /// The loop side, for as long as the controller lives: resolves each channel's drives
    /// once, then starts every request queued for them.
    async fn serve(self) {
        let buses: Vec<IdeBus> = self.channels.iter().map(IdeBus::attach).collect();
        let queue = self.queue.clone();
        let _restart = vm::add_vm_change_state_handler(move |running| {
            let mut stopped = lock(&queue.retry);
            if running && !stopped.is_empty() {
                // Ahead of anything queued since: the channel was BSY with these.
                let mut pending = lock(&queue.pending);
                for r in stopped.drain(..).rev() {
                    pending.push_front(r);
                }
                queue.kick.set();
            }
        });
        while self.queue.kick.wait().await.is_ok() {
            loop {
                let next = lock(&self.queue.pending).pop_front();
                let Some((index, req)) = next else {
                    break;
                };
                let blk = buses.get(index).and_then(|bus| bus.blk(req.id.unit));
                self.clone().start(index, blk, req);
            }
            if self.queue.stopped.load(Ordering::SeqCst) {
                break;
            }
        }
    }

    /// On the loop thread: starts the request on the drive's backend (ide_sector_read's
    /// blk_aio_preadv, ide_sector_write's blk_aio_pwritev, ide_flush_cache's blk_aio_flush).
    fn start(self, index: usize, blk: Option<Rc<BlockBackend>>, req: BlockRequest) {
        let Some(blk) = blk else {
            let err = Error::new(libc::ENOMEDIUM, "IDE drive not registered on this loop");
            return self.complete(index, req.id, Err(err));
        };
        let done_blk = blk.clone();
        match &req.op {
            BlockOp::Read { sector, count } => {
                let offset = sector * SECTOR_SIZE as u64;
                let qiov = IoVector::alloc(*count as usize * SECTOR_SIZE);
                let data = qiov.clone();
                let cb = move |r: block::Result<()>| {
                    self.finish(index, &done_blk, req, r.map(|()| data.to_vec()));
                };
                blk.aio_preadv(offset, qiov, RequestFlags::empty(), Box::new(cb));
            }
            BlockOp::Write { sector, data, fua } => {
                let flags = if *fua {
                    RequestFlags::FUA
                } else {
                    RequestFlags::empty()
                };
                let offset = sector * SECTOR_SIZE as u64;
                let qiov = IoVector::from_slice(data);
                let cb = move |r: block::Result<()>| {
                    self.finish(index, &done_blk, req, r.map(|()| Vec::new()))
                };
                blk.aio_pwritev(offset, qiov, flags, Box::new(cb));
            }
            BlockOp::Flush => {
                let cb = move |r: block::Result<()>| {
                    self.finish(index, &done_blk, req, r.map(|()| Vec::new()))
                };
                blk.aio_flush(Box::new(cb));
            }
        }
    }

    /// A request's block call returned: applies the drive's error policy to a failure
    /// (ide_handle_rw_error: `report` fails the command, `ignore` completes it as if it had
    /// worked, `stop` keeps it BSY for the retry on resume), then completes it.
    fn finish(
        &self,
        index: usize,
        blk: &BlockBackend,
        req: BlockRequest,
        result: block::Result<Vec<u8>>,
    ) {
        let result = match result {
            Ok(data) => Ok(data),
            Err(e) => {
                let is_read = matches!(req.op, BlockOp::Read { .. });
                let action = blk.get_error_action(is_read, e.errno());
                if action == ErrorAction::Stop {
                    lock(&self.queue.retry).push((index, req));
                    return blk_error_action(blk, action, is_read, e.errno());
                }
                blk_error_action(blk, action, is_read, e.errno());
                match (action, &req.op) {
                    (ErrorAction::Ignore, BlockOp::Read { count, .. }) => {
                        Ok(vec![0; *count as usize * SECTOR_SIZE])
                    }
                    (ErrorAction::Ignore, _) => Ok(Vec::new()),
                    _ => Err(e),
                }
            }
        };
        self.complete(index, req.id, result);
    }

    /// The completion bottom half: under the device lock, report and move the line.
    fn complete(&self, index: usize, id: super::ata::RequestId, result: block::Result<Vec<u8>>) {
        let mut dev = lock(&self.device);
        dev.ata_channel(index).complete(id, result);
        self.after_access(&mut dev, index);
    }
}

/// One IDE channel as the main loop sees it (QEMU's IDEBus, whose two IDEStates each hold
/// the `blk` of their drive): the BlockBackend of the master and slave slot.
pub struct IdeBus {
    blk: [Option<Rc<BlockBackend>>; 2],
}

impl IdeBus {
    /// Looks the channel's drives up in the loop's registry, once (blk_by_name at realize).
    fn attach(wiring: &ChannelWiring) -> IdeBus {
        let blk = wiring
            .drives
            .clone()
            .map(|id| id.and_then(|id| drives::lookup(&id)));
        // An IDE drive reports the error that stopped the VM (ide_dev_initfn).
        blk.iter().flatten().for_each(|b| b.iostatus_enable());
        IdeBus { blk }
    }

    /// The backend of slot `unit`, if a drive is attached there.
    fn blk(&self, unit: usize) -> Option<Rc<BlockBackend>> {
        self.blk.get(unit).cloned().flatten()
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

impl Drop for IdePorts {
    /// The machine is gone: its drives' loop side stops too.
    fn drop(&mut self) {
        self.0.stop();
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
