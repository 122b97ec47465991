//! The two whole-image walks of `amend` (QEMU's qcow2_expand_zero_clusters in
//! block/qcow2-cluster.c and qcow2_change_refcount_order in block/qcow2-refcount.c).
//!
//! A version 2 image has no zero flag, so a downgrade turns every zero cluster into a real
//! cluster of zeroes (or, without a backing file to hide, into an unallocated one). A new
//! refcount width changes every refcount block: the counts are read at the old width, a new
//! structure is written at the new width in free clusters, one header write makes it live,
//! and the old structure is then freed through the new one.

use block::{Error, RequestFlags, Result};

use super::amend::AmendProgress;
use super::cache::Which;
use super::header::MAX_REFTABLE_BYTES;
use super::l2::{cluster_type, get_entry, set_entry, ClusterType, Geometry};
use super::l2::{L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED};
use super::rebuild::BlockCounts;
use super::refcount::{self, max_refcount, REFT_OFFSET_MASK};
use super::state::{c_hex, Meta};

impl Meta {
    /// Replaces every zero cluster by zeroed data (or by nothing, without a backing file),
    /// in the active L1 table and then in each snapshot's; reports progress per L1 entry
    /// of all of them (qcow2_expand_zero_clusters).
    pub(super) async fn expand_zero_clusters(
        &mut self,
        has_backing: bool,
        progress: &mut AmendProgress<'_>,
    ) -> Result<()> {
        let snapshots = self.snapshots.clone();
        let total = self.l1.len() as u64 + snapshots.iter().map(|s| s.l1_size as u64).sum::<u64>();
        let mut visited = 0;
        let active = self.l1.clone();
        self.expand_in_l1(&active, has_backing, &mut visited, total, progress)
            .await?;
        for sn in snapshots.iter().filter(|sn| sn.l1_size != 0) {
            // Snapshot L1 tables are only read: an L2 table is rewritten in place.
            let l1 = self.read_snapshot_l1(sn).await?;
            self.expand_in_l1(&l1, has_backing, &mut visited, total, progress)
                .await?;
        }
        self.flush().await
    }

    async fn expand_in_l1(
        &mut self,
        l1: &[u64],
        has_backing: bool,
        visited: &mut u64,
        total: u64,
        progress: &mut AmendProgress<'_>,
    ) -> Result<()> {
        for (i, entry) in l1.iter().enumerate() {
            let l2 = entry & L1E_OFFSET_MASK;
            if l2 != 0 {
                if l2 & (self.g.cluster_size - 1) != 0 {
                    let msg = format!("L2 table offset {} unaligned (L1 index: {i:#x})", c_hex(l2));
                    return Err(self.signal_corruption(msg).await);
                }
                let l2_refcount = self.get_refcount(l2 >> self.g.cluster_bits).await?;
                self.expand_in_l2(l2, l2_refcount, has_backing).await?;
            }
            *visited += 1;
            progress.report(*visited, total);
        }
        Ok(())
    }

    /// Expands the zero clusters of one L2 table, which `l2_refcount` L1 tables share: a
    /// new cluster is shared as much, and only an unshared table's entries are "copied".
    async fn expand_in_l2(&mut self, l2: u64, l2_refcount: u64, has_backing: bool) -> Result<()> {
        let g = self.g;
        let mut dirty = false;
        for j in 0..g.l2_size as usize {
            self.caches.load(Which::L2, l2).await?;
            let (entry, _) = get_entry(&g, self.caches.table(Which::L2, l2), j);
            let (host, fresh) = match cluster_type(&g, entry) {
                ClusterType::ZeroPlain if !has_backing => {
                    self.store_entry(&g, l2, j, 0).await?;
                    dirty = true;
                    continue;
                }
                ClusterType::ZeroPlain => (self.alloc_clusters(1).await?, true),
                ClusterType::ZeroAlloc => (entry & L2E_OFFSET_MASK, false),
                _ => continue,
            };
            if let Err(e) = self.zero_cluster(host, fresh, l2_refcount).await {
                if fresh {
                    let _ = self.free_clusters(host, g.cluster_size).await;
                }
                return Err(e);
            }
            let copied = if l2_refcount == 1 { OFLAG_COPIED } else { 0 };
            self.store_entry(&g, l2, j, host | copied).await?;
            dirty = true;
        }
        if dirty {
            // The zeroes reach the disk before the entries that make them data.
            self.file.co_flush().await?;
            self.caches.flush(Which::L2).await?;
        }
        Ok(())
    }

    /// Writes zeroes over a cluster about to become data; a `fresh` one is first given the
    /// refcount of the L2 table that will point to it.
    async fn zero_cluster(&mut self, host: u64, fresh: bool, l2_refcount: u64) -> Result<()> {
        let cs = self.g.cluster_size;
        if fresh && l2_refcount > 1 {
            self.update_refcount(host, cs, l2_refcount as i64 - 1)
                .await?;
        }
        self.check_data_write(host, cs).await?;
        self.file
            .co_pwrite_zeroes(host, cs, RequestFlags::empty())
            .await
    }

