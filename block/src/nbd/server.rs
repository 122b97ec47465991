//! The NBD server: listening sockets, accepting clients, and each client's life from
//! handshake to close (the connection half of QEMU's nbd/server.c, with qemu-nbd's
//! accept policy: nbd_can_accept, nbd_client_closed).
//!
//! Everything runs as coroutines on the thread's AioContext: one accept loop per listening
//! socket, one coroutine per connection (handshake, then the request reader), and one per
//! request. The server stops accepting while `max_clients` connections are open, so a
//! flood of connections waits in the kernel's backlog instead of costing memory; a
//! handshake that takes longer than the limit is cut off.

use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;

use super::channel::{accept, Channel};
use super::export::NbdExport;
use super::server_negotiate::negotiate;
use super::server_requests::NbdClient;
use crate::aio::{co_sleep, new_fd_token};
use crate::coroutine::{co_spawn, CoQueue};
use crate::error::{error_report, Error, Result};

/// The port NBD servers listen on by default.
pub const NBD_DEFAULT_PORT: u16 = 10809;

/// How long a client may take over its handshake by default (qemu-nbd's 10 seconds).
pub const DEFAULT_HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// A server offering one export.
pub struct NbdServer {
    export: Rc<NbdExport>,
    /// Connections served at once; 0: no limit (qemu-nbd's `-e`).
    max_clients: usize,
    handshake_limit: Duration,
    clients: Cell<usize>,
    /// Clients that completed their handshake, ever.
    negotiated: Cell<u64>,
    /// Connections that completed a handshake and are now closed, ever.
    closed: Cell<u64>,
    changed: CoQueue,
    /// With TLS credentials, clients must upgrade with NBD_OPT_STARTTLS first.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl NbdServer {
    /// A server for `export` that serves at most `max_clients` connections at once
    /// (0: unlimited), gives each `handshake_limit` to negotiate and, with `tls`, requires
    /// every client to upgrade to TLS first (qemu-nbd's `--tls-creds`).
    pub fn new(
        export: Rc<NbdExport>,
        max_clients: usize,
        handshake_limit: Duration,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Rc<NbdServer> {
        Rc::new(NbdServer {
            export,
            max_clients,
            handshake_limit,
            clients: Cell::new(0),
            negotiated: Cell::new(0),
            closed: Cell::new(0),
            changed: CoQueue::new(),
            tls,
        })
    }

    /// The export.
    pub fn export(&self) -> &Rc<NbdExport> {
        &self.export
    }

    /// Accepts clients from `listener` for ever, each served by its own coroutine.
    pub async fn serve(self: &Rc<Self>, listener: OwnedFd) -> Result<()> {
        let token = new_fd_token();
        loop {
            self.changed
                .wait_while(|| self.max_clients != 0 && self.clients.get() >= self.max_clients)
                .await;
            let fd = accept(&listener, token).await?;
            self.clients.set(self.clients.get() + 1);
            let server = self.clone();
            co_spawn(async move {
                server.serve_client(fd).await;
                server.clients.set(server.clients.get() - 1);
                server.changed.restart_all();
            });
        }
    }

    /// Returns once a client has completed a handshake and every such client has gone:
    /// when qemu-nbd without `--persistent` exits.
    pub async fn last_client_gone(&self) {
        self.changed
            .wait_while(|| self.negotiated.get() == 0 || self.closed.get() < self.negotiated.get())
            .await;
    }

    /// Negotiates with and then serves the client connected on `fd` until it leaves (the
    /// fuzz target feeds it a byte stream this way).
    pub async fn serve_client(&self, fd: OwnedFd) {
        set_nodelay(&fd);
        let ch = match Channel::new(fd) {
            Ok(ch) => ch,
            Err(e) => return error_report(&format!("Failed to set up a connection: {e}")),
        };
        let handshake = future::or(
            async { Some(negotiate(&ch, &self.export, self.tls.as_ref()).await) },
            async {
                co_sleep(self.handshake_limit).await;
                None
            },
        )
        .await;
        let negotiated = match handshake {
            Some(Ok(Some(n))) => n,
            // NBD_OPT_ABORT: the client left politely.
            Some(Ok(None)) => return,
            Some(Err(e)) => {
                // A client that connects and leaves (a port probe) is no error.
                if !matches!(e.errno(), libc::ECONNRESET | libc::EPIPE) {
                    error_report(&format!("Failed to negotiate: {e}"));
                }
                return;
            }
            None => return error_report("Failed to negotiate: handshake timed out"),
        };
        self.negotiated.set(self.negotiated.get() + 1);
        let client = NbdClient::new(ch, self.export.clone(), negotiated);
        if let Err(e) = client.run().await {
            error_report(&format!("Disconnect client, due to: {e}"));
        }
        self.closed.set(self.closed.get() + 1);
    }
}

/// Listens on a TCP address ("host:port", IPv6 hosts in brackets).
pub fn listen_tcp(host: &str, port: &str) -> Result<OwnedFd> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let listener = std::net::TcpListener::bind((host, parse_port(port)?)).map_err(|e| {
        Error::new(
            e.raw_os_error().unwrap_or(libc::EINVAL),
            format!("Failed to bind socket: {e}"),
        )
    })?;
    listener.set_nonblocking(true).map_err(Error::from)?;
    Ok(listener.into())
}

/// Listens on a unix socket at `path`; a stale socket file left there is replaced, as
/// QEMU's socket_listen_unix does.
pub fn listen_unix(path: &Path) -> Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
        Error::new(
            e.raw_os_error().unwrap_or(libc::EINVAL),
            format!("Failed to bind socket to {}: {e}", path.display()),
        )
    })?;
    listener.set_nonblocking(true).map_err(Error::from)?;
    Ok(listener.into())
}

fn parse_port(port: &str) -> Result<u16> {
    port.parse()
        .map_err(|_| Error::invalid(format!("Invalid port '{port}'")))
}

/// Turns off Nagle's algorithm on a TCP connection: replies are whole messages, and
/// holding a small one back only adds latency. Unix sockets refuse it, harmlessly.
fn set_nodelay(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a valid pointer for the given length.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}
