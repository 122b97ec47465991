//! Images written by the reference qemu-img/qemu-io read back identically through our
//! qcow2 driver: every cluster type, every creation option, backing chains.

mod common;

use common::*;

/// Writes a mix of data, zeroes, compressed clusters and discards with qemu-io.
fn populate(path: &str, cluster: u64, compressed: bool) {
    let c = cluster;
    let mut cmds = vec![
        format!("write -P 0x11 0 {}", c * 3),
        format!("write -P 0x22 {} 1536", c * 5 + 512),
        format!("write -z {} {}", c, c),
        format!("write -P 0x33 {} {}", c * 9, c / 2),
        format!("discard {} {}", c * 2, c),
        format!("write -P 0x44 {} 4096", 3 << 20),
    ];
    if compressed {
        cmds.push(format!("write -c -P 0x55 {} {}", c * 12, c * 2));
    }
    let refs: Vec<&str> = cmds.iter().map(|s| s.as_str()).collect();
    qemu_io(path, &refs);
}

fn check_matches_reference(path: &str, dir: &std::path::Path) {
    let expected = reference_raw(path, dir);
    let ours = block_on(async {
        let blk = open(path, false).await.expect("open");
        let data = read_all(&blk, 100_000).await;
        blk.close().await.unwrap();
        data
    });
    assert_eq!(first_diff(&ours, &expected), None, "{path} differs");
}

#[test]
fn option_matrix_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let matrix: &[(&str, u64, bool)] = &[
        ("compat=0.10", 65536, true),
        ("compat=1.1", 65536, true),
        ("cluster_size=512", 512, true),
        ("cluster_size=2M", 2 << 20, true),
        ("refcount_bits=1", 65536, true),
        ("refcount_bits=64", 65536, true),
        ("extended_l2=on", 65536, true),
        ("extended_l2=on,cluster_size=2M", 2 << 20, false),
        ("compression_type=zstd", 65536, true),
        ("compat=0.10,cluster_size=4096", 4096, true),
    ];
    for (i, &(opts, cluster, compressed)) in matrix.iter().enumerate() {
        let path = dir.path().join(format!("m{i}.qcow2"));
        let path = path.to_str().unwrap();
        let size = (cluster * 16).max(8 << 20).to_string();
        run_ok(
            "/usr/bin/qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", opts, path, &size],
        );
        populate(path, cluster, compressed);
        check_matches_reference(path, dir.path());
    }
}

#[test]
fn backing_chain_of_depth_three() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    run_ok(
        "/usr/bin/qemu-img",
        &["create", "-q", "-f", "qcow2", &p("base.qcow2"), "4M"],
    );
    qemu_io(&p("base.qcow2"), &["write -P 1 0 4M"]);
    run_ok(
        "/usr/bin/qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            &p("mid.qcow2"),
        ],
    );
    qemu_io(&p("mid.qcow2"), &["write -P 2 64k 64k", "write -z 1M 128k"]);
    run_ok(
        "/usr/bin/qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            &p("top.qcow2"),
            "6M",
        ],
    );
    qemu_io(
        &p("top.qcow2"),
        &["write -P 3 70k 3k", "write -P 4 5M 4k", "discard 2M 64k"],
    );
    check_matches_reference(&p("top.qcow2"), dir.path());
}

#[test]
fn info_and_block_status() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.qcow2");
    let path = path.to_str().unwrap();
    run_ok(
        "/usr/bin/qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on,compression_type=zstd",
            path,
            "1M",
        ],
    );
    qemu_io(path, &["write 64k 64k", "write -z 128k 64k"]);
    block_on(async {
        let blk = open(path, false).await.unwrap();
        let bs = blk.bs();
        let spec = bs.drv().get_specific_info(&bs).unwrap();
        assert_eq!(
            spec,
            serde_json::json!({"type": "qcow2", "data": {"compat": "1.1", "compression-type": "zstd",
                "lazy-refcounts": true, "refcount-bits": 16, "corrupt": false, "extended-l2": false}})
        );
        assert_eq!(bs.drv().get_info(&bs).unwrap().cluster_size, 65536);
        use block::driver::StatusFlags;
        let s = bs.co_block_status(true, 0, 1 << 20).await.unwrap();
        assert_eq!(s.bytes, 65536);
        assert!(!s.flags.contains(StatusFlags::ALLOCATED));
        let s = bs.co_block_status(true, 65536, 1 << 20).await.unwrap();
        assert!(s
            .flags
            .contains(StatusFlags::DATA | StatusFlags::OFFSET_VALID));
        assert_eq!(s.bytes, 65536);
        let s = bs.co_block_status(true, 131072, 1 << 20).await.unwrap();
        assert!(s.flags.contains(StatusFlags::ZERO | StatusFlags::ALLOCATED));
        blk.close().await.unwrap();
    });
}
