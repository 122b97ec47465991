//! The Parallels image header (QEMU's ParallelsHeader in block/parallels.h; the format is
//! described in docs/interop/parallels.txt).
//!
//! A 64-byte header starts the image; the block allocation table (BAT) follows it
//! directly, one 32-bit entry per cluster, and the data area starts at `data_off`. The
//! original "WithoutFreeSpace" images store BAT entries in sectors and count at most 2^32
//! sectors; "WithouFreSpacExt" images store them in clusters and have a 64-bit size.

use block::{Error, Result};

/// The magic of the original format: BAT entries in sectors.
pub const MAGIC_V1: &[u8; 16] = b"WithoutFreeSpace";
/// The magic of the extended format: BAT entries in clusters.
pub const MAGIC_V2: &[u8; 16] = b"WithouFreSpacExt";
/// The only version.
pub const VERSION: u32 = 2;
/// `inuse` while a writer has the image open.
pub const INUSE_MAGIC: u32 = 0x746f_6e59;
/// Bytes of the header; the BAT starts right after it.
pub const HEADER_SIZE: usize = 64;
/// The nominal geometry new images get.
pub const HEADS: u32 = 16;
/// Sectors per cylinder of that geometry.
pub const SECTORS_PER_CYLINDER: u64 = 32;

/// The header's fields (ParallelsHeader).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Extended ("WithouFreSpacExt") or original magic.
    pub extended: bool,
    /// Geometry, informative only.
    pub heads: u32,
    /// Geometry, informative only.
    pub cylinders: u32,
    /// Sectors per cluster.
    pub tracks: u32,
    /// Entries in the BAT.
    pub bat_entries: u32,
    /// Virtual size in sectors.
    pub nb_sectors: u64,
    /// INUSE_MAGIC while open for writing.
    pub inuse: u32,
    /// First sector of the data area.
    pub data_off: u32,
    /// Unused flags.
    pub flags: u32,
    /// Sector of the format extension cluster, 0 if none.
    pub ext_off: u64,
}

/// A little-endian field of a structure.
pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// A little-endian field of a structure.
pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl Header {
    /// Parses and checks the header (the first checks of parallels_open).
    pub fn parse(b: &[u8]) -> Result<Header> {
        let not_parallels = || Error::invalid("Image not in Parallels format");
        if b.len() < HEADER_SIZE || u32_at(b, 16) != VERSION {
            return Err(not_parallels());
        }
        let extended = match &b[0..16] {
            m if m == MAGIC_V2 => true,
            m if m == MAGIC_V1 => false,
            _ => return Err(not_parallels()),
        };
        let nb_sectors = u64_at(b, 36);
        let h = Header {
            extended,
            heads: u32_at(b, 20),
            cylinders: u32_at(b, 24),
            tracks: u32_at(b, 28),
            bat_entries: u32_at(b, 32),
            // The original format only has 32 bits for the size.
            nb_sectors: if extended {
                nb_sectors
            } else {
                nb_sectors & 0xffff_ffff
            },
            inuse: u32_at(b, 44),
            data_off: u32_at(b, 48),
            flags: u32_at(b, 52),
            ext_off: u64_at(b, 56),
        };
        if h.tracks == 0 {
            return Err(Error::invalid("Invalid image: Zero sectors per track"));
        }
        if h.tracks > i32::MAX as u32 / 513 {
            return Err(Error::new(libc::EFBIG, "Invalid image: Too big cluster"));
        }
        if h.bat_entries > i32::MAX as u32 / 4 {
            return Err(Error::new(libc::EFBIG, "Catalog too large"));
        }
        Ok(h)
    }

    /// The 64 header bytes.
    pub fn serialise(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_SIZE);
        b.extend_from_slice(if self.extended { MAGIC_V2 } else { MAGIC_V1 });
        for v in [
            VERSION,
            self.heads,
            self.cylinders,
            self.tracks,
            self.bat_entries,
        ] {
            b.extend(v.to_le_bytes());
        }
        b.extend(self.nb_sectors.to_le_bytes());
        for v in [self.inuse, self.data_off, self.flags] {
            b.extend(v.to_le_bytes());
        }
        b.extend(self.ext_off.to_le_bytes());
        b
    }

    /// Sectors a BAT entry counts in (s->off_multiplier).
    pub fn off_multiplier(&self) -> u64 {
        if self.extended {
            self.tracks as u64
        } else {
            1
        }
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.tracks as u64 * 512
    }

    /// Where data may start, and whether `data_off` says so: it must lie past the BAT
    /// (cluster-aligned for extended images) and inside the file
    /// (parallels_test_data_off).
    pub fn test_data_off(&self, file_sectors: u64) -> (u64, bool) {
        let bat_end = (HEADER_SIZE as u64 + 4 * self.bat_entries as u64).div_ceil(512);
        let min = if self.extended {
            bat_end.div_ceil(self.tracks as u64) * self.tracks as u64
        } else {
            bat_end
        };
        let off = self.data_off as u64;
        if off == 0 && !self.extended {
            return (min, true);
        }
        if off >= min && off <= file_sectors {
            (off, true)
        } else {
            (min, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            extended: true,
            heads: HEADS,
            cylinders: 256,
            tracks: 2048,
            bat_entries: 64,
            nb_sectors: 131072,
            inuse: 0,
            data_off: 2048,
            flags: 0,
            ext_off: 0,
        }
    }

    #[test]
    fn headers_round_trip_and_bad_ones_are_refused() {
        let h = header();
        assert_eq!(Header::parse(&h.serialise()).unwrap(), h);
        let mut b = h.serialise();
        b[28..32].copy_from_slice(&0u32.to_le_bytes());
        let e = Header::parse(&b).unwrap_err().to_string();
        assert_eq!(e, "Invalid image: Zero sectors per track");
        b[0] = b'X';
        let e = Header::parse(&b).unwrap_err().to_string();
        assert_eq!(e, "Image not in Parallels format");
        let mut b = h.serialise();
        b[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Header::parse(&b).unwrap_err().errno(), libc::EFBIG);
    }

    #[test]
    fn data_off_must_lie_between_the_bat_and_the_end_of_the_file() {
        let mut h = header();
        assert_eq!(h.test_data_off(4096), (2048, true));
        h.data_off = u32::MAX;
        assert_eq!(h.test_data_off(4096), (2048, false));
        h.data_off = 1;
        assert_eq!(h.test_data_off(4096), (2048, false));
    }
}
