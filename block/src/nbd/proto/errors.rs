//! NBD's error numbers and their translation to and from the host's errno values (QEMU's
//! nbd/common.c nbd_errno_to_system_errno and system_errno_to_nbd_errno).

/// NBD error numbers (the wire's own errno values, which happen to be Linux's).
pub mod errno {
    /// Not permitted (read-only export).
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Out of memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid request.
    pub const EINVAL: u32 = 22;
    /// No space left.
    pub const ENOSPC: u32 = 28;
    /// Request too large.
    pub const EOVERFLOW: u32 = 75;
    /// Not supported (a FAST_ZERO that would be slow).
    pub const ENOTSUP: u32 = 95;
    /// The server is shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// A system errno as the NBD error a reply carries (QEMU's system_errno_to_nbd_errno).
pub fn system_errno_to_nbd(e: i32) -> u32 {
    match e {
        0 => 0,
        libc::EPERM | libc::EROFS => errno::EPERM,
        libc::EIO => errno::EIO,
        libc::ENOMEM => errno::ENOMEM,
        libc::EDQUOT | libc::EFBIG | libc::ENOSPC => errno::ENOSPC,
        libc::EOVERFLOW => errno::EOVERFLOW,
        libc::ENOTSUP => errno::ENOTSUP,
        libc::ESHUTDOWN => errno::ESHUTDOWN,
        _ => errno::EINVAL,
    }
}

/// The system errno a peer's NBD error stands for (QEMU's nbd_errno_to_system_errno);
/// unknown values are EINVAL.
pub fn nbd_errno_to_system(e: u32) -> i32 {
    match e {
        0 => 0,
        errno::EPERM => libc::EPERM,
        errno::EIO => libc::EIO,
        errno::ENOMEM => libc::ENOMEM,
        errno::ENOSPC => libc::ENOSPC,
        errno::EOVERFLOW => libc::EOVERFLOW,
        errno::ENOTSUP => libc::ENOTSUP,
        errno::ESHUTDOWN => libc::ESHUTDOWN,
        _ => libc::EINVAL,
    }
}
