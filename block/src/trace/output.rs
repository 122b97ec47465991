//! Where trace lines go and what they carry: QEMU's "log" trace backend (trace/control.c's
//! `-trace file=` and the `PID@SECONDS.MICROS:name args` line of its log backend).
//!
//! Lines go to stderr unless `-trace file=PATH` names a file. `-trace thread=on` adds the
//! emitting thread to each line (`PID/vcpu0#TID@...`): a request crosses from the vCPU thread
//! to the main loop and to a worker and back, and only the thread tag makes the hops visible.
//! QEMU has no such option; its simple backend records the thread in binary traces instead.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static FILE: Mutex<Option<File>> = Mutex::new(None);
static THREAD_TAG: AtomicBool = AtomicBool::new(false);

/// Sends the lines of every later event to `path` (created or truncated), as `file=` does.
pub fn set_file(path: &str) -> Result<(), String> {
    let file =
        File::create(path).map_err(|e| format!("could not open trace file '{path}': {e}"))?;
    *FILE.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
    Ok(())
}

/// Turns the thread tag of each line on or off.
pub fn set_thread_tag(on: bool) {
    THREAD_TAG.store(on, Ordering::Relaxed);
}

/// `vcpu0#4242`: the thread's name (Rust's main thread is "main") and its kernel thread id,
/// which tells the worker threads, all named "worker", apart.
fn thread_tag() -> String {
    let current = std::thread::current();
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    format!("/{}#{tid}", current.name().unwrap_or("thread"))
}

/// Writes one event line in the format of QEMU's log backend.
pub(super) fn write_line(name: &str, args: std::fmt::Arguments<'_>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let tag = if THREAD_TAG.load(Ordering::Relaxed) {
        thread_tag()
    } else {
        String::new()
    };
    let line = format!(
        "{}{tag}@{}.{:06}:{name} {args}\n",
        std::process::id(),
        now.as_secs(),
        now.subsec_micros(),
    );
    // One write per line, under the lock, so lines of concurrent threads never interleave.
    let mut file = FILE.lock().unwrap_or_else(|p| p.into_inner());
    let written = match file.as_mut() {
        Some(f) => f.write_all(line.as_bytes()),
        None => std::io::stderr().write_all(line.as_bytes()),
    };
    // A trace that cannot be written must not take the emulator down; stderr says so once.
    if written.is_err() && file.take().is_some() {
        eprintln!("trace: could not write the trace file, tracing to stderr from now on");
    }
}
