//! The snapshot table: where internal snapshots are described (qcow2.txt "Snapshots"; QEMU's
//! qcow2_read_snapshots and qcow2_write_snapshots in block/qcow2-snapshot.c).
//!
//! Each entry names an L1 table (a frozen copy of the active one at the time the snapshot was
//! taken), an id and a name, timestamps, the size of the saved VM state and some optional
//! "extra data" whose known part holds the 64-bit VM state size, the disk size and the
//! instruction counter. Extra data this driver does not know is kept and written back.
//!
//! The table is read once at open and kept in memory. It is never updated in place: a new
//! table is written to fresh clusters, made live by one header update, and only then is the
//! old one freed, so a crash leaves either the old or the new table in force. What snapshots
//! do to the clusters they share with the active state lives in [`super::snapshot_ops`].

use block::{BlockDriverState, Error, Result};

use super::header::{put32, put64, Header, MAX_L1_BYTES, MAX_SNAPSHOTS};
use super::state::Meta;
use super::{read_bytes, write_bytes};

/// Size of the fixed part of an entry.
pub const ENTRY_HEADER_LEN: usize = 40;
/// Size of the extra data this driver knows: VM state size, disk size, icount.
pub const KNOWN_EXTRA_LEN: usize = 24;
/// Most extra data per entry QEMU accepts (QCOW_MAX_SNAPSHOT_EXTRA_DATA).
pub const MAX_EXTRA_DATA: u32 = 1024;
/// Largest snapshot table QEMU accepts (QCOW_MAX_SNAPSHOTS_SIZE).
pub const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Offset of nb_snapshots in the header (snapshots_offset follows it).
const HEADER_NB_SNAPSHOTS: u64 = 60;

/// One entry of the snapshot table (QEMU's QCowSnapshot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Offset of the snapshot's L1 table.
    pub l1_table_offset: u64,
    /// Entries in that L1 table.
    pub l1_size: u32,
    /// Unique id.
    pub id_str: String,
    /// User-given name.
    pub name: String,
    /// Creation time, seconds.
    pub date_sec: u32,
    /// Creation time, nanoseconds.
    pub date_nsec: u32,
    /// Guest clock at creation, nanoseconds.
    pub vm_clock_nsec: u64,
    /// Bytes of VM state saved with the snapshot.
    pub vm_state_size: u64,
    /// Virtual disk size when the snapshot was taken.
    pub disk_size: u64,
    /// Instruction counter, `u64::MAX` when not recorded.
    pub icount: u64,
    /// Extra data past the known fields, kept as found.
    pub unknown_extra: Vec<u8>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().unwrap())
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// The lengths an entry's fixed part announces: extra data, id, name.
fn variable_lengths(fixed: &[u8]) -> (usize, usize, usize) {
    (
        be32(fixed, 36) as usize,
        be16(fixed, 12) as usize,
        be16(fixed, 14) as usize,
    )
}

/// Decodes one entry from its fixed part and the bytes after it (extra, id, name).
/// `current_size` stands in for a disk size the entry does not record.
pub fn decode_entry(fixed: &[u8], rest: &[u8], current_size: u64) -> Result<Snapshot> {
    let (extra_len, id_len, name_len) = variable_lengths(fixed);
    let extra = &rest[..extra_len];
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let field = |at: usize| (extra.len() >= at + 8).then(|| be64(extra, at));
    Ok(Snapshot {
        l1_table_offset: be64(fixed, 0),
        l1_size: be32(fixed, 8),
        date_sec: be32(fixed, 16),
        date_nsec: be32(fixed, 20),
        vm_clock_nsec: be64(fixed, 24),
        vm_state_size: field(0).unwrap_or(be32(fixed, 32) as u64),
        disk_size: field(8).unwrap_or(current_size),
        icount: field(16).unwrap_or(u64::MAX),
        unknown_extra: extra.get(KNOWN_EXTRA_LEN..).unwrap_or(&[]).to_vec(),
        id_str: text(&rest[extra_len..extra_len + id_len]),
        name: text(&rest[extra_len + id_len..extra_len + id_len + name_len]),
    })
}

/// Reads `len` bytes at `offset`, the part past the end of the file reading as zeroes (as
/// QEMU's file driver reads it; the caller bounds `len`).
async fn read_padded(
    file: &BlockDriverState,
    file_len: u64,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let present = file_len.saturating_sub(offset).min(len as u64) as usize;
    let mut data = if present > 0 {
        read_bytes(file, offset, present).await?
    } else {
        Vec::new()
    };
    data.resize(len, 0);
    Ok(data)
}

