//! Differential tests of `rqemu-img rebase` against the reference QEMU 10.0.2 `qemu-img`:
//! the same backing chains, prepared once and copied into two directories, are rebased by
//! each tool; the results must read the same (`qemu-img compare`), record the same backing
//! file name and format in the header (`qemu-img info --output=json`), and pass `check`.
//! Error cases must fail with the same exit status and the same first line on stderr (the
//! Debian build words the "Try --help" hint differently from upstream).
//!
//! Skipped (with a printed reason) when the reference is not installed; with
//! RQEMU_REQUIRE_QEMU=1 a missing reference is a failure.

use std::fs;
use std::path::Path;

mod reference_tools;

use reference_tools::*;

/// The header's backing fields as `qemu-img info` reports them.
fn backing_fields(dir: &Path, image: &str) -> (Option<String>, Option<String>) {
    let out = run(QEMU_IMG, dir, &["info", "-U", "--output=json", image]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let field = |k: &str| v.get(k).and_then(|s| s.as_str()).map(str::to_string);
    (field("backing-filename"), field("backing-filename-format"))
}

/// Prepares a case once, rebases copies with both tools, and compares the results.
fn differential(case: &str, setup: &dyn Fn(&Path), args: &[&str]) {
    if !reference_available() {
        return;
    }
    let base = scratch(case);
    let prep = base.join("prep");
    fs::create_dir_all(&prep).unwrap();
    setup(&prep);
    let (theirs, ours) = (base.join("qemu"), base.join("ours"));
    for (bin, dir) in [(QEMU_IMG, &theirs), (OURS, &ours)] {
        copy_dir(&prep, dir);
        let mut full = vec!["rebase"];
        full.extend(args);
        full.push("top.qcow2");
        let out = run(bin, dir, &full);
        assert!(
            out.status.success(),
            "{bin} {full:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        backing_fields(&theirs, "top.qcow2"),
        backing_fields(&ours, "top.qcow2")
    );
    assert_identical(
        &theirs.join("top.qcow2"),
        &ours.join("top.qcow2"),
        "top.qcow2",
    );
    ok(QEMU_IMG, &ours, &["check", "-q", "top.qcow2"]);
    let _ = fs::remove_dir_all(&base);
}

/// old: 11 at 0..1M and 33 at 3M; new: 22 at 512k..1.5M; top: 44 at 128k.
fn two_bases(dir: &Path) {
    image(
        dir,
        "old.qcow2",
        "4M",
        None,
        &[(0x11, 0, 1 << 20), (0x33, 3 << 20, 65536)],
    );
    image(dir, "new.qcow2", "4M", None, &[(0x22, 512 << 10, 1 << 20)]);
    image(
        dir,
        "top.qcow2",
        "4M",
        Some("old.qcow2"),
        &[(0x44, 128 << 10, 65536)],
    );
}

#[test]
fn safe_rebase_onto_another_base() {
    differential("safe", &two_bases, &["-b", "new.qcow2", "-F", "qcow2"]);
}

#[test]
fn safe_rebase_onto_nothing_flattens() {
    differential("flatten", &two_bases, &["-b", ""]);
}

#[test]
fn unsafe_rebase_only_rewrites_the_header() {
    differential(
        "unsafe",
        &two_bases,
        &["-u", "-b", "new.qcow2", "-F", "qcow2"],
    );
}

#[test]
fn compressed_safe_rebase() {
    differential(
        "compress",
        &two_bases,
        &["-c", "-b", "new.qcow2", "-F", "qcow2"],
    );
}

#[test]
fn rebase_within_the_chain_onto_a_shorter_link() {
    let setup = |dir: &Path| {
        image(dir, "new.qcow2", "320k", None, &[(0x11, 0, 320 << 10)]);
        image(
            dir,
            "old.qcow2",
            "256k",
            Some("new.qcow2"),
            &[(0x22, 64 << 10, 64 << 10)],
        );
        image(dir, "top.qcow2", "320k", Some("old.qcow2"), &[]);
    };
    differential("chain", &setup, &["-b", "new.qcow2", "-F", "qcow2"]);
}

/// Command lines that fail: same exit status and first stderr line in both tools.
#[test]
fn errors_match_the_reference() {
    if !reference_available() {
        return;
    }
    let cases: &[&[&str]] = &[
        &["rebase"],
        &["rebase", "top.qcow2"],
        &["rebase", "-b", "new.qcow2", "top.qcow2", "extra"],
        &["rebase", "-b", "new.qcow2", "top.qcow2"],
        &["rebase", "-u", "-b", "new.qcow2", "top.qcow2"],
        &["rebase", "-b", "missing.qcow2", "-F", "qcow2", "top.qcow2"],
        &["rebase", "-b", "new.qcow2", "-F", "bogus", "top.qcow2"],
        &["rebase", "-t", "bogus", "-b", "new.qcow2", "top.qcow2"],
        &["rebase", "-T", "bogus", "-b", "new.qcow2", "top.qcow2"],
        &["rebase", "-f", "raw", "-b", "", "top.qcow2"],
        &["rebase", "-f", "raw", "-c", "-b", "", "top.qcow2"],
    ];
    let base = scratch("errors");
    two_bases(&base);
    for args in cases {
        let first_line = |bin: &str| {
            let out = run(bin, &base, args);
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            let line = err.lines().next().unwrap_or("").to_string();
            (out.status.code(), line)
        };
        assert_eq!(first_line(QEMU_IMG), first_line(OURS), "{args:?}");
        assert_eq!(
            backing_fields(&base, "top.qcow2").0.as_deref(),
            Some("old.qcow2")
        );
    }
    let _ = fs::remove_dir_all(&base);
}

/// A chain made to loop with `rebase -u` is refused when opened, with a message, instead of
/// recursing until the stack overflows (needs no reference QEMU).
#[test]
fn a_looping_chain_fails_cleanly() {
    let dir = scratch("loop");
    let io = env!("CARGO_BIN_EXE_rqemu-io");
    ok(
        OURS,
        &dir,
        &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"],
    );
    let create_b = [
        "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2", "1M",
    ];
    ok(OURS, &dir, &create_b);
    ok(
        OURS,
        &dir,
        &["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2"],
    );
    let out = run(io, &dir, &["-r", "-U", "-c", "read 0 512", "b.qcow2"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "qemu-io: can't open device b.qcow2: Could not open backing file: \
         Backing file 'b.qcow2' creates an infinite loop.\n"
    );
    let info = run(OURS, &dir, &["info", "-U", "--backing-chain", "b.qcow2"]);
    assert_eq!(info.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&info.stderr)
        .contains("qemu-img: Backing file 'b.qcow2' creates an infinite loop."));
    let _ = fs::remove_dir_all(&dir);
}
