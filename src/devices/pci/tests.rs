use super::*;
use crate::devices::ide::Piix3Ide;

fn pc_pci_bus() -> PciBus {
    super::pc_pci_bus(Arc::new(Mutex::new(Piix3Ide::new([
        [None, None],
        [None, None],
    ]))))
}

fn host() -> (PciHost, ResetRequest) {
    let reset = ResetRequest::default();
    (PciHost::new(pc_pci_bus(), reset.clone()), reset)
}

fn addr(devfn: u32, reg: u32) -> [u8; 4] {
    (0x8000_0000 | devfn << 8 | reg).to_le_bytes()
}

fn read32(h: &mut PciHost, devfn: u32, reg: u32) -> u32 {
    h.write(0xCF8, 0, &addr(devfn, reg));
    let mut d = [0u8; 4];
    h.read(0xCF8, 4, &mut d);
    u32::from_le_bytes(d)
}

fn write32(h: &mut PciHost, devfn: u32, reg: u32, v: u32) {
    h.write(0xCF8, 0, &addr(devfn, reg));
    h.write(0xCF8, 4, &v.to_le_bytes());
}

#[test]
fn address_latch_reads_back_and_byte_write_to_cfb_is_harmless() {
    let (mut h, _) = host();
    h.write(0xCF8, 3, &[0x01]);
    h.write(0xCF8, 0, &0x8000_0000u32.to_le_bytes());
    let mut d = [0u8; 4];
    h.read(0xCF8, 0, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
}

#[test]
fn host_bridge_and_isa_bridge_identify_like_qemu_pc() {
    let (mut h, _) = host();
    assert_eq!(read32(&mut h, 0, 0), 0x1237_8086);
    assert_eq!(read32(&mut h, 0, 8) >> 8, 0x06_00_00);
    assert_eq!(read32(&mut h, 0, 8) & 0xFF, 0x02);
    assert_eq!(read32(&mut h, 8, 0), 0x7000_8086);
    assert_eq!(read32(&mut h, 8, 8) >> 8, 0x06_01_00);
    assert_eq!(
        (read32(&mut h, 8, 0x0C) >> 16) & 0xFF,
        0x80,
        "multi-function"
    );
    assert_eq!(read32(&mut h, 0x10, 0), 0xFFFF_FFFF);
}

#[test]
fn sub_dword_data_accesses_use_the_port_offset() {
    let (mut h, _) = host();
    h.write(0xCF8, 0, &addr(0, 0));
    let mut w = [0u8; 2];
    h.read(0xCF8, 6, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x1237);
    let mut b = [0u8; 1];
    h.read(0xCF8, 5, &mut b);
    assert_eq!(b[0], 0x80);
}

#[test]
fn ids_are_read_only_and_pam_pirq_are_storage() {
    let (mut h, _) = host();
    write32(&mut h, 0, 0, 0xDEAD_BEEF);
    assert_eq!(read32(&mut h, 0, 0), 0x1237_8086);
    // PAM0 is byte 0x59: write 0x30 there and 0x33 to PAM1-3.
    h.write(0xCF8, 0, &addr(0, 0x58));
    h.write(0xCF8, 5, &[0x30, 0x33, 0x33]);
    assert_eq!(read32(&mut h, 0, 0x58), 0x3333_3000);
    assert_eq!(
        read32(&mut h, 8, 0x60),
        0x8080_8080,
        "PIRQs disabled at reset"
    );
    write32(&mut h, 8, 0x60, 0x0B0B_0A0A);
    assert_eq!(read32(&mut h, 8, 0x60), 0x0B0B_0A0A);
}

#[test]
fn disabled_address_or_other_bus_reads_all_ones() {
    let (mut h, _) = host();
    h.write(0xCF8, 0, &0u32.to_le_bytes());
    let mut d = [0u8; 4];
    h.read(0xCF8, 4, &mut d);
    assert_eq!(d, [0xFF; 4]);
    h.write(0xCF8, 0, &(0x8001_0000u32).to_le_bytes());
    h.read(0xCF8, 4, &mut d);
    assert_eq!(d, [0xFF; 4]);
}

/// A function with BARs that records BAR accesses.
struct BarDev(
    ConfigSpace,
    std::sync::Arc<std::sync::Mutex<Vec<(usize, u64, u8)>>>,
);
impl PciFunction for BarDev {
    fn config(&self) -> &ConfigSpace {
        &self.0
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.0
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0x40 + bar as u8 + offset as u8);
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.1.lock().unwrap().push((bar, offset, data[0]));
    }
}

