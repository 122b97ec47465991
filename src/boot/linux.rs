//! Direct Linux boot: a bzImage entered at its 64-bit entry point, no firmware involved.
//!
//! QEMU does this with an option ROM (hw/i386/x86-common.c x86_load_linux + linuxboot);
//! Firecracker and cloud-hypervisor do it directly, as here. The x86 boot protocol
//! (Documentation/arch/x86/boot.rst) asks the loader to: put the protected-mode kernel at
//! 1 MiB, fill the "zero page" (`struct boot_params`: the bzImage's setup header, the command
//! line pointer, the initrd location, the e820 memory map), identity-map low memory with page
//! tables, load a GDT with the boot code and data segments at 0x10 and 0x18, and enter
//! `startup_64` (load address + 0x200) in long mode with RSI pointing at the zero page.
//! linux-loader parses and copies the bzImage; the rest is built here.
//!
//! The kernel gets the ACPI tables a firmware boot gets: rqemu runs their table-loader script
//! itself ([`acpi::place`]) into the BIOS area, where the kernel's scan finds the RSDP, and
//! also hands the RSDP's address in `boot_params.acpi_rsdp_addr` (protocol 2.14).
//!
//! Guest physical layout (all below 1 MiB is free before the kernel runs):
//! 0x500 GDT, 0x7000 zero page, 0x8FF0 boot stack, 0x9000 PML4, 0xA000 PDPT, 0xB000 page
//! directories (4 of them, mapping 4 GiB with 2 MiB pages), 0x20000 command line,
//! 0xE0000 ACPI tables, 0xF0000 RSDP (0xE0000-0xFFFFF reserved in e820),
//! 0x100000 kernel, initrd at the top of low RAM.

use std::fs::File;
use std::ops::Range;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::boot::acpi::{self, place};
use crate::devices::fw_cfg::E820Type;
use crate::error::MachineError;
use crate::memory::{GuestRam, HIGHMEM_START, KVM_RESERVED};

/// Where the GDT goes.
pub const GDT_ADDR: u64 = 0x500;
/// Where the zero page goes.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// The initial stack pointer.
pub const BOOT_STACK: u64 = 0x8FF0;
/// The top-level page table.
pub const PML4_ADDR: u64 = 0x9000;
/// The page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xA000;
/// The first of four page directories.
pub const PD_ADDR: u64 = 0xB000;
/// Where the command line goes.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Where the protected-mode kernel is loaded.
pub const KERNEL_ADDR: u64 = 0x10_0000;
/// Boot code segment selector (__BOOT_CS).
pub const BOOT_CS: u16 = 0x10;
/// Boot data segment selector (__BOOT_DS).
pub const BOOT_DS: u16 = 0x18;
/// The GDT: null, unused, 64-bit code (0x10), data (0x18).
pub const GDT: [u64; 4] = [0, 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];

/// Where the ACPI tables go (the loader's high zone).
pub const ACPI_TABLES_AREA: Range<u64> = 0xE_0000..0xF_0000;
/// Where the RSDP goes (the loader's F segment zone), inside the kernel's RSDP scan.
pub const ACPI_FSEG_AREA: Range<u64> = 0xF_0000..0x10_0000;

/// End of conventional memory below the EBDA.
const EBDA_START: u64 = 0x9_FC00;
/// "HdrS" at 0x202 of a bzImage.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Oldest boot protocol with a 64-bit entry point and xloadflags.
const MIN_PROTOCOL: u16 = 0x020C;
/// Oldest boot protocol that reads `acpi_rsdp_addr`.
const RSDP_ADDR_PROTOCOL: u16 = 0x020E;
/// xloadflags bit 0: the kernel has a 64-bit entry at +0x200.
const XLF_KERNEL_64: u16 = 0x1;
/// loadflags bit 7: the loader set heap_end_ptr.
const CAN_USE_HEAP: u8 = 0x80;
/// type_of_loader 0xFF: "undefined" boot loader.
const LOADER_UNDEFINED: u8 = 0xFF;
/// Page-table entry bits: present, writable, and (in a PD) 2 MiB page.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_PAGE_2M: u64 = 0x80;

/// The vCPU state at the 64-bit entry point, independent of KVM's structures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryState {
    /// startup_64.
    pub rip: u64,
    /// The zero page.
    pub rsi: u64,
    /// Stack (RSP and RBP).
    pub rsp: u64,
    /// Page-table root.
    pub cr3: u64,
    /// GDT base and limit.
    pub gdt: (u64, u16),
}

/// The e820 map a directly booted kernel sees for `ram`.
pub fn e820_map(ram: &GuestRam) -> Vec<(u64, u64, E820Type)> {
    let mut map = vec![
        (0, EBDA_START, E820Type::Ram),
        (EBDA_START, 0xA_0000 - EBDA_START, E820Type::Reserved),
        (
            ACPI_TABLES_AREA.start,
            ACPI_FSEG_AREA.end - ACPI_TABLES_AREA.start,
            E820Type::Reserved,
        ),
        (KERNEL_ADDR, ram.below_4g() - KERNEL_ADDR, E820Type::Ram),
    ];
    if ram.above_4g() > 0 {
        map.push((HIGHMEM_START, ram.above_4g(), E820Type::Ram));
    }
    map.push((KVM_RESERVED.0, KVM_RESERVED.1, E820Type::Reserved));
    map
}

