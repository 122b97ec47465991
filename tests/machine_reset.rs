//! Guest resets end the run with `-no-reboot` and restart the machine without it.
//!
//! The guests are tiny firmware images assembled here by hand: the reset vector jumps to
//! F000:0000 (which also proves the image's tail is visible at 0xF0000), the code there
//! prints "OK\n" on COM1 and then resets the machine one of the PC's ways. Needs /dev/kvm:
//! skipped with a printed reason when absent, failed instead when RQEMU_REQUIRE_KVM=1.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE_SIZE: usize = 128 << 10;

fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) if std::env::var("RQEMU_REQUIRE_KVM").as_deref() == Ok("1") => {
            panic!("RQEMU_REQUIRE_KVM=1 but /dev/kvm is not usable: {e}")
        }
        Err(e) => {
            eprintln!("skipping: /dev/kvm is not usable ({e})");
            false
        }
    }
}

/// A 128 KiB image: "OK\n" to COM1, then `reset` (16-bit machine code), then hlt forever.
fn firmware(name: &str, reset: &[u8]) -> PathBuf {
    let mut code = vec![0xBA, 0xF8, 0x03]; // mov dx, 0x3f8
    for &c in b"OK\n" {
        code.extend_from_slice(&[0xB0, c, 0xEE]); // mov al, c; out dx, al
    }
    code.extend_from_slice(reset);
    code.extend_from_slice(&[0xF4, 0xEB, 0xFD]); // hlt; jmp back to the hlt
    let mut image = vec![0xF4u8; IMAGE_SIZE];
    // F000:0000 is 64 KiB below the end of the image.
    let base = IMAGE_SIZE - 0x10000;
    image[base..base + code.len()].copy_from_slice(&code);
    // The 6-byte zero IDT descriptor at F000:0100 for the triple-fault guest.
    image[base + 0x100..base + 0x106].fill(0);
    // Reset vector (F000:FFF0): jmp far F000:0000.
    let vector = IMAGE_SIZE - 16;
    image[vector..vector + 5].copy_from_slice(&[0xEA, 0x00, 0x00, 0x00, 0xF0]);
    let path = std::env::temp_dir().join(format!("rqemu-reset-{}-{name}.bin", std::process::id()));
    std::fs::write(&path, image).unwrap();
    path
}

/// Runs rqemu for at most `limit`; returns stdout and whether it exited successfully by
/// itself (`None` if it had to be killed).
fn run(args: &[&str], limit: Duration) -> (String, Option<bool>) {
    run_with_stderr(args, limit, Stdio::inherit())
}

fn run_with_stderr(args: &[&str], limit: Duration, stderr: Stdio) -> (String, Option<bool>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rqemu"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start rqemu");
    let start = Instant::now();
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status.success());
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), exited)
}

fn assert_reset_ends_run(name: &str, reset: &[u8]) {
    let bios = firmware(name, reset);
    let path = bios.display().to_string();
    let (out, exited) = run(
        &["-bios", &path, "-nographic", "-no-reboot"],
        Duration::from_secs(30),
    );
    std::fs::remove_file(&bios).unwrap();
    assert_eq!(
        exited,
        Some(true),
        "{name}: rqemu did not end cleanly; output {out:?}"
    );
    assert_eq!(out, "OK\n", "{name}");
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
    let log = bios.with_extension("stderr");
    let args = ["-bios", bios.to_str().unwrap(), "-nographic", "-no-reboot"];
    let stderr = Stdio::from(std::fs::File::create(&log).unwrap());
    let (out, exited) = run_with_stderr(&args, Duration::from_secs(30), stderr);
    let err = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&bios).unwrap();
    std::fs::remove_file(&log).unwrap();
    assert_eq!(out, "OK\n");
    match exited {
        Some(true) => assert!(err.is_empty(), "{err}"),
        Some(false) => {
            assert!(err.starts_with("rqemu: KVM internal error"), "{err}");
            assert!(
                err.contains("RIP=") && err.contains("CR0="),
                "no vCPU state: {err}"
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
    let (out, exited) = run(&["-bios", &path, "-nographic"], Duration::from_secs(5));
    std::fs::remove_file(&bios).unwrap();
    assert_eq!(exited, None, "rqemu should keep rebooting until killed");
    assert!(out.matches("OK\n").count() >= 2, "no restart seen: {out:?}");
}
