//! The VHDX metadata log: a circular journal of 4 KiB sectors that makes metadata updates
//! atomic (QEMU's block/vhdx-log.c; VHDX spec v1.00 §2.3).
//!
//! An update is first written to the log as an entry — a header, descriptors naming the
//! file offsets to change, and the new 4 KiB sectors — whose CRC-32C covers it whole, and
//! the headers get a log GUID that makes the entry count. Only once that is on disk are
//! the sectors written in place; then the log GUID is cleared. A crash in between leaves
//! a log that the next open replays, so the BAT is always either the old or the new one.
//! Like QEMU, this driver flushes the log after every entry; it never appends to a log
//! another writer left, except to replay it.

use block::error::error_report;
use block::{BlockDriverState, Error, RequestFlags, Result};

use super::header::{checksum, le_u32, le_u64, set_checksum, Guid, Headers, MIB};
use crate::image_file::{random_uuid, read_bytes, write_bytes};

/// Every log structure is a 4 KiB sector.
pub const SECTOR: u64 = 4096;
const ENTRY_SIGNATURE: &[u8; 4] = b"loge";
const DATA_DESC_SIGNATURE: &[u8; 4] = b"desc";
const ZERO_DESC_SIGNATURE: &[u8; 4] = b"zero";
const DATA_SIGNATURE: &[u8; 4] = b"data";
/// Bytes of an entry header; descriptors follow it in the same sector.
const ENTRY_HEADER_SIZE: usize = 64;
/// Bytes of a descriptor.
const DESC_SIZE: usize = 32;

/// Where the log is and the sequence number its next entry gets (VHDXLogEntries).
#[derive(Clone, Copy, Debug, Default)]
pub struct Log {
    /// The log's file offset.
    pub offset: u64,
    /// The log's length.
    pub length: u64,
    /// Sequence number for the next entry written.
    pub sequence: u64,
}

/// An entry header (VHDXLogEntryHeader).
#[derive(Clone, Copy, Debug)]
struct EntryHeader {
    entry_length: u64,
    sequence_number: u64,
    descriptor_count: u64,
    log_guid: Guid,
    flushed_file_offset: u64,
    last_file_offset: u64,
}

impl EntryHeader {
    fn parse(b: &[u8]) -> Option<EntryHeader> {
        (&b[0..4] == ENTRY_SIGNATURE).then(|| EntryHeader {
            entry_length: le_u32(b, 8) as u64,
            sequence_number: le_u64(b, 16),
            descriptor_count: le_u32(b, 24) as u64,
            log_guid: b[32..48].try_into().unwrap(),
            flushed_file_offset: le_u64(b, 48),
            last_file_offset: le_u64(b, 56),
        })
    }

    /// Sectors holding the header and the descriptors (vhdx_compute_desc_sectors).
    fn desc_sectors(&self) -> u64 {
        desc_sectors(self.descriptor_count)
    }
}

/// Sectors that the entry header and `count` descriptors take.
fn desc_sectors(count: u64) -> u64 {
    (count + 2).div_ceil(128)
}

/// One change a descriptor describes.
enum Change {
    /// A data sector's 4 KiB, its first 8 and last 4 bytes kept in the descriptor.
    Data {
        file_offset: u64,
        leading: [u8; 8],
        trailing: [u8; 4],
    },
    /// `length` bytes of zeroes.
    Zero { file_offset: u64, length: u64 },
}

/// Parses a descriptor of entry `seq` (vhdx_log_desc_is_valid).
fn parse_desc(d: &[u8], seq: u64) -> Option<Change> {
    let file_offset = le_u64(d, 16);
    if le_u64(d, 24) != seq || !file_offset.is_multiple_of(SECTOR) {
        return None;
    }
    match &d[0..4] {
        s if s == ZERO_DESC_SIGNATURE && le_u64(d, 8).is_multiple_of(SECTOR) => {
            Some(Change::Zero {
                file_offset,
                length: le_u64(d, 8),
            })
        }
        s if s == DATA_DESC_SIGNATURE => Some(Change::Data {
            file_offset,
            leading: d[8..16].try_into().unwrap(),
            trailing: d[4..8].try_into().unwrap(),
        }),
        _ => None,
    }
}

/// A valid entry found in the log.
struct Entry {
    header: EntryHeader,
    /// Its position in the log.
    at: u64,
    changes: Vec<Change>,
}

