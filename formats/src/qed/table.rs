//! The L1 and L2 tables and cluster allocation (QEMU's block/qed-table.c,
//! qed-l2-cache.c and the allocating write path of block/qed.c).
//!
//! A guest offset splits into an L1 index, an L2 index and an offset in the cluster. An L1
//! entry is the offset of an L2 table, or 0; an L2 entry is the offset of a data cluster,
//! 0 for a cluster that reads from the backing file (or as zeroes), or 1 for a cluster that
//! reads as zeroes whatever the backing file holds. QED keeps no reference counts: new
//! clusters are appended at the end of the file, data before the table entry that points
//! at it, so a crash can leak clusters but not expose garbage.

use std::collections::HashMap;
use std::rc::Rc;

use block::{BlockDriverState, Error, Result};

use super::header::Header;
use crate::image_file::{read_bytes, write_bytes};

/// L2 entry of a cluster that reads as zeroes (QED_ZERO_CLUSTER).
pub const ZERO_CLUSTER: u64 = 1;
/// Bytes of the file's sectors: table updates write whole ones.
const SECTOR: u64 = 512;
/// L2 tables kept in memory at most (the L2 cache).
const L2_CACHE_TABLES: usize = 64;

/// What a run of guest clusters maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Not stored: read from the backing file, or zeroes.
    Unallocated,
    /// Reads as zeroes.
    Zero,
    /// Stored at this host offset.
    Data(u64),
}

/// The metadata of an open image, behind the driver's lock.
pub struct Tables {
    /// The image file.
    pub file: Rc<BlockDriverState>,
    /// The header as last written.
    pub header: Header,
    /// The L1 table.
    pub l1: Vec<u64>,
    l2_cache: HashMap<u64, Vec<u64>>,
    /// Where the next cluster is appended.
    pub file_end: u64,
}

fn decode(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().unwrap()))
        .collect()
}

fn classify(entry: u64) -> Mapping {
    match entry {
        0 => Mapping::Unallocated,
        ZERO_CLUSTER => Mapping::Zero,
        e => Mapping::Data(e),
    }
}

