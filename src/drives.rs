//! The machine's drives: the `-drive`/`-blockdev` options, the BlockBackends opened from
//! `-drive` (found by id), and the nodes the monitor owns (`-blockdev`, blockdev-add).
//!
//! QEMU's blockdev.c (drive_new, the BlockBackend list behind `blk_by_name`, and
//! `monitor_bdrv_states`, the nodes blockdev-add created and blockdev-del may delete). A
//! device given a node name rather than a drive id gets a backend of its own over that
//! node (QEMU's anonymous BlockBackend of a qdev drive property). The registry is local to
//! the main-loop thread, because a BlockBackend and its graph belong to that
//! thread's AioContext. A device model on the vCPU thread names its drive by id and reaches
//! it by scheduling a bottom half on the loop (`AioContextHandle::schedule_bh`) that calls
//! [`lookup`]; the completion comes back the same way, as a bottom half that takes the
//! device lock.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use block::error_action::OnError;
use block::{BlockBackend, BlockDriverState};
use block::{OpenFlags, Options};

/// Which device a `-drive` is meant for (`if=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveInterface {
    /// An IDE disk on the PIIX3 controller.
    Ide,
    /// A virtio-blk-pci device.
    Virtio,
    /// No device: the drive is only a named backend for `-device ...,drive=ID`.
    None,
}

/// One `-drive` or `-blockdev`: what to open, with which options (QEMU's drive QemuOpts).
#[derive(Clone, Debug)]
pub struct DriveOptions {
    /// The option text as given, for error messages (`-drive file=x: ...`).
    pub origin: String,
    /// The drive's id (`id=` / `node-name=`), unique per machine.
    pub id: String,
    /// The interface it attaches to.
    pub interface: DriveInterface,
    /// The filename, when given with `file=` as a plain string.
    pub filename: Option<String>,
    /// The remaining block options for `bdrv_open` (driver=, cache.*, aio=, file.*...).
    pub options: Options,
    /// The flags derived from `readonly=`, `snapshot=`, `cache=`, `aio=`.
    pub flags: OpenFlags,
    /// A `-blockdev`: a node owned by the monitor, no BlockBackend.
    pub blockdev: bool,
    /// A CD-ROM drive without a disc: nothing is opened (QEMU's empty BlockBackend).
    pub empty: bool,
    /// The read and write error policies (`rerror=`, `werror=` of the drive or of the device
    /// using it); `Auto` keeps the BlockBackend's defaults (report, enospc).
    pub on_error: (OnError, OnError),
}

thread_local! {
    static DRIVES: RefCell<BTreeMap<String, Rc<BlockBackend>>> = const { RefCell::new(BTreeMap::new()) };
    static DEVICE_BACKENDS: RefCell<BTreeMap<String, Rc<BlockBackend>>> = const { RefCell::new(BTreeMap::new()) };
    static MONITOR_NODES: RefCell<Vec<Rc<BlockDriverState>>> = const { RefCell::new(Vec::new()) };
    static EMPTY_DRIVES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// The qdev id of the device holding each drive or node, by its name.
    static DEVICE_IDS: RefCell<BTreeMap<String, String>> = const { RefCell::new(BTreeMap::new()) };
    /// The error policies of `-blockdev` nodes a device gives (`werror=` on the device),
    /// applied to the device's backend when it is created.
    static NODE_ON_ERROR: RefCell<BTreeMap<String, (OnError, OnError)>> = const { RefCell::new(BTreeMap::new()) };
}

