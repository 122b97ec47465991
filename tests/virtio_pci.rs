//! The virtio-pci transport: IDs and BARs as Linux and SeaBIOS expect them, INTx with the
//! read-to-clear ISR, the modern common configuration, NEEDS_RESET, ioeventfd addresses.

mod virtio_rig;

use std::sync::atomic::Ordering::SeqCst;

use rqemu::devices::virtio::block::VirtioBlkConf;
use rqemu::devices::virtio::pci::{IoEventAddress, VirtioPciConf};
use rqemu::devices::virtio::request::*;
use rqemu::devices::virtio::testdriver::Buf;
use virtio_rig::{Rig, RING};

const MIB: u64 = 1 << 20;

fn cfg(rig: &mut Rig, off: usize, len: usize) -> u32 {
    let mut b = [0u8; 4];
    rig.dev.config_read(off, &mut b[..len]);
    u32::from_le_bytes(b)
}

fn cfg_write(rig: &mut Rig, off: usize, v: u32, len: usize) {
    rig.dev.config_write(off, &v.to_le_bytes()[..len]);
}

fn legacy_only() -> VirtioPciConf {
    VirtioPciConf {
        disable_modern: true,
        ..VirtioPciConf::default()
    }
}

fn modern_only() -> VirtioPciConf {
    VirtioPciConf {
        disable_legacy: true,
        ..VirtioPciConf::default()
    }
}

#[test]
fn legacy_ids_and_io_bar() {
    let mut rig = Rig::with(VirtioBlkConf::default(), legacy_only(), MIB, None);
    assert_eq!(cfg(&mut rig, 0, 4), 0x1001_1af4);
    assert_eq!(
        cfg(&mut rig, 8, 4),
        0x0100_0000,
        "class 01:00:00, revision 0"
    );
    assert_eq!(cfg(&mut rig, 0x2c, 4), 0x0002_1af4);
    assert_eq!(cfg(&mut rig, 0x3d, 1), 1, "INTA#");
    assert_eq!(cfg(&mut rig, 6, 1) & 0x10, 0, "no capabilities");
    cfg_write(&mut rig, 0x10, u32::MAX, 4);
    assert_eq!(cfg(&mut rig, 0x10, 4), 0xffff_ff81, "128-byte I/O BAR");
    cfg_write(&mut rig, 0x20, u32::MAX, 4);
    assert_eq!(cfg(&mut rig, 0x20, 4), 0, "no BAR4");
    cfg_write(&mut rig, 0x10, 0xc0c1, 4); // low bits below the size are dropped
    assert_eq!(rig.dev.bar_address(0), None, "I/O decode off");
    cfg_write(&mut rig, 4, 1, 2);
    assert_eq!(rig.dev.bar_address(0), Some(0xc080));
    let ev = rig.dev.ioevents();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].addr, IoEventAddress::Pio(0xc090));
    assert_eq!(ev[0].datamatch, Some(0));
}

#[test]
fn transitional_and_modern_only_ids() {
    let mut rig = Rig::with(
        VirtioBlkConf::default(),
        VirtioPciConf::default(),
        MIB,
        None,
    );
    assert_eq!(cfg(&mut rig, 0, 4), 0x1001_1af4);
    assert_ne!(cfg(&mut rig, 6, 1) & 0x10, 0);
    cfg_write(&mut rig, 0x20, u32::MAX, 4);
    cfg_write(&mut rig, 0x24, u32::MAX, 4);
    assert_eq!(
        cfg(&mut rig, 0x20, 4),
        0xffff_c00c,
        "16 KiB 64-bit prefetchable BAR4"
    );
    assert_eq!(cfg(&mut rig, 0x24, 4), u32::MAX);
    // Walk the capability list: common, ISR, device, notify, PCI_CFG.
    let mut types = Vec::new();
    let mut at = cfg(&mut rig, 0x34, 1) as usize;
    while at != 0 {
        assert_eq!(cfg(&mut rig, at, 1), 0x09);
        types.push(cfg(&mut rig, at + 3, 1));
        at = cfg(&mut rig, at + 1, 1) as usize;
    }
    assert_eq!(types, vec![1, 3, 4, 2, 5]);

    let mut rig = Rig::with(VirtioBlkConf::default(), modern_only(), MIB, None);
    assert_eq!(cfg(&mut rig, 0, 4), 0x1042_1af4);
    assert_eq!(cfg(&mut rig, 8, 1), 1, "revision 1");
    cfg_write(&mut rig, 0x10, u32::MAX, 4);
    assert_eq!(cfg(&mut rig, 0x10, 4), 0, "no legacy BAR0");
}

