//! Allocating writes: deciding where a guest write lands, allocating clusters, copying the
//! untouched parts of a cluster from its old contents, and linking the new clusters into L2
//! (QEMU's qcow2_alloc_host_offset, handle_copied, handle_alloc, perform_cow and
//! qcow2_alloc_cluster_link_l2 in block/qcow2-cluster.c).
//!
//! A write into clusters this image owns alone (the "copied" flag) goes straight to their host
//! offset. Anything else gets new clusters (with an external data file: the data file's
//! cluster at the guest offset, see [`super::data_file`]): the metadata lock is taken to plan and allocate,
//! released while the guest data and the copy-on-write parts are written, and taken again to
//! point L2 at the new clusters and drop the old ones. While that is in flight the guest
//! clusters are registered as an [`InflightAlloc`]; any other write touching them waits, so
//! two allocations of one cluster can never race.

use block::Result;

use super::cache::Which;
use super::l2::{
    cluster_type, get_entry, sc_mask, set_entry, subcluster_type, ClusterType, SubclusterType,
    L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED,
};
use super::state::{c_hex, Meta};

/// Guest clusters with an allocation in flight (an entry of s->cluster_allocs).
#[derive(Clone, Copy, Debug)]
pub struct InflightAlloc {
    /// Unique id.
    pub id: u64,
    /// First guest byte (cluster aligned).
    pub start: u64,
    /// End of the guest range (cluster aligned).
    pub end: u64,
}

/// A planned allocation (QEMU's QCowL2Meta): `nb_clusters` guest clusters from
/// `guest_start` get host clusters from `host_start`.
#[derive(Clone, Debug)]
pub struct L2Meta {
    /// First guest cluster.
    pub guest_start: u64,
    /// Host offset of the first new cluster.
    pub host_start: u64,
    /// Number of clusters.
    pub nb_clusters: u64,
    /// Whether the host clusters are new (false: a subcluster bitmap update in place).
    pub new_clusters: bool,
    /// Guest write range, relative to `guest_start`.
    pub data: (u64, u64),
    /// Copy-on-write ranges before and after the data, relative to `guest_start`.
    pub cow_head: (u64, u64),
    /// See `cow_head`.
    pub cow_tail: (u64, u64),
    /// The L2 entries being replaced (entry, bitmap), one per cluster.
    pub old: Vec<(u64, u64)>,
}

/// What a write at some offset needs.
#[derive(Debug)]
pub enum WritePlan {
    /// Write `bytes` at this host offset, no metadata change.
    InPlace {
        /// Host offset.
        host: u64,
        /// Bytes the plan covers.
        bytes: u64,
    },
    /// Allocate (or update subcluster bits) and link.
    Alloc(L2Meta),
}

/// Whether old L2 contents get copied wholesale (true) or only the touched subclusters are
/// completed (false, extended L2 where the rest can stay as it is).
fn wide_cow(extended: bool, old_entry: u64, new_clusters: bool) -> bool {
    !extended || (new_clusters && old_entry & L2E_OFFSET_MASK != 0)
}

