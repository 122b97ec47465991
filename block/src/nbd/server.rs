//! The NBD server: listening sockets, accepting clients, and each client's life from
//! handshake to close (the connection half of QEMU's nbd/server.c, with qemu-nbd's
//! accept policy: nbd_can_accept, nbd_client_closed).
//!
//! Everything runs as coroutines on the thread's AioContext: one accept loop per listening
//! socket, one coroutine per connection (handshake, then the request reader), and one per
//! request. The server stops accepting while `max_clients` connections are open, so a
//! flood of connections waits in the kernel's backlog instead of costing memory; a
//! handshake that takes longer than the limit is cut off.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd};
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

/// A server offering its exports by name: qemu-nbd's one, or those the monitor adds to the
/// machine's server (block-export-add).
pub struct NbdServer {
    exports: RefCell<Vec<Rc<NbdExport>>>,
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
    /// The open connections, so that they can be cut (QEMU's client list of a server).
    conns: RefCell<Vec<Conn>>,
    next_conn: Cell<u64>,
}

/// An open connection: a second descriptor of its socket, and the export it picked.
struct Conn {
    id: u64,
    socket: OwnedFd,
    export: Option<Rc<NbdExport>>,
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
        let server = NbdServer::without_exports(max_clients, handshake_limit, tls);
        server.exports.borrow_mut().push(export);
        server
    }

    /// A server with no export yet (nbd-server-start), limited as [`NbdServer::new`] says.
    pub fn without_exports(
        max_clients: usize,
        handshake_limit: Duration,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Rc<NbdServer> {
        Rc::new(NbdServer {
            exports: RefCell::new(Vec::new()),
            max_clients,
            handshake_limit,
            clients: Cell::new(0),
            negotiated: Cell::new(0),
            closed: Cell::new(0),
            changed: CoQueue::new(),
            tls,
            conns: RefCell::new(Vec::new()),
            next_conn: Cell::new(0),
        })
    }

    /// Offers `export` too; its name must be free (nbd_export_create's check).
    pub fn add_export(&self, export: Rc<NbdExport>) -> Result<()> {
        if self.find_export(export.name()).is_some() {
            return Err(Error::invalid(format!(
                "NBD server already has export named '{}'",
                export.name()
            )));
        }
        self.exports.borrow_mut().push(export);
        Ok(())
    }

    /// The export named `name`, if the server offers one.
    pub fn find_export(&self, name: &str) -> Option<Rc<NbdExport>> {
        self.exports
            .borrow()
            .iter()
            .find(|e| e.name() == name)
            .cloned()
    }

    /// Stops offering the export named `name` to new clients; connected ones keep it until
    /// they leave. Returns it, if it was offered.
    pub fn remove_export(&self, name: &str) -> Option<Rc<NbdExport>> {
        let mut exports = self.exports.borrow_mut();
        let at = exports.iter().position(|e| e.name() == name)?;
        Some(exports.remove(at))
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

    /// Cuts the connections using `export`, or every connection with `None` (QEMU's
    /// client_close for an export's clients or a server's): each socket is shut down, so
    /// the connection's coroutines see the client gone and end as if it had left.
    pub fn close_clients(&self, export: Option<&Rc<NbdExport>>) {
        for c in self.conns.borrow().iter() {
            let picked = c.export.as_ref();
            if export.is_none_or(|e| picked.is_some_and(|p| Rc::ptr_eq(p, e))) {
                // SAFETY: shutdown on a descriptor we own; it touches no memory.
                unsafe { libc::shutdown(c.socket.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
    }

    /// Negotiates with and then serves the client connected on `fd` until it leaves (the
    /// fuzz target feeds it a byte stream this way).
    pub async fn serve_client(&self, fd: OwnedFd) {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        if let Ok(socket) = fd.try_clone() {
            let export = None;
            self.conns.borrow_mut().push(Conn { id, socket, export });
        }
        self.serve_connection(id, fd).await;
        self.conns.borrow_mut().retain(|c| c.id != id);
    }

    async fn serve_connection(&self, id: u64, fd: OwnedFd) {
        set_nodelay(&fd);
        let ch = match Channel::new(fd) {
            Ok(ch) => ch,
            Err(e) => return error_report(&format!("Failed to set up a connection: {e}")),
        };
        // The exports offered when the client connected are the ones it may pick.
        let exports = self.exports.borrow().clone();
        let handshake = future::or(
            async { Some(negotiate(&ch, &exports, self.tls.as_ref()).await) },
            async {
                co_sleep(self.handshake_limit).await;
                None
            },
        )
        .await;
        let (export, negotiated) = match handshake {
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
        if let Some(c) = self.conns.borrow_mut().iter_mut().find(|c| c.id == id) {
            c.export = Some(export.clone());
        }
        export.client_connected(true);
        let client = NbdClient::new(ch, export.clone(), negotiated);
        if let Err(e) = client.run().await {
            error_report(&format!("Disconnect client, due to: {e}"));
        }
        export.client_connected(false);
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
