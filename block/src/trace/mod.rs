//! Trace events, switched on by name pattern like QEMU's `-trace PATTERN` (log backend).
//!
//! Every layer calls `trace!(event_name, "fmt", args...)` at its boundaries with the event
//! names QEMU uses (`blk_co_preadv`, `bdrv_co_pwritev_part`, `thread_pool_submit_aio`...).
//! Every event is declared once in [`catalogue`] (QEMU's `trace-events` files); `trace!`
//! rejects an undeclared name when compiled. Events are off by default and cost one relaxed
//! atomic load each; `enable("blk_*")` turns a glob on. [`output`] writes the lines.

pub mod catalogue;
pub mod output;

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

/// Parses a `-trace`/`--trace` argument as QEMU's trace_opt_parse does: `PATTERN` or
/// `enable=PATTERN`, `events=FILE` (one pattern per line, `#` comments), `file=FILE` (where
/// lines go), and rqemu's `thread=on|off` (tag each line with its thread), comma-separated.
/// `help` as the pattern returns `Ok(Some(listing))`: the caller prints it and exits 0.
pub fn configure(arg: &str) -> Result<Option<String>, String> {
    for part in arg.split(',') {
        let (key, value) = match part.split_once('=') {
            Some((key, value)) => (key, value),
            None => ("enable", part),
        };
        match key {
            "enable" if value == "help" || value == "?" => return Ok(Some(catalogue::help())),
            "enable" => enable(value),
            "events" => {
                let text = std::fs::read_to_string(value)
                    .map_err(|e| format!("could not open trace events file '{value}': {e}"))?;
                for line in text.lines().map(str::trim) {
                    if !line.is_empty() && !line.starts_with('#') {
                        enable(line);
                    }
                }
            }
            "file" => output::set_file(value)?,
            "thread" => output::set_thread_tag(match value {
                "on" => true,
                "off" => false,
                _ => return Err("Parameter 'thread' expects 'on' or 'off'".to_string()),
            }),
            _ => return Err(format!("Invalid parameter '{key}'")),
        }
    }
    Ok(None)
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

/// Writes one event line (see [`output`]).
#[doc(hidden)]
pub fn emit(name: &str, args: std::fmt::Arguments<'_>) {
    output::write_line(name, args);
}

/// Emits a trace event if its name is enabled: `trace!(blk_co_preadv, "offset {} bytes {}", o, b)`.
#[macro_export]
macro_rules! trace {
    ($name:ident, $($fmt:tt)*) => {{
        const _: () = assert!(
            $crate::trace::catalogue::contains(stringify!($name)),
            concat!("trace event `", stringify!($name), "` is not in block/src/trace/catalogue.rs")
        );
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
