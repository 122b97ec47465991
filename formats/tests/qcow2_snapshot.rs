//! Internal snapshots against the reference: snapshots we take are listed, checked and
//! read back by qemu-img exactly as we left them, and snapshots qemu-img takes are listed,
//! applied and deleted by us with the same results. Malformed snapshot tables give clear
//! errors.

mod common;

use block::snapshot::{
    bdrv_snapshot_create, bdrv_snapshot_delete, bdrv_snapshot_goto, bdrv_snapshot_list,
    SnapshotInfo,
};
use block::{IoVector, RequestFlags};
use common::*;

fn patch(path: &str, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn be64_at(path: &str, offset: u64) -> u64 {
    let data = std::fs::read(path).unwrap();
    u64::from_be_bytes(
        data[offset as usize..offset as usize + 8]
            .try_into()
            .unwrap(),
    )
}

fn create(dir: &std::path::Path, name: &str, size: &str, cluster: &str) -> String {
    let p = dir.join(name).to_str().unwrap().to_string();
    let opt = format!("cluster_size={cluster}");
    run_ok(
        "/usr/bin/qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", &opt, &p, size],
    );
    p
}

/// The guest contents of snapshot `name` as the reference reads them.
fn reference_snapshot_raw(path: &str, name: &str, dir: &std::path::Path) -> Vec<u8> {
    let raw = dir.join("snapshot.raw");
    let raw = raw.to_str().unwrap();
    run_ok(
        "/usr/bin/qemu-img",
        &["convert", "-l", name, "-O", "raw", path, raw],
    );
    std::fs::read(raw).unwrap()
}

fn assert_clean(path: &str) {
    let (rc, out) = qemu_check(path);
    assert_eq!(rc, 0, "qemu-img check:\n{out}");
    assert!(out.contains("No errors were found"), "{out}");
}

async fn write(blk: &block::BlockBackend, offset: u64, len: usize, pattern: u8) {
    let buf = IoVector::from_slice(&vec![pattern; len]);
    blk.co_pwritev(offset, &buf, RequestFlags::empty())
        .await
        .unwrap();
}

/// Our whole-disk contents.
fn ours_raw(path: &str) -> Vec<u8> {
    block_on(async {
        let blk = open(path, false).await.unwrap();
        let data = read_all(&blk, 1 << 20).await;
        blk.close().await.unwrap();
        data
    })
}

#[test]
fn our_snapshots_read_back_by_qemu() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let p = create(dir.path(), "ours.qcow2", "4M", "65536");
    qemu_io(
        &p,
        &[
            "write -P 1 0 256k",
            "write -c -P 2 1M 64k",
            "write -z 2M 64k",
        ],
    );
    let before = reference_raw(&p, dir.path());
    block_on(async {
        let blk = open(&p, true).await.unwrap();
        let sn = SnapshotInfo {
            name: "first".into(),
            date_sec: 1_700_000_000,
            ..SnapshotInfo::default()
        };
        bdrv_snapshot_create(&blk.bs(), &sn).await.unwrap();
        // Partial-cluster writes into shared clusters: copy-on-write, never in place.
        write(&blk, 4096, 8192, 3).await;
        write(&blk, 1 << 20, 512, 4).await;
        write(&blk, (2 << 20) + 512, 512, 5).await;
        write(&blk, 3 << 20, 65536, 6).await;
        blk.close().await.unwrap();
    });
    assert_clean(&p);
    let (_, list, _) = run("/usr/bin/qemu-img", &["snapshot", "-l", &p]);
    assert!(list.starts_with("Snapshot list:\nID      TAG "), "{list}");
    assert!(list.contains("\n1       first "), "{list}");
    assert_eq!(reference_snapshot_raw(&p, "first", dir.path()), before);
    let after = reference_raw(&p, dir.path());
    assert_eq!(ours_raw(&p), after);
    assert_eq!(after[4096], 3);
    block_on(async {
        let blk = open(&p, true).await.unwrap();
        bdrv_snapshot_goto(&blk.bs(), "first").await.unwrap();
        blk.close().await.unwrap();
    });
    assert_clean(&p);
    assert_eq!(reference_raw(&p, dir.path()), before);
    block_on(async {
        let blk = open(&p, true).await.unwrap();
        bdrv_snapshot_delete(&blk.bs(), Some("1"), Some("first"))
            .await
            .unwrap();
        blk.close().await.unwrap();
    });
    assert_clean(&p);
    let (_, list, _) = run("/usr/bin/qemu-img", &["snapshot", "-l", &p]);
    assert_eq!(list, "");
    assert_eq!(reference_raw(&p, dir.path()), before);
}