fn encode(entries: &[u64]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

impl Tables {
    /// Loads the L1 table of a validated header.
    pub async fn load(file: Rc<BlockDriverState>, header: Header) -> Result<Tables> {
        let raw = read_bytes(&file, header.l1_table_offset, header.table_bytes() as usize).await?;
        let cs = header.cluster_size as u64;
        let file_end = file.getlength().div_ceil(cs) * cs;
        Ok(Tables {
            l1: decode(&raw),
            file,
            header,
            l2_cache: HashMap::new(),
            file_end,
        })
    }

    fn cluster_size(&self) -> u64 {
        self.header.cluster_size as u64
    }

    /// Splits a guest offset into L1 index, L2 index and offset in the cluster.
    fn split(&self, offset: u64) -> (usize, usize, u64) {
        let cs = self.cluster_size();
        let cluster = offset / cs;
        let per = self.header.table_entries();
        (
            (cluster / per) as usize,
            (cluster % per) as usize,
            offset % cs,
        )
    }

    /// The L2 table an L1 entry points at, read through the cache; None when the entry
    /// is 0. A table outside the file is corruption, refused with EIO.
    pub async fn l2(&mut self, l1_index: usize) -> Result<Option<&mut Vec<u64>>> {
        let offset = self.l1[l1_index];
        if offset == 0 {
            return Ok(None);
        }
        if !self.l2_cache.contains_key(&offset) {
            if !self
                .header
                .table_offset_valid(offset, self.file.getlength())
            {
                return Err(Error::new(libc::EIO, "qed: L2 table offset is invalid"));
            }
            let raw = read_bytes(&self.file, offset, self.header.table_bytes() as usize).await?;
            if self.l2_cache.len() >= L2_CACHE_TABLES {
                self.l2_cache.clear();
            }
            self.l2_cache.insert(offset, decode(&raw));
        }
        Ok(self.l2_cache.get_mut(&offset))
    }

    /// What `offset` maps to, and for how many bytes (up to `bytes`) the same holds:
    /// contiguous data, or a run of zero or unallocated clusters in one L2 table
    /// (qed_find_cluster).
    pub async fn find(&mut self, offset: u64, bytes: u64) -> Result<(Mapping, u64)> {
        let (l1i, l2i, in_cluster) = self.split(offset);
        let cs = self.cluster_size();
        let file_len = self.file.getlength();
        let header = self.header.clone();
        let Some(table) = self.l2(l1i).await? else {
            let left_in_table = (header.table_entries() - l2i as u64) * cs - in_cluster;
            return Ok((Mapping::Unallocated, left_in_table.min(bytes)));
        };
        let first = classify(table[l2i]);
        if let Mapping::Data(host) = first {
            if !header.cluster_offset_valid(host, file_len) {
                return Err(Error::new(libc::EIO, "qed: data cluster offset is invalid"));
            }
        }
        let mut n = cs - in_cluster;
        let mut i = l2i + 1;
        while n < bytes && i < table.len() {
            let same = match (first, classify(table[i])) {
                (Mapping::Data(a), Mapping::Data(b)) => b == a + (i - l2i) as u64 * cs,
                (a, b) => a == b,
            };
            if !same {
                break;
            }
            n += cs;
            i += 1;
        }
        let mapping = match first {
            Mapping::Data(host) => Mapping::Data(host + in_cluster),
            other => other,
        };
        Ok((mapping, n.min(bytes)))
    }

    /// Clusters from `offset` (up to `bytes`) in one L2 table that are not stored, and the
    /// L2 entry of the first and last of them.
    pub async fn unallocated_run(&mut self, offset: u64, bytes: u64) -> Result<(u64, u64, u64)> {
        let (l1i, l2i, in_cluster) = self.split(offset);
        let cs = self.cluster_size();
        let wanted = (in_cluster + bytes).div_ceil(cs);
        let per = self.header.table_entries() as usize;
        let Some(table) = self.l2(l1i).await? else {
            let n = wanted.min((per - l2i) as u64);
            return Ok((n, 0, 0));
        };
        let mut n = 0;
        while n < wanted && l2i + (n as usize) < per && table[l2i + n as usize] <= ZERO_CLUSTER {
            n += 1;
        }
        Ok((n, table[l2i], table[l2i + n as usize - 1]))
    }

    /// Points `count` clusters from guest `offset` at host clusters from `host`, creating
    /// their L2 table if needed; the data must already be written (qed_aio_write_l2_update
    /// and qed_aio_write_l1_update).
    pub async fn map_clusters(&mut self, offset: u64, count: u64, host: u64) -> Result<()> {
        let (l1i, l2i, _) = self.split(offset);
        let cs = self.cluster_size();
        let new_entries: Vec<u64> = (0..count).map(|k| host + k * cs).collect();
        if self.l1[l1i] == 0 {
            let mut table = vec![0u64; self.header.table_entries() as usize];
            table[l2i..l2i + count as usize].copy_from_slice(&new_entries);
            let at = self.allocate(self.header.table_size as u64);
            write_bytes(&self.file, at, &encode(&table)).await?;
            self.file.co_flush().await?;
            self.l1[l1i] = at;
            let l1_at = self.header.l1_table_offset + l1i as u64 * 8;
            write_bytes(&self.file, l1_at, &at.to_le_bytes()).await?;
            self.l2_cache.insert(at, table);
            return Ok(());
        }
        let table_at = self.l1[l1i];
        let table = self.l2(l1i).await?.expect("L1 entry is set");
        table[l2i..l2i + count as usize].copy_from_slice(&new_entries);
        // Whole sectors of the cached table, as qed_write_table: an 8-byte write would make
        // the layer below read the sector back first.
        let per_sector = SECTOR as usize / 8;
        let first = l2i / per_sector * per_sector;
        let end = (l2i + count as usize)
            .div_ceil(per_sector)
            .saturating_mul(per_sector)
            .min(table.len());
        let bytes = encode(&table[first..end]);
        write_bytes(&self.file, table_at + first as u64 * 8, &bytes).await
    }

    /// Reserves `clusters` clusters at the end of the file (qed_alloc_clusters).
    pub fn allocate(&mut self, clusters: u64) -> u64 {
        let at = self.file_end;
        self.file_end += clusters * self.cluster_size();
        at
    }

    /// Writes the header cluster's fixed fields.
    pub async fn write_header(&self) -> Result<()> {
        write_bytes(&self.file, 0, &self.header.serialise()).await
    }

    /// Writes an L1 or L2 table back whole (used by repairs).
    pub async fn write_table(&mut self, offset: u64, entries: &[u64]) -> Result<()> {
        self.l2_cache.remove(&offset);
        write_bytes(&self.file, offset, &encode(entries)).await
    }

    /// Reads a table without caching it (used by check).
    pub async fn read_table(&self, offset: u64) -> Result<Vec<u64>> {
        Ok(decode(
            &read_bytes(&self.file, offset, self.header.table_bytes() as usize).await?,
        ))
    }
}
