//! Persistent dirty bitmaps in a qcow2 image (docs/interop/qcow2.txt "Bitmaps extension";
//! QEMU's block/qcow2-bitmap.c).
//!
//! The header's bitmaps extension points at the [`directory`]; each directory entry points at
//! a bitmap table, whose entries point at clusters of bitmap data (0 for a cluster of zeroes,
//! 1 for one of ones). The extension counts only while its autoclear bit is set: a program that
//! knows nothing of bitmaps clears the bit when it writes the image, and the bitmaps are then
//! dropped as stale.
//!
//! Opening read-write loads every bitmap and marks it in use in the image; closing stores the
//! bitmaps again and clears the flag. A bitmap still marked in use when the image is next
//! opened was not stored (a crash): it is loaded as inconsistent, and only removing it helps.
//! This file loads; `store` writes and removes, `check` counts references for `qemu-img check`.

mod check;
pub mod directory;
mod store;

use std::rc::Rc;

use block::dirty_bitmap::BdrvDirtyBitmap;
use block::{BlockDriverState, Error, Result};

use super::header::AUTOCLEAR_BITMAPS;
use super::state::{decode_table, Meta};
use super::{read_bytes, write_bytes, Qcow2};
use directory::{DirEntry, FLAG_AUTO, FLAG_IN_USE};

/// Bitmap table entry: the host offset of a data cluster.
const TABLE_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bitmap table entry bits that must be zero.
const TABLE_RESERVED_MASK: u64 = 0xff00_0000_0000_01fe;
/// Bitmap table entry without a cluster: every bit of the range is set.
const TABLE_ALL_ONES: u64 = 1;

/// Whether a bitmap table entry is well-formed (check_table_entry).
fn table_entry_valid(entry: u64, cluster_size: u64) -> bool {
    let offset = entry & TABLE_OFFSET_MASK;
    entry & TABLE_RESERVED_MASK == 0
        && (offset == 0 || (entry & TABLE_ALL_ONES == 0 && offset.is_multiple_of(cluster_size)))
}

/// The qcow2 `bitmaps` list of `qemu-img info`: name, granularity and flags of each stored
/// bitmap, in the directory's order and in the key order QEMU prints.
pub fn info_list(list: &[DirEntry]) -> serde_json::Value {
    let entries = list.iter().map(|b| {
        let mut flags = Vec::new();
        if b.flags & FLAG_IN_USE != 0 {
            flags.push("in-use");
        }
        if b.flags & FLAG_AUTO != 0 {
            flags.push("auto");
        }
        serde_json::json!({
            "flags": flags,
            "name": b.name,
            "granularity": 1u64 << b.granularity_bits,
        })
    });
    serde_json::Value::Array(entries.collect())
}

/// Bytes a copy of `bs`'s persistent bitmaps takes in a new image of `cluster_size`:
/// all data clusters, tables and the directory (qcow2_get_persistent_dirty_bitmap_size).
pub fn persistent_dirty_bitmap_size(bs: &BlockDriverState, cluster_size: u64) -> u64 {
    let mut size = 0;
    let mut dir = 0;
    for bm in bs.dirty_bitmaps().iter().filter(|b| b.persistent()) {
        let bytes = directory::bitmap_bytes_needed(bm.size(), bm.granularity() as u64);
        let clusters = bytes.div_ceil(cluster_size);
        size += clusters * cluster_size + (clusters * 8).next_multiple_of(cluster_size);
        dir += directory::entry_size(bm.name().unwrap_or_default().len());
    }
    size + dir.next_multiple_of(cluster_size)
}

/// Says that a stale bitmaps extension is dropped (the warning of qcow2_read_extensions; as
/// in QEMU, the second sentence ends without a newline).
pub(crate) fn warn_stale(version: u32) {
    block::error::warn_report(if version < 3 {
        "This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent"
    } else {
        "a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent"
    });
    eprint!("Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.");
}

