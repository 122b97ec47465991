//! Dirty bitmaps on a node (block/src/dirty_bitmap/): every completed write marks enabled
//! bitmaps, the QMP-level operations keep QEMU's rules and messages, and an operation's
//! successor records writes while it holds a bitmap.

mod common;

use block::bitmap_qmp::{self as qmp, AddOptions};
use block::{AioContext, IoVector, RequestFlags};
use common::open_mem;

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    AioContext::current().run_until(f)
}

#[test]
fn writes_and_zero_writes_mark_enabled_bitmaps_only() {
    let (bs, _mem) = open_mem("size=1M,align=512");
    let on = bs.create_dirty_bitmap(65536, Some("on")).unwrap();
    let off = bs.create_dirty_bitmap(4096, Some("off")).unwrap();
    off.disable();
    let data = IoVector::from_slice(&[7; 100]);
    run(bs.co_pwritev(70_000, &data, RequestFlags::empty())).unwrap();
    run(bs.co_pwrite_zeroes(300_000, 4096, RequestFlags::empty())).unwrap();
    assert_eq!(on.dirty_extents(), vec![(65536, 65536), (262144, 65536)]);
    assert_eq!(off.count(), 0);
    // A failed write is marked too: its range may have changed in part.
    let past_end = IoVector::from_slice(&[1; 512]);
    assert!(run(bs.co_pwritev(u64::MAX / 2, &past_end, RequestFlags::empty())).is_err());
    assert_eq!(on.count(), 2 * 65536);
}

#[test]
fn qmp_operations_check_names_granularity_and_state() {
    let (bs, _mem) = open_mem("size=1M");
    let add = |name: &'static str, granularity| {
        let opts = AddOptions {
            granularity,
            ..AddOptions::default()
        };
        run(qmp::add(&bs, name, opts))
    };
    assert_eq!(
        add("", None).unwrap_err().to_string(),
        "Bitmap name cannot be empty"
    );
    assert_eq!(
        add("g", Some(1000)).unwrap_err().to_string(),
        "Granularity must be power of 2 and at least 512"
    );
    add("a", None).unwrap();
    assert_eq!(bs.find_dirty_bitmap("a").unwrap().granularity(), 65536);
    add("b", Some(512)).unwrap();
    let e = run(qmp::add(
        &bs,
        "p",
        AddOptions {
            persistent: true,
            ..AddOptions::default()
        },
    ))
    .unwrap_err();
    assert!(e
        .to_string()
        .starts_with("Can't store persistent bitmaps to"));
    bs.find_dirty_bitmap("b").unwrap().set_dirty(4096, 1);
    qmp::merge(&bs, "a", &[(&bs, "b")]).unwrap();
    assert_eq!(bs.find_dirty_bitmap("a").unwrap().count(), 65536);
    assert_eq!(
        qmp::clear(&bs, "zz").unwrap_err().to_string(),
        "Dirty bitmap 'zz' not found"
    );
    let a = bs.find_dirty_bitmap("a").unwrap();
    a.set_busy(true);
    assert_eq!(
        qmp::clear(&bs, "a").unwrap_err().to_string(),
        "Bitmap 'a' is currently in use by another operation and cannot be used"
    );
    a.set_busy(false);
    qmp::disable(&bs, "a").unwrap();
    assert!(!a.enabled());
    assert_eq!(qmp::sha256(&bs, "a").unwrap(), a.sha256());
    run(qmp::remove(&bs, "a")).unwrap();
    assert!(bs.find_dirty_bitmap("a").is_none());
}

#[test]
fn a_frozen_bitmap_hands_writes_to_its_successor() {
    let (bs, _mem) = open_mem("size=1M");
    let bm = bs.create_dirty_bitmap(65536, Some("x")).unwrap();
    bm.set_dirty(0, 1);
    bs.dirty_bitmap_create_successor(&bm).unwrap();
    assert!(qmp::clear(&bs, "x").is_err());
    let data = IoVector::from_slice(&[1; 512]);
    run(bs.co_pwritev(3 * 65536, &data, RequestFlags::empty())).unwrap();
    assert_eq!(bm.count(), 65536);
    bs.dirty_bitmap_reclaim(&bm).unwrap();
    assert_eq!(bm.count(), 2 * 65536);
    bs.dirty_bitmap_create_successor(&bm).unwrap();
    let next = bs.dirty_bitmap_abdicate(&bm).unwrap();
    assert_eq!(next.name().as_deref(), Some("x"));
    assert_eq!(next.count(), 0);
    assert_eq!(bs.dirty_bitmaps().len(), 1);
}
