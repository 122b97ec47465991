//! qemu-io's standard output, buffered the way C stdio buffers it.
//!
//! qemu-io writes its reports with `printf` and its errors with `fprintf(stderr)`. When stdout
//! is a pipe or a file (as in qemu-iotests, which capture `2>&1`), stdio buffers it fully in
//! blocks of the file's `st_blksize` while stderr is unbuffered, so errors overtake reports in
//! the captured text. Scripts and golden files depend on that order, so this module keeps the
//! same rules: full buffering flushed at block boundaries, line buffering on a terminal,
//! explicit flushes where qemu-io calls `fflush` (the interactive prompt, `sigraise`), and
//! nothing flushed by `abort`. Rust's own `std::io::stdout` is always line-buffered.

use std::cell::RefCell;
use std::io::Write;

/// How stdout is buffered (stdio's `_IOFBF` / `_IOLBF`).
enum Mode {
    /// Flush whenever `block` bytes have accumulated.
    Full { block: usize },
    /// Flush at every newline (a terminal).
    Line,
}

struct Stdout {
    mode: Mode,
    buf: Vec<u8>,
}

thread_local! {
    static STDOUT: RefCell<Stdout> = RefCell::new(Stdout::new());
    /// While a monitor runs a qemu-io command, the errors it reports are collected here.
    static CAPTURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f` with the errors qemu-io reports collected instead of written, as QEMU's
/// monitor collects what error_report prints during an HMP `qemu-io` command (its other
/// output still goes to stdout, as QEMU's printf does); returns `f`'s result and the text.
pub async fn capture<T>(f: impl std::future::Future<Output = T>) -> (T, String) {
    CAPTURE.with(|c| *c.borrow_mut() = Some(String::new()));
    let result = f.await;
    let text = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (result, text)
}

/// `error_report`: the message for the monitor collecting errors, else "qemu-io: " and
/// the message on stderr.
pub fn error_report(args: std::fmt::Arguments<'_>) {
    let text = format!("{args}\n");
    let taken = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
        Some(buf) => {
            buf.push_str(&text);
            true
        }
        None => false,
    });
    if !taken {
        eprint(format_args!("qemu-io: {text}"));
    }
}

impl Stdout {
    fn new() -> Stdout {
        // SAFETY: isatty and fstat only read the state of descriptor 1; `st` is plain data
        // that fstat fills in before it is read.
        let (tty, blksize) = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            let blksize = if libc::fstat(1, &mut st) == 0 && st.st_blksize > 0 {
                st.st_blksize as usize
            } else {
                libc::BUFSIZ as usize
            };
            (libc::isatty(1) == 1, blksize)
        };
        let mode = if tty {
            Mode::Line
        } else {
            Mode::Full { block: blksize }
        };
        Stdout {
            mode,
            buf: Vec::new(),
        }
    }

    /// Buffers `data` and returns what stdio would write out now.
    fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(data);
        let ready = match self.mode {
            // stdio writes whole blocks as the buffer fills; the tail stays buffered.
            Mode::Full { block } => self.buf.len() - self.buf.len() % block,
            Mode::Line => self
                .buf
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |nl| nl + 1),
        };
        self.buf.drain(..ready).collect()
    }

    fn flush(&mut self) {
        write_all(&self.buf);
        self.buf.clear();
    }
}

fn write_all(data: &[u8]) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (EPIPE) loses output just as printf would; there is nobody to tell.
    let _ = out.write_all(data);
    let _ = out.flush();
}

/// Appends formatted text to stdout's buffer (qemu-io's `printf`).
pub fn print(args: std::fmt::Arguments<'_>) {
    let text = std::fmt::format(args);
    let ready = STDOUT.with(|s| s.borrow_mut().push(text.as_bytes()));
    if !ready.is_empty() {
        write_all(&ready);
    }
}

/// Writes out what stdout holds (`fflush(stdout)`).
pub fn flush() {
    STDOUT.with(|s| s.borrow_mut().flush());
}

/// Writes an error line to stderr at once, flushing nothing (`fprintf(stderr, ...)`).
pub fn eprint(args: std::fmt::Arguments<'_>) {
    let text = std::fmt::format(args);
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// An error whose message has already been printed; only the failure remains to be passed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reported;

/// `printf` to qemu-io's buffered stdout.
macro_rules! out {
    ($($arg:tt)*) => { $crate::tools::qemu_io::output::print(format_args!($($arg)*)) };
}

/// `error_report`: "qemu-io: " and the message on stderr (in a monitor, the message only).
macro_rules! report {
    ($($arg:tt)*) => {
        $crate::tools::qemu_io::output::error_report(format_args!($($arg)*))
    };
}

/// `fprintf(stderr, ...)` without the program name.
macro_rules! err {
    ($($arg:tt)*) => { $crate::tools::qemu_io::output::eprint(format_args!($($arg)*)) };
}

pub(crate) use {err, out, report};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_buffering_writes_whole_blocks() {
        let mut out = Stdout {
            mode: Mode::Full { block: 8 },
            buf: Vec::new(),
        };
        assert!(out.push(b"abc\n").is_empty());
        assert_eq!(out.push(b"defghijklmnopq"), b"abc\ndefghijklmno");
        assert_eq!(out.buf, b"pq");
    }

    #[test]
    fn line_buffering_writes_complete_lines() {
        let mut out = Stdout {
            mode: Mode::Line,
            buf: Vec::new(),
        };
        assert!(out.push(b"qemu-io> ").is_empty());
        assert_eq!(out.push(b"a\nb\nc"), b"qemu-io> a\nb\n");
        assert_eq!(out.buf, b"c");
    }
}