/// Attaches the drive or node `drive` to the device `qdev_id` (a qdev drive property):
/// the device holds its backend from now on, in the AioContext of `iothread` if it runs
/// in one (blk_attach_dev, and the device's blk_set_aio_context). `None`: no such drive.
pub fn attach_device(
    qdev_id: &str,
    drive: &str,
    iothread: Option<&str>,
) -> Option<Result<Rc<BlockBackend>, String>> {
    let blk = lookup(drive)?;
    if let Some(ctx) = iothread {
        if let Err(e) = block::graph::aio_context::change(&blk.bs(), ctx) {
            return Some(Err(e.to_string()));
        }
    }
    blk.attach_dev();
    DEVICE_IDS.with(|d| {
        d.borrow_mut()
            .insert(drive.to_string(), qdev_id.to_string())
    });
    Some(Ok(blk))
}

/// Takes the device `qdev_id` off the drive or node it holds (the release of its drive
/// property); returns that drive's or node's name.
pub fn detach_device(qdev_id: &str) -> Option<String> {
    DEVICE_IDS.with(|d| {
        let mut ids = d.borrow_mut();
        let name = ids
            .iter()
            .find(|(_, id)| id.as_str() == qdev_id)
            .map(|(name, _)| name.clone())?;
        ids.remove(&name);
        Some(name)
    })
}

/// Drops the backend a device held over `name` as the device goes: a `-drive` goes with
/// its device (blockdev_auto_del), a node keeps to the monitor but loses the device's
/// backend. Returns the `-drive` backend that went.
pub fn auto_del(name: &str) -> Option<Rc<BlockBackend>> {
    DEVICE_BACKENDS.with(|d| d.borrow_mut().remove(name));
    DRIVES.with(|d| d.borrow_mut().remove(name))
}

/// The qdev id of the device holding the drive or node `name`, if a device with an id does.
pub fn device_id(name: &str) -> Option<String> {
    DEVICE_IDS
        .with(|d| d.borrow().get(name).cloned())
        .filter(|id| !id.is_empty())
}

/// Opens one drive (QEMU's drive_new / blockdev-add).
pub async fn open(cfg: &DriveOptions) -> Result<Rc<BlockBackend>, String> {
    BlockBackend::open(cfg.filename.as_deref(), cfg.options.clone(), cfg.flags)
        .await
        .map_err(|e| format!("{}: {e}", cfg.origin))
}

/// Opens every drive in order and registers it under its id (a `-blockdev` as a monitor
/// node); stops at the first error.
pub async fn open_all(cfgs: &[DriveOptions]) -> Result<(), String> {
    for cfg in cfgs {
        if cfg.empty {
            EMPTY_DRIVES.with(|d| d.borrow_mut().push(cfg.id.clone()));
        } else if cfg.blockdev {
            let mut options = cfg.options.clone();
            options.set("node-name", cfg.id.clone());
            let bs = block::bdrv_open(None, options, cfg.flags)
                .await
                .map_err(|e| format!("{}: {e}", cfg.origin))?;
            add_monitor_node(bs);
            NODE_ON_ERROR.with(|m| m.borrow_mut().insert(cfg.id.clone(), cfg.on_error));
        } else {
            let blk = open(cfg).await?;
            blk.set_name(&cfg.id);
            blk.set_on_error(cfg.on_error.0, cfg.on_error.1);
            DRIVES.with(|d| d.borrow_mut().insert(cfg.id.clone(), blk));
        }
    }
    Ok(())
}

/// The drive registered as `id`, or the device backend over the node named `id`, on the
/// loop thread (QEMU's blk_by_name, and the backend a qdev drive property creates).
pub fn lookup(id: &str) -> Option<Rc<BlockBackend>> {
    if let Some(blk) = DRIVES.with(|d| d.borrow().get(id).cloned()) {
        return Some(blk);
    }
    if let Some(blk) = DEVICE_BACKENDS.with(|d| d.borrow().get(id).cloned()) {
        return Some(blk);
    }
    let bs = block::graph::find_node(id)?;
    let blk = BlockBackend::new(bs);
    if let Some((rerror, werror)) = NODE_ON_ERROR.with(|m| m.borrow().get(id).copied()) {
        blk.set_on_error(rerror, werror);
    }
    DEVICE_BACKENDS.with(|d| d.borrow_mut().insert(id.to_string(), blk.clone()));
    Some(blk)
}