/// Loads `kernel` (and `initrd`) into `ram` with `cmdline`; returns the entry state.
pub fn load(
    ram: &GuestRam,
    kernel: &mut File,
    initrd: Option<&[u8]>,
    cmdline: &str,
) -> Result<EntryState, MachineError> {
    let mem = ram.memory();
    let loaded = BzImage::load(mem, None, kernel, Some(GuestAddress(KERNEL_ADDR)))
        .map_err(|e| MachineError::Boot(format!("not a bootable bzImage: {e}")))?;
    let hdr = loaded
        .setup_header
        .ok_or_else(|| MachineError::Boot("the kernel has no setup header".to_string()))?;
    check_header(hdr.header, hdr.version, hdr.xloadflags)?;
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xFE00;
    write_cmdline(ram, cmdline, hdr.cmdline_size)?;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    if let Some(image) = initrd {
        let addr = initrd_address(ram.below_4g(), hdr.initrd_addr_max, image.len() as u64)?;
        ram.write(GuestAddress(addr), image)?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = image.len() as u32;
    }
    let rsdp = place_acpi(ram)?;
    if hdr.version >= RSDP_ADDR_PROTOCOL {
        params.acpi_rsdp_addr = rsdp;
    }
    set_e820(&mut params, &e820_map(ram))?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(|e| MachineError::Boot(format!("cannot write the zero page: {e}")))?;
    write_gdt(ram)?;
    write_page_tables(ram)?;
    Ok(EntryState {
        rip: loaded.kernel_load.0 + 0x200,
        rsi: ZERO_PAGE_ADDR,
        rsp: BOOT_STACK,
        cr3: PML4_ADDR,
        gdt: (GDT_ADDR, (GDT.len() * 8 - 1) as u16),
    })
}

/// Runs the ACPI table loader into the BIOS area, as SeaBIOS would; returns the RSDP's address.
fn place_acpi(ram: &GuestRam) -> Result<u64, MachineError> {
    let zones = place::Zones {
        fseg: ACPI_FSEG_AREA,
        high: ACPI_TABLES_AREA,
    };
    let loaded = place::run_loader(&acpi::build(), &zones)?;
    loaded.write(ram)?;
    loaded
        .file(acpi::ACPI_RSDP_FILE)
        .map(|f| f.addr)
        .ok_or_else(|| MachineError::Boot("the ACPI table loader allocated no RSDP".to_string()))
}

/// Refuses kernels too old for the 64-bit entry point.
pub fn check_header(magic: u32, version: u16, xloadflags: u16) -> Result<(), MachineError> {
    if magic != HDRS_MAGIC {
        return Err(MachineError::Boot(
            "not a bzImage (no HdrS signature)".to_string(),
        ));
    }
    if version < MIN_PROTOCOL {
        return Err(MachineError::Boot(format!(
            "boot protocol {}.{:02} is too old for a 64-bit entry (need 2.12)",
            version >> 8,
            version & 0xFF
        )));
    }
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(MachineError::Boot(
            "the kernel has no 64-bit entry point (XLF_KERNEL_64)".to_string(),
        ));
    }
    Ok(())
}

fn write_cmdline(ram: &GuestRam, cmdline: &str, max: u32) -> Result<(), MachineError> {
    // Protocols before 2.06 leave cmdline_size 0 and mean 255.
    let max = if max == 0 { 255 } else { max as usize };
    if cmdline.len() > max || cmdline.contains('\0') {
        return Err(MachineError::Boot(format!(
            "kernel command line is {} bytes, the kernel accepts at most {max}",
            cmdline.len()
        )));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    ram.write(GuestAddress(CMDLINE_ADDR), &bytes)
}

/// The page-aligned address just below the end of usable low RAM where the initrd fits.
pub fn initrd_address(below_4g: u64, initrd_addr_max: u32, size: u64) -> Result<u64, MachineError> {
    let max = if initrd_addr_max == 0 {
        0x37FF_FFFF
    } else {
        initrd_addr_max as u64
    };
    let top = below_4g.min(max + 1);
    match top.checked_sub(size) {
        Some(start) if start & !0xFFF >= KERNEL_ADDR => Ok(start & !0xFFF),
        _ => Err(MachineError::Boot(format!(
            "initrd of {size} bytes does not fit in guest RAM"
        ))),
    }
}

fn set_e820(params: &mut boot_params, map: &[(u64, u64, E820Type)]) -> Result<(), MachineError> {
    if map.len() > params.e820_table.len() {
        return Err(MachineError::Boot("too many e820 entries".to_string()));
    }
    for (slot, &(addr, size, kind)) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: kind as u32,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(())
}

fn write_gdt(ram: &GuestRam) -> Result<(), MachineError> {
    let bytes: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    ram.write(GuestAddress(GDT_ADDR), &bytes)
}

/// Identity-maps the first 4 GiB with 2 MiB pages: PML4[0] -> PDPT, PDPT[i] -> PD i.
fn write_page_tables(ram: &GuestRam) -> Result<(), MachineError> {
    let mem = ram.memory();
    let w = |addr: u64, v: u64| {
        mem.write_obj(v, GuestAddress(addr))
            .map_err(|e| MachineError::Boot(format!("cannot write page tables: {e}")))
    };
    w(PML4_ADDR, PDPT_ADDR | PTE_PRESENT_RW)?;
    for i in 0..4u64 {
        w(PDPT_ADDR + i * 8, (PD_ADDR + i * 0x1000) | PTE_PRESENT_RW)?;
        for j in 0..512u64 {
            let page = (i * 512 + j) << 21;
            w(
                PD_ADDR + i * 0x1000 + j * 8,
                page | PTE_PRESENT_RW | PDE_PAGE_2M,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
