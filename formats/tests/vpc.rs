//! The vpc (VHD) driver against the reference QEMU: fixed and dynamic images either side
//! creates read the same in the other, sizes follow QEMU's CHS rules, and malformed
//! footers and headers fail with QEMU's messages.

mod common;

use common::*;

const SIZE: u64 = 9 << 20;

#[test]
fn reference_images_read_identically() {
    let _serial = setup();
    if !have_qemu() {
        return;
    }
    for opts in [
        "",
        "subformat=fixed",
        "force_size=on",
        "subformat=fixed,force_size=on",
    ] {
        reference_image_reads_identically("vpc", opts, SIZE);
    }
}

#[test]
fn our_images_read_identically_in_qemu() {
    let _serial = setup();
    for opts in ["", "subformat=fixed", "force_size=on", "subformat=dynamic"] {
        let (_dir, img, _) = our_image("vpc", opts, SIZE);
        if have_qemu() {
            let info = run_ok("/usr/bin/qemu-img", &["info", "-f", "vpc", &img]);
            let ours = block_on(async { open_fmt(&img, "vpc", false).await.unwrap().getlength() });
            assert!(info.contains(&format!("({ours} bytes)")), "{opts}: {info}");
        }
    }
}

#[test]
fn sizes_follow_the_chs_geometry_unless_forced() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = dir.path().join("g.vpc");
    let img = img.to_str().unwrap();
    // (requested, options, virtual size QEMU gives)
    let cases = [
        (10 << 20, "", 10_514_432),
        (1000, "", 34_816),
        (10 << 20, "force_size=on", 10 << 20),
        (200 << 30, "", 200 << 30),
    ];
    for (size, opts, expected) in cases {
        let _ = std::fs::remove_file(img);
        create_fmt(img, "vpc", size, opts).unwrap();
        let len = block_on(async { open_fmt(img, "vpc", false).await.unwrap().getlength() });
        assert_eq!(len, expected, "{size} {opts}");
    }
    let err = create_fmt(img, "vpc", 2041 << 30, "").unwrap_err();
    assert_eq!(err.errno(), libc::EFBIG);
}

#[test]
fn a_fixed_image_probes_as_raw_and_a_dynamic_one_as_vpc() {
    let _serial = setup();
    let (_d1, fixed, _) = our_image("vpc", "subformat=fixed", SIZE);
    let (_d2, dynamic, _) = our_image("vpc", "", SIZE);
    let probe = |path: &str| {
        let head = std::fs::read(path).unwrap()[..512].to_vec();
        block::registry::probe_format(&head, path)
            .unwrap()
            .format_name
    };
    assert_eq!(probe(&fixed), "raw");
    assert_eq!(probe(&dynamic), "vpc");
}

/// A fresh dynamic image to corrupt: footer copy at 0, dynamic header at 512.
fn victim(dir: &tempfile::TempDir) -> String {
    let img = dir.path().join("bad.vpc");
    let img = img.to_str().unwrap().to_string();
    create_fmt(&img, "vpc", 10 << 20, "").unwrap();
    img
}

#[test]
fn malformed_images_are_refused_with_qemus_messages() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let cases: [(u64, &[u8], &str); 5] = [
        (64, &[0], "Incorrect header checksum"),
        (512, b"x", "Invalid header magic"),
        (512 + 32, &[0, 0, 0, 3], "Invalid block size 3"),
        (512 + 28, &[0, 0, 0, 1], "Page table too small"),
        (
            512 + 28,
            &[0x7f, 0, 0, 1],
            "Max Table Entries too large (2130706433)",
        ),
    ];
    for (at, bytes, msg) in cases {
        let img = victim(&dir);
        poke(&img, at, bytes);
        assert_eq!(open_error(&img, "vpc"), msg);
    }
    // A table entry pointing far past the end: the image was truncated.
    let img = victim(&dir);
    poke(&img, 1536, &0x10_0000u32.to_be_bytes());
    assert!(open_error(&img, "vpc").contains("The image has been truncated"));
    // Not a VHD at all.
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    assert_eq!(open_error(&img, "vpc"), "invalid VPC image");
}

#[test]
fn allocation_appends_blocks_and_moves_the_footer() {
    let _serial = setup();
    let (_dir, img, written) = our_image("vpc", "", SIZE);
    let raw = std::fs::read(&img).unwrap();
    // Footer copy at the start, footer at the end, equal.
    assert_eq!(raw[..512], raw[raw.len() - 512..]);
    // Reopened, the data is still there.
    let again = block_on(async {
        let blk = open_fmt(&img, "vpc", false).await.unwrap();
        read_all(&blk, 1 << 20).await
    });
    assert_eq!(first_diff(&again, &written), None);
}