#[test]
fn neither_legacy_nor_modern_is_refused() {
    use rqemu::devices::virtio::block::VirtioBlk;
    use rqemu::devices::virtio::pci::VirtioPciDevice;
    use rqemu::devices::virtio::testdriver::IrqCounter;
    let conf = VirtioPciConf {
        disable_legacy: true,
        disable_modern: true,
    };
    let dev = VirtioBlk::new(VirtioBlkConf::default(), 8, false);
    let irq = std::sync::Arc::new(IrqCounter::default());
    assert!(VirtioPciDevice::new(Box::new(dev), conf, irq).is_err());
}

#[test]
fn isr_read_clears_and_drops_intx() {
    let mut rig = Rig::new(MIB, u32::MAX);
    rig.request(0, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    rig.run(1);
    assert!(rig.irq.level());
    assert_ne!(cfg(&mut rig, 6, 1) & 0x08, 0, "interrupt status bit");
    cfg_write(&mut rig, 4, 0x400, 2); // INTx disable masks the line
    assert!(!rig.irq.level());
    cfg_write(&mut rig, 4, 0, 2);
    assert!(rig.irq.level());
    let mut isr = [0u8];
    rig.dev.bar_read(0, 0x13, &mut isr);
    assert_eq!(isr[0], 1);
    assert!(!rig.irq.level());
    rig.dev.bar_read(0, 0x13, &mut isr);
    assert_eq!(isr[0], 0);
}

#[test]
fn legacy_config_space_and_write_cache_switch() {
    let mut rig = Rig::new(MIB, u32::MAX);
    let mut cap = [0u8; 8];
    rig.dev.bar_read(0, 0x14, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 2048, "capacity in sectors");
    let mut b = [0u8; 4];
    rig.dev.bar_read(0, 0x14 + 12, &mut b);
    assert_eq!(u32::from_le_bytes(b), 254, "seg_max = queue size - 2");
    rig.dev.bar_read(0, 0x14 + 20, &mut b);
    assert_eq!(u32::from_le_bytes(b), 512, "blk_size");
    rig.dev.bar_write(0, 0x14 + 32, &[0]);
    rig.dev.bar_read(0, 0x14 + 32, &mut b[..1]);
    assert_eq!(b[0], 0, "writeback switched off");
    rig.request(0, VIRTIO_BLK_T_OUT, 0, 512, false);
    rig.run(1);
    assert!(!rig.blk.write_cache(), "writethrough reached the backend");
}

/// BAR4 at 0xfe000000, memory decode on.
fn map_bar4(rig: &mut Rig) {
    cfg_write(rig, 0x20, 0xfe00_0000, 4);
    cfg_write(rig, 0x24, 0, 4);
    cfg_write(rig, 4, 2, 2);
}

fn common_write(rig: &mut Rig, off: u64, v: u64, len: usize) {
    rig.dev.bar_write(4, off, &v.to_le_bytes()[..len]);
}

fn common_read(rig: &mut Rig, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    rig.dev.bar_read(4, off, &mut b[..len]);
    u64::from_le_bytes(b)
}

/// The virtio 1.0 initialisation sequence through the common configuration.
fn modern_init(rig: &mut Rig) {
    modern_init_at(rig, RING, RING + 16 * 256, RING + 8192);
}

/// The same with the rings where the caller put them.
fn modern_init_at(rig: &mut Rig, desc: u64, avail: u64, used: u64) {
    common_write(rig, 20, 0, 1);
    common_write(rig, 20, 3, 1);
    common_write(rig, 0, 1, 4);
    assert_eq!(common_read(rig, 4, 4) & 1, 1, "VERSION_1 offered");
    common_write(rig, 8, 0, 4);
    let low = common_read_sel(rig, 0);
    common_write(rig, 12, low, 4);
    common_write(rig, 8, 1, 4);
    common_write(rig, 12, 1, 4);
    common_write(rig, 20, 0xb, 1);
    assert_eq!(common_read(rig, 20, 1), 0xb, "FEATURES_OK accepted");
    assert_eq!(common_read(rig, 18, 2), 1, "one queue");
    common_write(rig, 22, 0, 2);
    common_write(rig, 24, 256, 2);
    common_write(rig, 32, desc, 4);
    common_write(rig, 40, avail, 4);
    common_write(rig, 48, used, 4);
    common_write(rig, 28, 1, 2);
    common_write(rig, 20, 0xf, 1);
}

fn common_read_sel(rig: &mut Rig, sel: u64) -> u64 {
    common_write(rig, 0, sel, 4);
    common_read(rig, 4, 4)
}

fn modern_kick(rig: &mut Rig) {
    common_write(rig, 0x3000, 0, 2);
}

#[test]
fn modern_transport_serves_requests_and_reports_needs_reset() {
    let mut rig = Rig::with(VirtioBlkConf::default(), modern_only(), MIB, None);
    map_bar4(&mut rig);
    modern_init(&mut rig);
    assert_eq!(
        rig.dev.ioevents()[0].addr,
        IoEventAddress::Mmio(0xfe00_3000),
        "queue 0 doorbell"
    );
    rig.fill(0, &[0x5a; 512]);
    rig.request(0, VIRTIO_BLK_T_OUT, 3, 512, false);
    modern_kick(&mut rig);
    rig.handler.handle_output(0);
    rig.run(1);
    assert_eq!(rig.status(0), VIRTIO_BLK_S_OK);
    assert_eq!(rig.image().read(3 * 512, 512), vec![0x5a; 512]);
    assert_eq!(common_read(&mut rig, 0x1000, 1), 1, "ISR: used buffer");

    // A chain without a status byte: the device is broken and says so.
    let h = rig.header(1, VIRTIO_BLK_T_IN, 0);
    rig.drv.add_chain(&[Buf::r(h, 16)]);
    modern_kick(&mut rig);
    rig.handler.handle_output(0);
    assert_ne!(common_read(&mut rig, 20, 1) & 0x40, 0, "NEEDS_RESET");
    assert_eq!(
        common_read(&mut rig, 0x1000, 1),
        2,
        "ISR: configuration change"
    );
    assert!(rig.irq.raised.load(SeqCst) >= 2);
    // The driver cannot clear NEEDS_RESET except by reset.
    common_write(&mut rig, 20, 0xf, 1);
    assert_ne!(common_read(&mut rig, 20, 1) & 0x40, 0);
    common_write(&mut rig, 20, 0, 1);
    assert_eq!(common_read(&mut rig, 20, 1), 0);
    assert!(!rig.broken());
}

#[test]
fn features_we_do_not_offer_are_refused() {
    let mut rig = Rig::with(VirtioBlkConf::default(), modern_only(), MIB, None);
    map_bar4(&mut rig);
    common_write(&mut rig, 20, 3, 1);
    common_write(&mut rig, 8, 1, 4);
    common_write(&mut rig, 12, 1 | 1 << 30, 4); // VERSION_1 + an unknown bit 62
    common_write(&mut rig, 20, 0xb, 1);
    assert_eq!(common_read(&mut rig, 20, 1) & 8, 0, "FEATURES_OK not set");
}

#[test]
fn pci_cfg_capability_reaches_the_bar() {
    let mut rig = Rig::with(VirtioBlkConf::default(), modern_only(), MIB, None);
    // Find the PCI_CFG capability, aim it at the device configuration (capacity low word).
    let mut at = cfg(&mut rig, 0x34, 1) as usize;
    while cfg(&mut rig, at + 3, 1) != 5 {
        at = cfg(&mut rig, at + 1, 1) as usize;
    }
    cfg_write(&mut rig, at + 4, 4, 1);
    cfg_write(&mut rig, at + 8, 0x2000, 4);
    cfg_write(&mut rig, at + 12, 4, 4);
    assert_eq!(cfg(&mut rig, at + 16, 4), 2048);
}

#[test]
fn legacy_pfn_zero_resets_the_device() {
    let mut rig = Rig::new(MIB, u32::MAX);
    assert_eq!(rig.device_status(), 7);
    rig.dev.bar_write(0, 0x08, &0u32.to_le_bytes());
    assert_eq!(rig.device_status(), 0);
}

#[test]
fn the_transport_can_move_to_a_vcpu_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<rqemu::devices::virtio::pci::VirtioPciDevice>();
    assert_send::<rqemu::devices::virtio::block::VirtioBlk>();
    fn assert_sync<T: Sync + Send>() {}
    assert_sync::<rqemu::devices::virtio::SharedCore>();
}

