//! Ending the run from outside the guest: termination signals and the vCPU kick.
//!
//! QEMU's system/runstate.c (qemu_system_killed, shutdown requests) and the SIG_IPI kick of
//! system/cpus.c. SIGINT, SIGTERM and SIGHUP are blocked in every thread and collected by one
//! thread with `sigwaitinfo`, which prints QEMU's "terminating on signal" line and requests a
//! stop. A vCPU sleeping inside KVM_RUN (a halted guest) only notices when KVM_RUN returns,
//! so the stopper also sends SIGUSR1, whose empty handler makes KVM_RUN fail with EINTR; the
//! loop then sees the request and ends the run cleanly, and the drives are closed.
//! [`vm`] holds the run state and pausing the vCPU (`stop`, `cont`, an I/O error's stop).

pub mod vm;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::bus::lock;

/// The signal that kicks a vCPU out of KVM_RUN (QEMU's SIG_IPI).
const SIG_KICK: libc::c_int = libc::SIGUSR1;
/// The signals that end the run.
const TERMINATION: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

static STOP: AtomicBool = AtomicBool::new(false);
/// Wakes [`wait_for_stop`] (the flag above, under a lock).
static STOPPED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
/// The running vCPU thread, while it may be inside KVM_RUN.
static VCPU_THREAD: Mutex<Option<libc::pthread_t>> = Mutex::new(None);

/// Whether the run should end.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Asks the run to end and kicks the vCPU until it has left KVM_RUN.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
    *lock(&STOPPED.0) = true;
    STOPPED.1.notify_all();
    vm::wake_parked();
    // The vCPU may have been between its check and KVM_RUN: kick again shortly.
    while kick_vcpu() {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends the kick to the vCPU thread; false when none runs.
fn kick_vcpu() -> bool {
    let thread = lock(&VCPU_THREAD);
    let Some(t) = *thread else { return false };
    // SAFETY: `t` is a live thread: it removes itself from VCPU_THREAD (under this lock)
    // before it ends, and SIG_KICK has a handler, so the signal cannot kill.
    unsafe { libc::pthread_kill(t, SIG_KICK) };
    true
}

/// Whether a vCPU thread runs now.
fn vcpu_running() -> bool {
    lock(&VCPU_THREAD).is_some()
}

/// Sleeps until the run is asked to end (a machine without a vCPU waits here).
pub fn wait_for_stop() {
    let mut stopped = lock(&STOPPED.0);
    while !*stopped {
        stopped = STOPPED
            .1
            .wait(stopped)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
}

/// Marks the calling thread as the vCPU thread (to be kicked) until the guard drops.
pub fn enter_vcpu_thread() -> VcpuThreadGuard {
    // SAFETY: pthread_self has no preconditions.
    *lock(&VCPU_THREAD) = Some(unsafe { libc::pthread_self() });
    VcpuThreadGuard
}

/// Unregisters the vCPU thread when dropped.
pub struct VcpuThreadGuard;

impl Drop for VcpuThreadGuard {
    fn drop(&mut self) {
        *lock(&VCPU_THREAD) = None;
    }
}

extern "C" fn ignore_kick(_: libc::c_int) {}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the termination signals in the calling thread (and every thread it starts later),
/// installs the kick handler, and starts the thread that waits for termination signals.
/// Call it before starting any other thread.
pub fn init() -> Result<(), String> {
    let set = signal_set(&TERMINATION);
    // SAFETY: a valid set and a null old-set pointer; affects only the calling thread.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(format!(
            "pthread_sigmask failed: {}",
            block::error::strerror(rc)
        ));
    }
    // SAFETY: the handler is an empty extern "C" function, async-signal-safe; no SA_RESTART,
    // so a kicked KVM_RUN returns EINTR instead of resuming.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(SIG_KICK, &action, std::ptr::null_mut()) != 0 {
            return Err("sigaction(SIGUSR1) failed".to_string());
        }
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || wait_for_termination(set))
        .map(drop)
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}

fn wait_for_termination(set: libc::sigset_t) {
    loop {
        // SAFETY: `info` is written by sigwaitinfo; the set is valid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let signo = unsafe { libc::sigwaitinfo(&set, &mut info) };
        if signo < 0 {
            continue;
        }
        // SAFETY: for signals sent with kill(), si_pid is the sender's pid.
        let pid = unsafe { info.si_pid() };
        eprintln!(
            "rqemu: terminating on signal {signo} from pid {pid} ({})",
            process_name(pid)
        );
        request_stop();
    }
}

/// The command name of `pid`, as QEMU prints it.
fn process_name(pid: libc::pid_t) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "<unknown process>".to_string())
}
