//! Our consistency check agrees with `qemu-img check` on broken images, repairs them so
//! that the reference finds them clean, and respects internal snapshots (shared clusters).

mod common;

use block::driver::{CheckFix, CheckResult};
use block::{IoVector, RequestFlags};
use common::*;

fn patch(path: &str, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn our_check(path: &str, fix: CheckFix) -> CheckResult {
    block_on(async {
        let blk = open(path, fix.leaks || fix.errors).await.unwrap();
        let bs = blk.bs().clone();
        let r = bs.drv().co_check(&bs, fix).await.unwrap();
        blk.close().await.unwrap();
        r
    })
}

fn qemu_json(path: &str) -> serde_json::Value {
    let (_, out, _) = run("/usr/bin/qemu-img", &["check", "--output=json", path]);
    serde_json::from_str(&out).unwrap()
}

fn assert_same_as_qemu(path: &str, ours: &CheckResult) {
    let q = qemu_json(path);
    let get = |k: &str| q.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    assert_eq!(ours.corruptions, get("corruptions"), "corruptions: {q}");
    assert_eq!(ours.leaks, get("leaks"), "leaks: {q}");
    assert_eq!(ours.check_errors, get("check-errors"), "check-errors: {q}");
    assert_eq!(ours.total_clusters, get("total-clusters"), "{q}");
    assert_eq!(ours.allocated_clusters, get("allocated-clusters"), "{q}");
    assert_eq!(ours.fragmented_clusters, get("fragmented-clusters"), "{q}");
    assert_eq!(ours.compressed_clusters, get("compressed-clusters"), "{q}");
    assert_eq!(ours.image_end_offset, get("image-end-offset"), "{q}");
}

/// A 1 MiB image: clusters 0 header, 1 reftable, 2 refblock, 3 L1, 4 L2, 5-6 data, 7
/// compressed.
fn image(dir: &std::path::Path, name: &str) -> String {
    let p = dir.join(name).to_str().unwrap().to_string();
    run_ok(
        "/usr/bin/qemu-img",
        &["create", "-q", "-f", "qcow2", &p, "1M"],
    );
    qemu_io(&p, &["write -P 7 0 128k", "write -c -P 9 256k 64k"]);
    p
}

#[test]
fn clean_images_agree_with_qemu() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), "clean.qcow2");
    qemu_io(&p, &["write -P 3 640k 64k", "write -P 4 512k 64k"]);
    let r = our_check(&p, CheckFix::default());
    assert_same_as_qemu(&p, &r);
    assert_eq!(r.corruptions + r.leaks, 0);
}

#[test]
fn leaks_and_corruptions_are_found_and_repaired() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), "broken.qcow2");
    // Cluster 5: refcount 0 (corruption, and its copied flag is now wrong);
    // cluster 6: refcount 2 (a leak, and again a wrong copied flag).
    patch(&p, 0x20000 + 2 * 5, &[0, 0]);
    patch(&p, 0x20000 + 2 * 6, &[0, 2]);
    let r = our_check(&p, CheckFix::default());
    assert_same_as_qemu(&p, &r);
    assert!(r.corruptions >= 1 && r.leaks == 1, "{r:?}");
    let fixed = our_check(
        &p,
        CheckFix {
            leaks: true,
            errors: true,
        },
    );
    assert_eq!(fixed.leaks_fixed, 1, "{fixed:?}");
    assert!(fixed.corruptions_fixed >= 1, "{fixed:?}");
    let (rc, out) = qemu_check(&p);
    assert_eq!(rc, 0, "{out}");
    let again = our_check(&p, CheckFix::default());
    assert_eq!(again.corruptions + again.leaks, 0, "{again:?}");
}

#[test]
fn leaks_only_repair() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), "leak.qcow2");
    // Cluster 8 is past the data but inside the file once we extend it: a pure leak.
    run_ok("/usr/bin/truncate", &["-s", "1M", &p]);
    patch(&p, 0x20000 + 2 * 9, &[0, 1]);
    let r = our_check(&p, CheckFix::default());
    assert_same_as_qemu(&p, &r);
    assert_eq!((r.leaks, r.corruptions), (1, 0));
    let fixed = our_check(
        &p,
        CheckFix {
            leaks: true,
            errors: false,
        },
    );
    assert_eq!(fixed.leaks_fixed, 1);
    assert_eq!(qemu_check(&p).0, 0);
}

#[test]
fn writes_respect_internal_snapshots() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), "snap.qcow2");
    run_ok("/usr/bin/qemu-img", &["snapshot", "-c", "s1", &p]);
    let r = our_check(&p, CheckFix::default());
    assert_same_as_qemu(&p, &r);
    block_on(async {
        let blk = open(&p, true).await.unwrap();
        let buf = IoVector::from_slice(&[0xee; 4096]);
        blk.co_pwritev(4096, &buf, RequestFlags::empty())
            .await
            .unwrap();
        blk.co_pwritev(256 * 1024, &buf, RequestFlags::empty())
            .await
            .unwrap();
        blk.close().await.unwrap();
    });
    let (rc, out) = qemu_check(&p);
    assert_eq!(rc, 0, "{out}");
    let now = reference_raw(&p, dir.path());
    assert_eq!(&now[4096..8192], &[0xee; 4096][..]);
    assert_eq!(&now[0..4096], &[7; 4096][..]);
    run_ok("/usr/bin/qemu-img", &["snapshot", "-a", "s1", &p]);
    let old = reference_raw(&p, dir.path());
    assert_eq!(&old[4096..8192], &[7; 4096][..]);
    assert_eq!(&old[256 * 1024..260 * 1024], &[9; 4096][..]);
}

/// A file of more clusters than QEMU's check counts (INT_MAX; a sparse file can claim any
/// length, as a write to a fuzzed image made one of 1 TiB with 512-byte clusters) fails the
/// check with EFBIG, as `qemu-img check` does, instead of allocating a table for it.
#[test]
fn a_file_of_more_than_int_max_clusters_is_too_large_to_check() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.qcow2").to_str().unwrap().to_string();
    run_ok(
        "/usr/bin/qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            &p,
            "1M",
        ],
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let err = block_on(async {
        let blk = open(&p, false).await.unwrap();
        let bs = blk.bs().clone();
        let r = bs.drv().co_check(&bs, CheckFix::default()).await;
        blk.close().await.unwrap();
        r
    })
    .unwrap_err();
    assert_eq!(err.errno(), libc::EFBIG, "{err}");
    let (_, _, stderr) = run("/usr/bin/qemu-img", &["check", &p]);
    assert!(stderr.contains("File too large"), "{stderr}");
}
