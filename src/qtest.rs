//! The qtest accelerator's protocol: no vCPU runs, and a test steers virtual time over a
//! line-based socket (QEMU's system/qtest.c and accel/qtest).
//!
//! Each request is one line, each answer one line: `OK [value]` or `FAIL reason`. The
//! iotests use the clock commands, to move the virtual clock that throttling and other
//! timed block-layer work would wait on; the guest-memory and port commands have no guest
//! to act on here and fail saying so.

use std::io::{BufRead, BufReader, Write};

use block::throttle::clock;
use block::trace;

use crate::monitor::channel::{self, Connection};
use crate::vm_config::ChardevBackend;

/// The virtual clock's current value in nanoseconds (QEMU_CLOCK_VIRTUAL under qtest: it
/// moves only when the test steps it; throttling waits on it).
pub fn clock_ns() -> i64 {
    clock::virtual_ns()
}

/// Starts answering the protocol on `backend`.
pub fn start(backend: &ChardevBackend) -> Result<(), String> {
    channel::start(backend, "qtest", serve)
}

fn serve(conn: Connection) {
    let Connection { input, mut output } = conn;
    for line in BufReader::new(input).lines() {
        let Ok(line) = line else { break };
        let answer = answer(&line);
        trace!(qtest_command, "{} -> {}", line, answer);
        if writeln!(output, "{answer}")
            .and_then(|()| output.flush())
            .is_err()
        {
            break;
        }
    }
}

fn parse_ns(word: &str) -> Result<i64, String> {
    word.parse::<i64>()
        .ok()
        .filter(|&ns| ns >= 0)
        .ok_or_else(|| format!("FAIL invalid clock value '{word}'"))
}

/// The answer to one request line.
fn answer(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let reply = match words.as_slice() {
        [] => return String::new(),
        ["clock_step", ns] => parse_ns(ns).map(|ns| {
            let now = clock::advance_virtual_to(clock_ns().saturating_add(ns));
            format!("OK {now}")
        }),
        // Without an amount QEMU steps to the next timer deadline; nothing in rqemu arms a
        // virtual-clock timer yet, so the clock stays where it is.
        ["clock_step"] => Ok(format!("OK {}", clock_ns())),
        ["clock_set", ns] => parse_ns(ns).map(|target| {
            let now = clock::advance_virtual_to(target);
            format!("OK {now}")
        }),
        ["endianness"] => Ok("OK little".to_string()),
        [cmd, ..] => Err(format!(
            "FAIL qtest command '{cmd}' is not supported by rqemu (no guest runs under qtest)"
        )),
    };
    reply.unwrap_or_else(|e| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_commands_move_virtual_time_forward_only() {
        let start = clock_ns();
        assert_eq!(answer("clock_step 1000"), format!("OK {}", start + 1000));
        assert_eq!(answer("clock_set 5"), format!("OK {}", start + 1000));
        assert_eq!(answer("clock_step -1"), "FAIL invalid clock value '-1'");
        assert!(answer("readb 0x1000").starts_with("FAIL"));
        assert_eq!(answer("endianness"), "OK little");
    }
}
