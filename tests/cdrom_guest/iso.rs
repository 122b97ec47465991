//! A minimal ISO 9660 image with an El Torito "no emulation" boot entry, written byte by
//! byte so the test needs no mastering tool.
//!
//! Layout (2048-byte blocks): 0-15 system area; 16 the primary volume descriptor; 17 the boot
//! record (El Torito 1.0: "EL TORITO SPECIFICATION", the catalog's block); 18 the terminator;
//! 19 the boot catalog (validation entry with its checksum and 55 AA, then the initial entry:
//! bootable, no emulation, load segment 0 = 07C0, the image's 512-byte sector count and
//! block); 20/21 the little/big-endian path tables; 22 the root directory; 23.. the boot
//! image; then whatever data blocks the caller adds.

/// Bytes per logical block.
pub const BLOCK: usize = 2048;
const PVD: usize = 16;
const BOOT_RECORD: usize = 17;
const TERMINATOR: usize = 18;
const CATALOG: usize = 19;
const PATH_L: usize = 20;
const PATH_M: usize = 21;
const ROOT: usize = 22;
/// First block of the boot image.
pub const BOOT_IMAGE: usize = 23;

/// Both-endian 32-bit field (ISO 9660 7.3.3).
fn both32(buf: &mut [u8], v: u32) {
    buf[..4].copy_from_slice(&v.to_le_bytes());
    buf[4..8].copy_from_slice(&v.to_be_bytes());
}

/// Both-endian 16-bit field (7.2.3).
fn both16(buf: &mut [u8], v: u16) {
    buf[..2].copy_from_slice(&v.to_le_bytes());
    buf[2..4].copy_from_slice(&v.to_be_bytes());
}

/// A directory record for the root directory ("." is id 0, ".." id 1).
fn root_record(id: u8) -> [u8; 34] {
    let mut r = [0u8; 34];
    r[0] = 34;
    both32(&mut r[2..10], ROOT as u32);
    both32(&mut r[10..18], BLOCK as u32);
    r[25] = 0x02; // directory
    both16(&mut r[28..32], 1);
    r[32] = 1;
    r[33] = id;
    r
}

/// Builds an image of `blocks` blocks booting `boot` (placed at [`BOOT_IMAGE`]); blocks after
/// the boot image are left to the caller, who writes them into the returned buffer.
pub fn build(boot: &[u8], blocks: usize) -> Vec<u8> {
    let boot_blocks = boot.len().div_ceil(BLOCK);
    assert!(BOOT_IMAGE + boot_blocks <= blocks, "image too small");
    let mut iso = vec![0u8; blocks * BLOCK];
    let at = |b: usize| b * BLOCK;
    let blk = &mut iso[at(PVD)..at(PVD + 1)];
    blk[0] = 1;
    blk[1..6].copy_from_slice(b"CD001");
    blk[6] = 1;
    blk[8..40].fill(b' ');
    blk[40..72].fill(b' ');
    blk[40..51].copy_from_slice(b"RQEMU_CDTST");
    both32(&mut blk[80..88], blocks as u32);
    both16(&mut blk[120..124], 1); // volume set size
    both16(&mut blk[124..128], 1); // volume sequence number
    both16(&mut blk[128..132], BLOCK as u16);
    both32(&mut blk[132..140], 10); // path table size
    blk[140..144].copy_from_slice(&(PATH_L as u32).to_le_bytes());
    blk[148..152].copy_from_slice(&(PATH_M as u32).to_be_bytes());
    blk[156..190].copy_from_slice(&root_record(0));
    blk[190..813].fill(b' '); // volume set, publisher, preparer, application, files
    for date in [813, 830, 847, 864] {
        blk[date..date + 16].fill(b'0');
    }
    blk[881] = 1; // file structure version
    let blk = &mut iso[at(BOOT_RECORD)..at(BOOT_RECORD + 1)];
    blk[1..6].copy_from_slice(b"CD001");
    blk[6] = 1;
    blk[7..30].copy_from_slice(b"EL TORITO SPECIFICATION");
    blk[0x47..0x4B].copy_from_slice(&(CATALOG as u32).to_le_bytes());
    let blk = &mut iso[at(TERMINATOR)..at(TERMINATOR + 1)];
    blk[0] = 255;
    blk[1..6].copy_from_slice(b"CD001");
    blk[6] = 1;
    let cat = &mut iso[at(CATALOG)..at(CATALOG + 1)];
    cat[0] = 1; // validation entry, platform 80x86
    cat[4..16].copy_from_slice(b"RQEMU TESTS ");
    cat[30] = 0x55;
    cat[31] = 0xAA;
    let sum = cat[..32].chunks(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    cat[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    cat[32] = 0x88; // bootable
    cat[33] = 0; // no emulation
    let sectors = boot.len().div_ceil(512) as u16;
    cat[38..40].copy_from_slice(&sectors.to_le_bytes());
    cat[40..44].copy_from_slice(&(BOOT_IMAGE as u32).to_le_bytes());
    for (block, le) in [(PATH_L, true), (PATH_M, false)] {
        let p = &mut iso[at(block)..at(block) + 10];
        p[0] = 1;
        let (extent, parent) = if le {
            ((ROOT as u32).to_le_bytes(), 1u16.to_le_bytes())
        } else {
            ((ROOT as u32).to_be_bytes(), 1u16.to_be_bytes())
        };
        p[2..6].copy_from_slice(&extent);
        p[6..8].copy_from_slice(&parent);
    }
    iso[at(ROOT)..at(ROOT) + 34].copy_from_slice(&root_record(0));
    iso[at(ROOT) + 34..at(ROOT) + 68].copy_from_slice(&root_record(1));
    iso[at(BOOT_IMAGE)..at(BOOT_IMAGE) + boot.len()].copy_from_slice(boot);
    iso
}

#[test]
fn the_catalog_validates_and_points_at_the_boot_image() {
    let iso = build(&[0xAB; 1000], 30);
    let cat = &iso[CATALOG * BLOCK..];
    let sum = cat[..32].chunks(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    assert_eq!(sum, 0);
    assert_eq!(
        &iso[BOOT_RECORD * BLOCK + 1..BOOT_RECORD * BLOCK + 6],
        b"CD001"
    );
    assert_eq!(u16::from_le_bytes([cat[38], cat[39]]), 2);
    assert_eq!(iso[BOOT_IMAGE * BLOCK + 999], 0xAB);
}
