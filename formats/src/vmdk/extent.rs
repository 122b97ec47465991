//! One VMDK extent: a flat range of a file, or a sparse file whose grain directory (L1)
//! and grain tables (L2) map grains of the guest disk (VmdkExtent, get_cluster_offset,
//! vmdk_L2update, vmdk_read_extent and vmdk_write_extent in QEMU's block/vmdk.c).
//!
//! Sparse extents allocate grains by appending them at the end of the file and then
//! pointing the table entry at them; streamOptimized extents store each grain deflated
//! behind a marker (its LBA and length), and may be appended to but never rewritten.

use std::io::Read;
use std::rc::Rc;

use block::{BlkdbgEvent, BlockDriverState, Error, IoVector, RequestFlags, Result};
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;

use super::header::Geometry;
use crate::image_file::{read_in_file, write_bytes};
use crate::table_cache::TableCache;

/// Grain table entry of a zeroed grain (VMDK_GTE_ZEROED).
pub const GTE_ZEROED: u32 = 1;
/// Sparse extents address sectors with 32 bits (VMDK_EXTENT_MAX_SECTORS).
const EXTENT_MAX_SECTORS: u64 = 1 << 32;
/// Bytes of a grain marker before the compressed data (VmdkGrainMarker).
const MARKER_BYTES: usize = 12;

/// What a guest offset maps to in an extent (VMDK_OK, VMDK_UNALLOC, VMDK_ZEROED,
/// VMDK_ERROR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The grain (or flat range) starts at this byte of the extent file.
    Data(u64),
    /// Not stored: the backing file or zeroes.
    Unallocated,
    /// Marked as reading zeroes.
    Zeroed,
    /// The tables are unreadable or invalid there.
    Error,
}

/// Where a grain's table entry lives, for updating it (VmdkMetaData).
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    l1_index: usize,
    l2_index: usize,
    /// The grain table, in sectors.
    l2_offset: u64,
}

/// seSparse extents keep their tables and grains in separate areas (sectors).
#[derive(Clone, Copy, Debug)]
pub struct SeSparseAreas {
    /// Start of the grain tables.
    pub l2_tables_offset: u64,
    /// Start of the grains.
    pub clusters_offset: u64,
}

/// An open extent.
pub struct Extent {
    /// The file holding the extent.
    pub file: Rc<BlockDriverState>,
    /// Data stored 1:1 (FLAT and VMFS extents).
    pub flat: bool,
    /// Grains are deflated (streamOptimized).
    pub compressed: bool,
    /// Compressed grains carry markers.
    pub has_marker: bool,
    /// Table entry 1 means zeroes.
    pub has_zero_grain: bool,
    /// Present for seSparse extents (read-only, 64-bit entries).
    pub sesparse: Option<SeSparseAreas>,
    /// Sectors of the guest disk in this extent.
    pub sectors: u64,
    /// First sector after this extent in the guest disk.
    pub end_sector: u64,
    /// Byte in the file where a flat extent's data starts.
    pub flat_start_offset: u64,
    /// The grain directory entries that lie in the file; the rest read as 0.
    l1_table: Vec<u64>,
    /// Entries the directory has.
    l1_size: u64,
    /// The redundant directory, updated alongside the main one.
    l1_backup_table: Option<Vec<u32>>,
    /// Sectors one directory entry covers.
    l1_entry_sectors: u64,
    /// Entries per grain table.
    l2_size: u64,
    /// Recently used grain tables: (offset in sectors, entries, hits).
    l2_cache: TableCache,
    /// Sectors per grain (the whole extent for flat ones).
    pub cluster_sectors: u64,
    /// Where the next grain goes, in sectors.
    pub next_cluster_sector: u64,
    /// The extent type named in the descriptor (FLAT, SPARSE...), None for the sparse file
    /// of a monolithic image.
    pub kind: Option<String>,
}

fn entry(raw: &[u8], i: usize, size: usize) -> u64 {
    let b = &raw[i * size..(i + 1) * size];
    if size == 8 {
        u64::from_le_bytes(b.try_into().expect("8 bytes"))
    } else {
        u32::from_le_bytes(b.try_into().expect("4 bytes")) as u64
    }
}

