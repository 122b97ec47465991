//! The IDE test guests (fixtures/guests/ide-*.asm) booted by SeaBIOS from raw and qcow2
//! images, under rqemu and under the reference QEMU: every PASS line present, no FAIL, and
//! the sectors the guest wrote are on the image afterwards.
//!
//! The emulator is a parameter ([`Emulator`]): the same checks run against both by building
//! each one's command line.
//!
//! Needs nasm, qemu-system-x86_64, qemu-img, SeaBIOS and /dev/kvm (qemu-img builds the images
//! and reads them back for both emulators); each missing piece skips the test with a reason,
//! or fails it when RQEMU_REQUIRE_KVM=1 / RQEMU_REQUIRE_QEMU=1. rqemu also boots it from
//! `rbd:` drives on a throw-away Ceph cluster (skipped without Ceph, RQEMU_REQUIRE_CEPH=1).

mod ceph;
mod prereq;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";
/// The disk of the test guest: 200 GiB, so that LBA48 addresses above 2^28 exist.
const DISK_SECTORS: u64 = 200 << 21;
const GUEST_TIMEOUT: Duration = Duration::from_secs(180);

/// Tests the guest must report as passed.
const EXPECTED: &[&str] = &[
    "int13-chs-load",
    "int13-ext-check",
    "int13-chs-write-read",
    "int13-ext-write-read",
    "int13-ext-out-of-range",
    "ata-identify",
    "ata-read-write-sectors",
    "ata-read-write-multiple",
    "ata-lba48-sectors-ext",
    "ata-lba48-multiple-ext",
    "ata-flush-cache",
    "ata-out-of-range",
    "ata-unknown-command",
    "ata-soft-reset",
];

/// The sectors the guest writes: (LBA, sectors, first tag); byte i of sector k is
/// `tag + k + 7 * i`.
const WRITTEN: &[(u64, u64, u8)] = &[
    (50, 1, 0x70),
    (100, 2, 0x10),
    (200, 2, 0x20),
    (300, 11, 0x30),
    (0x1234_5678, 2, 0x50),
    (0x1800_0000, 20, 0x60),
];

/// Builds the command line of an emulator that boots `image` (of `format`) as the IDE
/// primary master, with COM1 on stdout and a guest reset ending the process.
type Emulator = fn(image: &Path, format: &str) -> Command;

/// QEMU 10 as the reference: `-M pc` with KVM.
fn qemu(image: &Path, format: &str) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "pc",
        "-enable-kvm",
        "-nographic",
        "-no-reboot",
        "-m",
        "64",
    ])
    .args(["-bios", SEABIOS, "-drive"])
    .arg(format!(
        "file={},format={format},if=ide,index=0,media=disk",
        image.display()
    ));
    c
}

/// rqemu with the disk as `-drive if=ide,index=0`.
fn rqemu(image: &Path, format: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rqemu"));
    c.args(["-M", "pc", "-nographic", "-no-reboot", "-m", "64"])
        .args(["-bios", SEABIOS, "-drive"])
        .arg(format!(
            "file={},format={format},if=ide,index=0,media=disk",
            image.display()
        ));
    c
}

/// rqemu with the disk as `-drive if=none` plus `-device ide-hd` on ide.0 unit 0.
fn rqemu_ide_hd(image: &Path, format: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rqemu"));
    c.args(["-nographic", "-no-reboot", "-m", "64", "-drive"])
        .arg(format!(
            "file={},format={format},if=none,id=disk0",
            image.display()
        ))
        .args(["-device", "ide-hd,drive=disk0,bus=ide.0,unit=0"]);
    c
}

/// Checks KVM, QEMU, SeaBIOS and nasm.
fn prerequisites() -> bool {
    use prereq::{kvm, require, tool};
    let qemu = tool("qemu-system-x86_64") && tool("qemu-img");
    require("/dev/kvm", kvm(), "RQEMU_REQUIRE_KVM")
        && require("qemu-system-x86_64/qemu-img", qemu, "RQEMU_REQUIRE_QEMU")
        && require(SEABIOS, Path::new(SEABIOS).exists(), "RQEMU_REQUIRE_QEMU")
        && require("nasm", tool("nasm"), "RQEMU_REQUIRE_QEMU")
}

