//! What the mirror copies and how: the dirty chunks of the source, one area per iteration
//! (mirror_iteration), and in write-blocking mode each guest write as it happens
//! (bdrv_mirror_top_pwritev / do_sync_target_write in QEMU's block/mirror.c).
//!
//! Guest writes reach the source through the mirror_top filter, which tells [`MirrorState`]
//! after each one. In background mode the written chunks become dirty and a later iteration
//! copies them; in write-blocking mode the same data is written to the target before the
//! guest's request completes, so the target converges even under a steady write load. An
//! iteration clears its chunks before it reads: a guest write that lands meanwhile marks
//! them dirty again and they are copied once more.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use async_trait::async_trait;

use crate::dirty_bitmap::BdrvDirtyBitmap;
use crate::driver::{RequestFlags, StatusFlags};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::jobs::block_copy::CopyError;
use crate::jobs::top_filter::WriteObserver;
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
    /// The area an iteration is copying, whose chunks guest writes must leave dirty.
    in_flight: Cell<Option<(u64, u64)>>,
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
            in_flight: Cell::new(None),
            sync_error: RefCell::new(None),
            target_cluster_size: if target_cluster_size > granularity {
                target_cluster_size
            } else {
                0
            },
        }
    }

    /// Copies the next dirty area at or after `from` (at most `max` bytes); returns where
    /// the next iteration should look and the bytes copied, or the failure (the area is
    /// dirty again then).
    pub async fn iteration(
        &self,
        from: u64,
        max: u64,
    ) -> std::result::Result<(u64, u64), CopyError> {
        // Wraps around to the start, as QEMU's dirty iterator is reset to 0 at the end.
        let max = max.max(self.dirty.granularity() as u64);
        let area = self
            .dirty
            .next_dirty_area(from, u64::MAX, max)
            .or_else(|| self.dirty.next_dirty_area(0, u64::MAX, max));
        let Some((mut offset, mut bytes)) = area else {
            return Ok((0, 0));
        };
        let tcs = self.target_cluster_size;
        if tcs > 0 {
            let end = (offset + bytes)
                .div_ceil(tcs)
                .saturating_mul(tcs)
                .min(self.source.getlength());
            offset -= offset % tcs;
            bytes = end - offset;
        }
        trace!(
            mirror_one_iteration,
            "s {:p} offset {} bytes {}",
            self,
            offset,
            bytes
        );
        self.dirty.reset_covered(offset, bytes);
        self.in_flight.set(Some((offset, bytes)));
        let result = self.copy_area(offset, bytes).await;
        self.in_flight.set(None);
        if result.is_err() {
            self.dirty.set_dirty(offset, bytes);
        }
        result.map(|_| (offset + bytes, bytes))
    }

    /// Copies one area: zeroes where the source's whole chain reads as zeroes, data
    /// elsewhere (mirror_co_read / mirror_co_zero_or_discard).
    async fn copy_area(&self, offset: u64, bytes: u64) -> std::result::Result<(), CopyError> {
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
                let buf = IoVector::alloc(n as usize);
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

    fn overlaps_iteration(&self, offset: u64, bytes: u64) -> bool {
        self.in_flight
            .get()
            .is_some_and(|(o, b)| offset < o + b && o < offset + bytes)
    }
}

#[async_trait(?Send)]
impl WriteObserver for MirrorState {
    async fn written(&self, offset: u64, bytes: u64, qiov: Option<&IoVector>) -> Result<()> {
        if !self.active.get() {
            return Ok(());
        }
        let sync_copy = self.copy_mode == CopyMode::WriteBlocking
            && self.sync_error.borrow().is_none()
            && !self.overlaps_iteration(offset, bytes);
        let Some(qiov) = qiov.filter(|_| sync_copy) else {
            self.dirty.set_dirty(offset, bytes);
            return Ok(());
        };
        trace!(
            mirror_sync_write,
            "s {:p} offset {} bytes {}",
            self,
            offset,
            bytes
        );
        // Cleared before the copy: a write landing meanwhile marks its chunks again.
        self.dirty.reset_covered(offset, bytes);
        match self
            .target
            .co_pwritev(offset, qiov, RequestFlags::empty())
            .await
        {
            Ok(()) => {}
            Err(e) => {
                // The guest's write succeeded on the source; the job reports the target's.
                self.dirty.set_dirty(offset, bytes);
                self.sync_error.borrow_mut().get_or_insert(e);
            }
        }
        Ok(())
    }
}