/// Reads and validates the table the header points to; returns the entries and the
/// table's size in bytes (qcow2_read_snapshots). Every length is bounded before anything
/// is allocated from it.
pub async fn read_snapshots(
    file: &BlockDriverState,
    header: &Header,
) -> Result<(Vec<Snapshot>, u64)> {
    let n = header.nb_snapshots;
    if n == 0 {
        return Ok((Vec::new(), 0));
    }
    if n > MAX_SNAPSHOTS {
        return Err(Error::invalid("Snapshot table too large"));
    }
    let start = header.snapshots_offset;
    let file_len = file.getlength();
    let read_err = |e: Error| e.context("Failed to read snapshot table: ");
    let mut snapshots = Vec::new();
    let mut pos = start;
    for i in 0..n {
        pos = pos.next_multiple_of(8);
        if pos - start + ENTRY_HEADER_LEN as u64 > MAX_TABLE_BYTES {
            return Err(Error::new(libc::EFBIG, "Snapshot table is too big"));
        }
        let fixed = read_padded(file, file_len, pos, ENTRY_HEADER_LEN)
            .await
            .map_err(read_err)?;
        let (extra_len, id_len, name_len) = variable_lengths(&fixed);
        if extra_len as u32 > MAX_EXTRA_DATA {
            return Err(Error::new(
                libc::EFBIG,
                format!("Too much extra metadata in snapshot table entry {i}"),
            ));
        }
        let rest_len = extra_len + id_len + name_len;
        let rest_at = pos + ENTRY_HEADER_LEN as u64;
        let rest = read_padded(file, file_len, rest_at, rest_len)
            .await
            .map_err(read_err)?;
        snapshots.push(decode_entry(&fixed, &rest, header.size)?);
        pos = rest_at + rest_len as u64;
        if pos - start > MAX_TABLE_BYTES {
            return Err(Error::new(libc::EFBIG, "Snapshot table is too big"));
        }
    }
    Ok((snapshots, pos - start))
}

/// The on-disk form of a table (entries 8-byte aligned, the last one not padded).
pub fn encode_table(snapshots: &[Snapshot]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for sn in snapshots {
        if sn.id_str.len() > u16::MAX as usize || sn.name.len() > u16::MAX as usize {
            return Err(Error::invalid("Snapshot id or name too long"));
        }
        out.resize(out.len().next_multiple_of(8), 0);
        let extra_len = KNOWN_EXTRA_LEN + sn.unknown_extra.len();
        let mut fixed = [0u8; ENTRY_HEADER_LEN];
        put64(&mut fixed, 0, sn.l1_table_offset);
        put32(&mut fixed, 8, sn.l1_size);
        fixed[12..14].copy_from_slice(&(sn.id_str.len() as u16).to_be_bytes());
        fixed[14..16].copy_from_slice(&(sn.name.len() as u16).to_be_bytes());
        put32(&mut fixed, 16, sn.date_sec);
        put32(&mut fixed, 20, sn.date_nsec);
        put64(&mut fixed, 24, sn.vm_clock_nsec);
        // A size the 32-bit field cannot hold reads as "no VM state" to old readers.
        put32(&mut fixed, 32, u32::try_from(sn.vm_state_size).unwrap_or(0));
        put32(&mut fixed, 36, extra_len as u32);
        out.extend_from_slice(&fixed);
        out.extend_from_slice(&sn.vm_state_size.to_be_bytes());
        out.extend_from_slice(&sn.disk_size.to_be_bytes());
        out.extend_from_slice(&sn.icount.to_be_bytes());
        out.extend_from_slice(&sn.unknown_extra);
        out.extend_from_slice(sn.id_str.as_bytes());
        out.extend_from_slice(sn.name.as_bytes());
        if out.len() as u64 > MAX_TABLE_BYTES {
            return Err(Error::new(libc::EFBIG, "Snapshot table is too big"));
        }
    }
    Ok(out)
}

