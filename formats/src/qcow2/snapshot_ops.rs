//! Taking, applying, deleting and temporarily loading internal snapshots, and the VM state
//! area (QEMU's qcow2_snapshot_create/goto/delete/load_tmp and
//! qcow2_update_snapshot_refcount in block/qcow2-snapshot.c and qcow2-refcount.c,
//! qcow2_save_vmstate/qcow2_load_vmstate in block/qcow2.c).
//!
//! A snapshot is a copy of the active L1 table. Every cluster reachable from an L1 table
//! counts one reference per L1 table that reaches it — an L2 table shared by two L1 tables
//! has refcount 2, and so has each data cluster it maps. Taking a snapshot therefore adds one
//! to every cluster the active table reaches; since none of them then has refcount 1, the
//! "copied" flags go, and the next guest write to any of them copies it first
//! (see [`super::cluster`]). Refcounts go up before a new reference is made live and down
//! only after an old one is gone, so a crash leaks clusters at worst.

use block::snapshot::SnapshotInfo;
use block::{BlockDriverState, Error, IoVector, RequestFlags, Result};

use super::cache::Which;
use super::header::l1_entries_for;
use super::l2::{
    cluster_type, get_entry, set_entry, ClusterType, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED,
};
use super::snapshot::{validate_l1, Snapshot};
use super::state::{c_hex, decode_table, encode_table, Meta};
use super::{read_bytes, write_bytes, Qcow2};

/// Whether a snapshot matches the id and/or name asked for (find_snapshot_by_id_and_name).
fn matches(sn: &Snapshot, id: Option<&str>, name: Option<&str>) -> bool {
    id.is_none_or(|id| sn.id_str == id) && name.is_none_or(|n| sn.name == n)
}

impl Meta {
    /// Index of the snapshot with this id, else of the first with this name
    /// (find_snapshot_by_id_or_name).
    fn find_snapshot(&self, id_or_name: &str) -> Option<usize> {
        let by_id = self.snapshots.iter().position(|s| s.id_str == id_or_name);
        by_id.or_else(|| self.snapshots.iter().position(|s| s.name == id_or_name))
    }

    /// Reads a snapshot's L1 table after validating where it lies.
    pub(super) async fn read_snapshot_l1(&self, sn: &Snapshot) -> Result<Vec<u64>> {
        validate_l1(sn, self.g.cluster_size, self.file.getlength())?;
        let bytes = read_bytes(&self.file, sn.l1_table_offset, sn.l1_size as usize * 8).await?;
        Ok(decode_table(&bytes))
    }

    /// Adds `addend` (+1, -1 or 0) to the refcount of every L2 table and data cluster `l1`
    /// reaches, and sets the "copied" flags in the L2 tables and in `l1` to match the new
    /// counts (qcow2_update_snapshot_refcount), and flushes them. Returns whether `l1`
    /// changed; writing it is the caller's business.
    async fn update_l1_refcounts(&mut self, l1: &mut [u64], addend: i64) -> Result<bool> {
        let cs = self.g.cluster_size;
        let mut l1_changed = false;
        for (i, entry) in l1.iter_mut().enumerate() {
            let l2 = *entry & L1E_OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if !l2.is_multiple_of(cs) {
                return Err(self
                    .signal_corruption(format!(
                        "L2 table offset {} unaligned (L1 index: {})",
                        c_hex(l2),
                        c_hex(i as u64)
                    ))
                    .await);
            }
            self.update_l2_refcounts(l2, addend).await?;
            if addend != 0 {
                self.update_refcount(l2, cs, addend).await?;
            }
            let refcount = self.get_refcount(l2 >> self.g.cluster_bits).await?;
            let new = if refcount == 1 {
                *entry | OFLAG_COPIED
            } else {
                *entry & !OFLAG_COPIED
            };
            l1_changed |= new != *entry;
            *entry = new;
        }
        // The counts and L2 flags reach the disk before the caller writes an L1 whose
        // flags depend on them (the bdrv_flush before the L1 write): else a crash can
        // leave an L1 entry without "copied" over a table whose count is still 1.
        self.flush().await?;
        self.file.co_flush().await?;
        Ok(l1_changed)
    }

