//! Protocol drivers: the leaves of the block graph, where bytes meet storage.
//!
//! `file` (QEMU's block/file-posix.c) stores them in a host file; `null-co` (block/null.c)
//! drops writes and reads zeroes or nothing, to measure the layers above without storage;
//! `rbd` (block/rbd.c) keeps them in a Ceph cluster through librbd.

pub mod file;
mod locking;
pub mod null;
pub mod rbd;

use crate::driver::DriverClass;

/// The protocol drivers built into the block crate, registered before any format.
pub(crate) const ALL: &[&DriverClass] = &[&file::FILE, &null::NULL_CO, &rbd::RBD];
