//! Images created and written by our qcow2 driver pass `qemu-img check` and read back in
//! the reference exactly as we wrote them, including under many concurrent requests.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use block::{BlockBackend, IoVector, Options, RequestFlags};
use common::*;

/// Creates an image with our driver.
fn create(path: &str, opts: &str, size: u64) -> block::Result<()> {
    let mut options = if opts.is_empty() {
        Options::new()
    } else {
        Options::parse_keyval(opts, None).unwrap()
    };
    options.set("size", size.to_string());
    block_on(async {
        let class = block::registry::find_driver("qcow2").unwrap();
        (class.create.unwrap())(path, &mut options).await
    })
}

fn assert_clean(path: &str) {
    let (rc, out) = qemu_check(path);
    assert_eq!(rc, 0, "qemu-img check {path}:\n{out}");
    assert!(out.contains("No errors were found"), "{out}");
}

#[test]
fn created_images_are_clean_and_match_qemu_layout() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    for (i, opts) in [
        "",
        "compat=0.10",
        "cluster_size=512",
        "cluster_size=2M",
        "refcount_bits=1",
        "refcount_bits=64",
        "extended_l2=on",
        "lazy_refcounts=on,compression_type=zstd",
    ]
    .iter()
    .enumerate()
    {
        let ours = dir.path().join(format!("o{i}.qcow2"));
        let ours = ours.to_str().unwrap();
        create(ours, opts, 64 << 20).unwrap();
        assert_clean(ours);
        let theirs = dir.path().join(format!("t{i}.qcow2"));
        let theirs = theirs.to_str().unwrap();
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([theirs, "64M"]);
        run_ok("/usr/bin/qemu-img", &args);
        let a = run_ok("/usr/bin/qemu-img", &["info", "--output=json", ours]);
        let b = run_ok("/usr/bin/qemu-img", &["info", "--output=json", theirs]);
        let strip = |s: &str| {
            let mut v: serde_json::Value = serde_json::from_str(s).unwrap();
            for k in ["filename", "actual-size", "children"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        };
        assert_eq!(strip(&a), strip(&b), "info differs for '{opts}'");
    }
}

#[test]
fn create_refuses_bad_options_like_qemu() {
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.qcow2");
    let p = p.to_str().unwrap();
    for (opts, msg) in [
        ("compat=0.9", "Parameter 'version' does not accept value '0.9'"),
        ("cluster_size=1000", "Cluster size must be a power of two between 512 and 2048k"),
        ("refcount_bits=3", "Refcount width must be a power of two and may not exceed 64 bits"),
        ("compat=0.10,lazy_refcounts=on", "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)"),
        ("cluster_size=4k,extended_l2=on", "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"),
        ("backing_fmt=raw", "Backing format cannot be used without backing file"),
        ("data_file_raw=on", "data-file-raw requires data-file"),
    ] {
        let e = create(p, opts, 1 << 20).unwrap_err();
        assert_eq!(e.to_string(), msg, "for {opts}");
    }
}

/// Applies a random mix of writes, zero writes and discards, many in flight at once, and
/// mirrors them in `model`.
async fn random_workload(
    blk: Rc<BlockBackend>,
    model: Rc<RefCell<Vec<u8>>>,
    seed: u64,
    ops: usize,
    unmap: bool,
) {
    let size = blk.getlength();
    let mut rng = Rng(seed);
    let mut tasks = Vec::new();
    // Requests in flight never overlap each other, so the model's order is the image's.
    let busy: Rc<RefCell<Vec<(u64, u64)>>> = Rc::new(RefCell::new(Vec::new()));
    for i in 0..ops {
        let max_len = if rng.below(4) == 0 { 300_000 } else { 9000 };
        let len = rng.below(max_len) + 1;
        let offset = rng.below(size - len);
        let (offset, len) = if rng.below(3) == 0 {
            (offset & !511, (len + 511) & !511)
        } else {
            (offset, len)
        };
        let len = len.min(size - offset);
        let kind = rng.below(10);
        let pattern = (i % 251) as u8 + 1;
        loop {
            let clash = busy
                .borrow()
                .iter()
                .any(|&(o, l)| o < offset + len && offset < o + l);
            if !clash {
                break;
            }
            futures_lite::future::yield_now().await;
        }
        busy.borrow_mut().push((offset, len));
        {
            let mut m = model.borrow_mut();
            let fill = if kind < 7 { pattern } else { 0 };
            m[offset as usize..(offset + len) as usize].fill(fill);
        }
        let blk = blk.clone();
        let busy = busy.clone();
        tasks.push(block::AioContext::current().spawn(async move {
            let r = match kind {
                0..=6 => {
                    let buf = IoVector::from_slice(&vec![pattern; len as usize]);
                    blk.co_pwritev(offset, &buf, RequestFlags::empty()).await
                }
                _ => {
                    let flags = if unmap {
                        RequestFlags::MAY_UNMAP
                    } else {
                        RequestFlags::empty()
                    };
                    blk.co_pwrite_zeroes(offset, len, flags).await
                }
            };
            busy.borrow_mut().retain(|&(o, l)| (o, l) != (offset, len));
            r.unwrap_or_else(|e| panic!("op {i} kind {kind} at {offset}+{len}: {e}"));
        }));
        if tasks.len() >= 32 {
            tasks.remove(0).await;
        }
    }
    for t in tasks {
        t.await;
    }
}

