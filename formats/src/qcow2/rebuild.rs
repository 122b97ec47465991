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
use super::refcount::{max_refcount, set_entry};
use super::state::{encode_table, Meta};
use super::write_bytes;

/// First-fit allocation of `n` clusters in the in-memory counts (alloc_clusters_imrt).
fn alloc_in_counts(counts: &mut Vec<u64>, first_free: &mut usize, n: usize) -> usize {
    let mut start = *first_free;
    loop {
        if start + n > counts.len() {
            counts.resize(start + n, 0);
        }
        match (start..start + n).find(|&c| counts[c] != 0) {
            Some(used) => start = used + 1,
            None => break,
        }
    }
    counts[start..start + n].fill(1);
    if start == *first_free {
        *first_free = start + n;
    }
    start
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
    pub(super) async fn rebuild_refcount_structure(&mut self, refs: &mut Refs) -> Result<()> {
        let new = self.write_refcount_structure(&mut refs.counts).await?;
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

    /// Places refcount blocks and a table for `counts` (per cluster, at the width of
    /// `self.g`) in clusters the counts show free, counting them too, and writes them.
    pub(super) async fn write_refcount_structure(
        &mut self,
        counts: &mut Vec<u64>,
    ) -> Result<NewRefcounts> {
        let cs = self.g.cluster_size as usize;
        let epb = 1usize << self.g.refblock_bits;
        let mut first_free = 0;
        let mut blocks: BTreeMap<usize, usize> = BTreeMap::new();
        let mut table: Option<(usize, usize)> = None;
        loop {
            // Every range with references gets a block; placing one may extend the counts.
            let mut idx = 0;
            while idx * epb < counts.len() {
                let end = counts.len().min((idx + 1) * epb);
                if !blocks.contains_key(&idx) && counts[idx * epb..end].iter().any(|&c| c != 0) {
                    let b = alloc_in_counts(counts, &mut first_free, 1);
                    blocks.insert(idx, b);
                }
                idx += 1;
            }
            let needed = (counts.len().div_ceil(epb) * 8).div_ceil(cs).max(1);
            match table {
                Some((_, have)) if have >= needed => break,
                Some((start, have)) => {
                    counts[start..start + have].fill(0);
                    first_free = first_free.min(start);
                }
                None => {}
            }
            if needed * cs > MAX_REFTABLE_BYTES as usize {
                return Err(Error::new(libc::EFBIG, "Reference count table too large"));
            }
            table = Some((alloc_in_counts(counts, &mut first_free, needed), needed));
        }
        let (table_start, table_clusters) = table.expect("loop places the table");
        let order = self.g.refcount_order;
        let max = max_refcount(order);
        let mut reftable = vec![0u64; table_clusters * cs / 8];
        for (&idx, &block) in &blocks {
            let mut data = vec![0u8; cs];
            let end = counts.len().min((idx + 1) * epb);
            for (k, &count) in counts[idx * epb..end].iter().enumerate() {
                set_entry(&mut data, order, k, count.min(max));
            }
            write_bytes(&self.file, (block * cs) as u64, &data).await?;
            reftable[idx] = (block * cs) as u64;
        }
        let table_offset = (table_start * cs) as u64;
        write_bytes(&self.file, table_offset, &encode_table(&reftable)).await?;
        self.file.co_flush().await?;
        Ok(NewRefcounts {
            table_offset,
            table_clusters: table_clusters as u32,
            reftable,
        })
    }
}
