//! Reads and writes: alignment padding (bounce buffers for reads, read-modify-write for
//! writes), splitting at `max_transfer`, zeroes past the end, growing the node
//! (bdrv_co_preadv_part / bdrv_co_pwritev_part and their aligned halves in QEMU's block/io.c).

use super::MAX_REQUEST_BYTES;
use super::{check_request, piece, round_down, round_up, InFlightGuard, WriteGenGuard};
use crate::driver::RequestFlags;
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::{BlockDriverState, DetectZeroes};
use crate::trace;

impl BlockDriverState {
    /// Reads `qiov.len()` bytes at `offset` (bdrv_co_preadv).
    pub async fn co_preadv(&self, offset: u64, qiov: &IoVector, flags: RequestFlags) -> Result<()> {
        let bytes = qiov.len() as u64;
        let mut flags = flags;
        if self.copy_on_read.get() {
            flags |= RequestFlags::COPY_ON_READ;
        }
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
        // A copy-on-read widens to whole clusters and writes them: no other request may
        // slip in between its read and its write (QEMU marks it serialising too).
        let serialising = flags.intersects(RequestFlags::SERIALISING | RequestFlags::COPY_ON_READ);
        let _req = self.track(start, end - start, serialising).await;
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
        if flags.contains(RequestFlags::COPY_ON_READ) {
            let (allocated, n) = self.co_is_allocated(offset, bytes).await?;
            if !allocated || n < bytes {
                return self.co_copy_on_readv(offset, qiov).await;
            }
        }
        let flags = flags & !(RequestFlags::SERIALISING | RequestFlags::COPY_ON_READ);
        self.driver_preadv(offset, qiov, flags).await
    }

    /// Hands an aligned read to the driver in max_transfer pieces, zero-filling what lies
    /// past the end of the node (the rest of bdrv_aligned_preadv).
    pub(super) async fn driver_preadv(
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
                .co_preadv(self, offset + done, &part, flags)
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
        let align = self.limits().request_alignment as u64;
        let start = round_down(offset, align);
        let end = round_up(offset + bytes, align);
        let _gen = WriteGenGuard::dirtying(self, start, end - start);
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
        use crate::debug_event::BlkdbgEvent as Ev;
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

    pub(super) fn check_writable(&self) -> Result<()> {
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
        if self.detect_zeroes() != DetectZeroes::Off && qiov.is_zero() {
            if self.detect_zeroes() == DetectZeroes::Unmap && self.open_flags().unmap {
                flags |= RequestFlags::MAY_UNMAP;
            }
            return self.aligned_pwrite_zeroes(offset, bytes, flags).await;
        }
        let supported = self.drv().supported_write_flags();
        self.debug_event(crate::debug_event::BlkdbgEvent::Pwritev)
            .await;
        for (done, n) in self.max_transfer_pieces(bytes) {
            let part = piece(qiov, done, n);
            self.drv()
                .co_pwritev(self, offset + done, &part, flags & supported)
                .await?;
        }
        if flags.contains(RequestFlags::FUA) && !supported.contains(RequestFlags::FUA) {
            self.co_flush().await?;
        }
        self.debug_event(crate::debug_event::BlkdbgEvent::PwritevDone)
            .await;
        self.grow_to(offset + bytes);
        Ok(())
    }

    /// The pieces `(offset in the request, length)` a request is split into at max_transfer.
    pub(super) fn max_transfer_pieces(&self, bytes: u64) -> impl Iterator<Item = (u64, u64)> {
        let max = match self.limits().max_transfer {
            0 => MAX_REQUEST_BYTES,
            m => m,
        };
        (0..bytes)
            .step_by(max as usize)
            .map(move |done| (done, (bytes - done).min(max)))
    }

    /// A write past the end grew the node; lengths stay whole sectors (bdrv's total_sectors).
    pub(super) fn grow_to(&self, end: u64) {
        let end = end.next_multiple_of(512);
        if end > self.total_bytes.get() {
            self.total_bytes.set(end);
        }
    }
}
