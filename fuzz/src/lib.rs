//! Shared pieces of the fuzz targets: opening a fuzzer-made image through the block layer
//! and exercising it as qemu-img and a guest would. QEMU fuzzes its devices with
//! tests/qtest/fuzz/; its image parsers have no in-tree fuzzer.

use std::path::PathBuf;
use std::rc::Rc;

use block::driver::CheckFix;
use block::{AioContext, BlockBackend, IoVector, OpenFlags, Options, RequestFlags};

/// The file a target's image bytes are written to (one per process: libFuzzer runs one
/// input at a time).
fn image_path() -> PathBuf {
    std::env::temp_dir().join(format!("rqemu-fuzz-{}.img", std::process::id()))
}

/// How much of an image to touch: reads and writes stay within this many bytes of each
/// probe point, so a huge virtual size costs nothing.
const PROBE: usize = 64 << 10;

/// Writes `data` as an image and opens it with `format`'s driver (`no_io` for drivers that
/// need a key to do I/O). Returns None when the driver refuses the image (the expected
/// outcome for most inputs); the point is that it never panics, hangs or overallocates.
fn open(data: &[u8], format: &str, writable: bool, no_io: bool) -> Option<Rc<BlockBackend>> {
    formats::register_all();
    let path = image_path();
    std::fs::write(&path, data).ok()?;
    let mut opts = Options::new();
    opts.set("driver", format);
    let flags = OpenFlags {
        read_only: !writable,
        no_io,
        ..OpenFlags::default()
    };
    let name = path.to_str()?.to_string();
    AioContext::current()
        .run_until(BlockBackend::open(Some(&name), opts, flags))
        .ok()
}

/// Reads at the start, middle and end of the virtual disk.
async fn probe_reads(blk: &BlockBackend) {
    let len = blk.getlength();
    for at in [0, len / 2, len.saturating_sub(PROBE as u64)] {
        let n = PROBE.min((len - at.min(len)) as usize);
        let buf = IoVector::alloc(n);
        let _ = blk.co_preadv(at, &buf, RequestFlags::empty()).await;
    }
}

/// A read-only format: open the image and read it.
pub fn open_and_read(data: &[u8], format: &str) {
    if let Some(blk) = open(data, format, false, false) {
        AioContext::current().run_until(probe_reads(&blk));
    }
}

/// A driver that needs a key for I/O (luks): open without I/O, as `qemu-img info` does.
pub fn open_header_only(data: &[u8], format: &str) {
    let _ = open(data, format, false, true);
}

/// A writable format: check it, read it, write a few places (unaligned too), read back,
/// and check again with repairs, as `qemu-img check -r all` after a guest's use would.
/// A write must read back unless the first check found the image corrupt: in such an image
/// two clusters may share one place in the file, and QEMU's drivers, like ours, then let a
/// later write overwrite an earlier one ("further writes to the image may corrupt it").
pub fn open_check_write(data: &[u8], format: &str) {
    let Some(blk) = open(data, format, true, false) else {
        return;
    };
    AioContext::current().run_until(async {
        let bs = blk.bs().clone();
        let sound = bs
            .drv()
            .co_check(&bs, CheckFix::default())
            .await
            .is_ok_and(|r| r.corruptions == 0 && r.check_errors == 0);
        probe_reads(&blk).await;
        let len = blk.getlength();
        let seed = data.iter().fold(0u64, |h, &b| h.rotate_left(5) ^ b as u64);
        for (i, at) in [0, len / 3, seed % len.max(1)].into_iter().enumerate() {
            let n = (4096 + i * 1000).min((len - at.min(len)) as usize);
            let buf = IoVector::from_slice(&vec![0xa5 ^ i as u8; n]);
            if blk
                .co_pwritev(at, &buf, RequestFlags::empty())
                .await
                .is_ok()
            {
                let back = IoVector::alloc(n);
                let read = blk.co_preadv(at, &back, RequestFlags::empty()).await;
                if sound && read.is_ok() {
                    assert_eq!(
                        back.to_vec(),
                        buf.to_vec(),
                        "{format}: write at {at} did not read back"
                    );
                }
            }
        }
        let fix = CheckFix {
            leaks: true,
            errors: true,
        };
        let _ = bs.drv().co_check(&bs, fix).await;
        let _ = blk.co_flush().await;
    });
}
