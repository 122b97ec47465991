//! The guest-visible error policy (`-drive`/`-device` `werror=` and `rerror=`): the error
//! injection matrix, and `stop`/`cont` on a running guest.
//!
//! The matrix: policy (report, ignore, stop, and werror's enospc) x read/write x EIO/ENOSPC x
//! IDE/virtio-blk. fixtures/guests/ide-test.asm and virtio-test.asm, assembled with -DERRINJ,
//! each issue four one-at-a-time requests whose sectors a blkdebug configuration fails once:
//! a read with EIO, a read with ENOSPC, a write with EIO, a write with ENOSPC, and print
//! "RESULT k VALUE" (the ATA error register or the virtio status byte; 0 is success). Four
//! runs per device cover the read policies (report, ignore, stop) and the write policies
//! (enospc, report, ignore, stop), the first with the defaults; IDE takes the policy on
//! `-drive`, virtio on `-device`. For every error the test checks what the guest saw:
//! `report` an error (IDE ABRT, or UNC for rqemu's reads; virtio IOERR), `ignore` success,
//! `stop` a BLOCK_IO_ERROR event with action stop, the VM paused in io-error with the
//! drive's io-status failed or nospace, and after `cont` the request retried (the error was
//! injected once) and seen as a success; a stopped write reaches the image, the others do
//! not. BLOCK_IO_ERROR is rate-limited to one a second per device (QEMU 10, and rqemu as
//! it), so beyond a run's first error only the stops' events are sure to come, and checked.
//! The same matrix runs under the reference QEMU.
//!
//! `stop`/`cont`: the virtio guest in its live mode prints a line per pass; after `stop` no
//! line comes for a while and query-status says paused, after `cont` the lines come again.
//!
//! Needs nasm and KVM (skips with the reason, fails under RQEMU_REQUIRE_KVM=1); QEMU's half
//! needs qemu-system-x86_64 (RQEMU_REQUIRE_QEMU=1).

mod guest_rig;
mod prereq;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use guest_rig::{Guest, Qmp};
use serde_json::{json, Value};

/// Big enough for the live mode's region (1 MiB from sector 8192).
const IMAGE_SIZE: usize = 8 << 20;
/// The first sector the guests' requests use (their ERR_BASE / ERR_LBA); request k is at
/// ERR_BASE + 8k.
const ERR_BASE: usize = 6144;
const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Emulator {
    Qemu,
    Rqemu,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Device {
    Ide,
    Virtio,
}

/// What the policy does with one error (BlockErrorAction).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    Report,
    Ignore,
    Stop,
}

/// The action `policy` (None: the default) takes on an error with `errno`.
fn action(policy: Option<&str>, is_read: bool, errno: i32) -> Action {
    let default = if is_read { "report" } else { "enospc" };
    match policy.unwrap_or(default) {
        "report" => Action::Report,
        "ignore" => Action::Ignore,
        "stop" => Action::Stop,
        "enospc" if errno == libc::ENOSPC => Action::Stop,
        "enospc" => Action::Report,
        other => panic!("no policy {other}"),
    }
}

/// Request k: a read for k < 2, EIO for even k.
fn request(k: usize) -> (bool, i32) {
    (
        k < 2,
        if k.is_multiple_of(2) {
            libc::EIO
        } else {
            libc::ENOSPC
        },
    )
}

/// (rerror, werror) of the runs; together every policy of each direction.
const RUNS: [(Option<&str>, Option<&str>); 4] = [
    (None, None),
    (Some("ignore"), Some("report")),
    (Some("stop"), Some("ignore")),
    (Some("report"), Some("stop")),
];

fn scratch(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("errpol-{}-{name}", std::process::id()))
}

fn prerequisites(emu: Emulator) -> bool {
    prereq::guest(emu == Emulator::Qemu)
}

