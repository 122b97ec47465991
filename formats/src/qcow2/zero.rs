//! Zero writes and discard: changing L2 entries instead of writing data (QEMU's
//! qcow2_co_pwrite_zeroes, qcow2_co_pdiscard, zero_in_l2_slice and discard_in_l2_slice in
//! block/qcow2*.c).
//!
//! Zeroes need the v3 zero flag (or, with extended L2, the subcluster zero bits); a v2 image
//! without a backing file discards instead (unallocated reads as zeroes there). A v2 image
//! with a backing file, or an unaligned piece, answers ENOTSUP and the generic layer writes
//! a zero buffer instead. Discard frees whole clusters: afterwards they read as zeroes where
//! the format can say so (v3) or where nothing lies below; on a v2 image with a backing file
//! it is refused (ENOTSUP, which the generic layer ignores), as in QEMU.

use block::{BlockDriverState, Error, RequestFlags, Result};

use super::cache::Which;
use super::l2::{
    cluster_type, get_entry, sc_mask, set_entry, subcluster_type, ClusterType, SubclusterType,
    BITMAP_ALL_ZEROES, L2E_OFFSET_MASK, OFLAG_COPIED, OFLAG_ZERO,
};
use super::mapping::Mapping;
use super::state::Meta;
use super::Qcow2;

/// What happens to one L2 entry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Zero subclusters `first..first+count` (count == all for a whole cluster);
    /// `partial`: the request covered only part of them, which was found to read as zeroes
    /// already, and must still do so under the lock (a write may have landed meanwhile).
    Zero {
        first: u32,
        count: u32,
        unmap: bool,
        partial: bool,
    },
    /// Discard the whole cluster.
    Discard { has_backing: bool },
    /// Make the cluster unallocated, whatever the backing file holds (make_empty).
    Deallocate,
}

impl Qcow2 {
    /// Writes zeroes by marking clusters or subclusters zero.
    pub(super) async fn pwrite_zeroes(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        let g = self.g;
        let sc = g.subcluster_size();
        if !g.v3 && bs.backing().is_some() {
            return Err(Error::from_errno(libc::ENOTSUP));
        }
        let (mut offset, mut bytes) = (offset, bytes);
        let end = offset + bytes;
        let tail_ok = end == self.size.get();
        let start = offset - offset % sc;
        let rounded_end = if tail_ok {
            end
        } else {
            end.next_multiple_of(sc)
        };
        let partial = start != offset || rounded_end != end;
        if partial {
            // A partial subcluster can only become a zero subcluster if the rest of it
            // already reads as zeroes (QEMU's is_zero check).
            let rest_end = rounded_end.min(self.size.get());
            if rounded_end - start > sc
                || !self.reads_as_zero(bs, start, offset - start).await?
                || !self
                    .reads_as_zero(bs, end, rest_end.saturating_sub(end))
                    .await?
            {
                return Err(Error::from_errno(libc::ENOTSUP));
            }
            offset = start;
            bytes = rounded_end - start;
        }
        if !g.v3 {
            // No zero flag, but with no backing file an unallocated cluster reads as
            // zeroes: discarding is zeroing (as in qcow2_subcluster_zeroize).
            return self
                .for_each_cluster(bs, offset, bytes, |_, _| Op::Discard { has_backing: false })
                .await;
        }
        let unmap = flags.contains(RequestFlags::MAY_UNMAP);
        self.for_each_cluster(bs, offset, bytes, |start, len| {
            let first = g.sc_index(start);
            let count = (len.div_ceil(sc)) as u32;
            Op::Zero {
                first,
                count,
                unmap: unmap && count == g.subclusters,
                partial,
            }
        })
        .await
    }

    /// Whether a guest range reads as zeroes without looking at data.
    async fn reads_as_zero(&self, bs: &BlockDriverState, offset: u64, bytes: u64) -> Result<bool> {
        let mut done = 0;
        while done < bytes {
            let (mapping, n) = {
                let mut meta = self.meta.lock().await;
                meta.get_host_offset(offset + done, bytes - done).await?
            };
            let zero = match mapping {
                Mapping::Zero | Mapping::ZeroAlloc(_) => true,
                Mapping::Unallocated => match bs.backing() {
                    None => true,
                    Some(backing) => backing_reads_zero(&backing, offset + done, n).await?,
                },
                Mapping::Data(_) | Mapping::Compressed(_) => false,
            };
            if !zero {
                return Ok(false);
            }
            done += n;
        }
        Ok(true)
    }

