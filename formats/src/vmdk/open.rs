//! Finding a VMDK image's extents (vmdk_open, vmdk_open_sparse, vmdk_open_vmdk4,
//! vmdk_open_vmfs_sparse, vmdk_open_se_sparse, vmdk_open_desc_file and vmdk_parse_extents
//! in QEMU's block/vmdk.c).
//!
//! The image file is either a sparse extent (with its descriptor embedded after the
//! header) or a text descriptor listing extent files, each opened as an `extents.N` child.
//! A sparse extent whose header has no capacity but a descriptor is itself a descriptor,
//! so descriptors can nest; the nesting is bounded so that a descriptor naming itself
//! fails instead of recursing forever.

use std::rc::Rc;

use block::coroutine::LocalBoxFuture;
use block::open::open_protocol_child;
use block::{BlockDriverState, Error, Options, Result};

use super::descriptor::{parse_description, parse_extents, DESCRIPTOR_FILE_TYPES};
use super::extent::{Extent, SeSparseAreas};
use super::header::{
    check_sesparse_volatile, magic, parse_vmdk3, SeSparseHeader, Vmdk4Header, FLAG_MARKER,
    FLAG_RGD, FLAG_ZERO_GRAIN, GD_AT_END, SESPARSE_HEADER_BYTES, VMDK3_HEADER_BYTES, VMDK3_MAGIC,
    VMDK4_HEADER_BYTES, VMDK4_MAGIC,
};
use crate::image_file::read_in_file;

/// Where an embedded descriptor starts in a sparse image file.
pub const EMBEDDED_DESC_OFFSET: u64 = 0x200;
/// Most of a descriptor read at once (vmdk_read_desc's bound).
pub const MAX_DESC_BYTES: u64 = (1 << 20) - 1;
/// Deepest nesting of descriptors inside sparse extents followed.
const MAX_DESC_DEPTH: u32 = 8;

/// The extents of an image and what the first header or descriptor said about it.
pub struct Opened {
    /// The extents in guest order.
    pub extents: Vec<Extent>,
    /// monolithicSparse, streamOptimized or the descriptor's createType.
    pub create_type: String,
    /// Where the CIDs are read and written: the embedded descriptor, or the file itself.
    pub desc_offset: u64,
    /// Whether the descriptor file holds no data (a descriptor-only image).
    pub descriptor_file: bool,
}

/// Reads a descriptor or header: the file from `offset`, at most 1 MiB
/// (vmdk_read_desc).
pub async fn read_desc(file: &BlockDriverState, offset: u64) -> Result<Vec<u8>> {
    let size = file.getlength();
    if size < 4 {
        return Err(Error::invalid("File is too small, not a valid image"));
    }
    read_in_file(file, offset, size.min(MAX_DESC_BYTES))
        .await
        .map_err(|e| Error::with_errno_message(e.errno(), "Could not read from file"))
}

/// Opens the extents of the image on `bs`'s file (vmdk_open's first half).
pub async fn open_extents(bs: &BlockDriverState, options: &mut Options) -> Result<Opened> {
    let file = bs.file().expect("format nodes have a file child");
    let buf = read_desc(&file, 0).await?;
    let mut o = Opened {
        extents: Vec::new(),
        create_type: String::new(),
        desc_offset: 0,
        descriptor_file: false,
    };
    match magic(&buf) {
        VMDK3_MAGIC | VMDK4_MAGIC => {
            open_sparse(bs, file, &buf, options, &mut o, 0).await?;
            o.desc_offset = EMBEDDED_DESC_OFFSET;
        }
        _ => {
            o.descriptor_file = true;
            open_desc_file(bs, &buf, options, &mut o, 0).await?;
        }
    }
    if o.create_type.is_empty() {
        o.create_type = "monolithicSparse".into();
    }
    Ok(o)
}

/// Most sectors a disk may have, so that its size in bytes fits QEMU's int64_t.
const MAX_TOTAL_SECTORS: u64 = i64::MAX as u64 / 512;

