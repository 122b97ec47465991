//! Machine commands: capabilities, version, the command list, the run state (stop, cont,
//! system_reset, quit) (QEMU's monitor/qmp-cmds.c, system/runstate.c, qapi/run-state.json).
//!
//! Under the qtest accelerator no vCPU runs, so the run state is only what the monitor
//! reports and its events; under KVM pausing the vCPU is not built yet and says so.

use std::sync::Mutex;

use serde_json::{json, Value};

use super::{Args, CmdResult, QmpError};
use crate::bus::lock;
use crate::monitor::events;
use crate::vm_config::Accel;

/// QEMU's RunState values rqemu reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Started with `-S`, never run yet.
    Prelaunch,
    /// Running.
    Running,
    /// Stopped by `stop`.
    Paused,
}

impl RunState {
    fn name(self) -> &'static str {
        match self {
            RunState::Prelaunch => "prelaunch",
            RunState::Running => "running",
            RunState::Paused => "paused",
        }
    }
}

struct Machine {
    accel: Accel,
    state: RunState,
}

static MACHINE: Mutex<Machine> = Mutex::new(Machine {
    accel: Accel::Kvm,
    state: RunState::Running,
});

/// Records the accelerator and the initial state (`-S`) before any monitor starts.
pub fn init(accel: Accel, start_paused: bool) {
    let mut m = lock(&MACHINE);
    m.accel = accel;
    m.state = if start_paused {
        RunState::Prelaunch
    } else {
        RunState::Running
    };
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
    let state = lock(&MACHINE).state;
    Ok(json!({"status": state.name(), "running": state == RunState::Running}))
}

/// Moves to `to`, with the event a change raises; only the qtest accelerator can pause.
fn change_state(to: RunState, event: &str) -> CmdResult {
    let mut m = lock(&MACHINE);
    if m.accel != Accel::Qtest {
        return Err(QmpError::generic(
            "pausing a KVM guest is not supported by rqemu yet (only with -accel qtest)",
        ));
    }
    let from = m.state;
    m.state = to;
    drop(m);
    if from != to {
        events::emit(event, None);
    }
    Ok(json!({}))
}

/// `stop` (the STOP event when it was running).
pub async fn stop(args: Args) -> CmdResult {
    args.finish()?;
    change_state(RunState::Paused, "STOP")
}

/// `cont` (the RESUME event).
pub async fn cont(args: Args) -> CmdResult {
    args.finish()?;
    change_state(RunState::Running, "RESUME")
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

/// `quit`: replies, then raises SHUTDOWN and ends the run (after the reply is written).
pub async fn quit(args: Args) -> CmdResult {
    args.finish()?;
    block::AioContext::current().schedule_bh(|| {
        events::emit(
            "SHUTDOWN",
            Some(json!({"guest": false, "reason": "host-qmp-quit"})),
        );
        crate::runstate::request_stop();
    });
    Ok(json!({}))
}
