//! BlockBackend (block/src/backend.rs): range checks, and the rule that an aio_* completion
//! callback always runs from a bottom half, never inside the submitting call.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use block::{AioContext, BlockBackend, IoVector, RequestFlags};
use common::open_mem;

#[test]
fn aio_callbacks_run_from_a_bottom_half_even_when_the_request_finishes_at_once() {
    let (bs, _mem) = open_mem("size=4096");
    let blk = BlockBackend::new(bs);
    let done = Rc::new(Cell::new(false));
    let in_submit = Rc::new(Cell::new(true));
    let (d, s) = (done.clone(), in_submit.clone());
    // null-like zero write completes without yielding to any I/O engine.
    blk.aio_pwrite_zeroes(
        0,
        512,
        RequestFlags::empty(),
        Box::new(move |r| {
            assert!(!s.get(), "callback ran inside the submitting call");
            r.unwrap();
            d.set(true);
        }),
    );
    in_submit.set(false);
    assert!(!done.get());
    let b = blk.clone();
    AioContext::current().run_until(async move { b.drain().await });
    assert!(done.get());
    assert_eq!(blk.in_flight(), 0);
}

#[test]
fn aio_requests_complete_in_submission_order_when_they_finish_together() {
    let (bs, _mem) = open_mem("size=65536");
    let blk = BlockBackend::new(bs);
    let order = Rc::new(RefCell::new(Vec::new()));
    for i in 0..8u64 {
        let o = order.clone();
        blk.aio_preadv(
            i * 512,
            IoVector::alloc(512),
            RequestFlags::empty(),
            Box::new(move |r| {
                r.unwrap();
                o.borrow_mut().push(i);
            }),
        );
    }
    let b = blk.clone();
    AioContext::current().run_until(async move { b.drain().await });
    assert_eq!(*order.borrow(), (0..8).collect::<Vec<_>>());
}

#[test]
fn requests_past_the_device_end_fail_with_eio() {
    let (bs, _mem) = open_mem("size=4096");
    let blk = BlockBackend::new(bs);
    let ctx = AioContext::current();
    let b = blk.clone();
    let err = ctx
        .run_until(async move {
            b.co_preadv(4000, &IoVector::alloc(512), RequestFlags::empty())
                .await
        })
        .unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    let result = Rc::new(RefCell::new(None));
    let r = result.clone();
    blk.aio_pwritev(
        4096,
        IoVector::alloc(1),
        RequestFlags::empty(),
        Box::new(move |res| *r.borrow_mut() = Some(res)),
    );
    let b = blk.clone();
    ctx.run_until(async move { b.drain().await });
    assert_eq!(
        result
            .borrow()
            .as_ref()
            .unwrap()
            .as_ref()
            .unwrap_err()
            .errno(),
        libc::EIO
    );
}

#[test]
fn drain_waits_for_requests_held_in_the_driver() {
    let (bs, mem) = open_mem("size=4096,gate=on");
    let blk = BlockBackend::new(bs);
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    blk.aio_pwritev(
        0,
        IoVector::alloc(512),
        RequestFlags::empty(),
        Box::new(move |r| {
            r.unwrap();
            d.set(true);
        }),
    );
    let (b, m, d2) = (blk.clone(), mem.clone(), done.clone());
    AioContext::current().run_until(async move {
        while m.log.borrow().is_empty() {
            futures_lite::future::yield_now().await;
        }
        assert_eq!(b.in_flight(), 1);
        assert!(!d2.get());
        m.open_gate();
        b.drain().await;
    });
    assert!(done.get());
}

#[test]
fn writethrough_mode_flushes_after_every_write() {
    let (bs, _mem) = open_mem("size=4096");
    let blk = BlockBackend::new(bs);
    blk.set_write_cache(false);
    let b = blk.clone();
    // The memory driver has no FUA: the generic layer emulates it with a flush, which must
    // succeed and leave the data written.
    AioContext::current()
        .run_until(async move {
            b.co_pwritev(0, &IoVector::from_slice(&[7; 512]), RequestFlags::empty())
                .await
        })
        .unwrap();
}