/// Assembles fixtures/guests/`name`.asm with `defines` into `dir`.
fn build_guest(name: &str, defines: &[String], dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/guests");
    let out = dir.join(format!("{name}.bin"));
    let status = Command::new("nasm")
        .args(["-f", "bin", "-w+all"])
        .arg(format!("-I{}/", src.display()))
        .args(defines)
        .arg("-o")
        .arg(&out)
        .arg(src.join(format!("{name}.asm")))
        .status()
        .expect("run nasm");
    assert!(status.success(), "nasm failed on {name}.asm");
    out
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw image of `size` bytes (sparse) starting with `boot`.
fn raw_image(path: &Path, size: u64, boot: &Path) {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(path)
        .arg(size.to_string()));
    let code = std::fs::read(boot).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &code, 0).unwrap();
}

/// Runs the emulator until it exits (the guest resets) and returns what COM1 printed.
fn boot(mut cmd: Command) -> String {
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
        out
    });
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
            panic!("guest did not finish in {GUEST_TIMEOUT:?}; serial so far:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    String::from_utf8_lossy(&reader.join().unwrap()).into_owned()
}

/// Every expected test passed and none failed.
fn check_report(serial: &str, expected: &[&str]) {
    let lines: Vec<&str> = serial
        .lines()
        .map(|l| l.trim_matches(|c: char| c.is_control()))
        .collect();
    let failed: Vec<&&str> = lines.iter().filter(|l| l.contains("FAIL ")).collect();
    assert!(
        failed.is_empty(),
        "guest reported failures: {failed:?}\n{serial}"
    );
    for name in expected {
        let pass = format!("PASS {name}");
        assert!(
            lines.iter().any(|l| l.ends_with(&pass)),
            "no '{pass}' line; serial:\n{serial}"
        );
    }
}

/// The bytes a guest write left in sector `k` of a write with tag `tag`.
fn expected_sector(tag: u8, k: u64) -> Vec<u8> {
    (0..512u32)
        .map(|i| tag.wrapping_add(k as u8).wrapping_add((7 * i) as u8))
        .collect()
}

/// Reads `count` sectors at `lba` through qemu-img (any format, backing files included).
fn read_sectors(image: &Path, format: &str, lba: u64, count: u64, scratch: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(scratch);
    run(Command::new("qemu-img")
        .args(["dd", "-f", format, "-O", "raw", "bs=512"])
        .arg(format!("skip={lba}"))
        // qemu-img dd counts the skipped blocks too.
        .arg(format!("count={}", lba + count))
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", scratch.display())));
    std::fs::read(scratch).unwrap()
}

/// The image holds every sector the guest wrote.
fn check_written(image: &Path, format: &str, scratch: &Path) {
    for &(lba, count, tag) in WRITTEN {
        let got = read_sectors(image, format, lba, count, scratch);
        let want: Vec<u8> = (0..count).flat_map(|k| expected_sector(tag, k)).collect();
        assert!(
            got == want,
            "sectors {lba}+{count} of {} differ",
            image.display()
        );
    }
}

/// Where the test images live: host files, or rbd images of a throw-away cluster.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    Local,
    Rbd,
}

/// The base image with the guest at sector 0, on `store`; None when the store is missing.
fn base_image(store: Store, dir: &Path, guest: &Path, tag: &str) -> Option<PathBuf> {
    match store {
        Store::Local => {
            let base = dir.join("base.raw");
            raw_image(&base, DISK_SECTORS * 512, guest);
            Some(base)
        }
        Store::Rbd => {
            let c = ceph::cluster()?;
            let base = c.image(&format!("ide-{tag}-base"));
            let rqemu_img = env!("CARGO_BIN_EXE_rqemu-img");
            run(Command::new(rqemu_img)
                .args(["create", "-q", "-f", "raw", &base])
                .arg((DISK_SECTORS * 512).to_string()));
            let len = std::fs::metadata(guest).unwrap().len();
            let write = format!("write -s {} 0 {len}", guest.display());
            run(Command::new(env!("CARGO_BIN_EXE_rqemu-io"))
                .args(["-f", "raw", "-c", &write, &base]));
            Some(PathBuf::from(base))
        }
    }
}

