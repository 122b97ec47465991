//! The bochs format driver, read-only: the Bochs emulator's growing "redolog" images
//! (QEMU's block/bochs.c).
//!
//! A 512-byte little-endian header is followed by the catalog, one 32-bit entry per extent
//! of the disk: the index of the extent's slot in the data area, or 0xffffffff when it was
//! never written. Each slot is a bitmap (one bit per sector, set when the sector is
//! stored) followed by the extent's sectors. Unwritten extents and sectors read as zeroes.

use std::rc::Rc;

use async_trait::async_trait;
use block::driver::{DriverClass, RequestFlags};
use block::{BlockDriverState, Error, IoVector, Result};

use crate::image_file::read_bytes;
use crate::read_only::{self, ReadOnlyFormat, SECTOR_SIZE};

/// The class registered as `bochs`.
pub static BOCHS: DriverClass = read_only::class("bochs", probe, |bs, _options| {
    Box::pin(read_only::open(bs, read_image))
});

const HEADER_SIZE: usize = 512;
const MAGIC: &[u8] = b"Bochs Virtual HD Image";
const REDOLOG_TYPE: &[u8] = b"Redolog";
const GROWING_TYPE: &[u8] = b"Growing";
const HEADER_VERSION: u32 = 0x0002_0000;
const HEADER_V1: u32 = 0x0001_0000;
/// Most catalog entries QEMU reads: enough for the largest image bximage makes (~8 TB).
const MAX_CATALOG: u32 = 0x10_0000;
/// Largest extent QEMU accepts.
const MAX_EXTENT: u32 = 0x80_0000;
const UNALLOCATED: u32 = 0xffff_ffff;

/// The C string held in a fixed-size header field.
fn c_str(field: &[u8]) -> &[u8] {
    &field[..field.iter().position(|&c| c == 0).unwrap_or(field.len())]
}

fn le32(h: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(h[at..at + 4].try_into().unwrap())
}

fn le64(h: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(h[at..at + 8].try_into().unwrap())
}

/// The header's version if it is a growing redolog of a known version.
fn version_of(h: &[u8]) -> Option<u32> {
    let version = le32(h, 64);
    (c_str(&h[0..32]) == MAGIC
        && c_str(&h[32..48]) == REDOLOG_TYPE
        && c_str(&h[48..64]) == GROWING_TYPE
        && (version == HEADER_VERSION || version == HEADER_V1))
        .then_some(version)
}

/// Scores 100 for a growing redolog header (bochs_probe).
fn probe(buf: &[u8], _filename: &str) -> u32 {
    if buf.len() >= HEADER_SIZE && version_of(buf).is_some() {
        100
    } else {
        0
    }
}

/// An open bochs image.
pub struct Bochs {
    catalog: Vec<u32>,
    /// Where slot 0 begins: right after the catalog.
    data_offset: u64,
    /// Sectors of a slot's bitmap and of its extent.
    bitmap_blocks: u64,
    extent_blocks: u64,
    extent_size: u64,
    total_sectors: u64,
}

/// Reads and checks the header and the catalog, with QEMU's messages.
async fn read_image(file: Rc<BlockDriverState>) -> Result<Bochs> {
    let h = read_bytes(&file, 0, HEADER_SIZE).await?;
    let version = version_of(&h).ok_or_else(|| Error::invalid("Image not in Bochs format"))?;
    // Version 2 has a reserved word before the disk size.
    let disk_size = if version == HEADER_V1 {
        le64(&h, 84)
    } else {
        le64(&h, 88)
    };
    let total_sectors = disk_size / SECTOR_SIZE;
    let catalog_size = le32(&h, 72);
    if catalog_size > MAX_CATALOG {
        return Err(Error::new(libc::EFBIG, "Catalog size is too large"));
    }
    let header_len = le32(&h, 68) as u64;
    let raw = read_bytes(&file, header_len, catalog_size as usize * 4).await?;
    let catalog = raw
        .chunks_exact(4)
        .map(|e| u32::from_le_bytes(e.try_into().unwrap()))
        .collect();
    let bitmap = le32(&h, 76);
    let extent = le32(&h, 80);
    if extent < SECTOR_SIZE as u32 {
        return Err(Error::invalid("Extent size must be at least 512"));
    }
    if extent > MAX_EXTENT {
        return Err(Error::invalid(format!("Extent size {extent} is too large")));
    }
    let sectors_per_extent = extent as u64 / SECTOR_SIZE;
    if (catalog_size as u64) < total_sectors.div_ceil(sectors_per_extent) {
        return Err(Error::invalid(
            "Catalog size is too small for this disk size",
        ));
    }
    Ok(Bochs {
        catalog,
        data_offset: header_len + catalog_size as u64 * 4,
        bitmap_blocks: 1 + (bitmap.wrapping_sub(1) / 512) as u64,
        extent_blocks: 1 + (extent as u64 - 1) / 512,
        extent_size: extent as u64,
        total_sectors,
    })
}

impl Bochs {
    /// The file offset of a disk sector, or None when it was never written
    /// (seek_to_sector).
    async fn sector_offset(&self, file: &BlockDriverState, sector: u64) -> Result<Option<u64>> {
        let offset = sector * SECTOR_SIZE;
        let extent_index = (offset / self.extent_size) as usize;
        let in_extent = (offset % self.extent_size) / SECTOR_SIZE;
        // The open check made the catalog cover the disk.
        let slot = self.catalog[extent_index];
        if slot == UNALLOCATED {
            return Ok(None);
        }
        // A hostile slot index could point past any 64-bit offset.
        let bitmap_offset = (SECTOR_SIZE * (self.extent_blocks + self.bitmap_blocks))
            .checked_mul(slot as u64)
            .and_then(|o| o.checked_add(self.data_offset))
            .ok_or_else(|| Error::from_errno(libc::EIO))?;
        let bits = read_bytes(file, bitmap_offset + in_extent / 8, 1).await?;
        if (bits[0] >> (in_extent % 8)) & 1 == 0 {
            return Ok(None);
        }
        Ok(Some(
            bitmap_offset + SECTOR_SIZE * (self.bitmap_blocks + in_extent),
        ))
    }
}

#[async_trait(?Send)]
impl ReadOnlyFormat for Bochs {
    async fn read(&self, file: &BlockDriverState, offset: u64, qiov: &IoVector) -> Result<()> {
        let first = offset / SECTOR_SIZE;
        for i in 0..qiov.len() as u64 / SECTOR_SIZE {
            let part = qiov.slice((i * SECTOR_SIZE) as usize, SECTOR_SIZE as usize);
            match self.sector_offset(file, first + i).await? {
                Some(at) => file.co_preadv(at, &part, RequestFlags::empty()).await?,
                None => part.fill(0, SECTOR_SIZE as usize, 0),
            }
        }
        Ok(())
    }

    fn length(&self) -> u64 {
        self.total_sectors * SECTOR_SIZE
    }
}
