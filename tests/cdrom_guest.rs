//! The CD-ROM test guest (fixtures/guests/cdrom-test.asm) on an El Torito ISO built here:
//! SeaBIOS boots it from the ATAPI drive, it reads through int13 and ATAPI PACKET commands,
//! and powers the machine off through ACPI; under rqemu and under the reference QEMU, the
//! same PASS lines and a clean exit. Then `-boot` picks the disk or the CD of a machine with
//! both.
//!
//! Needs nasm, SeaBIOS and /dev/kvm (and qemu-system-x86_64 for the reference run); each
//! missing piece skips with a reason, or fails under RQEMU_REQUIRE_KVM=1 / RQEMU_REQUIRE_QEMU=1.

#[path = "cdrom_guest/iso.rs"]
mod iso;
mod prereq;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Blocks of the test ISO, and the first of its pattern blocks.
const ISO_BLOCKS: usize = 64;
const PAT_LBA: usize = 40;

/// What the guest must report as passed.
const EXPECTED: &[&str] = &[
    "boot-drive",
    "int13-ext-read",
    "atapi-inquiry",
    "atapi-read-capacity",
    "atapi-read10",
    "atapi-sense-out-of-range",
    "atapi-no-medium",
    "atapi-load",
];

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rqemu-cdrom-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Assembles the guest and wraps it in the test ISO with its pattern blocks.
fn build_iso(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/guests");
    let bin = dir.join("cdrom-test.bin");
    let status = Command::new("nasm")
        .args(["-f", "bin", "-w+all"])
        .arg(format!("-I{}/", src.display()))
        .arg(format!("-DISO_BLOCKS={ISO_BLOCKS}"))
        .arg(format!("-DPAT_LBA={PAT_LBA}"))
        .arg("-o")
        .arg(&bin)
        .arg(src.join("cdrom-test.asm"))
        .status()
        .expect("run nasm");
    assert!(status.success(), "nasm failed on cdrom-test.asm");
    let mut image = iso::build(&std::fs::read(&bin).unwrap(), ISO_BLOCKS);
    for lba in PAT_LBA..ISO_BLOCKS {
        let block = &mut image[lba * iso::BLOCK..(lba + 1) * iso::BLOCK];
        for (i, b) in block.iter_mut().enumerate() {
            *b = (lba + i) as u8 ^ (i >> 8) as u8;
        }
    }
    let path = dir.join("cdrom-test.iso");
    std::fs::write(&path, image).unwrap();
    path
}

/// Runs an emulator until it exits; returns COM1's output and the exit status.
fn boot(mut cmd: Command) -> (String, ExitStatus) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("guest did not finish; serial:\n{}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (reader.join().unwrap(), status)
}

/// The guest's verdict lines, in order.
fn verdicts(serial: &str) -> Vec<String> {
    serial
        .lines()
        .map(|l| l.trim_matches(|c: char| c.is_control()))
        .filter(|l| l.starts_with("PASS ") || l.starts_with("FAIL "))
        .map(str::to_string)
        .collect()
}

fn expected_verdicts() -> Vec<String> {
    EXPECTED.iter().map(|n| format!("PASS {n}")).collect()
}

fn base_args(cmd: &mut Command) {
    cmd.args([
        "-M",
        "pc",
        "-nographic",
        "-no-reboot",
        "-m",
        "64",
        "-net",
        "none",
    ])
    .args(["-bios", SEABIOS]);
}

fn rqemu() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rqemu"));
    base_args(&mut c);
    c
}

fn prerequisites() -> bool {
    use prereq::{kvm, require, tool};
    require("/dev/kvm", kvm(), "RQEMU_REQUIRE_KVM")
        && require(SEABIOS, Path::new(SEABIOS).exists(), "RQEMU_REQUIRE_QEMU")
        && require("nasm", tool("nasm"), "RQEMU_REQUIRE_QEMU")
}

