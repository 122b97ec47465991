//! qcow2 images with an external data file, against the reference: images QEMU made read the
//! same through our driver, images we made and wrote read the same in QEMU and pass
//! `qemu-img check`, a raw data file always equals the guest view, and opening or creating
//! fails with QEMU's messages where QEMU fails.

mod common;

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use block::driver::CheckFix;
use block::{IoVector, Options, RequestFlags};
use common::*;

/// Creates an image with our driver.
fn create(path: &str, opts: &str, size: u64) -> block::Result<()> {
    let mut options = Options::parse_keyval(opts, None).unwrap();
    options.set("size", size.to_string());
    block_on(async {
        let class = block::registry::find_driver("qcow2").unwrap();
        (class.create.unwrap())(path, &mut options).await
    })
}

fn path_in(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

fn assert_clean(path: &str) {
    let (rc, out) = qemu_check(path);
    assert_eq!(rc, 0, "qemu-img check {path}:\n{out}");
    assert!(out.contains("No errors were found"), "{out}");
}

/// The error our driver gives when opening `path` (or a filename with options).
fn our_open_error(path: &str, extra: &[(&str, &str)]) -> String {
    block_on(async {
        let mut opts = Options::new();
        opts.set("driver", "qcow2");
        for (k, v) in extra {
            opts.set(k, *v);
        }
        let flags = block::OpenFlags::default();
        match block::BlockBackend::open(Some(path), opts, flags).await {
            Ok(_) => "opened".to_string(),
            Err(e) => e.to_string(),
        }
    })
}

/// The reason qemu-io gives for not opening an image (after "can't open device X: ").
fn qemu_open_error(args: &[&str]) -> String {
    let mut all = vec!["-c", "read 0 512"];
    all.extend_from_slice(args);
    let (rc, _, err) = run("/usr/bin/qemu-io", &all);
    assert_ne!(rc, 0, "qemu-io {args:?} opened the image");
    let line = err.lines().next().unwrap_or_default();
    let reason = line.split_once(": ").map_or(line, |(_, r)| r);
    reason
        .split_once(": ")
        .map_or(reason, |(_, r)| r)
        .to_string()
}

fn patch_u64(path: &str, offset: u64, value: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&value.to_be_bytes(), offset).unwrap();
}

/// Writes, zero writes (with and without unmap) and discards through our driver, a few
/// in flight at once on disjoint ranges, mirrored in `model`.
fn our_workload(path: &str, model: &mut [u8], seed: u64, ops: usize) {
    let shared = Rc::new(RefCell::new(model.to_vec()));
    block_on(async {
        let blk = open(path, true).await.unwrap();
        let size = blk.getlength();
        let mut rng = Rng(seed);
        let mut batch = Vec::new();
        let mut busy: Vec<(u64, u64)> = Vec::new();
        for i in 0..ops {
            let len = rng.below(200_000) + 1;
            let offset = rng.below(size - len);
            let (offset, len) = if rng.below(2) == 0 {
                (offset & !511, (len + 511) & !511)
            } else {
                (offset, len)
            };
            let len = len.min(size - offset);
            if busy
                .iter()
                .any(|&(o, l)| o < offset + len && offset < o + l)
                || batch.len() == 8
            {
                for t in batch.drain(..) {
                    t.await;
                }
                busy.clear();
            }
            busy.push((offset, len));
            let kind = rng.below(10);
            let pattern = (i % 250) as u8 + 1;
            let fill = if kind < 6 { pattern } else { 0 };
            shared.borrow_mut()[offset as usize..(offset + len) as usize].fill(fill);
            let blk = blk.clone();
            batch.push(block::AioContext::current().spawn(async move {
                let r = match kind {
                    0..=5 => {
                        let buf = IoVector::from_slice(&vec![pattern; len as usize]);
                        blk.co_pwritev(offset, &buf, RequestFlags::empty()).await
                    }
                    6 | 7 => {
                        let flags = if kind == 7 {
                            RequestFlags::MAY_UNMAP
                        } else {
                            RequestFlags::empty()
                        };
                        blk.co_pwrite_zeroes(offset, len, flags).await
                    }
                    _ => {
                        // A discard may leave anything behind; make the range defined again.
                        blk.co_pdiscard(offset, len).await.unwrap();
                        blk.co_pwrite_zeroes(offset, len, RequestFlags::empty())
                            .await
                    }
                };
                r.unwrap_or_else(|e| panic!("op {i} kind {kind} at {offset}+{len}: {e}"));
            }));
        }
        for t in batch {
            t.await;
        }
        let back = read_all(&blk, 1 << 20).await;
        assert_eq!(
            first_diff(&back, &shared.borrow()),
            None,
            "read-back differs"
        );
        blk.close().await.unwrap();
    });
    model.copy_from_slice(&shared.borrow());
}

