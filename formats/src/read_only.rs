//! What QEMU's read-only formats (dmg, cloop, bochs) share: they refuse a read-write open
//! (bdrv_apply_auto_read_only in each driver's open), work in 512-byte sectors
//! (their refresh_limits), and have no block-status callback, so every byte is data whose
//! host offset the format does not expose (the generic fallback in bdrv_co_do_block_status).

use block::driver::{BlockLimits, BlockStatus, StatusFlags};
use block::{BlockDriverState, Error, Result};

/// The sector these formats address their data in (BDRV_SECTOR_SIZE).
pub(crate) const SECTOR_SIZE: u64 = 512;

/// Refuses an open that asks for write access, as bdrv_apply_auto_read_only does without
/// `auto-read-only`.
pub(crate) fn require_read_only(bs: &BlockDriverState) -> Result<()> {
    if bs.is_read_only() {
        Ok(())
    } else {
        Err(Error::new(libc::EACCES, "Image is read-only"))
    }
}

/// The error a write gets (unreachable through an open that [`require_read_only`] passed,
/// but a driver still answers it).
pub(crate) fn write_refused() -> Error {
    Error::new(libc::EACCES, "Image is read-only")
}

/// Gives an errno-only open failure QEMU's generic wrapping ("Could not open 'x': ...").
pub(crate) fn open_error(bs: &BlockDriverState, e: Error) -> Error {
    if e.message().is_some() {
        e
    } else {
        Error::with_errno_message(e.errno(), format!("Could not open '{}'", bs.filename()))
    }
}

/// Requests in whole sectors, as the drivers read them.
pub(crate) fn sector_limits(bs: &BlockDriverState) -> BlockLimits {
    let f = bs.file().map(|f| f.limits()).unwrap_or_default();
    BlockLimits {
        request_alignment: f.request_alignment.max(SECTOR_SIZE as u32),
        ..f
    }
}

/// Everything is data, at no offset a caller could use.
pub(crate) fn all_data(bytes: u64) -> BlockStatus {
    BlockStatus::new(StatusFlags::DATA, bytes)
}
