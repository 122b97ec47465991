//! virtio-blk requests of every type through the legacy transport, with no vCPU: descriptor
//! chains built in guest memory, a kick, the main loop running the requests on a raw image.

mod virtio_rig;

use rqemu::devices::virtio::block::VirtioBlkConf;
use rqemu::devices::virtio::pci::VirtioPciConf;
use rqemu::devices::virtio::request::*;
use rqemu::devices::virtio::testdriver::Buf;
use rqemu::devices::virtio::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_rig::{Rig, HDRS, STATUS};

const MIB: u64 = 1 << 20;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

#[test]
fn write_then_read_back_through_guest_memory() {
    let mut rig = Rig::new(MIB, u32::MAX);
    let data = pattern(3, 4096);
    rig.fill(0, &data);
    let head = rig.request(0, VIRTIO_BLK_T_OUT, 8, 4096, false);
    assert_eq!(rig.run(1), vec![(u32::from(head), 1)]);
    assert_eq!(rig.status(0), VIRTIO_BLK_S_OK);
    assert_eq!(rig.image().read(8 * 512, 4096), data);

    let head = rig.request(1, VIRTIO_BLK_T_IN, 8, 4096, true);
    assert_eq!(rig.run(1), vec![(u32::from(head), 4097)]);
    assert_eq!(rig.status(1), VIRTIO_BLK_S_OK);
    assert_eq!(rig.read_data(1, 4096), data);
}

#[test]
fn data_may_span_descriptors_and_share_one_with_the_status() {
    let mut rig = Rig::new(MIB, u32::MAX);
    rig.fill(0, &pattern(9, 1024));
    let hdr = rig.header(0, VIRTIO_BLK_T_OUT, 2);
    let d = Rig::data(0);
    // Data split 100 + 924 bytes over two descriptors.
    rig.drv.add_chain(&[
        Buf::r(hdr, 16),
        Buf::r(d, 100),
        Buf::r(d + 100, 924),
        Buf::w(STATUS, 1),
    ]);
    rig.run(1);
    assert_eq!(rig.status(0), VIRTIO_BLK_S_OK);
    assert_eq!(rig.image().read(1024, 1024), pattern(9, 1024));
    // Read 512 bytes whose writable buffer also holds the status byte at its end.
    let hdr = rig.header(1, VIRTIO_BLK_T_IN, 2);
    let d1 = Rig::data(1);
    rig.drv.add_chain(&[Buf::r(hdr, 16), Buf::w(d1, 513)]);
    assert_eq!(rig.run(1)[0].1, 513);
    assert_eq!(rig.read_data(1, 513)[..512], pattern(9, 1024)[..512]);
    assert_eq!(rig.read_data(1, 513)[512], VIRTIO_BLK_S_OK);
}

