//! Requests that carry no data: write zeroes (with its emulation by writing a zero buffer),
//! discard, flush, and truncate (bdrv_co_pwrite_zeroes, bdrv_co_pdiscard, bdrv_co_flush and
//! bdrv_co_truncate in QEMU's block/io.c).

use super::MAX_ZERO_BOUNCE;
use super::{check_request, check_request64, round_down, round_up, InFlightGuard, WriteGenGuard};
use crate::driver::RequestFlags;
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::BlockDriverState;
use crate::trace;

/// The limit of a driver that sets none (QEMU's INT64_MAX).
const MAX_UNLIMITED: u64 = i64::MAX as u64;

/// The smaller of two limits where 0 means "none" (MIN_NON_ZERO).
fn min_non_zero(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, b) => b,
        (a, 0) => a,
        (a, b) => a.min(b),
    }
}

impl BlockDriverState {
    /// Writes zeroes over a range (bdrv_co_pwrite_zeroes). Partial blocks at either end of an
    /// unaligned range are written as data, by read-modify-write.
    pub async fn co_pwrite_zeroes(
        &self,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        trace!(
            bdrv_co_pwrite_zeroes,
            "bs {:p} offset {} bytes {} flags 0x{:x}",
            self,
            offset,
            bytes,
            flags.bits()
        );
        check_request(offset, bytes)?;
        self.check_writable()?;
        let align = self.limits().request_alignment as u64;
        let end = offset + bytes;
        let head_end = round_up(offset, align).min(end);
        let tail_start = round_down(end, align).max(head_end);
        let data_flags = flags & RequestFlags::FUA;
        if head_end > offset {
            self.co_pwritev(
                offset,
                &IoVector::alloc((head_end - offset) as usize),
                data_flags,
            )
            .await?;
        }
        if tail_start > head_end {
            let _in_flight = InFlightGuard::new(self);
            let _gen = WriteGenGuard::dirtying(self, head_end, tail_start - head_end);
            let _req = self.track(head_end, tail_start - head_end, false).await;
            self.aligned_pwrite_zeroes(head_end, tail_start - head_end, flags)
                .await?;
        }
        if end > tail_start {
            self.co_pwritev(
                tail_start,
                &IoVector::alloc((end - tail_start) as usize),
                data_flags,
            )
            .await?;
        }
        Ok(())
    }

    pub(super) async fn aligned_pwrite_zeroes(
        &self,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        self.debug_event(crate::debug_event::BlkdbgEvent::PwritevZero)
            .await;
        self.do_pwrite_zeroes(offset, bytes, flags | RequestFlags::ZERO_WRITE)
            .await?;
        self.debug_event(crate::debug_event::BlkdbgEvent::PwritevDone)
            .await;
        self.grow_to(offset + bytes);
        Ok(())
    }

    /// Asks the driver for efficient zeroing in pieces aligned to its preference (a head up
    /// to the first boundary, the aligned bulk, the tail); pieces it cannot zero natively
    /// are written from a zero buffer (bdrv_co_do_pwrite_zeroes). The alignment need not
    /// be a power of two.
    async fn do_pwrite_zeroes(&self, offset: u64, bytes: u64, flags: RequestFlags) -> Result<()> {
        let limits = self.limits();
        let alignment = (limits.pwrite_zeroes_alignment as u64)
            .max(limits.request_alignment as u64)
            .max(1);
        let max_transfer = min_non_zero(limits.max_transfer, MAX_ZERO_BOUNCE);
        let max_write_zeroes = round_down(
            min_non_zero(limits.max_pwrite_zeroes, MAX_UNLIMITED),
            alignment,
        )
        .max(alignment);
        let mut head = offset % alignment;
        let tail = (offset + bytes) % alignment;
        let (mut pos, mut left) = (offset, bytes);
        while left > 0 {
            let mut num = left;
            if head != 0 {
                // A small piece up to the first boundary, no longer than one bounce buffer
                // in case it must be written as data.
                num = left.min(max_transfer).min(alignment - head);
                head = (head + num) % alignment;
            } else if tail != 0 && num > alignment {
                num -= tail;
            }
            num = num.min(max_write_zeroes);
            match self.drv().co_pwrite_zeroes(self, pos, num, flags).await {
                Err(e)
                    if e.errno() == libc::ENOTSUP && !flags.contains(RequestFlags::NO_FALLBACK) =>
                {
                    num = num.min(max_transfer);
                    let zeroes = IoVector::alloc(num as usize);
                    let write_flags =
                        flags & self.drv().supported_write_flags() & RequestFlags::FUA;
                    self.drv()
                        .co_pwritev(self, pos, &zeroes, write_flags)
                        .await?;
                }
                other => other?,
            }
            pos += num;
            left -= num;
        }
        Ok(())
    }

