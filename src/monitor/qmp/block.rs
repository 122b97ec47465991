//! Block commands that change the graph: blockdev-add, blockdev-del, block_resize,
//! blockdev-snapshot-sync and blockdev-snapshot (QEMU's blockdev.c and block.c:
//! qmp_blockdev_add, qmp_blockdev_del, qmp_block_resize, external_snapshot_action,
//! bdrv_append).
//!
//! Nodes are found by device (a drive's id) or node name as bdrv_lookup_bs finds them. A
//! node blockdev-add opens belongs to the monitor until blockdev-del closes it; a live
//! snapshot opens the overlay without its backing file, attaches the old node below it
//! and then points every parent of the old node (its drive, nodes above it) at the
//! overlay, once the requests in flight have drained.

use std::rc::Rc;

use block::driver::PreallocMode;
use block::graph::permissions::{self, Perm};
use block::{BlockBackend, BlockDriverState, OpenFlags, Options};
use serde_json::{json, Value};

use super::{Args, CmdResult, ErrorClass, QmpError};
use crate::drives;
use crate::tools::qemu_img::create::{img_create, ImgCreate};

/// The node `device` (a drive's root) or `node_name` names (bdrv_lookup_bs).
pub fn lookup_bs(
    device: Option<&str>,
    node_name: Option<&str>,
) -> Result<Rc<BlockDriverState>, QmpError> {
    if let Some(blk) =
        device.and_then(|d| drives::named_backends().into_iter().find(|(n, _)| n == d))
    {
        return Ok(blk.1.bs());
    }
    if let Some(bs) = node_name.and_then(block::graph::find_node) {
        return Ok(bs);
    }
    if let Some(d) = device.filter(|d| drives::empty_drives().iter().any(|e| e == d)) {
        return Err(QmpError::generic(format!("Device '{d}' has no medium")));
    }
    Err(QmpError::generic(format!(
        "Cannot find device='{}' nor node-name='{}'",
        device.unwrap_or_default(),
        node_name.unwrap_or_default()
    )))
}

/// A node by node name alone, with QEMU's message.
fn find_node(name: &str) -> Result<Rc<BlockDriverState>, QmpError> {
    block::graph::find_node(name).ok_or_else(|| {
        QmpError::new(
            ErrorClass::DeviceNotFound,
            format!("Cannot find node {name}"),
        )
    })
}

/// QAPI's BlockdevOptions as flat block options (a `json:` description's keys).
fn blockdev_options(map: serde_json::Map<String, Value>) -> Result<Options, QmpError> {
    Ok(Options::parse_json_filename(
        &Value::Object(map).to_string(),
    )?)
}

/// `blockdev-add`: opens a node graph and hands its root to the monitor.
pub async fn blockdev_add(args: Args) -> CmdResult {
    let mut options = blockdev_options(args.into_rest())?;
    if !options.contains("driver") {
        return Err(QmpError::generic("Parameter 'driver' is missing"));
    }
    if !options.contains("node-name") {
        return Err(QmpError::generic(
            "'node-name' must be specified for the root node",
        ));
    }
    let auto_read_only = options.take_bool("auto-read-only")?.unwrap_or(false);
    let bs = match block::bdrv_open(None, options.clone(), OpenFlags::default()).await {
        // auto-read-only: an image that cannot be opened for writing is opened read-only.
        Err(e)
            if auto_read_only && matches!(e.errno(), libc::EACCES | libc::EROFS | libc::EPERM) =>
        {
            options.set("read-only", "on");
            block::bdrv_open(None, options, OpenFlags::default()).await?
        }
        other => other?,
    };
    drives::add_monitor_node(bs);
    Ok(json!({}))
}

/// Whether anything but the monitor holds `bs`: a drive, an export or a parent node.
pub(super) fn in_use(bs: &Rc<BlockDriverState>) -> bool {
    drives::backend_of(bs).is_some()
        || crate::block_export::exports_node(bs)
        || !block::graph::node_parents(bs).is_empty()
}

/// Closes `bs`, then every child nothing else holds (bdrv_close then the children's unref).
pub(super) fn close_unreferenced(
    bs: Rc<BlockDriverState>,
) -> block::coroutine::LocalBoxFuture<'static, block::Result<()>> {
    Box::pin(async move {
        bs.close().await?;
        let children = bs.children();
        drop(bs);
        for child in children {
            let child = child.bs;
            if !in_use(&child) && !drives::is_monitor_node(&child) {
                close_unreferenced(child).await?;
            }
        }
        Ok(())
    })
}

/// `blockdev-del node-name`: closes a node blockdev-add opened, if nothing uses it.
pub async fn blockdev_del(mut args: Args) -> CmdResult {
    let name = args.str("node-name")?;
    args.finish()?;
    let bs = block::graph::find_node(&name)
        .ok_or_else(|| QmpError::generic(format!("Failed to find node with node-name='{name}'")))?;
    // A device's backend comes first (bdrv_has_blk).
    if drives::backend_of(&bs).is_some() {
        return Err(QmpError::generic(format!("Node {name} is in use")));
    }
    if !drives::is_monitor_node(&bs) {
        return Err(QmpError::generic(format!(
            "Node {name} is not owned by the monitor"
        )));
    }
    // The blocker a backing link puts on its node (bdrv_set_backing_hd's backing_blocker),
    // then a job's, as bdrv_op_is_blocked finds them in QEMU.
    if let Some((overlay, _)) = block::graph::node_parents(&bs)
        .into_iter()
        .find(|(p, role)| role == "backing" && !p.drv().is_filter())
    {
        return Err(QmpError::generic(format!(
            "Node '{name}' is busy: node is used as backing hd of '{}'",
            overlay.node_name()
        )));
    }
    block::graph::blockers::check_not_busy(&bs)?;
    if in_use(&bs) {
        return Err(QmpError::generic(format!("Block device {name} is in use")));
    }
    drives::remove_monitor_node(&bs);
    close_unreferenced(bs).await?;
    Ok(json!({}))
}

