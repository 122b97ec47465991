//! Crash safety of the qcow2 driver: rqemu-io writes to a qcow2 image and is killed with
//! SIGKILL at a random point, 50 times in a row on the same image, with and without lazy
//! refcounts. After every kill the reference `qemu-img check` must find no corruption (only
//! leaks may remain, which `-r all` repairs; with lazy refcounts the refcounts are allowed to
//! be stale and `-r all` repairs them), and every write that was flushed before the kill must
//! read back, while blocks never written read as zeroes.
//!
//! A write counts as flushed once rqemu-io has printed the prompt that follows its `flush`
//! command: in interactive mode the prompt is written after the command completed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

const QEMU_IMG: &str = "/usr/bin/qemu-img";
const BLOCK: u64 = 4096;
/// Flushed writes land in the first half of the image, unflushed ones in the second half.
const DURABLE_END: u64 = 32 << 20;
const IMAGE_SIZE: u64 = 64 << 20;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn reference_available() -> bool {
    if Path::new(QEMU_IMG).exists() {
        return true;
    }
    if std::env::var("RQEMU_REQUIRE_QEMU").as_deref() == Ok("1") {
        panic!("RQEMU_REQUIRE_QEMU=1 but {QEMU_IMG} is missing");
    }
    eprintln!("skipping: {QEMU_IMG} (reference QEMU) not installed");
    false
}

/// Reads rqemu-io's output until the next `qemu-io> ` prompt; false if it ended first.
fn wait_prompt(out: &mut impl Read) -> bool {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"qemu-io> ") {
        if out.read(&mut byte).unwrap_or(0) == 0 {
            return false;
        }
        seen.push(byte[0]);
    }
    true
}

/// One life of rqemu-io: some flushed writes recorded in `model`, then unflushed writes in
/// the second half, then SIGKILL after a random delay.
fn crash_round(img: &Path, rng: &mut Rng, model: &mut HashMap<u64, u8>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rqemu-io"))
        .args(["-f", "qcow2"])
        .arg(img)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rqemu-io");
    let mut input = child.stdin.take().unwrap();
    let mut output = child.stdout.take().unwrap();
    assert!(wait_prompt(&mut output), "rqemu-io did not start");
    for _ in 0..1 + rng.below(6) {
        let blocks = 1 + rng.below(32);
        let first = rng.below(DURABLE_END / BLOCK - blocks);
        let pattern = 1 + rng.below(254) as u8;
        writeln!(
            input,
            "write -q -P {pattern} {} {}",
            first * BLOCK,
            blocks * BLOCK
        )
        .unwrap();
        writeln!(input, "flush").unwrap();
        assert!(
            wait_prompt(&mut output) && wait_prompt(&mut output),
            "rqemu-io died early"
        );
        for b in first..first + blocks {
            model.insert(b, pattern);
        }
    }
    for _ in 0..rng.below(8) {
        let blocks = 1 + rng.below(64);
        let first = DURABLE_END / BLOCK + rng.below((IMAGE_SIZE - DURABLE_END) / BLOCK - blocks);
        writeln!(
            input,
            "aio_write -q -P 0xee {} {}",
            first * BLOCK,
            blocks * BLOCK
        )
        .unwrap();
    }
    let _ = input.flush();
    std::thread::sleep(std::time::Duration::from_micros(rng.below(5000)));
    child.kill().unwrap();
    child.wait().unwrap();
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new(QEMU_IMG)
        .args(args)
        .output()
        .expect("run qemu-img")
}

fn check_after_crash(img: &str, lazy: bool, round: usize) {
    let report = qemu_img(&["check", "--output=json", img]);
    let json: serde_json::Value = serde_json::from_slice(&report.stdout)
        .unwrap_or_else(|_| panic!("round {round}: check output: {report:?}"));
    if !lazy {
        assert_eq!(
            json["corruptions"].as_u64().unwrap_or(0),
            0,
            "round {round}: {json}"
        );
        assert_eq!(
            json["check-errors"].as_u64().unwrap_or(0),
            0,
            "round {round}: {json}"
        );
    }
    let repair = qemu_img(&["check", "-r", "all", img]);
    assert_eq!(
        repair.status.code(),
        Some(0),
        "round {round}: check -r all: {repair:?}"
    );
}

fn verify_data(img: &str, scratch: &Path, model: &HashMap<u64, u8>, round: usize) {
    let raw = scratch.join("data.raw");
    let out = qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        img,
        raw.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "round {round}: convert: {out:?}");
    let data = std::fs::read(&raw).unwrap();
    for b in 0..DURABLE_END / BLOCK {
        let expect = model.get(&b).copied().unwrap_or(0);
        let got = &data[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize];
        assert!(
            got.iter().all(|&x| x == expect),
            "round {round}: block {b} should be all {expect:#x} (flushed before the kill)"
        );
    }
}

fn crash_test(lazy: bool, seed: u64) {
    if !reference_available() {
        return;
    }
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = scratch.path().join("crash.qcow2");
    let img_s = img.to_str().unwrap();
    let opts = format!("lazy_refcounts={}", if lazy { "on" } else { "off" });
    let created = Command::new(env!("CARGO_BIN_EXE_rqemu-img"))
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &opts,
            img_s,
            &IMAGE_SIZE.to_string(),
        ])
        .status()
        .unwrap();
    assert!(created.success());
    let mut rng = Rng(seed);
    let mut model = HashMap::new();
    for round in 0..50 {
        crash_round(&img, &mut rng, &mut model);
        check_after_crash(img_s, lazy, round);
        verify_data(img_s, scratch.path(), &model, round);
    }
}

#[test]
fn sigkill_during_allocating_writes_loses_no_flushed_data() {
    crash_test(false, 0x5eed_0001);
}

#[test]
fn sigkill_with_lazy_refcounts_loses_no_flushed_data() {
    crash_test(true, 0x5eed_0002);
}
