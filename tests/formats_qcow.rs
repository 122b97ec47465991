//! The qcow (version 1) driver against QEMU's: images qemu-img creates and qemu-io fills
//! read identically in rqemu-img, with and without a backing file and with compressed
//! clusters; images rqemu-img creates and writes read identically in qemu-img; malformed
//! headers fail with QEMU's messages and without panics.

mod reference_tools;

use std::path::Path;

use reference_tools::*;

const OURS_IO: &str = env!("CARGO_BIN_EXE_rqemu-io");

const WRITES: &[&str] = &[
    "write -P 0x5a 0 64k",
    "write -P 0xa5 100000 200000",
    "write -P 0x11 5M 4096",
];

fn io(bin: &str, dir: &Path, fmt: &str, img: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(img);
    ok(bin, dir, &args);
}

#[test]
fn images_cross_between_qemu_and_ours() {
    if !reference_available() {
        return;
    }
    let dir = scratch("qcow-cross");
    ok(
        QEMU_IMG,
        &dir,
        &["create", "-q", "-f", "raw", "ref.raw", "8M"],
    );
    io(QEMU_IO, &dir, "raw", "ref.raw", WRITES);
    for (maker, writer, reader_img) in [(QEMU_IMG, QEMU_IO, OURS), (OURS, OURS_IO, QEMU_IMG)] {
        let img = "t.qcow";
        let _ = std::fs::remove_file(dir.join(img));
        ok(maker, &dir, &["create", "-q", "-f", "qcow", img, "8M"]);
        io(writer, &dir, "qcow", img, WRITES);
        ok(
            reader_img,
            &dir,
            &["convert", "-f", "qcow", "-O", "raw", img, "out.raw"],
        );
        assert_identical(&dir.join("ref.raw"), &dir.join("out.raw"), maker);
        assert_identical(&dir.join("ref.raw"), &dir.join(img), maker);
    }
    // Compressed clusters, written by each and read by the other.
    ok(
        OURS,
        &dir,
        &["convert", "-c", "-O", "qcow", "ref.raw", "ours-c.qcow"],
    );
    assert_identical(&dir.join("ref.raw"), &dir.join("ours-c.qcow"), "ours -c");
    // (qemu-img convert -c into qcow fails at its end-of-stream write: qemu-io writes them.)
    ok(
        QEMU_IMG,
        &dir,
        &["create", "-q", "-f", "qcow", "qemu-c.qcow", "8M"],
    );
    let compressed = [
        "write -c -P 0x5a 0 4k",
        "write -c -P 0x5a 4k 4k",
        "write -c -P 0x11 5M 4k",
    ];
    io(QEMU_IO, &dir, "qcow", "qemu-c.qcow", &compressed);
    ok(
        QEMU_IMG,
        &dir,
        &["create", "-q", "-f", "raw", "c.raw", "8M"],
    );
    io(
        QEMU_IO,
        &dir,
        "raw",
        "c.raw",
        &["write -P 0x5a 0 8k", "write -P 0x11 5M 4k"],
    );
    ok(
        OURS,
        &dir,
        &["convert", "-O", "raw", "qemu-c.qcow", "back.raw"],
    );
    assert_identical(&dir.join("c.raw"), &dir.join("back.raw"), "qemu -c");
    let map =
        String::from_utf8(run(QEMU_IMG, &dir, &["map", "--output=json", "ours-c.qcow"]).stdout)
            .unwrap();
    assert!(map.contains("\"compressed\": true"), "{map}");
    // Partial overwrite of a compressed cluster keeps the rest of it.
    io(
        OURS_IO,
        &dir,
        "qcow",
        "qemu-c.qcow",
        &["write -P 0x77 512 512"],
    );
    io(
        QEMU_IO,
        &dir,
        "qcow",
        "qemu-c.qcow",
        &["read -P 0x5a 0 512", "read -P 0x77 512 512"],
    );
}

#[test]
fn backing_files_and_commit() {
    if !reference_available() {
        return;
    }
    let dir = scratch("qcow-backing");
    ok(
        QEMU_IMG,
        &dir,
        &["create", "-q", "-f", "qcow", "base.qcow", "4M"],
    );
    io(QEMU_IO, &dir, "qcow", "base.qcow", &["write -P 0x33 0 4M"]);
    let create = [
        "create",
        "-q",
        "-f",
        "qcow",
        "-b",
        "base.qcow",
        "-F",
        "qcow",
        "top.qcow",
    ];
    ok(OURS, &dir, &create);
    io(
        OURS_IO,
        &dir,
        "qcow",
        "top.qcow",
        &["write -P 0x44 1024 512"],
    );
    io(
        QEMU_IO,
        &dir,
        "qcow",
        "top.qcow",
        &[
            "read -P 0x33 0 1024",
            "read -P 0x44 1024 512",
            "read -P 0x33 1536 1M",
        ],
    );
    ok(OURS, &dir, &["commit", "-q", "top.qcow"]);
    io(
        QEMU_IO,
        &dir,
        "qcow",
        "base.qcow",
        &["read -P 0x44 1024 512"],
    );
    // The committed overlay was emptied: it reads through to the base again.
    let map = String::from_utf8(run(QEMU_IMG, &dir, &["map", "top.qcow"]).stdout).unwrap();
    assert!(map.contains("base.qcow"), "{map}");
}

fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

#[test]
fn malformed_headers_fail_cleanly() {
    let dir = scratch("qcow-malformed");
    let cases: &[(u64, &[u8], &str)] = &[
        (32, &[20], "Cluster size must be between 512 and 64k"),
        (33, &[20], "L2 table size must be between 512 and 64k"),
        (24, &[0xff; 8], "Image too large"),
        (
            24,
            &[0; 8],
            "Image size is too small (must be at least 2 bytes)",
        ),
        (
            36,
            &[0, 0, 0, 7],
            "invalid encryption method in qcow header",
        ),
        (4, &[0, 0, 0, 2], "Unsupported qcow version 2"),
        (16, &[0, 0, 0x10, 0], "Backing file name too long"),
    ];
    for (i, (offset, bytes, message)) in cases.iter().enumerate() {
        let img = format!("m{i}.qcow");
        ok(OURS, &dir, &["create", "-q", "-f", "qcow", &img, "1M"]);
        if *offset == 16 {
            poke(&dir.join(&img), 8, &48u64.to_be_bytes());
        }
        poke(&dir.join(&img), *offset, bytes);
        let out = run(OURS_IO, &dir, &["-f", "qcow", "-c", "read 0 512", &img]);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(message), "{message}: {text}");
    }
    // An L1 table far beyond the end of the file reads as unallocated, allocating nothing.
    ok(
        OURS,
        &dir,
        &["create", "-q", "-f", "qcow", "far.qcow", "1T"],
    );
    poke(&dir.join("far.qcow"), 40, &(1u64 << 50).to_be_bytes());
    let out = run(
        OURS_IO,
        &dir,
        &["-f", "qcow", "-c", "read -P 0 0 4k", "far.qcow"],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("read 4096/4096"));
    // A table entry past the end of the file is an I/O error, not a crash.
    ok(OURS, &dir, &["create", "-q", "-f", "qcow", "gt.qcow", "1M"]);
    poke(&dir.join("gt.qcow"), 48, &(1u64 << 40).to_be_bytes());
    let out = run(
        OURS_IO,
        &dir,
        &["-f", "qcow", "-c", "read 0 512", "gt.qcow"],
    );
    assert!(out.status.code().is_some());
    assert!(String::from_utf8_lossy(&out.stdout).contains("read failed"));
}

#[test]
fn aes_encrypted_images_cross() {
    if !reference_available() {
        return;
    }
    let dir = scratch("qcow-aes");
    let secret = "secret,id=sec0,data=astrochicken";
    let spec = "driver=qcow,file.filename=e.qcow,encrypt.key-secret=sec0";
    let opts = "encryption=on,encrypt.key-secret=sec0";
    for (maker, writer, reader) in [(OURS, OURS_IO, QEMU_IO), (QEMU_IMG, QEMU_IO, OURS_IO)] {
        let _ = std::fs::remove_file(dir.join("e.qcow"));
        let create = [
            "create", "--object", secret, "-f", "qcow", "-o", opts, "e.qcow", "1M",
        ];
        ok(maker, &dir, &create);
        let write = [
            "--object",
            secret,
            "-c",
            "write -P 0xb 512 512",
            "--image-opts",
            spec,
        ];
        ok(writer, &dir, &write);
        let mut read = vec!["--object", secret];
        for c in ["read -P 0 0 512", "read -P 0xb 512 512", "read -P 0 1k 3k"] {
            read.extend(["-c", c]);
        }
        read.extend(["--image-opts", spec]);
        let out = run(reader, &dir, &read);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("Pattern verification failed"),
            "{maker}: {text}"
        );
        assert_eq!(text.matches("read ").count(), 3, "{maker}: {text}");
    }
    // Without the key only metadata can be looked at.
    let info = run(OURS, &dir, &["info", "e.qcow"]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("encrypted: yes"));
    let out = run(OURS_IO, &dir, &["-c", "read 0 512", "e.qcow"]);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("Parameter 'encrypt.key-secret' is required for cipher"));
}