fn bar_dev() -> BarDev {
    let mut cfg = ConfigSpace::new(0x1AF4, 0x1001, 0x01_00_00, 0);
    cfg.set_bar(0, BarKind::Io, 0x40);
    cfg.set_bar(1, BarKind::Mem32, 0x1000);
    BarDev(cfg, Default::default())
}

#[test]
fn bar_sizing_returns_the_size_mask_and_keeps_type_bits() {
    let mut bus = pc_pci_bus();
    bus.add(0x10, Arc::new(Mutex::new(bar_dev()))).unwrap();
    assert!(bus
        .add(0x10, Arc::new(Mutex::new(I440fx::default())))
        .is_err());
    let mut h = PciHost::new(bus, ResetRequest::default());
    write32(&mut h, 0x10, 0x10, 0xFFFF_FFFF);
    assert_eq!(read32(&mut h, 0x10, 0x10), 0xFFFF_FFC1);
    write32(&mut h, 0x10, 0x14, 0xFFFF_FFFF);
    assert_eq!(read32(&mut h, 0x10, 0x14), 0xFFFF_F000);
    write32(&mut h, 0x10, 0x10, 0xC000);
    assert_eq!(read32(&mut h, 0x10, 0x10), 0xC001);
    write32(&mut h, 0x10, 0x18, 0xFFFF_FFFF);
    assert_eq!(
        read32(&mut h, 0x10, 0x18),
        0,
        "unimplemented BAR stays zero"
    );
}

#[test]
fn bar_address_follows_the_command_register() {
    let mut cfg = ConfigSpace::new(0x1AF4, 0x1001, 0x01_00_00, 0);
    cfg.set_bar(0, BarKind::Io, 0x40);
    cfg.write(PCI_BASE_ADDRESS_0, &0xC040u32.to_le_bytes());
    assert_eq!(cfg.bar_address(0), None);
    cfg.write(PCI_COMMAND, &[0x01]);
    assert_eq!(cfg.bar_address(0), Some(0xC040));
}

#[test]
fn port_cf9_resets_on_bit2() {
    let (mut h, reset) = host();
    h.write(0xCF8, 1, &[0x02]);
    assert!(!reset.take());
    let mut b = [0u8];
    h.read(0xCF8, 1, &mut b);
    assert_eq!(b[0], 0x02);
    h.write(0xCF8, 1, &[0x06]);
    assert!(reset.take());
}

#[test]
fn bar_window_routes_accesses_to_enabled_bars_only() {
    let dev = bar_dev();
    let writes = dev.1.clone();
    let mut bus = pc_pci_bus();
    bus.add(0x10, Arc::new(Mutex::new(dev))).unwrap();
    let host = std::sync::Arc::new(std::sync::Mutex::new(PciHost::new(
        bus,
        ResetRequest::default(),
    )));
    let mut io = PciBarWindow::new(host.clone(), BarKind::Io);
    let mut mem = PciBarWindow::new(host.clone(), BarKind::Mem32);
    {
        let mut h = host.lock().unwrap();
        write32(&mut h, 0x10, 0x10, 0xC000);
        write32(&mut h, 0x10, 0x14, 0xFEBF_0000);
    }
    let mut b = [0u8; 1];
    io.read(0, 0xC004, &mut b);
    assert_eq!(b[0], 0xFF, "I/O decoding still disabled");
    write32(&mut host.lock().unwrap(), 0x10, 0x04, 0x3);
    io.read(0, 0xC004, &mut b);
    assert_eq!(b[0], 0x44, "BAR 0 offset 4");
    mem.read(0, 0xFEBF_0010, &mut b);
    assert_eq!(b[0], 0x51, "BAR 1 offset 0x10");
    io.write(0, 0xC03F, &[7]);
    io.write(0, 0xC040, &[8]);
    mem.write(0, 0xC000, &[9]);
    assert_eq!(
        *writes.lock().unwrap(),
        vec![(0, 0x3F, 7)],
        "only the in-range I/O write"
    );
}

#[test]
fn the_ide_function_is_function_1_of_the_piix3() {
    let (mut h, _) = host();
    assert_eq!(
        read32(&mut h, 0x08, 0x0C) >> 16 & 0x80,
        0x80,
        "00:01.0 multi-function"
    );
    assert_eq!(read32(&mut h, 0x09, 0x00), 0x7010_8086);
    assert_eq!(read32(&mut h, 0x09, 0x08) >> 8, 0x01_01_80);
    write32(&mut h, 0x09, 0x40, 0x0000_0000);
    assert_eq!(read32(&mut h, 0x09, 0x40), 0, "IDETIM is storage");
}
