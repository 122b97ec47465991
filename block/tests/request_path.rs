//! The generic request path (block/src/io/): alignment and read-modify-write, serialisation
//! of overlapping requests, max_transfer splitting, reads past the end, zero-write fallback.

mod common;

use std::rc::Rc;

use block::{AioContext, IoVector, RequestFlags};
use common::{initial, open_mem};

#[test]
fn unaligned_reads_reach_the_driver_aligned_and_return_the_right_bytes() {
    let (bs, mem) = open_mem("size=8192,align=512");
    let buf = IoVector::alloc(100);
    let b = buf.clone();
    AioContext::current()
        .run_until(async move { bs.co_preadv(1000, &b, RequestFlags::empty()).await })
        .unwrap();
    let expect: Vec<u8> = (1000..1100).map(initial).collect();
    assert_eq!(buf.to_vec(), expect);
    assert_eq!(*mem.log.borrow(), vec![("r", 512, 1024)]);
}

#[test]
fn unaligned_writes_are_read_modify_write_and_keep_the_neighbours() {
    let (bs, mem) = open_mem("size=8192,align=512");
    let data = IoVector::from_slice(&[0xaa; 700]);
    AioContext::current()
        .run_until(async move { bs.co_pwritev(300, &data, RequestFlags::empty()).await })
        .unwrap();
    let d = mem.data.borrow();
    assert!(d[300..1000].iter().all(|&b| b == 0xaa));
    assert_eq!(d[299], initial(299));
    assert_eq!(d[1000], initial(1000));
    // Head block read, tail block read, one aligned write of the widened range.
    assert_eq!(
        *mem.log.borrow(),
        vec![("r", 0, 512), ("r", 512, 512), ("w", 0, 1024)]
    );
}

#[test]
fn a_write_inside_one_block_reads_that_block_once() {
    let (bs, mem) = open_mem("size=4096,align=512");
    let data = IoVector::from_slice(&[1; 10]);
    AioContext::current()
        .run_until(async move { bs.co_pwritev(600, &data, RequestFlags::empty()).await })
        .unwrap();
    assert_eq!(*mem.log.borrow(), vec![("r", 512, 512), ("w", 512, 512)]);
}

#[test]
fn overlapping_unaligned_writes_are_serialised_so_no_update_is_lost() {
    // Two writes to different bytes of the same 512-byte block, both in flight at once.
    // Without serialisation both would read the old block and the second write-back would
    // erase the first write.
    let (bs, mem) = open_mem("size=4096,align=512,gate=on");
    let ctx = AioContext::current();
    let (bs1, bs2) = (bs.clone(), bs.clone());
    let first = ctx.spawn(async move {
        bs1.co_pwritev(
            10,
            &IoVector::from_slice(&[0x11; 10]),
            RequestFlags::empty(),
        )
        .await
    });
    let second = ctx.spawn(async move {
        bs2.co_pwritev(
            100,
            &IoVector::from_slice(&[0x22; 10]),
            RequestFlags::empty(),
        )
        .await
    });
    let m = mem.clone();
    ctx.run_until(async move {
        // Let both coroutines run until the first holds its write at the gate.
        while !m.log.borrow().iter().any(|e| e.0 == "w") {
            futures_lite::future::yield_now().await;
        }
        for _ in 0..10 {
            futures_lite::future::yield_now().await;
        }
        // The second write has not read the block yet: it waits behind the first.
        assert_eq!(m.log.borrow().iter().filter(|e| e.0 == "r").count(), 1);
        m.open_gate();
        first.await.unwrap();
        second.await.unwrap();
    });
    let d = mem.data.borrow();
    assert!(d[10..20].iter().all(|&b| b == 0x11));
    assert!(d[100..110].iter().all(|&b| b == 0x22));
    assert_eq!(
        *mem.log.borrow(),
        vec![("r", 0, 512), ("w", 0, 512), ("r", 0, 512), ("w", 0, 512)]
    );
}

#[test]
fn aligned_non_overlapping_writes_run_concurrently() {
    let (bs, mem) = open_mem("size=4096,align=512,gate=on");
    let ctx = AioContext::current();
    let (bs1, bs2) = (bs.clone(), bs.clone());
    let a = ctx.spawn(async move {
        bs1.co_pwritev(0, &IoVector::alloc(512), RequestFlags::empty())
            .await
    });
    let b = ctx.spawn(async move {
        bs2.co_pwritev(1024, &IoVector::alloc(512), RequestFlags::empty())
            .await
    });
    let m = mem.clone();
    ctx.run_until(async move {
        while m.log.borrow().len() < 2 {
            futures_lite::future::yield_now().await;
        }
        // Both reached the driver while the gate held the first.
        m.open_gate();
        a.await.unwrap();
        b.await.unwrap();
    });
}

