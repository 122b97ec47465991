//! Changing the virtual size (QEMU's qcow2_co_truncate, qcow2_grow_l1_table and the shrink
//! path in block/qcow2.c and qcow2-cluster.c).
//!
//! Growing may need a larger L1 table: it is written in fresh clusters and made live by one
//! header update. Shrinking discards the clusters past the new end (so they can never
//! reappear when the image grows again) and keeps the L1 table, which may be larger than
//! needed.

use block::driver::PreallocMode;
use block::{BlockDriverState, Error, IoVector, RequestFlags, Result};

use super::cache::Which;
use super::header::{l1_entries_for, put32, put64, MAX_L1_BYTES};
use super::l2::{cluster_type, get_entry, set_entry, ClusterType, L2E_OFFSET_MASK, OFLAG_COPIED};
use super::state::{encode_table, Meta};
use super::Qcow2;
use super::{read_bytes, write_bytes};

impl Qcow2 {
    /// Resizes the image to `offset` bytes.
    pub(super) async fn truncate(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        exact: bool,
        prealloc: PreallocMode,
    ) -> Result<()> {
        if !offset.is_multiple_of(512) {
            return Err(Error::invalid("The new size must be a multiple of 512"));
        }
        let old = self.size.get();
        let prealloc = if offset > old {
            self.data.prealloc(prealloc)
        } else {
            prealloc
        };
        let head = if prealloc != PreallocMode::Off && offset > old {
            self.backing_head(bs, old).await?
        } else {
            None
        };
        {
            let mut meta = self.meta.lock().await;
            meta.check_writable()?;
            // Version 3 snapshots record their own disk size; version 2 ones would take
            // the new one.
            // (The header's version, not the one opened: amend may have upgraded it.)
            if meta.header.nb_snapshots != 0 && meta.header.version < 3 {
                return Err(Error::not_supported(
                    "Can't resize a v2 image which has snapshots",
                ));
            }
            self.mark_dirty(&mut meta).await?;
            if offset < old {
                meta.discard_beyond(offset, old).await?;
            } else {
                meta.grow_l1(l1_entries_for(offset, self.g.cluster_bits, self.g.extended))
                    .await?;
            }
            if prealloc != PreallocMode::Off && offset > old {
                meta.preallocate(old, offset, prealloc).await?;
            } else if prealloc == PreallocMode::Off {
                // The data file follows the virtual size exactly.
                meta.data.truncate(offset, exact, prealloc).await?;
            }
            meta.flush().await?;
            meta.set_size(offset).await?;
            self.info.borrow_mut().size = offset;
        }
        self.size.set(offset);
        if let Some(head) = head {
            let start = self.g.cluster_start(old);
            self.write(bs, start, &head, RequestFlags::empty()).await?;
        }
        if offset > old && prealloc == PreallocMode::Off {
            self.zero_grown_area(bs, old, offset).await?;
        }
        Ok(())
    }

    /// The guest data before the old end in its cluster, when it comes from the backing
    /// file: preallocating gives that cluster a host cluster, and the data is copied into
    /// it (the copy-on-write of QEMU's preallocate_co).
    async fn backing_head(&self, bs: &BlockDriverState, old: u64) -> Result<Option<IoVector>> {
        let in_cluster = self.g.in_cluster(old);
        if in_cluster == 0 || bs.backing().is_none() {
            return Ok(None);
        }
        let start = self.g.cluster_start(old);
        let mapping = {
            let mut meta = self.meta.lock().await;
            meta.get_host_offset(start, in_cluster).await?.0
        };
        if mapping != super::mapping::Mapping::Unallocated {
            return Ok(None);
        }
        let head = IoVector::alloc(in_cluster as usize);
        self.read(bs, start, &head).await?;
        Ok(Some(head))
    }

    /// Makes the new area read as zeroes: the rest of a partial last cluster may hold old
    /// data, and a backing file must not show through past the old end.
    async fn zero_grown_area(&self, bs: &BlockDriverState, old: u64, new: u64) -> Result<()> {
        let cluster_end = old.next_multiple_of(self.g.cluster_size).min(new);
        if cluster_end > old {
            let zeroes = block::IoVector::alloc((cluster_end - old) as usize);
            let allocated = {
                let mut meta = self.meta.lock().await;
                meta.get_host_offset(old, cluster_end - old).await?.0
            };
            if allocated != super::mapping::Mapping::Unallocated || bs.backing().is_some() {
                self.write(bs, old, &zeroes, RequestFlags::empty()).await?;
            }
        }
        // The version may have changed since open (amend upgrades before resizing).
        if bs.backing().is_some() && new > cluster_end && self.info.borrow().version >= 3 {
            self.pwrite_zeroes(bs, cluster_end, new - cluster_end, RequestFlags::empty())
                .await?;
        }
        Ok(())
    }
}

