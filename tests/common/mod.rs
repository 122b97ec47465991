//! Helpers shared by the machine's integration tests: the KVM requirement, tiny
//! hand-assembled firmware images, and running rqemu with a time limit.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether /dev/kvm can be used; prints why not, or panics when RQEMU_REQUIRE_KVM=1.
pub fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => skip_or_fail(&format!("/dev/kvm is not usable ({e})")),
    }
}

/// Prints "skipping: why" and returns false, or panics when RQEMU_REQUIRE_KVM=1.
pub fn skip_or_fail(why: &str) -> bool {
    if std::env::var("RQEMU_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("RQEMU_REQUIRE_KVM=1 but {why}");
    }
    eprintln!("skipping: {why}");
    false
}

/// A unique temporary path for this test process.
pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rqemu-test-{}-{name}", std::process::id()))
}

const IMAGE_SIZE: usize = 128 << 10;

/// A 128 KiB firmware image whose reset vector jumps to F000:0000 (so the code runs from
/// the low copy at 0xF0000); the code there prints "OK\n" on COM1 (leaving DX = 0x3F8),
/// runs `code`, then halts forever. F000:0100 holds six zero bytes (an empty IDT descriptor).
pub fn firmware(name: &str, code: &[u8]) -> PathBuf {
    let mut prog = vec![0xBA, 0xF8, 0x03]; // mov dx, 0x3f8
    for &c in b"OK\n" {
        prog.extend_from_slice(&[0xB0, c, 0xEE]); // mov al, c; out dx, al
    }
    prog.extend_from_slice(code);
    prog.extend_from_slice(&[0xF4, 0xEB, 0xFD]); // hlt; jmp back to the hlt
    let mut image = vec![0xF4u8; IMAGE_SIZE];
    let base = IMAGE_SIZE - 0x10000;
    image[base..base + prog.len()].copy_from_slice(&prog);
    image[base + 0x100..base + 0x106].fill(0);
    let vector = IMAGE_SIZE - 16;
    image[vector..vector + 5].copy_from_slice(&[0xEA, 0x00, 0x00, 0x00, 0xF0]); // jmp F000:0000
    let path = temp_path(&format!("{name}.bin"));
    std::fs::write(&path, image).unwrap();
    path
}

/// The result of one rqemu run.
pub struct Run {
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: String,
    /// `Some(success)` if it exited by itself, `None` if it was killed at the time limit.
    pub exited: Option<bool>,
}

/// Runs rqemu with `args`, feeding `stdin`, for at most `limit`.
pub fn run(args: &[&str], stdin: &[u8], limit: Duration) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rqemu"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rqemu");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || read_all(&mut stdout));
    let err_reader = std::thread::spawn(move || read_all(&mut stderr));
    let start = Instant::now();
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status.success());
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        stdout: out_reader.join().unwrap(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned(),
        exited,
    }
}

fn read_all(r: &mut impl std::io::Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}
