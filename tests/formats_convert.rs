//! `rqemu-img convert` round trips between the formats beyond qcow2 (vdi, vpc fixed and
//! dynamic, qed, vhdx dynamic and fixed, parallels), raw and qcow2: every conversion keeps
//! the guest contents, as the reference `qemu-img compare` sees them, and the images
//! written pass `qemu-img check` where the format has one.

mod reference_tools;

use reference_tools::*;

/// (format, creation options) of every target.
const TARGETS: &[(&str, &str)] = &[
    ("raw", ""),
    ("qcow2", ""),
    ("vdi", ""),
    ("vdi", "static=on"),
    ("vpc", ""),
    ("vpc", "subformat=fixed,force_size=on"),
    ("qed", ""),
    ("vhdx", ""),
    ("vhdx", "subformat=fixed,block_state_zero=off"),
    ("parallels", ""),
];

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
    ] {
        let cmd = format!("write -P {p} {off} {len}");
        ok(QEMU_IO, &dir, &["-f", "raw", "-c", &cmd, "src.raw"]);
    }
    for (i, (fmt, opts)) in TARGETS.iter().enumerate() {
        let img = format!("t{i}.{fmt}");
        let mut args = vec!["convert", "-f", "raw", "-O", fmt];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend(["src.raw", img.as_str()]);
        ok(OURS, &dir, &args);
        let cmp = run(
            QEMU_IMG,
            &dir,
            &["compare", "-f", "raw", "-F", fmt, "src.raw", &img],
        );
        assert!(
            cmp.status.success(),
            "raw -> {fmt} {opts}: {}",
            String::from_utf8_lossy(&cmp.stdout)
        );
        if matches!(*fmt, "vdi" | "qed" | "qcow2" | "vhdx" | "parallels") {
            ok(QEMU_IMG, &dir, &["check", "-f", fmt, &img]);
        }
        // ...and back out of it into every other format.
        for (j, (out_fmt, _)) in TARGETS.iter().enumerate() {
            let out = format!("o{i}-{j}.{out_fmt}");
            ok(
                OURS,
                &dir,
                &["convert", "-f", fmt, "-O", out_fmt, &img, &out],
            );
            let cmp = run(
                QEMU_IMG,
                &dir,
                &["compare", "-f", "raw", "-F", out_fmt, "src.raw", &out],
            );
            assert!(
                cmp.status.success(),
                "{fmt} -> {out_fmt}: {}",
                String::from_utf8_lossy(&cmp.stdout)
            );
            let _ = std::fs::remove_file(dir.join(&out));
        }
    }
}
