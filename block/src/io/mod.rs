//! The generic request path every node's I/O goes through (QEMU's block/io.c).
//!
//! Before a driver sees a request, this layer: checks its range; counts it in flight; widens
//! an unaligned request to the node's `request_alignment` (reads through bounce buffers,
//! writes by read-modify-write); tracks it so that overlapping requests that must not
//! interleave wait for each other (serialisation); splits it at `max_transfer`; turns reads
//! past the node's end into zeroes; emulates write-zeroes and FUA where the driver cannot; and
//! keeps the cached length up to date when a write grows the node.
//!
//! Requests are tracked in the node's [`crate::tracked`] list. The folder is split by concept:
//! `rw` (reads and writes, with alignment padding), `copy_on_read` (reads that copy
//! what they find unallocated into the node), `zeroes_discard` (write zeroes, discard,
//! flush, truncate) and `status` (block status).

mod copy_on_read;
mod rw;
mod status;
mod zeroes_discard;

use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::BlockDriverState;
use crate::tracked::TrackedGuard;

/// Largest request the layer accepts (QEMU's BDRV_MAX_LENGTH is about 2^63; we keep I/O
/// sizes within what an iovec can describe).
pub const MAX_REQUEST_BYTES: u64 = i32::MAX as u64 & !511;
/// Largest zero buffer written when a driver cannot write zeroes natively.
pub(super) const MAX_ZERO_BOUNCE: u64 = 16 << 20;

/// Rejects ranges the layer cannot represent or that carry more data than one request may
/// (bdrv_check_request32).
pub(super) fn check_request(offset: u64, bytes: u64) -> Result<()> {
    if bytes > MAX_REQUEST_BYTES {
        return Err(Error::from_errno(libc::EINVAL));
    }
    check_request64(offset, bytes)
}

/// Rejects ranges past what an image offset can be, for requests that move no data, whose
/// length is not bounded by a buffer (bdrv_check_request).
pub(super) fn check_request64(offset: u64, bytes: u64) -> Result<()> {
    if offset
        .checked_add(bytes)
        .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(Error::from_errno(libc::EINVAL));
    }
    Ok(())
}

/// The part of `qiov` a piece covers; the whole vector itself when the request is one piece.
pub(super) fn piece(qiov: &IoVector, done: u64, n: u64) -> std::borrow::Cow<'_, IoVector> {
    if done == 0 && n as usize == qiov.len() {
        std::borrow::Cow::Borrowed(qiov)
    } else {
        std::borrow::Cow::Owned(qiov.slice(done as usize, n as usize))
    }
}

pub(super) fn round_down(x: u64, align: u64) -> u64 {
    x - x % align
}

pub(super) fn round_up(x: u64, align: u64) -> u64 {
    round_down(x + align - 1, align)
}

/// Counts a request in flight on a node for as long as it lives.
pub(super) struct InFlightGuard<'a>(&'a BlockDriverState);

impl<'a> InFlightGuard<'a> {
    pub(super) fn new(bs: &'a BlockDriverState) -> Self {
        bs.in_flight.inc();
        InFlightGuard(bs)
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// Finishes a write when it ends, whether it succeeded or not (bdrv_co_write_req_finish):
/// counts it in write_gen, so that a flush tells whether anything was written since the last
/// one, and marks its range in the node's enabled dirty bitmaps.
pub(super) struct WriteGenGuard<'a> {
    bs: &'a BlockDriverState,
    dirty: Option<(u64, u64)>,
}

impl<'a> WriteGenGuard<'a> {
    /// A request that changes no guest data (truncate).
    pub(super) fn new(bs: &'a BlockDriverState) -> Self {
        WriteGenGuard { bs, dirty: None }
    }

    /// A write, write-zeroes or discard of `bytes` at `offset`.
    pub(super) fn dirtying(bs: &'a BlockDriverState, offset: u64, bytes: u64) -> Self {
        WriteGenGuard {
            bs,
            dirty: Some((offset, bytes)),
        }
    }
}

impl Drop for WriteGenGuard<'_> {
    fn drop(&mut self) {
        self.bs.write_gen.set(self.bs.write_gen.get() + 1);
        if let Some((offset, bytes)) = self.dirty {
            if bytes > 0 {
                self.bs.set_dirty(offset, bytes);
            }
            let end = offset.saturating_add(bytes);
            if end > self.bs.wr_highest_offset.get() {
                self.bs.wr_highest_offset.set(end);
            }
        }
    }
}

impl BlockDriverState {
    /// Registers a request in the node's tracked list and waits for the overlapping ones it
    /// must not interleave with (bdrv_wait_serialising_requests).
    async fn track(&self, offset: u64, bytes: u64, serialising: bool) -> TrackedGuard<'_> {
        let bs = self as *const BlockDriverState as *const ();
        self.tracked.track(bs, offset, bytes, serialising).await
    }
}
