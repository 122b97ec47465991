//! What the mirror copies and how: the dirty chunks of the source, several areas at once,
//! each in a coroutine of its own (mirror_iteration / mirror_perform), and in write-blocking
//! mode each guest write as it happens (bdrv_mirror_top_pwritev / do_sync_target_write in
//! QEMU's block/mirror.c).
//!
//! Guest writes reach the source through the mirror_top filter, which hands each one to
//! [`MirrorState`]. In background mode the written chunks become dirty and a later copy
//! takes them; in write-blocking mode the same data is written to the target before the
//! guest's request completes, so the target converges even under a steady write load. A
//! background copy clears its chunks before it reads: a guest write that lands meanwhile
//! marks them dirty again and they are copied once more, after the first copy ended
//! ([`super::ops`] keeps overlapping copies apart, and write-blocking writes out of the way
//! of copies of the same bytes).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use async_trait::async_trait;

use super::ops::{InFlightOps, OpKind, MAX_IN_FLIGHT};
use crate::coroutine::co_spawn;
use crate::dirty_bitmap::BdrvDirtyBitmap;
use crate::driver::{RequestFlags, StatusFlags};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::jobs::block_copy::CopyError;
use crate::jobs::job::Job;
use crate::jobs::top_filter::{ObservedWrite, WriteFuture, WriteObserver};
use crate::node::BlockDriverState;
use crate::trace;

/// How guest writes reach the target (MirrorCopyMode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CopyMode {
    /// Mark them dirty; iterations copy them later.
    #[default]
    Background,
    /// Copy them to the target before the guest's write completes (active mirroring).
    WriteBlocking,
}

/// The state the job and its filter share.
pub struct MirrorState {
    pub(super) source: Rc<BlockDriverState>,
    pub(super) target: Rc<BlockDriverState>,
    /// The chunks still to copy: an anonymous bitmap of the dirty bitmap layer, set by the
    /// mirror_top filter rather than by every write of the node.
    pub(super) dirty: BdrvDirtyBitmap,
    copy_mode: CopyMode,
    /// Whether guest writes are still mirrored (not once the job is over).
    pub(super) active: Cell<bool>,
    /// The copies in flight, background and write-blocking.
    ops: InFlightOps,
    /// Background copies that failed, for the job to apply its error policy to.
    failures: RefCell<VecDeque<CopyError>>,
    /// Buffers of finished copies, for the next ones: a fresh zeroed buffer per copy costs
    /// the kernel clearing its pages each time.
    buffers: RefCell<Vec<IoVector>>,
    /// A write-blocking copy that failed, for the job to report.
    pub(super) sync_error: RefCell<Option<Error>>,
    /// The target's cluster size when it has a backing file and clusters larger than the
    /// granularity: a partly copied cluster would read the rest from the target's backing
    /// file, so copies cover whole clusters (s->target_cluster_size); else 0.
    target_cluster_size: u64,
}

impl MirrorState {
    /// The state of a mirror from `source` to `target`, all clean.
    pub fn new(
        source: Rc<BlockDriverState>,
        target: Rc<BlockDriverState>,
        granularity: u64,
        copy_mode: CopyMode,
        target_cluster_size: u64,
    ) -> MirrorState {
        let len = source.getlength();
        MirrorState {
            source,
            target,
            dirty: BdrvDirtyBitmap::new(None, granularity as u32, len),
            copy_mode,
            active: Cell::new(true),
            ops: InFlightOps::default(),
            failures: RefCell::new(VecDeque::new()),
            buffers: RefCell::new(Vec::new()),
            sync_error: RefCell::new(None),
            target_cluster_size: if target_cluster_size > granularity {
                target_cluster_size
            } else {
                0
            },
        }
    }

