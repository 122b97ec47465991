//! The generated tables, checked the way the firmware and an OS read them: the loader script
//! run against fake allocations, every checksum, the FADT's PM blocks, `\_S5` and `_PRT`.

use super::loader::{COMMAND_ADD_CHECKSUM, COMMAND_ADD_POINTER, COMMAND_ALLOCATE, ENTRY_SIZE};
use super::place;
use super::*;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
}

/// Runs the script as SeaBIOS does, with the RSDP at 0xF0000 and the tables at 0x7FE0000;
/// returns the two relocated files.
fn run_loader(acpi: &AcpiBuild) -> (Vec<u8>, Vec<u8>) {
    let zones = place::Zones {
        fseg: 0xF_0000..0x10_0000,
        high: 0x7FE_0000..0x800_0000,
    };
    let loaded = place::run_loader(acpi, &zones).unwrap();
    let rsdp = loaded.file(ACPI_RSDP_FILE).unwrap();
    let tables = loaded.file(ACPI_TABLES_FILE).unwrap();
    assert_eq!((rsdp.addr, tables.addr), (0xF_0000, 0x7FE_0000));
    (rsdp.bytes.clone(), tables.bytes.clone())
}

/// The table of `sig` in the relocated blob, found through RSDP -> XSDT.
fn table<'a>(rsdp: &[u8], tables: &'a [u8], sig: &[u8; 4]) -> &'a [u8] {
    let base = 0x7FE_0000u64;
    let xsdt_at = (u64::from_le_bytes(rsdp[24..32].try_into().unwrap()) - base) as usize;
    let xsdt = &tables[xsdt_at..xsdt_at + u32_at(tables, xsdt_at + 4) as usize];
    assert_eq!(&xsdt[..4], b"XSDT");
    for entry in xsdt[36..].chunks(8) {
        let at = (u64::from_le_bytes(entry.try_into().unwrap()) - base) as usize;
        if &tables[at..at + 4] == sig {
            return &tables[at..at + u32_at(tables, at + 4) as usize];
        }
    }
    panic!("no {sig:?} in the XSDT")
}

#[test]
fn after_loading_every_checksum_holds_and_pointers_reach_the_tables() {
    let acpi = build();
    let (rsdp, tables) = run_loader(&acpi);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0);
    assert_eq!(sum(&rsdp), 0, "extended checksum");
    let fadt = table(&rsdp, &tables, b"FACP");
    let madt = table(&rsdp, &tables, b"APIC");
    for t in [fadt, madt] {
        assert_eq!(sum(t), 0, "{:?}", &t[..4]);
    }
    let dsdt_at = u32_at(fadt, 40) as usize - 0x7FE_0000;
    let dsdt = &tables[dsdt_at..dsdt_at + u32_at(&tables, dsdt_at + 4) as usize];
    assert_eq!(&dsdt[..4], b"DSDT");
    assert_eq!(sum(dsdt), 0);
    let facs_at = u32_at(fadt, 36) as usize - 0x7FE_0000;
    assert_eq!(&tables[facs_at..facs_at + 4], b"FACS");
    assert_eq!(facs_at % 64, 0);
    // The PIIX4 PM blocks and the SCI.
    assert_eq!(u32_at(fadt, 56), 0x600);
    assert_eq!(u32_at(fadt, 64), 0x604);
    assert_eq!(u32_at(fadt, 76), 0x608);
    assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9);
    assert_eq!(u32_at(fadt, 112) & (1 << 4), 0, "fixed power button");
    // The MADT: one enabled local APIC, no I/O APIC.
    assert_eq!(&madt[44..52], &[0, 8, 0, 0, 1, 0, 0, 0]);
    assert_eq!(madt.len(), 52);
}

#[test]
fn the_loader_allocates_first_and_fixes_checksums_after_pointers() {
    let acpi = build();
    let cmds: Vec<u32> = acpi
        .loader
        .chunks(ENTRY_SIZE)
        .map(|e| u32_at(e, 0))
        .collect();
    assert_eq!(&cmds[..2], &[COMMAND_ALLOCATE, COMMAND_ALLOCATE]);
    // The RSDP's pointer comes before its two checksums, which end the script.
    let n = cmds.len();
    assert_eq!(
        &cmds[n - 3..],
        &[
            COMMAND_ADD_POINTER,
            COMMAND_ADD_CHECKSUM,
            COMMAND_ADD_CHECKSUM
        ]
    );
}

#[test]
fn dsdt_holds_s5_and_routes_every_slot_and_pin() {
    let dsdt = dsdt::build();
    let aml = dsdt.as_slice();
    let s5 = aml.windows(4).position(|w| w == b"_S5_").expect("_S5_");
    // NameOp "_S5_" PackageOp PkgLength NumElements Zero...
    assert_eq!(aml[s5 - 1], 0x08);
    assert_eq!(&aml[s5 + 4..s5 + 4 + 1], &[0x12]);
    assert_eq!(aml[s5 + 6], 4);
    assert_eq!(aml[s5 + 7], 0x00, "SLP_TYPa 0");
    assert!(aml.windows(4).any(|w| w == b"PCI0"));
    // PNP0303, the keyboard SeaBIOS looks for, as a compressed EISA id.
    assert!(aml.windows(5).any(|w| w == [0x0C, 0x41, 0xD0, 0x03, 0x03]));
    let prt = aml.windows(4).position(|w| w == b"_PRT").expect("_PRT");
    // Entry for slot 3, pin B: {0x0003FFFF, 1, 0, IRQ}.
    let entry = [0x0C, 0xFF, 0xFF, 0x03, 0x00, 0x01, 0x00, 0x0A];
    let at = aml[prt..]
        .windows(entry.len())
        .position(|w| w == entry)
        .expect("slot 3 pin B");
    assert_eq!(aml[prt + at + entry.len()], dsdt::pci_irq(3, 1));
    assert_eq!(dsdt::pci_irq(3, 1), 10);
    assert_eq!(dsdt::pci_irq(1, 1), 11);
    assert_eq!(sum(aml), 0);
}

#[test]
fn host_loader_refuses_zones_too_small_and_unknown_commands() {
    let zones = |fseg_end| place::Zones {
        fseg: 0xF_0000..fseg_end,
        high: 0x10_0000..0x20_0000,
    };
    let err = place::run_loader(&build(), &zones(0xF_0010))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("etc/acpi/rsdp does not fit"), "{err}");
    let zones = zones(0x10_0000);
    let mut bad = build();
    bad.loader[..4].copy_from_slice(&7u32.to_le_bytes());
    let err = place::run_loader(&bad, &zones).err().unwrap().to_string();
    assert!(err.contains("command 7 is not supported"), "{err}");
    let mut truncated = build();
    truncated.loader.pop();
    assert!(place::run_loader(&truncated, &zones).is_err());
}
