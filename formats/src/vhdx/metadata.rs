//! The VHDX metadata region: a table of items, each found by GUID, that say how big the
//! disk is and how it is laid out (QEMU's vhdx_parse_metadata and vhdx_create_new_metadata
//! in block/vhdx.c; VHDX spec v1.00 §2.6).
//!
//! The first 64 KiB of the region hold the table (a header and up to 2047 entries); the
//! items follow at offsets relative to the region. Five items are required: the file
//! parameters (block size, fixed or differencing), the virtual disk size, the SCSI page 83
//! identifier and the logical and physical sector sizes. A differencing image also has a
//! parent locator.

use block::{BlockDriverState, Error, Result};

use super::header::{le_u32, le_u64, ms_guid, Guid, Region, MIB};
use crate::image_file::{random_uuid, read_bytes};

const SIGNATURE: &[u8; 8] = b"metadata";
/// The table's size: the header and at most 2047 entries of 32 bytes.
const TABLE_SIZE: usize = 32 * 2048;
/// Where new images put the items, just past the table.
const ITEMS_OFFSET: u32 = 64 << 10;
/// An item whose meaning a reader must know to open the file.
const FLAG_IS_REQUIRED: u32 = 4;
/// An item describing the virtual disk rather than the file.
const FLAG_IS_VIRTUAL_DISK: u32 = 2;
/// File parameters flag: blocks stay allocated (a fixed image).
pub const PARAMS_LEAVE_BLOCKS_ALLOCATED: u32 = 1;
/// File parameters flag: a differencing image with a parent.
pub const PARAMS_HAS_PARENT: u32 = 2;
/// Smallest and largest payload block.
pub const BLOCK_SIZE_MIN: u64 = MIB;
/// The spec's largest payload block.
pub const BLOCK_SIZE_MAX: u64 = 256 * MIB;

const FILE_PARAMETERS: Guid = ms_guid(
    0xcaa1_6737,
    0xfa36,
    0x4d43,
    [0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b],
);
const VIRTUAL_DISK_SIZE: Guid = ms_guid(
    0x2fa5_4224,
    0xcd1b,
    0x4876,
    [0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8],
);
const PAGE83: Guid = ms_guid(
    0xbeca_12ab,
    0xb2e6,
    0x4523,
    [0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46],
);
const LOGICAL_SECTOR_SIZE: Guid = ms_guid(
    0x8141_bf1d,
    0xa96f,
    0x4709,
    [0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f],
);
const PHYSICAL_SECTOR_SIZE: Guid = ms_guid(
    0xcda3_48c7,
    0x445d,
    0x4471,
    [0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56],
);
const PARENT_LOCATOR: Guid = ms_guid(
    0xa8d3_5f2d,
    0xb30b,
    0x454d,
    [0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c],
);

/// The known items, in the order of the `present` bits.
const KNOWN: [Guid; 6] = [
    FILE_PARAMETERS,
    VIRTUAL_DISK_SIZE,
    PAGE83,
    LOGICAL_SECTOR_SIZE,
    PHYSICAL_SECTOR_SIZE,
    PARENT_LOCATOR,
];

/// What the metadata says about the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Payload block size.
    pub block_size: u64,
    /// File parameter flags (PARAMS_*).
    pub params_flags: u32,
    /// Virtual disk size in bytes.
    pub virtual_disk_size: u64,
    /// Logical sector size, 512 or 4096.
    pub logical_sector_size: u32,
    /// Physical sector size.
    pub physical_sector_size: u32,
}

impl Metadata {
    /// How many payload blocks each sector bitmap block covers (s->chunk_ratio).
    pub fn chunk_ratio(&self) -> u64 {
        (1u64 << 23) * self.logical_sector_size as u64 / self.block_size
    }
}

/// An item's entry: where it is in the region, how long.
#[derive(Clone, Copy)]
struct Entry {
    offset: u32,
    length: u32,
}

/// Reads an item of at least `len` bytes, which must lie inside the region.
async fn read_item(
    file: &BlockDriverState,
    region: &Region,
    e: Entry,
    len: usize,
) -> Result<Vec<u8>> {
    if (e.length as usize) < len || e.offset as u64 + len as u64 > region.length as u64 {
        return Err(Error::from_errno(libc::EINVAL));
    }
    read_bytes(file, region.file_offset + e.offset as u64, len).await
}

