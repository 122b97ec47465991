//! Running as a server process: `--fork` with the parent waiting for the child to be ready,
//! `--pid-file`, and the termination signals that end the server cleanly (qemu-nbd.c's
//! fork/pipe dance, qemu_write_pidfile, and os_setup_signal_handling + qemu_system_killed).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use block::aio::new_fd_token;
use block::AioContext;

/// The child's end of the `--fork` pipe: its stderr goes to the parent until it is ready.
pub struct ForkedChild {
    /// The stderr the server keeps once it is running (/dev/null after daemonizing).
    quiet_stderr: OwnedFd,
}

/// Forks. The parent copies what the child writes on stderr to its own stderr until the
/// child is ready, then exits: 0 if the child said nothing (the server runs), 1 otherwise.
/// Call before any thread is started: only the calling thread survives a fork.
pub fn fork_server() -> Result<ForkedChild, String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(format!(
            "Error setting up communication pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fresh descriptors nobody else owns.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread runs yet (the caller's contract), so the child is consistent.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!(
            "Failed to fork: {}",
            std::io::Error::last_os_error()
        ));
    }
    if pid > 0 {
        drop(write_end);
        let mut pipe = std::fs::File::from(read_end);
        let mut buf = [0u8; 1024];
        let mut errors = false;
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    errors = true;
                    let _ = std::io::stderr().write_all(&buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    block::error::error_report(&format!("Cannot read from daemon: {e}"));
                    std::process::exit(1);
                }
            }
        }
        std::process::exit(i32::from(errors));
    }
    drop(read_end);
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("Failed to daemonize: {e}"))?;
    // SAFETY: setsid and dup2 on descriptors we own; the child is single-threaded.
    unsafe {
        libc::setsid();
        libc::dup2(devnull.as_raw_fd(), 0);
        libc::dup2(devnull.as_raw_fd(), 1);
        libc::dup2(write_end.as_raw_fd(), 2);
    }
    Ok(ForkedChild {
        quiet_stderr: devnull.into(),
    })
}

impl ForkedChild {
    /// The server is running: point stderr away from the pipe, so that the parent sees
    /// end-of-file and exits with success (nbd_client_release_pipe).
    pub fn release(self) {
        // SAFETY: dup2 onto stderr from a descriptor we own.
        unsafe { libc::dup2(self.quiet_stderr.as_raw_fd(), 2) };
    }
}

/// Writes the process id to `path` (qemu_write_pidfile).
pub fn write_pid_file(path: &str) -> Result<(), String> {
    std::fs::write(path, format!("{}\n", std::process::id()))
        .map_err(|e| format!("Cannot open pid file: {e}"))
}

/// The signals that end the server.
const TERMINATION: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The termination signals, delivered to the AioContext through a signalfd.
pub struct TerminationSignals {
    fd: OwnedFd,
    token: u64,
}

impl TerminationSignals {
    /// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and the threads it starts later)
    /// and opens a descriptor that reports them. Call before starting any thread.
    pub fn new() -> Result<TerminationSignals, String> {
        // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask and
        // signalfd read it; the descriptor is checked before it is owned.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in TERMINATION {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(format!("signalfd: {}", std::io::Error::last_os_error()));
            }
            Ok(TerminationSignals {
                fd: OwnedFd::from_raw_fd(fd),
                token: new_fd_token(),
            })
        }
    }

    /// Waits for a termination signal.
    pub async fn wait(&self) {
        loop {
            let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
            // SAFETY: reads one signalfd_siginfo into a buffer of its size.
            let n =
                unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
            if n == info.len() as isize {
                return;
            }
            if AioContext::current()
                .wait_readable(self.fd.as_fd(), self.token)
                .await
                .is_err()
            {
                // Without the descriptor on the loop a signal can never be noticed.
                return std::future::pending().await;
            }
        }
    }
}
