//! Boots fixtures/guests/virtio-test.asm under an emulator with a legacy virtio-blk disk and
//! checks its verdicts on COM1 and the image bytes it left on the host.
//!
//! The guest (a SeaBIOS-booted MBR program) finds the device by PCI config cycles, drives the
//! virtqueue itself with 64 requests in flight of every type, then submits malformed chains
//! and checks the device refuses them and recovers after a reset. Today the emulator is the
//! reference QEMU; [`run_guest`] takes any command line, so the same test can boot `rqemu`.
//! Needs nasm, QEMU and KVM: skips with the reason when one is missing, fails instead when
//! RQEMU_REQUIRE_KVM=1 / RQEMU_REQUIRE_QEMU=1.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE_SIZE: usize = 4 << 20;
const SERIAL: &str = "RQEMU-VIRTIO-SERIAL1";
const LEGACY_TESTS: [&str; 7] = [
    "pci-find",
    "init",
    "mixed-64",
    "read-64",
    "bad-addr",
    "desc-loop",
    "no-status",
];
const MODERN_TESTS: [&str; 2] = ["modern-read", "modern-needs-reset"];

/// Skips (returns false) with a printed reason, or panics when `require_var` is set.
fn available(ok: bool, what: &str, require_var: &str) -> bool {
    if !ok {
        if std::env::var(require_var).is_ok_and(|v| v == "1") {
            panic!("{what} is required ({require_var}=1) but not available");
        }
        eprintln!("skipping: {what} not available");
    }
    ok
}

fn have_kvm() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Assembles the guest into the test's target directory.
fn build_guest() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/guests/virtio-test.asm");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("virtio-test.bin");
    let status = Command::new("nasm")
        .args(["-f", "bin", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run nasm");
    assert!(status.success(), "nasm failed on {}", src.display());
    out
}

/// The host-side block k at sector 4096 + 8k: dword j = 0x5A000000 | k << 12 | j.
fn host_block(k: u32) -> Vec<u8> {
    (0..1024u32)
        .flat_map(|j| (0x5a00_0000 | k << 12 | j).to_le_bytes())
        .collect()
}

/// The block the guest writes at sector 2048 + 8i.
fn guest_block(i: u32) -> Vec<u8> {
    (0..1024u32)
        .flat_map(|j| (0xa500_0000 | i << 12 | j).to_le_bytes())
        .collect()
}

/// A raw image: the guest program, scratch filled with 0xEE, the host blocks.
fn raw_image(program: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; IMAGE_SIZE];
    img[..program.len()].copy_from_slice(program);
    img[2048 * 512..(2048 + 48 * 8) * 512].fill(0xee);
    for k in 0..24 {
        let at = (4096 + 8 * k as usize) * 512;
        img[at..at + 4096].copy_from_slice(&host_block(k));
    }
    img
}

/// What the guest must have left in the image.
fn check_image(img: &[u8]) {
    let block = |sector: usize| &img[sector * 512..sector * 512 + 4096];
    for i in 0..32u32 {
        assert!(
            block(2048 + 8 * i as usize) == guest_block(i),
            "written block {i}"
        );
    }
    for i in 32..40 {
        assert!(
            block(2048 + 8 * i).iter().all(|&b| b == 0),
            "zeroed block {i}"
        );
    }
    for k in 0..24u32 {
        assert!(
            block(4096 + 8 * k as usize) == host_block(k),
            "host block {k}"
        );
    }
}

/// The reference emulator's command line for the guest on `image` (`format` raw or qcow2);
/// the device is legacy-only, or transitional (legacy + modern) with `modern`.
pub fn qemu_cmdline(image: &Path, format: &str, modern: bool) -> Vec<String> {
    let drive = format!("file={},format={format},if=none,id=d0", image.display());
    let transport = if modern { "" } else { ",disable-modern=on" };
    let device = format!("virtio-blk-pci,drive=d0{transport},serial={SERIAL}");
    [
        "qemu-system-x86_64",
        "-M",
        "pc",
        "-enable-kvm",
        "-nographic",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["-drive".into(), drive, "-device".into(), device])
    .collect()
}

