//! What a device does after applying its error policy to a failed request: the
//! BLOCK_IO_ERROR event for every action, and for `stop` the I/O status and the VM stop
//! (runstate io-error, with the STOP event after BLOCK_IO_ERROR).
//!
//! QEMU's blk_error_action and send_qmp_error_event (block/block-backend.c). The policy
//! itself (blk_get_error_action) is the BlockBackend's; the device keeps a stopped request
//! and retries it when the VM resumes (its change-state handler, [`crate::runstate::vm`]).

use block::error_action::{ErrorAction, IoOperation};
use block::{trace, BlockBackend};
use serde_json::{json, Map, Value};

use crate::monitor::events;
use crate::runstate::vm::{self, RunState};

/// Announces `action` for a request that failed with `errno` and, for `stop`, records the
/// I/O status and stops the VM (blk_error_action). Runs on the main loop.
pub fn blk_error_action(blk: &BlockBackend, action: ErrorAction, is_read: bool, errno: i32) {
    let operation = IoOperation::of(is_read);
    trace!(
        blk_error_action,
        "blk {:p} action {} operation {} error {}",
        blk as *const BlockBackend,
        action.name(),
        operation.name(),
        errno
    );
    if action == ErrorAction::Stop {
        // The status first, so that a query after the event sees it.
        blk.iostatus_set_err(errno);
    }
    events::emit(
        "BLOCK_IO_ERROR",
        Some(event_data(blk, action, operation, errno)),
    );
    if action == ErrorAction::Stop && vm::vm_stop(RunState::IoError) {
        events::emit("STOP", None);
    }
}

/// BLOCK_IO_ERROR's data (qapi_event_send_block_io_error).
fn event_data(blk: &BlockBackend, action: ErrorAction, op: IoOperation, errno: i32) -> Value {
    let mut m = Map::new();
    m.insert("device".into(), json!(blk.name()));
    m.insert("node-name".into(), json!(blk.bs().node_name()));
    m.insert("operation".into(), json!(op.name()));
    m.insert("action".into(), json!(action.name()));
    if blk.iostatus().is_some() {
        m.insert("nospace".into(), json!(errno == libc::ENOSPC));
    }
    m.insert("reason".into(), json!(block::error::strerror(errno)));
    Value::Object(m)
}
