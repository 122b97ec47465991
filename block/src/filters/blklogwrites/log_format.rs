//! The on-disk format of a write log, as Linux's dm-log-writes target defines it and QEMU's
//! block/blklogwrites.c writes it: a super block in log sector 0, then one entry per request,
//! each an entry sector followed by the request's data, padded to whole log sectors.
//!
//! All fields are little-endian. Tools that replay dm-log-writes logs (replay-log from
//! xfstests, our crash-state explorer) read the same layout.

use crate::error::{Error, Result};

/// The entry is a flush (REQ_PREFLUSH): every earlier write is on stable storage.
pub const LOG_FLUSH_FLAG: u64 = 1 << 0;
/// The write was FUA: it was on stable storage when it completed.
pub const LOG_FUA_FLAG: u64 = 1 << 1;
/// The entry is a discard; it carries no data.
pub const LOG_DISCARD_FLAG: u64 = 1 << 2;
/// The entry is a mark (a named point in the log set by a tool).
pub const LOG_MARK_FLAG: u64 = 1 << 3;
/// Every flag a valid entry may carry.
pub const LOG_FLAG_MASK: u64 = LOG_FLUSH_FLAG | LOG_FUA_FLAG | LOG_DISCARD_FLAG | LOG_MARK_FLAG;

/// The only log version there is.
pub const WRITE_LOG_VERSION: u64 = 1;
/// "rhswfsj" read as a little-endian number: dm-log-writes' magic.
pub const WRITE_LOG_MAGIC: u64 = 0x006a_7366_7773_6872;

/// Bytes of the super block's fields (the rest of sector 0 is zero).
pub const SUPER_SIZE: usize = 28;
/// Bytes of an entry's fields (the rest of its sector is zero).
pub const ENTRY_SIZE: usize = 32;

/// The log's super block (struct log_write_super).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogSuper {
    /// Entries in the log that the super block vouches for.
    pub nr_entries: u64,
    /// Log sector size in bytes; entry sectors and counts are in these units.
    pub sectorsize: u32,
}

impl LogSuper {
    /// The super block as a whole zero-padded log sector.
    pub fn encode(&self) -> Vec<u8> {
        let mut sector = vec![0u8; self.sectorsize as usize];
        sector[0..8].copy_from_slice(&WRITE_LOG_MAGIC.to_le_bytes());
        sector[8..16].copy_from_slice(&WRITE_LOG_VERSION.to_le_bytes());
        sector[16..24].copy_from_slice(&self.nr_entries.to_le_bytes());
        sector[24..28].copy_from_slice(&self.sectorsize.to_le_bytes());
        sector
    }

    /// Parses and checks the first [`SUPER_SIZE`] bytes of a log.
    pub fn decode(buf: &[u8; SUPER_SIZE]) -> Result<LogSuper> {
        let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
        if u64_at(0) != WRITE_LOG_MAGIC {
            return Err(Error::invalid("Invalid log superblock magic"));
        }
        let version = u64_at(8);
        if version != WRITE_LOG_VERSION {
            return Err(Error::invalid(format!("Unsupported log version {version}")));
        }
        Ok(LogSuper {
            nr_entries: u64_at(16),
            sectorsize: u32::from_le_bytes(buf[24..28].try_into().unwrap()),
        })
    }
}

/// One logged request (struct log_write_entry); sector and nr_sectors count log sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// First sector the request touched.
    pub sector: u64,
    /// Sectors the request touched.
    pub nr_sectors: u64,
    /// LOG_*_FLAG bits.
    pub flags: u64,
    /// Unused by writers of version 1 (always 0), kept for the format's sake.
    pub data_len: u64,
}

impl LogEntry {
    /// The entry as a whole zero-padded log sector.
    pub fn encode(&self, sectorsize: u32) -> Vec<u8> {
        let mut sector = vec![0u8; sectorsize as usize];
        for (i, v) in [self.sector, self.nr_sectors, self.flags, self.data_len]
            .iter()
            .enumerate()
        {
            sector[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        sector
    }

    /// Parses the first [`ENTRY_SIZE`] bytes of an entry sector; `index` names it in errors.
    pub fn decode(buf: &[u8; ENTRY_SIZE], index: u64) -> Result<LogEntry> {
        let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
        let entry = LogEntry {
            sector: u64_at(0),
            nr_sectors: u64_at(8),
            flags: u64_at(16),
            data_len: u64_at(24),
        };
        if entry.flags & !LOG_FLAG_MASK != 0 {
            return Err(Error::invalid(format!(
                "Invalid flags 0x{:x} in log entry {index}",
                entry.flags
            )));
        }
        Ok(entry)
    }

    /// Log sectors the entry occupies: its own, plus its data unless it is a discard.
    pub fn log_sectors(&self) -> u64 {
        if self.flags & LOG_DISCARD_FLAG != 0 {
            1
        } else {
            self.nr_sectors.saturating_add(1)
        }
    }
}

/// Whether a log sector size is usable: a power of two that holds an entry, below 16 MiB.
pub fn sector_size_valid(size: u64) -> bool {
    size.is_power_of_two() && size >= ENTRY_SIZE as u64 && size < (1 << 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn super_round_trips_and_rejects_bad_magic() {
        let sb = LogSuper {
            nr_entries: 7,
            sectorsize: 4096,
        };
        let bytes = sb.encode();
        assert_eq!(bytes.len(), 4096);
        assert_eq!(&bytes[0..8], b"rhswfsj\0");
        assert_eq!(
            LogSuper::decode(bytes[..SUPER_SIZE].try_into().unwrap()).unwrap(),
            sb
        );
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        let err = LogSuper::decode(bad[..SUPER_SIZE].try_into().unwrap()).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
    }

    #[test]
    fn entry_flags_outside_the_mask_are_rejected() {
        let e = LogEntry {
            sector: 3,
            nr_sectors: 2,
            flags: LOG_FUA_FLAG,
            data_len: 0,
        };
        let bytes = e.encode(512);
        assert_eq!(
            LogEntry::decode(bytes[..ENTRY_SIZE].try_into().unwrap(), 0).unwrap(),
            e
        );
        assert_eq!(e.log_sectors(), 3);
        let bad = LogEntry { flags: 1 << 9, ..e }.encode(512);
        assert!(LogEntry::decode(bad[..ENTRY_SIZE].try_into().unwrap(), 4).is_err());
        assert!(!sector_size_valid(16) && sector_size_valid(512) && !sector_size_valid(1 << 24));
    }
}
