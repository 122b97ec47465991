//! `rqemu-nbd -B BITMAP`: dirty bitmaps exported as `qemu:dirty-bitmap:NAME` contexts,
//! differential against the reference qemu-nbd serving a copy of the same image. QEMU's
//! client reads them with `x-dirty-bitmap` (`qemu-img map`), libnbd's `nbdinfo` with
//! `--map=qemu:dirty-bitmap:NAME` and lists them with `--list`. Skips without the reference
//! tools (fails under RQEMU_REQUIRE_QEMU=1).

mod nbd_rig;
mod reference_tools;

use std::path::Path;

use nbd_rig::{output, Server, QEMU_NBD, RQEMU_NBD};
use reference_tools::{image, ok, run, scratch, QEMU_IMG, QEMU_IO};

const NBDINFO: &str = "/usr/bin/nbdinfo";

/// An 8 MiB qcow2 image with two persistent bitmaps: b0 (64 KiB granules) saw the first
/// writes and was then disabled; b1 (the default granularity) records every write after.
fn bitmapped(dir: &Path, name: &str) {
    image(dir, name, "8M", None, &[]);
    ok(QEMU_IMG, dir, &["bitmap", "--add", "-g", "64k", name, "b0"]);
    ok(
        QEMU_IO,
        dir,
        &[
            "-c",
            "write 0 4k",
            "-c",
            "write 1M 100k",
            "-c",
            "write 5M 64k",
            name,
        ],
    );
    ok(QEMU_IMG, dir, &["bitmap", "--disable", name, "b0"]);
    ok(QEMU_IMG, dir, &["bitmap", "--add", name, "b1"]);
    ok(
        QEMU_IO,
        dir,
        &["-c", "write 2M 1k", "-c", "write -z 7M 512k", name],
    );
}

/// What QEMU's client and nbdinfo see of `server`'s bitmaps.
fn views(dir: &Path, server: &Server, bitmaps: &[&str]) -> Vec<String> {
    let uri = server.uri();
    let mut seen = vec![output(NBDINFO, dir, &["--list", "--json", &uri], server)];
    for b in bitmaps {
        let opts = format!(
            "driver=nbd,server.type=unix,server.path={},x-dirty-bitmap=qemu:dirty-bitmap:{b}",
            server.socket.display()
        );
        seen.push(output(
            QEMU_IMG,
            dir,
            &["map", "--output=json", "--image-opts", &opts],
            server,
        ));
        let map = format!("--map=qemu:dirty-bitmap:{b}");
        seen.push(output(NBDINFO, dir, &[&map, "--json", &uri], server));
        seen.push(output(NBDINFO, dir, &[&map, "--totals", &uri], server));
    }
    seen
}

/// A scratch directory holding ours.qcow2 and theirs.qcow2, the same bitmapped image;
/// None (skip) without the reference tools.
fn two_images(case: &str) -> Option<std::path::PathBuf> {
    if !nbd_rig::tools_available(&[QEMU_IMG, QEMU_IO, QEMU_NBD, NBDINFO]) {
        return None;
    }
    let dir = scratch(case);
    bitmapped(&dir, "ours.qcow2");
    bitmapped(&dir, "theirs.qcow2");
    Some(dir)
}

/// Serves ours.qcow2 with rqemu-nbd and theirs.qcow2 with qemu-nbd, each with `args`;
/// qemu-io runs `writes` through each export, then [`views`] of `bitmaps` are taken.
fn through_both_servers(
    dir: &Path,
    args: &[&str],
    writes: &[&str],
    bitmaps: &[&str],
) -> Vec<Vec<String>> {
    let mut seen = Vec::new();
    for (bin, name) in [(RQEMU_NBD, "ours"), (QEMU_NBD, "theirs")] {
        let file = format!("{name}.qcow2");
        let mut all = args.to_vec();
        all.push(&file);
        let server = Server::start(bin, dir, name, &all);
        if !writes.is_empty() {
            let uri = server.uri();
            let mut io = vec!["-f", "raw"];
            for w in writes {
                io.extend(["-c", w]);
            }
            io.push(&uri);
            ok(QEMU_IO, dir, &io);
        }
        seen.push(views(dir, &server, bitmaps));
        assert!(server.stop(), "{name} did not exit cleanly");
    }
    seen
}

#[test]
fn exported_bitmaps_read_the_same_through_both_servers() {
    let Some(dir) = two_images("nbd-bitmap-read") else {
        return;
    };
    let args = ["-r", "-t", "-f", "qcow2", "-A", "-B", "b0", "-B", "b1"];
    let seen = through_both_servers(&dir, &args, &[], &["b0", "b1"]);
    // The maps are not trivially equal: b0 has dirty and clean ranges.
    assert!(seen[1][2].contains("\"dirty\""), "{}", seen[1][2]);
    assert_eq!(seen[0], seen[1]);
}

#[test]
fn writes_through_the_export_dirty_the_recording_bitmap() {
    let Some(dir) = two_images("nbd-bitmap-write") else {
        return;
    };
    let args = ["-t", "-f", "qcow2", "-B", "b1"];
    let writes = ["write 3M 130k", "write -z 6M 4k"];
    let seen = through_both_servers(&dir, &args, &writes, &["b1"]);
    assert!(seen[1][2].contains("3145728"), "{}", seen[1][2]);
    assert_eq!(seen[0], seen[1]);
    // Closed, the image stores b1 with the writes made through the export (host allocation
    // aside: ours fills a partial cluster's copy-on-write tail with written zeroes).
    let info = |f: &str| {
        output_of(&dir, &["info", "--output=json", f])
            .lines()
            .filter(|l| !l.contains("actual-size"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        info("ours.qcow2"),
        info("theirs.qcow2").replace("theirs", "ours")
    );
    ok(QEMU_IMG, &dir, &["check", "ours.qcow2"]);
    ok(QEMU_IMG, &dir, &["compare", "ours.qcow2", "theirs.qcow2"]);
}

fn output_of(dir: &Path, args: &[&str]) -> String {
    let out = run(QEMU_IMG, dir, args);
    assert!(out.status.success(), "{args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_missing_or_busy_bitmap_is_refused_as_qemu_nbd_does() {
    if !nbd_rig::tools_available(&[QEMU_IMG, QEMU_IO, QEMU_NBD]) {
        return;
    }
    let dir = scratch("nbd-bitmap-errors");
    bitmapped(&dir, "img.qcow2");
    for args in [
        &["-r", "-f", "qcow2", "-B", "nosuch", "img.qcow2"][..],
        &[
            "-r",
            "-f",
            "qcow2",
            "-B",
            "b0",
            "-B",
            "b1",
            "-B",
            "b2",
            "img.qcow2",
        ][..],
    ] {
        let ours = run(RQEMU_NBD, &dir, args);
        let theirs = run(QEMU_NBD, &dir, args);
        assert_eq!(ours.status.code(), theirs.status.code(), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&ours.stderr),
            String::from_utf8_lossy(&theirs.stderr),
            "{args:?}"
        );
    }
}
