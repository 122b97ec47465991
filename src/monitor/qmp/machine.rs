//! Machine commands: capabilities, version, the command list, the run state (stop, cont,
//! system_reset, quit) (QEMU's monitor/qmp-cmds.c, system/runstate.c, qapi/run-state.json).
//!
//! The run state itself and the pausing of the vCPU are in [`crate::runstate::vm`]; this
//! module answers the commands and sends the events. Under the qtest accelerator no vCPU
//! runs, so the run state is only what the monitor reports and its events.

use std::sync::Mutex;

use serde_json::{json, Value};

use super::{Args, CmdResult, QmpError};
use crate::bus::lock;
use crate::monitor::events;
use crate::runstate::vm::{self, RunState};
use crate::vm_config::Accel;

struct Machine {
    accel: Accel,
}

static MACHINE: Mutex<Machine> = Mutex::new(Machine { accel: Accel::Kvm });

/// Records the accelerator and the initial state (`-S`) before any monitor starts.
pub fn init(accel: Accel, start_paused: bool) {
    lock(&MACHINE).accel = accel;
    vm::init(start_paused);
}

/// The version rqemu answers as: the QEMU release whose behaviour it follows.
pub fn version_info() -> Value {
    json!({"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": concat!("rqemu-", env!("CARGO_PKG_VERSION"))})
}

/// `qmp_capabilities [enable]`: no optional capability (oob) is offered.
pub fn qmp_capabilities(mut args: Args) -> Result<(), QmpError> {
    if let Some(enable) = args.opt_value("enable") {
        let Value::Array(caps) = enable else {
            return Err(QmpError::generic(
                "Invalid parameter type for 'enable', expected: array",
            ));
        };
        if let Some(cap) = caps.first() {
            let name = cap.as_str().unwrap_or_default();
            return Err(QmpError::generic(format!(
                "Capability '{name}' not available"
            )));
        }
    }
    args.finish()
}

/// `query-version`.
pub async fn query_version(args: Args) -> CmdResult {
    args.finish()?;
    Ok(version_info())
}

/// `query-commands`: every command's name.
pub async fn query_commands(args: Args) -> CmdResult {
    args.finish()?;
    Ok(super::command_names().map(|n| json!({"name": n})).collect())
}

/// `query-status`.
pub async fn query_status(args: Args) -> CmdResult {
    args.finish()?;
    let state = vm::state();
    Ok(json!({"status": state.name(), "running": state == RunState::Running}))
}

/// `stop` (vm_stop): the STOP event when it was running; returns once the vCPU is paused.
pub async fn stop(args: Args) -> CmdResult {
    args.finish()?;
    if vm::vm_stop(RunState::Paused) {
        events::emit("STOP", None);
    }
    vm::wait_paused().await;
    Ok(json!({}))
}

/// `cont` (qmp_cont): clears every drive's I/O status, then resumes (the RESUME event), and
/// the devices retry the requests an error stopped.
pub async fn cont(args: Args) -> CmdResult {
    args.finish()?;
    for blk in block::BlockBackend::all() {
        blk.iostatus_reset();
    }
    if vm::vm_start() {
        events::emit("RESUME", None);
    }
    Ok(json!({}))
}

/// `system_reset`: the RESET event; under qtest there is no guest state to reset.
pub async fn system_reset(args: Args) -> CmdResult {
    args.finish()?;
    if lock(&MACHINE).accel != Accel::Qtest {
        return Err(QmpError::generic(
            "system_reset of a KVM guest is not supported by rqemu yet",
        ));
    }
    events::emit(
        "RESET",
        Some(json!({"guest": false, "reason": "host-qmp-system-reset"})),
    );
    Ok(json!({}))
}

/// `quit`: raises SHUTDOWN (before the reply, as QEMU's shutdown request does) and ends
/// the run once the reply is written.
pub async fn quit(args: Args) -> CmdResult {
    args.finish()?;
    events::emit(
        "SHUTDOWN",
        Some(json!({"guest": false, "reason": "host-qmp-quit"})),
    );
    block::AioContext::current().schedule_bh(crate::runstate::request_stop);
    Ok(json!({}))
}
