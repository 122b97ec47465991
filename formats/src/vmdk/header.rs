//! The binary headers of VMDK's sparse extents (the VMDK3Header, VMDK4Header and seSparse
//! header structs of QEMU's block/vmdk.c; VMware's "Virtual Disk Format 5.0" spec).
//!
//! Three layouts carry the same geometry: ESX's old "COWD" vmfsSparse header, the
//! hosted-product "KDMV" sparse header (monolithicSparse, twoGbMaxExtentSparse and
//! streamOptimized extents), and ESXi's seSparse const + volatile headers. Each parses into
//! a [`Geometry`]: capacity, grain size, grain directory and table sizes, all in sectors.

use block::{Error, Result};

/// "COWD", big-endian at offset 0: an ESX vmfsSparse extent.
pub const VMDK3_MAGIC: u32 = u32::from_be_bytes(*b"COWD");
/// "KDMV", big-endian at offset 0: a hosted sparse extent.
pub const VMDK4_MAGIC: u32 = u32::from_be_bytes(*b"KDMV");

/// The header checks for newline conversion (VMDK4_FLAG_NL_DETECT).
pub const FLAG_NL_DETECT: u32 = 1 << 0;
/// A redundant grain directory follows the header (VMDK4_FLAG_RGD).
pub const FLAG_RGD: u32 = 1 << 1;
/// Grain table entry 1 means "reads as zeroes" (VMDK4_FLAG_ZERO_GRAIN).
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Grains are stored compressed (VMDK4_FLAG_COMPRESS).
pub const FLAG_COMPRESS: u32 = 1 << 16;
/// Compressed grains and metadata are preceded by markers (VMDK4_FLAG_MARKER).
pub const FLAG_MARKER: u32 = 1 << 17;
/// compressAlgorithm value for deflate.
pub const COMPRESSION_DEFLATE: u16 = 1;
/// gd_offset of a streamOptimized header whose real values are in the footer.
pub const GD_AT_END: u64 = u64::MAX;
/// Bytes of the magic and the VMDK4 header fields that follow it.
pub const VMDK4_HEADER_BYTES: usize = 4 + 75;

/// A hosted sparse extent's header (VMDK4Header), offsets and sizes in sectors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vmdk4Header {
    /// 1, 2 (zeroed grains) or 3 (changed-block tracking, or streamOptimized).
    pub version: u32,
    /// FLAG_* bits.
    pub flags: u32,
    /// Sectors of guest data in the extent.
    pub capacity: u64,
    /// Sectors per grain.
    pub granularity: u64,
    /// Embedded descriptor, in sectors.
    pub desc_offset: u64,
    /// Embedded descriptor size, in sectors.
    pub desc_size: u64,
    /// Grain table entries per grain table.
    pub num_gtes_per_gt: u32,
    /// Redundant grain directory.
    pub rgd_offset: u64,
    /// Grain directory.
    pub gd_offset: u64,
    /// First sector grains may use.
    pub grain_offset: u64,
    /// COMPRESSION_DEFLATE or 0.
    pub compress_algorithm: u16,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The magic number at the start of a sector (big-endian, as vmdk_probe reads it).
pub fn magic(buf: &[u8]) -> u32 {
    buf.get(..4)
        .map_or(0, |m| u32::from_be_bytes(m.try_into().expect("4 bytes")))
}

impl Vmdk4Header {
    /// Parses the fields after the magic of `buf` (at least VMDK4_HEADER_BYTES long).
    pub fn parse(buf: &[u8]) -> Vmdk4Header {
        let b = &buf[4..VMDK4_HEADER_BYTES];
        Vmdk4Header {
            version: le32(b, 0),
            flags: le32(b, 4),
            capacity: le64(b, 8),
            granularity: le64(b, 16),
            desc_offset: le64(b, 24),
            desc_size: le64(b, 32),
            num_gtes_per_gt: le32(b, 40),
            rgd_offset: le64(b, 44),
            gd_offset: le64(b, 52),
            grain_offset: le64(b, 60),
            compress_algorithm: u16::from_le_bytes([b[73], b[74]]),
        }
    }

