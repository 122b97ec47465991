//! The VDI header: VirtualBox's 512-byte image descriptor, version 1.1 (the `VdiHeader`
//! struct and its checks in QEMU's block/vdi.c).
//!
//! All fields are little-endian. After a 64-byte text banner come the signature and version,
//! then the image type (dynamic or static), where the block map and the data area start,
//! the legacy CHS geometry, the disk size, the block size and block counts, and four UUIDs:
//! the image, its last snapshot, and the link and parent of a differencing image (which
//! QEMU, and so rqemu, does not open).

use block::{Error, Result};

/// Size of the header as stored (one sector).
pub const HEADER_SIZE: usize = 512;
/// The sector size VDI images use.
pub const SECTOR_SIZE: u64 = 512;
/// The only block size QEMU opens and creates (DEFAULT_CLUSTER_SIZE).
pub const BLOCK_SIZE: u32 = 1 << 20;
/// The signature at offset 0x40 (VDI_SIGNATURE).
pub const SIGNATURE: u32 = 0xbeda_107f;
/// Header version 1.1 (VDI_VERSION_1_1), as major << 16 | minor.
pub const VERSION_1_1: u32 = 0x0001_0001;
/// Banner QEMU writes in front of its images (VDI_TEXT).
pub const QEMU_TEXT: &[u8] = b"<<< QEMU VM Virtual Disk Image >>>\n";
/// Image type of a dynamically allocated image (VDI_TYPE_DYNAMIC).
pub const TYPE_DYNAMIC: u32 = 1;
/// Image type of a preallocated image (VDI_TYPE_STATIC).
pub const TYPE_STATIC: u32 = 2;
/// Most blocks an image may have (VDI_BLOCKS_IN_IMAGE_MAX): the block map must stay
/// addressable with 32-bit sector counts.
pub const BLOCKS_IN_IMAGE_MAX: u32 = 0x1fff_ff80;
/// Largest disk size (VDI_DISK_SIZE_MAX).
pub const DISK_SIZE_MAX: u64 = BLOCKS_IN_IMAGE_MAX as u64 * BLOCK_SIZE as u64;
/// Block map entry of a block never written (VDI_UNALLOCATED).
pub const UNALLOCATED: u32 = 0xffff_ffff;
/// Block map entry of a discarded block, which also reads as zeroes (VDI_DISCARDED).
pub const DISCARDED: u32 = 0xffff_fffe;

/// Whether a block map entry points at data (VDI_IS_ALLOCATED).
pub fn is_allocated(entry: u32) -> bool {
    entry < DISCARDED
}

/// The decoded header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The 64-byte banner, kept as found.
    pub text: [u8; 64],
    /// VDI_SIGNATURE in a VDI image.
    pub signature: u32,
    /// major << 16 | minor.
    pub version: u32,
    /// Bytes of header proper after the signature fields (0x180 for version 1.1).
    pub header_size: u32,
    /// TYPE_DYNAMIC or TYPE_STATIC.
    pub image_type: u32,
    /// Image flags (unused by QEMU).
    pub image_flags: u32,
    /// Free-text description.
    pub description: [u8; 256],
    /// Byte offset of the block map.
    pub offset_bmap: u32,
    /// Byte offset of block 0 of the data area.
    pub offset_data: u32,
    /// Legacy geometry: cylinders.
    pub cylinders: u32,
    /// Legacy geometry: heads.
    pub heads: u32,
    /// Legacy geometry: sectors per track.
    pub sectors: u32,
    /// Bytes per sector (512).
    pub sector_size: u32,
    /// Virtual disk size in bytes.
    pub disk_size: u64,
    /// Bytes per block.
    pub block_size: u32,
    /// Extra bytes stored before each block (0 in images QEMU reads).
    pub block_extra: u32,
    /// Entries in the block map.
    pub blocks_in_image: u32,
    /// Blocks in the data area; the next block allocated goes at this index.
    pub blocks_allocated: u32,
    /// UUID of this image.
    pub uuid_image: [u8; 16],
    /// UUID of the last snapshot.
    pub uuid_last_snap: [u8; 16],
    /// UUID of the link (differencing images).
    pub uuid_link: [u8; 16],
    /// UUID of the parent (differencing images).
    pub uuid_parent: [u8; 16],
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn uuid(b: &[u8], at: usize) -> [u8; 16] {
    b[at..at + 16].try_into().unwrap()
}

