//! Block status: whether a range is data, zero or unallocated in one node, refined through
//! its file child, and through a backing chain (bdrv_co_block_status and
//! bdrv_co_common_block_status_above in QEMU's block/io.c).

use std::rc::Rc;

use super::InFlightGuard;
use crate::driver::{BlockStatus, StatusFlags};
use crate::error::Result;
use crate::node::BlockDriverState;

impl BlockDriverState {
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
        if self.drv().is_filter() && status.flags.contains(StatusFlags::RECURSE) {
            // A filter has no allocation of its own: its child's answer is its answer
            // (QEMU's BDRV_BLOCK_RAW).
            if let Some(file) = status.file.clone() {
                let mut inner = file
                    .co_block_status_boxed(want_zero, status.map, status.bytes)
                    .await?;
                if inner.bytes > 0 {
                    inner.bytes = inner.bytes.min(status.bytes);
                    inner.flags.remove(StatusFlags::EOF);
                    if offset + inner.bytes == total {
                        inner.flags |= StatusFlags::EOF;
                    }
                    return Ok(inner);
                }
            }
        }
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
        // Only on the driver's request: a format's data cluster whose host range is a hole
        // (a COW tail the format zeroed by punching) is still data, as QEMU reports it.
        if want_zero
            && status.flags.contains(
                StatusFlags::DATA | StatusFlags::OFFSET_VALID | StatusFlags::ZERO_FROM_FILE,
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

    /// Data mapped to a hole of the file child reads as zeroes. Only the `file` child is
    /// asked: this stands for QEMU's qcow2 metadata-preallocation detection, which looks at
    /// the image file and never at an external data file.
    async fn refine_zero_from_file(&self, mut status: BlockStatus) -> Result<BlockStatus> {
        let own_file = self.file();
        let Some(file) = status.file.clone().filter(|f| {
            !std::ptr::eq(f.as_ref(), self) && own_file.as_ref().is_some_and(|o| Rc::ptr_eq(o, f))
        }) else {
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
        let mut layer = filtered_or_cow(self);
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
            layer = filtered_or_cow(&next);
        }
        Ok((status, depth))
    }
}

/// The node below `bs` in a chain: a filter's child, else the backing file
/// (bdrv_filter_or_cow_bs).
fn filtered_or_cow(bs: &BlockDriverState) -> Option<Rc<BlockDriverState>> {
    if bs.drv().is_filter() {
        bs.filtered()
    } else {
        bs.backing()
    }
}
