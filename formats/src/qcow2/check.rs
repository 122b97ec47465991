//! Consistency check and repair (QEMU's qcow2_co_check and qcow2_check_refcounts in
//! block/qcow2-refcount.c; what `qemu-img check` runs).
//!
//! The check walks every structure that references host clusters — header, L1 tables, L2
//! tables, data and compressed clusters, refcount table and blocks, snapshot table — and
//! counts the references in memory. It then compares those counts with the stored refcounts:
//! a stored count that is too high is a leak, one that is too low a corruption. Problems are
//! reported on stderr with QEMU's wording; `fix` repairs them by adjusting refcounts, and
//! fixes the "copied" flags, which must be set exactly on clusters with refcount 1.

use block::driver::{CheckFix, CheckResult};
use block::{BlockDriverState, Result};

use super::cache::Which;
use super::header::{INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use super::l2::{
    cluster_type, get_entry, set_entry, ClusterType, L1E_OFFSET_MASK, L1E_RESERVED_MASK,
    L2E_OFFSET_MASK, OFLAG_COPIED,
};
use super::read_bytes;
use super::refcount::REFT_OFFSET_MASK;
use super::state::{decode_table, Meta};
use super::Qcow2;

/// The references counted by walking the metadata.
pub(crate) struct Refs {
    pub(super) counts: Vec<u64>,
    /// The refcount structure itself is broken: only a rebuild repairs it.
    broken_structure: bool,
    file_len: u64,
    cluster_bits: u32,
    /// The highest refcount an entry can hold (refcount_max).
    refcount_max: u64,
}

impl Refs {
    /// Counts one reference to every cluster of a range (inc_refcounts).
    pub(crate) fn inc(&mut self, res: &mut CheckResult, offset: u64, size: u64) {
        if size == 0 {
            return;
        }
        let cs = 1u64 << self.cluster_bits;
        if (offset + size).saturating_sub(self.file_len) >= cs {
            eprintln!(
                "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset {offset:#x} size {size:#x}"
            );
            res.corruptions += 1;
            return;
        }
        let first = offset >> self.cluster_bits;
        let last = (offset + size - 1) >> self.cluster_bits;
        if last as usize >= self.counts.len() {
            self.counts.resize(last as usize + 1, 0);
        }
        for c in first..=last {
            let n = &mut self.counts[c as usize];
            if *n >= self.refcount_max {
                // More references than the entry width can count: repairing cannot help.
                eprintln!(
                    "ERROR: overflow cluster offset={:#x}",
                    c << self.cluster_bits
                );
                eprintln!("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing");
                res.corruptions += 1;
            } else {
                *n += 1;
            }
        }
    }
}

/// State of the fragmentation statistics while walking the active L2 tables.
#[derive(Default)]
struct Walk {
    next_contiguous: u64,
}

impl Qcow2 {
    /// Checks the image and, with `fix`, repairs it (qcow2_co_check).
    pub(super) async fn check(&self, _bs: &BlockDriverState, fix: CheckFix) -> Result<CheckResult> {
        let mut meta = self.meta.lock().await;
        meta.caches.flush_all().await?;
        let mut res = CheckResult {
            total_clusters: self.size.get().div_ceil(self.g.cluster_size),
            ..CheckResult::default()
        };
        let highest = meta.check_refcounts(&mut res, fix).await?;
        meta.check_copied(&mut res, fix).await?;
        res.image_end_offset = (highest + 1) << self.g.cluster_bits;
        meta.caches.flush_all().await?;
        let repaired = (fix.errors || fix.leaks)
            && res.corruptions == 0
            && res.leaks == 0
            && res.check_errors == 0;
        if repaired {
            // A repaired image is consistent: neither dirty nor corrupt any more.
            meta.header.incompatible_features &= !(INCOMPAT_CORRUPT | INCOMPAT_DIRTY);
            meta.write_incompatible().await?;
            let mut info = self.info.borrow_mut();
            info.incompatible_features &= !(INCOMPAT_CORRUPT | INCOMPAT_DIRTY);
            meta.corrupt = false;
            self.needs_repair.set(false);
        }
        Ok(res)
    }
}

impl Meta {
    async fn count_all(&mut self, res: &mut CheckResult, refs: &mut Refs) -> Result<()> {
        let cs = self.g.cluster_size;
        refs.inc(res, 0, cs);
        self.count_snapshots(res, refs).await?;
        let l1 = self.l1.clone();
        let l1_offset = self.header.l1_table_offset;
        self.count_l1(res, refs, l1_offset, &l1, Some(&mut Walk::default()))
            .await?;
        let (rt_off, rt_clusters) = (
            self.header.refcount_table_offset,
            self.header.refcount_table_clusters as u64,
        );
        refs.inc(res, rt_off, rt_clusters * cs);
        if let Some((offset, len)) = self.header.crypto_header {
            refs.inc(res, offset, len);
        }
        for (i, &e) in self.reftable.clone().iter().enumerate() {
            let offset = e & REFT_OFFSET_MASK;
            if offset == 0 {
                continue;
            }
            if offset & (cs - 1) != 0 {
                eprintln!(
                    "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
                );
                res.corruptions += 1;
                refs.broken_structure = true;
                continue;
            }
            if offset >= refs.file_len {
                eprintln!("ERROR refcount block {i} is outside image");
                res.corruptions += 1;
                refs.broken_structure = true;
                continue;
            }
            refs.inc(res, offset, cs);
            let counted = refs
                .counts
                .get((offset / cs) as usize)
                .copied()
                .unwrap_or(0);
            if counted != 1 {
                // Something else uses the refcount block's cluster too (check_refblocks).
                eprintln!("ERROR refcount block {i} refcount={counted}");
                res.corruptions += 1;
                refs.broken_structure = true;
            }
        }
        self.count_bitmaps(res, refs).await
    }

    /// Counts the snapshot table and every snapshot's L1/L2/data clusters.
    async fn count_snapshots(&mut self, res: &mut CheckResult, refs: &mut Refs) -> Result<()> {
        for sn in self.snapshots.clone() {
            let what = format!("ERROR snapshot {} ({})", sn.id_str, sn.name);
            if sn.l1_size as u64 > super::header::MAX_L1_BYTES / 8 {
                eprintln!(
                    "{what} l1_size={:#x}: L1 table is too large; snapshot table entry corrupted",
                    sn.l1_size
                );
                res.corruptions += 1;
                continue;
            }
            if sn.l1_table_offset % self.g.cluster_size != 0 {
                eprintln!(
                    "{what} l1_offset={:#x}: L1 table is not cluster aligned; snapshot table entry corrupted",
                    sn.l1_table_offset
                );
                res.corruptions += 1;
                continue;
            }
            let bytes =
                match read_bytes(&self.file, sn.l1_table_offset, sn.l1_size as usize * 8).await {
                    Ok(bytes) => bytes,
                    Err(_) => {
                        eprintln!("ERROR: I/O error in check_refcounts_l1");
                        res.check_errors += 1;
                        continue;
                    }
                };
            let l1 = decode_table(&bytes);
            self.count_l1(res, refs, sn.l1_table_offset, &l1, None)
                .await?;
        }
        refs.inc(res, self.header.snapshots_offset, self.snapshots_size);
        Ok(())
    }

    /// Counts an L1 table and what it references; `walk` is Some for the active one, which
    /// also feeds the statistics (check_refcounts_l1).
    async fn count_l1(
        &mut self,
        res: &mut CheckResult,
        refs: &mut Refs,
        l1_offset: u64,
        l1: &[u64],
        mut walk: Option<&mut Walk>,
    ) -> Result<()> {
        let cs = self.g.cluster_size;
        refs.inc(res, l1_offset, l1.len() as u64 * 8);
        for (i, &e) in l1.iter().enumerate() {
            if e & L1E_RESERVED_MASK != 0 {
                eprintln!("ERROR found L1 entry with reserved bits set: {e:#x}");
                res.corruptions += 1;
            }
            let l2 = e & L1E_OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            refs.inc(res, l2, cs);
            if l2 & (cs - 1) != 0 {
                eprintln!(
                    "ERROR l2_offset={l2:#x}: Table is not cluster aligned; L1 entry corrupted"
                );
                res.corruptions += 1;
                continue;
            }
            let _ = i;
            let table = read_bytes(&self.file, l2, cs as usize).await?;
            self.count_l2(res, refs, &table, walk.as_deref_mut());
        }
        Ok(())
    }

    fn count_l2(
        &self,
        res: &mut CheckResult,
        refs: &mut Refs,
        table: &[u8],
        mut walk: Option<&mut Walk>,
    ) {
        let g = self.g;
        let cs = g.cluster_size;
        for i in 0..g.l2_size as usize {
            let (e, bitmap) = get_entry(&g, table, i);
            match cluster_type(&g, e) {
                ClusterType::Compressed => {
                    if e & OFLAG_COPIED != 0 {
                        eprintln!("ERROR: coffset={:#x}: copied flag must never be set for compressed clusters", e & g.coffset_mask);
                        res.corruptions += 1;
                    }
                    if self.data.is_external() {
                        let shown = e & !OFLAG_COPIED;
                        eprintln!("ERROR compressed cluster {i} with data file, entry={shown:#x}");
                        res.corruptions += 1;
                        continue;
                    }
                    if g.extended && bitmap != 0 {
                        eprintln!("ERROR compressed cluster {i} with non-zero subcluster allocation bitmap, entry={e:#x}");
                        res.corruptions += 1;
                    }
                    if walk.is_some() {
                        // Compressed clusters are fragmented by nature.
                        res.allocated_clusters += 1;
                        res.compressed_clusters += 1;
                        res.fragmented_clusters += 1;
                    }
                    let (offset, len) = g.compressed_range(e);
                    refs.inc(res, offset, len);
                }
                ClusterType::Normal | ClusterType::ZeroAlloc => {
                    let offset = e & L2E_OFFSET_MASK;
                    if g.extended && bitmap & (bitmap >> 32) & 0xffff_ffff != 0 {
                        eprintln!("ERROR: Invalid cluster entry: alloc and zero bits set for the same subcluster (L2 index {i})");
                        res.corruptions += 1;
                    }
                    if offset & (cs - 1) != 0 {
                        eprintln!("ERROR offset={offset:#x}: Cluster is not properly aligned; L2 entry corrupted.");
                        res.corruptions += 1;
                        continue;
                    }
                    if let Some(w) = walk.as_deref_mut() {
                        res.allocated_clusters += 1;
                        if w.next_contiguous != 0 && offset != w.next_contiguous {
                            res.fragmented_clusters += 1;
                        }
                        w.next_contiguous = offset + cs;
                    }
                    // Clusters of an external data file are not refcounted.
                    if !self.data.is_external() {
                        refs.inc(res, offset, cs);
                    }
                }
                ClusterType::Unallocated | ClusterType::ZeroPlain => {
                    if g.extended && bitmap & 0xffff_ffff != 0 {
                        eprintln!("ERROR: Invalid cluster entry: unallocated cluster with allocated subclusters (L2 index {i})");
                        res.corruptions += 1;
                    }
                }
            }
        }
    }

    /// Counts references, compares and repairs refcounts, rebuilding the refcount structure
    /// when a used cluster has none (qcow2_check_refcounts). Returns the highest cluster in
    /// use.
    async fn check_refcounts(&mut self, res: &mut CheckResult, fix: CheckFix) -> Result<u64> {
        let refs = self.count_refs(res).await?;
        let pre_compare = res.clone();
        let (mut highest, rebuild) = self
            .compare_refcounts(res, &refs, CheckFix::default())
            .await?;
        let rebuild = rebuild || refs.broken_structure;
        if rebuild && fix.errors {
            eprintln!("Rebuilding refcount structure");
            let old = res.clone();
            self.rebuild_refcount_structure(&refs).await?;
            res.corruptions = 0;
            res.leaks = 0;
            let refs = self.count_refs(res).await?;
            let mut fresh_leaks = 0;
            if fix.leaks {
                // The old structure is now leaked: free it.
                let saved = res.clone();
                *res = CheckResult::default();
                let leaks_only = CheckFix {
                    leaks: true,
                    errors: false,
                };
                let (h, still) = self.compare_refcounts(res, &refs, leaks_only).await?;
                if still {
                    eprintln!("ERROR rebuilt refcount structure is still broken");
                }
                highest = h;
                fresh_leaks = res.leaks;
                *res = saved;
            }
            res.corruptions_fixed += old.corruptions.saturating_sub(res.corruptions);
            res.leaks_fixed += old.leaks.saturating_sub(res.leaks);
            res.leaks += fresh_leaks;
        } else if fix.errors || fix.leaks {
            if rebuild {
                eprintln!("ERROR need to rebuild refcount structures");
                res.check_errors += 1;
            }
            if res.leaks != 0 || res.corruptions != 0 {
                *res = pre_compare;
                highest = self.compare_refcounts(res, &refs, fix).await?.0;
            }
        }
        Ok(highest)
    }

    /// Walks all metadata and counts the references to every cluster.
    async fn count_refs(&mut self, res: &mut CheckResult) -> Result<Refs> {
        let file_len = self.file.getlength();
        // The counts are a table of one entry per cluster of the file, and a sparse file can
        // claim any length: QEMU refuses more than INT_MAX clusters with EFBIG, and so do we.
        if file_len.div_ceil(self.g.cluster_size) > i32::MAX as u64 {
            res.check_errors += 1;
            return Err(block::Error::from_errno(libc::EFBIG));
        }
        let mut refs = Refs {
            counts: Vec::new(),
            broken_structure: false,
            file_len,
            cluster_bits: self.g.cluster_bits,
            refcount_max: super::refcount::max_refcount(self.g.refcount_order),
        };
        self.count_all(res, &mut refs).await?;
        Ok(refs)
    }

    /// Compares counted and stored refcounts, repairing what `fix` allows
    /// (compare_refcounts). Returns the highest cluster in use, and whether a used cluster
    /// has no refcount at all (then only a rebuild helps).
    async fn compare_refcounts(
        &mut self,
        res: &mut CheckResult,
        refs: &Refs,
        fix: CheckFix,
    ) -> Result<(u64, bool)> {
        let cs = self.g.cluster_size;
        let n = refs.file_len.div_ceil(cs).max(refs.counts.len() as u64);
        // Repairs must not allocate over clusters that are in use but counted as free.
        self.free_cluster_index = self.free_cluster_index.max(n);
        let (mut highest, mut rebuild) = (0, false);
        for i in 0..n {
            let counted = refs.counts.get(i as usize).copied().unwrap_or(0);
            let stored = match self.get_refcount(i).await {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("Can't get refcount for cluster {i}: {e}");
                    res.check_errors += 1;
                    continue;
                }
            };
            if stored > 0 || counted > 0 {
                highest = i;
            }
            if stored == counted {
                continue;
            }
            let leak = stored > counted;
            let repair = stored != 0 && ((leak && fix.leaks) || (!leak && fix.errors));
            rebuild |= stored == 0;
            let word = match (repair, leak) {
                (true, _) => "Repairing",
                (false, true) => "Leaked",
                (false, false) => "ERROR",
            };
            eprintln!("{word} cluster {i} refcount={stored} reference={counted}");
            if repair {
                let delta = counted as i128 - stored as i128;
                if self.set_refcount_delta(i, delta).await.is_ok() {
                    if leak {
                        res.leaks_fixed += 1;
                    } else {
                        res.corruptions_fixed += 1;
                    }
                    continue;
                }
            }
            if leak {
                res.leaks += 1;
            } else {
                res.corruptions += 1;
            }
        }
        Ok((highest, rebuild))
    }

    async fn set_refcount_delta(&mut self, cluster: u64, delta: i128) -> Result<()> {
        let offset = cluster << self.g.cluster_bits;
        let delta = i64::try_from(delta).map_err(|_| block::Error::from_errno(libc::ERANGE))?;
        self.update_refcount(offset, 1, delta).await?;
        self.caches.flush(Which::Refblock).await
    }

    /// Checks that the "copied" flag is set exactly where the refcount is 1
    /// (check_oflag_copied).
    async fn check_copied(&mut self, res: &mut CheckResult, fix: CheckFix) -> Result<()> {
        let g = self.g;
        // With only leaks to repair, the flags are fixed too once the refcounts are known
        // to be right (check_oflag_copied).
        let repair = fix.errors
            || (fix.leaks && res.check_errors == 0 && res.corruptions == 0 && res.leaks == 0);
        for i in 0..self.l1.len() {
            let e = self.l1[i];
            let l2 = e & L1E_OFFSET_MASK;
            if l2 == 0 || l2 & (g.cluster_size - 1) != 0 {
                continue;
            }
            let rc = self.get_refcount(l2 >> g.cluster_bits).await?;
            if (rc == 1) != (e & OFLAG_COPIED != 0) {
                let word = if repair { "Repairing" } else { "ERROR" };
                eprintln!(
                    "{word} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={rc}"
                );
                res.corruptions += 1;
                if repair {
                    self.l1[i] = if rc == 1 {
                        e | OFLAG_COPIED
                    } else {
                        e & !OFLAG_COPIED
                    };
                    self.write_l1(i, 1).await?;
                    res.corruptions -= 1;
                    res.corruptions_fixed += 1;
                }
            }
            self.caches.load(Which::L2, l2).await?;
            let mut changed = false;
            for j in 0..g.l2_size as usize {
                let (le, bitmap) = get_entry(&g, self.caches.table(Which::L2, l2), j);
                if !matches!(
                    cluster_type(&g, le),
                    ClusterType::Normal | ClusterType::ZeroAlloc
                ) {
                    continue;
                }
                let data = le & L2E_OFFSET_MASK;
                if data & (g.cluster_size - 1) != 0 {
                    continue;
                }
                let rc = if self.data.is_external() {
                    // A data file cluster belongs to this image alone.
                    1
                } else {
                    self.get_refcount(data >> g.cluster_bits).await?
                };
                if (rc == 1) != (le & OFLAG_COPIED != 0) {
                    let word = if repair { "Repairing" } else { "ERROR" };
                    eprintln!("{word} OFLAG_COPIED data cluster: l2_entry={le:x} refcount={rc}");
                    if !repair {
                        res.corruptions += 1;
                    } else {
                        let new = if rc == 1 {
                            le | OFLAG_COPIED
                        } else {
                            le & !OFLAG_COPIED
                        };
                        set_entry(&g, self.caches.table(Which::L2, l2), j, new, bitmap);
                        changed = true;
                        res.corruptions_fixed += 1;
                    }
                }
            }
            if changed {
                self.caches.mark_dirty(Which::L2, l2);
            }
        }
        Ok(())
    }
}
