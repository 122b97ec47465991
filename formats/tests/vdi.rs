//! The vdi driver against the reference QEMU: images either side creates read the same in
//! the other, `qemu-img check` passes ours, and malformed headers fail with QEMU's
//! messages without allocating by their sizes.

mod common;

use common::*;

const SIZE: u64 = 9 << 20;

#[test]
fn reference_images_read_identically() {
    let _serial = setup();
    if !have_qemu() {
        return;
    }
    for opts in ["", "static=on"] {
        reference_image_reads_identically("vdi", opts, SIZE);
    }
}

#[test]
fn our_images_read_identically_in_qemu_and_pass_its_check() {
    let _serial = setup();
    for opts in ["", "static=on"] {
        let (_dir, img, _) = our_image("vdi", opts, SIZE);
        if have_qemu() {
            let (rc, out) = qemu_check(&img);
            assert_eq!(rc, 0, "{opts}: {out}");
            assert!(out.contains("No errors were found"), "{out}");
        }
    }
}

#[test]
fn a_static_image_maps_every_block_and_is_preallocated() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = dir.path().join("s.vdi");
    let img = img.to_str().unwrap();
    create_fmt(img, "vdi", 3 << 20, "static=on").unwrap();
    // Header, a sector of block map, three 1 MiB blocks.
    assert_eq!(std::fs::metadata(img).unwrap().len(), 1024 + (3 << 20));
    let raw = std::fs::read(img).unwrap();
    let entries: Vec<u32> = raw[512..524]
        .chunks(4)
        .map(|e| u32::from_le_bytes(e.try_into().unwrap()))
        .collect();
    assert_eq!(entries, [0, 1, 2]);
}

#[test]
fn sizes_round_to_sectors_and_the_maximum_is_enforced() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = dir.path().join("r.vdi");
    let img = img.to_str().unwrap();
    create_fmt(img, "vdi", 1000, "").unwrap();
    let len = block_on(async { open_fmt(img, "vdi", false).await.unwrap().getlength() });
    assert_eq!(len, 1024);
    let err = create_fmt(img, "vdi", 0x0001_ffff_f800_0000 + 512, "").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("Unsupported VDI image size (size is 0x1fffff8000200"),
        "{err}"
    );
}

/// A fresh 64 MiB dynamic image to corrupt.
fn victim(dir: &tempfile::TempDir) -> String {
    let img = dir.path().join("bad.vdi");
    let img = img.to_str().unwrap().to_string();
    create_fmt(&img, "vdi", 64 << 20, "").unwrap();
    img
}

#[test]
fn malformed_headers_are_refused_with_qemus_messages() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let cases: [(u64, &[u8], &str); 6] = [
        (
            0x40,
            &[0, 0, 0, 0],
            "Image not in VDI format (bad signature 00000000)",
        ),
        (0x44, &[0, 0, 2, 0], "unsupported VDI image (version 2.0)"),
        (
            0x178,
            &[0xff, 0xff, 0x0f, 0],
            "unsupported VDI image (block size 1048575 is not 1048576)",
        ),
        (
            0x180,
            &[0x3f, 0, 0, 0],
            "unsupported VDI image (disk size 67108864, image bitmap has room for 66060288)",
        ),
        (
            0x180,
            &[0x81, 0xff, 0xff, 0x1f],
            "unsupported VDI image (too many blocks 536870785, max is 536870784)",
        ),
        (
            0x154,
            &[0x01, 0x02, 0, 0],
            "unsupported VDI image (unaligned block map offset 0x201)",
        ),
    ];
    for (at, bytes, msg) in cases {
        let img = victim(&dir);
        poke(&img, at, bytes);
        assert_eq!(open_error(&img, "vdi"), msg);
    }
}

/// A disk size in the last sector below 2^64 is refused as too big before it is rounded
/// to whole sectors, as in QEMU (the rounding overflowed: fuzz finding).
#[test]
fn a_disk_size_near_2_64_is_refused_before_rounding() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = victim(&dir);
    poke(&img, 0x170, &[0xff; 8]);
    let msg =
        "Unsupported VDI image size (size is 0xffffffffffffffff, max supported is 0x1fffff8000000)";
    assert_eq!(open_error(&img, "vdi"), msg);
    if let Some(theirs) = reference_open_error(&img, "vdi") {
        assert!(theirs.contains(msg), "{theirs}");
    }
}

#[test]
fn a_block_map_past_the_end_of_the_file_is_not_allocated_for() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = victim(&dir);
    // The largest image VDI allows: a 2 GiB block map that the 1 KiB file does not hold.
    poke(&img, 0x170, &0x1_ffff_f800_0000u64.to_le_bytes());
    poke(&img, 0x180, &0x1fff_ff80u32.to_le_bytes());
    let len = block_on(async { open_fmt(&img, "vdi", false).await.unwrap().getlength() });
    assert_eq!(len, 0x1_ffff_f800_0000);
}

#[test]
fn check_finds_shared_and_out_of_range_blocks() {
    let _serial = setup();
    let (_dir, img, _) = our_image("vdi", "", SIZE);
    // Blocks 0-5 and 8 are allocated; point block 8's entry past the data area.
    poke(&img, 512 + 8 * 4, &1000u32.to_le_bytes());
    let result = block_on(async {
        let blk = open_fmt(&img, "vdi", false).await.unwrap();
        let bs = blk.bs().clone();
        bs.drv().co_check(&bs, Default::default()).await.unwrap()
    });
    // Out of range, and the allocated count no longer matches.
    assert_eq!(result.corruptions, 2, "{result:?}");
    if have_qemu() {
        let (rc, out) = qemu_check(&img);
        assert_eq!(rc, 2, "{out}");
        assert!(
            out.contains("ERROR: block index 8 too large, is 1000"),
            "{out}"
        );
    }
}