#[test]
fn odd_access_sizes_and_offsets_are_harmless() {
    let mut rig = Rig::with(
        VirtioBlkConf::default(),
        VirtioPciConf::default(),
        MIB,
        None,
    );
    map_bar4(&mut rig);
    let mut wide = [0xaau8; 16];
    for bar in [0, 1, 4, 5] {
        for off in [
            0u64,
            3,
            0x13,
            0x14,
            0x7f,
            0x1000,
            0x2fff,
            0x3000,
            0x3ffe,
            0x4000,
            u64::MAX,
        ] {
            rig.dev.bar_read(bar, off, &mut wide);
            rig.dev.bar_read(bar, off, &mut []);
            rig.dev.bar_write(bar, off, &[0xff; 3]);
        }
    }
    for off in [0usize, 0x3f, 0x94, 0xfe, 0xff, 0x100, usize::MAX - 1] {
        let mut b = [0u8; 4];
        rig.dev.config_read(off, &mut b);
    }
    // Absurd queue selects and sizes only fail when the queue is used.
    common_write(&mut rig, 22, 0xffff, 2);
    assert_eq!(common_read(&mut rig, 24, 2), 0);
    common_write(&mut rig, 22, 0, 2);
    common_write(&mut rig, 24, 3, 2);
    common_write(&mut rig, 20, 0xf, 1);
    common_write(&mut rig, 28, 1, 2);
    common_write(&mut rig, 0x3000, 0, 2);
    rig.handler.handle_output(0);
    assert!(rig.broken(), "queue size 3 is refused");
}

