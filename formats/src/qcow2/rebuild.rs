//! Rebuilding the refcount structure from scratch (QEMU's rebuild_refcount_structure in
//! block/qcow2-refcount.c), the repair for a used cluster whose refcount is missing.
//!
//! The check has counted every reference in memory. New refcount blocks and a new refcount
//! table are placed in clusters that count shows as free, filled from the counts, written, and
//! made live by one header update. The old structure is then unreferenced; the check's
//! second pass frees it as leaked clusters, which is what QEMU prints too.

use std::collections::BTreeMap;

use block::{Error, Result};

use super::check::Refs;
use super::header::{put32, put64, MAX_REFTABLE_BYTES};
use super::l2::Geometry;
use super::refcount::{get_entry, max_refcount, set_entry};
use super::state::{encode_table, Meta};
use super::write_bytes;

/// Refcounts kept per refcount block of the structure being built: a block exists only
/// where some count is nonzero, as the bytes it will be written with. Memory follows the
/// refcount structure written, never the file's length, which a sparse file sets at will.
pub(super) struct BlockCounts {
    order: u32,
    refblock_bits: u32,
    cluster_size: usize,
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl BlockCounts {
    /// No counts yet, for blocks of geometry `g`.
    pub(super) fn new(g: &Geometry) -> Self {
        BlockCounts {
            order: g.refcount_order,
            refblock_bits: g.refblock_bits,
            cluster_size: g.cluster_size as usize,
            blocks: BTreeMap::new(),
        }
    }

    /// The counts of a dense table, each capped at the width's maximum.
    fn from_dense(g: &Geometry, counts: &[u64]) -> Self {
        let mut out = BlockCounts::new(g);
        let max = max_refcount(g.refcount_order);
        for (c, &n) in counts.iter().enumerate().filter(|(_, &n)| n != 0) {
            out.set(c as u64, n.min(max));
        }
        out
    }

    /// Cluster `c`'s count.
    pub(super) fn get(&self, c: u64) -> u64 {
        let epb = 1u64 << self.refblock_bits;
        match self.blocks.get(&(c >> self.refblock_bits)) {
            Some(data) => get_entry(data, self.order, (c & (epb - 1)) as usize),
            None => 0,
        }
    }

    /// Sets cluster `c`'s count; `n` must fit the width.
    pub(super) fn set(&mut self, c: u64, n: u64) {
        let epb = 1u64 << self.refblock_bits;
        let idx = c >> self.refblock_bits;
        if n == 0 && !self.blocks.contains_key(&idx) {
            return;
        }
        let cs = self.cluster_size;
        let data = self.blocks.entry(idx).or_insert_with(|| vec![0; cs]);
        set_entry(data, self.order, (c & (epb - 1)) as usize, n);
    }

    /// First-fit allocation of `n` clusters (alloc_clusters_imrt).
    fn alloc(&mut self, first_free: &mut u64, n: u64) -> u64 {
        let mut start = *first_free;
        while let Some(used) = (start..start + n).find(|&c| self.get(c) != 0) {
            start = used + 1;
        }
        for c in start..start + n {
            self.set(c, 1);
        }
        if start == *first_free {
            *first_free = start + n;
        }
        start
    }

    /// The blocks holding a nonzero count that `placed` has no cluster for yet.
    fn unplaced(&self, placed: &BTreeMap<u64, u64>) -> Vec<u64> {
        self.blocks
            .iter()
            .filter(|(idx, data)| !placed.contains_key(idx) && data.iter().any(|&b| b != 0))
            .map(|(&idx, _)| idx)
            .collect()
    }
}

/// A refcount structure written to free clusters but not yet made live.
pub(super) struct NewRefcounts {
    /// Where the table starts.
    pub(super) table_offset: u64,
    /// How many clusters it spans.
    pub(super) table_clusters: u32,
    /// Its entries.
    pub(super) reftable: Vec<u64>,
}

impl Meta {
    /// Replaces the refcount table and blocks with ones built from `refs`.
    pub(super) async fn rebuild_refcount_structure(&mut self, refs: &Refs) -> Result<()> {
        let mut counts = BlockCounts::from_dense(&self.g, &refs.counts);
        let new = self.write_refcount_structure(&mut counts).await?;
        let mut fields = [0u8; 12];
        put64(&mut fields, 0, new.table_offset);
        put32(&mut fields, 8, new.table_clusters);
        write_bytes(&self.file, 48, &fields).await?;
        self.file.co_flush().await?;
        self.header.refcount_table_offset = new.table_offset;
        self.header.refcount_table_clusters = new.table_clusters;
        self.adopt_reftable(new.reftable);
        Ok(())
    }

