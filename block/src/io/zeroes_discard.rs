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

    /// Asks the driver for efficient zeroing in pieces aligned to its preference; pieces it
    /// cannot zero natively are written from a zero buffer (bdrv_co_do_pwrite_zeroes).
    async fn do_pwrite_zeroes(&self, offset: u64, bytes: u64, flags: RequestFlags) -> Result<()> {
        let limits = self.limits();
        let zero_align = (limits.pwrite_zeroes_alignment as u64)
            .max(limits.request_alignment as u64)
            .max(1);
        let max = match limits.max_transfer {
            0 => MAX_ZERO_BOUNCE,
            m => m.min(MAX_ZERO_BOUNCE),
        };
        let end = offset + bytes;
        let mut pos = offset;
        while pos < end {
            // Head up to the next alignment boundary, then whole aligned pieces, then the tail.
            let boundary = round_up(pos + 1, zero_align);
            let n = if !pos.is_multiple_of(zero_align) {
                boundary.min(end) - pos
            } else if end - pos >= zero_align {
                round_down(end - pos, zero_align)
            } else {
                end - pos
            };
            match self.drv().co_pwrite_zeroes(self, pos, n, flags).await {
                Err(e)
                    if e.errno() == libc::ENOTSUP && !flags.contains(RequestFlags::NO_FALLBACK) =>
                {
                    let mut done = 0;
                    while done < n {
                        let chunk = (n - done).min(max);
                        let zeroes = IoVector::alloc(chunk as usize);
                        let write_flags =
                            flags & self.drv().supported_write_flags() & RequestFlags::FUA;
                        self.drv()
                            .co_pwritev(self, pos + done, &zeroes, write_flags)
                            .await?;
                        done += chunk;
                    }
                }
                other => other?,
            }
            pos += n;
        }
        Ok(())
    }

    /// Discards a range if the node was opened with discard=unmap (bdrv_co_pdiscard). The
    /// unaligned head and tail are dropped: discard is only advisory.
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
        if !self.open_flags().unmap {
            return Ok(());
        }
        let _in_flight = InFlightGuard::new(self);
        let _gen = WriteGenGuard::dirtying(self, offset, bytes);
        let limits = self.limits();
        let align = (limits.pdiscard_alignment as u64)
            .max(limits.request_alignment as u64)
            .max(1);
        let start = round_up(offset, align);
        let end = round_down(offset + bytes, align).max(start);
        let end = if offset + bytes >= self.total_bytes.get() {
            (offset + bytes).max(start)
        } else {
            end
        };
        if end <= start {
            return Ok(());
        }
        let _req = self.track(start, end - start, false).await;
        match self.drv().co_pdiscard(self, start, end - start).await {
            Err(e) if e.errno() == libc::ENOTSUP => Ok(()),
            other => other,
        }
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
