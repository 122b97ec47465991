//! The in-memory state of an open image that the metadata lock protects: header, active L1
//! table, refcount table and the table caches (QEMU's BDRVQcow2State, loaded by
//! qcow2_do_open in block/qcow2.c).
//!
//! Every function here runs with the metadata lock held (it takes `&mut Meta`), so metadata
//! I/O never interleaves with another request's metadata update; guest data I/O happens
//! outside the lock.

use std::rc::Rc;

use block::{BlockDriverState, Error, Result};

use super::cache::Caches;
use super::data_file::DataFile;
use super::header::{self, Header};
use super::l2::{Geometry, L1E_OFFSET_MASK};
use super::refcount::REFT_OFFSET_MASK;
use super::runtime_opts::CacheSizes;
use super::snapshot::{read_snapshots, Snapshot};
use super::{read_bytes, write_bytes};

/// Metadata of an open image.
pub struct Meta {
    /// The image's container.
    pub file: Rc<BlockDriverState>,
    /// Sizes and shifts.
    pub g: Geometry,
    /// The header as last written.
    pub header: Header,
    /// The active L1 table.
    pub l1: Vec<u64>,
    /// The refcount table (changed only through [`Meta::set_reftable`] and
    /// [`Meta::set_reftable_entry`], which keep `reftable_end` right).
    pub reftable: Vec<u64>,
    /// One past the last non-zero refcount table entry: the overlap check, run on every
    /// write, scans no further (QEMU's max_refcount_table_index).
    reftable_end: usize,
    /// L2 and refcount-block caches.
    pub caches: Caches,
    /// No cluster below this index is free (allocation scan hint).
    pub free_cluster_index: u64,
    /// Where the next compressed cluster may be packed, right after the last one; 0 when
    /// a fresh host cluster is needed (QEMU's free_byte_offset).
    pub free_byte_offset: u64,
    /// Set once a corruption was found; writes are refused from then on.
    pub corrupt: bool,
    /// Whether the image is open read-write.
    pub writable: bool,
    /// A corruption was reported already; later ones are not (signaled_corruption).
    pub signaled_corruption: bool,
    /// Where guest data lives: decides how data clusters are allocated and freed.
    pub data: DataFile,
    /// The internal snapshots, as the snapshot table on disk lists them.
    pub snapshots: Vec<Snapshot>,
    /// Bytes the snapshot table on disk occupies.
    pub snapshots_size: u64,
    /// While set, freed clusters are queued here instead of discarded one by one
    /// (cache_discards); whoever set it sends them with [`Meta::process_discards`].
    pub discards: Option<super::discards::DiscardQueue>,
}

/// Largest L1 or refcount table whose entries the overlap check scans.
const MAX_SCANNED_ENTRIES: usize = 1 << 16;

/// A number as C's `%#x` prints it: "0" for zero, "0x..." otherwise (QEMU's messages).
pub fn c_hex(v: u64) -> String {
    if v == 0 {
        "0".to_string()
    } else {
        format!("{v:#x}")
    }
}

/// Entries of a table of 64-bit big-endian values.
pub fn decode_table(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

/// Bytes of a table of 64-bit big-endian values.
pub fn encode_table(entries: &[u64]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_be_bytes()).collect()
}

/// Cache capacity in tables: QEMU's default of 32 MiB of L2, or enough to map the whole disk.
fn l2_cache_tables(g: &Geometry, size: u64) -> usize {
    let bytes_per_table = g.l2_size << g.cluster_bits;
    let whole_disk = size.div_ceil(bytes_per_table).max(1);
    let budget = (32u64 << 20) / g.cluster_size;
    whole_disk.min(budget).max(4) as usize
}

