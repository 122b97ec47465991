//! The file protocol over both I/O engines, buffered and O_DIRECT: data round trips,
//! unaligned requests on an O_DIRECT node, growth, holes, discard and truncate.

use std::rc::Rc;

use block::driver::{PreallocMode, StatusFlags};
use block::node::{AioMode, CacheMode};
use block::{bdrv_open, AioContext, BlockDriverState, IoVector, OpenFlags, Options, RequestFlags};

fn open_file(path: &std::path::Path, aio: AioMode, cache: &str) -> Option<Rc<BlockDriverState>> {
    let flags = OpenFlags {
        aio,
        cache: CacheMode::parse(cache).unwrap(),
        unmap: true,
        ..Default::default()
    };
    let mut options = Options::new();
    options.set("driver", "file");
    match AioContext::current().run_until(bdrv_open(path.to_str(), options, flags)) {
        Ok(bs) => Some(bs),
        Err(e) if aio == AioMode::IoUring || cache == "none" => {
            eprintln!("skipping {aio:?}/{cache}: {e}");
            None
        }
        Err(e) => panic!("open failed: {e}"),
    }
}

fn scratch(len: u64) -> tempfile::NamedTempFile {
    // /var/tmp is disk-backed (O_DIRECT works there; tmpfs refuses it).
    let f = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
    f.as_file().set_len(len).unwrap();
    f
}

fn round_trip(aio: AioMode, cache: &str) {
    let f = scratch(1 << 20);
    let Some(bs) = open_file(f.path(), aio, cache) else {
        return;
    };
    if cache == "none" {
        assert!(bs.limits().request_alignment >= 512);
    }
    let ctx = AioContext::current();
    let b = bs.clone();
    let out = ctx.run_until(async move {
        // Aligned, unaligned (RMW on O_DIRECT), and many in flight at once.
        b.co_pwritev(
            4096,
            &IoVector::from_slice(&[0x5a; 8192]),
            RequestFlags::empty(),
        )
        .await
        .unwrap();
        b.co_pwritev(4100, &IoVector::from_slice(b"hello"), RequestFlags::empty())
            .await
            .unwrap();
        let tasks: Vec<_> = (0..32u64)
            .map(|i| {
                let b = b.clone();
                AioContext::current().spawn(async move {
                    b.co_pwritev(
                        65536 + i * 4096,
                        &IoVector::from_slice(&[i as u8; 4096]),
                        RequestFlags::FUA,
                    )
                    .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        b.co_flush().await.unwrap();
        let back = IoVector::alloc(16);
        b.co_preadv(4096, &back, RequestFlags::empty())
            .await
            .unwrap();
        back.to_vec()
    });
    assert_eq!(&out[..4], &[0x5a; 4]);
    assert_eq!(&out[4..9], b"hello");
    let raw = std::fs::read(f.path()).unwrap();
    for i in 0..32usize {
        assert!(raw[65536 + i * 4096..65536 + (i + 1) * 4096]
            .iter()
            .all(|&b| b == i as u8));
    }
}

#[test]
fn threads_buffered() {
    round_trip(AioMode::Threads, "writeback");
}

#[test]
fn threads_direct() {
    round_trip(AioMode::Threads, "none");
}

#[test]
fn io_uring_buffered() {
    round_trip(AioMode::IoUring, "writeback");
}

#[test]
fn io_uring_direct() {
    round_trip(AioMode::IoUring, "none");
}

#[test]
fn holes_discard_zeroes_and_truncate() {
    let f = scratch(0);
    let bs = open_file(f.path(), AioMode::Threads, "writeback").unwrap();
    let b = bs.clone();
    AioContext::current().run_until(async move {
        b.co_truncate(4 << 20, true, PreallocMode::Off)
            .await
            .unwrap();
        assert_eq!(b.getlength(), 4 << 20);
        // Growing an empty file writes its first block (QEMU's allocate_first_block, so
        // that O_DIRECT alignment can be probed later); the rest stays a hole.
        let s = b.co_block_status(true, 0, 1 << 20).await.unwrap();
        assert!(
            s.flags.contains(StatusFlags::DATA),
            "first block written: {s:?}"
        );
        let s = b.co_block_status(true, 65536, 1 << 20).await.unwrap();
        assert!(
            s.flags.contains(StatusFlags::ZERO),
            "a new sparse file is a hole: {s:?}"
        );
        b.co_pwritev(
            1 << 20,
            &IoVector::from_slice(&[1; 65536]),
            RequestFlags::empty(),
        )
        .await
        .unwrap();
        let s = b.co_block_status(true, 1 << 20, 1 << 20).await.unwrap();
        assert!(s.flags.contains(StatusFlags::DATA));
        assert_eq!(s.bytes, 65536);
        b.co_pdiscard(1 << 20, 65536).await.unwrap();
        let s = b.co_block_status(true, 1 << 20, 65536).await.unwrap();
        assert!(
            s.flags.contains(StatusFlags::ZERO),
            "discard punched a hole: {s:?}"
        );
        b.co_pwrite_zeroes(0, 8192, RequestFlags::MAY_UNMAP)
            .await
            .unwrap();
        b.co_truncate(1 << 20, true, PreallocMode::Off)
            .await
            .unwrap();
        assert_eq!(b.getlength(), 1 << 20);
    });
    assert_eq!(std::fs::metadata(f.path()).unwrap().len(), 1 << 20);
}

#[test]
fn missing_files_give_qemus_message() {
    let err = AioContext::current()
        .run_until(bdrv_open(
            Some("/nonexistent/x.img"),
            Options::new(),
            OpenFlags::default(),
        ))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Could not open '/nonexistent/x.img': No such file or directory"
    );
}

#[test]
fn snapshot_mode_without_qcow2_fails_naming_what_is_missing() {
    let f = scratch(4096);
    let flags = OpenFlags {
        snapshot: true,
        ..Default::default()
    };
    let mut options = Options::new();
    options.set("driver", "file");
    let err = AioContext::current()
        .run_until(bdrv_open(f.path().to_str(), options, flags))
        .unwrap_err();
    assert_eq!(err.errno(), libc::ENOTSUP);
    assert!(err.to_string().contains("qcow2"), "{err}");
}
