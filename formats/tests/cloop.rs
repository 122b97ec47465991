//! The read-only cloop driver: images built here (qemu-img cannot create cloop) read as
//! their contents and as the reference qemu-img reads them, the sample image of
//! qemu-iotests too, and malformed headers and offset tables fail with QEMU's messages.

mod common;

use std::io::Write;

use common::*;

const PREAMBLE: &[u8] =
    b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

/// A cloop of `disk` in blocks of `block_size` (zlib streams).
fn build(disk: &[u8], block_size: usize) -> Vec<u8> {
    let mut f = PREAMBLE.to_vec();
    f.resize(128, 0);
    let n = disk.len() / block_size;
    f.extend_from_slice(&(block_size as u32).to_be_bytes());
    f.extend_from_slice(&(n as u32).to_be_bytes());
    let blobs: Vec<Vec<u8>> = disk
        .chunks(block_size)
        .map(|b| {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(b).unwrap();
            e.finish().unwrap()
        })
        .collect();
    let mut at = (f.len() + (n + 1) * 8) as u64;
    for b in blobs.iter() {
        f.extend_from_slice(&at.to_be_bytes());
        at += b.len() as u64;
    }
    f.extend_from_slice(&at.to_be_bytes());
    for b in blobs {
        f.extend_from_slice(&b);
    }
    f
}

fn disk() -> Vec<u8> {
    (0..(3u32 << 20))
        .map(|i| {
            if (i >> 16) % 3 == 1 {
                0
            } else {
                (i ^ (i >> 9)) as u8
            }
        })
        .collect()
}

#[test]
fn built_images_read_as_their_contents_and_as_qemu_reads_them() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let disk = disk();
    for bs in [512, 64 << 10, 1 << 20] {
        let img = write_image(&dir, &format!("{bs}.cloop"), &build(&disk, bs));
        assert_eq!(first_diff(&read_like_reference(&img, "cloop"), &disk), None);
    }
}

#[test]
fn the_iotests_sample_reads_as_in_qemu() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    if let Some(img) = iotests_sample("simple-pattern.cloop", dir.path()) {
        assert_eq!(read_like_reference(&img, "cloop").len(), 1 << 20);
    }
}

#[test]
fn probing_finds_the_preamble_and_writes_are_refused() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let f = build(&disk(), 64 << 10);
    let probed = block::registry::probe_format(&f, "x").map(|c| c.format_name);
    assert_eq!(probed, Some("cloop"));
    let img = write_image(&dir, "w.cloop", &f);
    let err = block_on(open_fmt(&img, "cloop", true))
        .map(drop)
        .expect_err("opened rw");
    assert_eq!(err.to_string(), "Image is read-only");
}

#[test]
fn malformed_headers_and_tables_fail_with_qemus_messages() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let good = build(&disk(), 64 << 10);
    let cases: [(&str, u64, &[u8], &str); 7] = [
        (
            "bs513",
            128,
            &[0, 0, 2, 1],
            "block_size 513 must be a multiple of 512",
        ),
        ("bs0", 128, &[0, 0, 0, 0], "block_size cannot be zero"),
        (
            "bshuge",
            128,
            &[0xff, 0xff, 0xfe, 0],
            "block_size 4294966784 must be 64 MB or less",
        ),
        (
            "nblocks",
            132,
            &[0xff; 4],
            "n_blocks 4294967295 must be 536870911 or less",
        ),
        (
            "offsets",
            132,
            &[4, 0, 0, 1],
            "image requires too many offsets, try increasing block size",
        ),
        (
            "order",
            136,
            &[
                0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xfe, 0, 0,
            ],
            "offsets not monotonically increasing at index 1, image file is corrupt",
        ),
        (
            "csize",
            136,
            &[
                0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
            "invalid compressed block size at index 1, image file is corrupt",
        ),
    ];
    for (name, at, bytes, message) in cases {
        let img = write_image(&dir, name, &good);
        poke(&img, at, bytes);
        assert_eq!(open_error(&img, "cloop"), message, "{name}");
        if let Some(err) = reference_open_error(&img, "cloop") {
            assert!(err.contains(message), "{name}: qemu-img says {err}");
        }
    }
    // An offsets table longer than the file: only its part inside the file is read, and
    // that part (here running into the compressed data) is judged as QEMU judges it.
    let img = write_image(&dir, "long", &good);
    poke(&img, 132, &0x0100_0000u32.to_be_bytes());
    let ours = open_error(&img, "cloop");
    assert!(ours.ends_with("image file is corrupt"), "{ours}");
    if let Some(err) = reference_open_error(&img, "cloop") {
        assert!(
            err.trim_end().ends_with(&ours),
            "qemu-img says {err}, we say {ours}"
        );
    }
}

#[test]
fn a_table_past_the_end_of_the_file_reads_as_zero_sized_blocks() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    // Two blocks whose offsets are 0 and the file ends inside the table: QEMU opens it
    // (the missing entries read as 0) and every read fails.
    let mut f = PREAMBLE.to_vec();
    f.resize(128, 0);
    f.extend_from_slice(&512u32.to_be_bytes());
    f.extend_from_slice(&0x10_0000u32.to_be_bytes());
    f.extend_from_slice(&[0; 16]);
    let img = write_image(&dir, "z.cloop", &f);
    block_on(async {
        let blk = open_fmt(&img, "cloop", false).await.expect("open");
        assert_eq!(blk.getlength(), 512 << 20);
        let buf = block::IoVector::alloc(512);
        let err = blk
            .co_preadv(100 << 20, &buf, block::RequestFlags::empty())
            .await
            .unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
    });
    if have_qemu() {
        let (rc, out, err) = run(
            "/usr/bin/qemu-io",
            &["-r", "-f", "cloop", "-c", "read 100M 512", &img],
        );
        assert!(
            rc != 0 || format!("{out}{err}").contains("Input/output error"),
            "{out}{err}"
        );
    }
}

#[test]
fn a_corrupt_block_fails_its_reads_only() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let disk = disk();
    let f = build(&disk, 64 << 10);
    let img = write_image(&dir, "c.cloop", &f);
    let first = u64::from_be_bytes(f[136..144].try_into().unwrap());
    poke(&img, first + 4, &[0xff; 16]);
    block_on(async {
        let blk = open_fmt(&img, "cloop", false).await.expect("open");
        let buf = block::IoVector::alloc(4096);
        let err = blk
            .co_preadv(0, &buf, block::RequestFlags::empty())
            .await
            .unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        blk.co_preadv(64 << 10, &buf, block::RequestFlags::empty())
            .await
            .expect("next block");
        assert_eq!(buf.to_vec(), &disk[64 << 10..(64 << 10) + 4096]);
    });
}
