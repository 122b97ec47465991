//! The drives of the main loop thread: BlockBackends by drive id.
//!
//! A BlockBackend is `Rc` and belongs to the AioContext thread that opened it (QEMU keeps
//! every BlockBackend in the main AioContext too). Devices live on vCPU threads and cannot
//! hold one, so they name a drive by id and the bottom half that runs their request looks the
//! backend up here. QEMU finds a backend by name with blk_by_name; this is that table, one per
//! loop thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use block::BlockBackend;

/// Names a drive across threads (QEMU's `-drive id=`).
pub type DriveId = u32;

thread_local! {
    static BACKENDS: RefCell<HashMap<DriveId, Rc<BlockBackend>>> = RefCell::new(HashMap::new());
}

/// Makes `blk` reachable as `id` from bottom halves of this thread; replaces an earlier one.
pub fn register(id: DriveId, blk: Rc<BlockBackend>) {
    BACKENDS.with(|b| b.borrow_mut().insert(id, blk));
}

/// Removes a drive, returning its backend (to close it).
pub fn unregister(id: DriveId) -> Option<Rc<BlockBackend>> {
    BACKENDS.with(|b| b.borrow_mut().remove(&id))
}

/// The backend registered as `id` on this thread.
pub fn lookup(id: DriveId) -> Option<Rc<BlockBackend>> {
    BACKENDS.with(|b| b.borrow().get(&id).cloned())
}