    /// Makes a new refcount table the live one: cached blocks and allocation cursors
    /// referred to the old structure.
    pub(super) fn adopt_reftable(&mut self, reftable: Vec<u64>) {
        self.set_reftable(reftable);
        self.caches.clear();
        self.free_cluster_index = 0;
        self.free_byte_offset = 0;
    }

    /// Places refcount blocks and a table for `counts` (at the width of `self.g`) in
    /// clusters the counts show free, counting them too, and writes them.
    pub(super) async fn write_refcount_structure(
        &mut self,
        counts: &mut BlockCounts,
    ) -> Result<NewRefcounts> {
        let cs = self.g.cluster_size;
        let mut first_free = 0;
        let mut placed: BTreeMap<u64, u64> = BTreeMap::new();
        let mut table: Option<(u64, u64)> = None;
        loop {
            // Every block with a nonzero count gets a cluster; placing one may need another.
            loop {
                let unplaced = counts.unplaced(&placed);
                if unplaced.is_empty() {
                    break;
                }
                for idx in unplaced {
                    placed.insert(idx, counts.alloc(&mut first_free, 1));
                }
            }
            let entries = placed.keys().next_back().map_or(0, |&top| top + 1);
            let needed = (entries * 8).div_ceil(cs).max(1);
            match table {
                Some((_, have)) if have >= needed => break,
                Some((start, have)) => {
                    for c in start..start + have {
                        counts.set(c, 0);
                    }
                    first_free = first_free.min(start);
                }
                None => {}
            }
            if needed * cs > MAX_REFTABLE_BYTES {
                return Err(Error::new(libc::EFBIG, "Reference count table too large"));
            }
            table = Some((counts.alloc(&mut first_free, needed), needed));
        }
        let (table_start, table_clusters) = table.expect("loop places the table");
        let mut reftable = vec![0u64; (table_clusters * cs / 8) as usize];
        let empty = vec![0u8; cs as usize];
        for (&idx, &block) in &placed {
            let data = counts.blocks.get(&idx).unwrap_or(&empty);
            write_bytes(&self.file, block * cs, data).await?;
            reftable[idx as usize] = block * cs;
        }
        let table_offset = table_start * cs;
        write_bytes(&self.file, table_offset, &encode_table(&reftable)).await?;
        self.file.co_flush().await?;
        Ok(NewRefcounts {
            table_offset,
            table_clusters: table_clusters as u32,
            reftable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(order: u32) -> BlockCounts {
        BlockCounts {
            order,
            refblock_bits: 9 + 3 - order,
            cluster_size: 512,
            blocks: BTreeMap::new(),
        }
    }

    #[test]
    fn only_blocks_with_counts_take_memory() {
        let mut c = counts(4);
        // A cluster a terabyte of 512-byte clusters away: one block, not a dense table.
        c.set(1 << 31, 7);
        c.set(5, 0);
        assert_eq!(c.blocks.len(), 1);
        assert_eq!(c.get(1 << 31), 7);
        assert_eq!(c.get((1 << 31) + 1), 0);
        assert_eq!(c.get(5), 0);
    }

    #[test]
    fn allocation_is_first_fit_and_counts_what_it_places() {
        let mut c = counts(0);
        for used in [0, 1, 3] {
            c.set(used, 1);
        }
        let mut first_free = 0;
        assert_eq!(
            c.alloc(&mut first_free, 2),
            4,
            "cluster 2 alone is too small"
        );
        assert_eq!(first_free, 0);
        assert_eq!(c.alloc(&mut first_free, 1), 2);
        assert_eq!(
            first_free, 0,
            "the cursor moves only when the first fit was at it"
        );
        assert_eq!((c.get(4), c.get(5), c.get(2)), (1, 1, 1));
        assert!(c.unplaced(&BTreeMap::new()) == vec![0]);
    }
}