impl Meta {
    /// Drops every cluster at or past `new_size` (the full discard of qcow2_shrink).
    async fn discard_beyond(&mut self, new_size: u64, old_size: u64) -> Result<()> {
        self.discards = Some(Default::default());
        let dropped = self.drop_clusters_beyond(new_size, old_size).await;
        if dropped.is_err() {
            // After a failure the freed clusters may still be referenced on disk: their
            // data stays (QEMU drops the queue too).
            self.discards = None;
        }
        dropped?;
        self.process_discards().await?;
        self.truncate_file_to_last_cluster().await
    }

    /// Empties the L2 entries at or past `new_size` and frees their clusters.
    async fn drop_clusters_beyond(&mut self, new_size: u64, old_size: u64) -> Result<()> {
        let g = self.g;
        let mut pos = new_size.next_multiple_of(g.cluster_size);
        while pos < old_size {
            let l2 = self.l2_offset_for(pos).await?;
            let table_span = g.l2_size << g.cluster_bits;
            if l2 == 0 {
                pos = (pos / table_span + 1) * table_span;
                continue;
            }
            let l2 = self.l2_for_write(pos).await?;
            self.caches.load(Which::L2, l2).await?;
            let idx = g.l2_index(pos);
            let (entry, _) = get_entry(&g, self.caches.table(Which::L2, l2), idx);
            set_entry(&g, self.caches.table(Which::L2, l2), idx, 0, 0);
            self.caches.mark_dirty(Which::L2, l2);
            self.free_and_discard(entry).await?;
            pos += g.cluster_size;
        }
        Ok(())
    }

    /// Cuts the file after its last used cluster (the end of qcow2_co_truncate's shrink).
    async fn truncate_file_to_last_cluster(&mut self) -> Result<()> {
        self.flush().await?;
        let cs = self.g.cluster_size;
        let file_len = self.file.getlength();
        let mut last = file_len.div_ceil(cs);
        while last > 0 && self.get_refcount(last - 1).await? == 0 {
            last -= 1;
        }
        if last * cs < file_len {
            self.file
                .co_truncate(last * cs, false, PreallocMode::Off)
                .await?;
        }
        Ok(())
    }

    /// Makes the L1 table hold at least `needed` entries (qcow2_grow_l1_table).
    pub async fn grow_l1(&mut self, needed: u64) -> Result<()> {
        let old_len = self.l1.len() as u64;
        if needed <= old_len {
            return Ok(());
        }
        let new_len = needed.max(old_len + old_len / 2).min(MAX_L1_BYTES / 8);
        if needed > new_len {
            return Err(Error::new(libc::EFBIG, "Image is too big"));
        }
        let cs = self.g.cluster_size;
        let bytes = (new_len * 8).next_multiple_of(cs);
        let new_offset = self.alloc_clusters(bytes / cs).await?;
        let mut table = self.l1.clone();
        table.resize(new_len as usize, 0);
        self.caches.flush(Which::Refblock).await?;
        let data = encode_table(&table);
        write_bytes(&self.file, new_offset, &data).await?;
        self.file.co_flush().await?;
        let mut fields = [0u8; 12];
        put32(&mut fields, 0, new_len as u32);
        put64(&mut fields, 4, new_offset);
        write_bytes(&self.file, 36, &fields).await?;
        self.file.co_flush().await?;
        let (old_offset, old_bytes) = (self.header.l1_table_offset, old_len * 8);
        self.header.l1_table_offset = new_offset;
        self.header.l1_size = new_len as u32;
        self.l1 = table;
        if old_bytes > 0 {
            self.free_clusters(old_offset, old_bytes).await?;
        }
        Ok(())
    }

    /// Gives every cluster of `from..to` a host cluster (preallocation=metadata), and with
    /// falloc/full also the file space behind them (QEMU's preallocate_co).
    async fn preallocate(&mut self, from: u64, to: u64, mode: PreallocMode) -> Result<()> {
        if self.data.is_external() {
            return self.preallocate_data_file(from, to, mode).await;
        }
        let g = self.g;
        let cs = g.cluster_size;
        let file_len = self.file.getlength();
        let mut host_end = 0;
        // falloc/full move the cluster holding the old end to new, fully allocated space
        // too (it may have none behind it, e.g. after preallocation=metadata), as QEMU does.
        let mut moved = None;
        let mut pos = g.cluster_start(from);
        while pos < to {
            let (l2, first, clusters_left) = self.l2_slice_for_write(pos, to).await?;
            let (n, moving) = self.prealloc_run(l2, pos, clusters_left, from, mode);
            moved = moved.or(moving);
            if n == 0 {
                pos += cs;
                continue;
            }
            let host = self.alloc_clusters(n).await?;
            if mode != PreallocMode::Metadata {
                // falloc/full: the data clusters get real space, wherever they lie (L2 tables
                // written meanwhile may have moved the end of the file past them).
                self.file
                    .co_pwrite_zeroes(host, n * cs, RequestFlags::empty())
                    .await?;
            } else if host < file_len {
                // Reused space may hold old data; fresh space past the end reads as zeroes.
                self.file
                    .co_pwrite_zeroes(host, (n * cs).min(file_len - host), RequestFlags::empty())
                    .await?;
            }

            // With extended L2 the subclusters stay unallocated, so a backing file still
            // shows through the preallocated clusters.
            let bitmap = 0;
            for k in 0..n {
                let table = self.caches.table(Which::L2, l2);
                set_entry(
                    &g,
                    table,
                    first + k as usize,
                    (host + k * cs) | OFLAG_COPIED,
                    bitmap,
                );
            }
            self.caches.mark_dirty(Which::L2, l2);
            if let Some(old) = moved.take() {
                self.move_head(old, host, g.in_cluster(from)).await?;
            }
            host_end = host_end.max(host + n * cs);
            pos += n * cs;
        }
        if host_end > self.file.getlength() {
            let file_mode = match mode {
                PreallocMode::Metadata => PreallocMode::Off,
                other => other,
            };
            self.file.co_truncate(host_end, false, file_mode).await?;
        }
        Ok(())
    }

