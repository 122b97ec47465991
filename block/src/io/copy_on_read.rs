//! Copy-on-read: a read that finds part of its range unallocated in the node reads that
//! part (from the backing chain, through the driver) and writes it into the node, so that
//! later reads no longer reach the backing file (bdrv_co_do_copy_on_readv in QEMU's
//! block/io.c).
//!
//! The copy works on whole clusters (subclusters where the format tracks those), because a
//! format allocates no less; allocated clusters inside the range are read, never rewritten.
//! Copied data that is all zeroes is written as a zero write, so that copying a sparse
//! backing file allocates no host space.

use super::{round_down, round_up, MAX_ZERO_BOUNCE};
use crate::debug_event::BlkdbgEvent;
use crate::driver::RequestFlags;
use crate::error::Result;
use crate::iov::IoVector;
use crate::node::BlockDriverState;
use crate::trace;

/// Largest piece copied at once (QEMU's MAX_BOUNCE_BUFFER).
const MAX_BOUNCE_BUFFER: u64 = MAX_ZERO_BOUNCE;

impl BlockDriverState {
    /// The unit a copy-on-read rounds to (bdrv_round_to_subclusters): the format's
    /// subcluster or cluster, at least the request alignment.
    fn copy_on_read_unit(&self) -> u64 {
        let align = self.limits().request_alignment as u64;
        let unit = match self.drv().get_info(self) {
            Ok(info) if info.subcluster_size != 0 => info.subcluster_size,
            Ok(info) => info.cluster_size,
            Err(_) => 0,
        };
        unit.max(align)
    }

    /// Reads `qiov` at the aligned `offset`, copying the unallocated clusters it covers into
    /// the node on the way.
    pub(super) async fn co_copy_on_readv(&self, offset: u64, qiov: &IoVector) -> Result<()> {
        let bytes = qiov.len() as u64;
        if bytes == 0 {
            return Ok(());
        }
        let unit = self.copy_on_read_unit();
        let align = self.limits().request_alignment as u64;
        let start = round_down(offset, unit);
        // The last cluster may be partial: nothing is copied past the node's end.
        let node_end = round_up(self.total_bytes.get(), align);
        let end = round_up(offset + bytes, unit).min(node_end.max(offset + bytes));
        trace!(
            bdrv_co_do_copy_on_readv,
            "bs {:p} offset {} bytes {} cluster_offset {} cluster_bytes {}",
            self,
            offset,
            bytes,
            start,
            end - start
        );
        let mut pos = start;
        while pos < end {
            let want = (end - pos).min(MAX_BOUNCE_BUFFER);
            // An allocation query that fails is not fatal: copying is merely extra work.
            let (allocated, n) = match self.co_is_allocated(pos, want).await {
                Ok((allocated, n)) if n > 0 => (allocated, n),
                _ => (false, want),
            };
            // The piece of the caller's range [offset, offset + bytes) within [pos, pos + n).
            let lo = pos.max(offset);
            let hi = (pos + n).min(offset + bytes);
            if allocated {
                if lo < hi {
                    let part = qiov.slice((lo - offset) as usize, (hi - lo) as usize);
                    self.driver_preadv(lo, &part, RequestFlags::empty()).await?;
                }
            } else {
                let n = round_up(n, align).min(end - pos);
                let bounce = IoVector::alloc(n as usize);
                self.driver_preadv(pos, &bounce, RequestFlags::empty())
                    .await?;
                self.debug_event(BlkdbgEvent::CorWrite).await;
                self.write_unchanged(pos, &bounce).await?;
                if lo < hi {
                    qiov.copy_from(
                        (lo - offset) as usize,
                        &bounce,
                        (lo - pos) as usize,
                        (hi - lo) as usize,
                    );
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// Writes data the node already shows through its backing chain: it changes nothing a
    /// reader sees, so it goes straight to the driver even where the graph is read-only to
    /// guest writes (BDRV_REQ_WRITE_UNCHANGED).
    async fn write_unchanged(&self, offset: u64, data: &IoVector) -> Result<()> {
        if data.is_zero() {
            return self
                .aligned_pwrite_zeroes(offset, data.len() as u64, RequestFlags::empty())
                .await;
        }
        for (done, n) in self.max_transfer_pieces(data.len() as u64) {
            let part = data.slice(done as usize, n as usize);
            self.drv()
                .co_pwritev(self, offset + done, &part, RequestFlags::empty())
                .await?;
        }
        Ok(())
    }
}