fn our_written_image_case(opts: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let img = path_in(dir.path(), "w.qcow2");
    let data = path_in(dir.path(), "w.data");
    let size = 8u64 << 20;
    create(&img, &format!("data_file={data},{opts}"), size).unwrap();
    let mut model = vec![0u8; size as usize];
    our_workload(&img, &mut model, seed, 120);
    assert_clean(&img);
    let reference = reference_raw(&img, dir.path());
    assert_eq!(
        first_diff(&reference, &model),
        None,
        "qemu sees other data ({opts})"
    );
    let raw = opts.contains("data_file_raw=on");
    if raw {
        let file = std::fs::read(&data).unwrap();
        assert_eq!(
            first_diff(&file, &model),
            None,
            "raw data file differs ({opts})"
        );
    }
    // The reference's writes read back the same through our driver.
    qemu_io(&img, &["write -P 0xee 0 100k", "write -z 1M 64k"]);
    model[..100 << 10].fill(0xee);
    model[1 << 20..(1 << 20) + (64 << 10)].fill(0);
    let ours = block_on(async {
        let blk = open(&img, false).await.unwrap();
        read_all(&blk, 1 << 20).await
    });
    assert_eq!(first_diff(&ours, &model), None, "our read differs ({opts})");
}

#[test]
fn our_writes_read_back_in_qemu() {
    if have_qemu() {
        let _serial = setup();
        our_written_image_case("", 11);
    }
}

#[test]
fn raw_data_file_stays_the_guest_view() {
    if have_qemu() {
        let _serial = setup();
        our_written_image_case("data_file_raw=on", 12);
    }
}

#[test]
fn extended_l2_and_small_clusters_with_a_data_file() {
    if have_qemu() {
        let _serial = setup();
        our_written_image_case("extended_l2=on,cluster_size=32k", 13);
        our_written_image_case("cluster_size=4k,refcount_bits=1", 14);
    }
}

#[test]
fn qemu_written_images_read_the_same() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    for (i, opts) in ["", ",data_file_raw=on", ",extended_l2=on"]
        .iter()
        .enumerate()
    {
        let img = path_in(dir.path(), &format!("q{i}.qcow2"));
        let data = path_in(dir.path(), &format!("q{i}.data"));
        let o = format!("data_file={data}{opts}");
        run_ok(
            "/usr/bin/qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", &o, &img, "4M"],
        );
        qemu_io(
            &img,
            &[
                "write -P 0x11 0 64k",
                "write -P 0x22 100k 10k",
                "write -z 192k 64k",
                "write -P 0x33 300k 200k",
                "write -z -u 320k 64k",
                "discard 1M 128k",
            ],
        );
        let reference = reference_raw(&img, dir.path());
        let ours = block_on(async {
            let blk = open(&img, false).await.unwrap();
            let bs = blk.bs().clone();
            let check = bs.drv().co_check(&bs, CheckFix::default()).await.unwrap();
            assert_eq!(check.corruptions + check.leaks + check.check_errors, 0);
            read_all(&blk, 1 << 20).await
        });
        assert_eq!(first_diff(&ours, &reference), None, "for '{opts}'");
    }
}

