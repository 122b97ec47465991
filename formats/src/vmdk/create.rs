//! Creating VMDK images in each subformat (vmdk_co_create_opts, vmdk_co_do_create,
//! vmdk_init_extent and filename_decompose in QEMU's block/vmdk.c).
//!
//! monolithicSparse and streamOptimized images are one sparse extent with the descriptor
//! embedded at sector 1; monolithicFlat is a descriptor file plus `NAME-flat.vmdk`; the
//! twoGbMaxExtent subformats split the disk into 2 GiB extents `NAME-s001.vmdk` or
//! `NAME-f001.vmdk`... listed by a descriptor file. Sparse extents get both grain
//! directories and every grain table up front, so writes never allocate metadata.

use std::rc::Rc;

use block::driver::{CreateOption, PreallocMode};
use block::{BlockDriverState, Error, OpenFlags, Options, Result};

use super::descriptor::{NewDescriptor, DESC_SIZE};
use super::header::{
    Vmdk4Header, COMPRESSION_DEFLATE, FLAG_COMPRESS, FLAG_MARKER, FLAG_NL_DETECT, FLAG_RGD,
    FLAG_ZERO_GRAIN,
};
use super::open::EMBEDDED_DESC_OFFSET;
use crate::image_file::{create_image_file, write_bytes};

/// Creation options in QEMU's order (vmdk_create_opts).
pub const CREATE_OPTIONS: [CreateOption; 9] = [
    CreateOption {
        name: "size",
        kind: "size",
        help: "Virtual disk size",
        default: None,
    },
    CreateOption {
        name: "adapter_type",
        kind: "str",
        help: "Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX",
        default: None,
    },
    CreateOption {
        name: "backing_file",
        kind: "str",
        help: "File name of a base image",
        default: None,
    },
    CreateOption {
        name: "backing_fmt",
        kind: "str",
        help: "Must be 'vmdk' if present",
        default: None,
    },
    CreateOption {
        name: "compat6",
        kind: "bool",
        help: "VMDK version 6 image",
        default: Some("off"),
    },
    CreateOption {
        name: "hwversion",
        kind: "str",
        help: "VMDK hardware version",
        default: Some("undefined"),
    },
    CreateOption {
        name: "toolsversion",
        kind: "str",
        help: "VMware guest tools version",
        default: None,
    },
    CreateOption {
        name: "subformat",
        kind: "str",
        help: "VMDK flat extent format, can be one of {monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | streamOptimized} ",
        default: None,
    },
    CreateOption {
        name: "zeroed_grain",
        kind: "bool",
        help: "Enable efficient zero writes using the zeroed-grain GTE feature",
        default: None,
    },
];

/// The adapter types VMware knows (BlockdevVmdkAdapterType).
const ADAPTER_TYPES: [&str; 4] = ["ide", "buslogic", "lsilogic", "legacyESX"];
/// The subformats QEMU creates (BlockdevVmdkSubformat).
const SUBFORMATS: [&str; 5] = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
];
/// Size of each extent of the split subformats.
const SPLIT_SIZE: u64 = 0x8000_0000;
/// Sectors per grain of new sparse extents (64 KiB grains).
const GRANULARITY: u64 = 128;
/// Grain table entries of new sparse extents.
const GTES_PER_GT: u64 = 512;

/// The header and both grain directories of a new sparse extent of `size` bytes
/// (vmdk_init_extent): (header, redundant directory, directory), each with its offset.
pub fn sparse_extent_layout(
    size: u64,
    compress: bool,
    zeroed_grain: bool,
) -> (Vmdk4Header, Vec<u8>, Vec<u8>) {
    let capacity = size / 512;
    let grains = capacity.div_ceil(GRANULARITY);
    let gt_sectors = (GTES_PER_GT * 4).div_ceil(512);
    let gt_count = grains.div_ceil(GTES_PER_GT);
    let gd_sectors = (gt_count * 4).div_ceil(512);
    let rgd_offset = 1 + 20;
    let gd_offset = rgd_offset + gd_sectors + gt_sectors * gt_count;
    let h = Vmdk4Header {
        version: if compress {
            3
        } else if zeroed_grain {
            2
        } else {
            1
        },
        flags: FLAG_RGD
            | FLAG_NL_DETECT
            | if compress {
                FLAG_COMPRESS | FLAG_MARKER
            } else {
                0
            }
            | if zeroed_grain { FLAG_ZERO_GRAIN } else { 0 },
        capacity,
        granularity: GRANULARITY,
        desc_offset: 1,
        desc_size: 20,
        num_gtes_per_gt: GTES_PER_GT as u32,
        rgd_offset,
        gd_offset,
        grain_offset: (gd_offset + gd_sectors + gt_sectors * gt_count)
            .next_multiple_of(GRANULARITY),
        compress_algorithm: if compress { COMPRESSION_DEFLATE } else { 0 },
    };
    // Each directory points at the grain tables that follow it.
    let directory = |at: u64| -> Vec<u8> {
        let mut gd = vec![0u8; (gd_sectors * 512) as usize];
        for i in 0..gt_count {
            let gt = (at + gd_sectors + i * gt_sectors) as u32;
            gd[i as usize * 4..i as usize * 4 + 4].copy_from_slice(&gt.to_le_bytes());
        }
        gd
    };
    (h, directory(rgd_offset), directory(gd_offset))
}

