//! Boots fixtures/guests/virtio-test.asm under an emulator (the reference QEMU, and rqemu)
//! with a virtio-blk-pci disk and checks its verdicts on COM1 and the image bytes it left on
//! the host.
//!
//! The guest (a SeaBIOS-booted MBR program) finds the device by PCI config cycles, drives the
//! virtqueue itself with 64 requests in flight of every type, then submits malformed chains
//! and checks the device refuses them and recovers after a reset. Each emulator runs it on
//! the three transports (legacy-only, transitional, modern-only) over a raw image, and on a
//! qcow2 image. Needs nasm and KVM (and QEMU for its half, qemu-img for qcow2): skips with the
//! reason when one is missing, fails instead when RQEMU_REQUIRE_KVM=1 / RQEMU_REQUIRE_QEMU=1.
//! rqemu also runs it over `rbd:` drives on a throw-away Ceph cluster (RQEMU_REQUIRE_CEPH).

mod ceph;
mod prereq;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE_SIZE: usize = 4 << 20;
const SERIAL: &str = "RQEMU-VIRTIO-SERIAL1";
const LEGACY_TESTS: [&str; 8] = [
    "pci-find",
    "init",
    "mixed-64",
    "read-64",
    "bad-addr",
    "desc-loop",
    "no-status",
    "intx",
];
const MODERN_TESTS: [&str; 2] = ["modern-read", "modern-needs-reset"];

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

/// Which register interfaces the device has (`disable-modern=on`, default, `disable-legacy=on`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transport {
    /// Legacy only.
    Legacy,
    /// Legacy and modern.
    Transitional,
    /// Modern only.
    Modern,
}

/// The emulator under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Emulator {
    /// The reference qemu-system-x86_64.
    Qemu,
    /// This project's rqemu.
    Rqemu,
}

