//! Commands that drive blkdebug breakpoints: break, remove_break, resume and wait_break
//! (QEMU's qemu-io-cmds.c over bdrv_debug_breakpoint and friends).
//!
//! Each looks for the first blkdebug node below the open image; without one the first three
//! fail with ENOTSUP as qemu-io does. `wait_break` lets other requests run until one stops
//! at the tag.

use block::error::strerror;
use block::filters::blkdebug;

use super::output::{out, report};
use super::QemuIo;

/// Routes blkdebug's own messages through qemu-io's stdout buffer.
pub fn install_message_sink() {
    blkdebug::set_message_sink(|text| out!("{text}"));
}

/// `break event tag`.
pub async fn break_f(io: &QemuIo, argv: &[String]) -> i32 {
    match blkdebug::debug_breakpoint(&io.blk().bs(), &argv[1], &argv[2]) {
        Ok(()) => 0,
        Err(e) => {
            out!("Could not set breakpoint: {}\n", strerror(e.errno()));
            -e.errno()
        }
    }
}

/// `remove_break tag`.
pub async fn remove_break_f(io: &QemuIo, argv: &[String]) -> i32 {
    match blkdebug::debug_remove_breakpoint(&io.blk().bs(), &argv[1]) {
        Ok(()) => 0,
        Err(e) => {
            out!(
                "Could not remove breakpoint {}: {}\n",
                argv[1],
                strerror(e.errno())
            );
            -e.errno()
        }
    }
}

/// `resume tag`.
pub async fn resume_f(io: &QemuIo, argv: &[String]) -> i32 {
    match blkdebug::debug_resume(&io.blk().bs(), &argv[1]) {
        Ok(()) => 0,
        Err(e) => {
            out!("Could not resume request: {}\n", strerror(e.errno()));
            -e.errno()
        }
    }
}

/// `wait_break tag`: qemu-io would poll forever when no blkdebug node could ever stop a
/// request; that case fails with a message instead.
pub async fn wait_break_f(io: &QemuIo, argv: &[String]) -> i32 {
    let bs = io.blk().bs().clone();
    match blkdebug::debug_wait_suspended(&bs, &argv[1]).await {
        Some(()) => 0,
        None => {
            report!(
                "wait_break {}: no blkdebug node in the graph, no request can stop",
                argv[1]
            );
            -libc::ENOTSUP
        }
    }
}