/// Checks that a snapshot's L1 table lies in the image and has a size QEMU accepts
/// (qcow2_validate_table for "Snapshot L1 table").
pub fn validate_l1(sn: &Snapshot, cluster_size: u64, file_len: u64) -> Result<()> {
    let bytes = sn.l1_size as u64 * 8;
    if bytes > MAX_L1_BYTES {
        return Err(Error::new(libc::EFBIG, "Snapshot L1 table too large"));
    }
    if !sn.l1_table_offset.is_multiple_of(cluster_size)
        || sn
            .l1_table_offset
            .checked_add(bytes)
            .is_none_or(|end| end > file_len)
    {
        return Err(Error::invalid("Snapshot L1 table offset invalid"));
    }
    Ok(())
}

impl Meta {
    /// Makes `self.snapshots` the table on disk (qcow2_write_snapshots): new clusters, the
    /// table and its refcounts on disk, then the header, then the old table freed.
    pub async fn write_snapshots(&mut self) -> Result<()> {
        let cs = self.g.cluster_size;
        let bytes = encode_table(&self.snapshots)?;
        let new_offset = if bytes.is_empty() {
            0
        } else {
            let offset = self
                .alloc_clusters((bytes.len() as u64).div_ceil(cs))
                .await?;
            if let Err(e) = self.place_table(offset, &bytes).await {
                let _ = self.free_clusters(offset, bytes.len() as u64).await;
                return Err(e);
            }
            offset
        };
        let mut fields = [0u8; 12];
        put32(&mut fields, 0, self.snapshots.len() as u32);
        put64(&mut fields, 4, new_offset);
        write_bytes(&self.file, HEADER_NB_SNAPSHOTS, &fields).await?;
        self.file.co_flush().await?;
        let (old_offset, old_size) = (self.header.snapshots_offset, self.snapshots_size);
        self.header.nb_snapshots = self.snapshots.len() as u32;
        self.header.snapshots_offset = new_offset;
        self.snapshots_size = bytes.len() as u64;
        if old_size != 0 {
            // The new table is live: failing to free the old one only leaks it.
            if let Err(e) = self.free_clusters(old_offset, old_size).await {
                eprintln!(
                    "qcow2_free_clusters failed: {}",
                    block::error::strerror(e.errno())
                );
            }
        }
        Ok(())
    }

    /// Writes a new table and makes sure it and its refcounts are on disk.
    async fn place_table(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.check_metadata_alloc(offset, bytes.len() as u64, "snapshot table")
            .await?;
        write_bytes(&self.file, offset, bytes).await?;
        self.caches.flush_all().await?;
        self.file.co_flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            l1_table_offset: 0x30000,
            l1_size: 2,
            id_str: "1".into(),
            name: "foo".into(),
            date_sec: 5,
            date_nsec: 6,
            vm_clock_nsec: 7,
            vm_state_size: 1 << 33,
            disk_size: 64 << 20,
            icount: u64::MAX,
            unknown_extra: vec![9; 8],
        }
    }

    #[test]
    fn entries_round_trip_with_unknown_extra_data() {
        let table = encode_table(&[sample(), sample()]).unwrap();
        let one = ENTRY_HEADER_LEN + KNOWN_EXTRA_LEN + 8 + 1 + 3;
        assert_eq!(table.len(), one.next_multiple_of(8) + one);
        let back = decode_entry(&table[..40], &table[40..one], 0).unwrap();
        assert_eq!(back, sample());
        // The 32-bit field cannot hold 8 GiB: old readers see no VM state.
        assert_eq!(be32(&table, 32), 0);
    }

    #[test]
    fn short_extra_data_falls_back_to_the_old_fields() {
        let mut fixed = [0u8; 40];
        put32(&mut fixed, 32, 1234);
        fixed[13] = 1; // id length 1
        let sn = decode_entry(&fixed, b"7", 99).unwrap();
        assert_eq!(
            (sn.vm_state_size, sn.disk_size, sn.icount),
            (1234, 99, u64::MAX)
        );
        assert_eq!(sn.id_str, "7");
    }

    #[test]
    fn snapshot_l1_tables_are_validated() {
        let mut sn = sample();
        assert!(validate_l1(&sn, 65536, 1 << 20).is_ok());
        sn.l1_table_offset = 0x30001;
        let e = validate_l1(&sn, 65536, 1 << 20).unwrap_err();
        assert_eq!(e.to_string(), "Snapshot L1 table offset invalid");
        sn.l1_table_offset = 1 << 20;
        assert!(validate_l1(&sn, 65536, 1 << 20).is_err());
        sn.l1_size = u32::MAX;
        let e = validate_l1(&sn, 65536, 1 << 20).unwrap_err();
        assert_eq!(e.to_string(), "Snapshot L1 table too large");
    }
}