#[test]
fn created_files_match_qemu() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let sizes = |img: &str, data: &str| {
        let len = |p: &str| std::fs::metadata(p).unwrap().len();
        (len(img), len(data))
    };
    for prealloc in ["off", "metadata", "falloc", "full"] {
        for raw in ["off", "on"] {
            let mut got = Vec::new();
            for who in ["ours", "qemu"] {
                let img = path_in(dir.path(), &format!("{who}-{prealloc}-{raw}.qcow2"));
                let data = format!("{img}.data");
                let o = format!("data_file={data},data_file_raw={raw},preallocation={prealloc}");
                if who == "ours" {
                    create(&img, &o, 3 << 20).unwrap();
                } else {
                    run_ok(
                        "/usr/bin/qemu-img",
                        &["create", "-q", "-f", "qcow2", "-o", &o, &img, "3M"],
                    );
                }
                assert_clean(&img);
                let info = run_ok("/usr/bin/qemu-img", &["info", "--output=json", &img]);
                let mut v: serde_json::Value = serde_json::from_str(&info).unwrap();
                let specific = v["format-specific"]["data"].as_object_mut().unwrap();
                assert_eq!(specific.remove("data-file").unwrap(), data.as_str());
                let map = run_ok("/usr/bin/qemu-img", &["map", "--output=json", &img]);
                got.push((sizes(&img, &data), v["format-specific"].clone(), map));
            }
            assert_eq!(
                got[0], got[1],
                "preallocation={prealloc} data_file_raw={raw}"
            );
        }
    }
}

#[test]
fn resizing_follows_with_the_data_file() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    for raw in ["off", "on"] {
        let img = path_in(dir.path(), &format!("r-{raw}.qcow2"));
        let data = format!("{img}.data");
        create(
            &img,
            &format!("data_file={data},data_file_raw={raw}"),
            1 << 20,
        )
        .unwrap();
        qemu_io(&img, &["write -P 0x5a 0 1M"]);
        for new_size in [3u64 << 20, 512 << 10] {
            block_on(async {
                let blk = open(&img, true).await.unwrap();
                let prealloc = block::driver::PreallocMode::Off;
                blk.bs()
                    .co_truncate(new_size, false, prealloc)
                    .await
                    .unwrap();
                blk.close().await.unwrap();
            });
            assert_eq!(std::fs::metadata(&data).unwrap().len(), new_size);
            assert_clean(&img);
            let mut expect = vec![0u8; new_size as usize];
            expect[..(new_size as usize).min(1 << 20)].fill(0x5a);
            assert_eq!(first_diff(&reference_raw(&img, dir.path()), &expect), None);
        }
        if raw == "on" {
            // Grown with a raw data file: every cluster mapped to its own offset.
            let map = run_ok("/usr/bin/qemu-img", &["map", "--output=json", &img]);
            assert_eq!(map.lines().count(), 1, "{map}");
        }
    }
}

