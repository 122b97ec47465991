//! The machine's block exports: the NBD server the monitor starts and the exports it offers
//! over it (QEMU's block/export/export.c: blk_exp_add, blk_exp_request_shutdown,
//! qmp_query_block_exports; and blockdev-nbd.c: nbd_server_start, nbd_server_stop).
//!
//! An export is a BlockBackend of its own over a node, offered under a name to the NBD
//! clients; it lives on the main loop with the graph. Removing one refuses while clients use
//! it unless asked to cut them ("hard" mode); the ids of the exports deleted are returned for
//! the monitor's BLOCK_EXPORT_DELETED. Only NBD exports exist in rqemu (QEMU also has FUSE, vhost-user-blk
//! and VDUSE ones).

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use block::aio::Task;
use block::nbd::server::{listen_tcp, listen_unix, DEFAULT_HANDSHAKE_LIMIT};
use block::nbd::{ExportOptions, NbdExport, NbdServer};
use block::objects::tls_creds::{lookup_tls_creds, Endpoint};
use block::{AioContext, BlockBackend, BlockDriverState};

/// Where the NBD server listens (the `addr` of nbd-server-start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// A unix socket at this path.
    Unix(PathBuf),
    /// A TCP host and port.
    Inet(String, String),
}

/// The running NBD server.
struct Running {
    server: Rc<NbdServer>,
    /// The accept loop; dropping it stops accepting.
    _accept: Task<()>,
}

/// One export (QEMU's BlockExport).
struct Export {
    id: String,
    nbd: Rc<NbdExport>,
}

thread_local! {
    static SERVER: RefCell<Option<Running>> = const { RefCell::new(None) };
    static EXPORTS: RefCell<Vec<Export>> = const { RefCell::new(Vec::new()) };
}

/// What a new export offers (BlockExportOptions with its NBD part).
#[derive(Clone, Debug, Default)]
pub struct ExportSpec {
    /// The export's id, unique among exports.
    pub id: String,
    /// The node exported.
    pub node: String,
    /// Clients may write.
    pub writable: bool,
    /// Every write reaches the disk before it completes (no write cache).
    pub writethrough: bool,
    /// The NBD name; the node name when not given.
    pub name: Option<String>,
    /// The NBD description.
    pub description: Option<String>,
    /// Dirty bitmaps offered as metadata contexts.
    pub bitmaps: Vec<String>,
    /// Offer `qemu:allocation-depth`.
    pub allocation_depth: bool,
}

/// Starts the NBD server (nbd_server_start): one at a time; with `tls_creds`, the id of a
/// tls-creds object, clients must use TLS.
pub fn nbd_server_start(
    addr: &ListenAddr,
    max_connections: usize,
    tls_creds: Option<&str>,
) -> Result<(), String> {
    if SERVER.with(|s| s.borrow().is_some()) {
        return Err("NBD server already running".to_string());
    }
    let tls = tls_creds
        .map(|id| lookup_tls_creds(id, Endpoint::Server)?.server_config())
        .transpose()
        .map_err(|e| e.to_string())?;
    let listener = match addr {
        ListenAddr::Unix(path) => listen_unix(path),
        ListenAddr::Inet(host, port) => listen_tcp(host, port),
    }
    .map_err(|e| e.to_string())?;
    let server = NbdServer::without_exports(max_connections, DEFAULT_HANDSHAKE_LIMIT, tls);
    let serving = server.clone();
    let accept = AioContext::current().spawn(async move {
        if let Err(e) = serving.serve(listener).await {
            block::error::error_report(&format!("NBD server: {e}"));
        }
    });
    let running = Running {
        server,
        _accept: accept,
    };
    SERVER.with(|s| *s.borrow_mut() = Some(running));
    Ok(())
}

/// Stops the NBD server (nbd_server_stop): its clients are cut and its exports go; returns
/// their ids.
pub fn nbd_server_stop() -> Result<Vec<String>, String> {
    let Some(running) = SERVER.with(|s| s.borrow_mut().take()) else {
        return Err("NBD server not running".to_string());
    };
    running.server.close_clients(None);
    Ok(EXPORTS.with(|e| e.borrow_mut().drain(..).map(|x| x.id).collect()))
}