impl Meta {
    /// The L2 table for a guest offset, allocated or copied so that this image owns it
    /// alone (l2_allocate via get_cluster_table).
    pub async fn l2_for_write(&mut self, guest: u64) -> Result<u64> {
        let idx = self.g.l1_index(guest) as usize;
        if idx >= self.l1.len() {
            // Only the VM state area lies past the disk's L1 entries (get_cluster_table).
            self.grow_l1(idx as u64 + 1).await?;
        }
        let entry = self.l1[idx];
        let old = self.l2_offset_for(guest).await?;
        if old != 0 && entry & OFLAG_COPIED != 0 {
            if let Some(what) = self.overlap(old, self.g.cluster_size, false) {
                return Err(self
                    .signal_corruption(format!(
                        "Preventing invalid write on metadata (overlaps with {what})"
                    ))
                    .await);
            }
            return Ok(old);
        }
        let new = self.alloc_clusters(1).await?;
        self.check_metadata_alloc(new, self.g.cluster_size, "L2 table")
            .await?;
        // The new table's refcount reaches the disk before L1 points at it, even with lazy
        // refcounts (l2_allocate).
        self.caches.flush(Which::Refblock).await?;
        let contents = if old != 0 {
            self.file
                .debug_event(block::BlkdbgEvent::L2AllocCowRead)
                .await;
            self.caches.load(Which::L2, old).await?;
            self.caches.table(Which::L2, old).to_vec()
        } else {
            vec![0; self.g.cluster_size as usize]
        };
        self.caches.load_empty(Which::L2, new).await?;
        self.caches.table(Which::L2, new).copy_from_slice(&contents);
        self.file
            .debug_event(block::BlkdbgEvent::L2AllocWrite)
            .await;
        // The table (and the refcount saying it is used) reach the disk before L1 points at
        // it.
        self.caches.flush(Which::L2).await?;
        self.file.co_flush().await?;
        self.l1[idx] = new | OFLAG_COPIED;
        self.write_l1(idx, 1).await?;
        block::trace!(qcow2_l2_allocate, "l1_index {} offset 0x{:x}", idx, new);
        if old != 0 {
            self.free_clusters(old, self.g.cluster_size).await?;
        }
        Ok(new)
    }

    /// Decides how to write `offset..offset+bytes` (the part of it one plan covers).
    pub async fn plan_write(&mut self, offset: u64, bytes: u64) -> Result<WritePlan> {
        let g = self.g;
        let l2 = self.l2_for_write(offset).await?;
        self.caches.load(Which::L2, l2).await?;
        let first = g.l2_index(offset);
        let in_cluster = g.in_cluster(offset);
        let max_clusters = (g.l2_size as usize - first) as u64;
        let span = bytes.min(max_clusters * g.cluster_size - in_cluster);
        if let Some(m) = self.plan_owned_run(l2, offset, span) {
            return Ok(WritePlan::Alloc(m));
        }
        let table = self.caches.table(Which::L2, l2);
        // Clusters that can be written in place, contiguously.
        let mut n = 0u64;
        let mut host0 = 0;
        while n * g.cluster_size < in_cluster + span {
            let (e, b) = get_entry(&g, table, first + n as usize);
            let start = if n == 0 { in_cluster } else { 0 };
            let end = (in_cluster + span - n * g.cluster_size).min(g.cluster_size);
            if !writable_in_place(&g, e, b, start, end) {
                break;
            }
            if n == 0 {
                host0 = e & L2E_OFFSET_MASK;
            } else if e & L2E_OFFSET_MASK != host0 + n * g.cluster_size {
                break;
            }
            n += 1;
        }
        if n > 0 {
            if host0 & (g.cluster_size - 1) != 0 {
                return Err(self
                    .signal_corruption(format!(
                        "Cluster allocation offset {} unaligned (L2 offset: {}, L2 index: {})",
                        c_hex(host0),
                        c_hex(l2),
                        c_hex(first as u64)
                    ))
                    .await);
            }
            let covered = (n * g.cluster_size - in_cluster).min(span);
            return Ok(WritePlan::InPlace {
                host: host0 + in_cluster,
                bytes: covered,
            });
        }
        self.plan_alloc(l2, offset, span)
            .await
            .map(WritePlan::Alloc)
    }

