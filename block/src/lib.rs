//! rqemu's block layer core: the part of QEMU's block/ and util/ directories that knows no
//! guest and no image format.
//!
//! Read it in the order a request travels:
//! [`backend`] (BlockBackend, what devices and tools call) →
//! [`io`] (the generic request path of every node) →
//! [`driver`] (the BlockDriver contract) and [`node`] (BlockDriverState, the graph) →
//! [`protocols`] (file, null-co) → [`aio`] (the main loop, thread pool, io_uring).
//! [`open`] builds a graph, finding drivers in the [`registry`]; [`filters`] hold blkdebug,
//! which acts on the [`debug_event`]s formats raise.
//! [`dirty_bitmap`] records which parts of a node were written, for incremental backup.
//! [`nbd`] serves a BlockBackend to NBD clients over a socket. [`jobs`] run stream, commit,
//! mirror and backup on a live graph, changing it through [`graph`] (drained sections, node
//! replacement, permissions).
//! [`coroutine`], [`iov`], [`options`], [`error`] and [`trace`] are the vocabulary they share.

pub mod accounting;
pub mod aio;
pub mod backend;
pub mod bitmap_qmp;
pub mod coroutine;
pub mod crypto;
pub mod debug_event;
pub mod dirty_bitmap;
pub mod driver;
pub mod driver_check;
pub mod error;
pub mod error_action;
pub mod filters;
pub mod graph;
pub mod io;
pub mod iov;
pub mod jobs;
pub mod nbd;
pub mod node;
pub mod objects;
pub mod open;
pub mod options;
pub mod prealloc;
pub mod protocols;
pub mod registry;
pub mod snapshot;
pub mod throttle;
#[macro_use]
pub mod trace;
mod tracked;

pub use aio::AioContext;
pub use backend::BlockBackend;
pub use debug_event::BlkdbgEvent;
pub use driver::{BlockDriver, RequestFlags};
pub use error::{Error, Result};
pub use iov::IoVector;
pub use node::{BlockDriverState, OpenFlags};
pub use open::bdrv_open;
pub use options::Options;

/// The drivers built into this crate, which the registry starts with (what QEMU's block_init
/// constructors register): the protocols, then the filters. The crate root is the one place
/// that knows every module, so neither the registry nor the contract has to.
fn builtin_drivers() -> Vec<&'static driver::DriverClass> {
    let mut all = protocols::ALL.to_vec();
    all.extend_from_slice(filters::ALL);
    all
}

/// The built-in protocol for a filename without a `proto:` prefix (`file`, or `host_device`
/// for a host device), for the registry's bdrv_find_protocol.
fn builtin_protocol_for_path(filename: &str) -> &'static driver::DriverClass {
    protocols::for_plain_path(filename)
}
