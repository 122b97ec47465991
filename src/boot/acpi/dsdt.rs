//! The DSDT: the PCI host bridge with its interrupt routing, the keyboard controller, and the
//! S5 (soft off) sleep state.
//!
//! QEMU's hw/i386/acpi-build.c (build_dsdt; its i440FX DSDT routes through link devices
//! LNKA-LNKD that read the PIIX3 PIRQ registers). This machine's routing is fixed instead, so
//! `_PRT` names the IRQ of each slot and pin outright: pin INTx of slot S raises PIRQ
//! (S + x) mod 4, and PIRQA-D are ISA IRQs 10, 10, 11, 11, the routing SeaBIOS programs into
//! the PIIX3 (and with it every PCI function's Interrupt Line, which the devices follow).
//! `\_S5` holds the SLP_TYP value that powers the machine off: 0, the PIIX4 encoding.

use acpi_tables::aml::{
    self, Device, EISAName, Interrupt, Name, Package, PackageBuilder, ResourceTemplate, Scope, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::OEM_ID;

/// ISA IRQs of PIRQA-D.
pub const PIRQ_IRQS: [u8; 4] = [10, 10, 11, 11];
/// PCI slots on the root bus.
const SLOTS: u32 = 32;

/// The IRQ of interrupt pin `pin` (0 = INTA) of the device in `slot`.
pub fn pci_irq(slot: u32, pin: u32) -> u8 {
    PIRQ_IRQS[((slot + pin) % 4) as usize]
}

/// `_PRT`: one package {address, pin, source, source index} per slot and pin; a null source
/// means the source index is the interrupt itself.
fn routing_table() -> PackageBuilder {
    let mut prt = PackageBuilder::new();
    for slot in 1..SLOTS {
        for pin in 0..4u32 {
            let mut entry = PackageBuilder::new();
            entry.add_element(&((slot << 16) | 0xFFFF)); // any function of the slot
            entry.add_element(&(pin as u8));
            entry.add_element(&aml::ZERO);
            entry.add_element(&u32::from(pci_irq(slot, pin)));
            prt.add_element(&entry);
        }
    }
    prt
}

/// Builds the DSDT.
pub fn build() -> Sdt {
    let prt = Name::new("_PRT".into(), &routing_table());
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0A03"));
    let adr = Name::new("_ADR".into(), &aml::ZERO);
    let uid = Name::new("_UID".into(), &aml::ZERO);
    // The i8042 keyboard controller: SeaBIOS only initialises a PS/2 keyboard the DSDT
    // declares (PNP0303), and an OS finds the controller's ports the same way.
    let (data, command) = (IO::new(0x60, 0x60, 1, 1), IO::new(0x64, 0x64, 1, 1));
    let irq1 = Interrupt::new(true, true, false, false, 1);
    let kbd_crs = Name::new(
        "_CRS".into(),
        &ResourceTemplate::new(vec![&data, &command, &irq1]),
    );
    let kbd_hid = Name::new("_HID".into(), &EISAName::new("PNP0303"));
    let kbd = Device::new("KBD_".into(), vec![&kbd_hid, &kbd_crs]);
    let isa_adr = Name::new("_ADR".into(), &0x0001_0000u32); // the PIIX3 at 00:01.0
    let isa = Device::new("ISA_".into(), vec![&isa_adr, &kbd]);
    let pci0 = Device::new("PCI0".into(), vec![&hid, &adr, &uid, &prt, &isa]);
    let sb = Scope::new("\\_SB_".into(), vec![&pci0]);
    let s5 = Name::new(
        "_S5_".into(),
        &Package::new(vec![&aml::ZERO, &aml::ZERO, &aml::ZERO, &aml::ZERO]),
    );
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, *b"RQEMUDSD", 1);
    sb.to_aml_bytes(&mut dsdt);
    s5.to_aml_bytes(&mut dsdt);
    dsdt.update_checksum();
    dsdt
}