/// `block_resize device|node-name size`: grows or shrinks the image (blk_truncate).
pub async fn block_resize(mut args: Args) -> CmdResult {
    let device = args.opt_str("device")?;
    let node_name = args.opt_str("node-name")?;
    let size = args.int("size")?;
    args.finish()?;
    let bs = lookup_bs(device.as_deref(), node_name.as_deref())?;
    if size < 0 {
        return Err(QmpError::generic("Parameter 'size' expects a >0 size"));
    }
    // The resize needs RESIZE on the node and, through filters, the node below: a job
    // that does not share it refuses (the device's BlockBackend permission in QEMU).
    // A node a job works on refuses it too (bdrv_op_is_blocked with BLOCK_OP_TYPE_RESIZE).
    let mut claims = Vec::new();
    let mut node = Some(bs.clone());
    while let Some(n) = node {
        block::graph::blockers::check_not_busy(&n)?;
        claims.push(permissions::claim(
            &n,
            "an unnamed block device",
            "root",
            Perm::RESIZE,
            Perm::all(),
        )?);
        node = n.drv().is_filter().then(|| n.filtered()).flatten();
    }
    let blk = BlockBackend::new(bs);
    blk.co_truncate(size as u64, false, PreallocMode::Off)
        .await?;
    drop(claims);
    Ok(json!({}))
}

/// Puts `overlay` on top of `base`: `base` becomes its backing child and every parent of
/// `base` (drives, other nodes) now points at `overlay` (bdrv_append).
async fn bdrv_append(overlay: &Rc<BlockDriverState>, base: &Rc<BlockDriverState>) {
    let parents = block::graph::node_parents(base);
    overlay.attach_child("backing", base.clone());
    for (parent, role) in parents {
        if !Rc::ptr_eq(&parent, overlay) {
            parent.attach_child(&role, overlay.clone());
        }
    }
    for (_, blk) in drives::named_backends()
        .into_iter()
        .chain(drives::device_backends())
    {
        if Rc::ptr_eq(&blk.bs(), base) {
            blk.replace_root(overlay.clone()).await;
        }
    }
}

/// `blockdev-snapshot-sync`: creates (or, mode=existing, opens) an overlay image over the
/// node and makes it the active layer.
pub async fn blockdev_snapshot_sync(mut args: Args) -> CmdResult {
    let device = args.opt_str("device")?;
    let node_name = args.opt_str("node-name")?;
    let file = args.str("snapshot-file")?;
    let new_node = args.opt_str("snapshot-node-name")?;
    let format = args.opt_str("format")?.unwrap_or_else(|| "qcow2".into());
    let mode = args.opt_str("mode")?;
    args.finish()?;
    let base = lookup_bs(device.as_deref(), node_name.as_deref())?;
    if let Some(name) = &new_node {
        block::graph::check_node_name_free(name)?;
    }
    match mode.as_deref() {
        Some("existing") => {}
        None | Some("absolute-paths") => {
            let req = ImgCreate {
                filename: file.clone(),
                fmt: format.clone(),
                backing: Some(base.filename()),
                backing_fmt: Some(base.format_name().to_string()),
                options: None,
                size: Some(base.getlength()),
                // The base is open here, and locked: it is not opened again to check it.
                unsafe_backing: true,
                quiet: false,
            };
            img_create(&req).await.map_err(QmpError::generic)?;
            crate::tools::qemu_io::output::flush();
        }
        Some(other) => {
            return Err(QmpError::generic(format!(
                "Parameter 'mode' does not accept value '{other}'"
            )))
        }
    }
    let mut options = Options::new();
    options.set("driver", format);
    if let Some(name) = new_node {
        options.set("node-name", name);
    }
    let flags = OpenFlags {
        no_backing: true,
        read_only: false,
        ..base.open_flags()
    };
    let overlay = block::bdrv_open(Some(&file), options, flags).await?;
    bdrv_append(&overlay, &base).await;
    // Over a node nothing else held (a -blockdev root), the monitor keeps the overlay.
    if !in_use(&overlay) {
        drives::add_monitor_node(overlay);
    }
    Ok(json!({}))
}

/// `blockdev-snapshot node overlay`: puts an overlay opened without a backing file (by
/// blockdev-add) on top of `node`.
pub async fn blockdev_snapshot(mut args: Args) -> CmdResult {
    let node = args.str("node")?;
    let overlay_name = args.str("overlay")?;
    args.finish()?;
    let base = find_node(&node)?;
    let overlay = find_node(&overlay_name)?;
    if in_use(&overlay) {
        return Err(QmpError::generic("The overlay is already in use"));
    }
    if overlay.backing().is_some() {
        return Err(QmpError::generic("The overlay already has a backing image"));
    }
    if overlay.is_read_only() {
        return Err(QmpError::generic(format!(
            "The overlay '{overlay_name}' is not writable"
        )));
    }
    bdrv_append(&overlay, &base).await;
    Ok(json!({}))
}