/// Assembles a guest with `defines` into a raw disk image at `image`.
fn guest_image(source: &str, defines: &[&str], image: &Path) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/guests");
    let src = dir.join(source);
    let bin = image.with_extension("bin");
    let status = Command::new("nasm")
        .args(["-f", "bin"])
        .arg(format!("-i{}/", dir.display()))
        .args(defines)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("run nasm");
    assert!(status.success(), "nasm failed on {}", src.display());
    let program = std::fs::read(&bin).unwrap();
    std::fs::remove_file(&bin).unwrap();
    let mut disk = vec![0u8; IMAGE_SIZE];
    disk[..program.len()].copy_from_slice(&program);
    std::fs::write(image, disk).unwrap();
}

/// The blkdebug rules: request k's sector fails once with its errno.
fn blkdebug_config() -> String {
    (0..4)
        .map(|k| {
            let (is_read, errno) = request(k);
            let event = if is_read { "read_aio" } else { "write_aio" };
            let sector = ERR_BASE + 8 * k;
            format!(
                "[inject-error]\nevent = \"{event}\"\nerrno = \"{errno}\"\n\
                 sector = \"{sector}\"\nonce = \"on\"\n\n"
            )
        })
        .collect()
}

fn program(emu: Emulator) -> &'static str {
    match emu {
        Emulator::Qemu => "qemu-system-x86_64",
        Emulator::Rqemu => env!("CARGO_BIN_EXE_rqemu"),
    }
}

