//! Hostile descriptor chains: each must mark the device broken (QEMU's virtio_error) without a
//! panic, a hang, or an access outside guest RAM, and a reset must bring the device back.

mod virtio_rig;

use rqemu::devices::virtio::queue::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use rqemu::devices::virtio::request::*;
use rqemu::devices::virtio::testdriver::Buf;
use rqemu::devices::virtio::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_rig::{Rig, HDRS, RAM, STATUS};

const NEXT: u16 = VRING_DESC_F_NEXT;
const WRITE: u16 = VRING_DESC_F_WRITE;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT;

fn rig() -> Rig {
    Rig::new(1 << 20, u32::MAX)
}

/// Runs what was posted, checks the device gave up on it, then resets and checks that a
/// valid request works again.
fn expect_broken(mut rig: Rig) {
    let used = rig.run_idle();
    assert!(used.is_empty(), "a malformed chain completed: {used:?}");
    assert!(rig.broken(), "device not marked broken");
    assert_eq!(rig.handler.in_flight(), 0);
    // Legacy drivers have no NEEDS_RESET bit; QEMU leaves the status alone too.
    assert_eq!(rig.device_status() & 0x40, 0);
    // More kicks are ignored while broken.
    rig.request(5, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    assert!(rig.run_idle().is_empty());
    // Reset, re-initialise on a fresh ring, and serve a request.
    rig.drv =
        rqemu::devices::virtio::testdriver::TestDriver::new(rig.mem.clone(), virtio_rig::RING, 256);
    rig.drv.legacy_init(&mut rig.dev, u32::MAX);
    assert!(!rig.broken());
    rig.request(6, VIRTIO_BLK_T_IN, 0, 512, true);
    assert_eq!(rig.run(1).len(), 1);
    assert_eq!(rig.status(6), VIRTIO_BLK_S_OK);
}

fn post_raw(rig: &mut Rig, descs: &[(u64, u32, u16, u16)]) {
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        rig.drv.write_desc(i as u16, addr, len, flags, next);
    }
    rig.drv.publish(0);
}

fn hdr(rig: &Rig) -> u64 {
    rig.header(0, VIRTIO_BLK_T_IN, 0)
}

#[test]
fn data_buffer_beyond_ram() {
    let mut rig = rig();
    let h = hdr(&rig);
    rig.drv.add_chain(&[
        Buf::r(h, 16),
        Buf::w(RAM as u64 - 100, 4096),
        Buf::w(STATUS, 1),
    ]);
    expect_broken(rig);
}

#[test]
fn buffer_address_that_wraps_around() {
    let mut rig = rig();
    let h = hdr(&rig);
    rig.drv.add_chain(&[
        Buf::r(h, 16),
        Buf::w(u64::MAX - 10, 4096),
        Buf::w(STATUS, 1),
    ]);
    expect_broken(rig);
}

#[test]
fn descriptor_loop() {
    let mut rig = rig();
    let h = hdr(&rig);
    post_raw(&mut rig, &[(h, 16, NEXT, 1), (STATUS, 1, WRITE | NEXT, 0)]);
    expect_broken(rig);
}

#[test]
fn chain_longer_than_the_queue() {
    let mut rig = rig();
    let h = hdr(&rig);
    for i in 0..256u16 {
        rig.drv.write_desc(i, h, 16, NEXT, (i + 1) % 256);
    }
    rig.drv.publish(0);
    expect_broken(rig);
}

#[test]
fn missing_status_descriptor() {
    let mut rig = rig();
    let h = hdr(&rig);
    rig.drv
        .add_chain(&[Buf::r(h, 16), Buf::r(Rig::data(0), 512)]);
    expect_broken(rig);
}

#[test]
fn status_descriptor_not_writable() {
    let mut rig = rig();
    let h = hdr(&rig);
    rig.drv
        .add_chain(&[Buf::r(h, 16), Buf::w(Rig::data(0), 512), Buf::r(STATUS, 1)]);
    expect_broken(rig);
}

#[test]
fn missing_or_short_header() {
    let mut rig = rig();
    rig.drv.add_chain(&[Buf::w(STATUS, 1)]);
    expect_broken(rig);
    let mut rig = self::rig();
    let h = hdr(&rig);
    rig.drv.add_chain(&[Buf::r(h, 8), Buf::w(STATUS, 1)]);
    expect_broken(rig);
}

#[test]
fn zero_sized_descriptor() {
    let mut rig = rig();
    let h = hdr(&rig);
    rig.drv
        .add_chain(&[Buf::r(h, 16), Buf::w(Rig::data(0), 0), Buf::w(STATUS, 1)]);
    expect_broken(rig);
}

#[test]
fn next_index_outside_the_table() {
    let mut rig = rig();
    let h = hdr(&rig);
    post_raw(&mut rig, &[(h, 16, NEXT, 256)]);
    expect_broken(rig);
}

#[test]
fn head_index_outside_the_table() {
    let mut rig = rig();
    hdr(&rig);
    rig.drv.publish(300);
    expect_broken(rig);
}

#[test]
fn available_index_jumps_past_the_queue_size() {
    let mut rig = rig();
    rig.drv.set_avail_idx(1000);
    expect_broken(rig);
}

#[test]
fn ring_outside_ram() {
    let mut rig = rig();
    // Point the queue at a page frame past the end of RAM.
    rig.dev
        .bar_write(0, 0x08, &((RAM as u32 >> 12) + 16).to_le_bytes());
    rig.drv.kick(&mut rig.dev);
    rig.handler.handle_output(0);
    assert!(rig.broken());
}