impl Header {
    /// Decodes the first sector of an image (vdi_header_to_cpu).
    pub fn parse(b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_SIZE {
            return Err(Error::invalid("Image not in VDI format (file too short)"));
        }
        Ok(Header {
            text: b[0..64].try_into().unwrap(),
            signature: le32(b, 0x40),
            version: le32(b, 0x44),
            header_size: le32(b, 0x48),
            image_type: le32(b, 0x4c),
            image_flags: le32(b, 0x50),
            description: b[0x54..0x154].try_into().unwrap(),
            offset_bmap: le32(b, 0x154),
            offset_data: le32(b, 0x158),
            cylinders: le32(b, 0x15c),
            heads: le32(b, 0x160),
            sectors: le32(b, 0x164),
            sector_size: le32(b, 0x168),
            disk_size: u64::from_le_bytes(b[0x170..0x178].try_into().unwrap()),
            block_size: le32(b, 0x178),
            block_extra: le32(b, 0x17c),
            blocks_in_image: le32(b, 0x180),
            blocks_allocated: le32(b, 0x184),
            uuid_image: uuid(b, 0x188),
            uuid_last_snap: uuid(b, 0x198),
            uuid_link: uuid(b, 0x1a8),
            uuid_parent: uuid(b, 0x1b8),
        })
    }

    /// Encodes the header into its sector (vdi_header_to_le).
    pub fn serialise(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[0..64].copy_from_slice(&self.text);
        let words = [
            (0x40, self.signature),
            (0x44, self.version),
            (0x48, self.header_size),
            (0x4c, self.image_type),
            (0x50, self.image_flags),
            (0x154, self.offset_bmap),
            (0x158, self.offset_data),
            (0x15c, self.cylinders),
            (0x160, self.heads),
            (0x164, self.sectors),
            (0x168, self.sector_size),
            (0x178, self.block_size),
            (0x17c, self.block_extra),
            (0x180, self.blocks_in_image),
            (0x184, self.blocks_allocated),
        ];
        for (at, v) in words {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        b[0x54..0x154].copy_from_slice(&self.description);
        b[0x170..0x178].copy_from_slice(&self.disk_size.to_le_bytes());
        b[0x188..0x198].copy_from_slice(&self.uuid_image);
        b[0x198..0x1a8].copy_from_slice(&self.uuid_last_snap);
        b[0x1a8..0x1b8].copy_from_slice(&self.uuid_link);
        b[0x1b8..0x1c8].copy_from_slice(&self.uuid_parent);
        b
    }

    /// Bytes the block map takes, rounded to whole sectors as it is stored.
    pub fn bmap_bytes(&self) -> u64 {
        (self.blocks_in_image as u64 * 4).div_ceil(SECTOR_SIZE) * SECTOR_SIZE
    }

    /// Refuses what QEMU refuses to open, with its messages (the checks in vdi_open). A
    /// disk size that is not a whole number of sectors is rounded up once it is known to be
    /// in range, as QEMU does for images `VBoxManage convert` writes.
    pub fn validate(&mut self) -> Result<()> {
        let unsupported = |what: String| {
            Err(Error::not_supported(format!(
                "unsupported VDI image ({what})"
            )))
        };
        if self.signature != SIGNATURE {
            return Err(Error::invalid(format!(
                "Image not in VDI format (bad signature {:08x})",
                self.signature
            )));
        }
        if self.disk_size > DISK_SIZE_MAX {
            return Err(Error::not_supported(format!(
                "Unsupported VDI image size (size is 0x{:x}, max supported is 0x{:x})",
                self.disk_size, DISK_SIZE_MAX
            )));
        }
        // Only now, as in QEMU: a size near 2^64 is refused before rounding could overflow.
        if !self.disk_size.is_multiple_of(SECTOR_SIZE) {
            self.disk_size = self.disk_size.div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
        }
        if self.version != VERSION_1_1 {
            return unsupported(format!(
                "version {}.{}",
                self.version >> 16,
                self.version & 0xffff
            ));
        }
        if !(self.offset_bmap as u64).is_multiple_of(SECTOR_SIZE) {
            return unsupported(format!(
                "unaligned block map offset 0x{:x}",
                self.offset_bmap
            ));
        }
        if !(self.offset_data as u64).is_multiple_of(SECTOR_SIZE) {
            return unsupported(format!("unaligned data offset 0x{:x}", self.offset_data));
        }
        if self.sector_size as u64 != SECTOR_SIZE {
            return unsupported(format!(
                "sector size {} is not {SECTOR_SIZE}",
                self.sector_size
            ));
        }
        if self.block_size != BLOCK_SIZE {
            return unsupported(format!(
                "block size {} is not {BLOCK_SIZE}",
                self.block_size
            ));
        }
        let room = self.blocks_in_image as u64 * self.block_size as u64;
        if self.disk_size > room {
            return unsupported(format!(
                "disk size {}, image bitmap has room for {room}",
                self.disk_size
            ));
        }
        if self.uuid_link != [0; 16] {
            return unsupported("non-NULL link UUID".into());
        }
        if self.uuid_parent != [0; 16] {
            return unsupported("non-NULL parent UUID".into());
        }
        if self.blocks_in_image > BLOCKS_IN_IMAGE_MAX {
            return unsupported(format!(
                "too many blocks {}, max is {BLOCKS_IN_IMAGE_MAX}",
                self.blocks_in_image
            ));
        }
        Ok(())
    }
}