impl Meta {
    /// The image's length as the node reports it: what a bitmap covers.
    pub(crate) fn bitmap_len(&self) -> u64 {
        self.header.size.next_multiple_of(512)
    }

    /// Reads and checks the bitmap directory (bitmap_list_load).
    pub(crate) async fn load_bitmap_list(&self) -> Result<Vec<DirEntry>> {
        let Some(ext) = self.header.bitmaps else {
            return Ok(Vec::new());
        };
        if ext.directory_size == 0 {
            return Err(Error::invalid("Requested bitmap directory size is zero"));
        }
        // The size is bounded by QEMU's limit already; within the file it costs only what
        // the file holds.
        let in_file = ext
            .directory_offset
            .checked_add(ext.directory_size)
            .is_some_and(|end| end <= self.file.getlength());
        if !in_file {
            return Err(Error::invalid(
                "Failed to read bitmap directory: Invalid argument",
            ));
        }
        let dir = read_bytes(
            &self.file,
            ext.directory_offset,
            ext.directory_size as usize,
        )
        .await
        .map_err(|e| e.context("Failed to read bitmap directory: "))?;
        block::trace!(
            qcow2_load_dirty_bitmaps,
            "nb_bitmaps {} offset 0x{:x}",
            ext.nb_bitmaps,
            ext.directory_offset
        );
        directory::parse(&dir, ext.nb_bitmaps, self.g.cluster_size, self.bitmap_len())
    }

    /// Reads and checks a bitmap table (bitmap_table_load); EINVAL for a bad entry.
    pub(crate) async fn load_bitmap_table(&self, b: &DirEntry) -> Result<Vec<u64>> {
        let bytes = read_bytes(&self.file, b.table_offset, b.table_size as usize * 8).await?;
        let table = decode_table(&bytes);
        if table
            .iter()
            .any(|&e| !table_entry_valid(e, self.g.cluster_size))
        {
            return Err(Error::from_errno(libc::EINVAL));
        }
        Ok(table)
    }

    /// Fills `bm` from the clusters its table points at (load_bitmap_data).
    async fn load_bitmap_data(&self, table: &[u64], bm: &BdrvDirtyBitmap) -> Result<()> {
        let cs = self.g.cluster_size;
        let size = bm.size();
        if bm.serialization_size(0, size).div_ceil(cs) != table.len() as u64 {
            return Err(Error::from_errno(libc::EINVAL));
        }
        let limit = bm.serialization_coverage(cs);
        for (i, &entry) in table.iter().enumerate() {
            let offset = i as u64 * limit;
            let count = (size - offset).min(limit);
            match entry & TABLE_OFFSET_MASK {
                0 if entry & TABLE_ALL_ONES != 0 => bm.deserialize_ones(offset, count),
                0 => {}
                data => {
                    let buf = read_bytes(&self.file, data, cs as usize).await?;
                    bm.deserialize_part(&buf, offset, count);
                }
            }
        }
        Ok(())
    }

    /// Rewrites the directory where it is, with the autoclear bit off meanwhile so that a
    /// crash half-way leaves the bitmaps stale rather than wrong
    /// (update_ext_header_and_dir_in_place).
    async fn update_dir_in_place(&mut self, list: &[DirEntry]) -> Result<()> {
        let ext = self.header.bitmaps.ok_or(Error::from_errno(libc::EINVAL))?;
        if self.header.autoclear_features & AUTOCLEAR_BITMAPS == 0
            || list.len() != ext.nb_bitmaps as usize
        {
            return Err(Error::from_errno(libc::EINVAL));
        }
        let dir = directory::serialise(list, self.g.cluster_size, self.bitmap_len())?;
        if dir.len() as u64 != ext.directory_size {
            return Err(Error::from_errno(libc::EINVAL));
        }
        self.header.autoclear_features &= !AUTOCLEAR_BITMAPS;
        self.write_header_sync().await?;
        write_bytes(&self.file, ext.directory_offset, &dir).await?;
        self.write_header_sync().await?;
        self.header.autoclear_features |= AUTOCLEAR_BITMAPS;
        self.write_header_sync().await
    }

