//! Copy-on-read against the reference: qemu-io's `-C` and the `copy-on-read` filter driver
//! (with and without `bottom`), run by QEMU's qemu-io and by rqemu-io on copies of the same
//! chain, must print the same and leave the same allocation map in the top image.
//!
//! Skips with a printed reason when the reference tools are absent; fails instead under
//! RQEMU_REQUIRE_QEMU=1.

mod reference_tools;

use std::path::Path;

use reference_tools::{assert_identical, copy_dir, image, reference_available, run, scratch};
use reference_tools::{QEMU_IMG, QEMU_IO};

const RQEMU_IO: &str = env!("CARGO_BIN_EXE_rqemu-io");

/// Output with the timing line of each command reduced to its byte count.
fn normalise(out: &std::process::Output) -> String {
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .map(|l| match l.find(", ") {
            Some(i) if l.ends_with(" ops/sec)") => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// base <- mid <- top, 1 MiB each: base data at 0 and 700k, a hole at 512k, mid data at
/// 256k, top data at 64k.
fn build_chain(dir: &Path) {
    image(
        dir,
        "base.qcow2",
        "1M",
        None,
        &[(0x11, 0, 65536), (0x33, 700 << 10, 100 << 10)],
    );
    image(
        dir,
        "mid.qcow2",
        "1M",
        Some("base.qcow2"),
        &[(0x22, 256 << 10, 4096)],
    );
    image(
        dir,
        "top.qcow2",
        "1M",
        Some("mid.qcow2"),
        &[(0x44, 65536, 65536)],
    );
}

/// Runs the same qemu-io arguments with both tools on copies of the chain, then compares
/// what they printed, the top image's allocation map and its contents.
fn check(case: &str, args: &[&str]) {
    if !reference_available() {
        return;
    }
    let master = scratch(&format!("{case}-master"));
    build_chain(&master);
    let (theirs, ours) = (
        scratch(&format!("{case}-qemu")),
        scratch(&format!("{case}-rqemu")),
    );
    copy_dir(&master, &theirs);
    copy_dir(&master, &ours);
    let want = run(QEMU_IO, &theirs, args);
    let got = run(RQEMU_IO, &ours, args);
    assert_eq!(
        normalise(&got),
        normalise(&want),
        "{case}: output of {args:?}"
    );
    assert_eq!(got.status.code(), want.status.code(), "{case}: exit status");
    let map = ["map", "--output=json", "-f", "qcow2", "top.qcow2"];
    let (want_map, got_map) = (run(QEMU_IMG, &theirs, &map), run(QEMU_IMG, &ours, &map));
    assert_eq!(
        String::from_utf8_lossy(&got_map.stdout),
        String::from_utf8_lossy(&want_map.stdout),
        "{case}: allocation after the reads"
    );
    assert_identical(&theirs.join("top.qcow2"), &ours.join("top.qcow2"), case);
}

#[test]
fn dash_c_copies_unallocated_clusters_only() {
    check(
        "dash-c",
        &[
            "-C",
            "-f",
            "qcow2",
            "-c",
            "read -P 0x11 0 4k",
            "-c",
            "read 60k 200k",
            "-c",
            "read -P 0 512k 4k",
            "-c",
            "read -P 0x33 720k 1k",
            "-c",
            "read 0 0",
            "top.qcow2",
        ],
    );
}

#[test]
fn dash_c_refuses_read_only() {
    check(
        "dash-c-ro",
        &["-C", "-r", "-f", "qcow2", "-c", "read 0 4k", "top.qcow2"],
    );
}

#[test]
fn filter_copies_the_whole_chain() {
    check(
        "filter",
        &[
            "-c",
            "open -o driver=copy-on-read,file.driver=qcow2 top.qcow2",
            "-c",
            "read 0 1M",
        ],
    );
}

#[test]
fn filter_bottom_stops_the_copy() {
    check(
        "filter-bottom",
        &[
            "-c",
            "open -o driver=copy-on-read,file.driver=qcow2,file.backing.node-name=mid,bottom=mid top.qcow2",
            "-c", "read 0 1M",
        ],
    );
}

#[test]
fn filter_refuses_read_only() {
    check(
        "filter-ro",
        &[
            "-c",
            "open -r -o driver=copy-on-read,file.driver=qcow2 top.qcow2",
        ],
    );
}
