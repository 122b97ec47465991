//! Images whose file ends in a huge sparse hole (a terabyte the file system never stored):
//! a whole-image walk must not size its memory by the file's length. Each case runs
//! rqemu-img under an address-space limit far below what a table of one entry per cluster
//! of the file would take, and compares its answer with the reference qemu-img's.
//!
//! Skipped (with a printed reason) when the reference is not installed; with
//! RQEMU_REQUIRE_QEMU=1 a missing reference is a failure.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Command, Output};

mod reference_tools;

use reference_tools::*;

/// What rqemu-img may map (224 MiB): enough for the program, threads and caches, below a table
/// of one byte per cluster of a terabyte of 4 KiB clusters (256 MiB) or of one u64 per
/// cluster of 512 bytes (16 GiB).
const ADDRESS_SPACE_LIMIT: &str = "--as=234881024";

const TIB: u64 = 1 << 40;

/// Makes `name` a file of a terabyte; the image's own data stays at its start.
fn extend_sparse(dir: &Path, name: &str) {
    let f = OpenOptions::new().write(true).open(dir.join(name)).unwrap();
    f.set_len(TIB).unwrap();
}

/// rqemu-img under the address-space limit.
fn ours_limited(dir: &Path, args: &[&str]) -> Output {
    Command::new("prlimit")
        .arg(ADDRESS_SPACE_LIMIT)
        .arg(OURS)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Exit code and output, with the program's name made the reference's.
fn outcome(out: &Output) -> (Option<i32>, String, String) {
    let text = |b: &[u8]| String::from_utf8_lossy(b).replace("rqemu-img:", "qemu-img:");
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Runs `args` with both tools on copies of one prepared directory, `image` extended to a
/// terabyte in each; the answers, and
/// those of `qemu-img compare`/`check` on the results, must agree.
fn same_answer(case: &str, prep: &dyn Fn(&Path), args: &[&str], image: &str) {
    if !reference_available() {
        return;
    }
    let base = scratch(case);
    let prep_dir = base.join("prep");
    std::fs::create_dir_all(&prep_dir).unwrap();
    prep(&prep_dir);
    let (theirs, ours) = (base.join("qemu"), base.join("ours"));
    // Copied while small: a copy need not keep the hole.
    copy_dir(&prep_dir, &theirs);
    copy_dir(&prep_dir, &ours);
    extend_sparse(&theirs, image);
    extend_sparse(&ours, image);
    let reference = outcome(&run(QEMU_IMG, &theirs, args));
    let got = outcome(&ours_limited(&ours, args));
    assert_eq!(got, reference, "{args:?}");
    // Both images hold what `prep` wrote: 1 MiB of 0x01, then zeroes (qemu-img compare
    // would take minutes over a terabyte of 512-byte clusters).
    for dir in [&theirs, &ours] {
        let read = run(
            QEMU_IO,
            dir,
            &["-c", "read -P 1 0 1M", "-c", "read -P 0 1M 63M", image],
        );
        let text = String::from_utf8_lossy(&read.stdout);
        assert!(read.status.success() && !text.contains("fail"), "{text}");
    }
    let theirs_check = outcome(&run(QEMU_IMG, &theirs, &["check", image]));
    let ours_check = outcome(&run(QEMU_IMG, &ours, &["check", image]));
    assert_eq!(ours_check, theirs_check);
    let _ = std::fs::remove_dir_all(&base);
}

/// amend's refcount width change reads every refcount: with 512-byte clusters a
/// terabyte is 2^31 clusters, a dense table of which took 16 GiB.
#[test]
fn qcow2_refcount_width_change_over_a_sparse_terabyte() {
    let prep = |d: &Path| {
        ok(
            QEMU_IMG,
            d,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=512",
                "t.qcow2",
                "64M",
            ],
        );
        ok(QEMU_IO, d, &["-c", "write -P 1 0 1M", "t.qcow2"]);
    };
    same_answer(
        "amend-sparse",
        &prep,
        &["amend", "-o", "refcount_bits=64", "t.qcow2"],
        "t.qcow2",
    );
    same_answer(
        "amend-sparse-narrow",
        &prep,
        &["amend", "-o", "refcount_bits=1", "t.qcow2"],
        "t.qcow2",
    );
}

/// The qed check marks the clusters its tables use: a terabyte of 4 KiB clusters made a
/// dense map of 256 Mi entries. QEMU reports every cluster of the hole as leaked.
#[test]
fn qed_check_of_a_sparse_terabyte() {
    let prep = |d: &Path| {
        ok(
            QEMU_IMG,
            d,
            &[
                "create",
                "-q",
                "-f",
                "qed",
                "-o",
                "cluster_size=4096",
                "t.qed",
                "64M",
            ],
        );
        ok(QEMU_IO, d, &["-c", "write -P 1 0 1M", "t.qed"]);
    };
    same_answer("qed-sparse", &prep, &["check", "t.qed"], "t.qed");
    same_answer(
        "qed-sparse-repair",
        &prep,
        &["check", "-r", "all", "t.qed"],
        "t.qed",
    );
}