impl Extent {
    /// A flat extent of `sectors` starting at byte `start` of `file`.
    pub fn new_flat(file: Rc<BlockDriverState>, sectors: u64, start: u64) -> Extent {
        Extent {
            file,
            flat: true,
            compressed: false,
            has_marker: false,
            has_zero_grain: false,
            sesparse: None,
            sectors,
            end_sector: sectors,
            flat_start_offset: start,
            l1_table: Vec::new(),
            l1_size: 0,
            l1_backup_table: None,
            l1_entry_sectors: 0,
            l2_size: 0,
            l2_cache: TableCache::default(),
            cluster_sectors: sectors,
            next_cluster_sector: 0,
            kind: None,
        }
    }

    /// A sparse extent with the tables of `g`, read from `file` (vmdk_add_extent and
    /// vmdk_init_tables); `entry_size` is 8 for seSparse, else 4.
    pub async fn open_sparse(
        file: Rc<BlockDriverState>,
        g: &Geometry,
        entry_size: usize,
    ) -> Result<Extent> {
        g.validate()?;
        if g.cluster_sectors == 0 || g.l2_size == 0 {
            return Err(Error::new(
                libc::EFBIG,
                "Invalid granularity, image may be corrupt",
            ));
        }
        let nb_sectors = file.getlength() / 512;
        let l1_bytes = g.l1_size * entry_size as u64;
        let raw = read_in_file(&file, g.l1_offset, l1_bytes)
            .await
            .map_err(|e| {
                Error::with_errno_message(
                    e.errno(),
                    format!("Could not read l1 table from extent '{}'", file.filename()),
                )
            })?;
        let l1_table = (0..raw.len() / entry_size)
            .map(|i| entry(&raw, i, entry_size))
            .collect();
        let l1_backup_table = if g.l1_backup_offset != 0 {
            let raw = read_in_file(&file, g.l1_backup_offset, l1_bytes).await?;
            Some(
                (0..raw.len() / 4)
                    .map(|i| entry(&raw, i, 4) as u32)
                    .collect(),
            )
        } else {
            None
        };
        Ok(Extent {
            flat: false,
            compressed: false,
            has_marker: false,
            has_zero_grain: false,
            sesparse: None,
            sectors: g.sectors,
            end_sector: g.sectors,
            flat_start_offset: 0,
            l1_table,
            l1_size: g.l1_size,
            l1_backup_table,
            l1_entry_sectors: g.l2_size * g.cluster_sectors,
            l2_size: g.l2_size,
            l2_cache: TableCache::default(),
            cluster_sectors: g.cluster_sectors,
            next_cluster_sector: nb_sectors.next_multiple_of(g.cluster_sectors),
            kind: None,
            file,
        })
    }

    /// First guest sector of the extent.
    pub fn start_sector(&self) -> u64 {
        self.end_sector - self.sectors
    }

    /// Bytes per grain.
    pub fn cluster_bytes(&self) -> u64 {
        self.cluster_sectors * 512
    }

    /// Where a guest offset lies within its grain (vmdk_find_offset_in_cluster).
    pub fn offset_in_cluster(&self, offset: u64) -> u64 {
        (offset - self.start_sector() * 512) % self.cluster_bytes()
    }

    fn entry_size(&self) -> usize {
        if self.sesparse.is_some() {
            8
        } else {
            4
        }
    }

    /// The grain table at `l2_offset` (sectors), through the cache.
    async fn l2_table(&mut self, l2_offset: u64) -> Result<&Vec<u64>> {
        if self.l2_cache.contains(l2_offset) {
            return Ok(self.l2_cache.get_mut(l2_offset).expect("cached"));
        }
        let size = self.entry_size();
        self.file.debug_event(BlkdbgEvent::L2Load).await;
        let raw = read_in_file(&self.file, l2_offset * 512, self.l2_size * size as u64).await?;
        if raw.len() < (self.l2_size as usize) * size {
            // A table beyond the end of the file: QEMU's read would fail there too.
            return Err(Error::from_errno(libc::EIO));
        }
        let table = (0..self.l2_size as usize)
            .map(|i| entry(&raw, i, size))
            .collect();
        Ok(self.l2_cache.insert(l2_offset, table))
    }