    /// Writes the header and flushes it to the disk (update_header_sync).
    pub(crate) async fn write_header_sync(&mut self) -> Result<()> {
        self.write_header().await?;
        self.file.co_flush().await
    }
}

impl Qcow2 {
    /// Creates the node's bitmaps from the image at open; read-write, marks them in use
    /// (qcow2_load_dirty_bitmaps).
    pub(super) async fn load_dirty_bitmaps(
        &self,
        bs: &BlockDriverState,
        meta: &mut Meta,
    ) -> Result<()> {
        let on_disk = meta.load_bitmap_list().await?;
        let mut list = on_disk.clone();
        let mut created: Vec<Rc<BdrvDirtyBitmap>> = Vec::new();
        let mut needs_update = false;
        for b in list.iter_mut() {
            if b.flags & FLAG_IN_USE != 0 && bs.find_dirty_bitmap(&b.name).is_some() {
                continue;
            }
            let loaded = self.load_bitmap(bs, meta, b).await;
            let bm = match loaded {
                Ok(bm) => bm,
                Err(e) => {
                    created.iter().for_each(|bm| bs.release_dirty_bitmap(bm));
                    return Err(e);
                }
            };
            bm.set_persistence(true);
            if b.flags & FLAG_IN_USE != 0 {
                bm.set_inconsistent();
            } else {
                b.flags |= FLAG_IN_USE;
                needs_update = true;
            }
            if b.flags & FLAG_AUTO == 0 {
                bm.disable();
            }
            created.push(bm);
        }
        if needs_update && meta.writable {
            if let Err(e) = meta.update_dir_in_place(&list).await {
                created.iter().for_each(|bm| bs.release_dirty_bitmap(bm));
                return Err(e.context("Can't update bitmap directory: "));
            }
        }
        if !meta.writable {
            created.iter().for_each(|bm| bm.set_readonly(true));
        }
        *self.bitmap_dir.borrow_mut() = if needs_update && meta.writable {
            list
        } else {
            on_disk
        };
        Ok(())
    }

    /// Refuses a resize that bitmaps stored in the image could not follow
    /// (qcow2_truncate_bitmaps_check).
    pub(super) fn truncate_bitmaps_check(&self, bs: &BlockDriverState) -> Result<()> {
        for b in self.bitmap_dir.borrow().iter() {
            let bm = bs.find_dirty_bitmap(&b.name).ok_or_else(|| {
                Error::not_supported(
                    "Cannot resize qcow2 with persistent bitmaps that were not loaded into memory",
                )
            })?;
            bm.check(block::dirty_bitmap::BitmapCheck::DEFAULT)
                .map_err(|e| Error::new(libc::ENOTSUP, e.to_string()))?;
        }
        Ok(())
    }

    /// Creates one bitmap and, unless it is stale, loads its data (load_bitmap).
    async fn load_bitmap(
        &self,
        bs: &BlockDriverState,
        meta: &Meta,
        b: &DirEntry,
    ) -> Result<Rc<BdrvDirtyBitmap>> {
        let bm = bs.create_dirty_bitmap_sized(
            1 << b.granularity_bits,
            Some(&b.name),
            meta.bitmap_len(),
        )?;
        if b.flags & FLAG_IN_USE != 0 {
            return Ok(bm);
        }
        let loaded = match meta.load_bitmap_table(b).await {
            Ok(table) => meta.load_bitmap_data(&table, &bm).await.map_err(|e| {
                Error::with_errno_message(
                    e.errno(),
                    format!("Could not read bitmap '{}' from image", b.name),
                )
            }),
            Err(e) => Err(Error::with_errno_message(
                e.errno(),
                format!(
                    "Could not read bitmap_table table from image for bitmap '{}'",
                    b.name
                ),
            )),
        };
        if let Err(e) = loaded {
            bs.release_dirty_bitmap(&bm);
            return Err(e);
        }
        Ok(bm)
    }
}