#[test]
fn cdrom_guest_passes_and_powers_off_under_rqemu() {
    if !prerequisites() {
        return;
    }
    let iso = build_iso(&scratch("rqemu"));
    if let Ok(keep) = std::env::var("RQEMU_KEEP_ISO") {
        std::fs::copy(&iso, keep).unwrap(); // scripts/bench-cdrom.sh boots it
    }
    let mut cmd = rqemu();
    cmd.arg("-cdrom").arg(&iso);
    let (serial, status) = boot(cmd);
    assert_eq!(verdicts(&serial), expected_verdicts(), "serial:\n{serial}");
    assert!(serial.contains("DONE"), "serial:\n{serial}");
    assert!(status.success(), "rqemu exited with {status}");
}

#[test]
fn cdrom_guest_passes_the_same_way_under_qemu() {
    if !prerequisites()
        || !prereq::require(
            "qemu-system-x86_64",
            prereq::tool("qemu-system-x86_64"),
            "RQEMU_REQUIRE_QEMU",
        )
    {
        return;
    }
    let iso = build_iso(&scratch("qemu"));
    let mut cmd = Command::new("qemu-system-x86_64");
    base_args(&mut cmd);
    cmd.arg("-enable-kvm").arg("-cdrom").arg(&iso);
    let (serial, status) = boot(cmd);
    assert_eq!(verdicts(&serial), expected_verdicts(), "serial:\n{serial}");
    assert!(status.success(), "qemu exited with {status}");
}

/// A disk whose boot sector prints "DISK" on COM1 and resets the machine.
fn disk_image(dir: &Path) -> PathBuf {
    let mut mbr = vec![0xBA, 0xF8, 0x03]; // mov dx, 0x3f8
    for &c in b"DISK\n" {
        mbr.extend_from_slice(&[0xB0, c, 0xEE]); // mov al, c; out dx, al
    }
    mbr.extend_from_slice(&[0xB0, 0xFE, 0xE6, 0x64, 0xF4, 0xEB, 0xFD]); // reset via 0x64
    mbr.resize(510, 0);
    mbr.extend_from_slice(&[0x55, 0xAA]);
    mbr.resize(1 << 20, 0);
    let path = dir.join("disk.img");
    std::fs::write(&path, mbr).unwrap();
    path
}

#[test]
fn boot_order_picks_the_disk_or_the_cd() {
    if !prerequisites() {
        return;
    }
    let dir = scratch("order");
    let (iso, disk) = (build_iso(&dir), disk_image(&dir));
    let booted = |order: &str, cd_as_device: bool| {
        let mut cmd = rqemu();
        cmd.arg("-drive")
            .arg(format!("file={},format=raw,if=ide,index=0", disk.display()));
        if cd_as_device {
            cmd.arg("-drive")
                .arg(format!("file={},format=raw,if=none,id=cd", iso.display()))
                .args(["-device", "ide-cd,drive=cd,bus=ide.1,unit=0"]);
        } else {
            cmd.arg("-cdrom").arg(&iso);
        }
        cmd.args(["-boot", order]);
        let (serial, status) = boot(cmd);
        assert!(status.success(), "-boot {order}: exit {status}\n{serial}");
        serial
    };
    // SeaBIOS names what it boots; the disk's boot sector prints "DISK" (which SeaBIOS's
    // own console output may interleave), the CD's program "cdrom-test".
    let (from_cd, from_disk) = ("Booting from DVD/CD", "Booting from Hard Disk");
    let cd_first = booted("order=dc", false);
    assert!(
        cd_first.contains(from_cd) && cd_first.contains("cdrom-test"),
        "{cd_first}"
    );
    assert!(!cd_first.contains(from_disk), "{cd_first}");
    let disk_first = booted("order=cd", false);
    assert!(
        disk_first.contains(from_disk) && !disk_first.contains(from_cd),
        "{disk_first}"
    );
    let once = booted("order=c,once=d", true);
    assert!(once.contains("cdrom-test"), "{once}");
}
