//! The io_uring engine: the kernel does the I/O asynchronously, no worker threads (aio=io_uring).
//!
//! QEMU's block/io_uring.c. One ring per AioContext. A coroutine puts a submission queue entry
//! on the ring and yields; the entries of one loop iteration go to the kernel together in a
//! single `io_uring_enter`, issued from a bottom half (QEMU's defer_call batching). The kernel
//! signals completions on an eventfd registered with the ring; the loop's reaper then wakes the
//! coroutine whose `user_data` matches each completion.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, squeue, types, IoUring};

use super::notifier::EventNotifier;
use super::AioContext;
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::trace;

const RING_ENTRIES: u32 = 128;

/// One io_uring instance serving one AioContext.
pub struct IoUringEngine {
    ring: RefCell<IoUring>,
    ops: RefCell<Vec<Option<InFlight>>>,
    free_slots: RefCell<Vec<usize>>,
    flush_scheduled: Cell<bool>,
    notifier: EventNotifier,
}

/// The state of one submitted operation until its completion is reaped.
struct InFlight {
    result: Option<i32>,
    waker: Option<Waker>,
    /// Set when the waiting coroutine went away: the slot is freed on completion instead.
    orphaned: bool,
    /// The iovec array and the memory it points to must outlive the kernel's use of them.
    _iovecs: Box<[libc::iovec]>,
    _buffers: Option<IoVector>,
}

impl IoUringEngine {
    pub(crate) fn new() -> Result<Rc<IoUringEngine>> {
        let ring = IoUring::new(RING_ENTRIES)
            .map_err(|e| Error::from(e).context("Failed to set up io_uring: "))?;
        let notifier = EventNotifier::new()?;
        ring.submitter()
            .register_eventfd(notifier.as_raw_fd())
            .map_err(|e| Error::from(e).context("Failed to register io_uring eventfd: "))?;
        let engine = Rc::new(IoUringEngine {
            ring: RefCell::new(ring),
            ops: RefCell::new(Vec::new()),
            free_slots: RefCell::new(Vec::new()),
            flush_scheduled: Cell::new(false),
            notifier,
        });
        let reaper = engine.clone();
        AioContext::current()
            .spawn(async move { reaper.reap_forever().await })
            .detach();
        Ok(engine)
    }

    /// Reads into `qiov` from `fd` at `offset`; returns the byte count (may be short).
    pub async fn preadv(self: &Rc<Self>, fd: RawFd, qiov: &IoVector, offset: u64) -> Result<usize> {
        self.submit_rw(fd, qiov, offset, false).await
    }

    /// Writes `qiov` to `fd` at `offset`; returns the byte count (may be short).
    pub async fn pwritev(
        self: &Rc<Self>,
        fd: RawFd,
        qiov: &IoVector,
        offset: u64,
    ) -> Result<usize> {
        self.submit_rw(fd, qiov, offset, true).await
    }

    /// A single-segment request is a plain READ/WRITE with the buffer address; a vector needs
    /// READV/WRITEV and an iovec array, kept on the heap so it stays put until the kernel has
    /// consumed it.
    fn submit_rw(
        self: &Rc<Self>,
        fd: RawFd,
        qiov: &IoVector,
        offset: u64,
        write: bool,
    ) -> impl Future<Output = Result<usize>> {
        let iovecs = qiov.iovecs();
        let fd = types::Fd(fd);
        if let [one] = iovecs.as_slice() {
            let (base, len) = (one.iov_base.cast::<u8>(), one.iov_len as u32);
            let entry = if write {
                opcode::Write::new(fd, base, len).offset(offset).build()
            } else {
                opcode::Read::new(fd, base, len).offset(offset).build()
            };
            return self.submit(entry, Box::default(), Some(qiov.clone()));
        }
        let iovecs: Box<[libc::iovec]> = iovecs.into_vec().into_boxed_slice();
        let (ptr, n) = (iovecs.as_ptr(), iovecs.len() as u32);
        let entry = if write {
            opcode::Writev::new(fd, ptr, n).offset(offset).build()
        } else {
            opcode::Readv::new(fd, ptr, n).offset(offset).build()
        };
        self.submit(entry, iovecs, Some(qiov.clone()))
    }

    /// fdatasync(fd) through the ring.
    pub async fn fdatasync(self: &Rc<Self>, fd: RawFd) -> Result<()> {
        let entry = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        self.submit(entry, Box::default(), None).await.map(|_| ())
    }

