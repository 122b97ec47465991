//! Block jobs under a running guest: fixtures/guests/virtio-test.asm assembled with -DLIVE
//! writes, reads back and checks 1 MiB of its virtio-blk disk pass after pass while the test,
//! over a QMP socket, takes an external snapshot (blockdev-snapshot-sync), mirrors the
//! overlay to a new image and pivots to it (drive-mirror sync=top, BLOCK_JOB_READY,
//! block-job-complete), then commits that active layer back into the base image
//! (block-commit, READY, complete). The guest checks every read itself ("FAIL live" on COM1
//! otherwise); after it stops, the base image must hold exactly the last pass it reported
//! (qemu-img compare) and every image must be consistent (qemu-img check).
//!
//! rqemu runs it, and QEMU runs the same commands as the reference. Needs nasm and KVM
//! (skips with the reason, fails under RQEMU_REQUIRE_KVM=1); QEMU's half needs
//! qemu-system-x86_64 (RQEMU_REQUIRE_QEMU=1). The checks use QEMU's qemu-img when present,
//! else ours.

mod guest_rig;
mod prereq;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use guest_rig::{Guest, Qmp};

use serde_json::{json, Value};

const IMAGE_SIZE: usize = 8 << 20;
/// Where the guest's live region starts (its LIVE_BASE, in sectors) and its size.
const LIVE_BASE: usize = 8192 * 512;
const LIVE_MIB: usize = 1;
/// The whole run's limit: the host is shared, a pass takes seconds when it is loaded.
const TIMEOUT: Duration = Duration::from_secs(300);

/// The emulator under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Emulator {
    Qemu,
    Rqemu,
}

fn scratch(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("live-{}-{name}", std::process::id()))
}

/// The guest in its live mode, with a 1 MiB region (a pass is 8 batches of 32 blocks).
fn build_guest() -> Vec<u8> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/guests/virtio-test.asm");
    let out = scratch("guest.bin");
    let status = Command::new("nasm")
        .args([
            "-f",
            "bin",
            "-DLIVE",
            &format!("-DLIVE_MIB={LIVE_MIB}"),
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run nasm");
    assert!(status.success(), "nasm failed on {}", src.display());
    let program = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    program
}

/// The disk as the guest leaves it after pass `pass` (0: before it ran): block i of the
/// region holds dword j = pass << 20 | i << 10 | j.
fn disk_after(program: &[u8], pass: u32) -> Vec<u8> {
    let mut img = vec![0u8; IMAGE_SIZE];
    img[..program.len()].copy_from_slice(program);
    if pass > 0 {
        let region = &mut img[LIVE_BASE..LIVE_BASE + (LIVE_MIB << 20)];
        for (n, dword) in region.chunks_exact_mut(4).enumerate() {
            let (i, j) = ((n / 1024) as u32, (n % 1024) as u32);
            dword.copy_from_slice(&(pass << 20 | i << 10 | j).to_le_bytes());
        }
    }
    img
}

/// QEMU's qemu-img when installed (an independent judge), else ours.
fn qemu_img() -> &'static str {
    if prereq::tool("qemu-img") {
        "qemu-img"
    } else {
        env!("CARGO_BIN_EXE_rqemu-img")
    }
}

