//! What a device does after applying its error policy to a failed request: the
//! BLOCK_IO_ERROR event for every action (at most one a second per device, as QEMU 10
//! rate-limits it, so one may come after the STOP it caused), and for `stop` the I/O
//! status and the VM stop (runstate io-error).
//!
//! QEMU's blk_error_action and send_qmp_error_event (block/block-backend.c). The policy
//! itself (blk_get_error_action) is the BlockBackend's; the device keeps a stopped request
//! and retries it when the VM resumes (its change-state handler, [`crate::runstate::vm`]).

use std::sync::OnceLock;

use block::error_action::{ErrorAction, IoOperation};
use block::{trace, BlockBackend};
use serde_json::{json, Map, Value};

use crate::runstate::vm::{self, RunState};

/// How the events go out: the monitor's senders, which it installs when it starts (the
/// devices below it do not import it). Without a monitor nobody hears them.
pub struct EventSender {
    /// Sends an event at once (qapi_event_send_stop).
    pub emit: fn(&str, Option<Value>),
    /// Sends an event under its rate limit, per key (BLOCK_IO_ERROR).
    pub emit_rate_limited: fn(&str, &str, Value),
}

static EVENTS: OnceLock<EventSender> = OnceLock::new();

/// Installs the monitor's event senders (once per process).
pub fn set_event_sender(sender: EventSender) {
    let _ = EVENTS.set(sender);
}

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
    // Rate-limited per device (QEMU keys it by the device's QOM path; rqemu by the drive
    // name, or the node of an anonymous backend).
    let key = format!("{}/{}", blk.name(), blk.bs().node_name());
    let data = event_data(blk, action, operation, errno);
    let events = EVENTS.get();
    if let Some(events) = events {
        (events.emit_rate_limited)("BLOCK_IO_ERROR", &key, data);
    }
    if action == ErrorAction::Stop && vm::vm_stop(RunState::IoError) {
        if let Some(events) = events {
            (events.emit)("STOP", None);
        }
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
