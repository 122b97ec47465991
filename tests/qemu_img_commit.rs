//! Differential tests of `rqemu-img commit` against the reference QEMU 10.0.2 `qemu-img`:
//! the same chains, prepared once and copied into two directories, are committed by each
//! tool; every image of the chain must then read the same (`qemu-img compare`, each layer
//! with its own backing files) and pass `check`. Error cases must fail with the same exit
//! status and first stderr line.
//!
//! Skipped (with a printed reason) when the reference is not installed; with
//! RQEMU_REQUIRE_QEMU=1 a missing reference is a failure.

use std::fs;
use std::path::Path;

mod reference_tools;

use reference_tools::*;

/// base: 11 at 0..1M; mid: 22 at 512k..768k; top: 33 at 256k..1.25M, zeroes at 3M, and a
/// larger size than the base (which commit must grow).
fn chain(dir: &Path) {
    image(dir, "base.qcow2", "2M", None, &[(0x11, 0, 1 << 20)]);
    image(
        dir,
        "mid.qcow2",
        "4M",
        Some("base.qcow2"),
        &[(0x22, 512 << 10, 256 << 10)],
    );
    image(
        dir,
        "top.qcow2",
        "4M",
        Some("mid.qcow2"),
        &[(0x33, 256 << 10, 1 << 20)],
    );
    ok(QEMU_IO, dir, &["-c", "write -z 3M 64k", "top.qcow2"]);
}

fn differential(case: &str, args: &[&str]) {
    if !reference_available() {
        return;
    }
    let base = scratch(case);
    let prep = base.join("prep");
    fs::create_dir_all(&prep).unwrap();
    chain(&prep);
    let (theirs, ours) = (base.join("qemu"), base.join("ours"));
    for (bin, dir) in [(QEMU_IMG, &theirs), (OURS, &ours)] {
        copy_dir(&prep, dir);
        let mut full = vec!["commit", "-q"];
        full.extend(args);
        full.push("top.qcow2");
        let out = run(bin, dir, &full);
        assert!(
            out.status.success(),
            "{bin} {full:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for name in ["top.qcow2", "mid.qcow2", "base.qcow2"] {
        assert_identical(&theirs.join(name), &ours.join(name), name);
        ok(QEMU_IMG, &ours, &["check", "-q", name]);
        let info = |dir: &Path| {
            let out = run(QEMU_IMG, dir, &["info", "-U", "--output=json", name]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["virtual-size"].clone()
        };
        assert_eq!(info(&theirs), info(&ours), "{name}");
        assert_eq!(allocation(&theirs, name), allocation(&ours, name), "{name}");
    }
    let _ = fs::remove_dir_all(&base);
}

/// Which ranges each layer stores itself (`qemu-img map` without the host offsets), so that
/// emptying the overlay, which does not change what it reads, is checked too.
fn allocation(dir: &Path, name: &str) -> Vec<String> {
    let out = run(QEMU_IMG, dir, &["map", "-U", "--output=json", name]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {} {}",
                e["start"], e["length"], e["depth"], e["zero"], e["data"]
            )
        })
        .collect()
}

#[test]
fn commit_into_the_backing_file_and_empty_the_overlay() {
    differential("default", &[]);
}

#[test]
fn commit_keeping_the_overlay() {
    differential("keep", &["-d"]);
}

#[test]
fn commit_down_to_a_deeper_base() {
    differential("deep", &["-b", "base.qcow2"]);
}

#[test]
fn errors_match_the_reference() {
    if !reference_available() {
        return;
    }
    let base = scratch("errors");
    chain(&base);
    let cases: &[&[&str]] = &[
        &["commit"],
        &["commit", "top.qcow2", "extra"],
        &["commit", "base.qcow2"],
        &["commit", "-b", "nowhere.qcow2", "top.qcow2"],
        &["commit", "-t", "bogus", "top.qcow2"],
        &["commit", "-f", "bogus", "top.qcow2"],
    ];
    for args in cases {
        let first_line = |bin: &str| {
            let out = run(bin, &base, args);
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            (
                out.status.code(),
                err.lines().next().unwrap_or("").to_string(),
            )
        };
        assert_eq!(first_line(QEMU_IMG), first_line(OURS), "{args:?}");
    }
    let _ = fs::remove_dir_all(&base);
}
