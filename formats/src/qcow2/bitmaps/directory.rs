//! The bitmap directory: one entry per stored bitmap, naming it and pointing at its bitmap
//! table (docs/interop/qcow2.txt "Bitmap directory"; bitmap_list_load, bitmap_list_store and
//! check_dir_entry in QEMU's block/qcow2-bitmap.c).
//!
//! Every entry is checked against QEMU's limits before anything is sized from it, so a
//! directory that lies about table sizes or names is refused with QEMU's message.

use block::{Error, Result};

use crate::qcow2::header::{MAX_BITMAPS, MAX_BITMAP_DIRECTORY_SIZE};

/// Most entries a bitmap table may have (BME_MAX_TABLE_SIZE).
pub const MAX_TABLE_SIZE: u64 = 0x800_0000;
/// Most bytes of bitmap data one bitmap may have (BME_MAX_PHYS_SIZE).
pub const MAX_PHYS_SIZE: u64 = 0x2000_0000;
/// Granularity limits, as powers of two (BME_MIN/MAX_GRANULARITY_BITS).
pub const MIN_GRANULARITY_BITS: u8 = 9;
/// See [`MIN_GRANULARITY_BITS`].
pub const MAX_GRANULARITY_BITS: u8 = 31;
/// Longest name (BME_MAX_NAME_SIZE).
pub const MAX_NAME_SIZE: usize = 1023;
/// Entry flag: the bitmap was in use (loaded read-write) and its stored data is stale.
pub const FLAG_IN_USE: u32 = 1 << 0;
/// Entry flag: the bitmap records writes (it is enabled when loaded).
pub const FLAG_AUTO: u32 = 1 << 1;
const RESERVED_FLAGS: u32 = !(FLAG_IN_USE | FLAG_AUTO);
/// The only bitmap type: dirty tracking.
const TYPE_DIRTY_TRACKING: u8 = 1;
const ENTRY_HEADER: usize = 24;

/// One directory entry (Qcow2Bitmap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Host offset of the bitmap table.
    pub table_offset: u64,
    /// Entries of the bitmap table.
    pub table_size: u32,
    /// FLAG_IN_USE, FLAG_AUTO.
    pub flags: u32,
    /// log2 of bytes per bit.
    pub granularity_bits: u8,
    /// The bitmap's name.
    pub name: String,
}

/// Bytes an entry takes in the directory, padded to 8 (calc_dir_entry_size).
pub fn entry_size(name_len: usize) -> u64 {
    (ENTRY_HEADER + name_len).next_multiple_of(8) as u64
}

/// Bytes of bitmap data needed for `len` bytes of disk (get_bitmap_bytes_needed).
pub fn bitmap_bytes_needed(len: u64, granularity: u64) -> u64 {
    len.div_ceil(granularity).div_ceil(8)
}

impl DirEntry {
    /// QEMU's check_dir_entry against an image of `len` bytes and `cluster_size`.
    pub fn is_valid(&self, cluster_size: u64, len: u64) -> bool {
        let fail = self.table_size == 0
            || self.table_offset == 0
            || !self.table_offset.is_multiple_of(cluster_size)
            || self.table_size as u64 > MAX_TABLE_SIZE
            || self.granularity_bits > MAX_GRANULARITY_BITS
            || self.granularity_bits < MIN_GRANULARITY_BITS
            || self.flags & RESERVED_FLAGS != 0
            || self.name.len() > MAX_NAME_SIZE;
        if fail {
            return false;
        }
        let phys = self.table_size as u64 * cluster_size;
        if phys > MAX_PHYS_SIZE {
            return false;
        }
        // A stale (in-use) bitmap may be too small after a resize; a valid one may not.
        self.flags & FLAG_IN_USE != 0 || len <= (phys * 8) << self.granularity_bits
    }
}

