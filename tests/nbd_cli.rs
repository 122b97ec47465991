//! rqemu-nbd's command line against qemu-nbd's: the same wrong invocations must give the
//! same messages and exit status. Skips without the reference qemu-nbd (fails under
//! RQEMU_REQUIRE_QEMU=1).

mod nbd_rig;
mod reference_tools;

use std::path::Path;
use std::process::Command;

use nbd_rig::{QEMU_NBD, RQEMU_NBD};
use reference_tools::{scratch, QEMU_IMG};

/// Runs `bin` and returns its exit status and stderr, with the program's path written as
/// PROG so that both programs read the same.
fn invoke(bin: &str, dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(bin, "PROG");
    (out.status.code(), stderr)
}

#[test]
fn bad_invocations_fail_as_qemu_nbd_does() {
    if !Path::new(QEMU_NBD).exists() {
        if std::env::var("RQEMU_REQUIRE_QEMU").as_deref() == Ok("1") {
            panic!("{QEMU_NBD} missing and RQEMU_REQUIRE_QEMU=1");
        }
        eprintln!("skipping: {QEMU_NBD} is not installed");
        return;
    }
    let dir = scratch("nbd-cli");
    let sock = dir.join("s.sock");
    let sock = sock.to_str().unwrap();
    let status = Command::new(QEMU_IMG)
        .args(["create", "-q", "-f", "qcow2", "t.qcow2", "1M"])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let cases: &[&[&str]] = &[
        &[],
        &["a", "b"],
        &["-k", "rel.sock", "t.qcow2"],
        &["--cache=bogus", "t.qcow2"],
        &["-n", "--cache=none", "t.qcow2"],
        &["-e", "-1", "t.qcow2"],
        &["--discard=x", "t.qcow2"],
        &["--discard=unmap", "--discard=unmap", "t.qcow2"],
        &["--detect-zeroes=unmap", "t.qcow2"],
        &["--detect-zeroes=bogus", "t.qcow2"],
        &["-L", "t.qcow2"],
        &["-L", "-x", "e"],
        &["-L", "--fork"],
        &["-o", "abc", "t.qcow2"],
        &["--aio=bogus", "t.qcow2"],
        &["--aio=threads", "--aio=threads", "t.qcow2"],
        &["--handshake-limit=x", "t.qcow2"],
        &["-z", "t.qcow2"],
        &["--bogus", "t.qcow2"],
        &["-f", "qcow2", "-k", sock, "missing.qcow2"],
        &["-c", "/dev/nbd-rqemu-test-missing", "t.qcow2"],
    ];
    for args in cases {
        let ours = invoke(RQEMU_NBD, &dir, args);
        let theirs = invoke(QEMU_NBD, &dir, args);
        // glibc's getopt names the program as invoked; QEMU's own messages say qemu-nbd.
        let ours = (ours.0, ours.1.replace("PROG: ", "qemu-nbd: "));
        let theirs = (theirs.0, theirs.1.replace("PROG: ", "qemu-nbd: "));
        assert_eq!(ours, theirs, "{args:?}");
    }
}
