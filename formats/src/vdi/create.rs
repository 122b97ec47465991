//! Creating a VDI image (QEMU's vdi_co_do_create in block/vdi.c).
//!
//! A new image is the header, the block map rounded to whole sectors, and for a static
//! image the whole data area, every block mapped in place; a dynamic image maps nothing.

use block::driver::CreateOption;
use block::{Error, Options, Result};

use super::header::{
    Header, BLOCK_SIZE, DISK_SIZE_MAX, QEMU_TEXT, SECTOR_SIZE, SIGNATURE, TYPE_DYNAMIC,
    TYPE_STATIC, UNALLOCATED, VERSION_1_1,
};
use crate::image_file::{create_image_file, random_uuid, write_bytes};

/// Creation options in QEMU's order (vdi_create_opts).
pub const CREATE_OPTIONS: [CreateOption; 2] = [
    CreateOption {
        name: "size",
        kind: "size",
        help: "Virtual disk size",
        default: None,
    },
    CreateOption {
        name: "static",
        kind: "bool",
        help: "VDI static (pre-allocated) image",
        default: Some("off"),
    },
];

/// The header of a new image of `size` bytes.
pub fn new_header(size: u64, static_image: bool) -> Result<Header> {
    let size = size.div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
    if size > DISK_SIZE_MAX {
        return Err(Error::invalid(format!(
            "Unsupported VDI image size (size is 0x{size:x}, max supported is 0x{DISK_SIZE_MAX:x})"
        )));
    }
    let blocks = size.div_ceil(BLOCK_SIZE as u64) as u32;
    let bmap_bytes = (blocks as u64 * 4).div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
    let mut text = [0u8; 64];
    text[..QEMU_TEXT.len()].copy_from_slice(QEMU_TEXT);
    Ok(Header {
        text,
        signature: SIGNATURE,
        version: VERSION_1_1,
        header_size: 0x180,
        image_type: if static_image {
            TYPE_STATIC
        } else {
            TYPE_DYNAMIC
        },
        image_flags: 0,
        description: [0; 256],
        offset_bmap: SECTOR_SIZE as u32,
        offset_data: (SECTOR_SIZE + bmap_bytes) as u32,
        cylinders: 0,
        heads: 0,
        sectors: 0,
        sector_size: SECTOR_SIZE as u32,
        disk_size: size,
        block_size: BLOCK_SIZE,
        block_extra: 0,
        blocks_in_image: blocks,
        blocks_allocated: if static_image { blocks } else { 0 },
        uuid_image: random_uuid(),
        uuid_last_snap: random_uuid(),
        uuid_link: [0; 16],
        uuid_parent: [0; 16],
    })
}

/// Creates a VDI image at `filename` (vdi_co_create_opts).
pub async fn create(filename: &str, options: &mut Options) -> Result<()> {
    let size = options
        .take_size("size")?
        .ok_or_else(|| Error::invalid("Image creation needs a size parameter"))?;
    let static_image = options.take_bool("static")?.unwrap_or(false);
    let h = new_header(size, static_image)?;
    let file = create_image_file(filename, options).await?;
    let mut image = h.serialise();
    image.extend((0..h.blocks_in_image).flat_map(|block| {
        let entry = if static_image { block } else { UNALLOCATED };
        entry.to_le_bytes()
    }));
    image.resize(h.offset_data as usize, 0);
    let mut result = write_bytes(&file, 0, &image).await;
    if result.is_ok() && static_image {
        let end = h.offset_data as u64 + h.blocks_in_image as u64 * BLOCK_SIZE as u64;
        result = file
            .co_truncate(end, false, block::driver::PreallocMode::Off)
            .await;
    }
    let flushed = file.co_flush().await;
    let closed = file.close().await;
    result.and(flushed).and(closed)
}