    /// The grain table of a directory entry, in sectors (0: none), checking seSparse's
    /// encoding.
    fn l2_offset(&self, l1_index: usize) -> Option<u64> {
        let raw = self.l1_table.get(l1_index).copied().unwrap_or(0);
        let Some(se) = self.sesparse else {
            return Some(raw);
        };
        if raw == 0 {
            return Some(0);
        }
        // The top nibble is 1 for an allocated table, and the index fits 32 bits.
        if raw & 0xffff_ffff_0000_0000 != 0x1000_0000_0000_0000 {
            return None;
        }
        let l2_bytes = self.l2_size * 8;
        let offset = se.l2_tables_offset + (raw & 0xffff_ffff) * l2_bytes / 512;
        (offset <= u32::MAX as u64).then_some(offset)
    }

    /// Maps a guest offset (get_cluster_offset without allocation); the slot is returned
    /// when the grain table exists, for an update.
    pub async fn lookup(&mut self, offset: u64) -> (Lookup, Option<Slot>) {
        if self.flat {
            return (Lookup::Data(self.flat_start_offset), None);
        }
        let rel = (offset >> 9) - self.start_sector();
        let l1_index = rel / self.l1_entry_sectors;
        if l1_index >= self.l1_size {
            return (Lookup::Error, None);
        }
        let l1_index = l1_index as usize;
        let Some(l2_offset) = self.l2_offset(l1_index) else {
            return (Lookup::Error, None);
        };
        if l2_offset == 0 {
            return (Lookup::Unallocated, None);
        }
        let l2_index = ((rel / self.cluster_sectors) % self.l2_size) as usize;
        let (cluster_sectors, sesparse, zero_grain) =
            (self.cluster_sectors, self.sesparse, self.has_zero_grain);
        let raw = match self.l2_table(l2_offset).await {
            Ok(t) => t[l2_index],
            Err(_) => return (Lookup::Error, None),
        };
        let slot = Some(Slot {
            l1_index,
            l2_index,
            l2_offset,
        });
        let found = match sesparse {
            Some(se) => match raw >> 60 {
                0 if raw == 0 => Lookup::Unallocated,
                // 1: unmapped, 2: zeroed; both read as zeroes.
                1 | 2 => Lookup::Zeroed,
                3 => {
                    let index = ((raw & 0x0fff_0000_0000_0000) >> 48)
                        | ((raw & 0x0000_ffff_ffff_ffff) << 12);
                    let sector = index
                        .checked_mul(cluster_sectors)
                        .and_then(|s| s.checked_add(se.clusters_offset));
                    sector
                        .and_then(|s| s.checked_mul(512))
                        .map_or(Lookup::Error, Lookup::Data)
                }
                _ => Lookup::Error,
            },
            None if zero_grain && raw == GTE_ZEROED as u64 => Lookup::Zeroed,
            None if raw == 0 => Lookup::Unallocated,
            None => Lookup::Data(raw << 9),
        };
        (found, slot)
    }

    /// Reserves the next grain at the end of the file, in bytes; None when the extent
    /// cannot address it.
    pub fn allocate(&mut self) -> Option<u64> {
        if self.next_cluster_sector >= EXTENT_MAX_SECTORS {
            return None;
        }
        let sector = self.next_cluster_sector;
        self.next_cluster_sector += self.cluster_sectors;
        Some(sector * 512)
    }

