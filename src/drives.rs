//! The machine's drives: the `-drive`/`-blockdev` options, and the BlockBackends opened from
//! them, found by id.
//!
//! QEMU's blockdev.c (drive_new, the BlockBackend list behind `blk_by_name`). The registry
//! is local to the main-loop thread, because a BlockBackend and its graph belong to that
//! thread's AioContext. A device model on the vCPU thread names its drive by id and reaches
//! it by scheduling a bottom half on the loop (`AioContextHandle::schedule_bh`) that calls
//! [`lookup`]; the completion comes back the same way, as a bottom half that takes the
//! device lock.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use block::BlockBackend;
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
}

thread_local! {
    static DRIVES: RefCell<BTreeMap<String, Rc<BlockBackend>>> = const { RefCell::new(BTreeMap::new()) };
}

/// Opens one drive (QEMU's drive_new / blockdev-add).
pub async fn open(cfg: &DriveOptions) -> Result<Rc<BlockBackend>, String> {
    BlockBackend::open(cfg.filename.as_deref(), cfg.options.clone(), cfg.flags)
        .await
        .map_err(|e| format!("{}: {e}", cfg.origin))
}

/// Opens every drive in order and registers it under its id; stops at the first error.
pub async fn open_all(cfgs: &[DriveOptions]) -> Result<(), String> {
    for cfg in cfgs {
        let blk = open(cfg).await?;
        DRIVES.with(|d| d.borrow_mut().insert(cfg.id.clone(), blk));
    }
    Ok(())
}

/// The drive registered as `id`, on the loop thread (QEMU's blk_by_name).
pub fn lookup(id: &str) -> Option<Rc<BlockBackend>> {
    DRIVES.with(|d| d.borrow().get(id).cloned())
}

/// Drains and closes every drive, reporting failures (QEMU's bdrv_close_all at exit).
pub async fn close_all() {
    let all = DRIVES.with(|d| std::mem::take(&mut *d.borrow_mut()));
    for (id, blk) in all {
        if let Err(e) = blk.close().await {
            eprintln!("rqemu: closing drive '{id}': {e}");
        }
    }
}
