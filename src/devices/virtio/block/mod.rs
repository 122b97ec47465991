//! virtio-blk: a block device whose requests travel through a virtqueue.
//!
//! QEMU's hw/block/virtio-blk.c. Two halves, because they live on two threads:
//!
//! * [`VirtioBlk`] is the device model the transport talks to on the vCPU side: features,
//!   the configuration space (capacity, limits, topology, the write-cache switch), reset;
//! * [`VirtioBlkHandler`] runs on the main loop (the AioContext): it waits on each queue's
//!   notifier (the ioeventfd), pops chains, parses them ([`super::request`]) and starts one
//!   coroutine per request on the BlockBackend, so many requests are in flight at once. The
//!   requests that finish in one turn of the loop are returned together by a bottom half:
//!   status bytes, used elements, one move of the used index, and an interrupt if the
//!   driver asked for one.
//!
//! A failed request meets the drive's error policy (`werror=`/`rerror=`): `report` returns
//! VIRTIO_BLK_S_IOERR, `ignore` success, `stop` stops the VM and keeps the request, which
//! runs again when the VM resumes.
//!
//! Reset: QEMU drains the device's requests inside the reset (blk_drain under the big lock).
//! Here the reset happens on the vCPU side while requests run on the main loop, so a request
//! in flight at a reset finishes on its own and then leaves the rings alone (the core's
//! reset count has moved on). Until it finishes, a read may still land in its guest buffer,
//! as DMA already started would on real hardware.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_executor::Task;
use block::aio::notifier::EventNotifier;
use block::{trace, AioContext, BlockBackend, RequestFlags};
use vm_memory::GuestMemoryMmap;

use super::queue::{DescriptorChain, Queue, QueueError};
use super::request::{DiskLimits, Request, RequestKind, VIRTIO_BLK_ID_BYTES};
use super::request::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use super::SharedCore;
use super::VIRTIO_F_NOTIFY_ON_EMPTY;
use crate::block_error::blk_error_action;
use crate::bus::lock;
use crate::runstate::vm::{self, VmChangeStateEntry};
use block::error_action::ErrorAction;

mod model;

pub use model::*;

/// The main-loop half: pops requests and runs them on the block layer.
pub struct VirtioBlkHandler {
    core: SharedCore,
    mem: Arc<GuestMemoryMmap>,
    blk: Rc<BlockBackend>,
    limits: DiskLimits,
    wce: Arc<AtomicBool>,
    notifiers: Vec<Arc<EventNotifier>>,
    /// Requests started and not yet completed.
    in_flight: Cell<u64>,
    /// Requests finished, waiting for the completion bottom half to return them.
    completions: RefCell<Vec<Completion>>,
    /// Requests an error stopped the VM on, retried when it resumes (s->rq).
    stopped: RefCell<Vec<(Completion, RequestKind)>>,
    /// The handler that retries them (virtio_blk_dma_restart_cb), while the device lives.
    restart: RefCell<Option<VmChangeStateEntry>>,
}

impl VirtioBlkHandler {
    /// A handler for a device's queues; `notifiers[i]` is queue i's kick (ioeventfd).
    pub fn new(
        shared: VirtioBlkShared,
        core: SharedCore,
        mem: Arc<GuestMemoryMmap>,
        blk: Rc<BlockBackend>,
        notifiers: Vec<Arc<EventNotifier>>,
    ) -> Rc<VirtioBlkHandler> {
        // The device reports the error that stopped the VM (virtio_blk_device_realize).
        blk.iostatus_enable();
        Rc::new(VirtioBlkHandler {
            core,
            mem,
            blk,
            limits: shared.limits,
            wce: shared.wce,
            notifiers,
            in_flight: Cell::new(0),
            completions: RefCell::new(Vec::new()),
            stopped: RefCell::new(Vec::new()),
            restart: RefCell::new(None),
        })
    }

    /// Starts one coroutine per queue that waits for kicks; dropping the tasks stops them.
    pub fn start(self: &Rc<Self>) -> Vec<Task<()>> {
        let me = Rc::downgrade(self);
        let restart = vm::add_vm_change_state_handler(move |running| {
            if let Some(me) = me.upgrade().filter(|_| running) {
                me.restart_stopped();
            }
        });
        *self.restart.borrow_mut() = Some(restart);
        let ctx = AioContext::current();
        (0..self.notifiers.len())
            .map(|q| {
                let me = self.clone();
                ctx.spawn(async move { me.queue_loop(q).await })
            })
            .collect()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.get()
    }

    /// Handles queue `q`'s kicks. The notifier's counter is never read back (QEMU reads it,
    /// event_notifier_test_and_clear): the loop's epoll is edge-triggered and reports every
    /// new kick whether the counter was cleared or not, so the read would only cost a system
    /// call per kick. (A 64-bit counter of kicks does not fill up.)
    async fn queue_loop(self: Rc<Self>, q: usize) {
        loop {
            if self.notifiers[q].readable().await.is_err() {
                return;
            }
            trace!(virtio_queue_notify, "vdev {:p} n {}", Rc::as_ptr(&self), q);
            self.handle_output(q);
        }
    }