/// What one create call asks for.
struct Request {
    size: u64,
    subformat: String,
    adapter_type: String,
    backing_file: Option<String>,
    hw_version: String,
    tools_version: String,
    zeroed_grain: bool,
}

/// Reads and checks the options (vmdk_co_create_opts).
fn take_request(options: &mut Options) -> Result<Request> {
    let backing_fmt = options.take("backing_fmt");
    if backing_fmt.as_deref().is_some_and(|f| f != "vmdk") {
        return Err(Error::invalid("backing_file must be a vmdk image"));
    }
    let size = options.take_size("size")?.unwrap_or(0).div_ceil(512) * 512;
    let enum_value = |v: Option<String>, allowed: &[&str], default: &str| match v {
        None => Ok(default.to_string()),
        Some(v) if allowed.contains(&v.as_str()) => Ok(v),
        Some(v) => Err(Error::invalid(format!("invalid parameter value: {v}"))),
    };
    let adapter_type = options.take("adapter_type");
    let backing_file = options.take("backing_file");
    let hw_version = options.take("hwversion").filter(|v| v != "undefined");
    let tools_version = options.take("toolsversion");
    let compat6 = options.take_bool("compat6")?.unwrap_or(false);
    let subformat = options.take("subformat");
    let zeroed_grain = options.take_bool("zeroed_grain")?.unwrap_or(false);
    let adapter_type = enum_value(adapter_type, &ADAPTER_TYPES, "ide")?;
    let subformat = enum_value(subformat, &SUBFORMATS, "monolithicSparse")?;
    if compat6 && hw_version.is_some() {
        return Err(Error::invalid(
            "compat6 cannot be enabled with hwversion set",
        ));
    }
    let hw_version = match (compat6, hw_version) {
        (true, _) => "6".to_string(),
        (false, v) => v.unwrap_or_else(|| "4".to_string()),
    };
    Ok(Request {
        size,
        subformat,
        adapter_type,
        backing_file,
        hw_version,
        tools_version: tools_version.unwrap_or_else(|| "2147483647".to_string()),
        zeroed_grain,
    })
}

/// Splits a file name into directory (with its slash), stem and extension (with its dot)
/// (filename_decompose).
fn decompose(filename: &str) -> Result<(&str, &str, &str)> {
    if filename.is_empty() {
        return Err(Error::invalid("No filename provided"));
    }
    let base_at = filename.rfind(['/', '\\', ':']).map_or(0, |i| i + 1);
    let (path, base) = filename.split_at(base_at);
    let (prefix, postfix) = base.rfind('.').map_or((base, ""), |i| base.split_at(i));
    Ok((path, prefix, postfix))
}

/// Creates an extent file and opens it for writing.
async fn create_file(name: &str, options: &Options) -> Result<Rc<BlockDriverState>> {
    create_image_file(name, &mut options.clone()).await
}

/// Writes a new sparse extent's metadata, or sizes a flat one (vmdk_init_extent).
async fn init_extent(
    file: &BlockDriverState,
    size: u64,
    flat: bool,
    compress: bool,
    zeroed_grain: bool,
) -> Result<()> {
    if flat {
        return file.co_truncate(size, false, PreallocMode::Off).await;
    }
    let (h, rgd, gd) = sparse_extent_layout(size, compress, zeroed_grain);
    write_bytes(file, 0, &h.serialise()).await?;
    file.co_truncate(h.grain_offset * 512, false, PreallocMode::Off)
        .await?;
    write_bytes(file, h.rgd_offset * 512, &rgd).await?;
    write_bytes(file, h.gd_offset * 512, &gd).await
}

/// The CID of the backing image, which must be a VMDK image.
async fn parent_cid(filename: &str, backing: &str) -> Result<u32> {
    let path = block::open::resolve_relative(filename, backing);
    let flags = OpenFlags {
        read_only: true,
        no_backing: true,
        ..OpenFlags::default()
    };
    let bs = block::bdrv_open(Some(&path), Options::new(), flags).await?;
    let result = if bs.format_name() != "vmdk" {
        Err(Error::invalid(format!(
            "Invalid backing file format: {}. Must be vmdk",
            bs.format_name()
        )))
    } else {
        super::Vmdk::of(&bs)
            .read_cid(&bs, false)
            .await
            .map_err(|_| Error::invalid("Failed to read parent CID"))
    };
    let _ = bs.close().await;
    result
}