/// Whether the NBD server runs.
pub fn nbd_server_running() -> bool {
    SERVER.with(|s| s.borrow().is_some())
}

fn server() -> Option<Rc<NbdServer>> {
    SERVER.with(|s| s.borrow().as_ref().map(|r| r.server.clone()))
}

/// Fails unless `id` is a well-formed id no export has (blk_exp_add's first checks): a
/// letter, then letters, digits, '-', '.' and '_' (id_wellformed).
pub fn check_id_free(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    if !well_formed {
        return Err("Invalid block export id".to_string());
    }
    match find(id) {
        Some(_) => Err(format!("Block export id '{id}' is already in use")),
        None => Ok(()),
    }
}

/// Adds an export of `bs` (blk_exp_add with nbd_export_create), in QEMU's order of checks.
pub fn block_export_add(spec: ExportSpec, bs: Rc<BlockDriverState>) -> Result<(), String> {
    check_id_free(&spec.id)?;
    if spec.writable && bs.is_read_only() {
        return Err("Cannot export read-only node as writable".to_string());
    }
    let Some(server) = server() else {
        return Err("NBD server not running".to_string());
    };
    let name = spec.name.unwrap_or_else(|| spec.node.clone());
    if name.len() > block::nbd::proto::NBD_MAX_STRING_SIZE {
        return Err(format!("export name '{name}' too long"));
    }
    if let Some(d) = spec
        .description
        .as_ref()
        .filter(|d| d.len() > block::nbd::proto::NBD_MAX_STRING_SIZE)
    {
        return Err(format!("description '{d}' too long"));
    }
    if server.find_export(&name).is_some() {
        return Err(format!("NBD server already has export named '{name}'"));
    }
    let blk = BlockBackend::new(bs);
    blk.set_write_cache(!spec.writethrough);
    let opts = ExportOptions {
        name,
        description: spec.description,
        read_only: !spec.writable,
        allocation_depth: spec.allocation_depth,
        // As nbd_export_create: several clients can only disagree about writes.
        multi_conn: !spec.writable,
        bitmaps: spec.bitmaps,
    };
    let nbd = NbdExport::new(blk, opts).map_err(|e| e.to_string())?;
    server.add_export(nbd.clone()).map_err(|e| e.to_string())?;
    EXPORTS.with(|e| e.borrow_mut().push(Export { id: spec.id, nbd }));
    Ok(())
}

fn find(id: &str) -> Option<Rc<NbdExport>> {
    EXPORTS.with(|e| {
        e.borrow()
            .iter()
            .find(|x| x.id == id)
            .map(|x| x.nbd.clone())
    })
}

/// Removes the export `id` (qmp_block_export_del): refused while clients use it unless
/// `hard`, which cuts them.
pub fn block_export_del(id: &str, hard: bool) -> Result<(), String> {
    let Some(nbd) = find(id) else {
        return Err(format!("Export '{id}' is not found"));
    };
    if nbd.clients() > 0 {
        if !hard {
            // QEMU's hint, "Use mode='hard' to force client disconnect", is not part of the
            // message a QMP client gets.
            return Err(format!("export '{id}' still in use"));
        }
        if let Some(server) = server() {
            server.close_clients(Some(&nbd));
        }
    }
    if let Some(server) = server() {
        server.remove_export(nbd.name());
    }
    EXPORTS.with(|e| e.borrow_mut().retain(|x| x.id != id));
    Ok(())
}

/// What query-block-exports lists: (id, node name) of each export, oldest first.
pub fn list() -> Vec<(String, String)> {
    EXPORTS.with(|e| {
        e.borrow()
            .iter()
            .map(|x| (x.id.clone(), x.nbd.blk().bs().node_name().to_string()))
            .collect()
    })
}

/// Whether an export's backend has `bs` as its root (so the node is in use).
pub fn exports_node(bs: &Rc<BlockDriverState>) -> bool {
    EXPORTS.with(|e| e.borrow().iter().any(|x| Rc::ptr_eq(&x.nbd.blk().bs(), bs)))
}

/// At exit, before the graph is closed: cuts every client and stops the server
/// (blk_exp_close_all); the drain that follows waits for the requests they left.
pub fn close_all() {
    let _ = nbd_server_stop();
}
