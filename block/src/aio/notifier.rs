//! EventNotifier: an eventfd one side signals and the loop waits on.
//!
//! QEMU's util/event_notifier-posix.c. The io_uring engine registers one with the kernel to
//! learn of completions; later, virtio's ioeventfd and irqfd are the same object handed to KVM.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::AioContext;
use crate::error::{Error, Result};

/// An eventfd that can be set from anywhere and awaited on the loop.
pub struct EventNotifier {
    fd: OwnedFd,
    /// Distinguishes this descriptor from a later one that reuses its number.
    id: u64,
}

impl EventNotifier {
    /// Creates a non-blocking eventfd with counter 0.
    pub fn new() -> Result<EventNotifier> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventNotifier {
            fd: owned,
            id: super::new_fd_token(),
        })
    }

    /// The descriptor, to hand to the kernel (io_uring, KVM ioeventfd/irqfd).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Signals the notifier (event_notifier_set). Safe from any thread.
    pub fn set(&self) {
        write_counter(self.fd.as_fd(), 1);
    }

    /// Resets the counter and reports whether it had been set (event_notifier_test_and_clear).
    pub fn test_and_clear(&self) -> bool {
        let mut value = 0u64;
        // SAFETY: reads 8 bytes into a u64 from our own non-blocking eventfd.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
        n == 8
    }

    /// Waits until the notifier is set, then clears it; on the calling thread's AioContext.
    ///
    /// Readiness comes first and the read second, so a wait costs one system call. A read
    /// that finds nothing (the set was consumed along with an earlier one) waits again.
    pub async fn wait(&self) -> Result<()> {
        loop {
            self.readable().await?;
            if self.test_and_clear() {
                return Ok(());
            }
        }
    }

    /// Waits until the notifier may be set, without clearing it: the context remembers an
    /// edge that arrived while nobody waited (and registering a descriptor that is already
    /// readable reports it), so no set is missed, but a wake-up may be stale.
    pub async fn readable(&self) -> Result<()> {
        AioContext::current()
            .wait_readable(self.fd.as_fd(), self.id)
            .await
    }
}

fn write_counter(fd: BorrowedFd<'_>, value: u64) {
    // SAFETY: writes 8 bytes from a u64 to an eventfd; a full counter (EAGAIN) already means set.
    unsafe { libc::write(fd.as_raw_fd(), (&value as *const u64).cast(), 8) };
}
