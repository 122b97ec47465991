//! NBD, the Network Block Device protocol: how QEMU's block layer is reached over a socket
//! (QEMU's nbd/ directory).
//!
//! [`proto`] is the wire format, without I/O; [`channel`] a socket that coroutines read
//! and write; the server is [`server`] (listening and each connection's life),
//! [`server_negotiate`] (the handshake), [`server_requests`] (the transmission phase) and
//! [`meta_context`] (what block status reports),
//! serving an [`export::NbdExport`]. [`client`] is the client's handshake, which the `nbd`
//! protocol driver (`crate::protocols::nbd`) and `rqemu-nbd -L` use; [`tls`] secures a
//! channel after NBD_OPT_STARTTLS.

pub mod channel;
pub mod client;
pub mod export;
pub mod meta_context;
pub mod proto;
pub mod server;
pub mod server_negotiate;
pub mod server_requests;
pub mod tls;

pub use export::{ExportOptions, NbdExport};
pub use server::NbdServer;