fn ide_test_guest(emulator: Emulator, qcow2: bool, store: Store) {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let defines = [format!("-DDISK_SECTORS={DISK_SECTORS}")];
    let guest = build_guest("ide-test", &defines, dir.path());
    let tag = if qcow2 { "qcow2" } else { "raw" };
    let Some(base) = base_image(store, dir.path(), &guest, tag) else {
        return;
    };
    let (image, format) = if qcow2 {
        let top = match store {
            Store::Local => dir.path().join("top.qcow2"),
            Store::Rbd => PathBuf::from(ceph::cluster().unwrap().image("ide-qcow2-top")),
        };
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(&top));
        (top, "qcow2")
    } else {
        (base.clone(), "raw")
    };
    let serial = boot(emulator(&image, format));
    check_report(&serial, EXPECTED);
    let scratch = dir.path().join("sectors.raw");
    // Read back by QEMU's tools; an rbd image as Ceph's own `rbd export-diff` exports it
    // (`rbd export` walks all 200 GiB, minutes even when sparse), into a sparse host file.
    // An exported overlay still names its backing file on rbd.
    let (image, base) = match store {
        Store::Local => (image, base),
        Store::Rbd => {
            let c = ceph::cluster().unwrap();
            let exported = |rbd: &Path| {
                let name = rbd.to_str().unwrap();
                let name = name["rbd:rbd/".len()..].split(':').next().unwrap();
                let local = dir.path().join(format!("export-{name}"));
                c.export_sparse(name, &local);
                local
            };
            let top = exported(&image);
            (top, if qcow2 { exported(&base) } else { base })
        }
    };
    check_written(&image, format, &scratch);
    if qcow2 {
        // Writes went to the overlay; the backing file still reads zero there.
        let below = read_sectors(&base, "raw", 50, 1, &scratch);
        assert!(
            below.iter().all(|b| *b == 0),
            "guest wrote through to the backing file"
        );
    }
}

#[test]
fn ide_test_guest_passes_on_a_raw_image_under_qemu() {
    ide_test_guest(qemu, false, Store::Local);
}

#[test]
fn ide_test_guest_passes_on_a_qcow2_overlay_under_qemu() {
    ide_test_guest(qemu, true, Store::Local);
}

#[test]
fn ide_test_guest_passes_on_a_raw_image_under_rqemu() {
    ide_test_guest(rqemu_ide_hd, false, Store::Local);
}

#[test]
fn ide_test_guest_passes_on_a_qcow2_overlay_under_rqemu() {
    ide_test_guest(rqemu, true, Store::Local);
}

#[test]
fn ide_test_guest_passes_on_an_rbd_raw_image_under_rqemu() {
    ide_test_guest(rqemu, false, Store::Rbd);
}

#[test]
fn ide_test_guest_passes_on_an_rbd_qcow2_with_rbd_backing_under_rqemu() {
    ide_test_guest(rqemu, true, Store::Rbd);
}

/// `snapshot=on`: the guest's writes go to a temporary overlay; the image is left untouched.
#[test]
fn ide_test_guest_writes_nothing_to_the_image_with_snapshot_on_under_rqemu() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let defines = [format!("-DDISK_SECTORS={DISK_SECTORS}")];
    let guest = build_guest("ide-test", &defines, dir.path());
    let image = dir.path().join("base.raw");
    raw_image(&image, DISK_SECTORS * 512, &guest);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rqemu"));
    cmd.args(["-nographic", "-no-reboot", "-m", "64", "-drive"])
        .arg(format!(
            "file={},format=raw,if=ide,snapshot=on",
            image.display()
        ));
    check_report(&boot(cmd), EXPECTED);
    let scratch = dir.path().join("sectors.raw");
    for &(lba, count, _) in WRITTEN {
        let got = read_sectors(&image, "raw", lba, count, &scratch);
        assert!(got.iter().all(|b| *b == 0), "sectors {lba}+{count} written");
    }
}

#[test]
fn ide_bench_guest_runs_under_qemu() {
    ide_bench_guest(qemu);
}

#[test]
fn ide_bench_guest_runs_under_rqemu() {
    ide_bench_guest(rqemu);
}

/// The throughput guest runs to its PASS line and reports its TSC ticks.
fn ide_bench_guest(emulator: Emulator) {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mib = 4;
    let guest = build_guest("ide-bench", &[format!("-DBENCH_MIB={mib}")], dir.path());
    let image = dir.path().join("bench.raw");
    raw_image(&image, (mib + 1) << 20, &guest);
    let start = Instant::now();
    let serial = boot(emulator(&image, "raw"));
    check_report(&serial, &["ide-bench"]);
    let bench = serial
        .lines()
        .find(|l| l.contains("BENCH bytes="))
        .expect("BENCH line");
    eprintln!(
        "{} ({:?} wall, boot included)",
        bench.trim(),
        start.elapsed()
    );
    assert!(
        bench.contains(&format!("bytes=0x{:08X}", mib << 20)),
        "{bench}"
    );
}
