//! Creating and growing a host file: `create` and truncation with preallocation (QEMU's
//! raw_co_create and raw_regular_truncate in block/file-posix.c).

use std::os::fd::{AsRawFd, RawFd};

use super::posix::{blocking_rw, file_size, open_fd, set_len};
use super::strip_protocol;
use crate::aio::AioContext;
use crate::driver::PreallocMode;
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::options::Options;
use crate::protocols::locking::{self, lock_image};
use crate::trace;

/// Sets the file size, allocating the growth as `prealloc` asks (raw_regular_truncate).
pub(super) fn regular_truncate(fd: RawFd, offset: u64, prealloc: PreallocMode) -> Result<()> {
    let current = file_size(fd)?;
    match prealloc {
        PreallocMode::Off => {}
        _ if offset < current => {
            return Err(Error::not_supported(
                "Cannot use preallocation for shrinking files",
            ))
        }
        PreallocMode::Metadata => {
            return Err(Error::not_supported(
                "Unsupported preallocation mode: metadata",
            ));
        }
        PreallocMode::Falloc => {
            // SAFETY: plain syscall on our descriptor.
            let r = unsafe {
                libc::posix_fallocate(
                    fd,
                    current as libc::off_t,
                    (offset - current) as libc::off_t,
                )
            };
            if r != 0 {
                return Err(Error::with_errno_message(
                    r,
                    "Could not preallocate new data",
                ));
            }
            if current == 0 {
                allocate_first_block(fd, offset);
            }
            return Ok(());
        }
        PreallocMode::Full => {
            set_len(fd, offset)?;
            let chunk = IoVector::alloc(1 << 20);
            let mut pos = current;
            while pos < offset {
                let n = ((offset - pos) as usize).min(chunk.len());
                blocking_rw(fd, &chunk.slice(0, n), pos, true).map_err(|e| {
                    Error::with_errno_message(e.errno(), "Could not write zeros for preallocation")
                })?;
                pos += n as u64;
            }
            return Ok(());
        }
    }
    set_len(fd, offset)?;
    if current == 0 && offset > 0 {
        allocate_first_block(fd, offset);
    }
    Ok(())
}

/// Writes zeroes over the first block of a freshly grown empty file, so that the file
/// system has allocated it and O_DIRECT alignment probing reads real data there (QEMU's
/// allocate_first_block). Failures are harmless and ignored.
fn allocate_first_block(fd: RawFd, new_size: u64) {
    const MAX_BLOCKSIZE: usize = 4096;
    let len = if new_size < MAX_BLOCKSIZE as u64 {
        512
    } else {
        MAX_BLOCKSIZE
    };
    let _ = blocking_rw(fd, &IoVector::alloc(len), 0, true);
}

/// Creates a host file of `size` bytes (raw_co_create): the file is created if missing,
/// locked, emptied, then grown with the requested preallocation.
pub(super) async fn create(filename: &str, options: &mut Options) -> Result<()> {
    let path = strip_protocol(filename, super::FILE.format_name);
    // Like file-posix, the file is created in whole sectors.
    let size = options
        .take_size("size")?
        .unwrap_or(0)
        .div_ceil(512)
        .saturating_mul(512);
    let prealloc = match options.take("preallocation") {
        Some(p) => PreallocMode::parse(&p)
            .map_err(|_| Error::invalid(format!("invalid parameter value: {p}")))?,
        None => PreallocMode::Off,
    };
    if prealloc == PreallocMode::Metadata {
        return Err(Error::invalid("Unsupported preallocation mode: metadata"));
    }
    options.take("nocow");
    options.take("extent_size_hint");
    trace!(file_create, "filename {} size {}", path, size);
    let pool = AioContext::current().thread_pool();
    pool.submit(move || {
        let fd = open_fd(&path, libc::O_RDWR | libc::O_CREAT, 0o644).map_err(|e| {
            Error::with_errno_message(e.errno(), format!("Could not create '{path}'"))
        })?;
        lock_image(
            fd.as_raw_fd(),
            locking::PERM_WRITE | locking::PERM_RESIZE,
            locking::PERM_CONSISTENT_READ | locking::PERM_WRITE_UNCHANGED,
            &path,
        )?;
        set_len(fd.as_raw_fd(), 0)?;
        regular_truncate(fd.as_raw_fd(), size, prealloc)
    })
    .await
}
