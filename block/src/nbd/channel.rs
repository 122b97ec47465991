//! A connected stream socket a coroutine reads and writes without blocking its thread
//! (QEMU's QIOChannelSocket with qio_channel_yield).
//!
//! The descriptor is non-blocking; when a read or write would block, the coroutine waits
//! on the AioContext for readiness and tries again. Input and output are watched through
//! two descriptors of the same socket (the second a `dup`), so the reader coroutine and a
//! coroutine sending a reply can wait at the same time. After [`Channel::start_tls`]
//! every byte goes through a TLS session (`super::tls`).

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use std::time::Duration;

use crate::aio::{co_sleep, new_fd_token, AioContext};
use crate::coroutine::CoMutex;
use crate::error::{Error, Result};

/// One connected socket (TCP or unix) on the current thread's AioContext.
pub struct Channel {
    fd: OwnedFd,
    read_token: u64,
    /// The same socket again: watched for output only.
    out: OwnedFd,
    write_token: u64,
    /// The TLS session, once STARTTLS upgraded the connection.
    tls: RefCell<Option<rustls::Connection>>,
    /// Held while ciphertext is written, so that TLS records never interleave.
    tls_write: CoMutex<()>,
}

impl Channel {
    /// Takes over a connected socket and makes it non-blocking.
    pub fn new(fd: OwnedFd) -> Result<Channel> {
        set_nonblocking(&fd)?;
        let out = fd.try_clone().map_err(Error::from)?;
        Ok(Channel {
            fd,
            read_token: new_fd_token(),
            out,
            write_token: new_fd_token(),
            tls: RefCell::new(None),
            tls_write: CoMutex::new(()),
        })
    }

    /// Upgrades the connection to TLS and runs the handshake (qio_channel_tls_new_*).
    pub async fn start_tls(&self, session: rustls::Connection) -> Result<()> {
        *self.tls.borrow_mut() = Some(session);
        super::tls::handshake(self).await
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.borrow().is_some()
    }

    /// Runs `f` on the TLS session; only for `super::tls`, after `start_tls`.
    pub(super) fn with_tls<R>(&self, f: impl FnOnce(&mut rustls::Connection) -> R) -> R {
        f(self.tls.borrow_mut().as_mut().expect("TLS session"))
    }

    /// The lock ciphertext is written under.
    pub(super) fn tls_write_lock(&self) -> &CoMutex<()> {
        &self.tls_write
    }

    /// Reads some bytes; 0 means the peer closed the connection.
    pub async fn read(&self, buf: &mut [u8]) -> Result<usize> {
        if self.is_tls() {
            return super::tls::read(self, buf).await;
        }
        self.raw_read(buf).await
    }

    /// Reads some bytes off the socket itself, under any TLS.
    pub(super) async fn raw_read(&self, buf: &mut [u8]) -> Result<usize> {
        loop {
            // SAFETY: reads at most buf.len() bytes into `buf` from our own descriptor.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            self.wait_or_fail(false).await?;
        }
    }

    /// Fills `buf` completely; a connection closed before the end is an error.
    pub async fn read_exact(&self, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read(&mut buf[done..]).await?;
            if n == 0 {
                return Err(Error::from_errno(libc::ECONNRESET));
            }
            done += n;
        }
        Ok(())
    }

    /// Reads and throws away `len` bytes through a small buffer (nbd_drop), so that an
    /// unwanted payload never sizes an allocation.
    pub async fn discard(&self, mut len: u64) -> Result<()> {
        let mut sink = [0u8; 4096];
        while len > 0 {
            let n = len.min(sink.len() as u64) as usize;
            self.read_exact(&mut sink[..n]).await?;
            len -= n as u64;
        }
        Ok(())
    }

    /// Writes every byte of every slice, in order (qio_channel_writev_all).
    pub async fn write_all(&self, parts: &[&[u8]]) -> Result<()> {
        if self.is_tls() {
            return super::tls::write_all(self, parts).await;
        }
        self.raw_write_all(parts).await
    }

    /// Writes to the socket itself, under any TLS.
    pub(super) async fn raw_write_all(&self, parts: &[&[u8]]) -> Result<()> {
        let mut index = 0;
        let mut skip = 0;
        while index < parts.len() {
            let iov: Vec<IoSlice<'_>> = std::iter::once(&parts[index][skip..])
                .chain(parts[index + 1..].iter().copied())
                .take(libc::UIO_MAXIOV as usize)
                .map(IoSlice::new)
                .collect();
            // SAFETY: IoSlice is ABI-compatible with iovec; the kernel only reads the slices
            // and the header, which live across the call. MSG_NOSIGNAL: a peer that went away
            // is an EPIPE error here, not a SIGPIPE that kills the process.
            let n = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
                msg.msg_iovlen = iov.len();
                libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
            };
            if n < 0 {
                self.wait_or_fail(true).await?;
                continue;
            }
            let mut n = n as usize;
            // Advance past what was written.
            while index < parts.len() && n >= parts[index].len() - skip {
                n -= parts[index].len() - skip;
                index += 1;
                skip = 0;
            }
            skip += n;
        }
        Ok(())
    }

    /// Shuts the socket down both ways, so that a coroutine waiting to read wakes up with
    /// end-of-file (qio_channel_shutdown).
    pub fn shutdown(&self) {
        // SAFETY: plain syscall on our own descriptor.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// After a failed read or write: waits for readiness on EAGAIN, retries on EINTR,
    /// and returns any other error.
    async fn wait_or_fail(&self, output: bool) -> Result<()> {
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) => {
                let ctx = AioContext::current();
                if output {
                    ctx.wait_writable(self.out.as_fd(), self.write_token).await
                } else {
                    ctx.wait_readable(self.fd.as_fd(), self.read_token).await
                }
            }
            Some(libc::EINTR) => Ok(()),
            _ => Err(Error::from(err)),
        }
    }
}

/// Sets O_NONBLOCK on a descriptor.
pub fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    // SAFETY: fcntl on our own descriptor with integer arguments.
    let r = unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
    };
    if r < 0 {
        return Err(Error::last_os_error());
    }
    Ok(())
}

/// Accepts one connection from a non-blocking listening socket, waiting on the
/// AioContext until one arrives.
pub async fn accept(listener: &OwnedFd, token: u64) -> Result<OwnedFd> {
    loop {
        // SAFETY: accept4 with null address arguments on our own listening descriptor.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if fd >= 0 {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) => {
                AioContext::current()
                    .wait_readable(listener.as_fd(), token)
                    .await?
            }
            // The peer gave up before we got to it; wait for the next one.
            Some(libc::EINTR) | Some(libc::ECONNABORTED) => {}
            // Out of descriptors (a flood of connections): let some close, then go on.
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                co_sleep(Duration::from_millis(100)).await
            }
            _ => return Err(Error::from(err)),
        }
    }
}