/// The checks of a bitmap to be stored (check_constraints_on_bitmap).
pub fn check_constraints(name: &str, granularity: u32, len: u64, cluster_size: u64) -> Result<()> {
    let bits = granularity.trailing_zeros();
    if bits > MAX_GRANULARITY_BITS as u32 {
        return Err(Error::invalid(format!(
            "Granularity exceeds maximum ({} bytes)",
            1u64 << MAX_GRANULARITY_BITS
        )));
    }
    if bits < MIN_GRANULARITY_BITS as u32 {
        return Err(Error::invalid(format!(
            "Granularity is under minimum ({} bytes)",
            1u64 << MIN_GRANULARITY_BITS
        )));
    }
    let bytes = bitmap_bytes_needed(len, granularity as u64);
    if bytes > MAX_PHYS_SIZE || bytes > MAX_TABLE_SIZE * cluster_size {
        return Err(Error::invalid(
            "Too much space will be occupied by the bitmap. Use larger granularity",
        ));
    }
    if name.len() > MAX_NAME_SIZE {
        return Err(Error::invalid(format!(
            "Name length exceeds maximum ({MAX_NAME_SIZE} characters)"
        )));
    }
    Ok(())
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().unwrap())
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// Parses a directory of `nb_bitmaps` entries (bitmap_list_load after the read).
pub fn parse(dir: &[u8], nb_bitmaps: u32, cluster_size: u64, len: u64) -> Result<Vec<DirEntry>> {
    let broken = || Error::invalid("Broken bitmap directory");
    let mut list = Vec::new();
    let mut pos = 0;
    while pos < dir.len() {
        if pos + ENTRY_HEADER > dir.len() {
            return Err(broken());
        }
        if list.len() as u32 >= nb_bitmaps {
            return Err(Error::invalid(
                "More bitmaps found than specified in header extension",
            ));
        }
        let e = &dir[pos..];
        let name_size = be16(e, 18) as usize;
        let extra = be32(e, 20) as usize;
        let size = (ENTRY_HEADER + name_size)
            .checked_add(extra)
            .map(|s| s.next_multiple_of(8))
            .ok_or_else(broken)?;
        if size > e.len() {
            return Err(broken());
        }
        if extra != 0 {
            return Err(Error::invalid("Bitmap extra data is not supported"));
        }
        let name_field = &e[ENTRY_HEADER..ENTRY_HEADER + name_size];
        let entry = DirEntry {
            table_offset: u64::from_be_bytes(e[0..8].try_into().unwrap()),
            table_size: be32(e, 8),
            flags: be32(e, 12),
            granularity_bits: e[17],
            name: String::from_utf8_lossy(name_field).into_owned(),
        };
        if e[16] != TYPE_DIRTY_TRACKING || !entry.is_valid(cluster_size, len) {
            return Err(Error::invalid(format!(
                "Bitmap '{}' doesn't satisfy the constraints",
                entry.name
            )));
        }
        list.push(entry);
        pos += size;
    }
    if (list.len() as u32) != nb_bitmaps {
        return Err(Error::invalid(
            "Less bitmaps found than specified in header extension",
        ));
    }
    Ok(list)
}

/// The directory's bytes, each entry checked as QEMU does before writing (the first half of
/// bitmap_list_store); EINVAL for a list QEMU would not store.
pub fn serialise(list: &[DirEntry], cluster_size: u64, len: u64) -> Result<Vec<u8>> {
    let size: u64 = list.iter().map(|b| entry_size(b.name.len())).sum();
    if size == 0 || size > MAX_BITMAP_DIRECTORY_SIZE || list.len() > MAX_BITMAPS as usize {
        return Err(Error::from_errno(libc::EINVAL));
    }
    let mut out = Vec::with_capacity(size as usize);
    for b in list {
        if !b.is_valid(cluster_size, len) {
            return Err(Error::from_errno(libc::EINVAL));
        }
        out.extend_from_slice(&b.table_offset.to_be_bytes());
        out.extend_from_slice(&b.table_size.to_be_bytes());
        out.extend_from_slice(&b.flags.to_be_bytes());
        out.push(TYPE_DIRTY_TRACKING);
        out.push(b.granularity_bits);
        out.extend_from_slice(&(b.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(b.name.as_bytes());
        out.resize(out.len().next_multiple_of(8), 0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> DirEntry {
        DirEntry {
            table_offset: 0x30000,
            table_size: 1,
            flags: FLAG_AUTO,
            granularity_bits: 16,
            name: name.into(),
        }
    }

    #[test]
    fn round_trip_and_count_mismatches() {
        let list = vec![entry("b0"), entry("a-longer-name")];
        let bytes = serialise(&list, 65536, 10 << 20).unwrap();
        assert_eq!(bytes.len() as u64, entry_size(2) + entry_size(13));
        assert_eq!(parse(&bytes, 2, 65536, 10 << 20).unwrap(), list);
        let e = parse(&bytes, 1, 65536, 10 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            "More bitmaps found than specified in header extension"
        );
        let e = parse(&bytes, 3, 65536, 10 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Less bitmaps found than specified in header extension"
        );
    }

    #[test]
    fn lying_entries_are_refused_by_name() {
        let mut huge = entry("huge");
        huge.table_size = u32::MAX;
        let mut bytes = serialise(&[entry("huge")], 65536, 1 << 20).unwrap();
        bytes[8..12].copy_from_slice(&huge.table_size.to_be_bytes());
        let e = parse(&bytes, 1, 65536, 1 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Bitmap 'huge' doesn't satisfy the constraints"
        );
        // A name running past the directory's end.
        bytes[18..20].copy_from_slice(&1000u16.to_be_bytes());
        let e = parse(&bytes, 1, 65536, 1 << 20).unwrap_err();
        assert_eq!(e.to_string(), "Broken bitmap directory");
        // A valid bitmap whose table cannot cover the disk.
        let e = parse(
            &serialise(&[entry("x")], 65536, 1 << 20).unwrap(),
            1,
            65536,
            1 << 50,
        );
        assert!(e.is_err());
    }

    #[test]
    fn constraints_have_qemus_messages() {
        let e = check_constraints("b", 1 << 31, 1 << 20, 65536);
        assert!(e.is_ok());
        let e = check_constraints("b", 256, 1 << 20, 65536).unwrap_err();
        assert_eq!(e.to_string(), "Granularity is under minimum (512 bytes)");
        let e = check_constraints("b", 512, 1 << 43, 65536).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Too much space will be occupied by the bitmap. Use larger granularity"
        );
    }
}
