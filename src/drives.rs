//! The machine's drives: BlockBackends opened from `-drive`/`-blockdev`, found by id.
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

use crate::vm_config::DriveConfig;

thread_local! {
    static DRIVES: RefCell<BTreeMap<String, Rc<BlockBackend>>> = const { RefCell::new(BTreeMap::new()) };
}

/// Opens one drive (QEMU's drive_new / blockdev-add).
pub async fn open(cfg: &DriveConfig) -> Result<Rc<BlockBackend>, String> {
    BlockBackend::open(cfg.filename.as_deref(), cfg.options.clone(), cfg.flags)
        .await
        .map_err(|e| format!("{}: {e}", cfg.origin))
}

/// Opens every drive in order and registers it under its id; stops at the first error.
pub async fn open_all(cfgs: &[DriveConfig]) -> Result<(), String> {
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
