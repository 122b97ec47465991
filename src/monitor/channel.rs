//! The connections behind a monitor's or qtest's chardev (QEMU's chardev/char-socket.c and
//! char-stdio.c as a monitor sees them): a byte stream in and a byte stream out.
//!
//! A listening socket is bound at start-up, so that a client may connect as soon as the
//! process runs, and accepts one client at a time on a thread of its own, as QEMU's socket
//! chardev serves one connection at a time. An inherited descriptor (`fd=N`, a socketpair
//! end the test harness passed) or stdio is a single connection.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};

use crate::vm_config::ChardevBackend;

/// One client's streams.
pub struct Connection {
    /// What the client sends.
    pub input: Box<dyn Read + Send>,
    /// Where replies go.
    pub output: Box<dyn Write + Send>,
}

fn socket_connection(stream: UnixStream) -> std::io::Result<Connection> {
    let output = stream.try_clone()?;
    Ok(Connection {
        input: Box::new(stream),
        output: Box::new(output),
    })
}

/// Where connections come from.
enum Source {
    Single(Connection),
    Listener(UnixListener),
    Nothing,
}

/// Opens `backend` now (binds, connects or adopts the descriptor) and serves every
/// connection on a new thread named `name`, one after another, with `serve`.
pub fn start(
    backend: &ChardevBackend,
    name: &str,
    serve: impl Fn(Connection) + Send + 'static,
) -> Result<(), String> {
    let source = match backend {
        ChardevBackend::Stdio => Source::Single(Connection {
            input: Box::new(std::io::stdin()),
            output: Box::new(std::io::stdout()),
        }),
        ChardevBackend::SocketFd(fd) => {
            if fd_is_closed(*fd) {
                return Err(format!("File descriptor {fd} is not open"));
            }
            // SAFETY: the descriptor was inherited for this chardev alone (the harness's
            // socketpair end); it is adopted once here and closed when the stream drops.
            let stream = unsafe { UnixStream::from_raw_fd(*fd) };
            Source::Single(socket_connection(stream).map_err(|e| e.to_string())?)
        }
        ChardevBackend::SocketPath { path, server: true } => {
            let _ = std::fs::remove_file(path);
            Source::Listener(
                UnixListener::bind(path)
                    .map_err(|e| format!("Failed to bind socket to {path}: {e}"))?,
            )
        }
        ChardevBackend::SocketPath {
            path,
            server: false,
        } => {
            let stream = UnixStream::connect(path)
                .map_err(|e| format!("Failed to connect to '{path}': {e}"))?;
            Source::Single(socket_connection(stream).map_err(|e| e.to_string())?)
        }
        ChardevBackend::Null => Source::Nothing,
    };
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || match source {
            Source::Single(conn) => serve(conn),
            Source::Listener(listener) => {
                for stream in listener.incoming().flatten() {
                    if let Ok(conn) = socket_connection(stream) {
                        serve(conn);
                    }
                }
            }
            Source::Nothing => {}
        })
        .map(drop)
        .map_err(|e| format!("cannot start the {name} thread: {e}"))
}

fn fd_is_closed(fd: i32) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) < 0 }
}