    /// Points a grain table entry (and its redundant copy) at `value`, stably
    /// (vmdk_L2update).
    pub async fn update_l2(&mut self, slot: &Slot, value: u32) -> Result<()> {
        self.file.debug_event(BlkdbgEvent::L2Update).await;
        // With the table cached, the entry's whole sector goes out from the cache: a 4-byte
        // write would make the layer below read the sector back first. The redundant table
        // mirrors the primary one, so the same sector serves both.
        let (first, bytes) = match self.l2_cache.get_mut(slot.l2_offset) {
            Some(table) => {
                let old = std::mem::replace(&mut table[slot.l2_index], value as u64);
                let first = slot.l2_index / 128 * 128;
                let end = (first + 128).min(table.len());
                let bytes: Vec<u8> = table[first..end]
                    .iter()
                    .flat_map(|&e| (e as u32).to_le_bytes())
                    .collect();
                // Until the write lands the file still holds the old entry.
                table[slot.l2_index] = old;
                (first, bytes)
            }
            None => (slot.l2_index, value.to_le_bytes().to_vec()),
        };
        write_bytes(&self.file, slot.l2_offset * 512 + first as u64 * 4, &bytes).await?;
        if let Some(backup) = &self.l1_backup_table {
            let l2 = backup.get(slot.l1_index).copied().unwrap_or(0) as u64;
            write_bytes(&self.file, l2 * 512 + first as u64 * 4, &bytes).await?;
        }
        self.file.co_flush().await?;
        if let Some(table) = self.l2_cache.get_mut(slot.l2_offset) {
            table[slot.l2_index] = value as u64;
        }
        Ok(())
    }

    /// Reads guest data of a grain at `host` (vmdk_read_extent): compressed grains are
    /// inflated whole, their size bounded by the grain size.
    pub async fn read(&self, host: u64, offset_in_cluster: u64, qiov: &IoVector) -> Result<()> {
        if !self.compressed {
            self.file.debug_event(BlkdbgEvent::ReadAio).await;
            return self
                .file
                .co_preadv(host + offset_in_cluster, qiov, RequestFlags::empty())
                .await;
        }
        let cluster_bytes = self.cluster_bytes();
        self.file.debug_event(BlkdbgEvent::ReadCompressed).await;
        let buf = read_in_file(&self.file, host, cluster_bytes * 2).await?;
        let einval = || Error::from_errno(libc::EINVAL);
        let data = if self.has_marker {
            let size = buf
                .get(8..MARKER_BYTES)
                .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")) as u64)
                .ok_or_else(einval)?;
            if size == 0 || size > cluster_bytes * 2 {
                return Err(einval());
            }
            buf.get(MARKER_BYTES..MARKER_BYTES + size as usize)
                .ok_or_else(einval)?
        } else {
            &buf[..]
        };
        let mut grain = Vec::new();
        ZlibDecoder::new(data)
            .take(cluster_bytes + 1)
            .read_to_end(&mut grain)
            .map_err(|_| einval())?;
        let end = offset_in_cluster as usize + qiov.len();
        if grain.len() as u64 > cluster_bytes || end > grain.len() {
            return Err(einval());
        }
        qiov.copy_from_slice(0, &grain[offset_in_cluster as usize..end]);
        Ok(())
    }

    /// Writes guest data into a grain at `host` (vmdk_write_extent); a compressed extent
    /// takes whole grains only (or the tail of the disk), deflated behind a marker for
    /// guest offset `offset`.
    pub async fn write(
        &mut self,
        host: u64,
        offset_in_cluster: u64,
        qiov: &IoVector,
        offset: u64,
    ) -> Result<()> {
        let n = qiov.len() as u64;
        let cluster_bytes = self.cluster_bytes();
        let (at, data) = if self.compressed {
            let whole = n == cluster_bytes || offset + n == self.end_sector * 512;
            if offset_in_cluster != 0 || n > cluster_bytes || !whole || !self.has_marker {
                return Err(Error::from_errno(libc::EINVAL));
            }
            let mut enc = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            let deflated = std::io::Write::write_all(&mut enc, &qiov.to_vec())
                .and_then(|_| enc.finish())
                .map_err(|_| Error::from_errno(libc::EINVAL))?;
            let mut marker = (offset >> 9).to_le_bytes().to_vec();
            marker.extend((deflated.len() as u32).to_le_bytes());
            marker.extend(deflated);
            self.file.debug_event(BlkdbgEvent::WriteCompressed).await;
            (host, IoVector::from_slice(&marker))
        } else {
            self.file.debug_event(BlkdbgEvent::WriteAio).await;
            (host + offset_in_cluster, qiov.clone())
        };
        let result = self.file.co_pwritev(at, &data, RequestFlags::empty()).await;
        let end_sector = (at + data.len() as u64).div_ceil(512);
        self.next_cluster_sector = if self.compressed {
            end_sector
        } else {
            self.next_cluster_sector.max(end_sector)
        };
        result
    }
}