/// The command line: the disk through blkdebug, the policies on `-drive` (IDE) or
/// `-device` (virtio), a QMP socket.
fn cmdline(emu: Emulator, dev: Device, files: (&Path, &Path, &Path), run: usize) -> Vec<String> {
    let (config, image, sock) = files;
    let (rerror, werror) = RUNS[run];
    let mut policy = String::new();
    for (key, value) in [("rerror", rerror), ("werror", werror)] {
        if let Some(v) = value {
            policy += &format!(",{key}={v}");
        }
    }
    let file = format!("blkdebug:{}:{}", config.display(), image.display());
    let mut cmd: Vec<String> = [program(emu), "-M", "pc", "-enable-kvm", "-nographic"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    cmd.push("-no-reboot".into());
    match dev {
        Device::Ide => {
            cmd.push("-drive".into());
            cmd.push(format!("file={file},format=raw,if=ide{policy}"));
        }
        Device::Virtio => {
            cmd.push("-drive".into());
            cmd.push(format!("file={file},format=raw,if=none,id=d0"));
            cmd.push("-device".into());
            cmd.push(format!("virtio-blk-pci,drive=d0{policy}"));
        }
    }
    cmd.push("-qmp".into());
    cmd.push(format!("unix:{},server=on,wait=off", sock.display()));
    cmd
}

/// The value the guest prints for request k failed under `report`.
fn reported(emu: Emulator, dev: Device, is_read: bool) -> u32 {
    match (dev, emu, is_read) {
        (Device::Virtio, _, _) => 1, // VIRTIO_BLK_S_IOERR
        // rqemu follows ATA for a read the medium cannot serve: UNC; QEMU aborts.
        (Device::Ide, Emulator::Rqemu, true) => 0x40,
        (Device::Ide, _, _) => 0x04, // ABRT
    }
}

/// Checks a BLOCK_IO_ERROR event against request k and its action; `nospace` is there when
/// the drive keeps an I/O status, which it does when a policy can stop the VM.
fn check_event(event: &Value, device: &str, k: usize, action: Action, run: usize) {
    let (is_read, errno) = request(k);
    let data = &event["data"];
    let name = format!("{action:?}").to_lowercase();
    assert_eq!(data["device"], device, "request {k}: {event}");
    assert_eq!(data["action"], name.as_str(), "request {k}: {event}");
    let op = if is_read { "read" } else { "write" };
    assert_eq!(data["operation"], op, "request {k}: {event}");
    let (rerror, werror) = RUNS[run];
    let iostatus = matches!(werror, None | Some("enospc") | Some("stop")) || rerror == Some("stop");
    let nospace = if iostatus {
        json!(errno == libc::ENOSPC)
    } else {
        Value::Null
    };
    assert_eq!(data["nospace"], nospace, "request {k}: {event}");
    let reason = if errno == libc::EIO {
        "Input/output error"
    } else {
        "No space left on device"
    };
    assert_eq!(data["reason"], reason, "request {k}: {event}");
}

/// One run of the matrix: what the guest sees for each of its four requests, the events,
/// the stop and the retry, and the image afterwards.
fn matrix_run(emu: Emulator, dev: Device, run: usize) {
    let tag = format!("{emu:?}-{dev:?}-{run}");
    let [config, image, sock, stderr] =
        ["cfg", "raw", "sock", "stderr"].map(|n| scratch(&format!("{tag}.{n}")));
    std::fs::write(&config, blkdebug_config()).unwrap();
    let source = match dev {
        Device::Ide => "ide-test.asm",
        Device::Virtio => "virtio-test.asm",
    };
    guest_image(source, &["-DERRINJ"], &image);
    let device = match dev {
        Device::Ide => "ide0-hd0",
        Device::Virtio => "d0",
    };
    let cmd = cmdline(emu, dev, (&config, &image, &sock), run);
    let context = format!("{emu:?} {dev:?} {:?}: {}", RUNS[run], cmd.join(" "));
    let mut guest = Guest::start(&cmd, stderr, TIMEOUT);
    let mut qmp = Qmp::connect(&sock, TIMEOUT);
    let (rerror, werror) = RUNS[run];
    let mut read_retried = false;
    for k in 0..4 {
        let (is_read, errno) = request(k);
        let act = action(if is_read { rerror } else { werror }, is_read, errno);
        if emu == Emulator::Qemu && dev == Device::Ide && is_read && read_retried {
            // Observed with QEMU 10.0.2: once its IDE has retried a stopped PIO read,
            // blkdebug's rule for the next read fires in some runs and not in others; when it
            // does not, the read succeeds without an event (rqemu always fails it as the rule
            // says). So give QEMU a few seconds to finish the read; if it stops instead, the
            // stop is checked below as for rqemu.
            let prefix = format!("RESULT {k} ");
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let mut result = None;
            while let Some(line) =
                guest.line_within(deadline.saturating_duration_since(std::time::Instant::now()))
            {
                if line.starts_with(&prefix) {
                    result = Some(line);
                    break;
                }
            }
            if let Some(line) = result {
                assert_eq!(line, format!("{prefix}00000000"), "{context}");
                continue;
            }
        }
        read_retried |= is_read && act == Action::Stop;
        if act == Action::Stop {
            // The rate limit may hold the stop's event back behind earlier errors' events
            // (or drop those): the stop's own comes within a second.
            let event = loop {
                let event = qmp.event("BLOCK_IO_ERROR");
                if event["data"]["action"] == "stop" {
                    break event;
                }
            };
            check_event(&event, device, k, act, run);
            qmp.event("STOP");
            let status = qmp.ok("query-status", json!({}));
            assert_eq!(
                status,
                json!({"status": "io-error", "running": false}),
                "{context}"
            );
            let blocks = qmp.ok("query-block", json!({}));
            let drive = blocks
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["device"] == device);
            let want = if errno == libc::ENOSPC {
                "nospace"
            } else {
                "failed"
            };
            assert_eq!(drive.unwrap()["io-status"], want, "{context}: {blocks}");
            // `cont` clears the status (the guest may fail again at once, so that is seen
            // by a later stop of another errno: the first error's status would stick).
            qmp.ok("cont", json!({}));
            qmp.event("RESUME");
        }
        let prefix = format!("RESULT {k} ");
        let line = guest.until(&prefix, |l| l.starts_with(&prefix));
        let value = u32::from_str_radix(&line[prefix.len()..], 16).expect("a hex value");
        let want = match act {
            Action::Report => reported(emu, dev, is_read),
            Action::Ignore | Action::Stop => 0,
        };
        assert_eq!(value, want, "request {k} ({act:?}) {context}");
        if k == 0 && act != Action::Stop {
            // The first error of a period is announced at once.
            let event = qmp.event("BLOCK_IO_ERROR");
            check_event(&event, device, k, act, run);
        }
    }
    guest.until("DONE", |l| l == "DONE");
    guest.wait_exit();
    let disk = std::fs::read(&image).unwrap();
    for k in 2..4 {
        let (is_read, errno) = request(k);
        let act = action(werror, is_read, errno);
        let at = (ERR_BASE + 8 * k) * 512;
        let sector = &disk[at..at + 512];
        let written = match dev {
            Device::Ide => {
                (0..512).all(|i| sector[i] == (0xE0 + k as u8).wrapping_add(7 * i as u8))
            }
            Device::Virtio => sector
                .chunks_exact(4)
                .enumerate()
                .all(|(j, d)| d == (0xE000_0000u32 | (k as u32) << 12 | j as u32).to_le_bytes()),
        };
        let untouched = sector.iter().all(|&b| b == 0);
        assert!(
            if act == Action::Stop {
                written
            } else {
                untouched
            },
            "request {k} ({act:?}) left sector {} {}: {context}",
            ERR_BASE + 8 * k,
            if written { "written" } else { "not written" }
        );
    }
    for p in [config, image, sock] {
        let _ = std::fs::remove_file(p);
    }
}

