//! The generic request path every node's I/O goes through (QEMU's block/io.c).
//!
//! Before a driver sees a request, this layer: checks its range; counts it in flight; widens
//! an unaligned request to the node's `request_alignment` (reads through bounce buffers,
//! writes by read-modify-write); tracks it so that overlapping requests that must not
//! interleave wait for each other (serialisation); splits it at `max_transfer`; turns reads
//! past the node's end into zeroes; emulates write-zeroes and FUA where the driver cannot; and
//! keeps the cached length up to date when a write grows the node.

use std::cell::{Cell, RefCell};

use crate::driver::{BlockStatus, RequestFlags, StatusFlags};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::{BlockDriverState, DetectZeroes};
use crate::trace;

/// Largest request the layer accepts (QEMU's BDRV_MAX_LENGTH is about 2^63; we keep I/O
/// sizes within what an iovec can describe).
pub const MAX_REQUEST_BYTES: u64 = i32::MAX as u64 & !511;
/// Largest zero buffer written when a driver cannot write zeroes natively.
const MAX_ZERO_BOUNCE: u64 = 16 << 20;

/// A request in flight on a node, as other requests see it.
struct TrackedRequest {
    id: u64,
    offset: u64,
    bytes: u64,
    serialising: bool,
    /// Waiting for a conflicting request: others do not wait for it.
    waiting: bool,
}

/// The list of requests in flight on a node (bs->tracked_requests).
#[derive(Default)]
pub(crate) struct TrackedRequests {
    list: RefCell<Vec<TrackedRequest>>,
    next_id: Cell<u64>,
}

/// Removes a tracked request when the request finishes, however it finishes.
struct TrackedGuard<'a> {
    bs: &'a BlockDriverState,
    id: u64,
}

impl Drop for TrackedGuard<'_> {
    fn drop(&mut self) {
        self.bs
            .tracked
            .list
            .borrow_mut()
            .retain(|r| r.id != self.id);
        self.bs.tracked_done.restart_all();
    }
}

/// Counts a request in flight on a node for as long as it lives.
struct InFlightGuard<'a>(&'a BlockDriverState);

impl<'a> InFlightGuard<'a> {
    fn new(bs: &'a BlockDriverState) -> Self {
        bs.in_flight.inc();
        InFlightGuard(bs)
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// Counts a write when it finishes (bdrv_co_write_req_finish's write_gen): a flush tells
/// from the count whether anything was written since the last one.
struct WriteGenGuard<'a>(&'a BlockDriverState);

impl Drop for WriteGenGuard<'_> {
    fn drop(&mut self) {
        self.0.write_gen.set(self.0.write_gen.get() + 1);
    }
}

/// Rejects ranges the layer cannot represent (bdrv_check_request).
fn check_request(offset: u64, bytes: u64) -> Result<()> {
    if bytes > MAX_REQUEST_BYTES
        || offset
            .checked_add(bytes)
            .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(Error::from_errno(libc::EINVAL));
    }
    Ok(())
}

/// The part of `qiov` a piece covers; the whole vector itself when the request is one piece.
fn piece(qiov: &IoVector, done: u64, n: u64) -> std::borrow::Cow<'_, IoVector> {
    if done == 0 && n as usize == qiov.len() {
        std::borrow::Cow::Borrowed(qiov)
    } else {
        std::borrow::Cow::Owned(qiov.slice(done as usize, n as usize))
    }
}

fn round_down(x: u64, align: u64) -> u64 {
    x - x % align
}

fn round_up(x: u64, align: u64) -> u64 {
    round_down(x + align - 1, align)
}