    /// Pops every available chain of queue `q` and starts its request (QEMU's
    /// virtio_blk_handle_output, which calls virtio_blk_handle_vq).
    /// Kicks are suppressed while popping and re-enabled after, re-checking the ring so a chain
    /// published in between is not left waiting.
    pub fn handle_output(self: &Rc<Self>, q: usize) {
        let mut core = lock(&self.core);
        if !core.running() || q >= core.queues.len() {
            return;
        }
        let generation = core.reset_count;
        let ctx = AioContext::current();
        let mut chain = DescriptorChain::default();
        loop {
            let queue = &mut core.queues[q];
            if let Err(e) = queue.set_notification(&self.mem, false) {
                return core.error(&e.to_string());
            }
            loop {
                match core.queues[q].pop(&self.mem, &mut chain) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => return core.error(&e.to_string()),
                }
                match Request::parse(&chain, &self.mem, &self.limits) {
                    Ok(req) => self.submit(&ctx, q, req, generation),
                    Err(e) => return core.error(&e.to_string()),
                }
            }
            match core.queues[q].set_notification(&self.mem, true) {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => return core.error(&e.to_string()),
            }
        }
    }

    /// Starts one request on the block layer. Reads and writes go to the BlockBackend's
    /// pooled coroutines; the rarer kinds each run as a coroutine sized for its own call (one
    /// coroutine type for all would be sized for the largest, write zeroes).
    #[inline]
    fn submit(self: &Rc<Self>, ctx: &AioContext, q: usize, req: Request, generation: u64) {
        self.in_flight.set(self.in_flight.get() + 1);
        self.blk.set_write_cache(self.wce.load(Ordering::Relaxed));
        self.trace_request(&req);
        let done = Completion {
            q,
            head: req.head,
            used_len: req.used_len,
            status_byte: req.status,
            status: VIRTIO_BLK_S_OK,
            generation,
        };
        self.start_request(ctx, done, req.kind);
    }

    /// Runs a request's block-layer call; its completion goes through [`Self::finish`].
    fn start_request(self: &Rc<Self>, ctx: &AioContext, done: Completion, kind: RequestKind) {
        let me = self.clone();
        let none = RequestFlags::empty();
        let task = match kind {
            // Reads and writes, the hot path, run on the BlockBackend's pooled coroutines
            // (blk_aio_preadv / blk_aio_pwritev, as QEMU's virtio-blk submits them). The
            // callback keeps the request (a vector of two inline segments) for a retry.
            RequestKind::Read { offset, data } => {
                let retry = RequestKind::Read {
                    offset,
                    data: data.clone(),
                };
                let cb = Box::new(move |ret| me.finish(done, retry, ret));
                return self.blk.aio_preadv(offset, data, none, cb);
            }
            RequestKind::Write { offset, data } => {
                let retry = RequestKind::Write {
                    offset,
                    data: data.clone(),
                };
                let cb = Box::new(move |ret| me.finish(done, retry, ret));
                return self.blk.aio_pwritev(offset, data, none, cb);
            }
            RequestKind::Flush => ctx.spawn(async move {
                let ret = me.blk.co_flush().await;
                me.finish(done, RequestKind::Flush, ret)
            }),
            RequestKind::Discard { offset, bytes } => ctx.spawn(async move {
                let ret = me.blk.co_pdiscard(offset, bytes).await;
                me.finish(done, RequestKind::Discard { offset, bytes }, ret)
            }),
            RequestKind::WriteZeroes {
                offset,
                bytes,
                unmap,
            } => ctx.spawn(async move {
                let flags = if unmap { RequestFlags::MAY_UNMAP } else { none };
                let ret = me.blk.co_pwrite_zeroes(offset, bytes, flags).await;
                let kind = RequestKind::WriteZeroes {
                    offset,
                    bytes,
                    unmap,
                };
                me.finish(done, kind, ret)
            }),
            RequestKind::GetId { data } => {
                let id = self.limits.serial.as_bytes();
                let n = id.len().min(VIRTIO_BLK_ID_BYTES).min(data.len());
                data.copy_from_slice(0, &id[..n]);
                return self.complete(done);
            }
            RequestKind::Status(status) => return self.complete(Completion { status, ..done }),
        };
        task.detach();
    }

    /// Completes a request with the outcome of its block-layer call (virtio_blk_rw_complete),
    /// a failure under the drive's error policy (virtio_blk_handle_rw_error): `report` is
    /// VIRTIO_BLK_S_IOERR, `ignore` success, `stop` keeps the request for the retry.
    fn finish(self: &Rc<Self>, mut done: Completion, kind: RequestKind, ret: block::Result<()>) {
        done.status = VIRTIO_BLK_S_OK;
        if let Err(e) = ret {
            let is_read = matches!(kind, RequestKind::Read { .. });
            let action = self.blk.get_error_action(is_read, e.errno());
            if action == ErrorAction::Report {
                done.status = VIRTIO_BLK_S_IOERR;
            }
            if action == ErrorAction::Stop {
                self.stopped.borrow_mut().push((done, kind));
                return blk_error_action(&self.blk, action, is_read, e.errno());
            }
            blk_error_action(&self.blk, action, is_read, e.errno());
        }
        self.complete(done);
    }

    /// The VM resumed: runs the stopped requests again (virtio_blk_dma_restart_bh). One from
    /// before a device reset only leaves (its completion is dropped), as QEMU's reset
    /// discards them.
    fn restart_stopped(self: &Rc<Self>) {
        let stopped = self.stopped.take();
        if stopped.is_empty() {
            return;
        }
        let generation = lock(&self.core).reset_count;
        let ctx = AioContext::current();
        for (done, kind) in stopped {
            if done.generation == generation {
                self.start_request(&ctx, done, kind);
            } else {
                self.complete(done);
            }
        }
    }

    /// The trace event of a request about to run, named as QEMU's.
    fn trace_request(&self, req: &Request) {
        let (me, head) = (self as *const Self, req.head);
        match &req.kind {
            RequestKind::Read { offset, data } => trace!(
                virtio_blk_handle_read,
                "vdev {me:p} req {head} sector {} nsectors {}",
                offset >> 9,
                data.len() >> 9
            ),
            RequestKind::Write { offset, data } => trace!(
                virtio_blk_handle_write,
                "vdev {me:p} req {head} sector {} nsectors {}",
                offset >> 9,
                data.len() >> 9
            ),
            RequestKind::Discard { offset, bytes } => trace!(
                virtio_blk_handle_discard,
                "vdev {me:p} req {head} sector {} nsectors {}",
                offset >> 9,
                bytes >> 9
            ),
            RequestKind::WriteZeroes {
                offset,
                bytes,
                unmap,
            } => trace!(
                virtio_blk_handle_write_zeroes,
                "vdev {me:p} req {head} sector {} nsectors {} unmap {unmap}",
                offset >> 9,
                bytes >> 9
            ),
            _ => {}
        }
    }

    /// Queues a finished request for [`Self::flush_completions`], which a bottom half runs
    /// once the requests that finish in the same turn of the loop have all queued theirs
    /// (virtio_blk_req_complete; like QEMU's virtqueue_fill + virtqueue_flush, the used index
    /// moves and the driver is notified once per batch).
    fn complete(self: &Rc<Self>, done: Completion) {
        trace!(
            virtio_blk_req_complete,
            "vdev {:p} req {} status {}",
            Rc::as_ptr(self),
            done.head,
            done.status
        );
        let mut pending = self.completions.borrow_mut();
        if pending.is_empty() {
            let me = self.clone();
            AioContext::current().schedule_bh(move || me.flush_completions());
        }
        pending.push(done);
    }

    /// Writes the status bytes, returns the chains and interrupts if wanted, under one lock
    /// of the core. A request that outlived a device reset must not touch the new driver's
    /// rings.
    fn flush_completions(&self) {
        let mut done = self.completions.take();
        let mut core = lock(&self.core);
        let notify_on_empty = core.has_feature(VIRTIO_F_NOTIFY_ON_EMPTY);
        let generation = core.reset_count;
        for q in 0..core.queues.len() {
            if core.broken {
                break;
            }
            let batch = done
                .iter()
                .filter(|c| c.q == q && c.generation == generation);
            match self.push_used(&mut core.queues[q], batch, notify_on_empty) {
                Ok(true) => {
                    trace!(virtio_notify, "vdev {:p} vq {}", self as *const Self, q);
                    core.raise(super::VIRTIO_ISR_QUEUE);
                }
                Ok(false) => {}
                Err(e) => core.error(&e.to_string()),
            }
        }
        drop(core);
        self.in_flight.set(self.in_flight.get() - done.len() as u64);
        // Keep the vector's allocation for the next batch.
        done.clear();
        let mut pending = self.completions.borrow_mut();
        if pending.is_empty() {
            *pending = done;
        }
    }

    /// Returns one queue's share of a batch: status bytes first, then the used elements
    /// that publish them. Returns whether to interrupt.
    fn push_used<'a>(
        &self,
        queue: &mut Queue,
        batch: impl Iterator<Item = &'a Completion> + Clone,
        notify_on_empty: bool,
    ) -> Result<bool, QueueError> {
        for c in batch.clone() {
            // SAFETY: the pointer was found in guest RAM at pop time, and `self.mem` keeps
            // that mapping alive.
            unsafe { std::ptr::write_volatile(c.status_byte.as_ptr(), c.status) };
        }
        if queue.push_used(&self.mem, batch.map(|c| (c.head, c.used_len)))? == 0 {
            return Ok(false);
        }
        queue.needs_notification(&self.mem, notify_on_empty)
    }
}

/// A finished request waiting for its used element.
struct Completion {
    q: usize,
    head: u16,
    used_len: u32,
    /// Where the status byte goes, in guest RAM.
    status_byte: NonNull<u8>,
    status: u8,
    /// The core's reset count when the request was popped.
    generation: u64,
}