    /// The magic and header, with the newline-detection bytes new images carry.
    pub fn serialise(&self) -> Vec<u8> {
        let mut b = VMDK4_MAGIC.to_be_bytes().to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend(self.flags.to_le_bytes());
        b.extend(self.capacity.to_le_bytes());
        b.extend(self.granularity.to_le_bytes());
        b.extend(self.desc_offset.to_le_bytes());
        b.extend(self.desc_size.to_le_bytes());
        b.extend(self.num_gtes_per_gt.to_le_bytes());
        b.extend(self.rgd_offset.to_le_bytes());
        b.extend(self.gd_offset.to_le_bytes());
        b.extend(self.grain_offset.to_le_bytes());
        b.push(0);
        b.extend([b'\n', b' ', b'\r', b'\n']);
        b.extend(self.compress_algorithm.to_le_bytes());
        b
    }

    /// Whether grains are deflate-compressed (streamOptimized).
    pub fn compressed(&self) -> bool {
        self.compress_algorithm == COMPRESSION_DEFLATE
    }
}

/// Where a sparse extent's tables are and how they map guest sectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Sectors of guest data.
    pub sectors: u64,
    /// Byte offset of the grain directory (L1 table).
    pub l1_offset: u64,
    /// Byte offset of the redundant grain directory, 0 when there is none.
    pub l1_backup_offset: u64,
    /// Entries in the grain directory.
    pub l1_size: u64,
    /// Entries in a grain table (L2 table).
    pub l2_size: u64,
    /// Sectors per grain.
    pub cluster_sectors: u64,
}

/// Largest grain QEMU accepts: 1 GiB (0x200000 sectors).
const MAX_CLUSTER_SECTORS: u64 = 0x200000;
/// Largest grain directory QEMU accepts (entries).
const MAX_L1_SIZE: u64 = 32 * 1024 * 1024;

impl Geometry {
    /// QEMU's bounds on a geometry read from an image (vmdk_add_extent's checks).
    pub fn validate(&self) -> Result<()> {
        if self.cluster_sectors > MAX_CLUSTER_SECTORS {
            return Err(Error::new(
                libc::EFBIG,
                "Invalid granularity, image may be corrupt",
            ));
        }
        if self.l1_size > MAX_L1_SIZE {
            return Err(Error::new(libc::EFBIG, "L1 size too big"));
        }
        Ok(())
    }
}

/// Bytes of the old ESX header after its magic (VMDK3Header).
pub const VMDK3_HEADER_BYTES: usize = 4 + 40;

/// The geometry of a "COWD" vmfsSparse extent (vmdk_open_vmfs_sparse): 4096-entry grain
/// tables.
pub fn parse_vmdk3(buf: &[u8]) -> Geometry {
    let b = &buf[4..VMDK3_HEADER_BYTES];
    Geometry {
        sectors: le32(b, 8) as u64,
        l1_offset: (le32(b, 16) as u64) << 9,
        l1_backup_offset: 0,
        l1_size: le32(b, 20) as u64,
        l2_size: 4096,
        cluster_sectors: le32(b, 12) as u64,
    }
}

/// seSparse const header magic.
const SESPARSE_CONST_MAGIC: u64 = 0xcafe_babe;
/// seSparse volatile header magic.
const SESPARSE_VOLATILE_MAGIC: u64 = 0xcafe_cafe;
/// Bytes of each seSparse header.
pub const SESPARSE_HEADER_BYTES: usize = 512;

/// An seSparse extent's const header, the fields the driver uses (in sectors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeSparseHeader {
    /// Sectors of guest data.
    pub capacity: u64,
    /// Sectors per grain (always 8).
    pub grain_size: u64,
    /// Sectors per grain table (always 64).
    pub grain_table_size: u64,
    /// Where the volatile header is.
    pub volatile_header_offset: u64,
    /// The grain directory.
    pub grain_dir_offset: u64,
    /// Sectors of the grain directory.
    pub grain_dir_size: u64,
    /// Where grain tables start.
    pub grain_tables_offset: u64,
    /// Where grains start.
    pub grains_offset: u64,
}

