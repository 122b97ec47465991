//! The dynamic disk header and the block allocation table (the `VHDDynDiskHeader` struct
//! and the page table of QEMU's block/vpc.c).
//!
//! A dynamic image keeps a 1024-byte header ("cxsparse") that says where the table is and
//! how large its blocks are. Each big-endian 32-bit table entry is the sector where a block
//! starts, or all ones when the block was never written; a stored block is a sector bitmap
//! (one bit per sector, padded to whole sectors) followed by the block's data. As in QEMU,
//! the bitmap is written all ones and never consulted: every sector of a stored block is
//! data.

use block::{Error, Result};

use super::footer::checksum;

/// Bytes of the dynamic disk header.
pub const DYN_HEADER_SIZE: usize = 1024;
/// Cookie of the dynamic disk header.
pub const DYN_COOKIE: &[u8; 8] = b"cxsparse";
/// Table entry of a block never written.
pub const UNALLOCATED: u32 = 0xffff_ffff;
/// Block size of the images QEMU creates.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;

/// The decoded dynamic disk header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynHeader {
    /// Byte offset of the block allocation table.
    pub table_offset: u64,
    /// Entries in the table.
    pub max_table_entries: u32,
    /// Bytes of guest data per block.
    pub block_size: u32,
}

impl DynHeader {
    /// Decodes and checks a header, with QEMU's messages (vpc_open).
    pub fn parse(b: &[u8]) -> Result<DynHeader> {
        if b.len() < DYN_HEADER_SIZE || &b[0..8] != DYN_COOKIE {
            return Err(Error::invalid("Invalid header magic"));
        }
        let be32 = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
        let h = DynHeader {
            table_offset: u64::from_be_bytes(b[16..24].try_into().unwrap()),
            max_table_entries: be32(28),
            block_size: be32(32),
        };
        if !h.block_size.is_power_of_two() || h.block_size < 512 {
            return Err(Error::invalid(format!(
                "Invalid block size {}",
                h.block_size
            )));
        }
        Ok(h)
    }

    /// Encodes the header as QEMU writes it (no parent: this is not a differencing image).
    pub fn serialise(&self) -> Vec<u8> {
        let mut b = vec![0u8; DYN_HEADER_SIZE];
        b[0..8].copy_from_slice(DYN_COOKIE);
        b[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        b[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        b[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        b[28..32].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        let sum = checksum(&b);
        b[36..40].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Bytes of a block's sector bitmap, padded to whole sectors (s->bitmap_size).
    pub fn bitmap_size(&self) -> u64 {
        (self.block_size as u64 / (8 * 512)).div_ceil(512) * 512
    }

    /// Bytes the table takes in the file.
    pub fn table_bytes(&self) -> u64 {
        self.max_table_entries as u64 * 4
    }
}

/// Decodes the table's big-endian entries.
pub fn decode_table(raw: &[u8]) -> Vec<u32> {
    raw.chunks_exact(4)
        .map(|e| u32::from_be_bytes(e.try_into().unwrap()))
        .collect()
}
