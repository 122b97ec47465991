//! Differential tests of `rqemu-img amend` and `rqemu-img measure` (qcow2) against the
//! reference QEMU 10.0.2 `qemu-img`.
//!
//! Amend: an image prepared once with the reference tools is copied into two directories
//! and amended by each tool; exit status and the first stderr line must agree, and the
//! results must read the same (`qemu-img compare`), report the same format facts (`qemu-img
//! info`: version, refcount width, lazy refcounts, size) and pass `qemu-img check` alike.
//! Measure: the printed answer must be the same text, for new images and existing ones.
//!
//! Skipped (with a printed reason) when the reference is not installed; with
//! RQEMU_REQUIRE_QEMU=1 a missing reference is a failure.

use std::fs;
use std::path::Path;

mod reference_tools;

use reference_tools::*;

/// Creates `t.qcow2` with creation options and runs qemu-io commands on it.
fn prepare(dir: &Path, create_opts: &str, size: &str, io: &[&str]) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !create_opts.is_empty() {
        args.extend(["-o", create_opts]);
    }
    args.extend(["t.qcow2", size]);
    ok(QEMU_IMG, dir, &args);
    for cmd in io {
        ok(QEMU_IO, dir, &["-c", cmd, "t.qcow2"]);
    }
}

/// The format facts `amend` may change, as `qemu-img info` reports them.
fn facts(dir: &Path) -> serde_json::Value {
    let out = run(QEMU_IMG, dir, &["info", "-U", "--output=json", "t.qcow2"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::json!([
        v["virtual-size"],
        v["format-specific"]["data"],
        v["backing-filename"],
        v["dirty-flag"],
    ])
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Amends copies of one prepared image with both tools and compares everything.
fn amend_case(case: &str, prep: &dyn Fn(&Path), args: &[&str]) {
    if !reference_available() {
        return;
    }
    let base = scratch(case);
    let prep_dir = base.join("prep");
    fs::create_dir_all(&prep_dir).unwrap();
    prep(&prep_dir);
    let (theirs, ours) = (base.join("qemu"), base.join("ours"));
    let mut results = Vec::new();
    for (bin, dir) in [(QEMU_IMG, &theirs), (OURS, &ours)] {
        copy_dir(&prep_dir, dir);
        let mut full = vec!["amend"];
        full.extend(args);
        full.push("t.qcow2");
        let out = run(bin, dir, &full);
        let check = run(QEMU_IMG, dir, &["check", "t.qcow2"]);
        results.push((
            out.status.code(),
            first_line(&out.stderr).replace("rqemu-img:", "qemu-img:"),
            String::from_utf8_lossy(&out.stdout).to_string(),
            check.status.code(),
            facts(dir),
        ));
    }
    assert_eq!(results[0], results[1], "amend {args:?}");
    assert_identical(
        &theirs.join("t.qcow2"),
        &ours.join("t.qcow2"),
        &format!("amend {args:?}"),
    );
    let _ = fs::remove_dir_all(&base);
}

/// Data, zero clusters with and without a preallocated host cluster, compressed data.
const MIXED: &[&str] = &[
    "write -P 1 0 100k",
    "write -z 1M 1M",
    "write -P 2 3M 64k",
    "write -z 3M 64k",
    "write -c -P 3 4M 64k",
];

#[test]
fn downgrade_expands_zero_clusters() {
    amend_case(
        "downgrade",
        &|d| prepare(d, "", "64M", MIXED),
        &["-o", "compat=0.10"],
    );
}

#[test]
fn downgrade_over_backing_file_allocates_zeroes() {
    let prep = |d: &Path| {
        image(d, "base.qcow2", "64M", None, &[(9, 0, 8 << 20)]);
        prepare(d, "backing_file=base.qcow2,backing_fmt=qcow2", "64M", MIXED);
    };
    amend_case("downgrade-backed", &prep, &["-o", "compat=0.10"]);
    amend_case("same-backing", &prep, &["-o", "backing_file=base.qcow2"]);
    amend_case("other-backing", &prep, &["-o", "backing_file=x.qcow2"]);
    amend_case(
        "refcount-then-backing",
        &prep,
        &["-o", "refcount_bits=8,backing_file=x"],
    );
}

#[test]
fn downgrade_progress_per_l1_entry() {
    let io = [
        "write -z 0 64k",
        "write -z 1G 64k",
        "write -z 2G 64k",
        "write -z 3G 64k",
    ];
    amend_case(
        "progress",
        &|d| prepare(d, "", "4G", &io),
        &["-p", "-o", "compat=0.10"],
    );
}

#[test]
fn upgrade_with_features_and_size() {
    let v2 = |d: &Path| prepare(d, "compat=0.10", "64M", &["write -P 1 0 1M"]);
    amend_case(
        "upgrade",
        &v2,
        &["-o", "compat=1.1,lazy_refcounts=on,size=128M"],
    );
    amend_case(
        "upgrade-refcount",
        &v2,
        &["-o", "compat=1.1,refcount_bits=8"],
    );
    // Snapshot entries are rewritten with version 3's extra data before the header moves.
    let v2_snapshot = |d: &Path| {
        v2(d);
        ok(QEMU_IMG, d, &["snapshot", "-c", "s1", "t.qcow2"]);
        ok(QEMU_IO, d, &["-c", "write -P 2 0 64k", "t.qcow2"]);
    };
    amend_case("upgrade-snapshot", &v2_snapshot, &["-o", "compat=1.1"]);
    amend_case("v2-lazy", &v2, &["-o", "lazy_refcounts=on"]);
    amend_case("v2-refcount", &v2, &["-o", "refcount_bits=8"]);
}

#[test]
fn refcount_width_changes() {
    for (opts, bits) in [
        ("cluster_size=512", "1"),
        ("cluster_size=512,refcount_bits=1", "64"),
        ("", "2"),
        ("", "32"),
        ("refcount_bits=8", "16"),
    ] {
        let case = format!("refcount-{bits}-{}", opts.len());
        let setting = format!("refcount_bits={bits}");
        amend_case(
            &case,
            &|d| prepare(d, opts, "64M", &["write -P 1 0 10M"]),
            &["-o", &setting],
        );
    }
}

#[test]
fn lazy_refcounts_and_resize() {
    let lazy = |d: &Path| prepare(d, "lazy_refcounts=on", "64M", &["write -P 1 0 1M"]);
    amend_case("lazy-off", &lazy, &["-o", "lazy_refcounts=off"]);
    let plain = |d: &Path| prepare(d, "", "64M", &["write -P 1 0 1M", "write -P 3 40M 1M"]);
    amend_case("lazy-on", &plain, &["-o", "lazy_refcounts=on"]);
    amend_case("grow", &plain, &["-o", "size=128M"]);
    amend_case("shrink", &plain, &["-o", "size=32M"]);
    amend_case("shrink-downgrade", &plain, &["-o", "compat=0.10,size=32M"]);
}

#[test]
fn refusals_match() {
    let plain = |d: &Path| prepare(d, "", "64M", &[]);
    for opts in [
        "compat=0.42",
        "foo=bar",
        "cluster_size=1k",
        "encryption=on",
        "preallocation=full",
        "extended_l2=on",
        "compression_type=zstd",
        "data_file=x",
        "data_file_raw=on",
        "size=abc",
        "refcount_bits=3",
        "refcount_bits=abc",
        "lazy_refcounts=maybe",
        "encrypt.keyslot=1",
        "compat=0.42,refcount_bits=3",
        "refcount_bits=3,data_file=x",
        "size=0",
    ] {
        amend_case("refusal", &plain, &["-o", opts]);
    }
    let v2 = |d: &Path| prepare(d, "compat=0.10", "64M", &[]);
    amend_case(
        "v2-lazy-downgrade",
        &v2,
        &["-o", "compat=0.10,lazy_refcounts=on"],
    );
    let r8 = |d: &Path| prepare(d, "refcount_bits=8", "64M", &[]);
    amend_case("r8-downgrade", &r8, &["-o", "compat=0.10"]);
    let ext = |d: &Path| prepare(d, "extended_l2=on", "64M", &[]);
    amend_case("extl2-downgrade", &ext, &["-o", "compat=0.10"]);
    let zstd = |d: &Path| prepare(d, "compression_type=zstd", "64M", &["write -c 0 64k"]);
    amend_case("zstd-downgrade", &zstd, &["-o", "compat=0.10"]);
    let zstd_plain = |d: &Path| prepare(d, "compression_type=zstd", "64M", &["write 0 64k"]);
    amend_case("zstd-plain-downgrade", &zstd_plain, &["-o", "compat=0.10"]);
}

/// Runs a command with both tools in `dir`; the outputs and exit statuses must agree.
fn same_output(dir: &Path, args: &[&str]) {
    let a = run(QEMU_IMG, dir, args);
    let b = run(OURS, dir, args);
    assert_eq!(
        (a.status.code(), String::from_utf8_lossy(&a.stdout)),
        (b.status.code(), String::from_utf8_lossy(&b.stdout)),
        "{args:?}"
    );
    assert_eq!(
        first_line(&a.stderr),
        first_line(&b.stderr).replace("rqemu-img:", "qemu-img:"),
        "{args:?}"
    );
}

#[test]
fn amend_help_and_usage() {
    if !reference_available() {
        return;
    }
    let dir = scratch("amend-help");
    prepare(&dir, "", "1M", &[]);
    ok(
        QEMU_IMG,
        &dir,
        &["create", "-q", "-f", "raw", "r.raw", "1M"],
    );
    for args in [
        &["amend", "-f", "qcow2", "-o", "help"][..],
        &["amend", "-o", "help", "t.qcow2"],
        &["amend", "-f", "raw", "-o", "help"],
        &["amend", "-f", "foo", "-o", "help"],
        &["amend", "-f", "raw", "-o", "size=2M", "r.raw"],
        &["amend", "-o", "size=2M", "r.raw"],
        &["amend", "t.qcow2"],
        &["amend", "-o", "size=2M"],
        &["amend", "-t", "foo", "-o", "size=2M", "t.qcow2"],
        &["amend", "-o", "size=2M", "missing.qcow2"],
    ] {
        same_output(&dir, args);
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn measure_new_images() {
    if !reference_available() {
        return;
    }
    let dir = scratch("measure-new");
    let sizes = ["0", "1", "512", "65537", "1G", "100G", "1T", "16T"];
    let opts = [
        "",
        "cluster_size=512",
        "cluster_size=2M",
        "refcount_bits=1",
        "refcount_bits=64,cluster_size=1k",
        "extended_l2=on",
        "extended_l2=on,cluster_size=2M",
        "preallocation=full",
        "preallocation=metadata",
        "compat=0.10",
        "backing_file=x",
    ];
    for size in sizes {
        for o in opts {
            let mut args = vec!["measure", "-O", "qcow2", "--size", size];
            if !o.is_empty() {
                args.extend(["-o", o]);
            }
            same_output(&dir, &args);
            args.push("--output=json");
            same_output(&dir, &args);
        }
    }
    for bad in [
        "cluster_size=1000",
        "refcount_bits=3",
        "compat=0.10,refcount_bits=1",
        "compat=foo",
        "preallocation=foo",
        "extended_l2=on,cluster_size=4k",
        "size=abc",
    ] {
        same_output(&dir, &["measure", "-O", "qcow2", "--size", "1G", "-o", bad]);
    }
    same_output(
        &dir,
        &[
            "measure",
            "-O",
            "qcow2",
            "--size",
            "10T",
            "-o",
            "cluster_size=512",
        ],
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn measure_existing_images() {
    if !reference_available() {
        return;
    }
    let dir = scratch("measure-existing");
    prepare(&dir, "", "64M", MIXED);
    ok(
        QEMU_IMG,
        &dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "v2.qcow2",
            "8M",
        ],
    );
    ok(QEMU_IO, &dir, &["-c", "write 0 100k", "v2.qcow2"]);
    ok(
        QEMU_IMG,
        &dir,
        &["create", "-q", "-f", "raw", "r.raw", "10M"],
    );
    ok(
        QEMU_IO,
        &dir,
        &["-f", "raw", "-c", "write -P 7 700k 3k", "r.raw"],
    );
    for file in ["t.qcow2", "v2.qcow2", "r.raw"] {
        for o in [
            "",
            "cluster_size=512",
            "cluster_size=2M",
            "compat=0.10",
            "backing_file=x",
        ] {
            let mut args = vec!["measure", "-O", "qcow2", file];
            if !o.is_empty() {
                args.extend(["-o", o]);
            }
            same_output(&dir, &args);
            args.push("--output=json");
            same_output(&dir, &args);
        }
    }
    let _ = fs::remove_dir_all(&dir);
}
