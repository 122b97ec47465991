//! Image locking: keeping two processes from writing one image (file-posix.c raw_apply_lock_bytes).
//!
//! QEMU encodes who uses an image in byte-range locks on the image file itself, which every
//! QEMU tool honours, so rqemu uses the same bytes to interoperate with it. For each
//! permission bit `n` (consistent read 0, write 1, write unchanged 2, resize 3):
//! a shared lock on byte 100+n means "I hold permission n"; on byte 200+n it means "I do not
//! let others hold permission n". Open file description (OFD) locks are used, so the locks
//! belong to the open file, not the process, and vanish when it is closed.

use std::os::fd::RawFd;

use crate::error::{Error, Result};

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// Permission bits (QEMU's BLK_PERM_*).
pub const PERM_CONSISTENT_READ: u32 = 1 << 0;
pub const PERM_WRITE: u32 = 1 << 1;
pub const PERM_WRITE_UNCHANGED: u32 = 1 << 2;
pub const PERM_RESIZE: u32 = 1 << 3;
pub const PERM_ALL: u32 = 0xf;

const PERM_NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];

fn lock_op(fd: RawFd, cmd: i32, lock_type: i32, byte: i64) -> Result<Option<i32>> {
    let mut fl = libc::flock {
        l_type: lock_type as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    };
    // SAFETY: fcntl with a valid flock struct on our own descriptor.
    let r = unsafe { libc::fcntl(fd, cmd, &mut fl) };
    if r < 0 {
        return Err(Error::last_os_error());
    }
    Ok(Some(fl.l_type as i32))
}

/// Whether another open file holds a lock on `byte` that conflicts with an exclusive one.
fn locked_by_other(fd: RawFd, byte: i64) -> Result<bool> {
    Ok(lock_op(fd, libc::F_OFD_GETLK, libc::F_WRLCK, byte)? != Some(libc::F_UNLCK))
}

/// Takes the locks for holding `perm` and sharing only `shared`, after checking that nobody
/// holds a permission we do not share or refuses to share one we hold.
pub fn lock_image(fd: RawFd, perm: u32, shared: u32, filename: &str) -> Result<()> {
    let hint = |what: String| {
        Error::new(
            libc::EAGAIN,
            format!("{what}\nIs another process using the image [{filename}]?"),
        )
    };
    for (n, name) in PERM_NAMES.iter().enumerate() {
        let bit = 1 << n;
        if perm & bit != 0 && locked_by_other(fd, SHARED_BASE + n as i64)? {
            return Err(hint(format!("Failed to get \"{name}\" lock")));
        }
        if shared & bit == 0 && locked_by_other(fd, PERM_BASE + n as i64)? {
            return Err(hint(format!("Failed to get shared \"{name}\" lock")));
        }
    }
    for n in 0..PERM_NAMES.len() {
        let bit = 1 << n;
        if perm & bit != 0 {
            lock_op(fd, libc::F_OFD_SETLK, libc::F_RDLCK, PERM_BASE + n as i64)?;
        }
        if shared & bit == 0 {
            lock_op(fd, libc::F_OFD_SETLK, libc::F_RDLCK, SHARED_BASE + n as i64)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_writer_excludes_a_second_writer_and_a_reader_that_needs_consistency() {
        let path = tempfile::NamedTempFile::new().unwrap();
        let a = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path.path())
            .unwrap();
        let b = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path.path())
            .unwrap();
        let c = std::fs::File::open(path.path()).unwrap();
        let unshared = PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED;
        lock_image(
            a.as_raw_fd(),
            PERM_CONSISTENT_READ | PERM_WRITE,
            unshared,
            "x",
        )
        .unwrap();
        let err = lock_image(
            b.as_raw_fd(),
            PERM_CONSISTENT_READ | PERM_WRITE,
            unshared,
            "x",
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("Failed to get \"write\" lock"),
            "{err}"
        );
        let err = lock_image(c.as_raw_fd(), PERM_CONSISTENT_READ, unshared, "x").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Failed to get shared \"write\" lock"),
            "{err}"
        );
        // Force-share: hold only what is needed, share everything.
        lock_image(c.as_raw_fd(), PERM_CONSISTENT_READ, PERM_ALL, "x").unwrap();
    }
}
