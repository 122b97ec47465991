//! The loop's epoll instance (QEMU's util/fdmon-epoll.c).
//!
//! Descriptors are registered once, edge-triggered, under a key; a wait returns the keys of
//! those that turned readable. Timeouts go straight to `epoll_wait`, in whole milliseconds
//! rounded up, so a wait is one system call (a general poller that offers sub-millisecond
//! timeouts re-arms a timerfd around every wait instead).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Events collected by one wait.
const MAX_EVENTS: usize = 64;

/// An epoll instance.
pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Registers `fd` for readability, edge-triggered, reported as `key`. epoll forgets a
    /// descriptor by itself when it is closed.
    pub(crate) fn add_edge(&self, fd: RawFd, key: u64) -> io::Result<()> {
        self.add_edge_for(fd, key, libc::EPOLLIN)
    }

    /// Registers `fd` for `events` (EPOLLIN or EPOLLOUT), edge-triggered, reported as `key`.
    pub(crate) fn add_edge_for(&self, fd: RawFd, key: u64, events: i32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (events | libc::EPOLLET) as u32,
            u64: key,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sleeps until a registered descriptor turns readable or `timeout` passes (`None`:
    /// no limit), and appends the keys of the ready descriptors to `keys`. A signal or
    /// io_uring task work interrupting the wait (EINTR) just returns no keys.
    pub(crate) fn wait(&self, keys: &mut Vec<u64>, timeout: Option<Duration>) {
        let ms = timeout.map_or(-1, |t| {
            let ms = t.as_nanos().div_ceil(1_000_000);
            ms.min(i32::MAX as u128) as i32
        });
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        // SAFETY: the kernel writes at most MAX_EVENTS entries into `events`.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                MAX_EVENTS as i32,
                ms,
            )
        };
        for ev in events.iter().take(n.max(0) as usize) {
            keys.push(ev.u64);
        }
    }
}