/// The command line for the guest on `image` (`format` raw or qcow2).
pub fn cmdline(emu: Emulator, image: &Path, format: &str, transport: Transport) -> Vec<String> {
    let drive = format!("file={},format={format},if=none,id=d0", image.display());
    let props = match transport {
        Transport::Legacy => ",disable-modern=on",
        Transport::Transitional => "",
        Transport::Modern => ",disable-legacy=on",
    };
    let device = format!("virtio-blk-pci,drive=d0{props},serial={SERIAL}");
    let program = match emu {
        Emulator::Qemu => "qemu-system-x86_64",
        Emulator::Rqemu => env!("CARGO_BIN_EXE_rqemu"),
    };
    [
        program,
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
/// it printed on stdout (the guest's COM1) and stderr. The emulator must exit successfully:
/// malformed chains must not bring it down.
pub fn run_guest(cmdline: &[String], timeout: Duration) -> (String, String) {
    let mut child = Command::new(&cmdline[0])
        .args(&cmdline[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", cmdline[0]));
    // Drain the pipes while waiting, so a chatty emulator cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("guest did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out_reader.join().unwrap();
    let err = err_reader.join().unwrap();
    assert!(
        status.success(),
        "{} exited with {status}\nstdout:\n{out}\nstderr:\n{err}",
        cmdline[0]
    );
    (out, err)
}

/// Checks every test passed and the guest finished; the modern tests run unless legacy-only.
fn check_verdicts(out: &str, err: &str, transport: Transport) {
    let context = format!("guest output:\n{out}\nstderr:\n{err}");
    assert!(!out.contains("FAIL"), "{context}");
    let modern = transport != Transport::Legacy;
    let modern_tests = if modern { &MODERN_TESTS[..] } else { &[] };
    assert_eq!(out.contains("SKIP modern"), !modern, "{context}");
    assert_eq!(
        out.contains("MODE modern-only"),
        transport == Transport::Modern,
        "{context}"
    );
    for name in LEGACY_TESTS.iter().chain(modern_tests) {
        let line = format!("PASS {name}");
        assert!(
            out.lines().any(|l| l.trim_end() == line),
            "missing {line}\n{context}"
        );
    }
    assert!(out.contains("DONE"), "{context}");
}

fn prerequisites(emu: Emulator) -> bool {
    prereq::guest(emu == Emulator::Qemu)
}

fn scratch(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()))
}

const TIMEOUT: Duration = Duration::from_secs(180);

fn raw_run(emu: Emulator, transport: Transport) {
    if !prerequisites(emu) {
        return;
    }
    let program = std::fs::read(build_guest()).unwrap();
    let image = scratch(&format!("virtio-guest-{emu:?}-{transport:?}.raw"));
    std::fs::write(&image, raw_image(&program)).unwrap();
    let mut cmd = cmdline(emu, &image, "raw", transport);
    let trace = image.with_extension("trace");
    if matches!(emu, Emulator::Rqemu) {
        cmd.push("-trace".into());
        let events = "virtio_pci_intx,virtio_pci_gsi";
        cmd.push(format!("{events},file={}", trace.display()));
    }
    let (out, err) = run_guest(&cmd, TIMEOUT);
    check_verdicts(&out, &err, transport);
    check_image(&std::fs::read(&image).unwrap());
    std::fs::remove_file(&image).unwrap();
    if matches!(emu, Emulator::Rqemu) {
        check_irq_trace(&std::fs::read_to_string(&trace).unwrap());
        std::fs::remove_file(&trace).unwrap();
    }
}

/// The guest's "intx" test took an interrupt: the pin rose and fell (ISR read) and the
/// GSI followed (raised, and lowered by the ISR read without waiting for an EOI), each a
/// trace line.
fn check_irq_trace(trace: &str) {
    let has = |what: &str| trace.lines().any(|l| l.contains(what));
    assert!(has(":virtio_pci_intx ") && has(" level 1"), "{trace}");
    assert!(has(" level 0"), "{trace}");
    assert!(has(":virtio_pci_gsi ") && has(" level 1"), "{trace}");
    let gsi_down = trace
        .lines()
        .any(|l| l.contains(":virtio_pci_gsi ") && l.contains(" level 0"));
    assert!(gsi_down, "{trace}");
}

fn qcow2_run(emu: Emulator, transport: Transport) {
    if !prerequisites(emu)
        || !prereq::require("qemu-img", prereq::tool("qemu-img"), "RQEMU_REQUIRE_QEMU")
    {
        return;
    }
    let program = std::fs::read(build_guest()).unwrap();
    let name = format!("virtio-guest-{emu:?}-{transport:?}");
    let raw = scratch(&format!("{name}-src.raw"));
    let qcow2 = scratch(&format!("{name}.qcow2"));
    let back = scratch(&format!("{name}-back.raw"));
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
    let (out, err) = run_guest(&cmdline(emu, &qcow2, "qcow2", transport), TIMEOUT);
    check_verdicts(&out, &err, transport);
    let check = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&qcow2)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "qemu-img check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    convert(&["-f", "qcow2", "-O", "raw"], &qcow2, &back);
    check_image(&std::fs::read(&back).unwrap());
    for p in [raw, qcow2, back] {
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn virtio_guest_on_raw_image_under_qemu() {
    raw_run(Emulator::Qemu, Transport::Legacy);
}

#[test]
fn virtio_guest_on_transitional_device_under_qemu() {
    raw_run(Emulator::Qemu, Transport::Transitional);
}

#[test]
fn virtio_guest_on_modern_device_under_qemu() {
    raw_run(Emulator::Qemu, Transport::Modern);
}

#[test]
fn virtio_guest_on_qcow2_image_under_qemu() {
    qcow2_run(Emulator::Qemu, Transport::Legacy);
}

#[test]
fn virtio_guest_on_raw_image_under_rqemu_legacy() {
    raw_run(Emulator::Rqemu, Transport::Legacy);
}

#[test]
fn virtio_guest_on_raw_image_under_rqemu_transitional() {
    raw_run(Emulator::Rqemu, Transport::Transitional);
}

#[test]
fn virtio_guest_on_raw_image_under_rqemu_modern() {
    raw_run(Emulator::Rqemu, Transport::Modern);
}

#[test]
fn virtio_guest_on_qcow2_image_under_rqemu_legacy() {
    qcow2_run(Emulator::Rqemu, Transport::Legacy);
}

#[test]
fn virtio_guest_on_qcow2_image_under_rqemu_modern() {
    qcow2_run(Emulator::Rqemu, Transport::Modern);
}

/// With an unbootable IDE disk in front, SeaBIOS boots the virtio disk that has a bootindex
/// (fw_cfg `bootorder`).
#[test]
fn virtio_disk_with_bootindex_boots_before_an_ide_disk_under_rqemu() {
    if !prerequisites(Emulator::Rqemu) {
        return;
    }
    let program = std::fs::read(build_guest()).unwrap();
    let image = scratch("virtio-guest-bootindex.raw");
    let ide = scratch("virtio-guest-bootindex-ide.raw");
    std::fs::write(&image, raw_image(&program)).unwrap();
    std::fs::write(&ide, vec![0u8; 1 << 20]).unwrap();
    let mut cmd = cmdline(Emulator::Rqemu, &image, "raw", Transport::Legacy);
    let device = cmd.pop().unwrap();
    cmd.push(format!("{device},bootindex=1"));
    cmd.push("-drive".into());
    cmd.push(format!("file={},format=raw,if=ide", ide.display()));
    let (out, err) = run_guest(&cmd, TIMEOUT);
    check_verdicts(&out, &err, Transport::Legacy);
    for p in [image, ide] {
        std::fs::remove_file(p).unwrap();
    }
}

/// The guest under rqemu over an `rbd:` drive: the raw image itself, or a qcow2 overlay on
/// rbd whose raw backing file is on rbd too. The bytes are checked with `rbd export`.
fn rbd_run(qcow2: bool) {
    if !prerequisites(Emulator::Rqemu) {
        return;
    }
    let Some(c) = ceph::cluster() else { return };
    let program = std::fs::read(build_guest()).unwrap();
    let initial = raw_image(&program);
    let tag = if qcow2 { "qcow2" } else { "raw" };
    let local = scratch(&format!("virtio-rbd-{tag}.raw"));
    std::fs::write(&local, &initial).unwrap();
    let base = format!("virtio-{tag}-base");
    c.rbd(&["import", "--no-progress", local.to_str().unwrap(), &base]);
    let (image, format) = if qcow2 {
        let top = c.image("virtio-qcow2-top");
        let status = Command::new(env!("CARGO_BIN_EXE_rqemu-img"))
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                &c.image(&base),
                &top,
            ])
            .status()
            .unwrap();
        assert!(status.success(), "rqemu-img create on rbd");
        (top, "qcow2")
    } else {
        (c.image(&base), "raw")
    };
    let cmd = cmdline(
        Emulator::Rqemu,
        Path::new(&image),
        format,
        Transport::Modern,
    );
    let (out, err) = run_guest(&cmd, TIMEOUT);
    check_verdicts(&out, &err, Transport::Modern);
    if qcow2 {
        // The overlay as `rbd export` reads it (it still names its backing file on rbd).
        let top = scratch("virtio-rbd-top.qcow2");
        std::fs::write(&top, c.export("virtio-qcow2-top")).unwrap();
        let status = Command::new(env!("CARGO_BIN_EXE_rqemu-img"))
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&top)
            .arg(&local)
            .status()
            .unwrap();
        std::fs::remove_file(&top).unwrap();
        assert!(status.success(), "rqemu-img convert from rbd");
        check_image(&std::fs::read(&local).unwrap());
        assert!(
            c.export(&base) == initial,
            "the guest wrote to the backing file"
        );
    } else {
        check_image(&c.export(&base));
    }
    std::fs::remove_file(&local).unwrap();
}

#[test]
fn virtio_guest_on_rbd_raw_image_under_rqemu() {
    rbd_run(false);
}

#[test]
fn virtio_guest_on_rbd_qcow2_with_rbd_backing_under_rqemu() {
    rbd_run(true);
}
