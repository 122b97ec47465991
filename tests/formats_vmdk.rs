//! The vmdk driver against QEMU's: images qemu-img creates in every subformat and with
//! every creation option, filled by qemu-io, read identically by rqemu-img; images
//! rqemu-img creates and rqemu-io writes read identically by qemu-img and pass its check;
//! conversions through each subformat round-trip; malformed images fail with QEMU's
//! messages and without panics.

mod reference_tools;

use std::path::Path;

use reference_tools::*;

const OURS_IO: &str = env!("CARGO_BIN_EXE_rqemu-io");

/// Every subformat and option combination exercised, as `-o` strings.
const VARIANTS: &[&str] = &[
    "",
    "zeroed_grain=on",
    "subformat=monolithicFlat",
    "subformat=twoGbMaxExtentSparse",
    "subformat=twoGbMaxExtentFlat",
    "adapter_type=lsilogic,hwversion=6,toolsversion=10240",
    "compat6=on,adapter_type=buslogic",
];

/// Writes that cross grains, extents (2 GiB) and leave holes; one zero write.
const WRITES: &[&str] = &[
    "write -P 0x5a 0 64k",
    "write -P 0xa5 100000 200000",
    "write -P 0x11 2147483136 1024",
    "write -z 3M 128k",
    "write -P 0x22 4G 4096",
];

fn raw_of(bin: &str, dir: &Path, img: &str, raw: &str) {
    ok(bin, dir, &["convert", "-O", "raw", img, raw]);
}