    async fn store_entry(&mut self, g: &Geometry, l2: u64, j: usize, entry: u64) -> Result<()> {
        self.caches.load(Which::L2, l2).await?;
        set_entry(g, self.caches.table(Which::L2, l2), j, entry, 0);
        self.caches.mark_dirty(Which::L2, l2);
        Ok(())
    }

    /// Whether any cluster of the active L1 table is compressed.
    pub(super) async fn has_compressed_clusters(&mut self) -> Result<bool> {
        let g = self.g;
        for i in 0..self.l1.len() {
            let l2 = self.l1[i] & L1E_OFFSET_MASK;
            if l2 == 0 || l2 & (g.cluster_size - 1) != 0 {
                continue;
            }
            self.caches.load(Which::L2, l2).await?;
            let table = self.caches.table(Which::L2, l2);
            if (0..g.l2_size as usize)
                .any(|j| cluster_type(&g, get_entry(&g, table, j).0) == ClusterType::Compressed)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every cluster's refcount, read at the current width and kept at `new`'s, checked to
    /// fit it. Only blocks with counts are kept: a sparse file's length costs nothing.
    async fn read_all_refcounts(&mut self, new: &Geometry) -> Result<BlockCounts> {
        let g = self.g;
        let file_clusters = self.file.getlength().div_ceil(g.cluster_size);
        let mut counts = BlockCounts::new(new);
        let epb = 1u64 << g.refblock_bits;
        // Where a count would need a refcount table QEMU would refuse anyway.
        let too_far = (MAX_REFTABLE_BYTES / 8) << new.refblock_bits;
        for idx in 0..self.reftable.len() as u64 {
            let block = self.reftable[idx as usize] & REFT_OFFSET_MASK;
            if block == 0 {
                continue;
            }
            // Validates the block's offset and loads it.
            self.get_refcount(idx * epb).await?;
            let data = self.caches.table(Which::Refblock, block).to_vec();
            for i in 0..epb {
                let count = refcount::get_entry(&data, g.refcount_order, i as usize);
                if count == 0 {
                    continue;
                }
                let cluster = idx * epb + i;
                if count > max_refcount(new.refcount_order) {
                    return Err(Error::invalid(format!(
                        "Cannot decrease refcount entry width to {} bits: Cluster at offset {} has a refcount of {count}",
                        1u32 << new.refcount_order,
                        c_hex(cluster << g.cluster_bits)
                    )));
                }
                if cluster >= file_clusters {
                    return Err(Error::new(
                        libc::EIO,
                        format!(
                            "qcow2: cluster at offset {} past the end of the file has a refcount; repair the image first (qemu-img check -r all)",
                            c_hex(cluster << g.cluster_bits)
                        ),
                    ));
                }
                if cluster >= too_far {
                    return Err(Error::new(libc::EFBIG, "Reference count table too large"));
                }
                counts.set(cluster, count);
            }
        }
        Ok(counts)
    }

    /// Rebuilds the refcount structure at `2^new_order` bits per entry.
    pub(super) async fn change_refcount_order(
        &mut self,
        new_order: u32,
        progress: &mut AmendProgress<'_>,
    ) -> Result<()> {
        progress.report(0, 3);
        self.caches.flush_all().await?;
        let mut new_header = self.header.clone();
        new_header.refcount_order = new_order;
        let new_g = Geometry::new(&new_header);
        let mut counts = self.read_all_refcounts(&new_g).await?;
        progress.report(1, 3);
        let cs = self.g.cluster_size;
        let old_blocks: Vec<u64> = self
            .reftable
            .iter()
            .map(|e| e & REFT_OFFSET_MASK)
            .filter(|&b| b != 0)
            .collect();
        let old_table = (
            self.header.refcount_table_offset,
            self.header.refcount_table_clusters as u64 * cs,
        );
        let saved_header = self.header.clone();
        let old_g = self.g;
        self.header.refcount_order = new_order;
        self.g = new_g;
        let new = match self.write_refcount_structure(&mut counts).await {
            Ok(new) => new,
            Err(e) => {
                self.header = saved_header;
                self.g = old_g;
                return Err(e);
            }
        };
        progress.report(2, 3);
        self.header.refcount_table_offset = new.table_offset;
        self.header.refcount_table_clusters = new.table_clusters;
        if let Err(e) = self.write_header().await {
            self.header = saved_header;
            self.g = old_g;
            return Err(e.context("Failed to update the image header: "));
        }
        self.file.co_flush().await?;
        self.adopt_reftable(new.reftable);
        for block in old_blocks {
            self.free_clusters(block, cs).await?;
        }
        self.free_clusters(old_table.0, old_table.1).await?;
        self.caches.flush_all().await?;
        progress.report(3, 3);
        Ok(())
    }
}
