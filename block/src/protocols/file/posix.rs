//! The system calls of the `file` protocol, each wrapped once: open, O_DIRECT alignment
//! probing, the preadv/pwritev loop, fallocate, size and extent hints (the raw_* helpers and
//! handle_aiocb_* workers of QEMU's block/file-posix.c). They block, so the driver runs them
//! on the thread pool; errors come back as errno values, like QEMU's.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};
use crate::iov::{IoVector, BUFFER_ALIGN};

pub(super) fn open_fd(path: &str, flags: i32, mode: u32) -> Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| Error::invalid("filename contains a NUL byte"))?;
    // SAFETY: open(2) with a valid NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: a freshly opened descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The smallest read size O_DIRECT accepts (raw_probe_alignment).
pub(super) fn probe_alignment(fd: RawFd) -> u32 {
    let buf = IoVector::alloc(BUFFER_ALIGN);
    for align in [512usize, 1024, 2048, 4096] {
        let iov = buf.slice(0, align).iovecs();
        // SAFETY: one iovec into our own aligned buffer of at least `align` bytes.
        let r = unsafe { libc::preadv(fd, iov.as_ptr(), 1, 0) };
        if r >= 0 {
            return align as u32;
        }
    }
    BUFFER_ALIGN as u32
}

/// Runs preadv/pwritev until the whole vector is done. A read that reaches the end of the
/// file fills the rest with zeroes (handle_aiocb_rw); a write that makes no progress is ENOSPC.
pub(super) fn blocking_rw(fd: RawFd, qiov: &IoVector, offset: u64, write: bool) -> Result<()> {
    let total = qiov.len();
    let mut done = 0;
    while done < total {
        let rest = qiov.slice(done, total - done);
        let iov = rest.iovecs();
        let pos = (offset + done as u64) as libc::off_t;
        // SAFETY: the iovecs point into memory kept alive by `rest`; the count fits IOV_MAX.
        let n = unsafe {
            if write {
                libc::pwritev(fd, iov.as_ptr(), iov.len() as i32, pos)
            } else {
                libc::preadv(fd, iov.as_ptr(), iov.len() as i32, pos)
            }
        };
        if n < 0 {
            let e = Error::last_os_error();
            if e.errno() == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            if write {
                return Err(Error::from_errno(libc::ENOSPC));
            }
            qiov.fill(done, total - done, 0);
            return Ok(());
        }
        done += n as usize;
    }
    Ok(())
}

pub(super) fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> Result<()> {
    loop {
        // SAFETY: plain syscall on our descriptor.
        let r = unsafe { libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) };
        if r == 0 {
            return Ok(());
        }
        let e = Error::last_os_error();
        if e.errno() != libc::EINTR {
            // Filesystems without the mode report EOPNOTSUPP; the caller falls back.
            return Err(if e.errno() == libc::EOPNOTSUPP {
                Error::from_errno(libc::ENOTSUP)
            } else {
                e
            });
        }
    }
}

/// The file's extent size hint (FS_IOC_FSGETXATTR), if set.
pub(super) fn extent_size_hint(fd: RawFd) -> Option<u64> {
    /// struct fsxattr from linux/fs.h.
    #[repr(C)]
    #[derive(Default)]
    struct FsXattr {
        xflags: u32,
        extsize: u32,
        nextents: u32,
        projid: u32,
        cowextsize: u32,
        pad: [u8; 8],
    }
    const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
    let mut attr = FsXattr::default();
    // SAFETY: the ioctl fills a struct fsxattr we own; the result is checked.
    let r = unsafe { libc::ioctl(fd, FS_IOC_FSGETXATTR, &mut attr as *mut FsXattr) };
    (r == 0 && attr.extsize != 0).then_some(attr.extsize as u64)
}

/// The length of a regular file or a block device alike (raw_getlength): I/O is positioned,
/// so moving the descriptor's offset is harmless.
pub(super) fn file_size(fd: RawFd) -> Result<u64> {
    // SAFETY: lseek on our own descriptor.
    let end = unsafe { libc::lseek(fd, 0, libc::SEEK_END) };
    if end < 0 {
        return Err(Error::last_os_error());
    }
    Ok(end as u64)
}

pub(super) fn set_len(fd: RawFd, offset: u64) -> Result<()> {
    // SAFETY: plain syscall on our descriptor.
    if unsafe { libc::ftruncate(fd, offset as libc::off_t) } < 0 {
        let e = Error::last_os_error();
        return Err(Error::with_errno_message(
            e.errno(),
            "Failed to resize the file",
        ));
    }
    Ok(())
}
