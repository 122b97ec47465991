//! Lazy refcounts and the dirty bit, compressed writes, resize, zero writes and discard,
//! each checked against the reference tools.

mod common;

use block::driver::PreallocMode;
use block::{IoVector, Options, RequestFlags};
use common::*;

fn create(path: &str, opts: &str, size: u64) {
    let mut options = if opts.is_empty() {
        Options::new()
    } else {
        Options::parse_keyval(opts, None).unwrap()
    };
    options.set("size", size.to_string());
    block_on(async {
        let class = block::registry::find_driver("qcow2").unwrap();
        (class.create.unwrap())(path, &mut options).await.unwrap()
    })
}

fn incompatible_bits(path: &str) -> u64 {
    let d = std::fs::read(path).unwrap();
    u64::from_be_bytes(d[72..80].try_into().unwrap())
}

fn write(blk: &block::BlockBackend, offset: u64, data: &[u8], flags: RequestFlags) {
    block_on(blk.co_pwritev(offset, &IoVector::from_slice(data), flags)).unwrap();
}

#[test]
fn lazy_refcounts_mark_dirty_while_writing_and_clean_on_close() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lazy.qcow2");
    let p = p.to_str().unwrap();
    create(p, "lazy_refcounts=on", 4 << 20);
    let blk = block_on(open(p, true)).unwrap();
    write(&blk, 0, &[1; 70000], RequestFlags::empty());
    assert_eq!(incompatible_bits(p) & 1, 1, "dirty while open");
    assert!(blk.bs().drv().get_info(&blk.bs()).unwrap().is_dirty);
    block_on(blk.close()).unwrap();
    drop(blk);
    assert_eq!(incompatible_bits(p) & 1, 0, "clean after close");
    assert_eq!(qemu_check(p).0, 0);
    // A dirty image (a writer that crashed) is repaired when opened read-write.
    qemu_io(p, &["write -P 2 1M 64k"]);
    let mut d = std::fs::read(p).unwrap();
    d[79] |= 1;
    // Leak a cluster the way a crash could: bump the refcount of cluster 3 (the L1 table).
    let reftable = u64::from_be_bytes(d[48..56].try_into().unwrap()) as usize;
    let block0 = u64::from_be_bytes(d[reftable..reftable + 8].try_into().unwrap()) as usize;
    d[block0 + 2 * 3 + 1] = 2;
    std::fs::write(p, &d).unwrap();
    let blk = block_on(open(p, true)).unwrap();
    // The first write repairs the refcounts (as QEMU's open does), then dirties it anew.
    write(&blk, 2 << 20, &[3; 512], RequestFlags::empty());
    assert!(blk.bs().drv().get_info(&blk.bs()).unwrap().is_dirty);
    block_on(blk.close()).unwrap();
    drop(blk);
    assert_eq!(incompatible_bits(p) & 1, 0);
    let (rc, out) = qemu_check(p);
    assert_eq!(rc, 0, "{out}");
}

#[test]
fn compressed_writes_read_back_in_qemu() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    for opts in [
        "",
        "compression_type=zstd",
        "cluster_size=4096",
        "extended_l2=on",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.qcow2");
        let p = p.to_str().unwrap();
        create(p, opts, 4 << 20);
        let cs = if opts == "cluster_size=4096" {
            4096
        } else {
            65536
        };
        let text: Vec<u8> = (0..3 * cs).map(|i| b"compressible text "[i % 18]).collect();
        let mut rng = Rng(0x1234_5678);
        let noise: Vec<u8> = (0..cs).map(|_| rng.next() as u8).collect();
        let blk = block_on(open(p, true)).unwrap();
        write(&blk, 0, &text, RequestFlags::WRITE_COMPRESSED);
        write(&blk, 8 * cs as u64, &noise, RequestFlags::WRITE_COMPRESSED);
        // Overwrite a compressed cluster partially: copy-on-write from compressed data.
        write(&blk, cs as u64 + 100, &[0xab; 300], RequestFlags::empty());
        block_on(blk.close()).unwrap();
        drop(blk);
        let (rc, out) = qemu_check(p);
        assert_eq!(rc, 0, "{opts}: {out}");
        let raw = reference_raw(p, dir.path());
        let mut expected = text.clone();
        expected[cs + 100..cs + 400].fill(0xab);
        assert_eq!(&raw[..3 * cs], &expected[..], "{opts}");
        assert_eq!(&raw[8 * cs..9 * cs], &noise[..], "{opts}");
        let json = run_ok("/usr/bin/qemu-img", &["check", "--output=json", p]);
        assert!(
            json.contains("\"compressed-clusters\": 2"),
            "{opts}: {json}"
        );
    }
}

