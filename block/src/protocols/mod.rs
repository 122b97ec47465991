//! Protocol drivers: the leaves of the block graph, where bytes meet storage.
//!
//! `file` (QEMU's block/file-posix.c) stores them in a host file, `host_device` and
//! `host_cdrom` on a host device through the same code; `null-co` (block/null.c)
//! drops writes and reads zeroes or nothing, to measure the layers above without storage;
//! `nbd` (block/nbd.c) reaches an NBD server's export over a socket;
//! `rbd` (block/rbd.c) keeps them in a Ceph cluster through librbd.

pub mod file;
pub mod host_device;
mod locking;
pub mod nbd;
pub mod null;
pub mod rbd;

use crate::driver::DriverClass;

/// The protocol drivers built into the block crate, registered before any format.
pub(crate) const ALL: &[&DriverClass] = &[
    &file::FILE,
    &host_device::HOST_DEVICE,
    &host_device::HOST_CDROM,
    &null::NULL_CO,
    &nbd::NBD,
    &nbd::NBD_TCP,
    &nbd::NBD_UNIX,
    &rbd::RBD,
];

/// The protocol of a filename without a `proto:` prefix: `host_device` when it names a host
/// device (hdev_probe_device), else `file`.
pub(crate) fn for_plain_path(filename: &str) -> &'static DriverClass {
    host_device::probe_device(filename).unwrap_or(&file::FILE)
}