/// Every drive by id (the `-drive` backends; blk_next).
pub fn named_backends() -> Vec<(String, Rc<BlockBackend>)> {
    DRIVES.with(|d| {
        d.borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    })
}

/// The drives without a medium, by id (an empty CD-ROM drive).
pub fn empty_drives() -> Vec<String> {
    EMPTY_DRIVES.with(|d| d.borrow().clone())
}

/// The backends devices hold over nodes, by node name.
pub fn device_backends() -> Vec<(String, Rc<BlockBackend>)> {
    DEVICE_BACKENDS.with(|d| {
        d.borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    })
}

/// Hands a node opened by the monitor to the monitor's list (blockdev-add).
pub fn add_monitor_node(bs: Rc<BlockDriverState>) {
    MONITOR_NODES.with(|m| m.borrow_mut().push(bs));
}

/// Takes a node off the monitor's list; false if the monitor did not own it.
pub fn remove_monitor_node(bs: &Rc<BlockDriverState>) -> bool {
    MONITOR_NODES.with(|m| {
        let mut nodes = m.borrow_mut();
        let before = nodes.len();
        nodes.retain(|n| !Rc::ptr_eq(n, bs));
        nodes.len() != before
    })
}

/// Whether the monitor owns `bs` (it was added with blockdev-add or -blockdev).
pub fn is_monitor_node(bs: &Rc<BlockDriverState>) -> bool {
    MONITOR_NODES.with(|m| m.borrow().iter().any(|n| Rc::ptr_eq(n, bs)))
}

/// Whether a drive or device backend has `bs` as its root.
pub fn backend_of(bs: &Rc<BlockDriverState>) -> Option<Rc<BlockBackend>> {
    named_backends()
        .into_iter()
        .chain(device_backends())
        .map(|(_, blk)| blk)
        .find(|blk| Rc::ptr_eq(&blk.bs(), bs))
}

/// Drains every node and cancels the jobs, drains every backend, then closes every node
/// once, parents before their children (QEMU's bdrv_close_all at exit), reporting failures.
pub async fn close_all() {
    // As QEMU's qemu_cleanup: drain everything (which lifts throttling, so that requests
    // held back by it finish), then cancel the jobs still running, then close.
    let mut sections = Vec::new();
    for bs in block::graph::all_nodes() {
        sections.push(block::graph::drain::drained_begin(&bs).await);
    }
    block::jobs::JobManager::current().cancel_sync_all().await;
    drop(sections);
    let backends = DRIVES.with(|d| std::mem::take(&mut *d.borrow_mut()));
    let devices = DEVICE_BACKENDS.with(|d| std::mem::take(&mut *d.borrow_mut()));
    let mut roots = Vec::new();
    for (_, blk) in backends.into_iter().chain(devices) {
        blk.drain().await;
        roots.push(blk.bs());
    }
    roots.extend(MONITOR_NODES.with(|m| std::mem::take(&mut *m.borrow_mut())));
    for bs in top_down(&roots) {
        if let Err(e) = bs.close().await {
            eprintln!("rqemu: closing node '{}': {e}", bs.node_name());
        }
    }
}

/// The nodes below `roots`, each once, every parent before its children.
fn top_down(roots: &[Rc<BlockDriverState>]) -> Vec<Rc<BlockDriverState>> {
    let mut order: Vec<Rc<BlockDriverState>> = Vec::new();
    let mut stack: Vec<Rc<BlockDriverState>> = roots.iter().rev().cloned().collect();
    while let Some(bs) = stack.pop() {
        // A node reached again through a later parent moves after that parent.
        order.retain(|n| !Rc::ptr_eq(n, &bs));
        stack.extend(bs.children().into_iter().rev().map(|c| c.bs));
        order.push(bs);
    }
    order
}
