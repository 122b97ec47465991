//! Filter drivers: nodes that pass requests through to one child and change how they behave
//! on the way (QEMU's block/blkdebug.c and the other filters).
//!
//! `blkdebug` injects errors and suspends requests at the debug events formats raise, so
//! that tests can reproduce failures and races deterministically. `blklogwrites` records
//! every write and flush in a dm-log-writes log, from which crash states can be replayed.
//! `copy-on-read` copies what reads find in the backing chain into the image below it.
//! `copy-before-write` saves old data to a backup target before a write replaces it.
//! `throttle` holds requests back to a throttle group's limits. `quorum` is the one that
//! fans out: it keeps the same data on several children and votes on what reads return.

pub mod blkdebug;
pub mod blklogwrites;
pub mod copy_on_read;
pub mod quorum;
pub mod throttle;

use std::rc::Rc;

use crate::driver::DriverClass;
use crate::node::BlockDriverState;

/// The child a filter node passes requests to (QEMU's bdrv_filter_bs), which every filter
/// is opened with.
pub(crate) fn filtered(bs: &BlockDriverState) -> Rc<BlockDriverState> {
    bs.filtered()
        .expect("a filter node has the child it filters")
}

/// The filter drivers built into the block crate, registered with the protocols.
pub(crate) const ALL: &[&DriverClass] = &[
    &blkdebug::BLKDEBUG,
    &blklogwrites::BLKLOGWRITES,
    &copy_on_read::COPY_ON_READ,
    &quorum::QUORUM,
    &throttle::THROTTLE,
];
