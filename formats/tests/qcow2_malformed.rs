//! Broken images, built in the test by patching header fields of a valid one, are refused
//! with the error QEMU gives (compared with the reference qemu-io where it is installed),
//! and corrupt table pointers fail requests instead of panicking or writing over metadata.

mod common;

use block::{IoVector, RequestFlags};
use common::*;

fn patch(path: &str, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// A fresh 1 MiB v3 image with one data cluster written at 0 (L2 at 0x40000 or so).
fn valid_image(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    let path = path.to_str().unwrap().to_string();
    let out = std::process::Command::new("/usr/bin/qemu-img")
        .args(["create", "-q", "-f", "qcow2", &path, "1M"])
        .status();
    if out.is_err() {
        // Without the reference, build it with our own driver.
        let mut o = block::Options::new();
        o.set("size", "1048576");
        block_on(async {
            let class = block::registry::find_driver("qcow2").unwrap();
            (class.create.unwrap())(&path, &mut o).await.unwrap()
        });
    }
    block_on(async {
        let blk = open(&path, true).await.unwrap();
        let buf = IoVector::from_slice(&[0x5a; 65536]);
        blk.co_pwritev(0, &buf, RequestFlags::empty())
            .await
            .unwrap();
        blk.close().await.unwrap();
    });
    path
}

fn our_open_error(path: &str) -> String {
    block_on(async {
        match open(path, true).await {
            Ok(_) => "opened".to_string(),
            Err(e) => e.to_string(),
        }
    })
}

fn qemu_open_error(path: &str) -> Option<String> {
    if !std::path::Path::new("/usr/bin/qemu-io").exists() {
        return None;
    }
    let (_, out, err) = run("/usr/bin/qemu-io", &["-f", "qcow2", "-c", "quit", path]);
    let text = format!("{out}{err}");
    let prefix = format!("qemu-io: can't open device {path}: ");
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or("opened")
            .to_string(),
    )
}

#[test]
fn patched_headers_fail_like_qemu() {
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let be32 = |v: u32| v.to_be_bytes().to_vec();
    let be64 = |v: u64| v.to_be_bytes().to_vec();
    let cases: Vec<(&str, u64, Vec<u8>, &str)> = vec![
        ("version", 4, be32(4), "Unsupported qcow2 version 4"),
        (
            "cluster bits small",
            20,
            be32(8),
            "Unsupported cluster size: 2^8",
        ),
        (
            "cluster bits large",
            20,
            be32(22),
            "Unsupported cluster size: 2^22",
        ),
        (
            "backing offset",
            8,
            be64(0x20000),
            "Invalid backing file offset",
        ),
        (
            "l1 size huge",
            36,
            be32(0x1000_0000),
            "Active L1 table too large",
        ),
        (
            "l1 offset unaligned",
            40,
            be64(0x30001),
            "Active L1 table offset invalid",
        ),
        ("l1 too small", 36, be32(0), "L1 table is too small"),
        (
            "reftable huge",
            56,
            be32(0x0100_0000),
            "Reference count table too large",
        ),
        (
            "reftable unaligned",
            48,
            be64(0x10001),
            "Reference count table offset invalid",
        ),
        (
            "snapshots huge",
            60,
            be32(0x0010_0000),
            "Snapshot table too large",
        ),
        (
            "snapshot offset",
            64,
            be64(0x1234),
            "Snapshot table offset invalid",
        ),
        (
            "header length",
            100,
            be32(0x20000),
            "qcow2 header exceeds cluster size",
        ),
        (
            "refcount order",
            96,
            be32(7),
            "Reference count entry width too large; may not exceed 64 bits",
        ),
        (
            "unknown incompat",
            72,
            be64(1 << 63),
            "Unsupported qcow2 feature(s): Unknown incompatible feature: 8000000000000000",
        ),
        (
            "named incompat",
            72,
            be64(1 << 63 | 1 << 5),
            "Unsupported qcow2 feature(s): Unknown incompatible feature: 8000000000000020",
        ),
        (
            "corrupt bit",
            72,
            be64(2),
            "qcow2: Image is corrupt; cannot be opened read/write",
        ),
    ];
    for (i, (what, offset, bytes, expected)) in cases.iter().enumerate() {
        let path = valid_image(dir.path(), &format!("m{i}.qcow2"));
        patch(&path, *offset, bytes);
        let ours = our_open_error(&path);
        assert_eq!(&ours, expected, "{what}");
        if let Some(theirs) = qemu_open_error(&path) {
            assert_eq!(ours, theirs, "{what}: differs from qemu-io");
        }
    }
}

#[test]
fn encrypted_images_need_their_key_and_data_file_images_need_one() {
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let path = valid_image(dir.path(), "enc.qcow2");
    patch(&path, 32, &2u32.to_be_bytes());
    // LUKS-encrypted by the header: opening for I/O needs the key (QEMU's message).
    assert_eq!(
        our_open_error(&path),
        "Parameter 'encrypt.key-secret' is required for cipher"
    );
    let path = valid_image(dir.path(), "data.qcow2");
    patch(&path, 72, &4u64.to_be_bytes());
    // The external data file bit without a data file name (QEMU's message).
    assert_eq!(
        our_open_error(&path),
        "'data-file' is required for this image"
    );
}

/// Finds the L1 table's first entry (the L2 table of guest cluster 0).
fn l2_of_first_cluster(path: &str) -> (u64, u64) {
    let data = std::fs::read(path).unwrap();
    let l1 = u64::from_be_bytes(data[40..48].try_into().unwrap());
    let l2 = u64::from_be_bytes(data[l1 as usize..l1 as usize + 8].try_into().unwrap())
        & 0x00ff_ffff_ffff_fe00;
    (l1, l2)
}

#[test]
fn corrupt_pointers_fail_requests_cleanly() {
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    // An L2 table pointer that is not cluster aligned.
    let path = valid_image(dir.path(), "l1.qcow2");
    let (l1, l2) = l2_of_first_cluster(&path);
    patch(&path, l1, &((l2 + 0x200) | 1 << 63).to_be_bytes());
    block_on(async {
        let blk = open(&path, false).await.unwrap();
        let buf = IoVector::alloc(512);
        let e = blk
            .co_preadv(0, &buf, RequestFlags::empty())
            .await
            .unwrap_err();
        assert_eq!(e.errno(), libc::EIO);
    });
    // L2 entry 1 points far beyond the end of the file, entry 3 at the refcount table.
    let path = valid_image(dir.path(), "l2.qcow2");
    let (_, l2) = l2_of_first_cluster(&path);
    patch(
        &path,
        l2 + 8,
        &((1u64 << 63) | 0x00f0_0000_0000_0000).to_be_bytes(),
    );
    patch(&path, l2 + 24, &((1u64 << 63) | 0x10000).to_be_bytes());
    let reftable_before = std::fs::read(&path).unwrap()[0x10000..0x10200].to_vec();
    block_on(async {
        let blk = open(&path, true).await.unwrap();
        let buf = IoVector::from_slice(&[1; 512]);
        let e = blk.co_pwritev(3 * 65536, &buf, RequestFlags::empty()).await;
        assert!(e.is_err(), "write over the refcount table must fail");
        // A huge host offset fails or reads something, without panicking.
        let r = IoVector::alloc(4096);
        let _ = blk.co_preadv(65536, &r, RequestFlags::empty()).await;
    });
    assert_eq!(
        std::fs::read(&path).unwrap()[0x10000..0x10200],
        reftable_before[..]
    );
}
