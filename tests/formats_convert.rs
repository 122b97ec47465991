//! `rqemu-img convert` round trips between every pair of formats: raw, qcow2, qcow (v1),
//! vmdk in each subformat, vhdx dynamic and fixed, vpc fixed and dynamic, vdi dynamic and
//! static, qed and parallels. Every conversion keeps the guest contents, as the reference
//! `qemu-img compare` sees them, and the images written pass `qemu-img check` where the
//! format has one.

mod reference_tools;

use std::path::Path;

use reference_tools::*;

/// (format, creation options) of every source and target.
const TARGETS: &[(&str, &str)] = &[
    ("raw", ""),
    ("qcow2", ""),
    ("qcow", ""),
    ("vmdk", ""),
    ("vmdk", "subformat=monolithicFlat"),
    ("vmdk", "subformat=twoGbMaxExtentSparse"),
    ("vmdk", "subformat=twoGbMaxExtentFlat"),
    ("vmdk", "subformat=streamOptimized"),
    ("vdi", ""),
    ("vdi", "static=on"),
    ("vpc", ""),
    ("vpc", "subformat=fixed,force_size=on"),
    ("qed", ""),
    ("vhdx", ""),
    ("vhdx", "subformat=fixed,block_state_zero=off"),
    ("parallels", ""),
];

/// Formats whose images `qemu-img check` can check.
fn checkable(fmt: &str) -> bool {
    matches!(fmt, "vdi" | "qed" | "qcow2" | "vhdx" | "parallels" | "vmdk")
}

/// Converts `src` (format `fmt`) with our tool into `out` as `out_fmt` with `opts`, then
/// asserts the reference tools see it identical to the source and, where they can, clean.
fn convert_and_compare(dir: &Path, fmt: &str, src: &str, out_fmt: &str, opts: &str, out: &str) {
    let mut args = vec!["convert", "-f", fmt, "-O", out_fmt];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([src, out]);
    ok(OURS, dir, &args);
    let cmp = run(
        QEMU_IMG,
        dir,
        &["compare", "-f", "raw", "-F", out_fmt, "src.raw", out],
    );
    assert!(
        cmp.status.success(),
        "{fmt} -> {out_fmt} {opts}: {}{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr)
    );
    if checkable(out_fmt) {
        ok(QEMU_IMG, dir, &["check", "-f", out_fmt, out]);
    }
}

/// Removes the files of one image: its own and, for vmdk descriptors, its extents
/// (`NAME-s001.vmdk`, `NAME-f001.vmdk`).
fn remove_image(dir: &Path, stem: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&format!("{stem}.")) || name.starts_with(&format!("{stem}-")) {
            let _ = std::fs::remove_file(dir.join(&*name));
        }
    }
}

#[test]
fn convert_round_trips_between_formats() {
    if !reference_available() {
        return;
    }
    let dir = scratch("round-trips");
    // A source with data, zeroes and holes, sized to whole VHD blocks.
    ok(
        QEMU_IMG,
        &dir,
        &["create", "-q", "-f", "raw", "src.raw", "8M"],
    );
    for (p, off, len) in [
        (0x5a, "0", "64k"),
        (0x00, "1M", "64k"),
        (0xa5, "3145216", "1049600"),
        (0x3c, "7M", "4k"),
    ] {
        let cmd = format!("write -P {p} {off} {len}");
        ok(QEMU_IO, &dir, &["-f", "raw", "-c", &cmd, "src.raw"]);
    }
    for (i, (fmt, opts)) in TARGETS.iter().enumerate() {
        let img = format!("t{i}.{fmt}");
        convert_and_compare(&dir, "raw", "src.raw", fmt, opts, &img);
        // ...and back out of it into every format and subformat.
        for (j, (out_fmt, out_opts)) in TARGETS.iter().enumerate() {
            let stem = format!("o{i}-{j}");
            let out = format!("{stem}.{out_fmt}");
            convert_and_compare(&dir, fmt, &img, out_fmt, out_opts, &out);
            remove_image(&dir, &stem);
        }
    }
}