/// Runs an emulator command line to completion (the guest resets it away) and returns what
/// it printed on stdout (the guest's COM1) and stderr.
pub fn run_guest(cmdline: &[String], timeout: Duration) -> (String, String) {
    let mut child = Command::new(&cmdline[0])
        .args(&cmdline[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", cmdline[0]));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("guest did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    let mut err = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (out, err)
}

/// Checks every test passed and the guest finished; the modern tests ran only if `modern`.
fn check_verdicts(out: &str, err: &str, modern: bool) {
    let context = format!("guest output:\n{out}\nstderr:\n{err}");
    assert!(!out.contains("FAIL"), "{context}");
    let modern_tests = if modern { &MODERN_TESTS[..] } else { &[] };
    assert_eq!(out.contains("SKIP modern"), !modern, "{context}");
    for name in LEGACY_TESTS.iter().chain(modern_tests) {
        let line = format!("PASS {name}");
        assert!(
            out.lines().any(|l| l.trim_end() == line),
            "missing {line}\n{context}"
        );
    }
    assert!(out.contains("DONE"), "{context}");
}

fn prerequisites() -> bool {
    available(have("nasm"), "nasm", "RQEMU_REQUIRE_QEMU")
        && available(
            have("qemu-system-x86_64"),
            "qemu-system-x86_64",
            "RQEMU_REQUIRE_QEMU",
        )
        && available(have_kvm(), "/dev/kvm", "RQEMU_REQUIRE_KVM")
}

fn scratch(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()))
}

fn raw_run(name: &str, modern: bool) {
    if !prerequisites() {
        return;
    }
    let program = std::fs::read(build_guest()).unwrap();
    let image = scratch(name);
    std::fs::write(&image, raw_image(&program)).unwrap();
    let (out, err) = run_guest(
        &qemu_cmdline(&image, "raw", modern),
        Duration::from_secs(180),
    );
    check_verdicts(&out, &err, modern);
    check_image(&std::fs::read(&image).unwrap());
    std::fs::remove_file(&image).unwrap();
}

#[test]
fn virtio_guest_on_raw_image_under_qemu() {
    raw_run("virtio-guest.raw", false);
}

#[test]
fn virtio_guest_on_transitional_device_under_qemu() {
    raw_run("virtio-guest-modern.raw", true);
}

#[test]
fn virtio_guest_on_qcow2_image_under_qemu() {
    if !prerequisites() || !available(have("qemu-img"), "qemu-img", "RQEMU_REQUIRE_QEMU") {
        return;
    }
    let program = std::fs::read(build_guest()).unwrap();
    let raw = scratch("virtio-guest-src.raw");
    let qcow2 = scratch("virtio-guest.qcow2");
    let back = scratch("virtio-guest-back.raw");
    std::fs::write(&raw, raw_image(&program)).unwrap();
    let convert = |args: &[&str], from: &Path, to: &Path| {
        let ok = Command::new("qemu-img")
            .arg("convert")
            .args(args)
            .arg(from)
            .arg(to)
            .status();
        assert!(ok.unwrap().success(), "qemu-img convert {args:?}");
    };
    convert(&["-f", "raw", "-O", "qcow2"], &raw, &qcow2);
    let (out, err) = run_guest(
        &qemu_cmdline(&qcow2, "qcow2", false),
        Duration::from_secs(180),
    );
    check_verdicts(&out, &err, false);
    convert(&["-f", "qcow2", "-O", "raw"], &qcow2, &back);
    check_image(&std::fs::read(&back).unwrap());
    for p in [raw, qcow2, back] {
        std::fs::remove_file(p).unwrap();
    }
}