    /// Discards whole clusters (a partial cluster is ignored, except the image's tail).
    pub(super) async fn pdiscard(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
    ) -> Result<()> {
        let g = self.g;
        let end = offset + bytes;
        let start = offset.next_multiple_of(g.cluster_size);
        let aligned_end = if end == self.size.get() {
            end
        } else {
            g.cluster_start(end)
        };
        if aligned_end <= start {
            return Ok(());
        }
        let has_backing = bs.backing().is_some();
        if has_backing && !g.v3 {
            // v2 cannot say "zeroes" and an empty entry would expose the backing file's
            // data, so the discard is not done at all.
            return Err(Error::from_errno(libc::ENOTSUP));
        }
        self.for_each_cluster(bs, start, aligned_end - start, |_, _| Op::Discard {
            has_backing,
        })
        .await
    }

    /// Makes every cluster unallocated, so that reads fall through to the backing file
    /// (qcow2_make_empty, done cluster by cluster rather than by rebuilding the tables).
    pub(super) async fn make_empty(&self, bs: &BlockDriverState) -> Result<()> {
        let size = self.size.get();
        self.for_each_cluster(bs, 0, size, |_, _| Op::Deallocate)
            .await?;
        self.meta.lock().await.flush().await
    }

    /// Applies `op_for(range)` to every cluster touching `offset..offset+bytes`, one L2
    /// table at a time, waiting for allocations in flight on those clusters.
    async fn for_each_cluster(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        op_for: impl Fn(u64, u64) -> Op,
    ) -> Result<()> {
        let g = self.g;
        let mut pos = offset;
        let end = offset + bytes;
        while pos < end {
            let table_span = g.l2_size << g.cluster_bits;
            let chunk_end = end.min((pos / table_span + 1) * table_span);
            self.wait_for_allocs(pos, chunk_end - pos).await;
            let mut meta = self.meta.lock().await;
            if self.allocs_overlap(pos, chunk_end) {
                continue;
            }
            meta.check_writable()?;
            self.mark_dirty(&mut meta).await?;
            let mut p = pos;
            while p < chunk_end {
                let cluster_end = (g.cluster_start(p) + g.cluster_size).min(chunk_end);
                meta.apply(p, op_for(p, cluster_end - p)).await?;
                p = cluster_end;
            }
            pos = chunk_end;
        }
        Ok(())
    }

    fn allocs_overlap(&self, start: u64, end: u64) -> bool {
        let s = self.g.cluster_start(start);
        let e = end.next_multiple_of(self.g.cluster_size);
        self.allocs
            .borrow()
            .iter()
            .any(|a| a.start < e && s < a.end)
    }
}

/// Whether a backing chain reads as zeroes over a range, by block status alone
/// (bdrv_co_is_zero_fast).
async fn backing_reads_zero(backing: &BlockDriverState, offset: u64, bytes: u64) -> Result<bool> {
    let mut done = 0;
    while done < bytes {
        let (status, _) = backing
            .co_block_status_above(None, true, offset + done, bytes - done)
            .await?;
        if status.bytes == 0 {
            // Past the end of the backing file: zeroes.
            return Ok(true);
        }
        if !status.flags.contains(block::driver::StatusFlags::ZERO) {
            return Ok(false);
        }
        done += status.bytes;
    }
    Ok(true)
}

impl Meta {
    /// Zeroes subclusters of a guest cluster in a raw data file, which must read as the
    /// guest sees the disk, before the L2 entry says so (qcow2_subcluster_zeroize).
    async fn zero_raw_data_file(
        &self,
        guest: u64,
        first: u32,
        count: u32,
        unmap: bool,
    ) -> Result<()> {
        if !self.data.is_raw() {
            return Ok(());
        }
        let sc = self.g.subcluster_size();
        let start = self.g.cluster_start(guest) + first as u64 * sc;
        let end = (start + count as u64 * sc).min(self.header.size);
        let flags = if unmap {
            RequestFlags::MAY_UNMAP
        } else {
            RequestFlags::empty()
        };
        self.data
            .node(&self.file)?
            .co_pwrite_zeroes(start, end.saturating_sub(start), flags)
            .await
    }

