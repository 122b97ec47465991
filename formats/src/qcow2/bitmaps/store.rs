//! Writing bitmaps into the image: storing the node's persistent bitmaps when the image
//! closes, removing one, and the checks before a new one is added
//! (qcow2_store_persistent_dirty_bitmaps, qcow2_co_remove_persistent_dirty_bitmap and
//! qcow2_co_can_store_new_dirty_bitmap in QEMU's block/qcow2-bitmap.c).
//!
//! A store writes every bitmap to fresh clusters, then a new directory, then points the
//! header at it, and only then frees what the old directory used: a crash at any point leaves
//! either the old bitmaps or the new ones.

use std::rc::Rc;

use block::dirty_bitmap::BdrvDirtyBitmap;
use block::{BlockDriverState, Error, Result};

use super::directory::{self, DirEntry, FLAG_AUTO, FLAG_IN_USE, MAX_PHYS_SIZE, MAX_TABLE_SIZE};
use super::TABLE_OFFSET_MASK;
use crate::qcow2::header::{BitmapsExt, AUTOCLEAR_BITMAPS, MAX_BITMAPS, MAX_BITMAP_DIRECTORY_SIZE};
use crate::qcow2::state::{encode_table, Meta};
use crate::qcow2::{write_bytes, Qcow2};

impl Meta {
    /// Frees a bitmap's data clusters and table (free_bitmap_clusters).
    pub(crate) async fn free_bitmap_clusters(&mut self, b: &DirEntry) -> Result<()> {
        let table = self.load_bitmap_table(b).await?;
        self.free_table_clusters(&table).await?;
        self.free_clusters(b.table_offset, b.table_size as u64 * 8)
            .await
    }

    /// Frees the data clusters a bitmap table points at (clear_bitmap_table).
    async fn free_table_clusters(&mut self, table: &[u64]) -> Result<()> {
        let cs = self.g.cluster_size;
        for &e in table {
            if e & TABLE_OFFSET_MASK != 0 {
                self.free_clusters(e & TABLE_OFFSET_MASK, cs).await?;
            }
        }
        Ok(())
    }

    /// Writes the dirty parts of `bm` to new clusters and returns its table: clusters of
    /// zeroes are not written (store_bitmap_data).
    async fn store_bitmap_data(&mut self, bm: &BdrvDirtyBitmap, name: &str) -> Result<Vec<u64>> {
        let cs = self.g.cluster_size;
        let size = bm.size();
        let tb_size = bm.serialization_size(0, size).div_ceil(cs);
        if tb_size > MAX_TABLE_SIZE || tb_size * cs > MAX_PHYS_SIZE {
            return Err(Error::invalid(format!("Bitmap '{name}' is too big")));
        }
        let mut table = vec![0u64; tb_size as usize];
        let limit = bm.serialization_coverage(cs);
        let mut offset = 0;
        while let Some(dirty) = bm.next_dirty(offset, u64::MAX) {
            let start = dirty - dirty % limit;
            let end = size.min(start + limit);
            let written = self.store_bitmap_cluster(bm, start, end).await;
            match written {
                Ok(host) => table[(start / limit) as usize] = host,
                Err(e) => {
                    self.free_table_clusters(&table).await?;
                    return Err(e.context(format!("Failed to write bitmap '{name}' to file: ")));
                }
            }
            offset = end;
        }
        Ok(table)
    }

    /// Allocates and writes one cluster of bitmap data covering `start..end` of the disk.
    async fn store_bitmap_cluster(
        &mut self,
        bm: &BdrvDirtyBitmap,
        start: u64,
        end: u64,
    ) -> Result<u64> {
        let cs = self.g.cluster_size;
        let host = self.alloc_clusters(1).await?;
        let mut buf = vec![0u8; cs as usize];
        bm.serialize_part(&mut buf, start, end - start);
        write_bytes(&self.file, host, &buf).await?;
        Ok(host)
    }