impl Log {
    /// Reads `n` sectors at log position `at`, wrapping around the end of the log.
    async fn read(&self, file: &BlockDriverState, at: u64, n: u64) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity((n * SECTOR) as usize);
        for i in 0..n {
            let pos = (at + i * SECTOR) % self.length;
            out.extend(read_bytes(file, self.offset + pos, SECTOR as usize).await?);
        }
        Ok(out)
    }

    /// Reads and validates the entry at `at` (vhdx_validate_log_entry): None when it is
    /// not a valid entry of this log, an error when its header is valid but one of its
    /// descriptors is not.
    async fn entry_at(
        &self,
        file: &BlockDriverState,
        at: u64,
        log_guid: &Guid,
    ) -> Result<Option<Entry>> {
        let first = self.read(file, at, 1).await?;
        let Some(h) = EntryHeader::parse(&first) else {
            return Ok(None);
        };
        let n_desc = h.desc_sectors();
        if h.entry_length > self.length
            || !h.entry_length.is_multiple_of(SECTOR)
            || h.entry_length < n_desc * SECTOR
            || h.sequence_number == 0
            || h.log_guid != *log_guid
        {
            return Ok(None);
        }
        let descs = self.read(file, at, n_desc).await?;
        let mut changes = Vec::new();
        for i in 0..h.descriptor_count as usize {
            let d = &descs[ENTRY_HEADER_SIZE + i * DESC_SIZE..][..DESC_SIZE];
            let change = parse_desc(d, h.sequence_number).ok_or_else(|| {
                error_report(&format!(
                    "Invalid VHDX log descriptor entry signature 0x{:x}",
                    le_u32(d, 0)
                ));
                Error::from_errno(libc::EINVAL)
            })?;
            changes.push(change);
        }
        // The checksum covers the whole entry: stream it sector by sector.
        let mut crc = checksum(&descs, 4);
        for i in n_desc..h.entry_length / SECTOR {
            crc = crc32c::crc32c_append(crc, &self.read(file, at + i * SECTOR, 1).await?);
        }
        Ok((crc == le_u32(&descs, 4)).then_some(Entry {
            header: h,
            at,
            changes,
        }))
    }

    /// Finds the active sequence: the run of consecutive entries whose first has the
    /// highest sequence number (vhdx_log_search).
    async fn search(&self, file: &BlockDriverState, log_guid: &Guid) -> Result<Vec<Entry>> {
        let mut best: Vec<Entry> = Vec::new();
        let mut at = 0;
        while at < self.length {
            let Some(first) = self.entry_at(file, at, log_guid).await? else {
                at += SECTOR;
                continue;
            };
            let mut seq = first.header.sequence_number;
            let mut end = at + first.header.entry_length;
            let mut run = vec![first];
            while end < at + self.length {
                match self.entry_at(file, end % self.length, log_guid).await? {
                    Some(e) if e.header.sequence_number == seq + 1 => {
                        seq += 1;
                        end += e.header.entry_length;
                        run.push(e);
                    }
                    _ => break,
                }
            }
            let newer = match best.first() {
                Some(b) => run[0].header.sequence_number > b.header.sequence_number,
                None => true,
            };
            if newer {
                best = run;
            }
            at = end;
        }
        Ok(best)
    }

    /// Writes an entry's changes in place (vhdx_log_flush's inner loop).
    async fn apply(&self, file: &BlockDriverState, e: &Entry) -> Result<()> {
        let len = file.getlength();
        if e.header.flushed_file_offset > len {
            return Err(Error::from_errno(libc::EINVAL));
        }
        let mut data_at = e.at + e.header.desc_sectors() * SECTOR;
        for change in &e.changes {
            match change {
                Change::Data {
                    file_offset,
                    leading,
                    trailing,
                } => {
                    let mut s = self.read(file, data_at, 1).await?;
                    data_at += SECTOR;
                    let seq = (le_u32(&s, 4) as u64) << 32 | le_u32(&s, 4092) as u64;
                    if seq != e.header.sequence_number {
                        return Err(Error::from_errno(libc::EINVAL));
                    }
                    s[0..8].copy_from_slice(leading);
                    s[4092..4096].copy_from_slice(trailing);
                    write_bytes(file, *file_offset, &s).await?;
                }
                Change::Zero {
                    file_offset,
                    length,
                } => {
                    // Zeroes only where the entry says the file reaches: a hostile
                    // length cannot grow the file without bound.
                    let limit = len.max(e.header.last_file_offset);
                    if file_offset.saturating_add(*length) > limit {
                        return Err(Error::from_errno(libc::EINVAL));
                    }
                    file.co_pwrite_zeroes(*file_offset, *length, RequestFlags::empty())
                        .await?;
                }
            }
        }
        if file.getlength() < e.header.last_file_offset {
            let size = e.header.last_file_offset.div_ceil(MIB) * MIB;
            file.co_truncate(size, false, block::driver::PreallocMode::Off)
                .await?;
        }
        Ok(())
    }

    /// Replays a log left by a crash, as the spec requires before any use of the image
    /// (vhdx_parse_log). Returns whether there was one.
    pub async fn replay(
        &mut self,
        file: &BlockDriverState,
        headers: &mut Headers,
        read_only: bool,
        filename: &str,
    ) -> Result<bool> {
        let h = headers.current().clone();
        let einval = || Error::from_errno(libc::EINVAL);
        self.offset = h.log_offset;
        self.length = h.log_length as u64;
        if self.offset < MIB || !self.offset.is_multiple_of(MIB) || h.log_version != 0 {
            return Err(einval());
        }
        if h.log_guid == [0; 16] || self.length == 0 {
            return Ok(false);
        }
        if !self.length.is_multiple_of(MIB) || self.offset + self.length > file.getlength() {
            return Err(einval());
        }
        let entries = self.search(file, &h.log_guid).await?;
        let Some(last) = entries.last() else {
            // A crash between setting the log GUID and writing the entry leaves a log
            // with nothing valid in it: empty it, or no later update could use the log.
            if !read_only {
                headers.update(file, false, Some([0; 16])).await?;
            }
            return Ok(false);
        };
        if read_only {
            return Err(Error::new(
                libc::EPERM,
                format!(
                    "VHDX image file '{filename}' opened read-only, but contains a log that needs to be replayed\nTo replay the log, run:\nqemu-img check -r all '{filename}'"
                ),
            ));
        }
        self.sequence = last.header.sequence_number + 1;
        headers.update(file, true, None).await?;
        for e in &entries {
            self.apply(file, e).await?;
        }
        file.co_flush().await?;
        headers.update(file, false, Some([0; 16])).await?;
        Ok(true)
    }

    /// Writes `data` at file offset `offset` through the log, then flushes the log to
    /// its place and empties it (vhdx_log_write_and_flush).
    pub async fn write_and_flush(
        &mut self,
        file: &BlockDriverState,
        headers: &mut Headers,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        // Whatever the entry refers to (a new block) must be stable before it.
        file.co_flush().await?;
        if headers.current().log_guid != [0; 16] {
            return Err(Error::from_errno(libc::ENOTSUP));
        }
        let start = offset - offset % SECTOR;
        let end = (offset + data.len() as u64).div_ceil(SECTOR) * SECTOR;
        let mut sectors = read_bytes(file, start, (end - start) as usize).await?;
        let at = (offset - start) as usize;
        sectors[at..at + data.len()].copy_from_slice(data);
        let n = sectors.len() as u64 / SECTOR;
        if (desc_sectors(n) + n) * SECTOR > self.length {
            return Err(Error::from_errno(libc::EINVAL));
        }
        let guid = random_uuid();
        headers.update(file, false, Some(guid)).await?;
        let entry = self.new_entry(&guid, start, &sectors, file.getlength());
        write_bytes(file, self.offset, &entry).await?;
        file.co_flush().await?;
        write_bytes(file, start, &sectors).await?;
        file.co_flush().await?;
        headers.update(file, false, Some([0; 16])).await
    }

    /// A log entry, for the start of the log, that writes `sectors` at `start`
    /// (vhdx_log_write).
    fn new_entry(&mut self, guid: &Guid, start: u64, sectors: &[u8], len: u64) -> Vec<u8> {
        if self.sequence == 0 {
            self.sequence = 1;
        }
        let seq = self.sequence;
        self.sequence += 1;
        let n = sectors.len() as u64 / SECTOR;
        let n_desc = desc_sectors(n);
        let mut b = vec![0u8; ((n_desc + n) * SECTOR) as usize];
        b[0..4].copy_from_slice(ENTRY_SIGNATURE);
        let entry_length = b.len() as u32;
        b[8..12].copy_from_slice(&entry_length.to_le_bytes());
        // The tail is where the sequence starts: this entry, at the log's start.
        b[12..16].copy_from_slice(&0u32.to_le_bytes());
        b[16..24].copy_from_slice(&seq.to_le_bytes());
        b[24..28].copy_from_slice(&(n as u32).to_le_bytes());
        b[32..48].copy_from_slice(guid);
        b[48..56].copy_from_slice(&len.to_le_bytes());
        b[56..64].copy_from_slice(&len.to_le_bytes());
        for (i, s) in sectors.chunks(SECTOR as usize).enumerate() {
            let d = &mut b[ENTRY_HEADER_SIZE + i * DESC_SIZE..][..DESC_SIZE];
            d[0..4].copy_from_slice(DATA_DESC_SIGNATURE);
            d[4..8].copy_from_slice(&s[4092..4096]);
            d[8..16].copy_from_slice(&s[0..8]);
            d[16..24].copy_from_slice(&(start + i as u64 * SECTOR).to_le_bytes());
            d[24..32].copy_from_slice(&seq.to_le_bytes());
            let data = &mut b[((n_desc + i as u64) * SECTOR) as usize..][..SECTOR as usize];
            data.copy_from_slice(s);
            data[0..4].copy_from_slice(DATA_SIGNATURE);
            data[4..8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
            data[4092..4096].copy_from_slice(&(seq as u32).to_le_bytes());
        }
        set_checksum(&mut b, 4);
        b
    }
}