    fn submit(
        self: &Rc<Self>,
        entry: squeue::Entry,
        iovecs: Box<[libc::iovec]>,
        buffers: Option<IoVector>,
    ) -> impl Future<Output = Result<usize>> {
        let slot = self.alloc_slot(InFlight {
            result: None,
            waker: None,
            orphaned: false,
            _iovecs: iovecs,
            _buffers: buffers,
        });
        let entry = entry.user_data(slot as u64);
        trace!(
            luring_do_submit,
            "engine {:p} slot {}",
            Rc::as_ptr(self),
            slot
        );
        self.push(&entry);
        UringRequest {
            engine: self.clone(),
            slot,
            done: false,
        }
    }

    fn alloc_slot(&self, op: InFlight) -> usize {
        let mut ops = self.ops.borrow_mut();
        match self.free_slots.borrow_mut().pop() {
            Some(i) => {
                ops[i] = Some(op);
                i
            }
            None => {
                ops.push(Some(op));
                ops.len() - 1
            }
        }
    }

    /// Queues an entry; the batch is handed to the kernel by a bottom half at the end of
    /// this loop iteration, or right away if the submission queue is full.
    fn push(self: &Rc<Self>, entry: &squeue::Entry) {
        loop {
            // SAFETY: the entry's iovec array and buffers are owned by its `InFlight` slot,
            // which lives until the completion for this `user_data` is reaped.
            let pushed = unsafe { self.ring.borrow_mut().submission().push(entry).is_ok() };
            if pushed {
                break;
            }
            self.flush();
        }
        if !self.flush_scheduled.replace(true) {
            let me = self.clone();
            AioContext::current().schedule_bh(move || me.flush());
        }
    }

    /// Submits every queued entry in one system call (ioq_submit).
    fn flush(&self) {
        self.flush_scheduled.set(false);
        let mut ring = self.ring.borrow_mut();
        let queued = ring.submission().len();
        if queued > 0 {
            trace!(
                luring_io_uring_submit,
                "engine {:p} entries {}",
                self as *const _,
                queued
            );
            // EBUSY/EAGAIN mean the kernel is short of room: completions will free some, and
            // the reaper flushes again after reaping.
            let _ = ring.submit();
        }
    }

    async fn reap_forever(self: Rc<Self>) {
        while self.notifier.wait().await.is_ok() {
            self.reap();
            self.flush();
        }
    }

    /// Collects completions and wakes their coroutines (luring_process_completions).
    fn reap(&self) {
        let mut ring = self.ring.borrow_mut();
        let mut ops = self.ops.borrow_mut();
        for cqe in ring.completion() {
            let slot = cqe.user_data() as usize;
            let Some(op) = ops.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            trace!(
                luring_process_completion,
                "slot {} ret {}",
                slot,
                cqe.result()
            );
            if op.orphaned {
                ops[slot] = None;
                self.free_slots.borrow_mut().push(slot);
                continue;
            }
            op.result = Some(cqe.result());
            if let Some(w) = op.waker.take() {
                w.wake();
            }
        }
    }

    /// Number of operations submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.ops.borrow().iter().filter(|o| o.is_some()).count()
    }
}

/// The future a coroutine awaits for one ring operation.
struct UringRequest {
    engine: Rc<IoUringEngine>,
    slot: usize,
    done: bool,
}

impl Future for UringRequest {
    type Output = Result<usize>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<usize>> {
        let slot = self.slot;
        let mut ops = self.engine.ops.borrow_mut();
        let op = ops[slot].as_mut().expect("io_uring slot vanished");
        match op.result {
            None => {
                op.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Some(res) => {
                ops[slot] = None;
                drop(ops);
                self.engine.free_slots.borrow_mut().push(slot);
                self.done = true;
                Poll::Ready(if res < 0 {
                    Err(Error::from_errno(-res))
                } else {
                    Ok(res as usize)
                })
            }
        }
    }
}

impl Drop for UringRequest {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The kernel may still write into the buffers: keep the slot until it completes.
        let mut ops = self.engine.ops.borrow_mut();
        if let Some(op) = ops[self.slot].as_mut() {
            if op.result.is_some() {
                ops[self.slot] = None;
                self.engine.free_slots.borrow_mut().push(self.slot);
            } else {
                op.orphaned = true;
                op.waker = None;
            }
        }
    }
}