fn workload_case(opts: &str, backing: bool, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.qcow2");
    let path = path.to_str().unwrap().to_string();
    let size = 24u64 << 20;
    let mut model = vec![0u8; size as usize];
    let mut full_opts = opts.to_string();
    if backing {
        let base = dir.path().join("base.qcow2");
        let base = base.to_str().unwrap();
        run_ok(
            "/usr/bin/qemu-img",
            &["create", "-q", "-f", "qcow2", base, &size.to_string()],
        );
        qemu_io(base, &["write -P 0xbb 0 24M"]);
        model.fill(0xbb);
        if !full_opts.is_empty() {
            full_opts.push(',');
        }
        full_opts.push_str("backing_file=base.qcow2,backing_fmt=qcow2");
    }
    create(&path, &full_opts, size).unwrap();
    let model = Rc::new(RefCell::new(model));
    block_on(async {
        let blk = open(&path, true).await.unwrap();
        random_workload(
            blk.clone(),
            model.clone(),
            seed,
            400,
            seed.is_multiple_of(2),
        )
        .await;
        let back = read_all(&blk, 1 << 20).await;
        assert_eq!(
            first_diff(&back, &model.borrow()),
            None,
            "read-back differs ({opts})"
        );
        blk.close().await.unwrap();
    });
    assert_clean(&path);
    let reference = reference_raw(&path, dir.path());
    assert_eq!(
        first_diff(&reference, &model.borrow()),
        None,
        "qemu sees different data ({opts})"
    );
}

#[test]
fn random_workload_v3_64k() {
    if have_qemu() {
        let _serial = setup();
        workload_case("", false, 1);
    }
}

#[test]
fn random_workload_v2_with_backing() {
    if have_qemu() {
        let _serial = setup();
        workload_case("compat=0.10", true, 2);
    }
}

#[test]
fn random_workload_small_clusters_narrow_refcounts() {
    if have_qemu() {
        let _serial = setup();
        workload_case("cluster_size=512,refcount_bits=1", false, 3);
    }
}

#[test]
fn random_workload_extended_l2_with_backing() {
    if have_qemu() {
        let _serial = setup();
        workload_case("extended_l2=on,cluster_size=128k", true, 4);
    }
}

#[test]
fn random_workload_wide_refcounts_2m_clusters() {
    if have_qemu() {
        let _serial = setup();
        workload_case("cluster_size=2M,refcount_bits=64", true, 5);
    }
}

/// Compressed clusters are packed byte by byte after one another, as QEMU packs them: the
/// same writes give an image of about the same length, clean, with the same contents; and a
/// compressed write over an allocated cluster fails with EIO in both.
#[test]
fn compressed_clusters_are_packed_like_qemu() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.qcow2");
    let ours = ours.to_str().unwrap();
    let theirs = dir.path().join("theirs.qcow2");
    let theirs = theirs.to_str().unwrap();
    let (size, request) = (4u64 << 20, 16384u64);
    create(ours, "cluster_size=4096", size).unwrap();
    run_ok(
        "/usr/bin/qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            theirs,
            "4M",
        ],
    );
    // Four clusters per request, so several are compressed at once.
    let requests = 64u64;
    let cmds: Vec<String> = (0..requests)
        .map(|i| format!("write -c -P {} {} {request}", i + 1, i * request))
        .collect();
    qemu_io(theirs, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
    let mut model = vec![0u8; size as usize];
    block_on(async {
        let blk = open(ours, true).await.unwrap();
        for i in 0..requests {
            let at = i * request;
            let data = vec![i as u8 + 1; request as usize];
            model[at as usize..(at + request) as usize].copy_from_slice(&data);
            let buf = IoVector::from_slice(&data);
            blk.co_pwritev(at, &buf, RequestFlags::WRITE_COMPRESSED)
                .await
                .unwrap();
        }
        let again = IoVector::from_slice(&[9u8; 4096]);
        let err = blk
            .co_pwritev(0, &again, RequestFlags::WRITE_COMPRESSED)
            .await
            .unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        blk.close().await.unwrap();
    });
    assert_clean(ours);
    // zlib implementations differ by a few bytes per cluster; a cluster per compressed
    // cluster would make ours 1 MiB longer.
    let len = |p: &str| std::fs::metadata(p).unwrap().len();
    assert!(
        len(ours).abs_diff(len(theirs)) < 4096,
        "compressed data packed differently: {} bytes, QEMU {}",
        len(ours),
        len(theirs)
    );
    let reference = reference_raw(ours, dir.path());
    assert_eq!(first_diff(&reference, &model), None);
}
