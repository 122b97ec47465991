//! The 512-byte IDENTIFY DEVICE block of an ATA disk, and the disk's CHS geometry.
//!
//! QEMU builds the same page in hw/ide/core.c (ide_identify) and guesses the geometry in
//! hw/block/hd-geometry.c. The words a guest acts on (ATA-7, section "IDENTIFY DEVICE"):
//! 1/3/6 default CHS (SeaBIOS's int13 translation), 47 and 59 READ/WRITE MULTIPLE, 49 LBA,
//! 60-61 LBA28 capacity, 64 PIO modes, 80 major version (>= ATA-4, so Linux never issues
//! INITIALIZE DEVICE PARAMETERS), 83/86 LBA48 and FLUSH CACHE (EXT), 85 bit 5 write cache on
//! (so Linux flushes), 100-103 LBA48 capacity. This disk does PIO only: the DMA words
//! (62, 63, 88) are zero and word 49 does not claim DMA; neither TRIM (69, 169) nor SMART
//! is offered.

/// Largest block of READ/WRITE MULTIPLE (IDENTIFY word 47, QEMU's MAX_MULT_SECTORS).
pub const MAX_MULT_SECTORS: u8 = 16;

/// LBA28 commands address at most this many sectors (words 60-61 saturate here).
pub const LBA28_SECTORS: u64 = (1 << 28) - 1;

/// What the guest learns about a drive from IDENTIFY: strings and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveInfo {
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    /// Model number (words 27-46), e.g. "QEMU HARDDISK".
    pub model: String,
    /// Serial number (words 10-19), e.g. "QM00001".
    pub serial: String,
    /// Firmware revision (words 23-26), e.g. "2.5+".
    pub firmware: String,
}

impl DriveInfo {
    /// The identity QEMU gives the drive with index `index` (`-drive if=ide,index=N`).
    pub fn qemu_default(sectors: u64, index: u32) -> DriveInfo {
        DriveInfo {
            sectors,
            model: "QEMU HARDDISK".to_string(),
            serial: format!("QM{:05}", index + 1),
            firmware: "2.5+".to_string(),
        }
    }

    /// The identity QEMU gives the CD/DVD drive with index `index` (`-cdrom`, `ide-cd`).
    pub fn qemu_cdrom(sectors: u64, index: u32) -> DriveInfo {
        DriveInfo {
            model: "QEMU DVD-ROM".to_string(),
            ..DriveInfo::qemu_default(sectors, index)
        }
    }
}

/// What sits in a drive slot (QEMU's IDEDriveKind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DriveKind {
    /// An ATA hard disk (`ide-hd`).
    #[default]
    Disk,
    /// An ATAPI CD/DVD-ROM drive (`ide-cd`), see [`super::atapi`].
    Cdrom,
}

/// What the drive in a slot is: its identity, size and whether it may be written.
#[derive(Clone, Debug)]
pub struct DriveConfig {
    /// Disk or CD-ROM.
    pub kind: DriveKind,
    /// IDENTIFY strings and capacity.
    pub info: DriveInfo,
    /// Writes abort when set (a read-only image).
    pub read_only: bool,
    /// Initial state of the volatile write cache (the backend's cache mode).
    pub write_cache: bool,
}

/// A cylinders/heads/sectors-per-track geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders (1..=16383).
    pub cylinders: u16,
    /// Heads (1..=16).
    pub heads: u8,
    /// Sectors per track (1..=255).
    pub sectors: u8,
}

impl Geometry {
    /// The default geometry for a disk of `sectors` sectors: 16 heads, 63 sectors per track
    /// and as many cylinders as fit, clamped to 2..=16383 (QEMU's guess when the MBR holds no
    /// partition table it can read a geometry from).
    pub fn guess(sectors: u64) -> Geometry {
        let cylinders = (sectors / (16 * 63)).clamp(2, 16383) as u16;
        Geometry {
            cylinders,
            heads: 16,
            sectors: 63,
        }
    }

    /// Sectors addressable through this geometry.
    pub fn capacity(&self) -> u64 {
        self.cylinders as u64 * self.heads as u64 * self.sectors as u64
    }
}

/// The device state IDENTIFY reports besides the fixed drive info.
#[derive(Clone, Copy, Debug)]
pub struct IdentifyState {
    /// Default geometry (words 1, 3, 6).
    pub default_chs: Geometry,
    /// Current geometry, changed by INITIALIZE DEVICE PARAMETERS (words 54-58).
    pub current_chs: Geometry,
    /// Current READ/WRITE MULTIPLE block, 0 when multiple mode is off (word 59).
    pub mult_sectors: u8,
    /// Whether the volatile write cache is enabled (word 85 bit 5).
    pub write_cache: bool,
}

