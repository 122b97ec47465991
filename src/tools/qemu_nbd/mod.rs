//! qemu-nbd: serve one image over NBD (QEMU's qemu-nbd.c).
//!
//! The program opens the image as qemu-img and qemu-io do (`-f`, `--image-opts`, `json:`),
//! wraps it in a raw node for `-o OFFSET`, and hands the BlockBackend to the server of
//! `block::nbd`, which runs on this thread's AioContext until a termination signal or,
//! without `--persistent`, until the last client that completed a handshake has left.
//! Modules: [`cli`] (options and messages), [`daemon`] (`--fork`, pid file, signals),
//! [`help`], [`list`] (`-L`, client mode).

pub mod cli;
pub mod daemon;
pub mod help;
pub mod list;

use std::rc::Rc;
use std::time::Duration;

use block::nbd::server::{listen_tcp, listen_unix, DEFAULT_HANDSHAKE_LIMIT};
use block::nbd::{ExportOptions, NbdExport, NbdServer};
use block::node::OpenFlags;
use block::objects::tls_creds::{lookup_tls_creds, Endpoint};
use block::{AioContext, BlockBackend, Options};
use futures_lite::future;

use crate::tools::image::{open_image, warn_if_probed_raw, ImageSpec};
use cli::{Listen, NbdOptions, Parsed};

/// Prints `qemu-nbd: MSG` and returns the failure status.
fn fail(msg: impl std::fmt::Display) -> i32 {
    block::error::error_report(&msg.to_string());
    1
}