#[test]
fn queue_reconfigured_under_a_request_in_flight() {
    let mut rig = Rig::with(VirtioBlkConf::default(), modern_only(), MIB, None);
    map_bar4(&mut rig);
    modern_init(&mut rig);
    rig.request(0, VIRTIO_BLK_T_IN, 0, 4096, true);
    modern_kick(&mut rig);
    rig.handler.handle_output(0);
    assert_eq!(rig.handler.in_flight(), 1);
    common_write(&mut rig, 24, 0, 2); // queue size 0 while the read runs
    rig.drain();
    assert!(rig.broken(), "completion into a size-0 queue is refused");
    assert_ne!(common_read(&mut rig, 20, 1) & 0x40, 0);
}

#[test]
fn misaligned_rings_are_served_without_the_ring_cache() {
    use rqemu::devices::virtio::testdriver::TestDriver;
    let mut rig = Rig::with(VirtioBlkConf::default(), modern_only(), MIB, None);
    map_bar4(&mut rig);
    // Available ring at an odd address, used ring 2 bytes off its 4-byte alignment.
    let (desc, avail, used) = (RING, RING + 0x1001, RING + 0x2002);
    rig.drv = TestDriver::with_layout(rig.mem.clone(), desc, avail, used, 256);
    modern_init_at(&mut rig, desc, avail, used);
    rig.fill(0, &[0x3c; 512]);
    rig.request(0, VIRTIO_BLK_T_OUT, 1, 512, false);
    rig.request(1, VIRTIO_BLK_T_IN, 1, 512, true);
    modern_kick(&mut rig);
    rig.handler.handle_output(0);
    rig.drain();
    let mut lens: Vec<u32> = std::iter::from_fn(|| rig.drv.pop_used())
        .map(|u| u.1)
        .collect();
    lens.sort();
    assert_eq!(
        lens,
        vec![1, 513],
        "used lengths: status only, data + status"
    );
    assert_eq!(rig.status(0), VIRTIO_BLK_S_OK);
    assert_eq!(rig.status(1), VIRTIO_BLK_S_OK);
    assert!(!rig.broken());
}
