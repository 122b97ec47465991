//! Creating a VHDX image (QEMU's vhdx_co_create and vhdx_co_create_opts in block/vhdx.c).
//!
//! A new image is laid out as QEMU lays it: the header section (signature and creator,
//! two headers, two region tables), the log at 1 MiB, the BAT after it, the metadata
//! region after that, and payload blocks from 5 MiB past the BAT on. A fixed image has
//! every block placed up front; with `block_state_zero` (the default) the blocks are
//! marked as reading zeroes instead, which is not the spec's way but saves writing them.

use block::driver::CreateOption;
use block::{Error, Options, Result};

use super::bat::{
    entry, Layout, PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_NOT_PRESENT, PAYLOAD_BLOCK_ZERO,
};
use super::header::{
    new_region_table, Header, Region, FILE_SIGNATURE, HEADER_OFFSETS, HEADER_SECTION_END,
    HEADER_SIZE, MIB, REGION_TABLE_OFFSETS,
};
use super::metadata::{new_metadata, BLOCK_SIZE_MAX};
use crate::image_file::{create_image_file, finish_create, random_uuid, write_bytes};

/// Creation options in QEMU's order (vhdx_create_opts).
pub const CREATE_OPTIONS: [CreateOption; 5] = [
    CreateOption {
        name: "size",
        kind: "size",
        help: "Virtual disk size; max of 64TB.",
        default: None,
    },
    CreateOption {
        name: "log_size",
        kind: "size",
        help: "Log size; min 1MB.",
        default: Some("1048576"),
    },
    CreateOption {
        name: "block_size",
        kind: "size",
        help: "Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size.",
        default: Some("0"),
    },
    CreateOption {
        name: "subformat",
        kind: "str",
        help: "VHDX format type, can be either 'dynamic' or 'fixed'. Default is 'dynamic'.",
        default: None,
    },
    CreateOption {
        name: "block_state_zero",
        kind: "bool",
        help: "Force use of payload blocks of type 'ZERO'. Non-standard, but default.  Do not set to 'off' when using 'qemu-img convert' with subformat=dynamic.",
        default: None,
    },
];

/// The largest virtual disk (VHDX_MAX_IMAGE_SIZE).
const MAX_IMAGE_SIZE: u64 = 64 << 40;
/// The log new images get.
const DEFAULT_LOG_SIZE: u64 = MIB;
/// The sector size of new images.
const SECTOR_SIZE: u32 = 512;

/// Validated creation parameters.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Virtual size, a multiple of 512.
    pub size: u64,
    /// Log size, a multiple of 1 MiB.
    pub log_size: u64,
    /// Payload block size.
    pub block_size: u64,
    /// Every block placed up front.
    pub fixed: bool,
    /// Blocks marked as reading zeroes.
    pub zero_blocks: bool,
}

impl Params {
    /// Reads and checks the options as vhdx_co_create_opts rounds them and
    /// vhdx_co_create checks them.
    pub fn from_options(options: &mut Options) -> Result<Params> {
        let size = options
            .take_size("size")?
            .ok_or_else(|| Error::invalid("Image creation needs a size parameter"))?
            .div_ceil(512)
            * 512;
        let log_size = options
            .take_size("log_size")?
            .map(|l| l.div_ceil(MIB) * MIB);
        let block_size = options
            .take_size("block_size")?
            .map(|b| (b.div_ceil(MIB) * MIB).min(BLOCK_SIZE_MAX))
            .filter(|&b| b != 0);
        let fixed = match options.take("subformat").as_deref() {
            None | Some("dynamic") => false,
            Some("fixed") => true,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "Parameter 'subformat' does not accept value '{other}'"
                )))
            }
        };
        let zero_blocks = options.take_bool("block_state_zero")?.unwrap_or(true);
        if size > MAX_IMAGE_SIZE {
            return Err(Error::invalid("Image size too large; max of 64TB"));
        }
        let log_size = log_size.unwrap_or(DEFAULT_LOG_SIZE);
        if log_size > u32::MAX as u64 {
            return Err(Error::invalid("Log size must be smaller than 4 GB"));
        }
        if log_size < MIB {
            return Err(Error::invalid("Log size must be a multiple of 1 MB"));
        }
        let block_size = block_size.unwrap_or(match size {
            s if s > 32 << 40 => 64 * MIB,
            s if s > 100 << 30 => 32 * MIB,
            s if s > 1 << 30 => 16 * MIB,
            _ => 8 * MIB,
        });
        if !block_size.is_power_of_two() {
            return Err(Error::invalid("Block size must be a power of two"));
        }
        Ok(Params {
            size,
            log_size,
            block_size,
            fixed,
            zero_blocks,
        })
    }

    fn layout(&self) -> Layout {
        Layout {
            block_size: self.block_size,
            chunk_ratio: (1u64 << 23) * SECTOR_SIZE as u64 / self.block_size,
            size: self.size,
        }
    }
}

/// Where the structures of a new image go.
struct Placement {
    bat: Region,
    metadata: Region,
    /// Where payload blocks start.
    data: u64,
}

