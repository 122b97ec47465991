//! The ACPI tables of the `pc` machine, and their delivery to the firmware through fw_cfg.
//!
//! QEMU's hw/i386/acpi-build.c (acpi_build: build_facs, build_dsdt, build_fadt, build_madt,
//! build_xsdt, build_rsdp) with the encoders of the rust-vmm `acpi_tables` crate. Two blobs
//! and a script go to SeaBIOS, as QEMU hands them:
//!
//! - `etc/acpi/tables`: FACS, DSDT ([`dsdt`]), FADT, MADT and XSDT, each at an offset of the
//!   blob; a pointer between tables holds the target's offset until the firmware relocates
//!   it;
//! - `etc/acpi/rsdp`: the RSDP (ACPI 2.0, pointing at the XSDT), for the BIOS F segment;
//! - `etc/table-loader`: the [`loader`] script that allocates both, patches the pointers and
//!   fixes the checksums; SeaBIOS runs it, or [`place`] on the host for direct Linux boot.
//!
//! The FADT describes the PIIX4 power management function ([`crate::devices::acpi`]): its
//! PM1 event and control blocks and PM timer at [`PM_BASE`], the SCI on IRQ 9, a fixed-feature
//! power button, and the PIIX3 reset register (0xCF9). No SMI command port: the machine is
//! always in ACPI mode (SCI_EN set), so an OS does not have to ask for the transition. The
//! MADT lists the one CPU's local APIC and no I/O APIC, so that guests keep delivering
//! interrupts through the 8259 PICs as they do without ACPI; there is no HPET.

pub mod dsdt;
pub mod loader;
pub mod place;

use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use crate::devices::acpi::{PM1_CNT, PM1_EVT, PM_BASE, PM_TMR, SCI_IRQ};
use crate::devices::fw_cfg::FwCfg;
use crate::error::MachineError;
use loader::{Linker, Zone};

/// fw_cfg file of the tables.
pub const ACPI_TABLES_FILE: &str = "etc/acpi/tables";
/// fw_cfg file of the RSDP.
pub const ACPI_RSDP_FILE: &str = "etc/acpi/rsdp";
/// fw_cfg file of the loader script.
pub const TABLE_LOADER_FILE: &str = "etc/table-loader";

/// OEM ID of every table (QEMU says "BOCHS ").
pub const OEM_ID: [u8; 6] = *b"RQEMU ";
/// The local APIC's address.
const LAPIC_ADDR: u32 = 0xFEE0_0000;
/// The PIIX3 Reset Control Register and the value that resets the machine.
const RESET_REG: u16 = 0xCF9;
const RESET_VALUE: u8 = 0x06;
/// Offsets in the FADT of FIRMWARE_CTRL (FACS) and DSDT.
const FADT_FIRMWARE_CTRL: usize = 36;
const FADT_DSDT: usize = 40;
/// Offset in the RSDP of the XSDT address, and its checksummed lengths (1.0 part, whole).
const RSDP_XSDT: usize = 24;
const RSDP_V1_LEN: usize = 20;

/// The three fw_cfg files of the machine's ACPI.
pub struct AcpiBuild {
    /// `etc/acpi/tables`.
    pub tables: Vec<u8>,
    /// `etc/acpi/rsdp`.
    pub rsdp: Vec<u8>,
    /// `etc/table-loader`.
    pub loader: Vec<u8>,
}

impl AcpiBuild {
    /// Adds the files to the firmware configuration.
    pub fn install(self, fw: &mut FwCfg) -> Result<(), MachineError> {
        fw.add_file(ACPI_TABLES_FILE, self.tables)?;
        fw.add_file(ACPI_RSDP_FILE, self.rsdp)?;
        fw.add_file(TABLE_LOADER_FILE, self.loader)
    }

    /// The contents of the fw_cfg file `name` that the loader script may allocate.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        match name {
            ACPI_TABLES_FILE => Some(&self.tables),
            ACPI_RSDP_FILE => Some(&self.rsdp),
            _ => None,
        }
    }
}

/// One table appended to the blob: where it starts and how long it is.
struct Placed {
    offset: usize,
    len: usize,
}

/// The blob of tables and the linker that relocates it.
struct Builder {
    blob: Vec<u8>,
    linker: Linker,
}

