//! What to do about a failed request: the policies a device or a block job is given
//! (BlockdevOnError: `werror=`, `rerror=`, `on-source-error=`...), the action one error gets
//! (BlockErrorAction) and the I/O status a stop leaves behind (BlockDeviceIoStatus).
//!
//! QEMU's qapi/block-core.json types and blk_get_error_action in block/block-backend.c. The
//! BlockBackend keeps a device's policies and I/O status; block jobs keep their own.

use crate::error::{Error, Result};

/// What to do when a request fails (BlockdevOnError).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Fail the request (the guest or the job sees the error).
    #[default]
    Report,
    /// Carry on as if it had succeeded.
    Ignore,
    /// Stop (the VM, or the job) until the user resumes it; the request is retried then.
    Stop,
    /// Stop on ENOSPC, report anything else.
    Enospc,
    /// The device's default: take the drive's policy (for a job: as enospc).
    Auto,
}

impl OnError {
    /// Parses QEMU's names.
    pub fn parse(name: &str) -> Result<OnError> {
        Ok(match name {
            "report" => OnError::Report,
            "ignore" => OnError::Ignore,
            "stop" => OnError::Stop,
            "enospc" => OnError::Enospc,
            "auto" => OnError::Auto,
            _ => return Err(Error::invalid(format!("Invalid parameter '{name}'"))),
        })
    }

    /// Parses `-drive werror=`/`rerror=` (blockdev.c's parse_block_error_action): `enospc`
    /// and `auto` are no read policy, `auto` no write policy either.
    pub fn parse_drive_option(name: &str, is_read: bool) -> Result<OnError> {
        match OnError::parse(name) {
            Ok(OnError::Auto) | Err(_) => {}
            Ok(OnError::Enospc) if is_read => {}
            Ok(on_err) => return Ok(on_err),
        }
        let what = if is_read { "read" } else { "write" };
        Err(Error::invalid(format!(
            "'{name}' invalid {what} error action"
        )))
    }

    /// The action an error with `errno` gets under this policy (blk_get_error_action).
    pub fn action(self, errno: i32) -> ErrorAction {
        match self {
            OnError::Enospc | OnError::Auto if errno == libc::ENOSPC => ErrorAction::Stop,
            OnError::Enospc | OnError::Auto | OnError::Report => ErrorAction::Report,
            OnError::Stop => ErrorAction::Stop,
            OnError::Ignore => ErrorAction::Ignore,
        }
    }
}

/// An I/O status (BlockDeviceIoStatus): what the error that stopped a device or job was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoStatus {
    /// No error.
    #[default]
    Ok,
    /// An error other than ENOSPC stopped it.
    Failed,
    /// ENOSPC stopped it.
    NoSpace,
}

impl IoStatus {
    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            IoStatus::Ok => "ok",
            IoStatus::Failed => "failed",
            IoStatus::NoSpace => "nospace",
        }
    }

    /// The status an error with `errno` leaves.
    pub fn of_errno(errno: i32) -> IoStatus {
        if errno == libc::ENOSPC {
            IoStatus::NoSpace
        } else {
            IoStatus::Failed
        }
    }
}

/// The direction of a failed request (IoOperationType).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOperation {
    /// Reading (the source of a copy).
    Read,
    /// Writing (the target of a copy).
    Write,
}

impl IoOperation {
    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            IoOperation::Read => "read",
            IoOperation::Write => "write",
        }
    }

    /// Read or write.
    pub fn of(is_read: bool) -> IoOperation {
        if is_read {
            IoOperation::Read
        } else {
            IoOperation::Write
        }
    }
}

/// What was done about one I/O error (BlockErrorAction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorAction {
    /// Went on as if nothing happened.
    Ignore,
    /// Failed the request.
    Report,
    /// Stopped until the user resumes; the request is kept to be retried.
    Stop,
}

impl ErrorAction {
    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorAction::Ignore => "ignore",
            ErrorAction::Report => "report",
            ErrorAction::Stop => "stop",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_pick_qemu_actions() {
        use ErrorAction::*;
        let (eio, enospc) = (libc::EIO, libc::ENOSPC);
        assert_eq!(OnError::Enospc.action(enospc), Stop);
        assert_eq!(OnError::Enospc.action(eio), Report);
        assert_eq!(OnError::Report.action(enospc), Report);
        assert_eq!(OnError::Ignore.action(eio), Ignore);
        assert_eq!(OnError::Stop.action(eio), Stop);
    }

    #[test]
    fn drive_options_refuse_what_qemu_refuses() {
        let msg = |name, is_read| {
            OnError::parse_drive_option(name, is_read)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(msg("enospc", true), "'enospc' invalid read error action");
        assert_eq!(msg("auto", false), "'auto' invalid write error action");
        assert_eq!(msg("bogus", true), "'bogus' invalid read error action");
        assert_eq!(
            OnError::parse_drive_option("enospc", false).unwrap(),
            OnError::Enospc
        );
        assert_eq!(
            OnError::parse_drive_option("stop", true).unwrap(),
            OnError::Stop
        );
    }
}
