//! Reference counts: how many times each host cluster is used, stored in a two-level
//! structure (refcount table -> refcount blocks), and cluster allocation on top of it
//! (qcow2.txt "Host cluster management"; QEMU's block/qcow2-refcount.c).
//!
//! A refcount entry is `refcount_bits` wide (1 to 64). Refcount blocks count themselves, so
//! allocating one may need itself; when the table must grow, the new table and the blocks
//! that describe it are placed together past everything in use, written, and only then made
//! live by one header update, so a crash leaves the old structure intact.

use block::{Error, Result};

use super::cache::Which;
use super::header::{put32, put64, MAX_REFTABLE_BYTES};
use super::state::{c_hex, encode_table, Meta};
use super::write_bytes;

/// Reserved low bits of a refcount table entry.
pub const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Highest host offset QEMU lets an image grow to (bits 9..55 of L2 entries).
const MAX_HOST_OFFSET: u64 = 1 << 56;

/// Reads entry `i` of a refcount block of `1 << order`-bit entries.
pub fn get_entry(block: &[u8], order: u32, i: usize) -> u64 {
    let bits = 1usize << order;
    if bits >= 8 {
        let w = bits / 8;
        block[i * w..i * w + w]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64)
    } else {
        let byte = block[i * bits / 8];
        let shift = (i * bits) % 8;
        ((byte >> shift) as u64) & ((1 << bits) - 1)
    }
}

/// Stores entry `i` of a refcount block.
pub fn set_entry(block: &mut [u8], order: u32, i: usize, value: u64) {
    let bits = 1usize << order;
    if bits >= 8 {
        let w = bits / 8;
        let bytes = value.to_be_bytes();
        block[i * w..i * w + w].copy_from_slice(&bytes[8 - w..]);
    } else {
        let at = i * bits / 8;
        let shift = (i * bits) % 8;
        let mask = (((1u16 << bits) - 1) << shift) as u8;
        block[at] = (block[at] & !mask) | (((value as u8) << shift) & mask);
    }
}

/// Largest refcount an entry of `order` holds.
pub fn max_refcount(order: u32) -> u64 {
    if order == 6 {
        u64::MAX
    } else {
        (1u64 << (1 << order)) - 1
    }
}

impl Meta {
    fn refblock_entries(&self) -> u64 {
        1 << self.g.refblock_bits
    }

    /// The refcount block offset for reftable index `idx`, validated (0 if none).
    async fn refblock_offset(&mut self, idx: u64) -> Result<u64> {
        let Some(&entry) = self.reftable.get(idx as usize) else {
            return Ok(0);
        };
        let offset = entry & REFT_OFFSET_MASK;
        if offset & (self.g.cluster_size - 1) != 0 {
            return Err(self
                .signal_corruption(format!(
                    "Refblock offset {} unaligned (reftable index: {})",
                    c_hex(offset),
                    c_hex(idx)
                ))
                .await);
        }
        Ok(offset)
    }

    /// The refcount of host cluster `cluster` (qcow2_get_refcount).
    pub async fn get_refcount(&mut self, cluster: u64) -> Result<u64> {
        let idx = cluster >> self.g.refblock_bits;
        let block = self.refblock_offset(idx).await?;
        if block == 0 {
            return Ok(0);
        }
        self.caches.load(Which::Refblock, block).await?;
        let i = (cluster & (self.refblock_entries() - 1)) as usize;
        let order = self.g.refcount_order;
        Ok(get_entry(
            self.caches.table(Which::Refblock, block),
            order,
            i,
        ))
    }