    /// The L2 part of [`Meta::update_l1_refcounts`] for one table.
    async fn update_l2_refcounts(&mut self, l2: u64, addend: i64) -> Result<()> {
        let g = self.g;
        if addend != 0 {
            // Counts go to disk before the flags that depend on them.
            self.caches
                .set_dependency(Which::L2, Which::Refblock)
                .await?;
        }
        for j in 0..g.l2_size as usize {
            self.caches.load(Which::L2, l2).await?;
            let (e, bitmap) = get_entry(&g, self.caches.table(Which::L2, l2), j);
            let refcount = match cluster_type(&g, e) {
                ClusterType::Compressed => {
                    if addend != 0 {
                        let (offset, len) = g.compressed_range(e);
                        self.check_refcount_covered(offset + len - 1).await?;
                        self.update_refcount(offset, len, addend).await?;
                    }
                    // Compressed clusters are never written in place.
                    2
                }
                ClusterType::Normal | ClusterType::ZeroAlloc => {
                    let host = e & L2E_OFFSET_MASK;
                    if !host.is_multiple_of(g.cluster_size) {
                        return Err(self
                            .signal_corruption(format!(
                                "Cluster allocation offset {} unaligned (L2 offset: {}, L2 index: {})",
                                c_hex(host),
                                c_hex(l2),
                                c_hex(j as u64)
                            ))
                            .await);
                    }
                    if addend != 0 {
                        self.check_refcount_covered(host).await?;
                        self.update_refcount(host, g.cluster_size, addend).await?;
                    }
                    self.get_refcount(host >> g.cluster_bits).await?
                }
                ClusterType::Unallocated | ClusterType::ZeroPlain => 0,
            };
            let new = if refcount == 1 {
                e | OFLAG_COPIED
            } else {
                e & !OFLAG_COPIED
            };
            if new != e {
                self.caches.load(Which::L2, l2).await?;
                set_entry(&g, self.caches.table(Which::L2, l2), j, new, bitmap);
                self.caches.mark_dirty(Which::L2, l2);
            }
        }
        Ok(())
    }

    /// Refuses to count a reference to a cluster without a refcount block: only a corrupt
    /// L2 entry points there.
    async fn check_refcount_covered(&mut self, host: u64) -> Result<()> {
        let idx = host >> (self.g.cluster_bits + self.g.refblock_bits);
        if idx as usize >= self.reftable.len() {
            // QEMU's errno tells whether the table could have grown that far.
            let errno = if (idx + 1) * 8 > super::header::MAX_REFTABLE_BYTES {
                libc::EFBIG
            } else {
                libc::EAGAIN
            };
            return Err(Error::new(
                errno,
                format!("Cluster {} lies past the refcount table", c_hex(host)),
            ));
        }
        if self.reftable[idx as usize] & super::refcount::REFT_OFFSET_MASK == 0 {
            // A cluster in use always has a refcount block (QEMU fails with EAGAIN here).
            return Err(Error::new(
                libc::EAGAIN,
                format!("Cluster {} has no refcount block", c_hex(host)),
            ));
        }
        Ok(())
    }

    /// Writes the whole active L1 table from memory and flushes it.
    async fn write_active_l1(&mut self) -> Result<()> {
        let len = self.l1.len();
        self.write_l1(0, len).await?;
        self.file.co_flush().await
    }