#[test]
fn flush_get_id_and_unsupported_types() {
    let conf = VirtioBlkConf {
        serial: "rqemu-serial-0123456789".into(),
        ..VirtioBlkConf::default()
    };
    let mut rig = Rig::with(conf, VirtioPciConf::default(), MIB, Some(u32::MAX));
    rig.request(0, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    rig.request(1, VIRTIO_BLK_T_GET_ID, 0, 20, true);
    rig.request(2, 2, 0, 0, false); // SCSI_CMD
    rig.request(3, 0x77, 0, 0, false);
    let used = rig.run(4);
    assert_eq!(used.len(), 4);
    assert_eq!(rig.status(0), VIRTIO_BLK_S_OK);
    assert_eq!(rig.status(1), VIRTIO_BLK_S_OK);
    assert_eq!(&rig.read_data(1, 20), b"rqemu-serial-0123456");
    assert_eq!(rig.status(2), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(rig.status(3), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn out_of_range_and_misaligned_requests_get_ioerr() {
    let mut rig = Rig::new(MIB, u32::MAX);
    rig.request(0, VIRTIO_BLK_T_IN, 2048, 512, true); // first sector past the end
    rig.request(1, VIRTIO_BLK_T_OUT, 2047, 1024, false); // crosses the end
    rig.request(2, VIRTIO_BLK_T_IN, 0, 100, true); // not a multiple of 512
    rig.request(3, VIRTIO_BLK_T_IN, 2047, 512, true); // last sector: fine
    rig.run(4);
    assert_eq!(rig.status(0), VIRTIO_BLK_S_IOERR);
    assert_eq!(rig.status(1), VIRTIO_BLK_S_IOERR);
    assert_eq!(rig.status(2), VIRTIO_BLK_S_IOERR);
    assert_eq!(rig.status(3), VIRTIO_BLK_S_OK);
    assert!(!rig.broken());
}

fn dwz(rig: &mut Rig, i: u64, t: u32, sector: u64, num: u32, flags: u32) {
    let hdr = rig.header(i, t, 0);
    let seg = rig.segment(i, sector, num, flags);
    rig.drv
        .add_chain(&[Buf::r(hdr, 16), Buf::r(seg, 16), Buf::w(STATUS + i, 1)]);
}

#[test]
fn discard_and_write_zeroes() {
    let mut rig = Rig::new(MIB, u32::MAX);
    rig.fill(0, &[0xaa; 8192]);
    rig.request(0, VIRTIO_BLK_T_OUT, 0, 8192, false);
    rig.run(1);
    dwz(&mut rig, 1, VIRTIO_BLK_T_WRITE_ZEROES, 0, 4, 0);
    dwz(
        &mut rig,
        2,
        VIRTIO_BLK_T_WRITE_ZEROES,
        4,
        4,
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    );
    dwz(&mut rig, 3, VIRTIO_BLK_T_DISCARD, 8, 8, 0);
    dwz(
        &mut rig,
        4,
        VIRTIO_BLK_T_DISCARD,
        8,
        8,
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    );
    dwz(&mut rig, 5, VIRTIO_BLK_T_WRITE_ZEROES, 0, 1, 0x10);
    dwz(&mut rig, 6, VIRTIO_BLK_T_WRITE_ZEROES, 2040, 16, 0);
    rig.run(6);
    assert_eq!(rig.status(1), VIRTIO_BLK_S_OK);
    assert_eq!(rig.status(2), VIRTIO_BLK_S_OK);
    assert_eq!(rig.status(3), VIRTIO_BLK_S_OK);
    assert_eq!(rig.status(4), VIRTIO_BLK_S_UNSUPP, "discard with UNMAP");
    assert_eq!(rig.status(5), VIRTIO_BLK_S_UNSUPP, "unknown flag");
    assert_eq!(rig.status(6), VIRTIO_BLK_S_IOERR, "past the end");
    assert_eq!(rig.image().read(0, 4096), vec![0; 4096]);
    // Two segments are unsupported (QEMU accepts only one).
    let hdr = rig.header(7, VIRTIO_BLK_T_DISCARD, 0);
    let seg = rig.segment(7, 0, 1, 0);
    rig.drv.add_chain(&[
        Buf::r(hdr, 16),
        Buf::r(seg, 16),
        Buf::r(seg, 16),
        Buf::w(STATUS + 7, 1),
    ]);
    rig.run(1);
    assert_eq!(rig.status(7), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn discard_disabled_is_unsupported() {
    let conf = VirtioBlkConf {
        discard: false,
        ..VirtioBlkConf::default()
    };
    let mut rig = Rig::with(conf, VirtioPciConf::default(), MIB, Some(u32::MAX));
    dwz(&mut rig, 0, VIRTIO_BLK_T_DISCARD, 0, 1, 0);
    rig.run(1);
    assert_eq!(rig.status(0), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn many_requests_in_flight_at_once() {
    let mut rig = Rig::new(4 * MIB, u32::MAX);
    for i in 0..64u64 {
        rig.fill(i, &pattern(i as u8, 4096));
        rig.request(i, VIRTIO_BLK_T_OUT, i * 8, 4096, false);
    }
    rig.drv.kick(&mut rig.dev);
    // One pass over the ring starts every request before any completes.
    rig.handler.handle_output(0);
    assert_eq!(rig.handler.in_flight(), 64);
    assert_eq!(rig.run(64).len(), 64);
    for i in 0..64u64 {
        assert_eq!(rig.status(i), VIRTIO_BLK_S_OK);
        assert_eq!(rig.image().read(i * 4096, 4096), pattern(i as u8, 4096));
    }
    for i in 0..64u64 {
        rig.request(i, VIRTIO_BLK_T_IN, (63 - i) * 8, 4096, true);
    }
    rig.run(64);
    for i in 0..64u64 {
        assert_eq!(rig.read_data(i, 4096), pattern((63 - i) as u8, 4096));
    }
}

#[test]
fn indirect_tables_carry_whole_requests() {
    let mut rig = Rig::new(MIB, 1 << VIRTIO_RING_F_INDIRECT_DESC);
    rig.fill(0, &pattern(5, 512));
    let hdr = rig.header(0, VIRTIO_BLK_T_OUT, 1);
    let table = HDRS + 0x8000;
    rig.drv.write_desc_at(table, hdr, 16, 1, 1);
    rig.drv.write_desc_at(table + 16, Rig::data(0), 512, 1, 2);
    rig.drv.write_desc_at(table + 32, STATUS, 1, 2, 0);
    rig.drv.write_desc(0, table, 48, 4, 0);
    rig.drv.publish(0);
    rig.run(1);
    assert_eq!(rig.status(0), VIRTIO_BLK_S_OK);
    assert_eq!(rig.image().read(512, 512), pattern(5, 512));
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut rig = Rig::new(MIB, 1 << VIRTIO_RING_F_EVENT_IDX);
    rig.request(0, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    rig.run(1);
    let first = rig.irq.raised.load(SeqCst);
    assert_eq!(first, 1, "the first used element always interrupts");
    assert_eq!(
        rig.drv.avail_event(),
        1,
        "avail_event follows the device's position"
    );
    rig.dev.bar_read(0, 0x13, &mut [0]); // ISR read drops the line
                                         // The driver wants an interrupt only once the used index passes 3 (4 elements).
    rig.drv.set_used_event(3);
    for i in 0..2 {
        rig.request(i, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    }
    rig.run(2);
    assert_eq!(
        rig.irq.raised.load(SeqCst),
        first,
        "used idx 3 does not cross used_event 3"
    );
    rig.request(2, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    rig.run(1);
    assert_eq!(rig.irq.raised.load(SeqCst), first + 1);
}

#[test]
fn no_interrupt_flag_is_honoured_without_event_idx() {
    let mut rig = Rig::new(MIB, 0);
    rig.mem_write(virtio_rig::RING + 16 * 256, &[1, 0]); // avail flags = NO_INTERRUPT
    rig.request(0, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    rig.run(1);
    assert_eq!(rig.irq.raised.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn writes_to_a_read_only_image_fail_with_ioerr() {
    use block::{AioContext, BlockBackend, OpenFlags, Options};
    let img = virtio_rig::TempImage::new(MIB);
    formats::register_all();
    let mut opts = Options::new();
    opts.set("driver", "raw");
    let flags = OpenFlags {
        read_only: true,
        ..OpenFlags::default()
    };
    let blk = AioContext::current()
        .run_until(BlockBackend::open(
            Some(img.0.to_str().unwrap()),
            opts,
            flags,
        ))
        .unwrap();
    assert!(blk.is_read_only());
    let mut rig = Rig::with_backend(blk, img);
    let features = rig.features();
    assert_ne!(
        features & (1 << rqemu::devices::virtio::block::VIRTIO_BLK_F_RO),
        0
    );
    rig.request(0, VIRTIO_BLK_T_OUT, 0, 512, false);
    rig.run(1);
    assert_eq!(rig.status(0), VIRTIO_BLK_S_IOERR);
}

#[test]
fn completions_after_a_reset_leave_the_new_ring_alone() {
    use rqemu::devices::virtio::testdriver::TestDriver;
    let mut rig = Rig::new(MIB, u32::MAX);
    rig.request(0, VIRTIO_BLK_T_IN, 0, 4096, true);
    rig.drv.kick(&mut rig.dev);
    rig.handler.handle_output(0);
    assert_eq!(rig.handler.in_flight(), 1);
    // The driver resets and sets up a fresh ring before the request completes.
    rig.drv = TestDriver::new(rig.mem.clone(), virtio_rig::RING, 256);
    rig.drv.legacy_init(&mut rig.dev, u32::MAX);
    rig.drain();
    assert_eq!(
        rig.drv.pop_used(),
        None,
        "stale completion reached the new ring"
    );
    assert_eq!(
        rig.status(0),
        0xff,
        "stale completion wrote its status byte"
    );
    // The new ring works.
    rig.request(1, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    assert_eq!(rig.run(1).len(), 1);
    assert_eq!(rig.status(1), VIRTIO_BLK_S_OK);
}
