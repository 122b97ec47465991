//! The chunk table of a dmg: the "mish" blocks (one per partition) that map runs of disk
//! sectors to zeroes, raw bytes or compressed blobs of the data fork, found either in the
//! resource fork or base64-encoded in the XML property list (dmg_read_mish_block,
//! dmg_read_resource_fork and dmg_read_plist_xml in QEMU's block/dmg.c).

use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;
use block::{BlockDriverState, Error, Result};

use super::koly::Koly;
use crate::image_file::read_bytes;

/// How a chunk stores its sectors (the mish entry type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkType {
    /// UDZE: all zeroes.
    Zero,
    /// UDRW: stored as is.
    Raw,
    /// UDIG: ignored, reads as zeroes.
    Ignore,
    /// UDZO: zlib.
    Zlib,
    /// UDBZ: bzip2.
    Bzip2,
}

/// One run of disk sectors and where its data lies.
#[derive(Clone, Debug)]
pub struct Chunk {
    /// How the data is stored.
    pub kind: ChunkType,
    /// First disk sector.
    pub sector: u64,
    /// Number of sectors.
    pub sector_count: u64,
    /// Offset of the (compressed) data in the file.
    pub offset: u64,
    /// Length of the (compressed) data.
    pub length: u64,
}

/// Largest chunk data QEMU accepts (DMG_LENGTHS_MAX), so that no chunk makes a reader
/// allocate more.
pub const LENGTHS_MAX: u64 = 64 * 1024 * 1024;
/// Largest sector count of a chunk that has to be decoded (DMG_SECTORCOUNTS_MAX).
pub const SECTORCOUNTS_MAX: u64 = LENGTHS_MAX / 512;
/// Largest XML property list read (QEMU's cap; a real one is about 1 MiB).
const PLIST_MAX: u64 = 16 * 1024 * 1024;

const MISH_MAGIC: u32 = 0x6d69_7368;
const MISH_MIN_SIZE: usize = 244;
const MISH_CHUNKS_AT: usize = 204;
const CHUNK_ENTRY_SIZE: usize = 40;
const ULFO: u32 = 0x8000_0007;

fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(buf[at..at + 4].try_into().unwrap())
}

fn be64(buf: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(buf[at..at + 8].try_into().unwrap())
}

fn einval() -> Error {
    Error::from_errno(libc::EINVAL)
}

/// The chunk type of a mish entry, or None for one QEMU skips: comments, the last-entry
/// marker, and lzfse, which it can read only with a module Debian does not build (and
/// which no maintained Rust crate decodes), so it warns once as QEMU does without it.
fn known_type(t: u32) -> Option<ChunkType> {
    static LZFSE_WARNED: AtomicBool = AtomicBool::new(false);
    match t {
        0 => Some(ChunkType::Zero),
        1 => Some(ChunkType::Raw),
        2 => Some(ChunkType::Ignore),
        0x8000_0005 => Some(ChunkType::Zlib),
        0x8000_0006 => Some(ChunkType::Bzip2),
        ULFO => {
            if !LZFSE_WARNED.swap(true, Ordering::Relaxed) {
                block::error::error_report(
                    "warning: dmg-lzfse module is missing, accessing lzfse compressed \
                     blocks will result in I/O errors",
                );
            }
            None
        }
        _ => None,
    }
}