    /// Stores one bitmap: data, then its table (store_bitmap).
    async fn store_bitmap(&mut self, bm: &BdrvDirtyBitmap, entry: &mut DirEntry) -> Result<()> {
        let table = self.store_bitmap_data(bm, &entry.name).await?;
        let bytes = encode_table(&table);
        let stored = match self.alloc_bytes_clusters(bytes.len() as u64).await {
            Ok(offset) => write_bytes(&self.file, offset, &bytes)
                .await
                .map(|_| offset),
            Err(e) => Err(e),
        };
        match stored {
            Ok(offset) => {
                entry.table_offset = offset;
                entry.table_size = table.len() as u32;
                Ok(())
            }
            Err(e) => {
                self.free_table_clusters(&table).await?;
                Err(e.context(format!("Failed to write bitmap '{}' to file: ", entry.name)))
            }
        }
    }

    /// Allocates whole clusters for `bytes` of metadata (qcow2_alloc_clusters on a size).
    async fn alloc_bytes_clusters(&mut self, bytes: u64) -> Result<u64> {
        self.alloc_clusters(bytes.div_ceil(self.g.cluster_size))
            .await
    }

    /// Writes `list` as a new directory, points the header at it and frees the old one; an
    /// empty list removes the extension (update_ext_header_and_dir).
    pub(crate) async fn update_ext_header_and_dir(&mut self, list: &[DirEntry]) -> Result<()> {
        let old = self.header.bitmaps;
        let old_autoclear = self.header.autoclear_features;
        let mut new_dir = None;
        if list.is_empty() {
            self.header.autoclear_features &= !AUTOCLEAR_BITMAPS;
            self.header.bitmaps = None;
        } else {
            if list.len() > MAX_BITMAPS as usize {
                return Err(Error::from_errno(libc::EINVAL));
            }
            let dir = directory::serialise(list, self.g.cluster_size, self.bitmap_len())?;
            let offset = self.alloc_bytes_clusters(dir.len() as u64).await?;
            new_dir = Some((offset, dir.len() as u64));
            // The directory, the tables and data it points at and the refcounts that count
            // them all reach the disk before the header that makes them live
            // (qcow2_flush_caches, which flushes the file too).
            let written = match write_bytes(&self.file, offset, &dir).await {
                Ok(()) => match self.caches.flush_all().await {
                    Ok(()) => self.file.co_flush().await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                self.free_clusters(offset, dir.len() as u64).await?;
                return Err(e);
            }
            self.header.autoclear_features |= AUTOCLEAR_BITMAPS;
            self.header.bitmaps = Some(BitmapsExt {
                nb_bitmaps: list.len() as u32,
                directory_size: dir.len() as u64,
                directory_offset: offset,
            });
        }
        if let Err(e) = self.write_header_sync().await {
            if let Some((offset, size)) = new_dir {
                self.free_clusters(offset, size).await?;
            }
            self.header.bitmaps = old;
            self.header.autoclear_features = old_autoclear;
            return Err(e);
        }
        if let Some(old) = old {
            self.free_clusters(old.directory_offset, old.directory_size)
                .await?;
        }
        Ok(())
    }
}

impl Qcow2 {
    /// Stores every persistent, consistent bitmap of the node into the image
    /// (qcow2_store_persistent_dirty_bitmaps, as closing runs it).
    pub(crate) async fn store_persistent_dirty_bitmaps(
        &self,
        bs: &BlockDriverState,
        meta: &mut Meta,
    ) -> Result<()> {
        let mut list = meta.load_bitmap_list().await?;
        let mut dir_size: u64 = list
            .iter()
            .map(|b| directory::entry_size(b.name.len()))
            .sum();
        let mut to_store: Vec<(usize, Rc<BdrvDirtyBitmap>)> = Vec::new();
        let mut drop_tables = Vec::new();
        for bm in bs.dirty_bitmaps() {
            if !bm.persistent() || bm.inconsistent() || bm.readonly() {
                continue;
            }
            let name = bm.name().unwrap_or_default();
            directory::check_constraints(
                &name,
                bm.granularity(),
                meta.bitmap_len(),
                meta.g.cluster_size,
            )
            .map_err(|e| e.context(format!("Bitmap '{name}' doesn't satisfy the constraints: ")))?;
            let idx = match list.iter().position(|b| b.name == name) {
                None => {
                    if list.len() >= MAX_BITMAPS as usize {
                        return Err(Error::invalid("Too many persistent bitmaps"));
                    }
                    dir_size += directory::entry_size(name.len());
                    if dir_size > MAX_BITMAP_DIRECTORY_SIZE {
                        return Err(Error::invalid("Bitmap directory is too large"));
                    }
                    list.push(DirEntry {
                        table_offset: 0,
                        table_size: 0,
                        flags: 0,
                        granularity_bits: 0,
                        name: name.clone(),
                    });
                    list.len() - 1
                }
                Some(i) if list[i].flags & FLAG_IN_USE == 0 => {
                    return Err(Error::invalid(format!(
                        "Bitmap '{name}' already exists in the image"
                    )));
                }
                Some(i) => {
                    drop_tables.push(list[i].clone());
                    i
                }
            };
            let e = &mut list[idx];
            e.flags = if bm.enabled() { FLAG_AUTO } else { 0 };
            e.granularity_bits = bm.granularity().trailing_zeros() as u8;
            to_store.push((idx, bm));
        }
        if to_store.is_empty() {
            return Ok(());
        }
        // In the directory's order, as QEMU stores them: which bitmap a full disk refuses
        // depends on it.
        to_store.sort_by_key(|(idx, _)| *idx);
        block::trace!(
            qcow2_store_persistent_dirty_bitmaps,
            "nb_bitmaps {}",
            to_store.len()
        );
        let mut stored = Vec::new();
        for (idx, bm) in &to_store {
            let mut entry = list[*idx].clone();
            if let Err(e) = meta.store_bitmap(bm, &mut entry).await {
                for b in &stored {
                    meta.free_bitmap_clusters(b).await?;
                }
                return Err(e);
            }
            stored.push(entry.clone());
            list[*idx] = entry;
        }
        if let Err(e) = meta.update_ext_header_and_dir(&list).await {
            for b in &stored {
                meta.free_bitmap_clusters(b).await?;
            }
            return Err(e.context("Failed to update bitmap extension: "));
        }
        for b in &drop_tables {
            meta.free_bitmap_clusters(b).await?;
        }
        *self.bitmap_dir.borrow_mut() = list;
        Ok(())
    }