#[test]
fn requests_are_split_at_max_transfer() {
    let (bs, mem) = open_mem("size=65536,max-transfer=4096");
    let buf = IoVector::alloc(10000);
    AioContext::current()
        .run_until(async move { bs.co_preadv(100, &buf, RequestFlags::empty()).await })
        .unwrap();
    assert_eq!(
        *mem.log.borrow(),
        vec![("r", 100, 4096), ("r", 4196, 4096), ("r", 8292, 1808)]
    );
}

#[test]
fn reads_past_the_end_of_a_node_return_zeroes() {
    let (bs, mem) = open_mem("size=4096");
    let buf = IoVector::from_slice(&[0xff; 2048]);
    let b = buf.clone();
    AioContext::current()
        .run_until(async move { bs.co_preadv(3072, &b, RequestFlags::empty()).await })
        .unwrap();
    let got = buf.to_vec();
    assert_eq!(
        got[..1024],
        (3072..4096).map(initial).collect::<Vec<_>>()[..]
    );
    assert!(got[1024..].iter().all(|&b| b == 0));
    assert_eq!(*mem.log.borrow(), vec![("r", 3072, 1024)]);
}

#[test]
fn write_zeroes_use_the_driver_or_fall_back_to_a_zero_buffer() {
    let (bs, mem) = open_mem("size=8192,zeroes=on");
    AioContext::current()
        .run_until(async move { bs.co_pwrite_zeroes(1024, 2048, RequestFlags::empty()).await })
        .unwrap();
    assert_eq!(*mem.log.borrow(), vec![("z", 1024, 2048)]);
    assert!(mem.data.borrow()[1024..3072].iter().all(|&b| b == 0));

    let (bs, mem) = open_mem("size=8192");
    AioContext::current()
        .run_until(async move { bs.co_pwrite_zeroes(1024, 2048, RequestFlags::empty()).await })
        .unwrap();
    assert_eq!(*mem.log.borrow(), vec![("w", 1024, 2048)]);
    assert!(mem.data.borrow()[1024..3072].iter().all(|&b| b == 0));
}

#[test]
fn writes_past_the_end_grow_the_cached_length() {
    let (bs, _mem) = open_mem("size=4096");
    let b = bs.clone();
    AioContext::current()
        .run_until(async move {
            b.co_pwritev(4096, &IoVector::alloc(512), RequestFlags::empty())
                .await
        })
        .unwrap();
    assert_eq!(bs.getlength(), 4608);
}

#[test]
fn read_only_nodes_refuse_writes() {
    block::registry::register(&common::MEM);
    let mut options =
        block::Options::parse_keyval("driver=test-mem,size=4096,read-only=on", None).unwrap();
    options.set("driver", "test-mem");
    let ctx = AioContext::current();
    let bs = ctx
        .run_until(block::bdrv_open(None, options, Default::default()))
        .unwrap();
    let err = ctx
        .run_until(async move {
            bs.co_pwritev(0, &IoVector::alloc(512), RequestFlags::empty())
                .await
        })
        .unwrap_err();
    assert_eq!(err.errno(), libc::EPERM);
}

#[test]
fn unknown_options_are_refused_with_qemus_message() {
    block::registry::register(&common::MEM);
    let options = block::Options::parse_keyval("driver=test-mem,size=4096,bogus=1", None).unwrap();
    let err = AioContext::current()
        .run_until(block::bdrv_open(None, options, Default::default()))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Block protocol 'test-mem' doesn't support the option 'bogus'"
    );
    let _ = Rc::new(());
}

/// A small deterministic generator (xorshift64*), so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn many_concurrent_unaligned_writes_to_shared_sectors_lose_nothing() {
    for seed in 1..=20u64 {
        let (bs, mem) = open_mem("size=65536,align=512");
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // Cut [0, 64 KiB) into random pieces; each piece is one write with its own byte value.
        let mut pieces = Vec::new();
        let mut pos = 0u64;
        while pos < 65536 {
            let len = (1 + rng.below(1500)).min(65536 - pos);
            pieces.push((pos, len, (pieces.len() % 255 + 1) as u8));
            pos += len;
        }
        let ctx = AioContext::current();
        let tasks: Vec<_> = pieces
            .iter()
            .map(|&(off, len, byte)| {
                let bs = bs.clone();
                ctx.spawn(async move {
                    bs.co_pwritev(
                        off,
                        &IoVector::from_slice(&vec![byte; len as usize]),
                        RequestFlags::empty(),
                    )
                    .await
                })
            })
            .collect();
        ctx.run_until(async move {
            for t in tasks {
                t.await.unwrap();
            }
        });
        let data = mem.data.borrow();
        for &(off, len, byte) in &pieces {
            let got = &data[off as usize..(off + len) as usize];
            assert!(
                got.iter().all(|&b| b == byte),
                "seed {seed}: write at {off}+{len} lost"
            );
        }
    }
}
