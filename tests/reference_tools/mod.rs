//! Helpers for the differential tests of rqemu-img's chain commands (rebase, commit): the
//! reference tools, scratch directories, running a tool, and building qcow2 chains with
//! patterned data through the reference qemu-img/qemu-io.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const QEMU_IMG: &str = "/usr/bin/qemu-img";
pub const QEMU_IO: &str = "/usr/bin/qemu-io";
pub const OURS: &str = env!("CARGO_BIN_EXE_rqemu-img");

pub fn reference_available() -> bool {
    if Path::new(QEMU_IMG).exists() && Path::new(QEMU_IO).exists() {
        return true;
    }
    if std::env::var("RQEMU_REQUIRE_QEMU").as_deref() == Ok("1") {
        panic!("{QEMU_IMG} or {QEMU_IO} is missing and RQEMU_REQUIRE_QEMU=1");
    }
    eprintln!("skipping: reference {QEMU_IMG} / {QEMU_IO} is not installed");
    false
}

pub fn scratch(case: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rqemu-{}-{}/{case}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn run(bin: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

pub fn ok(bin: &str, dir: &Path, args: &[&str]) {
    let out = run(bin, dir, args);
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates a qcow2 image, optionally over a backing file, with `(pattern, offset, len)`
/// writes.
pub fn image(dir: &Path, name: &str, size: &str, backing: Option<&str>, writes: &[(u8, u64, u64)]) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if let Some(b) = backing {
        args.extend(["-b", b, "-F", "qcow2"]);
    }
    args.extend([name, size]);
    ok(QEMU_IMG, dir, &args);
    for &(p, off, len) in writes {
        let cmd = format!("write -P {p} {off} {len}");
        ok(QEMU_IO, dir, &["-c", &cmd, name]);
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Asserts that `qemu-img compare` finds two images identical (guest contents).
pub fn assert_identical(a: &Path, b: &Path, what: &str) {
    let cmp = run(
        QEMU_IMG,
        Path::new("/"),
        &["compare", "-U", a.to_str().unwrap(), b.to_str().unwrap()],
    );
    assert_eq!(
        String::from_utf8_lossy(&cmp.stdout),
        "Images are identical.\n",
        "{what}: {}",
        String::from_utf8_lossy(&cmp.stderr)
    );
}