/// Parses the table, then reads and checks the items (vhdx_parse_metadata).
pub async fn read_metadata(file: &BlockDriverState, region: &Region) -> Result<Metadata> {
    let einval = || Error::from_errno(libc::EINVAL);
    if (region.length as usize) < TABLE_SIZE {
        return Err(einval());
    }
    let table = read_bytes(file, region.file_offset, TABLE_SIZE).await?;
    if &table[0..8] != SIGNATURE {
        return Err(einval());
    }
    let count = u16::from_le_bytes([table[10], table[11]]) as usize;
    if count * 32 > TABLE_SIZE - 32 {
        return Err(einval());
    }
    let mut found: [Option<Entry>; 6] = [None; 6];
    for i in 0..count {
        let e = &table[32 + i * 32..64 + i * 32];
        let entry = Entry {
            offset: le_u32(e, 16),
            length: le_u32(e, 20),
        };
        match KNOWN.iter().position(|g| g[..] == e[0..16]) {
            Some(k) if found[k].is_some() => return Err(einval()),
            Some(k) => found[k] = Some(entry),
            None if le_u32(e, 24) & FLAG_IS_REQUIRED != 0 => {
                return Err(Error::from_errno(libc::ENOTSUP))
            }
            None => {}
        }
    }
    let [Some(params), Some(size), Some(_page83), Some(logical), Some(physical), locator] = found
    else {
        return Err(Error::from_errno(libc::ENOTSUP));
    };
    let params = read_item(file, region, params, 8).await?;
    let params_flags = le_u32(&params, 4);
    if params_flags & PARAMS_HAS_PARENT != 0 {
        return Err(match locator {
            Some(_) => Error::not_supported("vhdx: differencing images are not supported"),
            None => einval(),
        });
    }
    let md = Metadata {
        block_size: le_u32(&params, 0) as u64,
        params_flags,
        virtual_disk_size: le_u64(&read_item(file, region, size, 8).await?, 0),
        logical_sector_size: le_u32(&read_item(file, region, logical, 4).await?, 0),
        physical_sector_size: le_u32(&read_item(file, region, physical, 4).await?, 0),
    };
    if !(BLOCK_SIZE_MIN..=BLOCK_SIZE_MAX).contains(&md.block_size)
        || !md.block_size.is_power_of_two()
        || !matches!(md.logical_sector_size, 512 | 4096)
    {
        return Err(einval());
    }
    Ok(md)
}

/// The metadata region of a new image: the table and the five required items
/// (vhdx_create_new_metadata).
pub fn new_metadata(size: u64, block_size: u32, sector_size: u32, fixed: bool) -> Vec<u8> {
    let flags = if fixed {
        PARAMS_LEAVE_BLOCKS_ALLOCATED
    } else {
        0
    };
    let mut params = block_size.to_le_bytes().to_vec();
    params.extend(flags.to_le_bytes());
    let disk = FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK;
    let items: [(Guid, u32, Vec<u8>); 5] = [
        (FILE_PARAMETERS, FLAG_IS_REQUIRED, params),
        (VIRTUAL_DISK_SIZE, disk, size.to_le_bytes().to_vec()),
        (PAGE83, disk, random_uuid().to_vec()),
        (
            LOGICAL_SECTOR_SIZE,
            disk,
            sector_size.to_le_bytes().to_vec(),
        ),
        (
            PHYSICAL_SECTOR_SIZE,
            disk,
            sector_size.to_le_bytes().to_vec(),
        ),
    ];
    let mut region = vec![0u8; ITEMS_OFFSET as usize];
    region[0..8].copy_from_slice(SIGNATURE);
    region[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
    for (i, (guid, flags, data)) in items.iter().enumerate() {
        let offset = region.len() as u32;
        let e = &mut region[32 + i * 32..64 + i * 32];
        e[0..16].copy_from_slice(guid);
        e[16..20].copy_from_slice(&offset.to_le_bytes());
        e[20..24].copy_from_slice(&(data.len() as u32).to_le_bytes());
        e[24..28].copy_from_slice(&flags.to_le_bytes());
        region.extend_from_slice(data);
    }
    region
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_metadata_lays_the_items_after_the_table() {
        let m = new_metadata(1 << 30, 8 << 20, 512, true);
        assert_eq!(&m[0..8], SIGNATURE);
        assert_eq!(m.len(), 64 * 1024 + 8 + 8 + 16 + 4 + 4);
        assert_eq!(le_u32(&m, 64 * 1024), 8 << 20);
        assert_eq!(le_u32(&m, 64 * 1024 + 4), PARAMS_LEAVE_BLOCKS_ALLOCATED);
        assert_eq!(le_u64(&m, 64 * 1024 + 8), 1 << 30);
    }
}