/// The program, given its whole command line (`argv[0]` first): returns the exit status.
pub fn main(args: Vec<String>) -> i32 {
    block::error::set_progname("qemu-nbd");
    formats::register_all();
    let argv0 = args.first().map_or("qemu-nbd", String::as_str);
    let o = match cli::parse(argv0, args.get(1..).unwrap_or_default()) {
        Parsed::Run(o) => o,
        Parsed::Exit(code) => return code,
    };
    if let Some(why) = unsupported(&o) {
        return fail(why);
    }
    for object in &o.objects {
        if let Err(e) = block::objects::user_creatable_add_from_str(object) {
            return fail(e);
        }
    }
    let endpoint = if o.list {
        Endpoint::Client
    } else {
        Endpoint::Server
    };
    let tls = match o.tls_option("--tls-creds") {
        Some(id) => match lookup_tls_creds(id, endpoint) {
            Ok(creds) => Some(creds),
            Err(e) => return fail(e),
        },
        None => None,
    };
    if o.list {
        return match AioContext::current().run_until(list::list(&o, tls.as_ref())) {
            Ok(()) => 0,
            Err(e) => fail(e),
        };
    }
    let forked = if o.fork {
        match daemon::fork_server() {
            Ok(child) => Some(child),
            Err(e) => return fail(e),
        }
    } else {
        None
    };
    let signals = match daemon::TerminationSignals::new() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let listener = match o.listen() {
        Listen::Unix(path) => listen_unix(path.as_ref()),
        Listen::Tcp { host, port } => listen_tcp(&host, &port),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let ctx = AioContext::current();
    let file = o.file.clone().unwrap_or_default();
    let blk = match ctx.run_until(open_export_image(&o)) {
        Ok(blk) => blk,
        Err(e) => return fail(format_args!("Failed to blk_new_open '{file}': {e}")),
    };
    if let Some(sn) = &o.load_snapshot {
        if let Err(e) = ctx.run_until(load_snapshot(&blk, sn)) {
            return fail(format_args!("Failed to load snapshot: {e}"));
        }
    }
    let export = NbdExport::new(
        blk.clone(),
        ExportOptions {
            name: o.export_name.clone().unwrap_or_default(),
            description: o.description.clone(),
            read_only: o.read_only,
            allocation_depth: o.allocation_depth,
            multi_conn: o.shared != 1,
            // qemu-nbd prepends each -B to its list: the last one gets the first context id.
            bitmaps: o.bitmaps.iter().rev().cloned().collect(),
        },
    );
    let export = match export {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let limit = o
        .handshake_limit
        .map_or(DEFAULT_HANDSHAKE_LIMIT, Duration::from_secs);
    let server_tls = match tls.map(|t| t.server_config()).transpose() {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let server = NbdServer::new(export, o.shared, limit, server_tls);
    if let Some(path) = &o.pid_file {
        if let Err(e) = daemon::write_pid_file(path) {
            return fail(e);
        }
    }
    if let Err(e) = std::env::set_current_dir("/") {
        return fail(format_args!("Could not chdir to root directory: {e}"));
    }
    if let Some(child) = forked {
        child.release();
    }
    let persistent = o.persistent;
    let served = ctx.run_until(future::or(
        future::or(server.serve(listener), async {
            signals.wait().await;
            Ok(())
        }),
        async {
            if persistent {
                std::future::pending::<()>().await;
            }
            server.last_client_gone().await;
            Ok(())
        },
    ));
    let closed = ctx.run_until(blk.close());
    if let Listen::Unix(path) = o.listen() {
        let _ = std::fs::remove_file(path);
    }
    match served.and(closed) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// The features of qemu-nbd that rqemu-nbd does not have yet, named in the error.
fn unsupported(o: &NbdOptions) -> Option<String> {
    // As qemu-nbd, the device is opened first, so a host without the nbd driver gets the
    // same message; where the device exists, the missing kernel client is named.
    let device = match (&o.connect, o.disconnect) {
        (Some(dev), _) => Some((dev.as_str(), "Failed to open")),
        (None, true) => Some((o.file.as_deref().unwrap_or_default(), "Cannot open")),
        (None, false) => None,
    };
    if let Some((dev, what)) = device {
        return Some(match std::fs::File::open(dev) {
            Err(e) => format!(
                "{what} {dev}: {}",
                block::error::strerror(e.raw_os_error().unwrap_or(libc::EIO))
            ),
            Ok(_) => {
                format!("{dev}: the kernel NBD client (-c/-d) is not supported by rqemu-nbd yet")
            }
        });
    }
    if o.tls_option("--tls-authz").is_some() {
        return Some("--tls-authz: TLS authorization is not supported by rqemu-nbd yet".into());
    }
    None
}

/// Opens the image with qemu-nbd's flags (read-write unless `-r`, writeback cache, discard
/// ignored unless `--discard=unmap`), under a raw node at `-o OFFSET` when one is given.
async fn open_export_image(o: &NbdOptions) -> block::Result<Rc<BlockBackend>> {
    let flags = OpenFlags {
        read_only: o.read_only,
        cache: o.cache,
        unmap: o.unmap,
        aio: o.aio,
        snapshot: o.snapshot,
        ..OpenFlags::default()
    };
    let spec = ImageSpec {
        filename: o.file.clone().unwrap_or_default(),
        format: o.format.clone(),
        image_opts: o.image_opts,
    };
    let mut extra = Options::new();
    if let Some(dz) = &o.detect_zeroes {
        extra.set("detect-zeroes", dz.clone());
    }
    if o.offset == 0 {
        let blk = open_image(&spec, extra, flags).await?;
        warn_if_probed_raw(&blk, &spec.filename);
        return Ok(blk);
    }
    // QEMU puts a raw node with `offset` over the opened image; here the image becomes the
    // raw node's `file` child, described by the same filename and format.
    let (filename, inner) = spec.to_open_args()?;
    let mut opts = Options::new();
    opts.set("driver", "raw");
    opts.set("offset", o.offset.to_string());
    if let Some(f) = filename {
        opts.set("file.filename", f);
    }
    for (k, v) in inner.iter() {
        opts.set(&format!("file.{k}"), v);
    }
    for (k, v) in extra.iter() {
        opts.set_default(k, v);
    }
    BlockBackend::open(None, opts, flags).await
}

/// `-l`: shows an internal snapshot instead of the current state.
async fn load_snapshot(blk: &BlockBackend, arg: &str) -> block::Result<()> {
    let bs = &blk.bs();
    if arg.starts_with("snapshot.") {
        let mut id = None;
        let mut name = None;
        for part in arg.split(',') {
            match part.split_once('=') {
                Some(("snapshot.id", v)) => id = Some(v),
                Some(("snapshot.name", v)) => name = Some(v),
                _ => {
                    return Err(block::Error::invalid(format!(
                        "Failed in parsing snapshot param `{arg}'"
                    )))
                }
            }
        }
        block::snapshot::bdrv_snapshot_load_tmp(bs, id, name).await
    } else {
        block::snapshot::bdrv_snapshot_load_tmp_by_id_or_name(bs, arg).await
    }
}
