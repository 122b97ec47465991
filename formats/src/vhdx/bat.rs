//! The VHDX block allocation table (QEMU's BAT code in block/vhdx.c; VHDX spec v1.00 §2.5).
//!
//! Each 64-bit entry holds a state in its low 3 bits and a file offset in megabytes in
//! its upper 44. Payload block entries map the virtual disk; after every `chunk_ratio`
//! of them comes one sector bitmap entry, used only by differencing images. A block that
//! is not fully present reads as zeroes (or from the parent, for differencing images).

use block::error::error_report;
use block::{Error, Result};

use super::header::{Regions, MIB};
use super::metadata::Metadata;

/// The block is not stored.
pub const PAYLOAD_BLOCK_NOT_PRESENT: u64 = 0;
/// The block's contents are undefined.
pub const PAYLOAD_BLOCK_UNDEFINED: u64 = 1;
/// The block reads as zeroes.
pub const PAYLOAD_BLOCK_ZERO: u64 = 2;
/// The block was unmapped (the value of draft 0.95 of the spec).
pub const PAYLOAD_BLOCK_UNMAPPED_V095: u64 = 3;
/// The block was unmapped.
pub const PAYLOAD_BLOCK_UNMAPPED: u64 = 5;
/// The block is stored at the entry's offset.
pub const PAYLOAD_BLOCK_FULLY_PRESENT: u64 = 6;
/// Parts of the block are stored, the rest is the parent's.
pub const PAYLOAD_BLOCK_PARTIALLY_PRESENT: u64 = 7;
/// The state bits of an entry.
pub const STATE_MASK: u64 = 7;
/// The file offset bits of an entry.
pub const FILE_OFFSET_MASK: u64 = !(MIB - 1);

/// How the virtual disk maps onto the table.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Payload block size.
    pub block_size: u64,
    /// Payload blocks per sector bitmap block.
    pub chunk_ratio: u64,
    /// Virtual disk size.
    pub size: u64,
}

impl Layout {
    /// The layout the metadata describes.
    pub fn new(md: &Metadata) -> Layout {
        Layout {
            block_size: md.block_size,
            chunk_ratio: md.chunk_ratio(),
            size: md.virtual_disk_size,
        }
    }

    /// Entries in the table, payload and sector bitmap (vhdx_calc_bat_entries); computed
    /// in 32 bits as QEMU does, so that an empty disk still gets a table.
    pub fn bat_entries(&self) -> u64 {
        let data_blocks = self.size.div_ceil(self.block_size);
        let bits = self.chunk_ratio.trailing_zeros();
        data_blocks + ((data_blocks as u32).wrapping_sub(1) >> bits) as u64
    }

    /// The table index of a payload block: its own number plus the sector bitmap
    /// entries before it (vhdx_block_translate).
    pub fn bat_index(&self, block: u64) -> usize {
        (block + block / self.chunk_ratio) as usize
    }

    /// Where a guest offset lies: its table index, its offset in the block and the
    /// bytes of `bytes` that stay in the block.
    pub fn locate(&self, offset: u64, bytes: u64) -> (usize, u64, u64) {
        let in_block = offset % self.block_size;
        let index = self.bat_index(offset / self.block_size);
        (index, in_block, (self.block_size - in_block).min(bytes))
    }
}

/// A table entry for a block stored at `file_offset`, or for a state with no storage,
/// whose offset field must stay zero for Hyper-V (vhdx_update_bat_table_entry).
pub fn entry(state: u64, file_offset: u64) -> u64 {
    match state {
        PAYLOAD_BLOCK_FULLY_PRESENT | PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
            (file_offset & FILE_OFFSET_MASK) | state
        }
        _ => state,
    }
}

/// Checks that every fully present payload block lies inside the file and overlaps no
/// other structure (vhdx_check_bat_entries). With `errcnt`, counts every bad entry for
/// `check`; without, stops at the first and refuses the image.
pub fn check_entries(
    bat: &[u64],
    layout: &Layout,
    file_len: u64,
    regions: &Regions,
    mut errcnt: Option<&mut u64>,
) -> Result<()> {
    let mut result = Ok(());
    let mut fail = |errcnt: &mut Option<&mut u64>| -> bool {
        result = Err(Error::from_errno(libc::EINVAL));
        match errcnt {
            Some(n) => {
                **n += 1;
                false
            }
            None => true,
        }
    };
    for (i, &e) in bat.iter().enumerate() {
        if e & STATE_MASK != PAYLOAD_BLOCK_FULLY_PRESENT {
            continue;
        }
        let i = i as u64;
        let offset = e & FILE_OFFSET_MASK;
        // Images QEMU made used to end in a partial block: accept a short last one.
        let block_length = layout
            .block_size
            .min(layout.size.saturating_sub(i * layout.block_size));
        if offset > i64::MAX as u64 - layout.block_size {
            error_report(&format!("VHDX BAT entry {i} offset overflow."));
            if fail(&mut errcnt) {
                break;
            }
        }
        if offset >= file_len {
            error_report(&format!(
                "VHDX BAT entry {i} start offset {offset} points after end of file ({file_len}). Image has probably been truncated."
            ));
            if fail(&mut errcnt) {
                break;
            }
        } else if offset + block_length > file_len {
            error_report(&format!(
                "VHDX BAT entry {i} end offset {} points after end of file ({file_len}). Image has probably been truncated.",
                offset + block_length - 1
            ));
            if fail(&mut errcnt) {
                break;
            }
        }
        let is_payload = !(i + 1).is_multiple_of(layout.chunk_ratio + 1);
        if is_payload && regions.check(offset, layout.block_size).is_err() && fail(&mut errcnt) {
            break;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: u64) -> Layout {
        Layout {
            block_size: 8 * MIB,
            chunk_ratio: 512,
            size,
        }
    }

    #[test]
    fn sector_bitmap_entries_interleave_with_payload_entries() {
        let l = layout(64 * 1024 * MIB);
        assert_eq!(l.bat_entries(), 8192 + 15);
        assert_eq!(l.bat_index(511), 511);
        assert_eq!(l.bat_index(512), 513);
        assert_eq!(l.locate(8 * MIB + 5, 1 << 30), (1, 5, 8 * MIB - 5));
    }

    #[test]
    fn an_empty_disk_still_counts_entries_as_qemu_does() {
        assert_eq!(layout(0).bat_entries(), (u32::MAX >> 9) as u64);
    }

    #[test]
    fn entries_past_the_end_of_the_file_are_counted_or_refused() {
        let l = layout(16 * MIB);
        let bat = [
            entry(PAYLOAD_BLOCK_FULLY_PRESENT, 8 * MIB),
            entry(6, 100 * MIB),
        ];
        let regions = Regions::default();
        assert!(check_entries(&bat, &l, 16 * MIB, &regions, None).is_err());
        let mut n = 0;
        assert!(check_entries(&bat, &l, 12 * MIB, &regions, Some(&mut n)).is_err());
        assert_eq!(n, 2);
        assert!(check_entries(&bat[..1], &l, 16 * MIB, &regions, None).is_ok());
        assert_eq!(entry(PAYLOAD_BLOCK_ZERO, 8 * MIB), PAYLOAD_BLOCK_ZERO);
    }
}
