//! Persistent dirty bitmaps in qcow2 against the reference QEMU: bitmaps QEMU's tools made
//! read identically by ours, bitmaps ours made read clean by QEMU's, the in-use flag after a
//! crash, and malformed bitmap directories refused with QEMU's messages. Bitmap contents are
//! compared through what QEMU exposes offline: `convert --bitmaps` of both images must give
//! byte-identical files.

mod reference_tools;

use std::fs;
use std::path::Path;

use reference_tools::{ok, reference_available, run, scratch, OURS, QEMU_IMG, QEMU_IO};

const OURS_IO: &str = env!("CARGO_BIN_EXE_rqemu-io");

fn stdout(bin: &str, dir: &Path, args: &[&str]) -> String {
    let out = run(bin, dir, args);
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// stderr and success of a run, with the program name made neutral.
fn failure(bin: &str, dir: &Path, args: &[&str]) -> (bool, String) {
    let out = run(bin, dir, args);
    let err = String::from_utf8_lossy(&out.stderr).replace("rqemu-img", "qemu-img");
    (out.status.success(), err)
}

/// The same steps on an image with either tool set: bitmaps added before and after writes,
/// one disabled, one with another granularity, a clear, a merge and a removal.
fn build(img: &str, io: &str, dir: &Path, name: &str) {
    ok(img, dir, &["create", "-q", "-f", "qcow2", name, "10M"]);
    ok(img, dir, &["bitmap", "--add", name, "b0"]);
    ok(
        img,
        dir,
        &["bitmap", "--add", "-g", "512k", "--disable", name, "b1"],
    );
    ok(
        io,
        dir,
        &["-c", "write -P 1 1M 1M", "-c", "write 5M 4k", name],
    );
    ok(img, dir, &["bitmap", "--add", "-g", "128k", name, "b2"]);
    ok(
        io,
        dir,
        &["-c", "write 3M 64k", "-c", "discard 1M 64k", name],
    );
    ok(img, dir, &["bitmap", "--add", name, "tmp"]);
    ok(
        img,
        dir,
        &["bitmap", "--merge", "b0", "--enable", name, "b1"],
    );
    ok(img, dir, &["bitmap", "--clear", "--disable", name, "b2"]);
    ok(io, dir, &["-c", "write 9M 512", name]);
    ok(img, dir, &["bitmap", "--remove", name, "tmp"]);
}

#[test]
fn bitmaps_read_and_written_like_qemu() {
    if !reference_available() {
        return;
    }
    let dir = scratch("bitmaps-both-ways");
    build(QEMU_IMG, QEMU_IO, &dir, "ref.qcow2");
    build(OURS, OURS_IO, &dir, "ours.qcow2");
    // QEMU's bitmaps as ours read them, ours as QEMU reads them.
    for args in [
        &["info", "ref.qcow2"][..],
        &["info", "--output=json", "ref.qcow2"],
    ] {
        assert_eq!(
            stdout(OURS, &dir, args),
            stdout(QEMU_IMG, &dir, args),
            "{args:?}"
        );
    }
    let info = |img: &str, f: &str| stdout(img, &dir, &["info", "--output=json", f]);
    let strip = |s: String| {
        s.lines()
            .filter(|l| !l.contains("size") && !l.contains("filename"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip(info(QEMU_IMG, "ours.qcow2")),
        strip(info(QEMU_IMG, "ref.qcow2"))
    );
    let check = stdout(QEMU_IMG, &dir, &["check", "ours.qcow2"]);
    assert!(
        check.starts_with("No errors were found on the image."),
        "{check}"
    );
    // Contents: every converted copy is the same file, whoever made or copied the bitmaps.
    ok(
        QEMU_IMG,
        &dir,
        &[
            "convert",
            "--bitmaps",
            "-O",
            "qcow2",
            "ref.qcow2",
            "a.qcow2",
        ],
    );
    ok(
        QEMU_IMG,
        &dir,
        &[
            "convert",
            "--bitmaps",
            "-O",
            "qcow2",
            "ours.qcow2",
            "b.qcow2",
        ],
    );
    ok(
        OURS,
        &dir,
        &[
            "convert",
            "--bitmaps",
            "-O",
            "qcow2",
            "ref.qcow2",
            "c.qcow2",
        ],
    );
    let a = fs::read(dir.join("a.qcow2")).unwrap();
    assert!(
        a == fs::read(dir.join("b.qcow2")).unwrap(),
        "ours stored other bits"
    );
    assert!(
        a == fs::read(dir.join("c.qcow2")).unwrap(),
        "ours copied other bits"
    );
    // Bitmaps need a qcow2 target and a qcow2 source.
    for bin in [QEMU_IMG, OURS] {
        let (_, err) = failure(
            bin,
            &dir,
            &["convert", "--bitmaps", "-O", "raw", "ref.qcow2", "x.raw"],
        );
        assert_eq!(
            err,
            "qemu-img: Format driver 'raw' does not support bitmaps\n"
        );
    }
}

/// A 4 MiB qcow2 image made by QEMU with one enabled bitmap, b0.
fn image_with_bitmap(dir: &Path, name: &str) {
    ok(QEMU_IMG, dir, &["create", "-q", "-f", "qcow2", name, "4M"]);
    ok(QEMU_IMG, dir, &["bitmap", "--add", name, "b0"]);
}

#[test]
fn a_crash_leaves_bitmaps_inconsistent() {
    if !reference_available() {
        return;
    }
    let dir = scratch("bitmaps-crash");
    image_with_bitmap(&dir, "t.qcow2");
    // Killed while open read-write: the bitmap stays marked in use.
    let _ = run(
        OURS_IO,
        &dir,
        &["-c", "write 0 64k", "-c", "abort", "t.qcow2"],
    );
    ok(OURS, &dir, &["bitmap", "--add", "t.qcow2", "b1"]);
    for args in [
        &["info", "t.qcow2"][..],
        &["info", "--output=json", "t.qcow2"],
    ] {
        assert_eq!(
            stdout(OURS, &dir, args),
            stdout(QEMU_IMG, &dir, args),
            "{args:?}"
        );
    }
    assert!(stdout(OURS, &dir, &["info", "t.qcow2"]).contains("[0]: in-use"));
    for (bin, copy) in [(QEMU_IMG, "r.qcow2"), (OURS, "o.qcow2")] {
        let (done, err) = failure(
            bin,
            &dir,
            &["convert", "--bitmaps", "-O", "qcow2", "t.qcow2", "c.qcow2"],
        );
        assert!(!done);
        assert_eq!(
            err,
            "qemu-img: Cannot copy inconsistent bitmap 'b0'\nTry --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it\n"
        );
        let (_, err) = failure(bin, &dir, &["bitmap", "--clear", "t.qcow2", "b0"]);
        assert!(
            err.starts_with(
                "qemu-img: Operation clear on bitmap b0 failed: Bitmap 'b0' is inconsistent"
            ),
            "{err}"
        );
        let (done, err) = failure(
            bin,
            &dir,
            &[
                "convert",
                "--bitmaps",
                "--skip-broken-bitmaps",
                "-O",
                "qcow2",
                "t.qcow2",
                copy,
            ],
        );
        assert!(done, "{err}");
        assert_eq!(
            err,
            "qemu-img: warning: Skipping inconsistent bitmap 'b0'\n"
        );
    }
    assert!(fs::read(dir.join("r.qcow2")).unwrap() == fs::read(dir.join("o.qcow2")).unwrap());
}

/// A corruption applied to an image's bytes.
type Patch = Box<dyn Fn(&mut Vec<u8>)>;

/// The offset of the bitmaps extension's data in the first cluster.
fn bitmaps_ext(image: &[u8]) -> usize {
    let mut pos = 112;
    loop {
        let magic = u32::from_be_bytes(image[pos..pos + 4].try_into().unwrap());
        let len = u32::from_be_bytes(image[pos + 4..pos + 8].try_into().unwrap()) as usize;
        if magic == 0x2385_2875 {
            return pos + 8;
        }
        assert_ne!(magic, 0, "no bitmaps extension");
        pos += 8 + len.next_multiple_of(8);
    }
}

#[test]
fn malformed_bitmap_directories_are_refused_like_qemu() {
    if !reference_available() {
        return;
    }
    let dir = scratch("bitmaps-malformed");
    image_with_bitmap(&dir, "good.qcow2");
    let good = fs::read(dir.join("good.qcow2")).unwrap();
    let ext = bitmaps_ext(&good);
    let dir_offset = u64::from_be_bytes(good[ext + 16..ext + 24].try_into().unwrap()) as usize;
    let cases: Vec<(&str, Patch)> = vec![
        (
            "too many bitmaps",
            Box::new(move |b| b[ext..ext + 4].copy_from_slice(&u32::MAX.to_be_bytes())),
        ),
        (
            "zero bitmaps",
            Box::new(move |b| b[ext..ext + 4].copy_from_slice(&0u32.to_be_bytes())),
        ),
        (
            "two bitmaps",
            Box::new(move |b| b[ext..ext + 4].copy_from_slice(&2u32.to_be_bytes())),
        ),
        (
            "huge directory",
            Box::new(move |b| b[ext + 8..ext + 16].copy_from_slice(&(1u64 << 40).to_be_bytes())),
        ),
        ("unaligned directory", Box::new(move |b| b[ext + 23] |= 8)),
        ("reserved field", Box::new(move |b| b[ext + 4] = 1)),
        (
            "huge table",
            Box::new(move |b| {
                b[dir_offset + 8..dir_offset + 12].copy_from_slice(&u32::MAX.to_be_bytes())
            }),
        ),
        ("unaligned table", Box::new(move |b| b[dir_offset + 7] = 8)),
        (
            "bad granularity",
            Box::new(move |b| b[dir_offset + 17] = 63),
        ),
        ("extra data", Box::new(move |b| b[dir_offset + 23] = 8)),
        (
            "name past the end",
            Box::new(move |b| {
                b[dir_offset + 18..dir_offset + 20].copy_from_slice(&0xffffu16.to_be_bytes())
            }),
        ),
    ];
    for (what, patch) in cases {
        let mut image = good.clone();
        patch(&mut image);
        fs::write(dir.join("bad.qcow2"), &image).unwrap();
        let (ref_ok, ref_err) = failure(QEMU_IMG, &dir, &["info", "bad.qcow2"]);
        let (ours_ok, ours_err) = failure(OURS, &dir, &["info", "bad.qcow2"]);
        assert!(!ref_ok && !ours_ok, "{what}: opened");
        assert_eq!(ours_err, ref_err, "{what}");
    }
    // Written by a program unaware of bitmaps (autoclear bit gone): dropped with a warning,
    // and their clusters leak.
    let mut stale = good.clone();
    stale[95] &= !1;
    for bin in [QEMU_IMG, OURS] {
        fs::write(dir.join("stale.qcow2"), &stale).unwrap();
        let out = run(bin, &dir, &["check", "-r", "leaks", "stale.qcow2"]);
        let err = String::from_utf8_lossy(&out.stderr).replace("rqemu-img", "qemu-img");
        assert!(
            err.starts_with(
                "qemu-img: warning: a program lacking bitmap support modified this file"
            ),
            "{err}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("leaked clusters"));
        let info = stdout(QEMU_IMG, &dir, &["info", "stale.qcow2"]);
        assert!(!info.contains("bitmaps"), "{info}");
    }
}