    /// Removes a bitmap from the image; one it does not hold is no error
    /// (qcow2_co_remove_persistent_dirty_bitmap).
    pub(crate) async fn remove_persistent_dirty_bitmap(&self, name: &str) -> Result<()> {
        let mut meta = self.meta.lock().await;
        if meta.header.bitmaps.is_none() {
            return Ok(());
        }
        let mut list = meta.load_bitmap_list().await?;
        let Some(i) = list.iter().position(|b| b.name == name) else {
            return Ok(());
        };
        let removed = list.remove(i);
        meta.update_ext_header_and_dir(&list)
            .await
            .map_err(|e| e.context("Failed to update bitmap extension: "))?;
        *self.bitmap_dir.borrow_mut() = list;
        meta.free_bitmap_clusters(&removed).await
    }

    /// Whether a new persistent bitmap `name` fits in the image
    /// (qcow2_co_can_store_new_dirty_bitmap).
    pub(crate) async fn can_store_new_dirty_bitmap(
        &self,
        bs: &BlockDriverState,
        name: &str,
        granularity: u32,
    ) -> Result<()> {
        if bs.find_dirty_bitmap(name).is_some() {
            return Err(Error::invalid(format!("Bitmap already exists: {name}")));
        }
        let meta = self.meta.lock().await;
        let checked = if meta.header.version < 3 {
            Err(Error::invalid(
                "Cannot store dirty bitmaps in qcow2 v2 files",
            ))
        } else {
            directory::check_constraints(name, granularity, meta.bitmap_len(), meta.g.cluster_size)
        };
        let persistent: Vec<String> = bs
            .dirty_bitmaps()
            .iter()
            .filter(|b| b.persistent())
            .map(|b| b.name().unwrap_or_default())
            .collect();
        let count = persistent.len() + 1;
        let dir_size: u64 = persistent
            .iter()
            .map(|n| directory::entry_size(n.len()))
            .sum::<u64>()
            + directory::entry_size(name.len());
        let checked = checked.and_then(|()| {
            if count > MAX_BITMAPS as usize {
                Err(Error::invalid(
                    "Maximum number of persistent bitmaps is already reached",
                ))
            } else if dir_size > MAX_BITMAP_DIRECTORY_SIZE {
                Err(Error::invalid("Not enough space in the bitmap directory"))
            } else {
                Ok(())
            }
        });
        checked.map_err(|e| {
            e.context(format!(
                "Can't make bitmap '{name}' persistent in '{}': ",
                bs.node_name()
            ))
        })
    }
}