/// Creates a VMDK image at `filename` (vmdk_co_create_opts + vmdk_co_do_create).
pub async fn create(filename: &str, options: &mut Options) -> Result<()> {
    let r = take_request(options)?;
    let (path, prefix, postfix) = decompose(filename)?;
    let split = r.subformat.starts_with("twoGbMaxExtent");
    let flat = r.subformat.ends_with("Flat");
    let compress = r.subformat == "streamOptimized";
    if flat && r.backing_file.is_some() {
        return Err(Error::not_supported("Flat image can't have backing file"));
    }
    if flat && r.zeroed_grain {
        return Err(Error::not_supported("Flat image can't enable zeroed grain"));
    }
    let monolithic_sparse = !split && !flat;
    let desc_file = create_file(filename, options).await?;
    let mut extent_lines = String::new();
    let line = |lines: &mut String, size: u64, name: &str| {
        let kind = if flat { "FLAT" } else { "SPARSE" };
        let offset = if flat { " 0" } else { "" };
        lines.push_str(&format!(
            "RW {} {kind} \"{name}\"{offset}\n",
            size.div_ceil(512)
        ));
    };
    let mut created = 0;
    if monolithic_sparse {
        init_extent(&desc_file, r.size, false, compress, r.zeroed_grain).await?;
        line(&mut extent_lines, r.size, &format!("{prefix}{postfix}"));
        created = r.size;
    }
    let parent_cid = match &r.backing_file {
        Some(b) => parent_cid(filename, b).await?,
        None => 0xffff_ffff,
    };
    let extent_size = if split { SPLIT_SIZE } else { r.size };
    let mut idx = 1;
    while created < r.size {
        let cur = (r.size - created).min(extent_size);
        let name = if split {
            let letter = if flat { 'f' } else { 's' };
            format!("{prefix}-{letter}{idx:03}{postfix}")
        } else {
            format!("{prefix}-flat{postfix}")
        };
        let file = create_file(&format!("{path}{name}"), options).await?;
        let result = init_extent(&file, cur, flat, compress, r.zeroed_grain).await;
        file.close().await?;
        result?;
        line(&mut extent_lines, cur, &name);
        created += cur;
        idx += 1;
    }
    let desc = NewDescriptor {
        cid: fastrand::u32(..),
        parent_cid,
        create_type: &r.subformat,
        parent: r.backing_file.as_deref(),
        extents: &extent_lines,
        hw_version: &r.hw_version,
        size: r.size,
        adapter_type: &r.adapter_type,
        tools_version: &r.tools_version,
    }
    .text();
    let result = if monolithic_sparse {
        let mut text = desc.into_bytes();
        text.truncate(DESC_SIZE);
        write_bytes(&desc_file, EMBEDDED_DESC_OFFSET, &text).await
    } else {
        write_bytes(&desc_file, 0, desc.as_bytes()).await
    };
    let flushed = desc_file.co_flush().await;
    let closed = desc_file.close().await;
    result.and(flushed).and(closed)
}

#[cfg(test)]
mod tests {
    use super::super::descriptor::read_cid;
    use super::*;

    #[test]
    fn file_names_decompose_like_qemu() {
        assert_eq!(decompose("/a/b/t.vmdk").unwrap(), ("/a/b/", "t", ".vmdk"));
        assert_eq!(decompose("t").unwrap(), ("", "t", ""));
    }

    #[test]
    fn sparse_layout_matches_qemu() {
        // A 1 MiB image as qemu-img creates it: directories at 21 and 26, grains at 128.
        let (h, rgd, gd) = sparse_extent_layout(1 << 20, true, false);
        assert_eq!((h.rgd_offset, h.gd_offset, h.grain_offset), (21, 26, 128));
        assert_eq!(h.version, 3);
        assert_eq!(&rgd[..4], &22u32.to_le_bytes());
        assert_eq!(&gd[..4], &27u32.to_le_bytes());
        let desc = NewDescriptor {
            cid: 0xc6cb80a5,
            parent_cid: 0xffffffff,
            create_type: "streamOptimized",
            parent: None,
            extents: "RW 2048 SPARSE \"s.vmdk\"\n",
            hw_version: "4",
            size: 1 << 20,
            adapter_type: "ide",
            tools_version: "2147483647",
        }
        .text();
        assert_eq!(read_cid(desc.as_bytes(), false).unwrap(), 0xc6cb80a5);
        assert!(desc.contains("ddb.geometry.cylinders = \"2\"\n"));
    }
}
