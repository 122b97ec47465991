//! SeaBIOS boots in rqemu with no disk: its banner and "No bootable device" reach both the
//! serial console and the debug console, and with `-no-reboot` the BIOS's reboot ends the run.
//!
//! Needs /dev/kvm and Debian's SeaBIOS: skipped with a printed reason when either is absent,
//! failed instead when RQEMU_REQUIRE_KVM=1.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIOS: &str = "/usr/share/seabios/bios-256k.bin";
const TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the test can run; prints why not, or panics when KVM is required.
fn requirements_met() -> bool {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    let missing = match (kvm, Path::new(BIOS).exists()) {
        (Err(e), _) => format!("/dev/kvm is not usable ({e})"),
        (Ok(_), false) => format!("{BIOS} is missing (Debian package seabios)"),
        (Ok(_), true) => return true,
    };
    if std::env::var("RQEMU_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("RQEMU_REQUIRE_KVM=1 but {missing}");
    }
    eprintln!("skipping: {missing}");
    false
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rqemu-seabios-{}-{name}", std::process::id()))
}

/// Runs rqemu with `args`; returns (stdout, exit success) or panics after the timeout.
fn run_to_exit(args: &[&str]) -> (String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rqemu"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start rqemu");
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
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "rqemu did not exit within {TIMEOUT:?}: {}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (reader.join().unwrap(), status.success())
}

fn assert_seabios_gave_up(text: &str, what: &str) {
    assert!(
        text.contains("SeaBIOS (version"),
        "no banner on {what}:\n{text}"
    );
    assert!(
        text.contains("No bootable device"),
        "no boot failure on {what}:\n{text}"
    );
}

#[test]
fn seabios_without_disks_reports_no_bootable_device_and_exits() {
    if !requirements_met() {
        return;
    }
    let log = temp_path("debugcon.log");
    let debugcon = format!("file:{}", log.display());
    let (serial, ok) = run_to_exit(&["-nographic", "-no-reboot", "-debugcon", &debugcon]);
    assert!(ok, "rqemu failed:\n{serial}");
    assert_seabios_gave_up(&serial, "the serial console");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_seabios_gave_up(&text, "the debug console");
    assert!(
        text.contains("Running on QEMU (i440fx)"),
        "host bridge not found:\n{text}"
    );
    assert!(text.contains("Found QEMU fw_cfg"), "{text}");
    std::fs::remove_file(&log).unwrap();
}

#[test]
fn unattached_drives_and_serial_files_do_not_disturb_the_boot() {
    if !requirements_met() {
        return;
    }
    let img = temp_path("disk.raw");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let console = temp_path("serial.log");
    let drive = format!("file={},format=raw,if=none,id=d0,cache=none", img.display());
    let serial = format!("file:{}", console.display());
    let (stdout, ok) = run_to_exit(&[
        "-M",
        "pc",
        "-enable-kvm",
        "-m",
        "64",
        "-nographic",
        "-no-reboot",
        "-serial",
        &serial,
        "-drive",
        &drive,
        "-bios",
        BIOS,
    ]);
    assert!(ok, "rqemu failed:\n{stdout}");
    assert!(
        stdout.is_empty(),
        "serial went to a file, not stdout:\n{stdout}"
    );
    assert_seabios_gave_up(
        &std::fs::read_to_string(&console).unwrap(),
        "the serial file",
    );
    std::fs::remove_file(&img).unwrap();
    std::fs::remove_file(&console).unwrap();
}