    /// A run of host-contiguous clusters this image owns, at least one of them a
    /// preallocated zero cluster: written in one request into the clusters it already has,
    /// then relinked without the zero flag (handle_copied with keep_old). Only without
    /// extended L2, where a zero cluster is a whole-cluster flag.
    fn plan_owned_run(&mut self, l2: u64, offset: u64, span: u64) -> Option<L2Meta> {
        let g = self.g;
        if g.extended {
            return None;
        }
        let cs = g.cluster_size;
        let first = g.l2_index(offset);
        let in_cluster = g.in_cluster(offset);
        let table = self.caches.table(Which::L2, l2);
        let (e0, _) = get_entry(&g, table, first);
        let host_start = e0 & L2E_OFFSET_MASK;
        if !owned(&g, e0) || host_start & (cs - 1) != 0 {
            return None;
        }
        let mut old = Vec::new();
        while (old.len() as u64) * cs < in_cluster + span {
            let (e, b) = get_entry(&g, table, first + old.len());
            if !owned(&g, e) || e & L2E_OFFSET_MASK != host_start + old.len() as u64 * cs {
                break;
            }
            old.push((e, b));
        }
        let is_zero = |e: u64| cluster_type(&g, e) == ClusterType::ZeroAlloc;
        if !old.iter().any(|&(e, _)| is_zero(e)) {
            return None;
        }
        let nb_clusters = old.len() as u64;
        let data_end = (in_cluster + span).min(nb_clusters * cs);
        // Only a zero cluster needs its untouched part written (with zeroes).
        let head_from = if is_zero(old[0].0) { 0 } else { in_cluster };
        let tail_to = if is_zero(old[old.len() - 1].0) {
            nb_clusters * cs
        } else {
            data_end
        };
        Some(L2Meta {
            guest_start: g.cluster_start(offset),
            host_start,
            nb_clusters,
            new_clusters: false,
            data: (in_cluster, data_end),
            cow_head: (head_from, in_cluster),
            cow_tail: (data_end, tail_to),
            old,
        })
    }

    async fn plan_alloc(&mut self, l2: u64, offset: u64, span: u64) -> Result<L2Meta> {
        let g = self.g;
        let first = g.l2_index(offset);
        let in_cluster = g.in_cluster(offset);
        let table = self.caches.table(Which::L2, l2);
        let (e0, b0) = get_entry(&g, table, first);
        // A cluster we own whose touched subclusters are not all allocated: complete them in
        // place (extended L2 only).
        let own = owned(&g, e0);
        let mut old = vec![(e0, b0)];
        let nb_clusters = if own {
            1
        } else {
            let mut n = 1u64;
            while n * g.cluster_size < in_cluster + span {
                let (e, b) = get_entry(&g, table, first + n as usize);
                if owned(&g, e) {
                    break;
                }
                old.push((e, b));
                n += 1;
            }
            n
        };
        let guest_start = g.cluster_start(offset);
        let data_end = (in_cluster + span).min(nb_clusters * g.cluster_size);
        let host_start = if own {
            let host = e0 & L2E_OFFSET_MASK;
            if host & (g.cluster_size - 1) != 0 {
                return Err(self
                    .signal_corruption(format!(
                        "Cluster allocation offset {} unaligned (L2 offset: {}, L2 index: {})",
                        c_hex(host),
                        c_hex(l2),
                        c_hex(first as u64)
                    ))
                    .await);
            }
            host
        } else if self.data.is_external() {
            // A data file maps guest offsets one to one, without refcounts
            // (do_alloc_cluster_offset).
            guest_start
        } else {
            self.alloc_clusters(nb_clusters).await?
        };
        let sc = g.subcluster_size();
        let head_from = if wide_cow(g.extended, e0, !own) {
            0
        } else {
            in_cluster - in_cluster % sc
        };
        let last_old = old.last().unwrap().0;
        let area_end = nb_clusters * g.cluster_size;
        let tail_to = if wide_cow(g.extended, last_old, !own) {
            area_end
        } else {
            data_end.next_multiple_of(sc).min(area_end)
        };
        Ok(L2Meta {
            guest_start,
            host_start,
            nb_clusters,
            new_clusters: !own,
            data: (in_cluster, data_end),
            cow_head: (head_from, in_cluster),
            cow_tail: (data_end, tail_to),
            old,
        })
    }

