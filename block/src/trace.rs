//! Trace events, switched on by name pattern like QEMU's `-trace PATTERN` (log backend).
//!
//! Every layer calls `trace!(event_name, "fmt", args...)` at its boundaries with the event
//! names QEMU uses (`blk_co_preadv`, `bdrv_co_pwritev`, `thread_pool_submit`...). Events are
//! off by default and cost one relaxed atomic load each; `enable("blk_*")` turns a glob on.
//! Lines go to stderr as QEMU's log backend prints them: `PID@SECONDS.MICROS:name args`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::RwLock;

/// Bumped each time the pattern set changes, so call sites re-evaluate their cached answer.
static GENERATION: AtomicU32 = AtomicU32::new(1);
static PATTERNS: RwLock<Vec<Pattern>> = RwLock::new(Vec::new());

struct Pattern {
    glob: String,
    enable: bool,
}

/// The per-call-site cache: generation in the high bits, enabled flag in bit 0.
#[doc(hidden)]
pub struct CallSite(AtomicU32);

impl CallSite {
    /// A call site that has not looked at the pattern set yet.
    pub const fn new() -> CallSite {
        CallSite(AtomicU32::new(0))
    }

    /// Whether `name` is enabled, caching the answer until the pattern set changes.
    #[inline]
    pub fn enabled(&self, name: &str) -> bool {
        let generation = GENERATION.load(Ordering::Relaxed);
        let cached = self.0.load(Ordering::Relaxed);
        if cached >> 1 == generation {
            return cached & 1 == 1;
        }
        let on = event_enabled(name);
        self.0
            .store((generation << 1) | on as u32, Ordering::Relaxed);
        on
    }
}

impl Default for CallSite {
    fn default() -> Self {
        CallSite::new()
    }
}

/// Adds one pattern as QEMU's `-trace` does: a glob over event names (`*` and `?`), and a
/// leading `-` disables what it matches. Later patterns override earlier ones.
pub fn enable(pattern: &str) {
    let (glob, enable) = match pattern.strip_prefix('-') {
        Some(rest) => (rest.to_string(), false),
        None => (pattern.to_string(), true),
    };
    PATTERNS.write().unwrap().push(Pattern { glob, enable });
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Parses a `-trace`/`--trace` argument: `PATTERN`, `enable=PATTERN`, or `events=FILE`
/// (one pattern per line, `#` comments), optionally followed by `,file=...` which is refused.
pub fn configure(arg: &str) -> Result<(), String> {
    for part in arg.split(',') {
        if let Some(p) = part.strip_prefix("enable=") {
            enable(p);
        } else if let Some(path) = part.strip_prefix("events=") {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("could not open trace events file '{path}': {e}"))?;
            for line in text.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    enable(line);
                }
            }
        } else if part.contains('=') {
            return Err(format!(
                "Invalid parameter '{}'",
                part.split('=').next().unwrap_or("")
            ));
        } else {
            enable(part);
        }
    }
    Ok(())
}

fn event_enabled(name: &str) -> bool {
    let patterns = PATTERNS.read().unwrap();
    let mut on = false;
    for p in patterns.iter() {
        if glob_match(p.glob.as_bytes(), name.as_bytes()) {
            on = p.enable;
        }
    }
    on
}

fn glob_match(glob: &[u8], name: &[u8]) -> bool {
    match glob.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| glob_match(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && glob_match(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && glob_match(rest, &name[1..]),
    }
}

/// Writes one event line in the format of QEMU's log backend.
#[doc(hidden)]
pub fn emit(name: &str, args: std::fmt::Arguments<'_>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!(
        "{}@{}.{:06}:{} {}",
        std::process::id(),
        now.as_secs(),
        now.subsec_micros(),
        name,
        args
    );
}

/// Emits a trace event if its name is enabled: `trace!(blk_co_preadv, "offset {} bytes {}", o, b)`.
#[macro_export]
macro_rules! trace {
    ($name:ident, $($fmt:tt)*) => {{
        static SITE: $crate::trace::CallSite = $crate::trace::CallSite::new();
        if SITE.enabled(stringify!($name)) {
            $crate::trace::emit(stringify!($name), format_args!($($fmt)*));
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_qemu_patterns() {
        assert!(glob_match(b"blk_*", b"blk_co_preadv"));
        assert!(glob_match(b"*pwritev", b"bdrv_co_pwritev"));
        assert!(!glob_match(b"blk_*", b"bdrv_co_preadv"));
        assert!(glob_match(b"thread_pool_submi?", b"thread_pool_submit"));
    }

    #[test]
    fn later_patterns_override_and_sites_see_changes() {
        static SITE: CallSite = CallSite::new();
        assert!(!SITE.enabled("test_trace_event_x"));
        enable("test_trace_*");
        assert!(SITE.enabled("test_trace_event_x"));
        enable("-test_trace_event_x");
        assert!(!SITE.enabled("test_trace_event_x"));
    }
}
