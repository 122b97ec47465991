//! SeaBIOS boots in rqemu with no disk: its banner and "No bootable device" reach both the
//! serial console and the debug console, and with `-no-reboot` the BIOS's reboot ends the run.
//!
//! Needs /dev/kvm and Debian's SeaBIOS: skipped with a printed reason when either is absent,
//! failed instead when RQEMU_REQUIRE_KVM=1.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{kvm_usable, run, skip_or_fail, temp_path};

const BIOS: &str = "/usr/share/seabios/bios-256k.bin";
const TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the test can run: KVM and Debian's SeaBIOS.
fn requirements_met() -> bool {
    if !kvm_usable() {
        return false;
    }
    Path::new(BIOS).exists() || skip_or_fail(&format!("{BIOS} is missing (Debian package seabios)"))
}

/// Runs rqemu to its exit (failing after the timeout); returns its stdout.
fn run_to_exit(args: &[&str]) -> String {
    let r = run(args, b"", TIMEOUT);
    let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    match r.exited {
        Some(true) => stdout,
        Some(false) => panic!("rqemu failed: {}\n{stdout}", r.stderr),
        None => panic!("rqemu did not exit within {TIMEOUT:?}:\n{stdout}"),
    }
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
    let serial = run_to_exit(&["-nographic", "-no-reboot", "-debugcon", &debugcon]);
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
fn big_memory_unattached_drives_and_serial_files_do_not_disturb_the_boot() {
    if !requirements_met() {
        return;
    }
    let img = temp_path("disk.raw");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let console = temp_path("serial.log");
    let drive = format!("file={},format=raw,if=none,id=d0,cache=none", img.display());
    let serial = format!("file:{}", console.display());
    let stdout = run_to_exit(&[
        "-M",
        "pc",
        "-enable-kvm",
        "-m",
        "4G",
        "-nographic",
        "-no-reboot",
        "-serial",
        &serial,
        "-drive",
        &drive,
        "-bios",
        BIOS,
    ]);
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