fn placement(p: &Params) -> Placement {
    let bat_len = (p.layout().bat_entries() * 8).div_ceil(MIB) * MIB;
    let bat = Region {
        file_offset: (HEADER_SECTION_END + p.log_size).div_ceil(MIB) * MIB,
        length: bat_len as u32,
    };
    let metadata = Region {
        file_offset: (bat.file_offset + bat_len).div_ceil(MIB) * MIB,
        length: MIB as u32,
    };
    Placement {
        bat,
        metadata,
        // Room for the metadata and 4 MiB to spare (vhdx_create_bat).
        data: bat.file_offset + bat_len + 5 * MIB,
    }
}

/// The BAT of a new image, or None when it is all zeroes and the file's own zeroes do
/// (vhdx_create_bat).
fn new_bat(p: &Params, place: &Placement) -> Option<Vec<u8>> {
    if !p.fixed && !p.zero_blocks {
        return None;
    }
    let state = match (p.zero_blocks, p.fixed) {
        (true, _) => PAYLOAD_BLOCK_ZERO,
        (false, true) => PAYLOAD_BLOCK_FULLY_PRESENT,
        (false, false) => PAYLOAD_BLOCK_NOT_PRESENT,
    };
    let layout = p.layout();
    let mut bat = vec![0u8; place.bat.length as usize];
    for block in 0..p.size.div_ceil(p.block_size) {
        let at = (place.data + block * p.block_size).div_ceil(MIB) * MIB;
        let i = layout.bat_index(block) * 8;
        bat[i..i + 8].copy_from_slice(&entry(state, at).to_le_bytes());
    }
    Some(bat)
}

/// The file identifier: the signature and the creator, in UTF-16.
fn file_identifier() -> Vec<u8> {
    let mut id = FILE_SIGNATURE.to_vec();
    for unit in "QEMU v10.0.2".encode_utf16() {
        id.extend(unit.to_le_bytes());
    }
    id
}

/// Writes every structure of a new image into `file`.
async fn write_image(file: &block::BlockDriverState, p: &Params) -> Result<()> {
    let place = placement(p);
    write_bytes(file, 0, &file_identifier()).await?;
    let mut h = Header {
        sequence_number: fastrand::u32(..) as u64,
        file_write_guid: random_uuid(),
        data_write_guid: random_uuid(),
        log_guid: [0; 16],
        log_version: 0,
        version: 1,
        log_length: p.log_size as u32,
        log_offset: HEADER_SECTION_END,
    };
    for at in HEADER_OFFSETS {
        write_bytes(file, at, &h.serialise(&[0; HEADER_SIZE])).await?;
        h.sequence_number += 1;
    }
    let end = place.data + if p.fixed { p.size } else { 0 };
    file.co_truncate(end, false, block::driver::PreallocMode::Off)
        .await?;
    if let Some(bat) = new_bat(p, &place) {
        write_bytes(file, place.bat.file_offset, &bat)
            .await
            .map_err(|e| e.context("Failed to write the BAT: "))?;
    }
    let table = new_region_table(place.bat, place.metadata);
    for at in REGION_TABLE_OFFSETS {
        write_bytes(file, at, &table).await?;
    }
    let md = new_metadata(p.size, p.block_size as u32, SECTOR_SIZE, p.fixed);
    write_bytes(file, place.metadata.file_offset, &md).await
}

/// Creates a VHDX image at `filename` (vhdx_co_create_opts).
pub async fn create(filename: &str, options: &mut Options) -> Result<()> {
    // QEMU makes the file before it looks at the options: a refused one leaves it empty.
    let file = create_image_file(filename, options).await?;
    let result = match Params::from_options(options) {
        Ok(p) => write_image(&file, &p).await,
        Err(e) => Err(e),
    };
    finish_create(&file, result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(opts: &[(&str, &str)]) -> Result<Params> {
        let mut o = Options::new();
        for (k, v) in opts {
            o.set(k, *v);
        }
        Params::from_options(&mut o)
    }

    #[test]
    fn sizes_are_rounded_and_checked_as_qemu_does() {
        let p = params(&[("size", "1000"), ("block_size", "3M"), ("log_size", "1")]);
        let e = p.unwrap_err().to_string();
        assert_eq!(e, "Block size must be a power of two");
        let p = params(&[("size", "1000"), ("block_size", "1G"), ("log_size", "1")]).unwrap();
        assert_eq!((p.size, p.block_size, p.log_size), (1024, 256 * MIB, MIB));
        let p = params(&[("size", "2G")]).unwrap();
        assert_eq!(
            (p.block_size, p.zero_blocks, p.fixed),
            (16 * MIB, true, false)
        );
        let e = params(&[("size", "65T")]).unwrap_err().to_string();
        assert_eq!(e, "Image size too large; max of 64TB");
        let e = params(&[("size", "1M"), ("log_size", "0")])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "Log size must be a multiple of 1 MB");
    }

    #[test]
    fn the_layout_matches_qemus() {
        let p = params(&[("size", "64M")]).unwrap();
        let place = placement(&p);
        assert_eq!(place.bat.file_offset, 2 * MIB);
        assert_eq!(place.metadata.file_offset, 3 * MIB);
        assert_eq!(place.data, 8 * MIB);
        let bat = new_bat(&p, &place).unwrap();
        assert_eq!(bat[0], PAYLOAD_BLOCK_ZERO as u8);
        let p = params(&[("size", "64M"), ("block_state_zero", "off")]).unwrap();
        assert!(new_bat(&p, &place).is_none());
    }
}