    /// Discards a range if the node was opened with discard=unmap (bdrv_co_pdiscard): the
    /// driver gets the unaligned head and tail as pieces of their own, which it may refuse
    /// (discard is only advisory), and the aligned bulk in pieces it can take.
    pub async fn co_pdiscard(&self, offset: u64, bytes: u64) -> Result<()> {
        trace!(
            bdrv_co_pdiscard,
            "bs {:p} offset {} bytes {}",
            self,
            offset,
            bytes
        );
        // A discard moves no data: one may cover more than any read or write (a qcow2
        // shrink discards everything past the new end at once).
        check_request64(offset, bytes)?;
        self.check_writable()?;
        if !self.open_flags().unmap || bytes == 0 {
            return Ok(());
        }
        let _in_flight = InFlightGuard::new(self);
        let _gen = WriteGenGuard::dirtying(self, offset, bytes);
        let limits = self.limits();
        let request_alignment = (limits.request_alignment as u64).max(1);
        let align = (limits.pdiscard_alignment as u64).max(request_alignment);
        // (Never below the alignment, whatever the driver says: a zero would never end.)
        let max_pdiscard =
            round_down(min_non_zero(limits.max_pdiscard, MAX_UNLIMITED), align).max(align);
        let mut head = offset % align;
        let mut tail = (offset + bytes) % align;
        let _req = self.track(offset, bytes, false).await;
        let (mut pos, mut left) = (offset, bytes);
        while left > 0 {
            let mut num = left;
            if head != 0 {
                num = left.min(align - head);
                if !num.is_multiple_of(request_alignment) {
                    num %= request_alignment;
                }
                head = (head + num) % align;
            } else if tail != 0 {
                if num > align {
                    num -= tail;
                } else if !tail.is_multiple_of(request_alignment) && tail > request_alignment {
                    tail %= request_alignment;
                    num -= tail;
                }
            }
            num = num.min(max_pdiscard);
            match self.drv().co_pdiscard(self, pos, num).await {
                Ok(()) => {}
                Err(e) if e.errno() == libc::ENOTSUP => {}
                // A driver may reject an unaligned head or tail outright.
                Err(e)
                    if e.errno() == libc::EINVAL
                        && (!pos.is_multiple_of(align) || !num.is_multiple_of(align)) => {}
                Err(e) => return Err(e),
            }
            pos += num;
            left -= num;
        }
        Ok(())
    }

    /// Flushes caches down to stable storage (bdrv_co_flush): the driver's metadata to its
    /// children, the storage itself unless cache.no-flush, then the `file` child.
    pub async fn co_flush(&self) -> Result<()> {
        trace!(bdrv_co_flush, "bs {:p}", self);
        let _in_flight = InFlightGuard::new(self);
        let current_gen = self.write_gen.get();
        // Flushes run one at a time, in the order of the writes they cover: a flush that
        // waited behind another usually finds nothing new to force to the disk.
        self.flush_queue
            .wait_while(|| self.active_flush.get())
            .await;
        self.active_flush.set(true);
        let _active = ActiveFlush(self);
        self.co_flush_serialised(current_gen).await
    }

    async fn co_flush_serialised(&self, current_gen: u64) -> Result<()> {
        if let Some(result) = self.drv().co_flush(self).await {
            result?;
            self.flushed_gen.set(current_gen);
            return Ok(());
        }
        let file = self.file();
        if let Some(file) = &file {
            file.debug_event(crate::debug_event::BlkdbgEvent::FlushToOs)
                .await;
        }
        self.drv().co_flush_to_os(self).await?;
        // Only what was written since the last flush needs forcing to the disk (a write's
        // own FUA flush runs before its write counts); as in QEMU, a node with nothing new
        // neither flushes nor raises flush_to_disk, so blkdebug rules see the same requests.
        if !self.open_flags().cache.no_flush && self.flushed_gen.get() != current_gen {
            if let Some(file) = &file {
                file.debug_event(crate::debug_event::BlkdbgEvent::FlushToDisk)
                    .await;
            }
            self.drv().co_flush_to_disk(self).await?;
        }
        for child in self.children() {
            if child.name != "backing" && !child.bs.is_read_only() {
                child.bs.co_flush_boxed().await?;
            }
        }
        // Flushes finish in nondecreasing generation order, so this never goes backwards.
        self.flushed_gen.set(current_gen);
        Ok(())
    }

    fn co_flush_boxed(&self) -> crate::coroutine::LocalBoxFuture<'_, Result<()>> {
        Box::pin(self.co_flush())
    }

    /// The node's length in bytes (bdrv_co_getlength).
    pub fn getlength(&self) -> u64 {
        self.total_bytes.get()
    }

    /// Resizes the node (bdrv_co_truncate).
    pub async fn co_truncate(
        &self,
        offset: u64,
        exact: bool,
        prealloc: crate::driver::PreallocMode,
    ) -> Result<()> {
        trace!(bdrv_co_truncate, "bs {:p} offset {}", self, offset);
        check_request(offset, 0)?;
        if self.is_read_only() {
            return Err(Error::new(libc::EACCES, "Image is read-only"));
        }
        let _in_flight = InFlightGuard::new(self);
        let _gen = WriteGenGuard::new(self);
        let _req = self
            .track(offset.min(self.total_bytes.get()), u64::MAX / 2, true)
            .await;
        self.drv()
            .co_truncate(self, offset, exact, prealloc)
            .await?;
        let len = self.refresh_total_bytes().await?;
        self.truncate_dirty_bitmaps(len);
        Ok(())
    }
}

/// Ends a node's running flush and lets the next one in, however the flush ends.
struct ActiveFlush<'a>(&'a BlockDriverState);

impl Drop for ActiveFlush<'_> {
    fn drop(&mut self) {
        self.0.active_flush.set(false);
        self.0.flush_queue.restart_all();
    }
}