/// Builds the IDENTIFY DEVICE page.
pub fn identify_page(info: &DriveInfo, state: &IdentifyState) -> [u8; 512] {
    let mut w = [0u16; 256];
    let chs = state.default_chs;
    w[0] = 0x0040; // fixed disk
    w[1] = chs.cylinders;
    w[3] = chs.heads as u16;
    w[4] = 512 * chs.sectors as u16; // retired: unformatted bytes per track
    w[5] = 512; // retired: unformatted bytes per sector
    w[6] = chs.sectors as u16;
    put_string(&mut w[10..20], &info.serial);
    w[20] = 3; // retired: buffer type
    w[21] = 512; // retired: buffer size in sectors
    w[22] = 4; // obsolete: ECC bytes
    put_string(&mut w[23..27], &info.firmware);
    put_string(&mut w[27..47], &info.model);
    w[47] = 0x8000 | MAX_MULT_SECTORS as u16;
    w[48] = 1; // 32-bit data port I/O
    w[49] = (1 << 11) | (1 << 9); // IORDY, LBA (no DMA)
    w[51] = 0x200; // PIO timing mode (obsolete)
    w[53] = 0x0003; // words 54-58 and 64-70 valid
    let cur = state.current_chs;
    w[54] = cur.cylinders;
    w[55] = cur.heads as u16;
    w[56] = cur.sectors as u16;
    let chs_capacity = cur.capacity().min(info.sectors).min(u32::MAX as u64) as u32;
    w[57] = chs_capacity as u16;
    w[58] = (chs_capacity >> 16) as u16;
    if state.mult_sectors != 0 {
        w[59] = 0x100 | state.mult_sectors as u16;
    }
    let lba28 = info.sectors.min(LBA28_SECTORS);
    w[60] = lba28 as u16;
    w[61] = (lba28 >> 16) as u16;
    w[64] = 0x0003; // PIO modes 3 and 4
    w[65..=68].fill(120); // minimum cycle times (ns)
    w[80] = 0x00F0; // ATA-4 to ATA-7
    w[81] = 0x0016;
    w[82] = 1 << 5; // write cache supported
    w[83] = (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10); // FLUSH EXT, FLUSH, LBA48
    w[84] = 1 << 14;
    w[85] = (state.write_cache as u16) << 5;
    w[86] = (1 << 13) | (1 << 12) | (1 << 10);
    w[87] = 1 << 14;
    w[93] = 0x6001; // reset result: device 0 passed, 80-wire cable
    w[106] = 0x6000; // word valid; one logical sector per physical sector (exponent 0)
    for (i, word) in w[100..104].iter_mut().enumerate() {
        *word = (info.sectors >> (16 * i)) as u16;
    }
    page_bytes(&w)
}

/// An identify page's words as the little-endian bytes the data port moves.
pub(super) fn page_bytes(w: &[u16; 256]) -> [u8; 512] {
    let mut page = [0u8; 512];
    for (i, word) in w.iter().enumerate() {
        page[2 * i..2 * i + 2].copy_from_slice(&word.to_le_bytes());
    }
    page
}

/// ATA strings: space-padded ASCII with the two bytes of each word swapped.
pub(super) fn put_string(words: &mut [u16], s: &str) {
    let mut bytes = s.bytes().filter(|b| b.is_ascii_graphic() || *b == b' ');
    for word in words.iter_mut() {
        let hi = bytes.next().unwrap_or(b' ');
        let lo = bytes.next().unwrap_or(b' ');
        *word = u16::from_be_bytes([hi, lo]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(page: &[u8; 512], i: usize) -> u16 {
        u16::from_le_bytes([page[2 * i], page[2 * i + 1]])
    }

    #[test]
    fn capacity_words_saturate_lba28_and_carry_lba48() {
        let info = DriveInfo::qemu_default(200 << 21, 0); // 200 GiB
        let chs = Geometry::guess(info.sectors);
        let state = IdentifyState {
            default_chs: chs,
            current_chs: chs,
            mult_sectors: 16,
            write_cache: true,
        };
        let page = identify_page(&info, &state);
        assert_eq!(
            word(&page, 60) as u64 | (word(&page, 61) as u64) << 16,
            LBA28_SECTORS
        );
        let lba48: u64 = (0..4)
            .map(|i| (word(&page, 100 + i) as u64) << (16 * i))
            .sum();
        assert_eq!(lba48, 200 << 21);
        assert_eq!(word(&page, 1), 16383);
        assert_eq!(word(&page, 59), 0x110);
        assert_eq!(word(&page, 85) & 0x20, 0x20);
        // "QEMU HARDDISK" byte-swapped: 'E','Q' then 'U','M'.
        assert_eq!(&page[54..58], b"EQUM");
        assert_eq!(&page[20..28], b"MQ0000 1");
    }

    #[test]
    fn small_disks_get_at_least_two_cylinders() {
        assert_eq!(
            Geometry::guess(100),
            Geometry {
                cylinders: 2,
                heads: 16,
                sectors: 63
            }
        );
        assert_eq!(Geometry::guess(2048 * 100).cylinders, 203);
    }
}
