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

mod prereq;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

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

/// A QMP client that keeps the events it reads while waiting for replies.
struct Qmp {
    out: UnixStream,
    input: BufReader<UnixStream>,
    events: Vec<Value>,
}

impl Qmp {
    fn connect(sock: &Path) -> Qmp {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
            }
        };
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut qmp = Qmp {
            out: stream.try_clone().unwrap(),
            input: BufReader::new(stream),
            events: Vec::new(),
        };
        assert!(qmp.recv().get("QMP").is_some(), "no greeting");
        qmp.ok("qmp_capabilities", json!({}));
        qmp
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.input.read_line(&mut line).expect("read a QMP message");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Runs a command; its reply, the events before it kept for [`Qmp::event`].
    fn cmd(&mut self, execute: &str, arguments: Value) -> Value {
        let text = json!({"execute": execute, "arguments": arguments}).to_string();
        self.out.write_all(text.as_bytes()).unwrap();
        loop {
            let msg = self.recv();
            if msg.get("event").is_some() {
                self.events.push(msg);
            } else {
                return msg;
            }
        }
    }

    fn ok(&mut self, execute: &str, arguments: Value) -> Value {
        match self.cmd(execute, arguments) {
            Value::Object(mut reply) if reply.contains_key("return") => {
                reply.remove("return").unwrap()
            }
            reply => panic!("{execute} failed: {reply}"),
        }
    }

    /// Waits for event `name` of job `device`; an error or cancellation of it fails.
    fn event(&mut self, name: &str, device: &str) -> Value {
        loop {
            if let Some(at) = self.events.iter().position(|e| e["event"] == name) {
                let event = self.events.remove(at);
                assert_eq!(event["data"]["device"], device, "{event}");
                return event;
            }
            for bad in ["BLOCK_JOB_ERROR", "BLOCK_JOB_CANCELLED"] {
                let seen = self.events.iter().find(|e| e["event"] == bad);
                assert!(seen.is_none(), "waiting for {name}: {seen:?}");
            }
            let msg = self.recv();
            self.events.push(msg);
        }
    }

    /// Runs a job that reaches READY to its end: complete, COMPLETED without an error.
    fn complete_job(&mut self, job: &str) {
        self.event("BLOCK_JOB_READY", job);
        self.ok("block-job-complete", json!({"device": job}));
        let done = self.event("BLOCK_JOB_COMPLETED", job);
        assert!(done["data"].get("error").is_none(), "{done}");
        assert_eq!(done["data"]["offset"], done["data"]["len"], "{done}");
    }
}

/// The running guest: its COM1 lines as they come, and its stdin to stop it.
struct Guest {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    log: Vec<String>,
    last_pass: u32,
    /// Where the emulator's stderr goes, shown when a check fails.
    stderr: PathBuf,
}

impl Guest {
    fn start(cmd: &[String], stderr: PathBuf) -> Guest {
        let mut child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", cmd[0]));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take().unwrap();
        Guest {
            child,
            stdin,
            lines,
            log: Vec::new(),
            last_pass: 0,
            stderr,
        }
    }

    /// Reads COM1 until a line `done` accepts (or the output ends); fails on a FAIL line.
    fn until(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line.trim_end().to_string(),
                Err(e) => panic!("waiting for {what}: {e}\nguest output:\n{:#?}", self.log),
            };
            self.log.push(line.clone());
            assert!(!line.contains("FAIL"), "guest output:\n{:#?}", self.log);
            if let Some(hex) = line.strip_prefix("LIVE PASS ") {
                self.last_pass = u32::from_str_radix(hex, 16).expect("pass number");
            }
            if done(&line) {
                return;
            }
        }
    }

    /// Waits for the guest to finish one more whole pass.
    fn next_pass(&mut self) {
        self.until("a pass of the guest", |l| l.starts_with("LIVE PASS "));
    }

    /// Asks the guest to stop after its current pass and waits for the emulator to exit.
    fn stop(mut self) -> u32 {
        self.stdin.write_all(b"x").unwrap();
        self.stdin.flush().unwrap();
        self.until("the guest's end", |l| l == "DONE");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "emulator exited with {status}");
        self.last_pass
    }
}

impl Drop for Guest {
    /// A failed check leaves no emulator behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            eprintln!("emulator stderr:\n{text}");
        }
        let _ = std::fs::remove_file(&self.stderr);
    }
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
    let ok = prereq::require("nasm", prereq::tool("nasm"), "RQEMU_REQUIRE_KVM")
        && (emu == Emulator::Rqemu
            || prereq::require(
                "qemu-system-x86_64",
                prereq::tool("qemu-system-x86_64"),
                "RQEMU_REQUIRE_QEMU",
            ))
        && prereq::require("/dev/kvm", prereq::kvm(), "RQEMU_REQUIRE_KVM");
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
    );
    let mut qmp = Qmp::connect(&sock);
    guest.next_pass();

    // The guest's writes go to a new overlay from here on.
    qmp.ok(
        "blockdev-snapshot-sync",
        json!({"device": "d0", "snapshot-file": overlay, "snapshot-node-name": "overlay",
               "format": "qcow2"}),
    );
    guest.next_pass();

    // The overlay moves to a new image over the same base, which becomes the active layer.
    qmp.ok(
        "drive-mirror",
        json!({"device": "d0", "job-id": "mirror", "target": mirror, "format": "qcow2",
               "sync": "top", "node-name": "mirror"}),
    );
    qmp.complete_job("mirror");
    guest.next_pass();

    // The active layer goes back down into the base, which the disk ends on.
    qmp.ok("block-commit", json!({"device": "d0", "job-id": "commit"}));
    qmp.complete_job("commit");
    let blocks = qmp.ok("query-block", json!({}));
    let inserted = &blocks[0]["inserted"];
    assert_eq!(inserted["node-name"], "base", "{blocks}");
    assert_eq!(inserted["backing_file_depth"], 0, "{blocks}");
    guest.next_pass();
    let jobs = qmp.ok("query-block-jobs", json!({}));
    assert_eq!(jobs, json!([]));

    let last = guest.stop();
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