    /// Frees the host cluster of an entry and, once nothing references it, discards it in
    /// the file too (pass-discard-request=on; QEMU's qcow2_process_discards).
    pub(super) async fn free_and_discard(&mut self, entry: u64) -> Result<()> {
        let g = self.g;
        if self.data.is_external() {
            // Nothing to free in the image: the cluster is dropped from the data file.
            let host = entry & L2E_OFFSET_MASK;
            if matches!(
                cluster_type(&g, entry),
                ClusterType::Normal | ClusterType::ZeroAlloc
            ) {
                self.data
                    .node(&self.file)?
                    .co_pdiscard(host, g.cluster_size)
                    .await?;
            }
            return Ok(());
        }
        self.free_any_cluster(entry).await?;
        let host = entry & L2E_OFFSET_MASK;
        if host != 0
            && cluster_type(&g, entry) != ClusterType::Compressed
            && self.get_refcount(host >> g.cluster_bits).await? == 0
        {
            match &mut self.discards {
                Some(queue) => queue.add(host, g.cluster_size),
                None => self.file.co_pdiscard(host, g.cluster_size).await?,
            }
        }
        Ok(())
    }

    /// Sends the discards queued while `discards` was set, and stops queueing
    /// (qcow2_process_discards).
    pub(super) async fn process_discards(&mut self) -> Result<()> {
        let regions = self
            .discards
            .take()
            .map(|mut q| q.take())
            .unwrap_or_default();
        for (offset, bytes) in regions {
            self.file.co_pdiscard(offset, bytes).await?;
        }
        Ok(())
    }

    /// Changes the L2 entry of the cluster at `guest` (zero_in_l2_slice /
    /// discard_in_l2_slice).
    async fn apply(&mut self, guest: u64, op: Op) -> Result<()> {
        let g = self.g;
        if let Op::Discard { .. } | Op::Deallocate = op {
            if self.l2_offset_for(guest).await? == 0 {
                return Ok(());
            }
        }
        let l2 = self.l2_for_write(guest).await?;
        self.caches.load(Which::L2, l2).await?;
        let idx = g.l2_index(guest);
        let (old, old_bitmap) = get_entry(&g, self.caches.table(Which::L2, l2), idx);
        let ctype = cluster_type(&g, old);
        let allocated = !matches!(ctype, ClusterType::Unallocated | ClusterType::ZeroPlain);
        let (new, new_bitmap, free) = match op {
            Op::Discard { has_backing } => {
                if has_backing || allocated {
                    if g.extended {
                        (0, BITMAP_ALL_ZEROES, allocated)
                    } else if g.v3 {
                        (OFLAG_ZERO, 0, allocated)
                    } else {
                        (0, 0, allocated)
                    }
                } else {
                    (0, 0, allocated)
                }
            }
            Op::Deallocate => (0, 0, allocated),
            Op::Zero {
                first,
                count,
                unmap,
                partial,
            } => {
                let now = subcluster_type(&g, old, old_bitmap, first);
                if partial && matches!(now, SubclusterType::Normal | SubclusterType::Compressed) {
                    // Written since it was found to read as zeroes (QEMU's recheck under
                    // s->lock): the caller writes real zeroes instead.
                    return Err(Error::from_errno(libc::ENOTSUP));
                }
                self.zero_raw_data_file(guest, first, count, unmap).await?;
                let whole = count == g.subclusters;
                // Without unmap a host cluster stays preallocated behind the zero flag.
                let keep_host =
                    !unmap && matches!(ctype, ClusterType::Normal | ClusterType::ZeroAlloc);
                if g.extended {
                    if whole && !keep_host {
                        (0, BITMAP_ALL_ZEROES, allocated)
                    } else if ctype == ClusterType::Compressed {
                        return Err(Error::from_errno(libc::ENOTSUP));
                    } else {
                        let mask = sc_mask(first, count);
                        let bitmap = (old_bitmap & !mask & 0xffff_ffff)
                            | (((old_bitmap >> 32) | mask) << 32);
                        (old, bitmap, false)
                    }
                } else if keep_host {
                    (
                        (old & (L2E_OFFSET_MASK | OFLAG_COPIED)) | OFLAG_ZERO,
                        0,
                        false,
                    )
                } else {
                    (OFLAG_ZERO, 0, allocated)
                }
            }
        };
        if (new, new_bitmap) == (old, old_bitmap) {
            // Already as asked (a zero write over a zero cluster): leave the L2 table clean,
            // so that no metadata write follows.
            return Ok(());
        }
        set_entry(&g, self.caches.table(Which::L2, l2), idx, new, new_bitmap);
        self.caches.mark_dirty(Which::L2, l2);
        if free {
            self.free_and_discard(old).await?;
        }
        Ok(())
    }
}