    /// Adds `addend` to the refcount of every cluster touching `offset..offset+len`
    /// (update_refcount). Allocates refcount blocks as needed when counting up.
    pub fn update_refcount(
        &mut self,
        offset: u64,
        len: u64,
        addend: i64,
    ) -> block::coroutine::LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if len == 0 {
                return Ok(());
            }
            let first = offset >> self.g.cluster_bits;
            let last = (offset + len - 1) >> self.g.cluster_bits;
            let order = self.g.refcount_order;
            let mut prev_idx = None;
            for cluster in first..=last {
                let idx = cluster >> self.g.refblock_bits;
                let first_of_block = prev_idx != Some(idx);
                prev_idx = Some(idx);
                if first_of_block {
                    // QEMU raises refblock_alloc on every refcount block lookup here (at the
                    // top of alloc_refcount_block), not only when one is created.
                    self.file
                        .debug_event(block::BlkdbgEvent::RefblockAlloc)
                        .await;
                }
                let mut block = self.refblock_offset(idx).await?;
                if block == 0 {
                    if addend < 0 {
                        return Err(self
                            .signal_corruption(format!(
                                "Cannot free cluster {:#x}: it has no refcount block",
                                cluster << self.g.cluster_bits
                            ))
                            .await);
                    }
                    block = self.alloc_refblock(idx).await?;
                } else if first_of_block {
                    // load_refcount_block, cached or not.
                    self.file
                        .debug_event(block::BlkdbgEvent::RefblockLoad)
                        .await;
                }
                self.caches.load(Which::Refblock, block).await?;
                let i = (cluster & (self.refblock_entries() - 1)) as usize;
                let table = self.caches.table(Which::Refblock, block);
                let old = get_entry(table, order, i);
                let new = old
                    .checked_add_signed(addend)
                    .filter(|&n| n <= max_refcount(order))
                    .ok_or_else(|| {
                        Error::new(
                            libc::EINVAL,
                            format!(
                                "Refcount of cluster {cluster:#x} would leave its range ({old}{addend:+})"
                            ),
                        )
                    })?;
                set_entry(table, order, i, new);
                self.caches.mark_dirty(Which::Refblock, block);
                if new == 0 {
                    self.free_cluster_index = self.free_cluster_index.min(cluster);
                    if self.free_byte_offset >> self.g.cluster_bits == cluster {
                        // The cluster may be reused for anything now: pack nothing into it.
                        self.free_byte_offset = 0;
                    }
                    self.caches
                        .discard(Which::L2, cluster << self.g.cluster_bits);
                }
            }
            Ok(())
        })
    }

    /// Finds `n` free contiguous clusters without counting them (alloc_clusters_noref).
    async fn find_free(&mut self, n: u64) -> Result<u64> {
        let mut start = self.free_cluster_index;
        let mut i = 0;
        while i < n {
            if (start + n) << self.g.cluster_bits > MAX_HOST_OFFSET {
                return Err(Error::new(libc::EFBIG, "qcow2 image has no room left"));
            }
            if self.get_refcount(start + i).await? != 0 {
                start += i + 1;
                i = 0;
            } else {
                i += 1;
            }
        }
        self.free_cluster_index = start + n;
        Ok(start)
    }

    /// Allocates `n` contiguous clusters and returns the host offset of the first
    /// (qcow2_alloc_clusters). Anything pointing at them must be written after the refcount
    /// blocks, which the L2 cache dependency ensures.
    pub async fn alloc_clusters(&mut self, n: u64) -> Result<u64> {
        self.file
            .debug_event(block::BlkdbgEvent::ClusterAlloc)
            .await;
        let start = self.find_free(n).await?;
        let offset = start << self.g.cluster_bits;
        self.update_refcount(offset, n << self.g.cluster_bits, 1)
            .await?;
        if self.accurate_refcounts() {
            self.caches
                .set_dependency(Which::L2, Which::Refblock)
                .await?;
        }
        block::trace!(qcow2_alloc_clusters, "offset 0x{:x} n {}", offset, n);
        Ok(offset)
    }

    /// Allocates `size` bytes (at most a cluster) for compressed data, right after the
    /// previous compressed cluster when they fit or the next host cluster follows it
    /// (qcow2_alloc_bytes). Every host cluster the bytes touch gets one more reference, so a
    /// shared cluster is counted once per compressed cluster in it.
    pub async fn alloc_bytes(&mut self, size: u64) -> Result<u64> {
        let cs = self.g.cluster_size;
        debug_assert!(size > 0 && size <= cs);
        self.file
            .debug_event(block::BlkdbgEvent::ClusterAllocBytes)
            .await;
        let mut offset = self.free_byte_offset;
        if offset != 0 {
            let refcount = self.get_refcount(offset >> self.g.cluster_bits).await?;
            if refcount == 0 || refcount >= max_refcount(self.g.refcount_order) {
                offset = 0;
            }
        }
        if offset == 0 || cs - self.g.in_cluster(offset) < size {
            let next = self.find_free(1).await? << self.g.cluster_bits;
            if offset == 0 || offset.next_multiple_of(cs) != next {
                offset = next;
            }
        }
        self.update_refcount(offset, size, 1).await?;
        if self.accurate_refcounts() {
            self.caches
                .set_dependency(Which::L2, Which::Refblock)
                .await?;
        }
        let end = offset + size;
        self.free_byte_offset = if self.g.in_cluster(end) == 0 { 0 } else { end };
        block::trace!(qcow2_alloc_bytes, "offset 0x{:x} size {}", offset, size);
        Ok(offset)
    }

    /// Refuses to place metadata over other metadata, which only a corrupt refcount
    /// structure can make the allocator suggest.
    pub async fn check_metadata_alloc(&mut self, offset: u64, len: u64, what: &str) -> Result<()> {
        if offset == 0 || self.overlap(offset, len, true).is_some() {
            return Err(self
                .signal_corruption(format!(
                    "Preventing invalid allocation of {what} at offset {}",
                    c_hex(offset)
                ))
                .await);
        }
        Ok(())
    }

    /// Drops one reference to every cluster of a range (qcow2_free_clusters). Whoever
    /// pointed at them must reach the disk first, hence the dependency on the L2 cache.
    pub async fn free_clusters(&mut self, offset: u64, len: u64) -> Result<()> {
        self.caches
            .set_dependency(Which::Refblock, Which::L2)
            .await?;
        self.file.debug_event(block::BlkdbgEvent::ClusterFree).await;
        self.update_refcount(offset, len, -1).await
    }

    /// Writes reftable entry `idx` to disk.
    async fn write_reftable_entry(&mut self, idx: u64) -> Result<()> {
        let at = self.header.refcount_table_offset + idx * 8;
        let bytes = self.reftable[idx as usize].to_be_bytes();
        self.file
            .debug_event(block::BlkdbgEvent::ReftableUpdate)
            .await;
        write_bytes(&self.file, at, &bytes).await
    }

    /// Creates the refcount block for reftable index `idx` (alloc_refcount_block).
    async fn alloc_refblock(&mut self, idx: u64) -> Result<u64> {
        if idx as usize >= self.reftable.len() {
            self.grow_reftable(idx).await?;
            let existing = self.refblock_offset(idx).await?;
            if existing != 0 {
                return Ok(existing);
            }
        }
        let cluster = self.find_free(1).await?;
        let offset = cluster << self.g.cluster_bits;
        self.check_metadata_alloc(offset, self.g.cluster_size, "refcount block")
            .await?;
        self.caches.load_empty(Which::Refblock, offset).await?;
        if cluster >> self.g.refblock_bits == idx {
            // The block describes itself: count it in its own table.
            let i = (cluster & (self.refblock_entries() - 1)) as usize;
            let order = self.g.refcount_order;
            set_entry(self.caches.table(Which::Refblock, offset), order, i, 1);
        } else {
            self.update_refcount(offset, self.g.cluster_size, 1).await?;
        }
        // The block and every count it depends on reach the disk before the table entry.
        self.file
            .debug_event(block::BlkdbgEvent::RefblockAllocWrite)
            .await;
        self.caches.flush(Which::Refblock).await?;
        self.file.co_flush().await?;
        self.file
            .debug_event(block::BlkdbgEvent::RefblockAllocHookup)
            .await;
        self.set_reftable_entry(idx as usize, offset);
        self.write_reftable_entry(idx).await?;
        block::trace!(qcow2_alloc_refblock, "idx {} offset 0x{:x}", idx, offset);
        Ok(offset)
    }

    /// Replaces the refcount table with a larger one that has room for index `idx`.
    async fn grow_reftable(&mut self, idx: u64) -> Result<()> {
        self.file
            .debug_event(block::BlkdbgEvent::ReftableGrow)
            .await;
        let cs = self.g.cluster_size;
        let epb = self.refblock_entries();
        let old_len = self.reftable.len() as u64;
        let area_start = self.free_cluster_index.max(old_len * epb);
        // Iterate until the new table and blocks cover themselves.
        let (mut blocks, mut table_clusters) = (1u64, 1u64);
        let new_len = loop {
            let area_end = area_start + blocks + table_clusters;
            let last_idx = ((area_end - 1) / epb).max(idx);
            let len = (last_idx + 1).max(old_len + old_len / 2).max(old_len + 1);
            let need_table = (len * 8).div_ceil(cs);
            let need_blocks = (area_end - 1) / epb - area_start / epb + 1;
            if need_table == table_clusters && need_blocks == blocks {
                break len;
            }
            table_clusters = need_table;
            blocks = need_blocks;
        };
        if table_clusters * cs > MAX_REFTABLE_BYTES {
            return Err(Error::new(libc::EFBIG, "Reference count table too large"));
        }
        let area_end = area_start + blocks + table_clusters;
        let mut table = self.reftable.clone();
        table.resize((table_clusters * cs / 8) as usize, 0);
        let _ = new_len;
        let order = self.g.refcount_order;
        self.file
            .debug_event(block::BlkdbgEvent::RefblockAllocWriteBlocks)
            .await;
        for (k, bidx) in (area_start / epb..=(area_end - 1) / epb).enumerate() {
            let block_offset = (area_start + k as u64) << self.g.cluster_bits;
            let mut data = vec![0u8; cs as usize];
            for c in area_start.max(bidx * epb)..area_end.min((bidx + 1) * epb) {
                set_entry(&mut data, order, (c - bidx * epb) as usize, 1);
            }
            write_bytes(&self.file, block_offset, &data).await?;
            table[bidx as usize] = block_offset;
        }
        let table_offset = (area_start + blocks) << self.g.cluster_bits;
        self.file
            .debug_event(block::BlkdbgEvent::RefblockAllocWriteTable)
            .await;
        write_bytes(&self.file, table_offset, &encode_table(&table)).await?;
        self.caches.flush(Which::Refblock).await?;
        self.file.co_flush().await?;
        let mut fields = [0u8; 12];
        put64(&mut fields, 0, table_offset);
        put32(&mut fields, 8, table_clusters as u32);
        self.file
            .debug_event(block::BlkdbgEvent::RefblockAllocSwitchTable)
            .await;
        write_bytes(&self.file, 48, &fields).await?;
        self.file.co_flush().await?;
        let old_offset = self.header.refcount_table_offset;
        let old_clusters = self.header.refcount_table_clusters as u64;
        self.header.refcount_table_offset = table_offset;
        self.header.refcount_table_clusters = table_clusters as u32;
        self.set_reftable(table);
        self.free_cluster_index = self.free_cluster_index.max(area_end);
        block::trace!(
            qcow2_grow_reftable,
            "offset 0x{:x} clusters {}",
            table_offset,
            table_clusters
        );
        self.free_clusters(old_offset, old_clusters * cs).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_every_width_round_trip() {
        for order in 0..=6 {
            let mut block = vec![0u8; 512];
            let max = max_refcount(order);
            set_entry(&mut block, order, 3, max);
            set_entry(&mut block, order, 4, 1);
            assert_eq!(get_entry(&block, order, 3), max, "order {order}");
            assert_eq!(get_entry(&block, order, 4), 1, "order {order}");
            assert_eq!(get_entry(&block, order, 2), 0, "order {order}");
        }
    }

    #[test]
    fn sixteen_bit_entries_are_big_endian() {
        let mut block = vec![0u8; 8];
        set_entry(&mut block, 4, 1, 0x0102);
        assert_eq!(block[2..4], [1, 2]);
    }
}