#[test]
fn discard_segment_too_short() {
    let mut rig = rig();
    let h = rig.header(0, VIRTIO_BLK_T_DISCARD, 0);
    rig.drv
        .add_chain(&[Buf::r(h, 16), Buf::r(HDRS + 16, 8), Buf::w(STATUS, 1)]);
    expect_broken(rig);
}

/// Posts descriptor 0 as an indirect descriptor over a table of `entries` at HDRS + 0x8000.
fn post_indirect(rig: &mut Rig, table_len: u32, flags: u16, entries: &[(u64, u32, u16, u16)]) {
    let table = HDRS + 0x8000;
    for (i, &(addr, len, f, next)) in entries.iter().enumerate() {
        rig.drv
            .write_desc_at(table + 16 * i as u64, addr, len, f, next);
    }
    rig.drv.write_desc(0, table, table_len, INDIRECT | flags, 1);
    rig.drv.publish(0);
}

fn good_entries(rig: &Rig) -> Vec<(u64, u32, u16, u16)> {
    vec![(hdr(rig), 16, NEXT, 1), (STATUS, 1, WRITE, 0)]
}

#[test]
fn indirect_table_of_bad_size() {
    for len in [0u32, 17, 16 * 2000] {
        let mut rig = rig();
        let e = good_entries(&rig);
        post_indirect(&mut rig, len, 0, &e);
        expect_broken(rig);
    }
}

#[test]
fn indirect_table_beyond_ram() {
    let mut rig = rig();
    rig.drv.write_desc(0, RAM as u64 - 16, 32, INDIRECT, 0);
    rig.drv.publish(0);
    expect_broken(rig);
}

#[test]
fn nested_indirect_and_indirect_with_next() {
    let mut rig = self::rig();
    let h = hdr(&rig);
    post_indirect(
        &mut rig,
        32,
        0,
        &[(h, 16, NEXT, 1), (HDRS + 0x9000, 32, INDIRECT, 0)],
    );
    expect_broken(rig);
    let mut rig = self::rig();
    let e = good_entries(&rig);
    post_indirect(&mut rig, 32, NEXT, &e);
    expect_broken(rig);
}

#[test]
fn indirect_table_with_a_loop_or_bad_next() {
    let mut rig = self::rig();
    let h = hdr(&rig);
    post_indirect(
        &mut rig,
        32,
        0,
        &[(h, 16, NEXT, 1), (STATUS, 1, WRITE | NEXT, 0)],
    );
    expect_broken(rig);
    let mut rig = self::rig();
    post_indirect(&mut rig, 32, 0, &[(h, 16, NEXT, 2), (STATUS, 1, WRITE, 0)]);
    expect_broken(rig);
}

#[test]
fn indirect_without_the_feature() {
    let mut rig = Rig::new(1 << 20, !(1 << VIRTIO_RING_F_INDIRECT_DESC));
    let e = good_entries(&rig);
    post_indirect(&mut rig, 32, 0, &e);
    let used = rig.run_idle();
    assert!(used.is_empty());
    assert!(rig.broken());
}

/// Random descriptor tables, heads and indices: whatever the guest writes, the device either
/// serves requests or declares itself broken; it never panics and never hangs.
#[test]
fn random_rings_never_panic() {
    use block::AioContext;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut rig = rig();
    let (mut broken, mut served) = (0, 0);
    for round in 0..300 {
        rig.drv = rqemu::devices::virtio::testdriver::TestDriver::new(
            rig.mem.clone(),
            virtio_rig::RING,
            256,
        );
        rig.drv.legacy_init(&mut rig.dev, rand(2) as u32 * u32::MAX);
        for i in 0..rand(4) {
            rig.request(
                i,
                rand(16) as u32,
                rand(2100),
                512 * rand(3) as u32,
                rand(2) == 0,
            );
        }
        // Half the rounds add garbage in descriptors 100..108.
        for _ in 0..rand(2) * (1 + rand(12)) {
            let addr = [
                HDRS + 32 * rand(8),
                STATUS + rand(8),
                Rig::data(rand(8)),
                RAM as u64 - rand(64),
                rand(u64::MAX),
            ];
            let len = [0, 1, 8, 16, 512, 4096, 1 << 20, u32::MAX][rand(8) as usize];
            let flags = rand(8) as u16;
            let next = 100 + if rand(4) == 0 { rand(300) } else { rand(8) } as u16;
            let i = 100 + rand(8) as u16;
            rig.drv
                .write_desc(i, addr[rand(5) as usize], len, flags, next);
            rig.drv
                .publish(if rand(8) == 0 { rand(400) as u16 } else { i });
        }
        if rand(16) == 0 {
            rig.drv.set_avail_idx(rand(65536) as u16);
        }
        rig.drv.kick(&mut rig.dev);
        rig.handler.handle_output(0);
        AioContext::current().run_until(async {
            while rig.handler.in_flight() > 0 {
                block::aio::co_sleep(std::time::Duration::from_micros(100)).await;
            }
        });
        if rig.broken() {
            broken += 1;
        } else {
            served += 1;
        }
        assert!(round < 300);
    }
    // Both outcomes must occur, or the generator is not exercising the device.
    assert!(broken > 0 && served > 0, "broken {broken} served {served}");
}