    /// Starts copying the next dirty area at or after `from` in a coroutine of its own,
    /// once fewer than [`MAX_IN_FLIGHT`] copies and less than `buf_size` bytes are in flight
    /// and no copy in flight overlaps it (mirror_iteration / mirror_perform). The area is at
    /// most `max` bytes; `done` hears of the bytes of each successful copy, and a failed one
    /// leaves its area dirty and its error for [`MirrorState::take_failure`]. Returns where
    /// the next one should look and the bytes it copies, or None when nothing is dirty.
    pub async fn launch(
        self: &Rc<Self>,
        from: u64,
        max: u64,
        buf_size: u64,
        done: Weak<Job>,
    ) -> Option<(u64, u64)> {
        let g = self.dirty.granularity() as u64;
        let ops = &self.ops;
        if ops.background_count() >= MAX_IN_FLIGHT || ops.background_bytes() >= buf_size {
            trace!(
                mirror_yield_in_flight,
                "s {:p} offset {} in_flight {}",
                self,
                from,
                ops.background_count()
            );
            ops.wait_while(|| {
                ops.background_count() >= MAX_IN_FLIGHT || ops.background_bytes() >= buf_size
            })
            .await;
        }
        // What the buffer budget still allows, in whole chunks.
        let room = buf_size.saturating_sub(ops.background_bytes());
        let max = max.min(room - room % g).max(g);
        let align = g.max(self.target_cluster_size);
        let (offset, bytes) = loop {
            // Wraps around to the start, as QEMU's dirty iterator is reset to 0 at the end.
            let (mut offset, mut bytes) = self
                .dirty
                .next_dirty_area(from, u64::MAX, max)
                .or_else(|| self.dirty.next_dirty_area(0, u64::MAX, max))?;
            let tcs = self.target_cluster_size;
            if tcs > 0 {
                let end = (offset + bytes)
                    .div_ceil(tcs)
                    .saturating_mul(tcs)
                    .min(self.source.getlength());
                offset -= offset % tcs;
                bytes = end - offset;
            }
            // A copy in flight over part of the area: stop short of it, or wait for it to
            // end if it covers the start (mirror_wait_on_conflicts).
            match ops.first_conflict(offset, bytes) {
                None => break (offset, bytes),
                Some(c) if c > offset && c - offset >= align => {
                    break (offset, (c - offset) - (c - offset) % align)
                }
                Some(_) => ops.wait_any().await,
            }
        };
        trace!(
            mirror_one_iteration,
            "s {:p} offset {} bytes {}",
            self,
            offset,
            bytes
        );
        // Cleared before the copy: a guest write landing meanwhile marks its chunks again.
        self.dirty.reset_covered(offset, bytes);
        let id = ops.enter(offset, bytes, OpKind::Background);
        let state = self.clone();
        co_spawn(async move {
            let _op = state.ops.guard(id);
            let result = state.copy_area(offset, bytes).await;
            trace!(
                mirror_iteration_done,
                "s {:p} offset {} bytes {} ret {}",
                &*state,
                offset,
                bytes,
                result.as_ref().map_or_else(|e| -e.error.errno(), |_| 0)
            );
            match result {
                Ok(()) => {
                    if let Some(job) = done.upgrade() {
                        job.progress_update(bytes);
                    }
                }
                Err(e) => {
                    state.dirty.set_dirty(offset, bytes);
                    state.failures.borrow_mut().push_back(e);
                }
            }
        });
        Some((offset + bytes, bytes))
    }

    /// The oldest failed background copy not handled yet.
    pub fn take_failure(&self) -> Option<CopyError> {
        self.failures.borrow_mut().pop_front()
    }

    /// Background copies in flight and the bytes they copy.
    pub fn in_flight(&self) -> (usize, u64) {
        (self.ops.background_count(), self.ops.background_bytes())
    }

    /// Waits until some copy in flight ends.
    pub async fn wait_for_any_copy(&self) {
        self.ops.wait_any().await;
    }

    /// Waits until no background copy is in flight (mirror_wait_for_all_io).
    pub async fn wait_for_all_copies(&self) {
        self.ops.wait_all_background().await;
    }

