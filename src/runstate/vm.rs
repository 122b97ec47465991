//! The VM's run state and pausing the vCPU: `stop`, `cont`, and the stop an I/O error asks
//! for (`werror=stop`), with the handlers devices register to hear of a resume.
//!
//! QEMU's system/runstate.c (RunState, runstate_set, qemu_add_vm_change_state_handler,
//! vm_state_notify) and system/cpus.c (vm_stop, vm_start, pause_all_vcpus). The state is
//! shared by the vCPU thread and the main loop; a pause is a request the vCPU honours at the
//! head of its run loop, parking on a condition variable until the resume. A vCPU inside
//! KVM_RUN is kicked out of it (SIG_KICK, as for a stop) until it has parked, by a short-lived
//! kicker thread, so the caller (often a completion on the main loop) never blocks on the
//! vCPU, which may itself be waiting for a device lock that caller holds. The events (STOP,
//! RESUME) are the monitor's to send: this module knows no monitor.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::bus::lock;

/// QEMU's RunState values rqemu reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Started with `-S`, never run yet.
    Prelaunch,
    /// Running.
    Running,
    /// Stopped by `stop`.
    Paused,
    /// Stopped by a request that failed under a `stop` error policy.
    IoError,
}

impl RunState {
    /// QEMU's name (query-status).
    pub fn name(self) -> &'static str {
        match self {
            RunState::Prelaunch => "prelaunch",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::IoError => "io-error",
        }
    }
}

/// The run state and the vCPU's side of a pause.
struct Vm {
    state: RunState,
    /// The vCPU is waiting in [`vcpu_wait_while_paused`].
    parked: bool,
}

static VM: (Mutex<Vm>, Condvar) = (
    Mutex::new(Vm {
        state: RunState::Running,
        parked: false,
    }),
    Condvar::new(),
);

/// Sets the initial state (`-S`: prelaunch, the vCPU waits for `cont`).
pub fn init(start_paused: bool) {
    lock(&VM.0).state = if start_paused {
        RunState::Prelaunch
    } else {
        RunState::Running
    };
}

/// The current run state.
pub fn state() -> RunState {
    lock(&VM.0).state
}

/// Stops a running VM in state `to` (vm_stop): returns whether it was running, in which
/// case the caller announces STOP. The vCPU pauses soon after; [`wait_paused`] waits for it.
pub fn vm_stop(to: RunState) -> bool {
    let mut vm = lock(&VM.0);
    if vm.state != RunState::Running {
        return false;
    }
    vm.state = to;
    drop(vm);
    block::trace!(
        runstate_set,
        "current_state {} new_state {}",
        "running",
        to.name()
    );
    spawn_kicker();
    true
}

/// Kicks the vCPU out of KVM_RUN until it has parked or the pause is over.
fn spawn_kicker() {
    let kick = || loop {
        {
            let vm = lock(&VM.0);
            if vm.parked || vm.state == RunState::Running || super::stop_requested() {
                return;
            }
        }
        if !super::kick_vcpu() {
            return; // no vCPU (qtest, or between two boots): nothing to park
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    // Without a thread the pause still happens at the vCPU's next exit.
    let _ = std::thread::Builder::new()
        .name("vcpu-kick".into())
        .spawn(kick);
}

/// Resumes a stopped VM (vm_start): returns whether it was stopped, in which case the caller
/// announces RESUME. The change-state handlers run from a bottom half of the calling loop.
pub fn vm_start() -> bool {
    let mut vm = lock(&VM.0);
    let from = vm.state;
    if from == RunState::Running {
        return false;
    }
    vm.state = RunState::Running;
    drop(vm);
    VM.1.notify_all();
    block::trace!(
        runstate_set,
        "current_state {} new_state running",
        from.name()
    );
    block::AioContext::current().schedule_bh(|| vm_state_notify(true));
    true
}

/// Waits (on the main loop, without blocking it) until the vCPU has parked, if one runs
/// (pause_all_vcpus' wait): after `stop` returns, the guest runs no more instructions.
pub async fn wait_paused() {
    loop {
        {
            let vm = lock(&VM.0);
            if vm.parked || vm.state == RunState::Running || !super::vcpu_running() {
                return;
            }
        }
        block::aio::co_sleep(Duration::from_millis(1)).await;
    }
}

/// On the vCPU thread, at the head of its run loop: parks while the VM is stopped, until
/// `cont` or the end of the run.
pub fn vcpu_wait_while_paused() {
    let mut vm = lock(&VM.0);
    while vm.state != RunState::Running && !super::stop_requested() {
        vm.parked = true;
        vm = VM.1.wait(vm).unwrap_or_else(|p| p.into_inner());
    }
    vm.parked = false;
}

/// Wakes a parked vCPU so that it sees the end of the run.
pub(super) fn wake_parked() {
    let _vm = lock(&VM.0);
    VM.1.notify_all();
}

type Handler = Rc<dyn Fn(bool)>;

thread_local! {
    /// The change-state handlers of this loop, by id (vm_change_state_head).
    static HANDLERS: RefCell<Vec<(u64, Handler)>> = const { RefCell::new(Vec::new()) };
    static NEXT_ID: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A registered change-state handler; dropping it removes the handler
/// (qemu_del_vm_change_state_handler).
pub struct VmChangeStateEntry(u64);

impl Drop for VmChangeStateEntry {
    fn drop(&mut self) {
        HANDLERS.with(|h| h.borrow_mut().retain(|(id, _)| *id != self.0));
    }
}

/// Calls `handler(running)` on this loop whenever the VM resumes
/// (qemu_add_vm_change_state_handler): devices restart the requests an error stopped.
pub fn add_vm_change_state_handler(handler: impl Fn(bool) + 'static) -> VmChangeStateEntry {
    let id = NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    });
    HANDLERS.with(|h| h.borrow_mut().push((id, Rc::new(handler))));
    VmChangeStateEntry(id)
}

/// Runs every handler (vm_state_notify); they may add or remove handlers meanwhile.
fn vm_state_notify(running: bool) {
    let handlers: Vec<Handler> =
        HANDLERS.with(|h| h.borrow().iter().map(|(_, f)| f.clone()).collect());
    for handler in handlers {
        handler(running);
    }
}