fn img_tool(args: &[&str], paths: &[&Path]) -> (bool, String) {
    let out = Command::new(qemu_img())
        .args(args)
        .args(paths)
        .output()
        .expect("run qemu-img");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Waits for event `name` of job `device`; an error or cancellation of it fails.
fn job_event(qmp: &mut Qmp, name: &str, device: &str) -> Value {
    let event = qmp.event_where(name, |e| {
        for bad in ["BLOCK_JOB_ERROR", "BLOCK_JOB_CANCELLED"] {
            assert!(e["event"] != bad, "waiting for {name}: {e}");
        }
    });
    assert_eq!(event["data"]["device"], device, "{event}");
    event
}

/// Runs a job that reaches READY to its end: complete, COMPLETED without an error.
fn complete_job(qmp: &mut Qmp, job: &str) {
    job_event(qmp, "BLOCK_JOB_READY", job);
    qmp.ok("block-job-complete", json!({"device": job}));
    let done = job_event(qmp, "BLOCK_JOB_COMPLETED", job);
    assert!(done["data"].get("error").is_none(), "{done}");
    assert_eq!(done["data"]["offset"], done["data"]["len"], "{done}");
}

/// Waits for the guest to finish one more whole pass; returns its number.
fn next_pass(guest: &mut Guest) -> u32 {
    let line = guest.until("a pass of the guest", |l| l.starts_with("LIVE PASS "));
    let hex = line.strip_prefix("LIVE PASS ").unwrap();
    u32::from_str_radix(hex, 16).expect("pass number")
}

/// Asks the guest to stop after its current pass, waits for the emulator to exit, and
/// returns the last pass the guest reported.
fn stop_guest(mut guest: Guest) -> u32 {
    guest.stdin.write_all(b"x").unwrap();
    guest.stdin.flush().unwrap();
    guest.until("the guest's end", |l| l == "DONE");
    guest.wait_exit();
    let passes = guest.log.iter().rev();
    let mut passes = passes.filter_map(|l| l.strip_prefix("LIVE PASS "));
    passes
        .find_map(|hex| u32::from_str_radix(hex, 16).ok())
        .unwrap_or(0)
}

fn cmdline(emu: Emulator, base: &Path, sock: &Path) -> Vec<String> {
    let program = match emu {
        Emulator::Qemu => "qemu-system-x86_64",
        Emulator::Rqemu => env!("CARGO_BIN_EXE_rqemu"),
    };
    let drive = format!(
        "file={},format=qcow2,if=none,id=d0,node-name=base",
        base.display()
    );
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let fixed = "-M pc -enable-kvm -nographic -no-reboot -device virtio-blk-pci,drive=d0";
    let mut cmd = vec![program.to_string()];
    cmd.extend(fixed.split(' ').map(String::from));
    cmd.extend(["-drive".into(), drive, "-qmp".into(), qmp]);
    cmd
}

fn live_jobs(emu: Emulator) {
    let ok = prereq::guest(emu == Emulator::Qemu);
    if !ok {
        return;
    }
    let program = build_guest();
    let tag = format!("{emu:?}");
    let [raw, base, overlay, mirror, sock] =
        ["raw", "base.qcow2", "overlay.qcow2", "mirror.qcow2", "sock"]
            .map(|n| scratch(&format!("{tag}-{n}")));
    std::fs::write(&raw, disk_after(&program, 0)).unwrap();
    let (converted, text) = img_tool(&["convert", "-f", "raw", "-O", "qcow2"], &[&raw, &base]);
    assert!(converted, "{text}");

    let mut guest = Guest::start(
        &cmdline(emu, &base, &sock),
        scratch(&format!("{tag}-stderr")),
        TIMEOUT,
    );
    let mut qmp = Qmp::connect(&sock, TIMEOUT);
    next_pass(&mut guest);

    // The guest's writes go to a new overlay from here on.
    qmp.ok(
        "blockdev-snapshot-sync",
        json!({"device": "d0", "snapshot-file": overlay, "snapshot-node-name": "overlay",
               "format": "qcow2"}),
    );
    next_pass(&mut guest);

    // The overlay moves to a new image over the same base, which becomes the active layer.
    qmp.ok(
        "drive-mirror",
        json!({"device": "d0", "job-id": "mirror", "target": mirror, "format": "qcow2",
               "sync": "top", "node-name": "mirror"}),
    );
    complete_job(&mut qmp, "mirror");
    next_pass(&mut guest);

    // The active layer goes back down into the base, which the disk ends on.
    qmp.ok("block-commit", json!({"device": "d0", "job-id": "commit"}));
    complete_job(&mut qmp, "commit");
    let blocks = qmp.ok("query-block", json!({}));
    let inserted = &blocks[0]["inserted"];
    assert_eq!(inserted["node-name"], "base", "{blocks}");
    assert_eq!(inserted["backing_file_depth"], 0, "{blocks}");
    next_pass(&mut guest);
    let jobs = qmp.ok("query-block-jobs", json!({}));
    assert_eq!(jobs, json!([]));

    let last = stop_guest(guest);
    assert!(last >= 4, "the guest ran {last} passes");
    std::fs::write(&raw, disk_after(&program, last)).unwrap();
    let (same, text) = img_tool(&["compare", "-f", "qcow2", "-F", "raw"], &[&base, &raw]);
    assert!(same, "base image after pass {last}: {text}");
    for image in [&base, &overlay, &mirror] {
        let (clean, text) = img_tool(&["check", "-f", "qcow2"], &[image]);
        assert!(clean, "{}: {text}", image.display());
    }
    for p in [raw, base, overlay, mirror, sock] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn snapshot_mirror_and_active_commit_under_a_running_guest_with_rqemu() {
    live_jobs(Emulator::Rqemu);
}

#[test]
fn snapshot_mirror_and_active_commit_under_a_running_guest_with_qemu() {
    live_jobs(Emulator::Qemu);
}