    /// Copies one area: zeroes where the source's whole chain reads as zeroes, data
    /// elsewhere (mirror_co_read / mirror_co_zero_or_discard).
    async fn copy_area(&self, offset: u64, bytes: u64) -> std::result::Result<(), CopyError> {
        let pooled = self.buffers.borrow_mut().pop();
        let buf = match pooled {
            Some(b) if b.len() >= bytes as usize => b,
            _ => IoVector::alloc(bytes as usize),
        };
        let result = self.copy_area_with(offset, bytes, &buf).await;
        let mut buffers = self.buffers.borrow_mut();
        if buffers.len() < MAX_IN_FLIGHT {
            buffers.push(buf);
        }
        result
    }

    async fn copy_area_with(
        &self,
        offset: u64,
        bytes: u64,
        whole: &IoVector,
    ) -> std::result::Result<(), CopyError> {
        let mut done = 0;
        while done < bytes {
            let (status, _) = self
                .source
                .co_block_status_above(None, true, offset + done, bytes - done)
                .await
                .map_err(|error| CopyError {
                    is_read: true,
                    error,
                })?;
            let n = status.bytes.clamp(1, bytes - done);
            if status.flags.contains(StatusFlags::ZERO) {
                self.target
                    .co_pwrite_zeroes(offset + done, n, RequestFlags::MAY_UNMAP)
                    .await
                    .map_err(|error| CopyError {
                        is_read: false,
                        error,
                    })?;
            } else {
                let buf = whole.slice(0, n as usize);
                self.source
                    .co_preadv(offset + done, &buf, RequestFlags::empty())
                    .await
                    .map_err(|error| CopyError {
                        is_read: true,
                        error,
                    })?;
                self.target
                    .co_pwritev(offset + done, &buf, RequestFlags::empty())
                    .await
                    .map_err(|error| CopyError {
                        is_read: false,
                        error,
                    })?;
            }
            done += n;
        }
        Ok(())
    }
}

#[async_trait(?Send)]
impl WriteObserver for MirrorState {
    async fn around_write(&self, req: ObservedWrite<'_>, write: WriteFuture<'_>) -> Result<()> {
        let ObservedWrite {
            offset,
            bytes,
            qiov,
        } = req;
        if !self.active.get() || self.copy_mode != CopyMode::WriteBlocking {
            let written = write.await;
            // Even a failed write may have changed part of the source.
            if self.active.get() {
                self.dirty.set_dirty(offset, bytes);
            }
            return written;
        }
        // Copies of these bytes in flight end first and none starts until this write is
        // over, so that neither the source nor the target sees them in another order and
        // no chunk is marked clean over a newer write (active_write_prepare with
        // mirror_wait_on_conflicts).
        while self.ops.first_conflict(offset, bytes).is_some() {
            self.ops.wait_any().await;
        }
        let _op = self.ops.begin(offset, bytes, OpKind::Active);
        if let Err(e) = write.await {
            if self.active.get() {
                self.dirty.set_dirty(offset, bytes);
            }
            return Err(e);
        }
        let sync_copy = self.active.get() && self.sync_error.borrow().is_none();
        let Some(qiov) = qiov.filter(|_| sync_copy) else {
            // Zeroes and discards, or a copy that failed before: a background copy
            // takes them.
            if self.active.get() {
                self.dirty.set_dirty(offset, bytes);
            }
            return Ok(());
        };
        trace!(
            mirror_sync_write,
            "s {:p} offset {} bytes {}",
            self,
            offset,
            bytes
        );
        // The chunks the write covers whole are clean once it reaches the target; the
        // others stay dirty for a background copy of the rest of them.
        self.dirty.reset_covered(offset, bytes);
        if let Err(e) = self
            .target
            .co_pwritev(offset, qiov, RequestFlags::empty())
            .await
        {
            // The guest's write succeeded on the source; the job reports the target's.
            self.dirty.set_dirty(offset, bytes);
            self.sync_error.borrow_mut().get_or_insert(e);
        }
        Ok(())
    }
}