    /// Maps every cluster of `from..to` to its own offset in the external data file, and
    /// grows the data file to `to` (with falloc/full, giving it real space): with a data
    /// file, preallocation is metadata here and a truncate there (qcow2_co_truncate).
    async fn preallocate_data_file(
        &mut self,
        from: u64,
        to: u64,
        mode: PreallocMode,
    ) -> Result<()> {
        let g = self.g;
        let mut pos = g.cluster_start(from);
        while pos < to {
            let (l2, first, n) = self.l2_slice_for_write(pos, to).await?;
            for k in 0..n {
                let table = self.caches.table(Which::L2, l2);
                let (e, bitmap) = get_entry(&g, table, first + k as usize);
                // Only clusters with no entry at all: a zero cluster keeps reading as zeroes.
                if e == 0 {
                    let host = pos + k * g.cluster_size;
                    set_entry(&g, table, first + k as usize, host | OFLAG_COPIED, bitmap);
                    if host < from {
                        // The old tail of a partial cluster read as zeroes; it still must
                        // (QEMU's copy-on-write of the head).
                        let data = self.data.node(&self.file)?;
                        data.co_pwrite_zeroes(host, from - host, RequestFlags::empty())
                            .await?;
                    }
                }
            }
            self.caches.mark_dirty(Which::L2, l2);
            pos += n * g.cluster_size;
        }
        self.data.grow_to(to, mode).await
    }

    /// The L2 table mapping the cluster-aligned `pos`, loaded for writing: its offset,
    /// the index of `pos` in it, and how many clusters of `pos..to` it maps.
    async fn l2_slice_for_write(&mut self, pos: u64, to: u64) -> Result<(u64, usize, u64)> {
        let g = self.g;
        let l2 = self.l2_for_write(pos).await?;
        self.caches.load(Which::L2, l2).await?;
        let table_end = ((pos >> g.cluster_bits) | (g.l2_size - 1)) + 1;
        let n = to.div_ceil(g.cluster_size).min(table_end) - (pos >> g.cluster_bits);
        Ok((l2, g.l2_index(pos), n))
    }

    /// The run of clusters from `pos` that need a host cluster, at most `max`: those
    /// without one, and under falloc/full also the cluster holding the old end `from`
    /// (returned with its old entry, to be moved).
    fn prealloc_run(
        &mut self,
        l2: u64,
        pos: u64,
        max: u64,
        from: u64,
        mode: PreallocMode,
    ) -> (u64, Option<u64>) {
        let g = self.g;
        let first = g.l2_index(pos);
        let table = self.caches.table(Which::L2, l2);
        let mut moved = None;
        let mut n = 0;
        while n < max {
            let (e, _) = get_entry(&g, table, first + n as usize);
            let ctype = cluster_type(&g, e);
            let movable = pos + n * g.cluster_size < from
                && mode != PreallocMode::Metadata
                && !g.extended
                && matches!(ctype, ClusterType::Normal | ClusterType::ZeroAlloc);
            if movable {
                moved = Some(e);
            } else if e & L2E_OFFSET_MASK != 0 || ctype == ClusterType::Compressed {
                break;
            }
            n += 1;
        }
        (n, moved)
    }

    /// Copies the guest data of the cluster the old end fell in (its first `bytes`) to its
    /// new host cluster and frees the old one; a preallocated zero cluster has nothing to
    /// copy (the new cluster reads as zeroes).
    async fn move_head(&mut self, old: u64, new_host: u64, bytes: u64) -> Result<()> {
        if cluster_type(&self.g, old) == ClusterType::Normal {
            let data = read_bytes(&self.file, old & L2E_OFFSET_MASK, bytes as usize).await?;
            write_bytes(&self.file, new_host, &data).await?;
        }
        self.free_any_cluster(old).await
    }

    /// Writes the size field of the header.
    pub(super) async fn set_size(&mut self, size: u64) -> Result<()> {
        write_bytes(&self.file, 24, &size.to_be_bytes()).await?;
        self.file.co_flush().await?;
        self.header.size = size;
        Ok(())
    }
}