    /// The next free numeric id (find_new_snapshot_id).
    fn new_snapshot_id(&self) -> String {
        let max = self
            .snapshots
            .iter()
            .filter_map(|s| s.id_str.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        (max + 1).to_string()
    }

    /// Takes a snapshot of the active state (qcow2_snapshot_create).
    async fn snapshot_create(&mut self, info: &SnapshotInfo, disk_size: u64) -> Result<()> {
        if self.snapshots.len() >= super::header::MAX_SNAPSHOTS as usize {
            return Err(Error::new(libc::EFBIG, "Too many snapshots"));
        }
        let id_str = match info.id_str.as_str() {
            "" => self.new_snapshot_id(),
            id if self.snapshots.iter().any(|s| s.id_str == id) => {
                return Err(Error::from_errno(libc::EEXIST))
            }
            id => id.to_string(),
        };
        self.caches.flush_all().await?;
        // The copy carries no "copied" flags: nothing is ever written through it.
        let copy: Vec<u64> = self.l1.iter().map(|e| e & !OFLAG_COPIED).collect();
        let cs = self.g.cluster_size;
        let l1_bytes = copy.len() as u64 * 8;
        let l1_table_offset = if copy.is_empty() {
            0
        } else {
            let offset = self.alloc_clusters(l1_bytes.div_ceil(cs)).await?;
            self.check_metadata_alloc(offset, l1_bytes, "snapshot L1 table")
                .await?;
            write_bytes(&self.file, offset, &encode_table(&copy)).await?;
            offset
        };
        let mut active = std::mem::take(&mut self.l1);
        let counted = self.update_l1_refcounts(&mut active, 1).await;
        self.l1 = active;
        counted?;
        self.write_active_l1().await?;
        self.snapshots.push(Snapshot {
            l1_table_offset,
            l1_size: copy.len() as u32,
            id_str,
            name: info.name.clone(),
            date_sec: info.date_sec,
            date_nsec: info.date_nsec,
            vm_clock_nsec: info.vm_clock_nsec,
            vm_state_size: info.vm_state_size,
            disk_size,
            icount: info.icount,
            unknown_extra: Vec::new(),
        });
        if let Err(e) = self.write_snapshots().await {
            // Undo (best effort: what cannot be undone is a leak, never a loss).
            self.snapshots.pop();
            let mut active = std::mem::take(&mut self.l1);
            let _ = self.update_l1_refcounts(&mut active, -1).await;
            self.l1 = active;
            let _ = self.write_active_l1().await;
            let _ = self.free_clusters(l1_table_offset, l1_bytes).await;
            return Err(e);
        }
        self.flush().await
    }

    /// Replaces the active state by a copy of snapshot `index` (qcow2_snapshot_goto).
    async fn snapshot_goto(&mut self, index: usize) -> Result<u64> {
        let sn = self.snapshots[index].clone();
        let sn_l1 = self.read_snapshot_l1(&sn).await?;
        let needed = (sn.l1_size as u64).max(l1_entries_for(
            sn.disk_size,
            self.g.cluster_bits,
            self.g.extended,
        ));
        self.grow_l1(needed).await?;
        self.caches.flush_all().await?;
        let mut new_l1 = vec![0u64; self.l1.len()];
        for (dst, src) in new_l1.iter_mut().zip(&sn_l1) {
            *dst = src & !OFLAG_COPIED;
        }
        // Count the snapshot's references first, then switch, then drop the old ones.
        let mut counted = new_l1.clone();
        self.update_l1_refcounts(&mut counted, 1).await?;
        self.caches.flush_all().await?;
        let offset = self.header.l1_table_offset;
        self.check_metadata_write(offset, new_l1.len() as u64 * 8)?;
        write_bytes(&self.file, offset, &encode_table(&new_l1)).await?;
        self.file.co_flush().await?;
        let mut old = std::mem::replace(&mut self.l1, new_l1);
        self.update_l1_refcounts(&mut old, -1).await?;
        let mut active = std::mem::take(&mut self.l1);
        let changed = self.update_l1_refcounts(&mut active, 0).await;
        self.l1 = active;
        if changed? {
            self.write_active_l1().await?;
        }
        self.flush().await?;
        if sn.disk_size != self.header.size {
            self.set_size(sn.disk_size).await?;
        }
        Ok(sn.disk_size)
    }

    /// Deletes snapshot `index` and drops its references (qcow2_snapshot_delete).
    async fn snapshot_delete(&mut self, index: usize) -> Result<()> {
        let sn = self.snapshots[index].clone();
        let mut sn_l1 = self.read_snapshot_l1(&sn).await?;
        self.snapshots.remove(index);
        if let Err(e) = self.write_snapshots().await {
            self.snapshots.insert(index, sn);
            return Err(e);
        }
        // The snapshot is gone from the table: its references can go.
        self.update_l1_refcounts(&mut sn_l1, -1)
            .await
            .map_err(|e| {
                Error::with_errno_message(e.errno(), "Failed to free the cluster and L1 table")
            })?;
        let l1_bytes = sn.l1_size as u64 * 8;
        if let Err(e) = self.free_clusters(sn.l1_table_offset, l1_bytes).await {
            eprintln!(
                "qcow2_free_clusters failed: {}",
                block::error::strerror(e.errno())
            );
        }
        let mut active = std::mem::take(&mut self.l1);
        let changed = self.update_l1_refcounts(&mut active, 0).await;
        self.l1 = active;
        let changed = changed.map_err(|e| {
            Error::with_errno_message(e.errno(), "Failed to update snapshot status in disk")
        })?;
        if changed {
            self.write_active_l1().await?;
        }
        self.flush().await
    }
}

impl Qcow2 {
    /// The snapshot list in the generic form (qcow2_snapshot_list).
    pub(super) fn list_snapshots(&self) -> Vec<SnapshotInfo> {
        self.snapshot_infos.borrow().clone()
    }

    /// Refreshes the copy of the list the synchronous callers read.
    pub(super) fn publish_snapshots(&self, meta: &Meta) {
        let list = meta
            .snapshots
            .iter()
            .map(|s| SnapshotInfo {
                id_str: s.id_str.clone(),
                name: s.name.clone(),
                vm_state_size: s.vm_state_size,
                date_sec: s.date_sec,
                date_nsec: s.date_nsec,
                vm_clock_nsec: s.vm_clock_nsec,
                icount: s.icount,
            })
            .collect();
        *self.snapshot_infos.borrow_mut() = list;
    }