impl Meta {
    /// Loads the tables a header points to.
    pub async fn load(
        file: Rc<BlockDriverState>,
        header: Header,
        writable: bool,
        sizes: CacheSizes,
    ) -> Result<Meta> {
        let g = Geometry::new(&header);
        let l1_bytes = read_bytes(&file, header.l1_table_offset, header.l1_size as usize * 8)
            .await
            .map_err(|e| e.context("Could not read L1 table: "))?;
        file.debug_event(block::BlkdbgEvent::ReftableLoad).await;
        let reftable_bytes = read_bytes(
            &file,
            header.refcount_table_offset,
            (header.refcount_table_clusters as u64 * g.cluster_size) as usize,
        )
        .await
        .map_err(|e| e.context("Could not read refcount table: "))?;
        let l2_tables = sizes
            .l2_tables
            .unwrap_or_else(|| l2_cache_tables(&g, header.size));
        let refblocks = sizes.refblocks.unwrap_or(8);
        let caches = Caches::new(file.clone(), g.cluster_size as usize, l2_tables, refblocks);
        let (snapshots, snapshots_size) = read_snapshots(&file, &header).await?;
        let mut meta = Meta {
            file,
            g,
            corrupt: header.incompatible_features & header::INCOMPAT_CORRUPT != 0,
            header,
            l1: decode_table(&l1_bytes),
            reftable: Vec::new(),
            reftable_end: 0,
            caches,
            free_cluster_index: 0,
            free_byte_offset: 0,
            writable,
            signaled_corruption: false,
            data: DataFile::Internal,
            snapshots,
            snapshots_size,
            discards: None,
        };
        meta.set_reftable(decode_table(&reftable_bytes));
        Ok(meta)
    }

    /// Replaces the in-memory refcount table (after loading, growing or rebuilding it).
    pub fn set_reftable(&mut self, table: Vec<u64>) {
        self.reftable_end = table.iter().rposition(|&e| e != 0).map_or(0, |i| i + 1);
        self.reftable = table;
    }

    /// Sets one in-memory refcount table entry (a new refcount block).
    pub fn set_reftable_entry(&mut self, idx: usize, entry: u64) {
        self.reftable[idx] = entry;
        if entry != 0 {
            self.reftable_end = self.reftable_end.max(idx + 1);
        }
    }

    /// Writes the whole first cluster from `self.header` (qcow2_update_header).
    pub async fn write_header(&mut self) -> Result<()> {
        let bytes = self.header.serialise()?;
        write_bytes(&self.file, 0, &bytes).await
    }

    /// Writes only the incompatible feature field (setting dirty or corrupt).
    pub async fn write_incompatible(&mut self) -> Result<()> {
        if !self.g.v3 {
            return Ok(());
        }
        let bits = self.header.incompatible_features.to_be_bytes();
        write_bytes(&self.file, 72, &bits).await?;
        self.file.co_flush().await
    }

    /// Records a corruption the way qcow2_signal_corruption does: report it (once), set the
    /// corrupt bit on disk (best effort) and refuse further writes. Returns the error to
    /// fail with.
    pub async fn signal_corruption(&mut self, what: String) -> Error {
        let fatal = self.writable;
        let already_marked = self.header.incompatible_features & header::INCOMPAT_CORRUPT != 0;
        if !(self.signaled_corruption && (!fatal || already_marked)) {
            if fatal {
                eprintln!(
                    "qcow2: Marking image as corrupt: {what}; further corruption events will be suppressed"
                );
                self.header.incompatible_features |= header::INCOMPAT_CORRUPT;
                let _ = self.write_incompatible().await;
            } else {
                self.report_nonfatal(&what);
            }
            self.signaled_corruption = true;
        }
        self.corrupt = true;
        Error::from_errno(libc::EIO)
    }

    /// Reports a corruption that the operation can work around (QEMU's non-fatal
    /// qcow2_signal_corruption).
    pub fn signal_nonfatal_corruption(&mut self, what: &str) {
        if !self.signaled_corruption {
            self.report_nonfatal(what);
            self.signaled_corruption = true;
        }
    }

    fn report_nonfatal(&self, what: &str) {
        eprintln!(
            "qcow2: Image is corrupt: {what}; further non-fatal corruption events will be suppressed"
        );
    }

    /// Fails writes to an image known to be corrupt.
    pub fn check_writable(&self) -> Result<()> {
        if self.corrupt {
            return Err(Error::from_errno(libc::EIO));
        }
        Ok(())
    }

    /// The L2 table offset for a guest offset, validated; 0 when none is allocated.
    pub async fn l2_offset_for(&mut self, guest: u64) -> Result<u64> {
        let idx = self.g.l1_index(guest);
        let Some(&entry) = self.l1.get(idx as usize) else {
            return Ok(0);
        };
        let l2 = entry & L1E_OFFSET_MASK;
        if l2 & (self.g.cluster_size - 1) != 0 {
            return Err(self
                .signal_corruption(format!(
                    "L2 table offset {} unaligned (L1 index: {})",
                    c_hex(l2),
                    c_hex(idx)
                ))
                .await);
        }
        Ok(l2)
    }

