//! The qed driver against the reference QEMU: images either side creates (every cluster
//! and table size, backing files) read the same in the other and pass `qemu-img check`;
//! the need-check bit is set while writing and repaired at open; malformed headers and
//! tables fail cleanly.

mod common;

use block::driver::CheckFix;
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
        "cluster_size=4096",
        "cluster_size=1M,table_size=2",
        "table_size=16",
    ] {
        reference_image_reads_identically("qed", opts, SIZE);
    }
}

#[test]
fn our_images_read_identically_in_qemu_and_pass_its_check() {
    let _serial = setup();
    for opts in ["", "cluster_size=4096", "cluster_size=1M,table_size=2"] {
        let (_dir, img, _) = our_image("qed", opts, SIZE);
        let raw = std::fs::read(&img).unwrap();
        assert_eq!(raw[16] & 2, 0, "need-check left set after close");
        if have_qemu() {
            let (rc, out) = qemu_check(&img);
            assert_eq!(rc, 0, "{opts}: {out}");
        }
    }
}

#[test]
fn an_overlay_reads_through_to_its_backing_file() {
    let _serial = setup();
    let (dir, base, written) = our_image("qed", "", SIZE);
    let top = dir.path().join("top.qed");
    let top = top.to_str().unwrap();
    create_fmt(
        top,
        "qed",
        SIZE,
        &format!("backing_file={base},backing_fmt=qed"),
    )
    .unwrap();
    let got = block_on(async {
        let blk = open_fmt(top, "qed", true).await.unwrap();
        // A partial write into an unallocated cluster copies the rest from the backing file.
        blk.co_pwritev(
            (1 << 20) + 100,
            &block::IoVector::from_slice(&[0x77; 10]),
            block::RequestFlags::empty(),
        )
        .await
        .unwrap();
        let all = read_all(&blk, 1 << 20).await;
        blk.close().await.unwrap();
        all
    });
    let mut expected = written;
    expected[(1 << 20) + 100..(1 << 20) + 110].fill(0x77);
    assert_eq!(first_diff(&got, &expected), None);
    if have_qemu() {
        assert_eq!(
            first_diff(&reference_raw_fmt(top, "qed", dir.path()), &expected),
            None
        );
    }
}

fn check(img: &str, fix: CheckFix) -> block::driver::CheckResult {
    block_on(async {
        let blk = open_fmt(img, "qed", fix != CheckFix::default())
            .await
            .unwrap();
        let bs = blk.bs().clone();
        let r = bs.drv().co_check(&bs, fix).await.unwrap();
        blk.close().await.unwrap();
        r
    })
}

#[test]
fn check_finds_and_repairs_entries_outside_the_file() {
    let _serial = setup();
    let (_dir, img, _) = our_image("qed", "", SIZE);
    // The first L2 table follows the first data cluster (clusters 5 and 6..9); point its
    // first entry far past the end of the file.
    let l1 = std::fs::read(&img).unwrap();
    let l2 = u64::from_le_bytes(l1[65536..65544].try_into().unwrap());
    poke(&img, l2, &(1u64 << 40).to_le_bytes());
    let found = check(&img, CheckFix::default());
    assert_eq!(found.corruptions, 1, "{found:?}");
    let all = CheckFix {
        leaks: true,
        errors: true,
    };
    let fixed = check(&img, all);
    assert_eq!(fixed.corruptions_fixed, 1, "{fixed:?}");
    assert_eq!(check(&img, CheckFix::default()).corruptions, 0);
    if have_qemu() {
        let (rc, out) = qemu_check(&img);
        assert!(rc == 0 || rc == 3, "{out}"); // clean, or only the leaked cluster
    }
}

#[test]
fn an_image_left_needing_a_check_is_repaired_when_opened_for_writing() {
    let _serial = setup();
    let (_dir, img, _) = our_image("qed", "", SIZE);
    let l1 = std::fs::read(&img).unwrap();
    let l2 = u64::from_le_bytes(l1[65536..65544].try_into().unwrap());
    poke(&img, l2, &(1u64 << 40).to_le_bytes());
    poke(&img, 16, &[2]);
    let dirty = block_on(async {
        let blk = open_fmt(&img, "qed", false).await.unwrap();
        let bs = blk.bs().clone();
        bs.drv().get_info(&bs).unwrap().is_dirty
    });
    assert!(dirty);
    block_on(async {
        open_fmt(&img, "qed", true)
            .await
            .unwrap()
            .close()
            .await
            .unwrap()
    });
    let raw = std::fs::read(&img).unwrap();
    assert_eq!(raw[16] & 2, 0);
    assert_eq!(check(&img, CheckFix::default()).corruptions, 0);
}

#[test]
fn malformed_headers_are_refused() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = dir.path().join("bad.qed");
    let img = img.to_str().unwrap();
    let cases: [(u64, &[u8], &str); 5] = [
        (4, &[0, 0x30, 0, 0], "QED cluster size is invalid"),
        (8, &[3, 0, 0, 0], "QED table size is invalid"),
        (
            40,
            &(1u64 << 40).to_le_bytes(),
            "QED table offset is invalid",
        ),
        (48, &(1u64 << 62).to_le_bytes(), "QED image size is invalid"),
        (16, &[0x10], "Unsupported QED features: 10"),
    ];
    for (at, bytes, msg) in cases {
        create_fmt(img, "qed", SIZE, "").unwrap();
        poke(img, at, bytes);
        assert_eq!(open_error(img, "qed"), msg);
    }
}

#[test]
fn images_grow_but_do_not_shrink() {
    let _serial = setup();
    let (_dir, img, _) = our_image("qed", "", SIZE);
    block_on(async {
        let blk = open_fmt(&img, "qed", true).await.unwrap();
        let bs = blk.bs().clone();
        let off = block::driver::PreallocMode::Off;
        bs.co_truncate(SIZE * 2, false, off).await.unwrap();
        assert!(bs.co_truncate(SIZE, false, off).await.is_err());
        blk.close().await.unwrap();
    });
    let len = block_on(async { open_fmt(&img, "qed", false).await.unwrap().getlength() });
    assert_eq!(len, SIZE * 2);
}
