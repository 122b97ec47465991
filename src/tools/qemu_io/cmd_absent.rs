//! Commands for block-layer features rqemu's graph does not have: zoned devices (zone_*).
//!
//! qemu-io answers them with ENOTSUP whenever no node of the graph supports them, which is
//! always the case in rqemu: no zoned device exists. Those answers are reproduced (after the
//! same argument parsing).

use super::cmd_rw::create_iovec;
use super::output::out;
use super::parse::cvtnum_or_print;
use super::QemuIo;

const ENOTSUP_TEXT: &str = "Operation not supported";

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