fn matrix(emu: Emulator, dev: Device) {
    if !prerequisites(emu) {
        return;
    }
    for run in 0..RUNS.len() {
        matrix_run(emu, dev, run);
    }
}

#[test]
fn error_policy_matrix_ide_rqemu() {
    matrix(Emulator::Rqemu, Device::Ide);
}

#[test]
fn error_policy_matrix_virtio_rqemu() {
    matrix(Emulator::Rqemu, Device::Virtio);
}

#[test]
fn error_policy_matrix_ide_qemu() {
    matrix(Emulator::Qemu, Device::Ide);
}

#[test]
fn error_policy_matrix_virtio_qemu() {
    matrix(Emulator::Qemu, Device::Virtio);
}

/// `stop` pauses a running guest (its COM1 output stops advancing, query-status says
/// paused, STOP), `cont` resumes it (RESUME, the output advances again).
fn stop_and_cont(emu: Emulator) {
    if !prerequisites(emu) {
        return;
    }
    let tag = format!("{emu:?}-live");
    let [image, sock, stderr] = ["raw", "sock", "stderr"].map(|n| scratch(&format!("{tag}.{n}")));
    guest_image("virtio-test.asm", &["-DLIVE", "-DLIVE_MIB=1"], &image);
    let mut cmd: Vec<String> = [program(emu), "-M", "pc", "-enable-kvm", "-nographic"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    cmd.extend([
        "-no-reboot".into(),
        "-drive".into(),
        format!("file={},format=raw,if=virtio", image.display()),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", sock.display()),
    ]);
    let mut guest = Guest::start(&cmd, stderr, TIMEOUT);
    let mut qmp = Qmp::connect(&sock, TIMEOUT);
    let pass = |l: &str| l.starts_with("LIVE PASS ");
    guest.until("a pass", pass);
    guest.until("another pass", pass);
    qmp.ok("stop", json!({}));
    qmp.event("STOP");
    let status = qmp.ok("query-status", json!({}));
    assert_eq!(status, json!({"status": "paused", "running": false}));
    // A line already on its way may still arrive; after that, nothing while paused.
    while guest.line_within(Duration::from_millis(500)).is_some() {}
    let quiet = guest.line_within(Duration::from_secs(3));
    assert!(quiet.is_none(), "the guest ran while paused: {quiet:?}");
    qmp.ok("cont", json!({}));
    qmp.event("RESUME");
    let status = qmp.ok("query-status", json!({}));
    assert_eq!(status, json!({"status": "running", "running": true}));
    guest.until("a pass after cont", pass);
    guest.until("another pass after cont", pass);
    qmp.ok("quit", json!({}));
    let _ = std::fs::remove_file(image);
    let _ = std::fs::remove_file(sock);
}

#[test]
fn stop_pauses_and_cont_resumes_a_running_guest_under_rqemu() {
    stop_and_cont(Emulator::Rqemu);
}

#[test]
fn stop_pauses_and_cont_resumes_a_running_guest_under_qemu() {
    stop_and_cont(Emulator::Qemu);
}