impl Builder {
    /// Appends a table (aligned as QEMU aligns them: FACS 64, others 1); its checksum is
    /// recomputed by the firmware after the pointers are patched, unless it has none.
    fn add(&mut self, table: &dyn Aml, align: usize, checksummed: bool) -> Placed {
        self.blob.resize(self.blob.len().next_multiple_of(align), 0);
        let offset = self.blob.len();
        table.to_aml_bytes(&mut self.blob);
        let len = self.blob.len() - offset;
        if checksummed {
            self.linker
                .add_table_checksum(ACPI_TABLES_FILE, offset, len);
        }
        Placed { offset, len }
    }

    /// A `size`-byte pointer at `at` (blob offset) to another table of the blob.
    fn pointer(&mut self, at: usize, size: u8) {
        self.linker
            .add_pointer(ACPI_TABLES_FILE, at, size, ACPI_TABLES_FILE);
    }
}

/// Builds the tables of a one-CPU `pc` machine.
pub fn build() -> AcpiBuild {
    let mut linker = Linker::default();
    linker.allocate(ACPI_RSDP_FILE, 16, Zone::Fseg);
    linker.allocate(ACPI_TABLES_FILE, 64, Zone::High);
    let mut b = Builder {
        blob: Vec::new(),
        linker,
    };
    let facs = b.add(&FACS::new(), 64, false);
    let dsdt = b.add(&dsdt::build(), 1, true);
    let fadt_table = fadt(facs.offset as u32, dsdt.offset as u32);
    // The checksum command must follow the pointer commands of the same table.
    let fadt_at = b.blob.len();
    b.pointer(fadt_at + FADT_FIRMWARE_CTRL, 4);
    b.pointer(fadt_at + FADT_DSDT, 4);
    let fadt = b.add(&fadt_table, 1, true);
    let madt = b.add(&madt(), 1, true);
    let mut xsdt = XSDT::new(OEM_ID, *b"RQEMUXSD", 1);
    let entries = [fadt.offset, madt.offset];
    for &entry in &entries {
        xsdt.add_entry(entry as u64);
    }
    let xsdt_at = b.blob.len();
    for i in 0..entries.len() {
        b.pointer(xsdt_at + 36 + 8 * i, 8);
    }
    let xsdt = b.add(&xsdt, 1, true);
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt.offset as u64).to_aml_bytes(&mut rsdp);
    let mut linker = b.linker;
    linker.add_pointer(ACPI_RSDP_FILE, RSDP_XSDT, 8, ACPI_TABLES_FILE);
    linker.add_checksum(ACPI_RSDP_FILE, 8, 0, RSDP_V1_LEN);
    linker.add_checksum(ACPI_RSDP_FILE, 32, 0, rsdp.len());
    debug_assert_eq!(xsdt.offset + xsdt.len, b.blob.len());
    AcpiBuild {
        tables: b.blob,
        rsdp,
        loader: linker.into_bytes(),
    }
}

/// The FADT: the PIIX4 PM registers, the SCI, legacy devices, the reset register.
fn fadt(facs: u32, dsdt: u32) -> acpi_tables::fadt::FADT {
    let mut f = FADTBuilder::new(OEM_ID, *b"RQEMUFAC", 1)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton) // no sleep button; the power button is a fixed feature
        .flag(Flags::RtcS4)
        .flag(Flags::ResetRegSup);
    f.firmware_ctrl = facs.into();
    f.dsdt = dsdt.into();
    f.sci_int = (SCI_IRQ as u16).into();
    f.pm1a_evt_blk = u32::from(PM_BASE + PM1_EVT).into();
    f.pm1a_cnt_blk = u32::from(PM_BASE + PM1_CNT).into();
    f.pm_tmr_blk = u32::from(PM_BASE + PM_TMR).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    f.pm_tmr_len = 4;
    f.iapc_boot_arch = 0x0003.into(); // legacy devices, 8042
    f.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        RESET_REG.into(),
    );
    f.reset_value = RESET_VALUE;
    f.finalize()
}

/// The MADT: the boot CPU's local APIC.
fn madt() -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        *b"RQEMUAPI",
        1,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    madt.add_structure(ProcessorLocalApic::new(0, 0, EnabledStatus::Enabled));
    madt
}

#[cfg(test)]
mod tests;