    /// Takes a snapshot.
    pub(super) async fn snapshot_create(
        &self,
        bs: &BlockDriverState,
        sn: &SnapshotInfo,
    ) -> Result<()> {
        // A snapshot could not preserve guest data living in an external data file.
        if self.data.is_external() {
            return Err(Error::from_errno(libc::ENOTSUP));
        }
        self.repair_if_dirty(bs).await?;
        let mut meta = self.meta.lock().await;
        meta.check_writable()?;
        let result = meta.snapshot_create(sn, self.size.get()).await;
        self.publish_snapshots(&meta);
        self.info.borrow_mut().nb_snapshots = meta.header.nb_snapshots;
        result
    }

    /// Applies the snapshot with this id, else this name.
    pub(super) async fn snapshot_goto(
        &self,
        bs: &BlockDriverState,
        id_or_name: &str,
    ) -> Result<()> {
        self.repair_if_dirty(bs).await?;
        let mut meta = self.meta.lock().await;
        meta.check_writable()?;
        let index = meta
            .find_snapshot(id_or_name)
            .ok_or_else(|| Error::from_errno(libc::ENOENT))?;
        let size = meta.snapshot_goto(index).await?;
        self.size.set(size);
        self.info.borrow_mut().size = size;
        Ok(())
    }

    /// Deletes the snapshot matching `id` and/or `name`.
    pub(super) async fn snapshot_delete(
        &self,
        bs: &BlockDriverState,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<()> {
        self.repair_if_dirty(bs).await?;
        let mut meta = self.meta.lock().await;
        meta.check_writable()?;
        let Some(index) = meta.snapshots.iter().position(|s| matches(s, id, name)) else {
            return Err(Error::new(libc::ENOENT, "Can't find the snapshot"));
        };
        let result = meta.snapshot_delete(index).await;
        self.publish_snapshots(&meta);
        self.info.borrow_mut().nb_snapshots = meta.header.nb_snapshots;
        result
    }

    /// Makes a snapshot's L1 table the one reads go through, for a read-only image
    /// (qcow2_snapshot_load_tmp).
    pub(super) async fn snapshot_load_tmp(
        &self,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<()> {
        let mut meta = self.meta.lock().await;
        if meta.writable {
            return Err(Error::invalid("Device is not readonly"));
        }
        let Some(sn) = meta
            .snapshots
            .iter()
            .find(|s| matches(s, id, name))
            .cloned()
        else {
            return Err(Error::new(libc::ENOENT, "Can't find snapshot"));
        };
        let l1 = meta.read_snapshot_l1(&sn).await?;
        meta.l1 = l1.into_iter().map(|e| e & !OFLAG_COPIED).collect();
        meta.header.l1_size = sn.l1_size;
        meta.header.l1_table_offset = sn.l1_table_offset;
        // The disk size stays the current one, as in QEMU: only the mapping changes.
        Ok(())
    }

    /// Where the VM state area starts: the first L2 table's worth of guest space past the
    /// disk (qcow2_vm_state_offset).
    pub(super) fn vm_state_offset(&self) -> u64 {
        let span = self.g.l2_size << self.g.cluster_bits;
        self.size.get().div_ceil(span) * span
    }

    /// Guest-space offset of VM state byte `pos`, refusing offsets past what qcow2 maps.
    fn vmstate_position(&self, pos: u64, len: usize) -> Result<u64> {
        self.vm_state_offset()
            .checked_add(pos)
            .filter(|&at| {
                at.checked_add(len as u64)
                    .is_some_and(|end| end <= i64::MAX as u64)
            })
            .ok_or_else(|| Error::from_errno(libc::EINVAL))
    }

    /// Writes VM state (qcow2_save_vmstate): an ordinary write past the end of the disk.
    pub(super) async fn save_vmstate(
        &self,
        bs: &BlockDriverState,
        qiov: &IoVector,
        pos: u64,
    ) -> Result<()> {
        let at = self.vmstate_position(pos, qiov.len())?;
        self.repair_if_dirty(bs).await?;
        self.write(bs, at, qiov, RequestFlags::empty()).await
    }

    /// Reads VM state (qcow2_load_vmstate).
    pub(super) async fn load_vmstate(
        &self,
        bs: &BlockDriverState,
        qiov: &IoVector,
        pos: u64,
    ) -> Result<()> {
        let at = self.vmstate_position(pos, qiov.len())?;
        self.read(bs, at, qiov).await
    }
}