/// Appends an extent after the ones already open.
fn push_extent(o: &mut Opened, mut extent: Extent) -> Result<()> {
    let start = o.extents.last().map_or(0, |e| e.end_sector);
    extent.end_sector = start
        .checked_add(extent.sectors)
        .filter(|&end| end <= MAX_TOTAL_SECTORS)
        .ok_or_else(|| Error::new(libc::EFBIG, "VMDK image is too large"))?;
    o.extents.push(extent);
    Ok(())
}

/// Opens a sparse extent by its magic (vmdk_open_sparse).
fn open_sparse<'a>(
    bs: &'a BlockDriverState,
    file: Rc<BlockDriverState>,
    buf: &'a [u8],
    options: &'a mut Options,
    o: &'a mut Opened,
    depth: u32,
) -> LocalBoxFuture<'a, Result<()>> {
    Box::pin(async move {
        match magic(buf) {
            VMDK3_MAGIC => {
                let header = padded(&file, 0, VMDK3_HEADER_BYTES).await?;
                let extent = Extent::open_sparse(file, &parse_vmdk3(&header), 4).await?;
                push_extent(o, extent)
            }
            VMDK4_MAGIC => open_vmdk4(bs, file, options, o, depth).await,
            _ => Err(Error::invalid("Image not in VMDK format")),
        }
    })
}

/// `len` bytes at `offset`, zero-padded where the file is shorter.
async fn padded(file: &BlockDriverState, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut b = read_in_file(file, offset, len as u64).await?;
    b.resize(len, 0);
    Ok(b)
}

/// A streamOptimized image's real header, in the footer before the end-of-stream marker.
async fn read_footer(file: &BlockDriverState) -> Result<Vmdk4Header> {
    let at = file.getlength().checked_sub(1536);
    let footer = match at {
        Some(at) => padded(file, at, 1536).await?,
        None => return Err(Error::invalid("Invalid footer")),
    };
    let le32 = |i: usize| u32::from_le_bytes(footer[i..i + 4].try_into().expect("4 bytes"));
    let eos_val = u64::from_le_bytes(footer[1024..1032].try_into().expect("8 bytes"));
    // The footer marker: size 0, type 3 (footer); then the header; then end-of-stream.
    if magic(&footer[512..]) != VMDK4_MAGIC
        || le32(8) != 0
        || le32(12) != 3
        || eos_val != 0
        || le32(1032) != 0
        || le32(1036) != 0
    {
        return Err(Error::invalid("Invalid footer"));
    }
    Ok(Vmdk4Header::parse(&footer[512..]))
}

/// Opens a hosted sparse extent (vmdk_open_vmdk4).
async fn open_vmdk4(
    bs: &BlockDriverState,
    file: Rc<BlockDriverState>,
    options: &mut Options,
    o: &mut Opened,
    depth: u32,
) -> Result<()> {
    let mut h = Vmdk4Header::parse(&padded(&file, 0, VMDK4_HEADER_BYTES).await?);
    if h.capacity == 0 && h.desc_offset != 0 {
        if depth >= MAX_DESC_DEPTH {
            return Err(Error::invalid("VMDK descriptors are nested too deeply"));
        }
        let desc = read_desc(&file, h.desc_offset.saturating_mul(512)).await?;
        return open_desc_file(bs, &desc, options, o, depth + 1).await;
    }
    if h.gd_offset == GD_AT_END {
        h = read_footer(&file).await?;
    }
    let compressed = h.compressed();
    if h.version > 3 {
        return Err(Error::not_supported(format!(
            "Unsupported VMDK version {}",
            h.version
        )));
    }
    if h.version == 3 && !bs.is_read_only() && !compressed {
        // Version 3 adds changed-block tracking, which only reading may ignore.
        return Err(Error::invalid("VMDK version 3 must be read only"));
    }
    if h.num_gtes_per_gt > 512 {
        return Err(Error::invalid("L2 table size too big"));
    }
    // QEMU keeps these two in 32 bits.
    let l1_entry_sectors = (h.num_gtes_per_gt as u64).wrapping_mul(h.granularity) as u32 as u64;
    if l1_entry_sectors == 0 {
        return Err(Error::invalid("L1 entry size is invalid"));
    }
    let l1_size = (h.capacity.wrapping_add(l1_entry_sectors - 1) / l1_entry_sectors) as u32;
    if file.getlength() / 512 < h.grain_offset {
        return Err(Error::invalid(format!(
            "File truncated, expecting at least {} bytes",
            h.grain_offset.wrapping_mul(512) as i64
        )));
    }
    let g = super::header::Geometry {
        sectors: h.capacity,
        l1_offset: h.gd_offset.wrapping_shl(9),
        l1_backup_offset: if h.flags & FLAG_RGD != 0 {
            h.rgd_offset.wrapping_shl(9)
        } else {
            0
        },
        l1_size: l1_size as u64,
        l2_size: h.num_gtes_per_gt as u64,
        cluster_sectors: h.granularity,
    };
    let mut extent = Extent::open_sparse(file, &g, 4).await?;
    extent.compressed = compressed;
    extent.has_marker = h.flags & FLAG_MARKER != 0;
    extent.has_zero_grain = h.flags & FLAG_ZERO_GRAIN != 0;
    if compressed {
        o.create_type = "streamOptimized".into();
    }
    push_extent(o, extent)
}