    /// Writes L1 entries `first..first+count` to disk (qcow2_write_l1_entry).
    pub async fn write_l1(&mut self, first: usize, count: usize) -> Result<()> {
        let bytes = encode_table(&self.l1[first..first + count]);
        self.check_metadata_write(
            self.header.l1_table_offset + first as u64 * 8,
            bytes.len() as u64,
        )?;
        self.file.debug_event(block::BlkdbgEvent::L1Update).await;
        write_bytes(
            &self.file,
            self.header.l1_table_offset + first as u64 * 8,
            &bytes,
        )
        .await
    }

    /// Refuses a metadata write that would land on the header (a last line of defence
    /// against corrupt pointers; QEMU's overlap check does this for every structure).
    pub fn check_metadata_write(&self, offset: u64, _len: u64) -> Result<()> {
        if offset < self.g.cluster_size {
            return Err(Error::new(
                libc::EIO,
                "Preventing invalid write on metadata (overlaps with qcow2_header)",
            ));
        }
        Ok(())
    }

    /// Refuses a guest data write that would overwrite metadata: the header, the active L1
    /// table, the refcount table, a refcount block or an active L2 table (QEMU's
    /// qcow2_check_metadata_overlap with the "cached" checks). Such a write can only come
    /// from corrupt L2 entries.
    pub async fn check_data_write(&mut self, offset: u64, len: u64) -> Result<()> {
        if self.data.is_external() {
            // Guest data goes to the data file, where no metadata lives.
            return Ok(());
        }
        let what = self.overlap(offset, len, true);
        match what {
            Some(w) => Err(self
                .signal_corruption(format!(
                    "Preventing invalid write on metadata (overlaps with {w})"
                ))
                .await),
            None => Ok(()),
        }
    }

    /// Which metadata structure `offset..offset+len` overlaps, if any (active L2 tables
    /// only when `with_l2`; QEMU's qcow2_check_metadata_overlap, "cached" level, which
    /// includes the snapshot table and the snapshots' L1 tables).
    pub fn overlap(&self, offset: u64, len: u64, with_l2: bool) -> Option<&'static str> {
        let cs = self.g.cluster_size;
        let hit = |start: u64, size: u64| start < offset + len && offset < start + size;
        // Scanning a huge table on every write would cost more than the check is worth;
        // the constant structures (header, L1, refcount table) are always checked.
        let in_table = |table: &[u64], mask: u64| {
            table.len() <= MAX_SCANNED_ENTRIES
                && table.iter().any(|&e| e & mask != 0 && hit(e & mask, cs))
        };
        if hit(0, cs) {
            Some("qcow2_header")
        } else if hit(self.header.l1_table_offset, self.l1.len() as u64 * 8) {
            Some("active L1 table")
        } else if hit(
            self.header.refcount_table_offset,
            self.header.refcount_table_clusters as u64 * cs,
        ) {
            Some("refcount table")
        } else if in_table(&self.reftable[..self.reftable_end], REFT_OFFSET_MASK) {
            Some("refcount block")
        } else if with_l2 && in_table(&self.l1, L1E_OFFSET_MASK) {
            Some("active L2 table")
        } else if self.snapshots_size != 0 && hit(self.header.snapshots_offset, self.snapshots_size)
        {
            Some("snapshot table")
        } else if self.snapshots.len() <= MAX_SCANNED_ENTRIES
            && self
                .snapshots
                .iter()
                .any(|sn| sn.l1_size != 0 && hit(sn.l1_table_offset, sn.l1_size as u64 * 8))
        {
            Some("inactive L1 table")
        } else {
            None
        }
    }

    /// Whether refcounts on disk must be kept exact: not while a lazy-refcounts image is
    /// marked dirty (qcow2_need_accurate_refcounts).
    pub fn accurate_refcounts(&self) -> bool {
        self.header.incompatible_features & header::INCOMPAT_DIRTY == 0
    }

    /// Writes the caches back (qcow2_write_caches): refcount blocks only when refcounts must
    /// be accurate.
    pub async fn flush(&mut self) -> Result<()> {
        if self.accurate_refcounts() {
            self.caches.flush_all().await
        } else {
            self.caches.flush(super::cache::Which::L2).await
        }
    }
}