fn io(bin: &str, dir: &Path, img: &str, cmds: &[&str]) {
    let mut args = vec!["-f", "vmdk"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(img);
    ok(bin, dir, &args);
}

fn info_json(bin: &str, dir: &Path, img: &str) -> serde_json::Value {
    let out = run(bin, dir, &["info", "--output=json", img]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn qemu_images_read_identically() {
    if !reference_available() {
        return;
    }
    let dir = scratch("vmdk-from-qemu");
    for (i, opts) in VARIANTS.iter().enumerate() {
        let img = format!("q{i}.vmdk");
        let mut args = vec!["create", "-q", "-f", "vmdk"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([img.as_str(), "5G"]);
        ok(QEMU_IMG, &dir, &args);
        io(QEMU_IO, &dir, &img, WRITES);
        ok(QEMU_IMG, &dir, &["convert", "-O", "raw", &img, "ref.raw"]);
        raw_of(OURS, &dir, &img, "ours.raw");
        assert_identical(&dir.join("ref.raw"), &dir.join("ours.raw"), opts);
        let (q, o) = (info_json(QEMU_IMG, &dir, &img), info_json(OURS, &dir, &img));
        assert_eq!(q["format-specific"], o["format-specific"], "{opts}");
        assert_eq!(q["cluster-size"], o["cluster-size"], "{opts}");
        let map = |bin| String::from_utf8(run(bin, &dir, &["map", &img]).stdout).unwrap();
        assert_eq!(map(QEMU_IMG), map(OURS), "map of {opts}");
        for f in std::fs::read_dir(&dir).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
    }
}

#[test]
fn our_images_read_identically_in_qemu_and_pass_its_check() {
    if !reference_available() {
        return;
    }
    let dir = scratch("vmdk-from-ours");
    for (i, opts) in VARIANTS.iter().enumerate() {
        let img = format!("o{i}.vmdk");
        let mut args = vec!["create", "-q", "-f", "vmdk"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([img.as_str(), "5G"]);
        ok(OURS, &dir, &args);
        io(OURS_IO, &dir, &img, WRITES);
        ok(QEMU_IMG, &dir, &["check", &img]);
        ok(
            QEMU_IMG,
            &dir,
            &["create", "-q", "-f", "raw", "ref.raw", "5G"],
        );
        let mut raw_io = vec!["-f", "raw"];
        for w in WRITES {
            raw_io.extend(["-c", w]);
        }
        raw_io.push("ref.raw");
        ok(QEMU_IO, &dir, &raw_io);
        assert_identical(&dir.join("ref.raw"), &dir.join(&img), opts);
        for f in std::fs::read_dir(&dir).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
    }
}

#[test]
fn convert_round_trips_through_every_subformat() {
    if !reference_available() {
        return;
    }
    let dir = scratch("vmdk-convert");
    ok(
        QEMU_IMG,
        &dir,
        &["create", "-q", "-f", "raw", "src.raw", "6M"],
    );
    for w in [
        "write -P 0x5a 0 64k",
        "write -P 0xa5 1M 1500k",
        "write -P 7 5M 512",
    ] {
        ok(QEMU_IO, &dir, &["-f", "raw", "-c", w, "src.raw"]);
    }
    let subformats = [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "streamOptimized",
    ];
    for sub in subformats {
        let opt = format!("subformat={sub}");
        let img = format!("{sub}.vmdk");
        ok(
            OURS,
            &dir,
            &["convert", "-O", "vmdk", "-o", &opt, "src.raw", &img],
        );
        assert_identical(&dir.join("src.raw"), &dir.join(&img), sub);
        ok(QEMU_IMG, &dir, &["check", &img]);
        for out_fmt in ["raw", "qcow2"] {
            let out = format!("{sub}.{out_fmt}");
            ok(OURS, &dir, &["convert", "-O", out_fmt, &img, &out]);
            assert_identical(&dir.join("src.raw"), &dir.join(&out), &out);
        }
        // QEMU's own conversion into the subformat reads back the same with ours.
        let theirs = format!("q-{sub}.vmdk");
        ok(
            QEMU_IMG,
            &dir,
            &["convert", "-O", "vmdk", "-o", &opt, "src.raw", &theirs],
        );
        ok(OURS, &dir, &["convert", "-O", "raw", &theirs, "back.raw"]);
        assert_identical(&dir.join("src.raw"), &dir.join("back.raw"), &theirs);
    }
}

#[test]
fn backing_chains_follow_the_parent_cid() {
    if !reference_available() {
        return;
    }
    let dir = scratch("vmdk-backing");
    ok(
        QEMU_IMG,
        &dir,
        &["create", "-q", "-f", "vmdk", "base.vmdk", "4M"],
    );
    io(QEMU_IO, &dir, "base.vmdk", &["write -P 0x33 0 4M"]);
    let create = [
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        "top.vmdk",
    ];
    ok(OURS, &dir, &create);
    // A partial write copies the rest of its grain from the parent.
    io(OURS_IO, &dir, "top.vmdk", &["write -P 0x44 1000 100"]);
    io(
        QEMU_IO,
        &dir,
        "top.vmdk",
        &[
            "read -P 0x33 0 1000",
            "read -P 0x44 1000 100",
            "read -P 0x33 1100 4000k",
        ],
    );
    let info = info_json(OURS, &dir, "top.vmdk");
    assert_eq!(info["backing-filename"], "base.vmdk");
    // Changing the parent changes its CID: the child no longer reads through it.
    io(QEMU_IO, &dir, "base.vmdk", &["write -P 0x55 2M 512"]);
    let out = run(OURS_IO, &dir, &["-c", "read 2M 512", "top.vmdk"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("read failed: Invalid argument"));
}

/// Writes `bytes` at `offset` of a file.
fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Opens an image with rqemu-io and returns what it printed; it must not crash.
fn open_with_ours(dir: &Path, img: &str, cmd: &str) -> String {
    let out = run(OURS_IO, dir, &["-c", cmd, img]);
    assert!(out.status.code().is_some(), "killed by a signal");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("panicked"), "{text}");
    text
}

#[test]
fn malformed_images_fail_cleanly() {
    let dir = scratch("vmdk-malformed");
    let fresh = |name: &str| {
        ok(OURS, &dir, &["create", "-q", "-f", "vmdk", name, "64M"]);
        dir.join(name)
    };
    // Header fields: granularity, grain table size, capacity (QEMU 059's cases).
    poke(&fresh("g.vmdk"), 20, &[0xff; 8]);
    assert!(open_with_ours(&dir, "g.vmdk", "read 0 512")
        .contains("Invalid granularity, image may be corrupt"));
    poke(&fresh("l2.vmdk"), 44, &[0xff; 4]);
    assert!(open_with_ours(&dir, "l2.vmdk", "read 0 512").contains("L2 table size too big"));
    let l1 = fresh("l1.vmdk");
    poke(&l1, 16, &[0xff; 4]);
    poke(&l1, 44, &[1, 0, 0, 0]);
    assert!(open_with_ours(&dir, "l1.vmdk", "read 0 512").contains("L1 size too big"));
    // Grain directory and tables beyond the end of the file: reads see zeroes.
    let gd = fresh("gd.vmdk");
    poke(&gd, 56, &0x7fff_0000u64.to_le_bytes());
    poke(&gd, 48, &0x7fff_0000u64.to_le_bytes());
    let out = open_with_ours(&dir, "gd.vmdk", "read -P 0 0 64k");
    assert!(out.contains("read 65536/65536"), "{out}");
    // A grain table entry pointing far beyond the end of the file.
    let gt = fresh("gt.vmdk");
    let gt_entry = 31 * 512; // the first table after the directory at sector 30
    poke(&gt, gt_entry, &0xffff_fff0u32.to_le_bytes());
    // Reading there finds the end of the file (zeroes, as QEMU's file driver gives);
    // the check names the entry.
    open_with_ours(&dir, "gt.vmdk", "read 0 512");
    let check = run(OURS, &dir, &["check", "gt.vmdk"]);
    assert!(String::from_utf8_lossy(&check.stderr).contains("points after EOF"));
    // Truncated image.
    let t = fresh("t.vmdk");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&t)
        .unwrap()
        .set_len(4096)
        .unwrap();
    assert!(open_with_ours(&dir, "t.vmdk", "read 0 512").contains("File truncated"));
    // A descriptor whose sparse extent is a descriptor naming the same extent: a loop.
    let lp = fresh("loop-s001.vmdk");
    poke(&lp, 12, &0u64.to_le_bytes()); // capacity 0: the embedded descriptor describes
    let desc = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n\
                createType=\"twoGbMaxExtentSparse\"\nRW 128 SPARSE \"loop-s001.vmdk\"\n";
    let mut area = desc.as_bytes().to_vec();
    area.resize(10240, 0);
    poke(&lp, 512, &area);
    std::fs::write(dir.join("loop.vmdk"), desc).unwrap();
    // Read-write, the second open of the same extent meets the first one's lock;
    // read-only, the nesting limit stops it.
    assert!(open_with_ours(&dir, "loop.vmdk", "read 0 512").contains("lock"));
    let out = run(OURS_IO, &dir, &["-r", "-c", "read 0 512", "loop.vmdk"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nested too deeply"));
    // Malformed extent lines.
    let bad = "version=1\nCID=58ab4847\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\
               RW 12582912 VMFS \"dummy.vmdk\" 1\n";
    std::fs::write(dir.join("bad.vmdk"), bad).unwrap();
    assert!(open_with_ours(&dir, "bad.vmdk", "read 0 512")
        .contains("Invalid extent line: RW 12582912 VMFS \"dummy.vmdk\" 1"));
    // A huge flat capacity is only metadata: opening does not allocate for it.
    let huge = "version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\
                RW 9223372036854775807 FLAT \"huge-flat.vmdk\" 0\n";
    std::fs::write(dir.join("huge.vmdk"), huge).unwrap();
    std::fs::write(dir.join("huge-flat.vmdk"), [0u8; 512]).unwrap();
    open_with_ours(&dir, "huge.vmdk", "read 0 512");
}
