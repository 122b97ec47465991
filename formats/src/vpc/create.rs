//! Creating a VHD image (QEMU's vpc_co_create, create_dynamic_disk and create_fixed_disk
//! in block/vpc.c).
//!
//! The size is rounded up to what a CHS geometry can address, as Virtual PC expects,
//! unless `force_size` keeps it exact: then the geometry is the maximum and the creator
//! is recorded as "qem2", which tells readers to trust the byte count.

use block::driver::{CreateOption, PreallocMode};
use block::{Error, Options, Result};

use super::dynamic::{DynHeader, DEFAULT_BLOCK_SIZE, DYN_HEADER_SIZE};
use super::footer::{
    Footer, Geometry, FOOTER_SIZE, MAX_GEOMETRY, MAX_SECTORS, TIMESTAMP_BASE, TYPE_DYNAMIC,
    TYPE_FIXED,
};
use crate::image_file::{create_image_file, random_uuid, write_bytes};

/// Creation options in QEMU's order (vpc_create_opts).
pub const CREATE_OPTIONS: [CreateOption; 3] = [
    CreateOption {
        name: "size",
        kind: "size",
        help: "Virtual disk size",
        default: None,
    },
    CreateOption {
        name: "subformat",
        kind: "str",
        help: "Type of virtual hard disk format. Supported formats are {dynamic (default) | fixed} ",
        default: None,
    },
    CreateOption {
        name: "force_size",
        kind: "bool",
        help: "Force disk size calculation to use the actual size specified, rather than using the nearest CHS-based calculation",
        default: None,
    },
];

/// The geometry and sector count a requested size becomes.
pub fn size_and_geometry(size: u64, force_size: bool) -> Result<(Geometry, u64)> {
    let wanted = size / 512;
    let geometry = if force_size {
        Geometry::MAX
    } else {
        // The specification's geometry may fall short: grow until it covers the size.
        let mut g = Geometry::for_sectors(wanted);
        let mut extra = 0;
        while wanted > g.sectors() && g.sectors() < MAX_GEOMETRY {
            extra += 1;
            g = Geometry::for_sectors(wanted + extra);
        }
        g
    };
    if geometry.sectors() != MAX_GEOMETRY {
        return Ok((geometry, geometry.sectors()));
    }
    if wanted > MAX_SECTORS {
        return Err(Error::new(
            libc::EFBIG,
            "Disk size is too large, max size is 2040 GiB",
        ));
    }
    Ok((geometry, wanted))
}

/// Creates a VHD image at `filename` (vpc_co_create_opts).
pub async fn create(filename: &str, options: &mut Options) -> Result<()> {
    let size = options
        .take_size("size")?
        .ok_or_else(|| Error::invalid("Image creation needs a size parameter"))?;
    let fixed = match options.take("subformat").as_deref() {
        None | Some("dynamic") => false,
        Some("fixed") => true,
        Some(other) => {
            return Err(Error::invalid(format!(
                "Parameter 'subformat' does not accept value '{other}'"
            )))
        }
    };
    let force_size = options.take_bool("force_size")?.unwrap_or(false);
    let prealloc = match options.get("preallocation") {
        Some(p) if fixed => PreallocMode::parse(p)?,
        _ => PreallocMode::Off,
    };
    // QEMU makes the file before it looks at the size: a refused size leaves it empty.
    let file = create_image_file(filename, options).await?;
    let (geometry, sectors) = size_and_geometry(size, force_size)?;
    let total = sectors * 512;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let footer = Footer {
        features: 2,
        version: 0x0001_0000,
        data_offset: if fixed { u64::MAX } else { FOOTER_SIZE as u64 },
        timestamp: now.saturating_sub(TIMESTAMP_BASE) as u32,
        creator_app: if force_size { *b"qem2" } else { *b"qemu" },
        creator_ver: 0x0005_0003,
        creator_os: 0x5769_326b,
        orig_size: total,
        current_size: total,
        geometry,
        disk_type: if fixed { TYPE_FIXED } else { TYPE_DYNAMIC },
        checksum: 0,
        uuid: random_uuid(),
    }
    .serialise();
    let result = if fixed {
        match file
            .co_truncate(total + FOOTER_SIZE as u64, false, prealloc)
            .await
        {
            Ok(()) => write_bytes(&file, total, &footer).await,
            Err(e) => Err(e),
        }
    } else {
        write_bytes(&file, 0, &dynamic_image(sectors, &footer)).await
    };
    let flushed = file.co_flush().await;
    let closed = file.close().await;
    result.and(flushed).and(closed)
}

/// A new dynamic image: footer copy, dynamic header, an empty table, footer.
fn dynamic_image(sectors: u64, footer: &[u8]) -> Vec<u8> {
    let blocks = sectors.div_ceil(DEFAULT_BLOCK_SIZE as u64 / 512);
    let table_offset = (FOOTER_SIZE + DYN_HEADER_SIZE) as u64;
    let header = DynHeader {
        table_offset,
        max_table_entries: blocks as u32,
        block_size: DEFAULT_BLOCK_SIZE,
    };
    let mut image = footer.to_vec();
    image.extend(header.serialise());
    let table_bytes = (blocks * 4).div_ceil(512) * 512;
    image.resize((table_offset + table_bytes) as usize, 0xff);
    image.extend_from_slice(footer);
    image
}
