//! Commands for block-layer features rqemu's graph does not have: blkdebug breakpoints
//! (break, remove_break, resume, wait_break) and zoned devices (zone_*).
//!
//! qemu-io answers both families with ENOTSUP whenever no node of the graph
//! supports them, which is always the case in rqemu: no blkdebug filter and no zoned
//! device exist. Those answers are reproduced (after the same argument parsing). Where qemu-io
//! would wait forever (`wait_break` without blkdebug), the command fails with a message
//! naming what is missing.

use super::cmd_rw::create_iovec;
use super::output::{out, report};
use super::parse::cvtnum_or_print;
use super::QemuIo;

const ENOTSUP_TEXT: &str = "Operation not supported";

/// `break event tag`: no node supports breakpoints (bdrv_debug_breakpoint -> ENOTSUP).
pub async fn break_f(_io: &QemuIo, _argv: &[String]) -> i32 {
    out!("Could not set breakpoint: {ENOTSUP_TEXT}\n");
    -libc::ENOTSUP
}

/// `remove_break tag`.
pub async fn remove_break_f(_io: &QemuIo, argv: &[String]) -> i32 {
    out!("Could not remove breakpoint {}: {ENOTSUP_TEXT}\n", argv[1]);
    -libc::ENOTSUP
}

/// `resume tag`.
pub async fn resume_f(_io: &QemuIo, _argv: &[String]) -> i32 {
    out!("Could not resume request: {ENOTSUP_TEXT}\n");
    -libc::ENOTSUP
}

/// `wait_break tag`: qemu-io would poll forever for a request that can never stop.
pub async fn wait_break_f(_io: &QemuIo, argv: &[String]) -> i32 {
    report!(
        "wait_break {}: breakpoints need the blkdebug driver, which rqemu does not have yet",
        argv[1]
    );
    -libc::ENOTSUP
}

/// `zone_report offset number`, `zone_open|close|finish|reset offset len`: both numbers are
/// parsed, then the device, which is never zoned, refuses.
pub async fn zone_f(_io: &QemuIo, argv: &[String]) -> i32 {
    for arg in &argv[1..3] {
        if let Err(e) = cvtnum_or_print(arg) {
            return e;
        }
    }
    let op = argv[0].strip_prefix("zone_").unwrap_or(&argv[0]);
    out!("zone {op} failed: {ENOTSUP_TEXT}\n");
    -libc::ENOTSUP
}

/// `zone_append offset len [len..]`.
pub async fn zone_append_f(io: &QemuIo, argv: &[String]) -> i32 {
    if let Err(e) = cvtnum_or_print(&argv[1]) {
        return e;
    }
    if create_iovec(io, &argv[2..], 0xcd).is_none() {
        return -libc::EINVAL;
    }
    out!("zone append failed: {ENOTSUP_TEXT}\n");
    -libc::ENOTSUP
}
