//! Tiny guests against the vCPU loop and the platform: resets end the run with `-no-reboot`
//! and restart the machine without it, COM1 carries bytes both ways, and the RTC's periodic
//! timer (a coroutine on the main loop) reaches the device.
//!
//! The guests are firmware images assembled by hand (tests/common): each prints "OK\n" on
//! COM1, does its check, and then resets the machine one of the PC's ways. Needs /dev/kvm: skipped with a
//! printed reason when absent, failed instead when RQEMU_REQUIRE_KVM=1.

mod common;

use std::time::Duration;

use common::{firmware, kvm_usable, run};

fn assert_reset_ends_run(name: &str, reset: &[u8]) {
    let bios = firmware(name, reset);
    let path = bios.display().to_string();
    let r = run(
        &["-bios", &path, "-nographic", "-no-reboot"],
        b"",
        Duration::from_secs(30),
    );
    std::fs::remove_file(&bios).unwrap();
    assert_eq!(
        r.exited,
        Some(true),
        "{name}: rqemu did not end cleanly: {}",
        r.stderr
    );
    assert_eq!(r.stdout, b"OK\n", "{name}");
}

#[test]
fn keyboard_controller_reset_ends_the_run() {
    if kvm_usable() {
        assert_reset_ends_run("i8042", &[0xB0, 0xFE, 0xE6, 0x64]); // mov al, 0xfe; out 0x64, al
    }
}

#[test]
fn port_92_and_cf9_resets_end_the_run() {
    if kvm_usable() {
        assert_reset_ends_run("port92", &[0xB0, 0x01, 0xE6, 0x92]); // out 0x92, 1
                                                                    // mov dx, 0xcf9; mov al, 6; out dx, al
        assert_reset_ends_run("cf9", &[0xBA, 0xF9, 0x0C, 0xB0, 0x06, 0xEE]);
    }
}

/// A real-mode interrupt beyond a zero IDT limit: on VMX/SVM KVM that is #GP, #DF, triple
/// fault, KVM_EXIT_SHUTDOWN, so the run ends cleanly. The nested-PVM KVM of the development
/// machines cannot emulate it and reports an internal error instead (QEMU shows the same);
/// then rqemu must print the vCPU state and fail. Either way it must not hang or crash.
#[test]
fn triple_fault_ends_the_run_or_internal_error_is_reported() {
    if !kvm_usable() {
        return;
    }
    // lidt cs:[0x100] (limit 0), then int3.
    let bios = firmware("triple", &[0x2E, 0x0F, 0x01, 0x1E, 0x00, 0x01, 0xCC]);
    let args = ["-bios", bios.to_str().unwrap(), "-nographic", "-no-reboot"];
    let r = run(&args, b"", Duration::from_secs(30));
    std::fs::remove_file(&bios).unwrap();
    assert_eq!(r.stdout, b"OK\n");
    match r.exited {
        Some(true) => assert!(r.stderr.is_empty(), "{}", r.stderr),
        Some(false) => {
            assert!(
                r.stderr.starts_with("rqemu: KVM internal error"),
                "{}",
                r.stderr
            );
            assert!(
                r.stderr.contains("RIP=") && r.stderr.contains("CR0="),
                "{}",
                r.stderr
            );
        }
        None => panic!("rqemu hung after the fault"),
    }
}

#[test]
fn without_no_reboot_a_reset_restarts_the_guest() {
    if !kvm_usable() {
        return;
    }
    let bios = firmware("reboot", &[0xB0, 0xFE, 0xE6, 0x64]);
    let path = bios.display().to_string();
    let r = run(&["-bios", &path, "-nographic"], b"", Duration::from_secs(5));
    std::fs::remove_file(&bios).unwrap();
    assert_eq!(r.exited, None, "rqemu should keep rebooting until killed");
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        text.matches("OK\n").count() >= 2,
        "no restart seen: {text:?}"
    );
}

#[test]
fn serial_input_from_stdin_reaches_the_guest() {
    if !kvm_usable() {
        return;
    }
    let echo = [
        0xBA, 0xFD, 0x03, // mov dx, 0x3fd (LSR)
        0xEC, 0xA8, 0x01, 0x74, 0xFB, // poll: in al, dx; test al, 1; jz poll
        0xBA, 0xF8, 0x03, 0xEC, 0xEE, // mov dx, 0x3f8; in al, dx (RBR); out dx, al (echo)
        0xB0, 0xFE, 0xE6, 0x64, // reset
    ];
    let bios = firmware("echo", &echo);
    let path = bios.display().to_string();
    let r = run(
        &["-bios", &path, "-nographic", "-no-reboot"],
        b"Z",
        Duration::from_secs(30),
    );
    std::fs::remove_file(&bios).unwrap();
    assert_eq!(r.exited, Some(true), "{}", r.stderr);
    assert_eq!(r.stdout, b"OK\nZ");
}

#[test]
fn rtc_periodic_flag_is_set_by_the_main_loop_timer() {
    if !kvm_usable() {
        return;
    }
    let poll = [
        0xB0, 0x0B, 0xE6, 0x70, 0xB0, 0x42, 0xE6, 0x71, // CMOS B = PIE | 24h
        0xB0, 0x0C, 0xE6, 0x70, 0xE4, 0x71, 0xA8, 0x40, 0x74, 0xF6, // poll C until PF
        0xB0, b'P', 0xEE, // print "P" (DX is still 0x3f8)
        0xB0, 0xFE, 0xE6, 0x64, // reset
    ];
    let bios = firmware("rtc", &poll);
    let path = bios.display().to_string();
    let r = run(
        &["-bios", &path, "-nographic", "-no-reboot"],
        b"",
        Duration::from_secs(30),
    );
    std::fs::remove_file(&bios).unwrap();
    assert_eq!(r.exited, Some(true), "{}", r.stderr);
    assert_eq!(r.stdout, b"OK\nP");
}

#[test]
fn a_termination_signal_stops_a_halted_guest_cleanly() {
    if !kvm_usable() {
        return;
    }
    // cli; then the common tail halts forever: the vCPU sleeps inside KVM_RUN.
    let bios = firmware("halt", &[0xFA]);
    let path = bios.display().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rqemu"))
        .args(["-bios", &path, "-nographic"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the guest's "OK\n" so that the vCPU is surely running.
    let mut stdout = child.stdout.take().unwrap();
    let mut ok = [0u8; 3];
    std::io::Read::read_exact(&mut stdout, &mut ok).unwrap();
    assert_eq!(&ok, b"OK\n");
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: sending SIGTERM to our own child process.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let out = child.wait_with_output().unwrap();
    std::fs::remove_file(&bios).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let expected = format!(
        "rqemu: terminating on signal 15 from pid {} (",
        std::process::id()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
}