#[test]
fn open_errors_match_qemu() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let img = path_in(dir.path(), "e.qcow2");
    let data = path_in(dir.path(), "e.data");
    run_ok(
        "/usr/bin/qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={data}"),
            &img,
            "1M",
        ],
    );
    std::fs::rename(&data, format!("{data}.moved")).unwrap();
    assert_eq!(our_open_error(&img, &[]), qemu_open_error(&[&img]));
    let moved = format!("{data}.moved");
    assert_eq!(
        our_open_error(&img, &[("data-file.filename", &moved)]),
        "opened"
    );
    let json = format!(
        r#"json:{{"driver":"qcow2","file":{{"driver":"file","filename":"{img}"}},"data-file":"x"}}"#
    );
    assert_eq!(
        our_open_error(&img, &[("data-file", "x")]),
        qemu_open_error(&[&json])
    );

    // The incompatible bit without a name in the header.
    let plain = path_in(dir.path(), "plain.qcow2");
    run_ok(
        "/usr/bin/qemu-img",
        &["create", "-q", "-f", "qcow2", &plain, "1M"],
    );
    let bit = path_in(dir.path(), "bit.qcow2");
    std::fs::copy(&plain, &bit).unwrap();
    patch_u64(&bit, 72, 1 << 2);
    assert_eq!(our_open_error(&bit, &[]), qemu_open_error(&[&bit]));
    // The raw bit without a data file.
    let rawbit = path_in(dir.path(), "rawbit.qcow2");
    std::fs::copy(&plain, &rawbit).unwrap();
    patch_u64(&rawbit, 88, 1 << 1);
    assert_eq!(our_open_error(&rawbit, &[]), qemu_open_error(&[&rawbit]));
    // A data file for an image without one.
    let opts = format!("driver=qcow2,file.filename={plain},data-file.filename={moved}");
    assert_eq!(
        our_open_error(&plain, &[("data-file.filename", &moved)]),
        qemu_open_error(&["--image-opts", &opts])
    );
}

#[test]
fn compressed_writes_are_refused() {
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let img = path_in(dir.path(), "c.qcow2");
    let data = path_in(dir.path(), "c.data");
    create(&img, &format!("data_file={data}"), 1 << 20).unwrap();
    block_on(async {
        let blk = open(&img, true).await.unwrap();
        let buf = IoVector::from_slice(&[7u8; 65536]);
        let e = blk
            .co_pwritev(0, &buf, RequestFlags::WRITE_COMPRESSED)
            .await
            .unwrap_err();
        assert_eq!(e.errno(), libc::ENOTSUP);
        blk.close().await.unwrap();
    });
}

#[test]
fn create_refuses_what_qemu_refuses() {
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let img = path_in(dir.path(), "x.qcow2");
    let data = path_in(dir.path(), "x.data");
    for (opts, msg) in [
        (format!("data_file={data},compat=0.10"), "External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)"),
        ("data_file_raw=on".to_string(), "data-file-raw requires data-file"),
        (format!("data_file={data},data_file_raw=on,backing_file=b.qcow2"), "Backing file and data-file-raw cannot be used at the same time"),
    ] {
        let e = create(&img, &opts, 1 << 20).unwrap_err();
        assert_eq!(e.to_string(), msg, "for {opts}");
    }
}

#[test]
fn metadata_only_open_needs_no_data_file() {
    if !have_qemu() {
        return;
    }
    let _serial = setup();
    let dir = tempfile::tempdir().unwrap();
    let img = path_in(dir.path(), "i.qcow2");
    let data = path_in(dir.path(), "i.data");
    let o = format!("data_file={data},data_file_raw=on");
    run_ok(
        "/usr/bin/qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", &o, &img, "1M"],
    );
    std::fs::remove_file(&data).unwrap();
    // What `qemu-img info` opens: the data file is not looked at, the header still says
    // everything about it.
    let specific = block_on(async {
        let mut opts = Options::new();
        opts.set("driver", "qcow2");
        let flags = block::OpenFlags {
            read_only: true,
            no_io: true,
            ..block::OpenFlags::default()
        };
        let blk = block::BlockBackend::open(Some(&img), opts, flags)
            .await
            .unwrap();
        let bs = blk.bs().clone();
        assert!(bs.child("data-file").is_none());
        let buf = IoVector::alloc(512);
        assert!(blk.co_preadv(0, &buf, RequestFlags::empty()).await.is_err());
        bs.drv().get_specific_info(&bs).unwrap()
    });
    let info = run_ok("/usr/bin/qemu-img", &["info", "--output=json", &img]);
    let theirs: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(specific, theirs["format-specific"]);
}