#[test]
fn resize_grow_and_shrink() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.qcow2");
    let p = p.to_str().unwrap();
    create(p, "cluster_size=512", 1 << 20);
    let blk = block_on(open(p, true)).unwrap();
    write(&blk, 0, &[5; 1 << 20], RequestFlags::empty());
    // Growing past what the L1 table maps moves the L1 table.
    block_on(blk.bs().co_truncate(300 << 20, false, PreallocMode::Off)).unwrap();
    write(&blk, 299 << 20, &[6; 4096], RequestFlags::empty());
    block_on(
        blk.bs()
            .co_truncate(1000 * 1024 + 512, false, PreallocMode::Off),
    )
    .unwrap();
    block_on(blk.bs().co_truncate(2 << 20, false, PreallocMode::Off)).unwrap();
    block_on(blk.close()).unwrap();
    drop(blk);
    let (rc, out) = qemu_check(p);
    assert_eq!(rc, 0, "{out}");
    let raw = reference_raw(p, dir.path());
    assert_eq!(raw.len(), 2 << 20);
    assert!(raw[..1000 * 1024 + 512].iter().all(|&b| b == 5));
    assert!(raw[1000 * 1024 + 512..].iter().all(|&b| b == 0));
}

#[test]
fn zero_writes_and_discard_in_v2_and_v3() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    for opts in ["", "compat=0.10", "extended_l2=on"] {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("b.qcow2");
        let base = base.to_str().unwrap();
        run_ok(
            "/usr/bin/qemu-img",
            &["create", "-q", "-f", "qcow2", base, "4M"],
        );
        qemu_io(base, &["write -P 0xbb 0 4M"]);
        let p = dir.path().join("z.qcow2");
        let p = p.to_str().unwrap();
        let mut o = "backing_file=b.qcow2,backing_fmt=qcow2".to_string();
        if !opts.is_empty() {
            o = format!("{opts},{o}");
        }
        create(p, &o, 4 << 20);
        let mut opts_open = Options::new();
        opts_open.set("driver", "qcow2");
        opts_open.set("discard", "unmap");
        let blk = block_on(block::BlockBackend::open(
            Some(p),
            opts_open,
            Default::default(),
        ))
        .unwrap();
        write(&blk, 0, &[1; 4 << 20], RequestFlags::empty());
        block_on(blk.co_pwrite_zeroes(65536, 65536, RequestFlags::MAY_UNMAP)).unwrap();
        block_on(blk.co_pwrite_zeroes(200_000, 1000, RequestFlags::empty())).unwrap();
        block_on(blk.co_pdiscard(1 << 20, 1 << 20)).unwrap();
        block_on(blk.close()).unwrap();
        drop(blk);
        let (rc, out) = qemu_check(p);
        assert_eq!(rc, 0, "{opts}: {out}");
        let raw = reference_raw(p, dir.path());
        assert!(raw[65536..131072].iter().all(|&b| b == 0), "{opts}");
        assert!(raw[200_000..201_000].iter().all(|&b| b == 0), "{opts}");
        assert_eq!(raw[199_999], 1);
        // v3 discards read as zeroes; v2 cannot say "zero" and refuses rather than expose
        // the backing file (qemu-iotests 290), so the data stays.
        let discarded = if opts == "compat=0.10" { 1 } else { 0 };
        assert!(
            raw[1 << 20..2 << 20].iter().all(|&b| b == discarded),
            "{opts}"
        );
        assert!(raw[2 << 20..].iter().all(|&b| b == 1), "{opts}");
    }
}

#[test]
fn v2_zero_writes_deallocate_and_full_growth_keeps_the_last_cluster() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    // v2 without a backing file: zeroes become unallocated clusters, not written data.
    let p = dir.path().join("v2.qcow2");
    let p = p.to_str().unwrap();
    create(p, "compat=0.10", 1 << 20);
    let blk = block_on(open(p, true)).unwrap();
    write(&blk, 0, &[7; 1 << 20], RequestFlags::empty());
    block_on(blk.co_pwrite_zeroes(0, 1 << 20, RequestFlags::empty())).unwrap();
    block_on(blk.close()).unwrap();
    drop(blk);
    assert_eq!(qemu_check(p).0, 0);
    let map = run_ok("/usr/bin/qemu-img", &["map", "--output=json", p]);
    assert!(map.contains("\"present\": false"), "{map}");
    assert!(reference_raw(p, dir.path()).iter().all(|&b| b == 0));

    // preallocation=full growth from inside a cluster: the guest data before the old end
    // survives (the cluster moves to preallocated space), the rest reads as zeroes, and
    // later writes do not make the file longer.
    let p = dir.path().join("grow.qcow2");
    let p = p.to_str().unwrap();
    create(p, "preallocation=metadata", 99_840);
    let blk = block_on(open(p, true)).unwrap();
    write(&blk, 65536, &[9; 34304], RequestFlags::empty());
    block_on(blk.co_truncate(300_032, false, PreallocMode::Full)).unwrap();
    let len = blk.bs().file().unwrap().getlength();
    write(&blk, 99_840, &[4; 200_192], RequestFlags::empty());
    assert_eq!(blk.bs().file().unwrap().getlength(), len);
    block_on(blk.close()).unwrap();
    drop(blk);
    assert_eq!(qemu_check(p).0, 0);
    let raw = reference_raw(p, dir.path());
    assert!(raw[..65536].iter().all(|&b| b == 0));
    assert!(raw[65536..99_840].iter().all(|&b| b == 9));
    assert!(raw[99_840..].iter().all(|&b| b == 4));
}