impl BlockDriverState {
    /// Registers a request and waits for overlapping ones it must not interleave with: a
    /// serialising request waits for every overlapping request, and any request waits for
    /// an overlapping serialising one (bdrv_wait_serialising_requests). As in QEMU, a
    /// request that is itself waiting is not waited for, so no two requests can wait for
    /// each other, and a request suspended (by blkdebug) holds up only what overlaps it.
    async fn track(&self, offset: u64, bytes: u64, serialising: bool) -> TrackedGuard<'_> {
        let id = self.tracked.next_id.get();
        self.tracked.next_id.set(id + 1);
        self.tracked.list.borrow_mut().push(TrackedRequest {
            id,
            offset,
            bytes,
            serialising,
            waiting: true,
        });
        let guard = TrackedGuard { bs: self, id };
        let conflicts = || {
            let mut list = self.tracked.list.borrow_mut();
            let found = list.iter().any(|r| {
                r.id != id
                    && !r.waiting
                    && (serialising || r.serialising)
                    && r.offset < offset + bytes
                    && offset < r.offset + r.bytes
            });
            if !found {
                if let Some(me) = list.iter_mut().find(|r| r.id == id) {
                    me.waiting = false;
                }
            }
            found
        };
        if conflicts() {
            trace!(
                bdrv_co_wait_serialising,
                "bs {:p} offset {} bytes {}",
                self,
                offset,
                bytes
            );
            self.tracked_done.wait_while(conflicts).await;
        }
        guard
    }

    /// Reads `qiov.len()` bytes at `offset` (bdrv_co_preadv).
    pub async fn co_preadv(&self, offset: u64, qiov: &IoVector, flags: RequestFlags) -> Result<()> {
        let bytes = qiov.len() as u64;
        trace!(
            bdrv_co_preadv_part,
            "bs {:p} offset {} bytes {} flags 0x{:x}",
            self,
            offset,
            bytes,
            flags.bits()
        );
        check_request(offset, bytes)?;
        let _in_flight = InFlightGuard::new(self);
        let align = self.limits().request_alignment as u64;
        let start = round_down(offset, align);
        let end = round_up(offset + bytes, align);
        let _req = self
            .track(
                start,
                end - start,
                flags.contains(RequestFlags::SERIALISING),
            )
            .await;
        if start == offset && end == offset + bytes {
            return self.aligned_preadv(offset, qiov, flags).await;
        }
        // Unaligned: read the whole aligned range, with bounce buffers around the caller's.
        trace!(
            bdrv_co_pad_request,
            "bs {:p} head {} tail {}",
            self,
            offset - start,
            end - offset - bytes
        );
        let mut padded = IoVector::new();
        padded.push_vector(&IoVector::alloc((offset - start) as usize));
        padded.push_vector(qiov);
        padded.push_vector(&IoVector::alloc((end - offset - bytes) as usize));
        self.aligned_preadv(start, &padded, flags).await
    }

    /// Reads an aligned range: splits at max_transfer and zero-fills what lies past the end
    /// of the node (bdrv_aligned_preadv).
    async fn aligned_preadv(
        &self,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        let bytes = qiov.len() as u64;
        let align = self.limits().request_alignment as u64;
        let total = self.total_bytes.get();
        let readable = round_up(total.saturating_sub(offset), align).min(bytes);
        for (done, n) in self.max_transfer_pieces(readable) {
            let part = piece(qiov, done, n);
            self.drv()
                .co_preadv(
                    self,
                    offset + done,
                    &part,
                    flags & !RequestFlags::SERIALISING,
                )
                .await?;
        }
        if readable < bytes {
            qiov.fill(readable as usize, (bytes - readable) as usize, 0);
        }
        Ok(())
    }

    /// Writes `qiov` at `offset` (bdrv_co_pwritev).
    pub async fn co_pwritev(
        &self,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        let bytes = qiov.len() as u64;
        trace!(
            bdrv_co_pwritev_part,
            "bs {:p} offset {} bytes {} flags 0x{:x}",
            self,
            offset,
            bytes,
            flags.bits()
        );
        check_request(offset, bytes)?;
        self.check_writable()?;
        if flags.contains(RequestFlags::WRITE_COMPRESSED)
            && !self
                .drv()
                .supported_write_flags()
                .contains(RequestFlags::WRITE_COMPRESSED)
        {
            return Err(Error::from_errno(libc::ENOTSUP));
        }
        let _in_flight = InFlightGuard::new(self);
        let _gen = WriteGenGuard(self);
        let align = self.limits().request_alignment as u64;
        let start = round_down(offset, align);
        let end = round_up(offset + bytes, align);
        if start == offset && end == offset + bytes {
            let _req = self
                .track(offset, bytes, flags.contains(RequestFlags::SERIALISING))
                .await;
            return self.aligned_pwritev(offset, qiov, flags).await;
        }
        // Unaligned: read-modify-write of the head and tail blocks. The request serialises so
        // no other write can slip into the widened range between our read and our write.
        let _req = self.track(start, end - start, true).await;
        let head = IoVector::alloc(align as usize);
        let tail = IoVector::alloc(align as usize);
        let tail_start = end - align;
        self.padding_rmw_read(offset, bytes, &head, &tail).await?;
        let mut padded = IoVector::new();
        padded.push_slice(&head, 0, (offset - start) as usize);
        padded.push_vector(qiov);
        padded.push_slice(
            &tail,
            ((offset + bytes) - tail_start) as usize,
            (end - offset - bytes) as usize,
        );
        self.aligned_pwritev(start, &padded, flags).await
    }

    /// Reads the aligned blocks around an unaligned write's head and tail
    /// (bdrv_padding_rmw_read). When the padded request spans at most two blocks QEMU reads
    /// both at once, raising both "before" events first; the debug events keep that order.
    async fn padding_rmw_read(
        &self,
        offset: u64,
        bytes: u64,
        head: &IoVector,
        tail: &IoVector,
    ) -> Result<()> {
        use crate::filters::blkdebug::BlkdbgEvent as Ev;
        let align = self.limits().request_alignment as u64;
        let start = round_down(offset, align);
        let end = round_up(offset + bytes, align);
        let tail_start = end - align;
        let (has_head, has_tail) = (offset != start, end != offset + bytes);
        let merged = has_head && has_tail && end - start <= 2 * align;
        if has_head {
            self.debug_event(Ev::PwritevRmwHead).await;
            if merged {
                self.debug_event(Ev::PwritevRmwTail).await;
            }
            trace!(
                bdrv_co_padding_rmw_read,
                "bs {:p} offset {} bytes {}",
                self,
                start,
                align
            );
            self.aligned_preadv(start, head, RequestFlags::empty())
                .await?;
            if !merged {
                self.debug_event(Ev::PwritevRmwAfterHead).await;
            }
        }
        if has_tail && !merged {
            self.debug_event(Ev::PwritevRmwTail).await;
        }
        if has_head && has_tail && tail_start == start {
            tail.copy_from(0, head, 0, align as usize);
        } else if has_tail {
            trace!(
                bdrv_co_padding_rmw_read,
                "bs {:p} offset {} bytes {}",
                self,
                tail_start,
                align
            );
            self.aligned_preadv(tail_start, tail, RequestFlags::empty())
                .await?;
        }
        if merged {
            self.debug_event(Ev::PwritevRmwAfterHead).await;
        }
        if has_tail {
            self.debug_event(Ev::PwritevRmwAfterTail).await;
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.is_read_only() {
            return Err(Error::from_errno(libc::EPERM));
        }
        Ok(())
    }

    /// Writes an aligned range: zero detection, splitting at max_transfer, FUA emulation,
    /// and growth of the cached length (bdrv_aligned_pwritev).
    async fn aligned_pwritev(
        &self,
        offset: u64,
        qiov: &IoVector,
        mut flags: RequestFlags,
    ) -> Result<()> {
        let bytes = qiov.len() as u64;
        if self.detect_zeroes != DetectZeroes::Off && qiov.is_zero() {
            if self.detect_zeroes == DetectZeroes::Unmap && self.open_flags().unmap {
                flags |= RequestFlags::MAY_UNMAP;
            }
            return self.aligned_pwrite_zeroes(offset, bytes, flags).await;
        }
        let supported = self.drv().supported_write_flags();
        self.debug_event(crate::BlkdbgEvent::Pwritev).await;
        for (done, n) in self.max_transfer_pieces(bytes) {
            let part = piece(qiov, done, n);
            self.drv()
                .co_pwritev(self, offset + done, &part, flags & supported)
                .await?;
        }
        if flags.contains(RequestFlags::FUA) && !supported.contains(RequestFlags::FUA) {
            self.co_flush().await?;
        }
        self.debug_event(crate::BlkdbgEvent::PwritevDone).await;
        self.grow_to(offset + bytes);
        Ok(())
    }

    /// The pieces `(offset in the request, length)` a request is split into at max_transfer.
    fn max_transfer_pieces(&self, bytes: u64) -> impl Iterator<Item = (u64, u64)> {
        let max = match self.limits().max_transfer {
            0 => MAX_REQUEST_BYTES,
            m => m,
        };
        (0..bytes)
            .step_by(max as usize)
            .map(move |done| (done, (bytes - done).min(max)))
    }

    /// A write past the end grew the node; lengths stay whole sectors (bdrv's total_sectors).
    fn grow_to(&self, end: u64) {
        let end = end.next_multiple_of(512);
        if end > self.total_bytes.get() {
            self.total_bytes.set(end);
        }
    }

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
            let _gen = WriteGenGuard(self);
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

    async fn aligned_pwrite_zeroes(
        &self,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        self.debug_event(crate::BlkdbgEvent::PwritevZero).await;
        self.do_pwrite_zeroes(offset, bytes, flags | RequestFlags::ZERO_WRITE)
            .await?;
        self.debug_event(crate::BlkdbgEvent::PwritevDone).await;
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
        check_request(offset, bytes)?;
        self.check_writable()?;
        if !self.open_flags().unmap {
            return Ok(());
        }
        let _in_flight = InFlightGuard::new(self);
        let _gen = WriteGenGuard(self);
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
        let file = self.file();
        if let Some(file) = &file {
            file.debug_event(crate::BlkdbgEvent::FlushToOs).await;
        }
        self.drv().co_flush_to_os(self).await?;
        if !self.open_flags().cache.no_flush {
            // QEMU raises flush_to_disk only when something was written since the last
            // flush (a write's own FUA flush runs before its write counts); blkdebug rules
            // see the same events. The flush itself always happens.
            if let Some(file) = file
                .as_ref()
                .filter(|_| self.flushed_gen.get() != current_gen)
            {
                file.debug_event(crate::BlkdbgEvent::FlushToDisk).await;
            }
            self.drv().co_flush_to_disk(self).await?;
        }
        for child in self.children() {
            if child.name != "backing" && !child.bs.is_read_only() {
                child.bs.co_flush_boxed().await?;
            }
        }
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
        let _gen = WriteGenGuard(self);
        let _req = self
            .track(offset.min(self.total_bytes.get()), u64::MAX / 2, true)
            .await;
        self.drv()
            .co_truncate(self, offset, exact, prealloc)
            .await?;
        self.refresh_total_bytes().await?;
        Ok(())
    }

    /// Describes the range at `offset` in this node alone (bdrv_co_block_status). The answer
    /// covers `status.bytes` bytes, at most `bytes`; at or past the end it is EOF with 0 bytes.
    pub async fn co_block_status(
        &self,
        want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        let total = self.total_bytes.get();
        if offset >= total {
            return Ok(BlockStatus::new(StatusFlags::EOF, 0));
        }
        let bytes = bytes.min(total - offset);
        let _in_flight = InFlightGuard::new(self);
        let mut status = self
            .drv()
            .co_block_status(self, want_zero, offset, bytes)
            .await?;
        status.bytes = status.bytes.min(bytes);
        if status.flags.contains(StatusFlags::RECURSE) {
            status = self.recurse_into_file(want_zero, status).await?;
        }
        if self.class().is_format {
            if status
                .flags
                .intersects(StatusFlags::DATA | StatusFlags::ZERO)
            {
                status.flags |= StatusFlags::ALLOCATED;
            } else if self.backing().is_none() {
                // Unallocated without a backing file reads as zeroes.
                status.flags |= StatusFlags::ZERO;
            } else if want_zero && self.backing().is_some_and(|b| offset >= b.getlength()) {
                // ...and so does what lies past the end of a shorter backing file.
                status.flags |= StatusFlags::ZERO;
            }
        } else {
            status.flags |= StatusFlags::ALLOCATED;
        }
        if want_zero
            && status.flags.contains(
                StatusFlags::ZERO_FROM_FILE | StatusFlags::DATA | StatusFlags::OFFSET_VALID,
            )
            && !status.flags.contains(StatusFlags::ZERO)
        {
            status = self.refine_zero_from_file(status).await?;
        }
        status.flags.remove(StatusFlags::ZERO_FROM_FILE);
        if offset + status.bytes == total {
            status.flags |= StatusFlags::EOF;
        }
        Ok(status)
    }

    /// A filter-like mapping (raw) takes DATA/ZERO from where the data really lives.
    async fn recurse_into_file(
        &self,
        want_zero: bool,
        mut status: BlockStatus,
    ) -> Result<BlockStatus> {
        status.flags.remove(StatusFlags::RECURSE);
        if let Some(file) = status.file.clone() {
            let inner = file
                .co_block_status_boxed(want_zero, status.map, status.bytes)
                .await?;
            if inner.bytes > 0 {
                status.bytes = status.bytes.min(inner.bytes);
                status.flags.remove(StatusFlags::DATA | StatusFlags::ZERO);
                status.flags |= inner.flags & (StatusFlags::DATA | StatusFlags::ZERO);
            } else {
                status.flags.remove(StatusFlags::DATA);
                status.flags |= StatusFlags::ZERO;
            }
        }
        Ok(status)
    }

    /// Data mapped to a hole of the file child reads as zeroes (only asked for where the
    /// driver expects such holes: every data cluster would cost a query of the file).
    async fn refine_zero_from_file(&self, mut status: BlockStatus) -> Result<BlockStatus> {
        let Some(file) = status
            .file
            .clone()
            .filter(|f| !std::ptr::eq(f.as_ref(), self))
        else {
            return Ok(status);
        };
        let inner = file
            .co_block_status_boxed(true, status.map, status.bytes)
            .await?;
        if inner.bytes == 0 {
            status.flags |= StatusFlags::ZERO;
        } else {
            status.bytes = status.bytes.min(inner.bytes);
            status.flags |= inner.flags & StatusFlags::ZERO;
        }
        Ok(status)
    }

    fn co_block_status_boxed(
        &self,
        want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> crate::coroutine::LocalBoxFuture<'_, Result<BlockStatus>> {
        Box::pin(self.co_block_status(want_zero, offset, bytes))
    }

    /// Whether the range at `offset` is allocated in this node, and for how many bytes the
    /// answer holds (bdrv_co_is_allocated).
    pub async fn co_is_allocated(&self, offset: u64, bytes: u64) -> Result<(bool, u64)> {
        let status = self.co_block_status(false, offset, bytes).await?;
        Ok((status.flags.contains(StatusFlags::ALLOCATED), status.bytes))
    }

    /// Block status through the backing chain down to (not including) `base`; also returns
    /// the depth of the layer that answered, 0 for this node (bdrv_co_block_status_above).
    pub async fn co_block_status_above(
        &self,
        base: Option<&BlockDriverState>,
        want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<(BlockStatus, u32)> {
        let mut status = self.co_block_status(want_zero, offset, bytes).await?;
        let mut depth = 0;
        let mut layer = self.backing();
        let mut bytes = status.bytes;
        while !status.flags.contains(StatusFlags::ALLOCATED) {
            let Some(next) = layer else { break };
            if base.is_some_and(|b| std::ptr::eq(b, next.as_ref())) {
                break;
            }
            depth += 1;
            let below = next.co_block_status(want_zero, offset, bytes).await?;
            if below.bytes == 0 {
                // Past the end of a shorter backing file: reads as zeroes, unallocated.
                status.flags = StatusFlags::ZERO | (status.flags & StatusFlags::EOF);
                break;
            }
            bytes = below.bytes;
            status = below;
            layer = next.backing();
        }
        Ok((status, depth))
    }
}
