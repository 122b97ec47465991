//! Errors of the block layer: an errno plus an optional message a user can act on.
//!
//! QEMU reports two kinds of failure: a negative errno from the I/O path (printed with
//! strerror, e.g. "read failed: Input/output error") and an `Error *` with a sentence from the
//! open/create paths ("Could not open 'x': No such file or directory"). One type carries both.

use std::fmt;
use std::sync::OnceLock;

/// The program name error_report prefixes messages with ("qemu-io", "qemu-img").
static PROGNAME: OnceLock<&'static str> = OnceLock::new();

/// Sets the name error_report prints before each message (error_set_progname).
pub fn set_progname(name: &'static str) {
    let _ = PROGNAME.set(name);
}

/// Prints `PROGNAME: MSG` on stderr, for failures a driver reports itself rather than
/// returning (QEMU's error_report, e.g. a cache that cannot be written back on close).
pub fn error_report(msg: &str) {
    match PROGNAME.get() {
        Some(name) => eprintln!("{name}: {msg}"),
        None => eprintln!("{msg}"),
    }
}

/// Prints `PROGNAME: warning: MSG` on stderr (QEMU's warn_report).
pub fn warn_report(msg: &str) {
    error_report(&format!("warning: {msg}"));
}

/// A block-layer error: what went wrong (errno) and, optionally, the sentence to show.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    errno: i32,
    message: Option<String>,
}

/// The block layer's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error that is only an errno; it prints as strerror(errno).
    pub fn from_errno(errno: i32) -> Error {
        Error {
            errno,
            message: None,
        }
    }

    /// An error with its own message; `errno` still tells callers what kind it is.
    pub fn new(errno: i32, message: impl Into<String>) -> Error {
        Error {
            errno,
            message: Some(message.into()),
        }
    }

    /// An invalid-argument error with a message (QEMU's `error_setg` without errno).
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(libc::EINVAL, message)
    }

    /// A feature rqemu does not have yet, named so the user knows what is missing.
    pub fn not_supported(message: impl Into<String>) -> Error {
        Error::new(libc::ENOTSUP, message)
    }

    /// The last OS error (errno) of the calling thread.
    pub fn last_os_error() -> Error {
        Error::from_errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }

    /// The errno (positive).
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The message, if one was given.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// Prefixes the message as QEMU's `error_prepend` does; an errno-only error gets
    /// "prefix: strerror".
    pub fn context(self, prefix: impl fmt::Display) -> Error {
        let message = format!("{prefix}{self}");
        Error {
            errno: self.errno,
            message: Some(message),
        }
    }

    /// Wraps with "prefix: strerror(errno)" as QEMU's `error_setg_errno` does.
    pub fn with_errno_message(errno: i32, prefix: impl fmt::Display) -> Error {
        Error::new(errno, format!("{prefix}: {}", strerror(errno)))
    }
}

/// The C library's text for an errno ("Input/output error").
pub fn strerror(errno: i32) -> String {
    // std appends " (os error N)"; QEMU prints the bare strerror text.
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => f.write_str(m),
            None => f.write_str(&strerror(self.errno)),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error(errno {}: {})", self.errno, self)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::from_errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strerror_has_no_os_error_suffix() {
        assert_eq!(strerror(libc::EIO), "Input/output error");
        assert_eq!(
            Error::from_errno(libc::ENOENT).to_string(),
            "No such file or directory"
        );
    }

    #[test]
    fn context_prefixes_message() {
        let e = Error::from_errno(libc::ENOENT).context("Could not open 'x': ");
        assert_eq!(
            e.to_string(),
            "Could not open 'x': No such file or directory"
        );
        assert_eq!(e.errno(), libc::ENOENT);
    }
}