/// Appends the chunks of one mish block; data that is not one is skipped.
fn read_mish_block(chunks: &mut Vec<Chunk>, data_fork_offset: u64, buf: &[u8]) -> Result<()> {
    if buf.len() < MISH_MIN_SIZE || be32(buf, 0) != MISH_MAGIC {
        return Ok(());
    }
    // Chunk sectors are relative to the block's first sector, offsets to its data.
    let out_offset = be64(buf, 8);
    let in_offset = data_fork_offset.wrapping_add(be64(buf, 0x18));
    for entry in buf[MISH_CHUNKS_AT..].chunks_exact(CHUNK_ENTRY_SIZE) {
        let Some(kind) = known_type(be32(entry, 0)) else {
            continue;
        };
        let index = chunks.len();
        let chunk = Chunk {
            kind,
            sector: be64(entry, 8).wrapping_add(out_offset),
            sector_count: be64(entry, 0x10),
            offset: be64(entry, 0x18).wrapping_add(in_offset),
            length: be64(entry, 0x20),
        };
        // Zero and ignored chunks are never decoded, so they may be of any size.
        let decoded = !matches!(kind, ChunkType::Zero | ChunkType::Ignore);
        if decoded && chunk.sector_count > SECTORCOUNTS_MAX {
            block::error::error_report(&format!(
                "sector count {} for chunk {index} is larger than max ({SECTORCOUNTS_MAX})",
                chunk.sector_count
            ));
            return Err(einval());
        }
        if chunk.length > LENGTHS_MAX {
            block::error::error_report(&format!(
                "length {} for chunk {index} is larger than max ({LENGTHS_MAX})",
                chunk.length
            ));
            return Err(einval());
        }
        chunks.push(chunk);
    }
    Ok(())
}

/// Reads the big-endian u32 at `offset` of the file.
async fn read_u32(file: &BlockDriverState, offset: u64) -> Result<u32> {
    Ok(be32(&read_bytes(file, offset, 4).await?, 0))
}

/// The mish blocks of the resource fork: each resource of its data section is a length
/// and that many bytes; the resource map after them is not needed.
async fn read_resource_fork(
    file: &BlockDriverState,
    k: &Koly,
    chunks: &mut Vec<Chunk>,
) -> Result<()> {
    let (begin, length) = (k.rsrc_fork_offset, k.rsrc_fork_length);
    let data_offset = read_u32(file, begin).await? as u64;
    if data_offset > length {
        return Err(einval());
    }
    let count = read_u32(file, begin + 8).await? as u64;
    if count == 0 || data_offset + count > length {
        return Err(einval());
    }
    let mut offset = begin + data_offset;
    let end = offset + count;
    while offset < end {
        let size = read_u32(file, offset).await? as u64;
        if size == 0 || size > end - offset {
            return Err(einval());
        }
        offset += 4;
        // Bounded by the fork's length, which the trailer check bounded by the file.
        let buf = read_bytes(file, offset, size as usize).await?;
        read_mish_block(chunks, k.data_fork_offset, &buf)?;
        offset += size;
    }
    Ok(())
}

/// Decodes base64 as g_base64_decode does: characters outside the alphabet are skipped.
fn decode_base64(text: &[u8]) -> Vec<u8> {
    let clean: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        .collect();
    // A dangling single character carries no whole byte.
    let usable = if clean.len() % 4 == 1 {
        &clean[..clean.len() - 1]
    } else {
        &clean[..]
    };
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    engine.decode(usable).unwrap_or_default()
}

/// The mish blocks of the XML property list: the contents of every `<data>` element.
async fn read_plist_xml(file: &BlockDriverState, k: &Koly, chunks: &mut Vec<Chunk>) -> Result<()> {
    let length = k.plist_xml_length;
    if length == 0 || length > PLIST_MAX {
        return Err(einval());
    }
    let xml = read_bytes(file, k.plist_xml_offset, length as usize)
        .await
        .map_err(|_| einval())?;
    // Like the C string QEMU searches, the text ends at its first NUL.
    let xml = &xml[..xml.iter().position(|&c| c == 0).unwrap_or(xml.len())];
    let mut rest = xml;
    while let Some(begin) = find(rest, b"<data>") {
        let data = &rest[begin + 6..];
        let end = find(data, b"</data>").ok_or_else(einval)?;
        read_mish_block(chunks, k.data_fork_offset, &decode_base64(&data[..end]))?;
        rest = &data[end + 7..];
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The chunk table, from the resource fork if there is one, else from the property list.
pub async fn read_table(file: &BlockDriverState, k: &Koly) -> Result<Vec<Chunk>> {
    let mut chunks = Vec::new();
    if k.rsrc_fork_length != 0 {
        read_resource_fork(file, k, &mut chunks).await?;
    } else if k.plist_xml_length != 0 {
        read_plist_xml(file, k, &mut chunks).await?;
    } else {
        return Err(einval());
    }
    Ok(chunks)
}
