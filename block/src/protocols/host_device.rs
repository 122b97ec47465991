//! The `host_device` and `host_cdrom` protocols: the `file` protocol's I/O on a host block or
//! character device (QEMU's hdev and cdrom drivers in block/file-posix.c).
//!
//! The three drivers share one implementation ([`super::file`]); what tells them apart is
//! the kind of host object each accepts, checked right after opening, and that a plain
//! filename naming a device picks `host_device` instead of `file` (hdev_probe_device).

use std::os::fd::RawFd;

use super::file;
use crate::driver::DriverClass;
use crate::error::{Error, Result};

/// The class registered as `host_device`.
pub static HOST_DEVICE: DriverClass = DriverClass {
    format_name: "host_device",
    protocol_name: Some("host_device"),
    is_format: false,
    probe: None,
    open: |bs, options| Box::pin(file::open(bs, options)),
    create: None,
    create_options: &[],
};

/// The class registered as `host_cdrom`.
pub static HOST_CDROM: DriverClass = DriverClass {
    format_name: "host_cdrom",
    protocol_name: Some("host_cdrom"),
    is_format: false,
    probe: None,
    open: |bs, options| Box::pin(file::open(bs, options)),
    create: None,
    create_options: &[],
};

fn mode_of(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

fn is_device(st: &libc::stat) -> bool {
    matches!(mode_of(st), libc::S_IFCHR | libc::S_IFBLK)
}

/// Whether the opened object suits the driver (raw_open_common): `file` wants a regular
/// file, the device drivers a character or block device.
pub(super) fn check_kind(driver: &str, filename: &str, fd: RawFd) -> Result<()> {
    // SAFETY: fstat into a zeroed stat struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(Error::last_os_error());
    }
    if driver == file::FILE.format_name {
        if mode_of(&st) != libc::S_IFREG {
            return Err(Error::invalid(format!(
                "'{driver}' driver requires '{filename}' to be a regular file"
            )));
        }
    } else if !is_device(&st) {
        return Err(Error::invalid(format!(
            "'{driver}' driver requires '{filename}' to be either a character or block device"
        )));
    }
    Ok(())
}

/// The protocol for a plain filename that names a host device (find_hdev_driver), if it does.
pub(super) fn probe_device(filename: &str) -> Option<&'static DriverClass> {
    let meta = std::fs::metadata(filename).ok()?;
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    (kind.is_block_device() || kind.is_char_device()).then_some(&HOST_DEVICE)
}