/// Opens an seSparse extent, read-only (vmdk_open_se_sparse).
async fn open_se_sparse(bs: &BlockDriverState, file: Rc<BlockDriverState>) -> Result<Extent> {
    if !bs.is_read_only() {
        return Err(Error::from_errno(libc::EACCES)
            .context("No write support for seSparse images available: "));
    }
    let h = SeSparseHeader::parse(&padded(&file, 0, SESPARSE_HEADER_BYTES).await?)?;
    let volatile = h.volatile_header_offset.saturating_mul(512);
    check_sesparse_volatile(&padded(&file, volatile, SESPARSE_HEADER_BYTES).await?)?;
    let mut extent = Extent::open_sparse(file, &h.geometry(), 8).await?;
    extent.sesparse = Some(SeSparseAreas {
        l2_tables_offset: h.grain_tables_offset,
        clusters_offset: h.grains_offset,
    });
    Ok(extent)
}

/// Opens the extents a descriptor lists (vmdk_open_desc_file + vmdk_parse_extents).
async fn open_desc_file(
    bs: &BlockDriverState,
    desc: &[u8],
    options: &mut Options,
    o: &mut Opened,
    depth: u32,
) -> Result<()> {
    let ct = parse_description(desc, "createType")
        .filter(|ct| ct.len() < 128)
        .ok_or_else(|| Error::invalid("invalid VMDK image descriptor"))?;
    if !DESCRIPTOR_FILE_TYPES.contains(&ct.as_str()) {
        return Err(Error::not_supported(format!(
            "Unsupported image type '{ct}'"
        )));
    }
    o.create_type = ct;
    o.desc_offset = 0;
    let desc_file = bs.file().expect("format nodes have a file child");
    for line in parse_extents(desc)? {
        let path = extent_path(&desc_file, &line.file_name)?;
        let role = format!("extents.{}", o.extents.len());
        let file = open_protocol_child(&role, Some(path), options, bs.open_flags()).await?;
        bs.attach_child(&role, file.clone());
        let mut extent = match line.kind.as_str() {
            "FLAT" | "VMFS" => Extent::new_flat(file, line.sectors, line.flat_offset << 9),
            "SESPARSE" => open_se_sparse(bs, file).await?,
            _ => {
                let buf = read_desc(&file, 0).await?;
                let before = o.extents.len();
                open_sparse(bs, file, &buf, options, o, depth).await?;
                if o.extents.len() != before + 1 {
                    return Err(Error::invalid(
                        "A sparse extent must hold data, not another descriptor",
                    ));
                }
                o.extents.pop().expect("just opened")
            }
        };
        if extent.flat {
            extent.sectors = line.sectors;
        }
        extent.kind = Some(line.kind);
        push_extent(o, extent)?;
    }
    Ok(())
}

/// An extent's file name resolved against the descriptor's directory; a descriptor file
/// with no directory (under a quorum) cannot name extents relatively.
fn extent_path(desc_file: &BlockDriverState, name: &str) -> Result<String> {
    block::open::bdrv_make_absolute_filename(desc_file, name).map_err(|e| {
        e.context(format!(
            "Cannot use relative paths with VMDK descriptor file '{}': ",
            desc_file.filename()
        ))
    })
}