    /// Points L2 at the clusters of a finished allocation and drops what they replace
    /// (qcow2_alloc_cluster_link_l2).
    pub async fn link_l2(&mut self, m: &L2Meta) -> Result<()> {
        let g = self.g;
        let l2 = self.l2_for_write(m.guest_start).await?;
        self.caches.load(Which::L2, l2).await?;
        let first = g.l2_index(m.guest_start);
        let cs = g.cluster_size;
        for (k, &(old_e, old_b)) in m.old.iter().enumerate() {
            let k64 = k as u64;
            // The written range of this cluster, rounded to subclusters.
            let lo = m.cow_head.0.max(k64 * cs).min((k64 + 1) * cs) - k64 * cs;
            let hi = m.cow_tail.1.min((k64 + 1) * cs).max(k64 * cs) - k64 * cs;
            let bitmap = if !g.extended {
                0
            } else if wide_cow(true, old_e, m.new_clusters) {
                0xffff_ffff
            } else {
                let first_sc = (lo >> g.subcluster_bits) as u32;
                let last_sc = (hi.div_ceil(g.subcluster_size())) as u32;
                let mask = sc_mask(first_sc, last_sc - first_sc);
                let keep_zero = (old_b >> 32) & !mask;
                ((old_b & 0xffff_ffff) | mask) | (keep_zero << 32)
            };
            let entry = (m.host_start + k64 * cs) | OFLAG_COPIED;
            let table = self.caches.table(Which::L2, l2);
            set_entry(&g, table, first + k, entry, bitmap);
        }
        self.caches.mark_dirty(Which::L2, l2);
        if m.new_clusters {
            for &(old_e, _) in &m.old {
                self.free_any_cluster(old_e).await?;
            }
        }
        Ok(())
    }

    /// Drops the reference an L2 entry holds on its host cluster(s), if any
    /// (qcow2_free_any_cluster).
    pub async fn free_any_cluster(&mut self, entry: u64) -> Result<()> {
        if self.data.is_external() {
            // Data clusters live in the data file and hold no refcount here.
            return Ok(());
        }
        match cluster_type(&self.g, entry) {
            ClusterType::Compressed => {
                let (offset, len) = self.g.compressed_range(entry);
                self.free_clusters(offset, len).await
            }
            ClusterType::Normal | ClusterType::ZeroAlloc => {
                let host = entry & L2E_OFFSET_MASK;
                if host & (self.g.cluster_size - 1) != 0 {
                    // Not fatal: the cluster is simply not freed (a leak at worst).
                    let what = format!("Cannot free unaligned cluster {}", c_hex(host));
                    self.signal_nonfatal_corruption(&what);
                    return Ok(());
                }
                self.free_clusters(host, self.g.cluster_size).await
            }
            ClusterType::Unallocated | ClusterType::ZeroPlain => Ok(()),
        }
    }

    /// Undoes the allocation of a failed write (best effort: a leak is harmless).
    pub async fn abort_alloc(&mut self, m: &L2Meta) {
        if m.new_clusters && !self.data.is_external() {
            let _ = self
                .free_clusters(m.host_start, m.nb_clusters * self.g.cluster_size)
                .await;
        }
    }

    /// Whether the L1 table currently maps `guest` with an owned L2 table (for tests).
    pub fn l1_entry(&self, guest: u64) -> Option<u64> {
        self.l1
            .get(self.g.l1_index(guest) as usize)
            .map(|e| e & L1E_OFFSET_MASK)
    }
}

/// Whether this image alone owns the entry's host cluster, so that a write may reuse it
/// (data, or a preallocated zero cluster).
fn owned(g: &super::l2::Geometry, entry: u64) -> bool {
    matches!(
        cluster_type(g, entry),
        ClusterType::Normal | ClusterType::ZeroAlloc
    ) && entry & OFLAG_COPIED != 0
}

/// Whether bytes `start..end` of a cluster with this entry can be written in place.
fn writable_in_place(
    g: &super::l2::Geometry,
    entry: u64,
    bitmap: u64,
    start: u64,
    end: u64,
) -> bool {
    if cluster_type(g, entry) != ClusterType::Normal || entry & OFLAG_COPIED == 0 {
        return false;
    }
    if !g.extended {
        return true;
    }
    let first = g.sc_index(start);
    let last = ((end - 1) >> g.subcluster_bits) as u32;
    (first..=last).all(|sc| subcluster_type(g, entry, bitmap, sc) == SubclusterType::Normal)
}
