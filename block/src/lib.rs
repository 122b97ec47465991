//! rqemu's block layer core: the part of QEMU's block/ and util/ directories that knows no
//! guest and no image format.
//!
//! Read it in the order a request travels:
//! [`backend`] (BlockBackend, what devices and tools call) →
//! [`io`] (the generic request path of every node) →
//! [`driver`] (the BlockDriver contract) and [`node`] (BlockDriverState, the graph) →
//! [`protocols`] (file, null-co) → [`aio`] (the main loop, thread pool, io_uring).
//! [`nbd`] serves a BlockBackend to NBD clients over a socket.
//! [`coroutine`], [`iov`], [`options`], [`error`] and [`trace`] are the vocabulary they share.

pub mod aio;
pub mod backend;
pub mod coroutine;
pub mod driver;
pub mod error;
pub mod filters;
pub mod io;
pub mod iov;
pub mod nbd;
pub mod node;
pub mod options;
pub mod protocols;
pub mod snapshot;
pub mod temp_snapshot;
#[macro_use]
pub mod trace;

pub use aio::AioContext;
pub use backend::BlockBackend;
pub use driver::{BlockDriver, RequestFlags};
pub use error::{Error, Result};
pub use filters::blkdebug::BlkdbgEvent;
pub use iov::IoVector;
pub use node::{bdrv_open, BlockDriverState, OpenFlags};
pub use options::Options;
