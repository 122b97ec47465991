//! The VHD footer and its CHS geometry (the `VHDFooter` struct, vpc_checksum and
//! calculate_geometry in QEMU's block/vpc.c; Microsoft's "Virtual Hard Disk Image Format
//! Specification").
//!
//! Every VHD ends with a 512-byte big-endian footer; a dynamic image also keeps a copy in
//! its first sector. It names the disk type (fixed, dynamic, differencing), the virtual
//! size twice — as a byte count and as a legacy cylinders/heads/sectors geometry — and
//! carries a checksum: the one's complement of the sum of its bytes.

use block::{Error, Result};

/// Bytes of the footer.
pub const FOOTER_SIZE: usize = 512;
/// Cookie at the start of the footer.
pub const COOKIE: &[u8; 8] = b"conectix";
/// Disk type of a fixed image: the data, then the footer (VHD_FIXED).
pub const TYPE_FIXED: u32 = 2;
/// Disk type of a dynamic image: blocks allocated through a table (VHD_DYNAMIC).
pub const TYPE_DYNAMIC: u32 = 3;
/// Disk type of a differencing image (VHD_DIFFERENCING), which QEMU does not open either.
pub const TYPE_DIFFERENCING: u32 = 4;
/// The largest geometry: 65535 cylinders, 16 heads, 255 sectors (VHD_MAX_GEOMETRY). An
/// image with it takes its size from the footer's byte count instead.
pub const MAX_GEOMETRY: u64 = 65535 * 16 * 255;
/// The largest disk QEMU accepts, 2040 GiB in sectors (VHD_MAX_SECTORS).
pub const MAX_SECTORS: u64 = 0xff00_0000;
/// VHD timestamps count seconds from 2000-01-01 (VHD_TIMESTAMP_BASE).
pub const TIMESTAMP_BASE: u64 = 946_684_800;

/// Cylinders, heads, sectors per track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cyls: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub secs: u8,
}

impl Geometry {
    /// Sectors the geometry addresses.
    pub fn sectors(self) -> u64 {
        self.cyls as u64 * self.heads as u64 * self.secs as u64
    }

    /// The largest geometry.
    pub const MAX: Geometry = Geometry {
        cyls: 65535,
        heads: 16,
        secs: 255,
    };

    /// The specification's geometry for a sector count (calculate_geometry): it may
    /// address fewer sectors than asked for.
    pub fn for_sectors(total: u64) -> Geometry {
        let total = total.min(MAX_GEOMETRY);
        let (secs, heads, cyl_times_heads);
        if total >= 65535 * 16 * 63 {
            secs = 255;
            heads = 16;
            cyl_times_heads = total / secs;
        } else {
            let mut s = 17;
            let mut cth = total / s;
            let mut h = cth.div_ceil(1024).max(4);
            if cth >= h * 1024 || h > 16 {
                s = 31;
                h = 16;
                cth = total / s;
            }
            if cth >= h * 1024 {
                s = 63;
                h = 16;
                cth = total / s;
            }
            secs = s;
            heads = h;
            cyl_times_heads = cth;
        }
        Geometry {
            cyls: (cyl_times_heads / heads) as u16,
            heads: heads as u8,
            secs: secs as u8,
        }
    }
}

/// One's complement of the byte sum (vpc_checksum); the checksum field must be zero.
pub fn checksum(bytes: &[u8]) -> u32 {
    !bytes
        .iter()
        .fold(0u32, |sum, &b| sum.wrapping_add(b as u32))
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// The decoded footer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Feature bits (2: reserved, always set).
    pub features: u32,
    /// Format version, 1.0.
    pub version: u32,
    /// Offset of the dynamic disk header, all ones for a fixed image.
    pub data_offset: u64,
    /// Creation time, seconds since 2000-01-01.
    pub timestamp: u32,
    /// Application that wrote the image ("qemu", "vpc ", "win ", "d2v "...).
    pub creator_app: [u8; 4],
    /// Its version.
    pub creator_ver: u32,
    /// Host OS of the creator ("Wi2k").
    pub creator_os: u32,
    /// Size at creation.
    pub orig_size: u64,
    /// Current size in bytes.
    pub current_size: u64,
    /// The disk's geometry.
    pub geometry: Geometry,
    /// TYPE_FIXED, TYPE_DYNAMIC or TYPE_DIFFERENCING.
    pub disk_type: u32,
    /// The checksum as stored.
    pub checksum: u32,
    /// The image's UUID.
    pub uuid: [u8; 16],
}

impl Footer {
    /// Decodes a footer whose cookie the caller has checked.
    pub fn parse(b: &[u8]) -> Footer {
        Footer {
            features: be32(b, 8),
            version: be32(b, 12),
            data_offset: be64(b, 16),
            timestamp: be32(b, 24),
            creator_app: b[28..32].try_into().unwrap(),
            creator_ver: be32(b, 32),
            creator_os: be32(b, 36),
            orig_size: be64(b, 40),
            current_size: be64(b, 48),
            geometry: Geometry {
                cyls: u16::from_be_bytes([b[56], b[57]]),
                heads: b[58],
                secs: b[59],
            },
            disk_type: be32(b, 60),
            checksum: be32(b, 64),
            uuid: b[68..84].try_into().unwrap(),
        }
    }

    /// Whether a sector holds a footer (its cookie).
    pub fn is_footer(b: &[u8]) -> bool {
        b.len() >= FOOTER_SIZE && &b[0..8] == COOKIE
    }

    /// Verifies a stored footer's checksum (vpc_open).
    pub fn verify(b: &[u8]) -> Result<()> {
        let mut copy = b[..FOOTER_SIZE].to_vec();
        copy[64..68].fill(0);
        if checksum(&copy) != be32(b, 64) {
            return Err(Error::invalid("Incorrect header checksum"));
        }
        Ok(())
    }

    /// Encodes the footer, computing its checksum.
    pub fn serialise(&self) -> Vec<u8> {
        let mut b = vec![0u8; FOOTER_SIZE];
        b[0..8].copy_from_slice(COOKIE);
        b[8..12].copy_from_slice(&self.features.to_be_bytes());
        b[12..16].copy_from_slice(&self.version.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_app);
        b[32..36].copy_from_slice(&self.creator_ver.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_os.to_be_bytes());
        b[40..48].copy_from_slice(&self.orig_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..58].copy_from_slice(&self.geometry.cyls.to_be_bytes());
        b[58] = self.geometry.heads;
        b[59] = self.geometry.secs;
        b[60..64].copy_from_slice(&self.disk_type.to_be_bytes());
        b[68..84].copy_from_slice(&self.uuid);
        let sum = checksum(&b);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Whether the creator is known to size disks by geometry, so that the byte count is
    /// to be ignored (vpc_ignore_current_size): Virtual PC and QEMU before `force_size`.
    pub fn sized_by_geometry(&self) -> bool {
        &self.creator_app == b"vpc " || &self.creator_app == b"qemu"
    }
}
