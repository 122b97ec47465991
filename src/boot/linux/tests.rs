use super::*;
use std::io::Write;

const RAM: u64 = 64 << 20;

/// Numbers the images of [`fake_bzimage`].
static NEXT_IMAGE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A minimal bzImage: 4 setup sectors + boot sector with a 2.15 header, then a payload.
fn fake_bzimage(xloadflags: u16, payload: &[u8]) -> File {
    let mut img = vec![0u8; 5 * 512];
    img[0x1F1] = 4;
    img[0x1FE..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(&HDRS_MAGIC.to_le_bytes());
    img[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
    img[0x211] = 0x01; // LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    img[0x22C..0x230].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
    img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    img[0x238..0x23C].copy_from_slice(&2047u32.to_le_bytes());
    img.extend_from_slice(payload);
    let path = std::env::temp_dir().join(format!(
        "rqemu-bzimage-{}-{}",
        std::process::id(),
        // Tests run in parallel threads of one process: each image gets its own name.
        NEXT_IMAGE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut f = File::create(&path).unwrap();
    f.write_all(&img).unwrap();
    drop(f);
    let f = File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

fn read_u64(ram: &GuestRam, addr: u64) -> u64 {
    ram.memory().read_obj(GuestAddress(addr)).unwrap()
}

#[test]
fn zero_page_holds_header_cmdline_initrd_and_e820() {
    let ram = GuestRam::new(RAM, None).unwrap();
    let mut kernel = fake_bzimage(0x7F, &[0xCC; 4096]);
    let initrd = vec![0x42u8; 10_000];
    let entry = load(&ram, &mut kernel, Some(&initrd), "console=ttyS0 panic=-1").unwrap();
    assert_eq!(
        entry,
        EntryState {
            rip: KERNEL_ADDR + 0x200,
            rsi: ZERO_PAGE_ADDR,
            rsp: BOOT_STACK,
            cr3: PML4_ADDR,
            gdt: (GDT_ADDR, 31),
        }
    );
    let zp: boot_params = ram.memory().read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
    let hdr = zp.hdr;
    assert_eq!({ hdr.header }, HDRS_MAGIC);
    assert_eq!({ hdr.type_of_loader }, 0xFF);
    assert_eq!(hdr.loadflags & 0x81, 0x81);
    assert_eq!({ hdr.heap_end_ptr }, 0xFE00);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
    let (image, size) = ({ hdr.ramdisk_image } as u64, { hdr.ramdisk_size } as u64);
    assert_eq!(size, 10_000);
    assert_eq!(image % 4096, 0);
    assert!(
        image + size <= RAM && image + size > RAM - 8192,
        "initrd at top of RAM"
    );
    let mut b = [0u8; 1];
    ram.read(GuestAddress(image + 9_999), &mut b).unwrap();
    assert_eq!(b[0], 0x42);
    let mut line = [0u8; 23];
    ram.read(GuestAddress(CMDLINE_ADDR), &mut line).unwrap();
    assert_eq!(&line, b"console=ttyS0 panic=-1\0");
    assert_eq!(zp.e820_entries, 5);
    let e = zp.e820_table;
    assert_eq!(
        ({ e[0].addr }, { e[0].size }, { e[0].r#type }),
        (0, 0x9FC00, 1)
    );
    assert_eq!(
        ({ e[3].addr }, { e[3].size }, { e[3].r#type }),
        (KERNEL_ADDR, RAM - KERNEL_ADDR, 1)
    );
    assert_eq!({ e[4].r#type }, 2);
    ram.read(GuestAddress(KERNEL_ADDR), &mut b).unwrap();
    assert_eq!(b[0], 0xCC, "protected-mode kernel at 1 MiB");
}

#[test]
fn gdt_and_identity_page_tables() {
    let ram = GuestRam::new(RAM, None).unwrap();
    let mut kernel = fake_bzimage(0x7F, &[0; 512]);
    load(&ram, &mut kernel, None, "").unwrap();
    assert_eq!(read_u64(&ram, GDT_ADDR + 0x10), 0x00AF_9B00_0000_FFFF);
    assert_eq!(read_u64(&ram, GDT_ADDR + 0x18), 0x00CF_9300_0000_FFFF);
    assert_eq!(read_u64(&ram, PML4_ADDR), PDPT_ADDR | 3);
    assert_eq!(read_u64(&ram, PDPT_ADDR + 8 * 3), (PD_ADDR + 0x3000) | 3);
    assert_eq!(read_u64(&ram, PD_ADDR), 0x83);
    assert_eq!(read_u64(&ram, PD_ADDR + 8), (2 << 20) | 0x83);
    // The last 2 MiB page of the 4th directory maps 4 GiB - 2 MiB.
    assert_eq!(
        read_u64(&ram, PD_ADDR + 0x3000 + 511 * 8),
        ((4u64 << 30) - (2 << 20)) | 0x83
    );
}

#[test]
fn old_or_32_bit_only_kernels_and_long_cmdlines_are_refused() {
    let ram = GuestRam::new(RAM, None).unwrap();
    let mut kernel = fake_bzimage(0, &[0; 512]);
    let err = load(&ram, &mut kernel, None, "").unwrap_err().to_string();
    assert!(err.contains("64-bit"), "{err}");
    assert!(check_header(HDRS_MAGIC, 0x020B, 1)
        .unwrap_err()
        .to_string()
        .contains("2.11"));
    assert!(check_header(0, 0x020F, 1).is_err());
    let mut kernel = fake_bzimage(0x7F, &[0; 512]);
    let err = load(&ram, &mut kernel, None, &"x".repeat(3000))
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 2047"), "{err}");
}

#[test]
fn garbage_is_not_a_bzimage() {
    let ram = GuestRam::new(RAM, None).unwrap();
    let path = std::env::temp_dir().join(format!("rqemu-notkernel-{}", std::process::id()));
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let mut f = File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(load(&ram, &mut f, None, "")
        .unwrap_err()
        .to_string()
        .contains("bzImage"));
}

#[test]
fn initrd_placement_respects_initrd_addr_max_and_ram() {
    assert_eq!(
        initrd_address(64 << 20, 0x7FFF_FFFF, 4096).unwrap(),
        (64 << 20) - 4096
    );
    assert_eq!(
        initrd_address(64 << 20, 0x00FF_FFFF, 100).unwrap(),
        (16 << 20) - 4096
    );
    assert!(initrd_address(2 << 20, 0x7FFF_FFFF, 4 << 20).is_err());
}

#[test]
fn e820_for_big_guests_continues_above_4g() {
    let ram = GuestRam::new(4 << 30, None).unwrap();
    let map = e820_map(&ram);
    assert!(map.contains(&(HIGHMEM_START, (4 << 30) - 0xC000_0000, E820Type::Ram)));
    assert!(map.contains(&(KERNEL_ADDR, 0xC000_0000 - KERNEL_ADDR, E820Type::Ram)));
}

fn read_bytes(ram: &GuestRam, addr: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    ram.read(GuestAddress(addr), &mut b).unwrap();
    b
}

fn checksum_ok(b: &[u8]) -> bool {
    b.iter().fold(0u8, |s, x| s.wrapping_add(*x)) == 0
}

/// Reads the ACPI table at `addr`, checking its signature and checksum; returns it whole.
fn acpi_table(ram: &GuestRam, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
    let header = read_bytes(ram, addr, 8);
    assert_eq!(&header[..4], sig, "table at {addr:#x}");
    let len = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
    let table = read_bytes(ram, addr, len);
    assert!(checksum_ok(&table), "{sig:?} checksum");
    table
}

#[test]
fn the_kernel_finds_acpi_tables_by_scan_and_by_boot_params() {
    let ram = GuestRam::new(RAM, None).unwrap();
    let mut kernel = fake_bzimage(0x7F, &[0; 512]);
    load(&ram, &mut kernel, None, "").unwrap();
    // The scan of Linux's acpi_find_root_pointer: 16-byte steps over 0xE0000-0xFFFFF.
    let bios = read_bytes(&ram, 0xE_0000, 0x2_0000);
    let at = (0..bios.len())
        .step_by(16)
        .find(|&i| &bios[i..i + 8] == b"RSD PTR ")
        .expect("RSDP in the BIOS area");
    let rsdp_addr = 0xE_0000 + at as u64;
    let rsdp = &bios[at..at + 36];
    assert!(
        checksum_ok(&rsdp[..20]) && checksum_ok(rsdp),
        "RSDP checksums"
    );
    assert_eq!(rsdp[15], 2, "ACPI 2.0 RSDP");
    let zp: boot_params = ram.memory().read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
    assert_eq!({ zp.acpi_rsdp_addr }, rsdp_addr);
    // RSDP -> XSDT -> FADT -> DSDT and FACS, all inside the reserved area.
    let e820 = &zp.e820_table[..zp.e820_entries as usize];
    let reserved = |addr: u64, len: usize| {
        e820.iter().any(|e| {
            e.r#type == 2 && e.addr <= addr && addr + len as u64 <= { e.addr } + { e.size }
        })
    };
    assert!(reserved(rsdp_addr, 36));
    let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
    let xsdt = acpi_table(&ram, xsdt_addr, b"XSDT");
    assert!(reserved(xsdt_addr, xsdt.len()));
    let entries: Vec<u64> = xsdt[36..]
        .chunks(8)
        .map(|e| u64::from_le_bytes(e.try_into().unwrap()))
        .collect();
    assert_eq!(entries.len(), 2);
    let fadt = acpi_table(&ram, entries[0], b"FACP");
    acpi_table(&ram, entries[1], b"APIC");
    let dsdt_addr = u32::from_le_bytes(fadt[40..44].try_into().unwrap()) as u64;
    let dsdt = acpi_table(&ram, dsdt_addr, b"DSDT");
    assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
    let facs_addr = u32::from_le_bytes(fadt[36..40].try_into().unwrap()) as u64;
    assert_eq!(&read_bytes(&ram, facs_addr, 4), b"FACS");
    assert_eq!(facs_addr % 64, 0);
    for (addr, len) in [
        (dsdt_addr, dsdt.len()),
        (entries[0], fadt.len()),
        (facs_addr, 64),
    ] {
        assert!(reserved(addr, len), "{addr:#x} reserved in e820");
    }
    // Nothing the tables occupy is RAM to the kernel.
    assert!(e820
        .iter()
        .all(|e| e.r#type != 1 || { e.addr } + { e.size } <= 0xE_0000 || { e.addr } >= 0x10_0000));
}