#[test]
fn qemu_snapshots_applied_and_deleted_by_us() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let p = create(dir.path(), "theirs.qcow2", "1M", "512");
    qemu_io(&p, &["write -P 1 0 64k"]);
    run_ok("/usr/bin/qemu-img", &["snapshot", "-c", "a", &p]);
    qemu_io(&p, &["write -P 2 32k 64k"]);
    run_ok("/usr/bin/qemu-img", &["resize", "-q", &p, "2M"]);
    qemu_io(&p, &["write -P 3 1536k 4k"]);
    run_ok("/usr/bin/qemu-img", &["snapshot", "-c", "b", &p]);
    qemu_io(&p, &["write -P 4 0 1k"]);
    let raw_a = reference_snapshot_raw(&p, "a", dir.path());
    let raw_b = reference_snapshot_raw(&p, "b", dir.path());
    let list = block_on(async {
        let blk = open(&p, false).await.unwrap();
        let list = bdrv_snapshot_list(&blk.bs()).unwrap();
        blk.close().await.unwrap();
        list
    });
    let names: Vec<(&str, &str)> = list
        .iter()
        .map(|s| (s.id_str.as_str(), s.name.as_str()))
        .collect();
    assert_eq!(names, [("1", "a"), ("2", "b")]);
    for (name, raw, size) in [("a", &raw_a, 1u64 << 20), ("b", &raw_b, 2 << 20)] {
        block_on(async {
            let blk = open(&p, true).await.unwrap();
            bdrv_snapshot_goto(&blk.bs(), name).await.unwrap();
            assert_eq!(blk.getlength(), size);
            blk.close().await.unwrap();
        });
        assert_clean(&p);
        // `convert -l` reads as much as the current disk size, whatever the snapshot's.
        let want = &raw[..size as usize];
        assert_eq!(reference_raw(&p, dir.path()), want);
        assert_eq!(ours_raw(&p), want);
    }
    block_on(async {
        let blk = open(&p, true).await.unwrap();
        bdrv_snapshot_delete(&blk.bs(), None, Some("a"))
            .await
            .unwrap();
        let e = bdrv_snapshot_delete(&blk.bs(), None, Some("a"))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "Can't find the snapshot");
        blk.close().await.unwrap();
    });
    assert_clean(&p);
    let (_, list, _) = run("/usr/bin/qemu-img", &["snapshot", "-l", &p]);
    assert!(
        list.contains("\n2       b ") && !list.contains(" a "),
        "{list}"
    );
    assert_eq!(reference_snapshot_raw(&p, "b", dir.path()), raw_b);
}

fn open_error(path: &str) -> String {
    block_on(async { open(path, false).await.map(|_| ()).unwrap_err().to_string() })
}

#[test]
fn malformed_snapshot_tables_give_clear_errors() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let p = create(dir.path(), "bad.qcow2", "1M", "65536");
    qemu_io(&p, &["write -P 1 0 64k"]);
    run_ok("/usr/bin/qemu-img", &["snapshot", "-c", "s", &p]);
    let table = be64_at(&p, 64);
    let pristine = std::fs::read(&p).unwrap();

    // Too much extra data.
    patch(&p, table + 36, &2000u32.to_be_bytes());
    assert_eq!(
        open_error(&p),
        "Too much extra metadata in snapshot table entry 0"
    );

    // More entries than the file holds: past its end the table reads as zeroes (empty
    // entries), as QEMU reads it.
    std::fs::write(&p, &pristine).unwrap();
    patch(&p, 60, &1000u32.to_be_bytes());
    let ours = block_on(async {
        let blk = open(&p, false).await.unwrap();
        let list = bdrv_snapshot_list(&blk.bs()).unwrap();
        blk.close().await.unwrap();
        list
    });
    let (_, theirs, _) = run("/usr/bin/qemu-img", &["snapshot", "-l", &p]);
    assert_eq!(ours.len(), 1000);
    assert_eq!(theirs.lines().count(), 2 + ours.len());
    assert_eq!(ours[0].name, "s");

    // A snapshot L1 table at an unaligned offset: applying it is refused, nothing changes.
    std::fs::write(&p, &pristine).unwrap();
    patch(&p, table, &0x10200u64.to_be_bytes());
    let e = block_on(async {
        let blk = open(&p, true).await.unwrap();
        let e = bdrv_snapshot_goto(&blk.bs(), "s").await.unwrap_err();
        blk.close().await.unwrap();
        e
    });
    assert_eq!(e.to_string(), "Snapshot L1 table offset invalid");
    assert_eq!(ours_raw(&p)[..65536], vec![1u8; 65536][..]);

    // A snapshot L1 table larger than QEMU allows.
    std::fs::write(&p, &pristine).unwrap();
    patch(&p, table + 8, &u32::MAX.to_be_bytes());
    let e = block_on(async {
        let blk = open(&p, true).await.unwrap();
        let e = bdrv_snapshot_delete(&blk.bs(), None, Some("s"))
            .await
            .unwrap_err();
        blk.close().await.unwrap();
        e
    });
    assert_eq!(e.to_string(), "Snapshot L1 table too large");
}
