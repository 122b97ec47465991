use super::*;
use std::io::Write;

const RAM: u64 = 64 << 20;

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
        "rqemu-bzimage-{}-{xloadflags}-{}",
        std::process::id(),
        payload.len()
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
    let err = load(&ram, &mut kernel, None, "").unwrap_err();
    assert!(err.contains("64-bit"), "{err}");
    assert!(check_header(HDRS_MAGIC, 0x020B, 1)
        .unwrap_err()
        .contains("2.11"));
    assert!(check_header(0, 0x020F, 1).is_err());
    let mut kernel = fake_bzimage(0x7F, &[0; 512]);
    let err = load(&ram, &mut kernel, None, &"x".repeat(3000)).unwrap_err();
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