impl SeSparseHeader {
    /// Parses and strictly checks the const header, as QEMU does for this undocumented
    /// format (check_se_sparse_const_header).
    pub fn parse(b: &[u8]) -> Result<SeSparseHeader> {
        let f = |i: usize| le64(b, i * 8);
        if f(0) != SESPARSE_CONST_MAGIC {
            return Err(Error::invalid(format!(
                "Bad const header magic: 0x{:016x}",
                f(0)
            )));
        }
        let unsupported = |m: String| Err(Error::not_supported(m));
        if f(1) != 0x0000_0002_0000_0001 {
            return unsupported(format!("Unsupported version: 0x{:016x}", f(1)));
        }
        if f(3) != 8 {
            return unsupported(format!("Unsupported grain size: {}", f(3)));
        }
        if f(4) != 64 {
            return unsupported(format!("Unsupported grain table size: {}", f(4)));
        }
        if f(5) != 0 {
            return unsupported(format!("Unsupported flags: 0x{:016x}", f(5)));
        }
        if (6..10).any(|i| f(i) != 0) {
            return unsupported(format!(
                "Unsupported reserved bits: 0x{:016x} 0x{:016x} 0x{:016x} 0x{:016x}",
                f(6),
                f(7),
                f(8),
                f(9)
            ));
        }
        if b[26 * 8..SESPARSE_HEADER_BYTES].iter().any(|&x| x != 0) {
            return unsupported("Unsupported non-zero const header padding".into());
        }
        Ok(SeSparseHeader {
            capacity: f(2),
            grain_size: f(3),
            grain_table_size: f(4),
            volatile_header_offset: f(10),
            grain_dir_offset: f(16),
            grain_dir_size: f(17),
            grain_tables_offset: f(18),
            grains_offset: f(24),
        })
    }

    /// The extent geometry: 64-bit table entries, so a 64-sector table has 4096.
    pub fn geometry(&self) -> Geometry {
        Geometry {
            sectors: self.capacity,
            l1_offset: self.grain_dir_offset.saturating_mul(512),
            l1_backup_offset: 0,
            l1_size: self.grain_dir_size.saturating_mul(512) / 8,
            l2_size: self.grain_table_size * 512 / 8,
            cluster_sectors: self.grain_size,
        }
    }
}

/// Checks an seSparse volatile header: a journal left to replay is refused
/// (check_se_sparse_volatile_header).
pub fn check_sesparse_volatile(b: &[u8]) -> Result<()> {
    let magic = le64(b, 0);
    if magic != SESPARSE_VOLATILE_MAGIC {
        return Err(Error::invalid(format!(
            "Bad volatile header magic: 0x{magic:016x}"
        )));
    }
    if le64(b, 24) != 0 {
        return Err(Error::not_supported(
            "Image is dirty, Replaying journal not supported",
        ));
    }
    if b[32..SESPARSE_HEADER_BYTES].iter().any(|&x| x != 0) {
        return Err(Error::not_supported(
            "Unsupported non-zero volatile header padding",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmdk4_header_round_trips() {
        let h = Vmdk4Header {
            version: 1,
            flags: FLAG_RGD | FLAG_NL_DETECT,
            capacity: 2048,
            granularity: 128,
            desc_offset: 1,
            desc_size: 20,
            num_gtes_per_gt: 512,
            rgd_offset: 21,
            gd_offset: 26,
            grain_offset: 128,
            compress_algorithm: 0,
        };
        let raw = h.serialise();
        assert_eq!(raw.len(), VMDK4_HEADER_BYTES);
        assert_eq!(magic(&raw), VMDK4_MAGIC);
        assert_eq!(Vmdk4Header::parse(&raw), h);
    }

    #[test]
    fn oversized_geometry_is_refused() {
        let g = Geometry {
            sectors: 1,
            l1_offset: 0,
            l1_backup_offset: 0,
            l1_size: 1 << 30,
            l2_size: 512,
            cluster_sectors: 128,
        };
        assert_eq!(g.validate().unwrap_err().to_string(), "L1 size too big");
    }
}
