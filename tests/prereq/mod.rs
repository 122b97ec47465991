//! Prerequisites of the guest tests (KVM, the reference QEMU, nasm, SeaBIOS): a missing one
//! skips the test with a printed reason, or fails it when the matching RQEMU_REQUIRE_* is 1.

#![allow(dead_code)]

use std::process::{Command, Stdio};

/// Whether `what` is present; if not, prints why the test skips, or panics when
/// `require_var` (RQEMU_REQUIRE_KVM / RQEMU_REQUIRE_QEMU) is set to 1.
pub fn require(what: &str, present: bool, require_var: &str) -> bool {
    if !present {
        if std::env::var(require_var).is_ok_and(|v| v == "1") {
            panic!("{what} is required ({require_var}=1) but missing");
        }
        eprintln!("skipped: {what} is missing");
    }
    present
}

/// Whether `tool --version` runs.
pub fn tool(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether /dev/kvm can be opened read-write.
pub fn kvm() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// What an assembled test guest needs: nasm and KVM, and for QEMU's run (`qemu`) the
/// reference qemu-system-x86_64.
pub fn guest(qemu: bool) -> bool {
    require("nasm", tool("nasm"), "RQEMU_REQUIRE_KVM")
        && (!qemu
            || require(
                "qemu-system-x86_64",
                tool("qemu-system-x86_64"),
                "RQEMU_REQUIRE_QEMU",
            ))
        && require("/dev/kvm", kvm(), "RQEMU_REQUIRE_KVM")
}
