//! The qcow2 format driver (QEMU's block/qcow2.c and friends; the format is specified in
//! QEMU's docs/interop/qcow2.txt).
//!
//! The modules follow the specification's table of contents:
//! [`header`] (first cluster, extensions, feature bits) → [`l2`] (L1/L2 entries, cluster and
//! subcluster types) → [`mapping`] (guest → host translation) → [`refcount`] (host cluster
//! accounting and allocation) → [`cache`] (L2/refcount-block cache and write ordering) →
//! [`cluster`] (allocating writes, copy-on-write) → [`compress`] (zlib/zstd clusters) →
//! [`zero`] (zero writes and discard) → [`resize`] (truncate) → [`create`] → [`check`].
//! [`data_file`] says where guest data lives: in the image, or in an external data file;
//! [`crypto`] encrypts it (LUKS or the legacy AES).
//! [`state`] holds the image state behind the metadata lock; [`read`] and [`write`] are the
//! request paths built from the pieces above.

pub mod amend;
mod amend_walk;
mod backing_name;
pub mod bitmaps;
pub mod cache;
pub mod check;
pub mod cluster;
pub mod compress;
pub mod create;
pub mod crypto;
pub mod data_file;
mod discards;
pub mod header;
pub mod l2;
pub mod mapping;
pub mod measure;
mod open;
mod read;
pub mod rebuild;
pub mod refcount;
pub mod resize;
mod runtime_opts;
pub mod snapshot;
mod snapshot_ops;
pub mod state;
mod write;
pub mod zero;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use async_trait::async_trait;
use block::coroutine::{CoMutex, CoQueue};
use block::driver::{
    BlockDriver, BlockLimits, BlockStatus, CheckFix, CheckResult, DriverClass, DriverInfo,
    PreallocMode, RequestFlags,
};
use block::snapshot::SnapshotInfo;
use block::{BlockDriverState, Error, IoVector, Options, Result};

use cluster::InflightAlloc;
use data_file::DataFile;
use header::{CompressionType, Header};
use l2::Geometry;
use state::Meta;

/// The class registered as `qcow2`.
pub static QCOW2: DriverClass = DriverClass {
    format_name: "qcow2",
    protocol_name: None,
    is_format: true,
    probe: Some(probe),
    open: |bs, options| Box::pin(open::open(bs, options)),
    create: Some(|filename, options| Box::pin(create::create(filename, options))),
    create_options: &create::CREATE_OPTIONS,
};

/// Scores 100 for the qcow2 magic with a version we know (qcow2_probe).
fn probe(buf: &[u8], _filename: &str) -> u32 {
    if buf.len() >= 8
        && buf[0..4] == header::QCOW_MAGIC.to_be_bytes()
        && u32::from_be_bytes(buf[4..8].try_into().unwrap()) >= 2
    {
        100
    } else {
        0
    }
}

pub(crate) use crate::image_file::{read_bytes, write_bytes};

/// An open qcow2 image.
pub struct Qcow2 {
    /// Metadata, behind the lock that QEMU calls s->lock.
    pub(crate) meta: CoMutex<Meta>,
    /// Sizes and shifts (fixed while open).
    pub(crate) g: Geometry,
    compression_type: CompressionType,
    /// Virtual size.
    size: Cell<u64>,
    /// Guest clusters with an allocation in flight.
    allocs: RefCell<Vec<InflightAlloc>>,
    next_alloc_id: Cell<u64>,
    alloc_done: CoQueue,
    /// Header facts for the synchronous info calls.
    info: RefCell<Header>,
    /// The compatible lazy-refcounts bit is set: the image is marked dirty while written.
    lazy_refcounts: Cell<bool>,
    /// The image was found dirty: its refcounts must be repaired before the first write.
    needs_repair: Cell<bool>,
    /// Serialises that repair.
    repair_lock: CoMutex<()>,
    /// Where guest data lives (the same as `meta.data`, reachable without the lock).
    data: DataFile,
    /// The snapshot list for the synchronous `snapshot_list` (a copy of the one in `meta`).
    snapshot_infos: RefCell<Vec<block::snapshot::SnapshotInfo>>,
    /// Whether the image looks metadata-preallocated, once block status asked.
    metadata_preallocation: Cell<Option<bool>>,
    /// The bitmap directory as last read or written, for `info`.
    bitmap_dir: RefCell<Vec<bitmaps::directory::DirEntry>>,
    /// The encryption of guest data, if any.
    crypto: Option<crypto::Qcow2Crypto>,
}

impl Qcow2 {
    fn file(&self, bs: &BlockDriverState) -> Rc<BlockDriverState> {
        bs.file().expect("format nodes have a file child")
    }

    /// The node guest data is read from and written to (QEMU's s->data_file).
    fn data_child(&self, bs: &BlockDriverState) -> Result<Rc<BlockDriverState>> {
        self.data.node(&self.file(bs))
    }

    /// Sets the dirty bit before the first write of a lazy-refcounts image
    /// (qcow2_mark_dirty).
    pub(crate) async fn mark_dirty(&self, meta: &mut Meta) -> Result<()> {
        if self.lazy_refcounts.get()
            && meta.header.incompatible_features & header::INCOMPAT_DIRTY == 0
        {
            meta.file.co_flush().await?;
            meta.header.incompatible_features |= header::INCOMPAT_DIRTY;
            meta.write_incompatible().await?;
            self.info.borrow_mut().incompatible_features |= header::INCOMPAT_DIRTY;
            meta.caches.drop_l2_refblock_dependency();
        }
        Ok(())
    }

    /// Clears the dirty bit once everything is on disk (qcow2_mark_clean).
    async fn mark_clean(&self, meta: &mut Meta) -> Result<()> {
        if meta.header.incompatible_features & header::INCOMPAT_DIRTY != 0
            && !self.needs_repair.get()
        {
            meta.caches.flush_all().await?;
            meta.file.co_flush().await?;
            meta.header.incompatible_features &= !header::INCOMPAT_DIRTY;
            meta.write_incompatible().await?;
            self.info.borrow_mut().incompatible_features &= !header::INCOMPAT_DIRTY;
        }
        Ok(())
    }

    /// Stores the bitmaps, writes each cache back and marks the image clean only when all
    /// made it (qcow2_inactivate); each failure is reported here. Says whether bitmaps were
    /// lost, and how writing the rest went.
    async fn write_back(&self, bs: &BlockDriverState) -> (bool, Result<()>) {
        if bs.is_read_only() {
            return (false, Ok(()));
        }
        let mut meta = self.meta.lock().await;
        let stored = self.store_persistent_dirty_bitmaps(bs, &mut meta).await;
        if let Err(e) = &stored {
            block::error::error_report(&format!(
                "Lost persistent bitmaps during inactivation of node '{}': {e}",
                bs.node_name()
            ));
        }
        let mut result = Ok(());
        for (which, name) in [
            (cache::Which::L2, "L2 table"),
            (cache::Which::Refblock, "refcount block"),
        ] {
            let flushed = match meta.caches.flush(which).await {
                Ok(()) => meta.file.co_flush().await,
                Err(e) => Err(e),
            };
            if let Err(e) = flushed {
                block::error::error_report(&format!("Failed to flush the {name} cache: {e}"));
                result = Err(e);
            }
        }
        if result.is_ok() && stored.is_ok() {
            result = self.mark_clean(&mut meta).await;
        }
        (stored.is_err(), result)
    }

    /// Rewrites the backing file name and the backing-format extension in the header,
    /// keeping every other extension (qcow2_change_backing_file).
    async fn change_backing_file(&self, file: Option<&str>, fmt: Option<&str>) -> Result<()> {
        if file.is_some_and(|f| f.len() > header::MAX_BACKING_NAME as usize) {
            return Err(Error::from_errno(libc::EINVAL));
        }
        // A format without a file means nothing (QEMU drops it too).
        let fmt = file.and(fmt);
        let mut meta = self.meta.lock().await;
        meta.check_writable()?;
        let saved = meta.header.clone();
        meta.header.backing_file = file.map(str::to_string);
        meta.header.backing_format = fmt.map(str::to_string);
        if let Err(e) = meta.write_header_for_backing().await {
            meta.header = saved;
            return Err(e);
        }
        meta.file.co_flush().await?;
        let mut info = self.info.borrow_mut();
        info.backing_file = meta.header.backing_file.clone();
        info.backing_format = meta.header.backing_format.clone();
        Ok(())
    }

    /// Repairs an image left dirty by a lazy-refcounts writer before its first write
    /// (QEMU does it at open; a check with repair, run first, makes it unnecessary).
    pub(crate) async fn repair_if_dirty(&self, bs: &BlockDriverState) -> Result<()> {
        if !self.needs_repair.get() {
            return Ok(());
        }
        let _once = self.repair_lock.lock().await;
        if !self.needs_repair.get() {
            return Ok(());
        }
        let fix = CheckFix {
            leaks: true,
            errors: true,
        };
        let result = self
            .check(bs, fix)
            .await
            .map_err(|e| e.context("Could not repair dirty image: "))?;
        if result.corruptions != 0 || result.check_errors != 0 {
            return Err(Error::new(
                libc::EIO,
                "Could not repair dirty image: Input/output error",
            ));
        }
        self.needs_repair.set(false);
        Ok(())
    }
}

#[async_trait(?Send)]
impl BlockDriver for Qcow2 {
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        self.read(bs, offset, qiov).await
    }

    async fn co_pwritev(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        self.repair_if_dirty(bs).await?;
        self.write(bs, offset, qiov, flags).await
    }

    async fn co_pwrite_zeroes(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        self.repair_if_dirty(bs).await?;
        self.pwrite_zeroes(bs, offset, bytes, flags).await
    }

    async fn co_pdiscard(&self, bs: &BlockDriverState, offset: u64, bytes: u64) -> Result<()> {
        self.repair_if_dirty(bs).await?;
        self.pdiscard(bs, offset, bytes).await
    }

    async fn co_flush_to_os(&self, _bs: &BlockDriverState) -> Result<()> {
        let mut meta = self.meta.lock().await;
        meta.flush().await
    }

    async fn co_block_status(
        &self,
        bs: &BlockDriverState,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        self.block_status(bs, offset, bytes).await
    }

    async fn co_truncate(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        exact: bool,
        prealloc: PreallocMode,
    ) -> Result<()> {
        self.repair_if_dirty(bs).await?;
        self.truncate_bitmaps_check(bs)?;
        self.truncate(bs, offset, exact, prealloc).await
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        Ok(self.size.get())
    }

    fn join_options(&self, options: &mut block::Options, old: &block::Options) {
        runtime_opts::join_options(options, old)
    }

    fn refresh_limits(&self, bs: &BlockDriverState) -> BlockLimits {
        let file = bs.file().map(|f| f.limits()).unwrap_or_default();
        // Buffers must suit the data file too (it may be opened with O_DIRECT alone).
        let data = bs
            .child("data-file")
            .map(|f| f.limits())
            .unwrap_or_default();
        BlockLimits {
            // Encrypted data is only ever touched in whole encryption sectors.
            request_alignment: if self.crypto.is_some() { 512 } else { 1 },
            max_transfer: 0,
            pwrite_zeroes_alignment: self.g.subcluster_size() as u32,
            pdiscard_alignment: self.g.cluster_size as u32,
            max_pwrite_zeroes: 0,
            max_pdiscard: 0,
            min_mem_alignment: file.min_mem_alignment.max(data.min_mem_alignment),
        }
    }

    fn supported_write_flags(&self) -> RequestFlags {
        RequestFlags::WRITE_COMPRESSED
    }

    fn get_info(&self, _bs: &BlockDriverState) -> Result<DriverInfo> {
        let h = self.info.borrow();
        Ok(DriverInfo {
            cluster_size: self.g.cluster_size,
            subcluster_size: self.g.subcluster_size(),
            vm_state_offset: self.vm_state_offset(),
            is_dirty: h.incompatible_features & header::INCOMPAT_DIRTY != 0,
            ..DriverInfo::default()
        })
    }

    fn get_specific_info(&self, _bs: &BlockDriverState) -> Option<serde_json::Value> {
        let h = self.info.borrow();
        let data = if h.version == 2 {
            serde_json::json!({
                "compat": "0.10",
                "compression-type": h.compression_type.name(),
                "refcount-bits": h.refcount_bits(),
            })
        } else {
            let mut data = serde_json::json!({
                "compat": "1.1",
                "compression-type": h.compression_type.name(),
                "lazy-refcounts": h.compatible_features & header::COMPAT_LAZY_REFCOUNTS != 0,
            });
            let dir = self.bitmap_dir.borrow();
            if !dir.is_empty() {
                data["bitmaps"] = bitmaps::info_list(&dir);
            }
            data.as_object_mut().unwrap().extend(
                serde_json::json!({
                    "refcount-bits": h.refcount_bits(),
                    "corrupt": h.incompatible_features & header::INCOMPAT_CORRUPT != 0,
                    "extended-l2": h.extended_l2(),
                })
                .as_object()
                .unwrap()
                .clone(),
            );
            if let Some(name) = &h.data_file {
                data["data-file"] = serde_json::json!(name);
            }
            if self.data.is_external() {
                data["data-file-raw"] = serde_json::json!(self.data.is_raw());
            }
            data
        };
        let mut data = data;
        if let Some(crypto) = &self.crypto {
            crypto::insert_info(&mut data, crypto.info());
        }
        Some(serde_json::json!({"type": "qcow2", "data": data}))
    }

    fn backing_file_name(&self, _bs: &BlockDriverState) -> Option<(String, Option<String>)> {
        let h = self.info.borrow();
        h.backing_file
            .clone()
            .map(|name| (name, h.backing_format.clone()))
    }

    async fn co_change_backing_file(
        &self,
        _bs: &BlockDriverState,
        backing_file: Option<&str>,
        backing_fmt: Option<&str>,
    ) -> Result<()> {
        self.change_backing_file(backing_file, backing_fmt).await
    }

    async fn co_make_empty(&self, bs: &BlockDriverState) -> Result<()> {
        self.repair_if_dirty(bs).await?;
        self.make_empty(bs).await
    }

    async fn co_amend(
        &self,
        bs: &BlockDriverState,
        options: &mut Options,
        force: bool,
        status: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        self.amend(bs, options, force, status).await
    }

    async fn co_check(&self, bs: &BlockDriverState, fix: CheckFix) -> Result<CheckResult> {
        self.check(bs, fix).await
    }

    fn snapshot_list(&self, _bs: &BlockDriverState) -> Result<Vec<SnapshotInfo>> {
        Ok(self.list_snapshots())
    }

    async fn co_snapshot_create(&self, bs: &BlockDriverState, sn: &SnapshotInfo) -> Result<()> {
        self.snapshot_create(bs, sn).await
    }

    async fn co_snapshot_goto(&self, bs: &BlockDriverState, id_or_name: &str) -> Result<()> {
        self.snapshot_goto(bs, id_or_name).await
    }

    async fn co_snapshot_delete(
        &self,
        bs: &BlockDriverState,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<()> {
        self.snapshot_delete(bs, id, name).await
    }

    async fn co_snapshot_load_tmp(
        &self,
        _bs: &BlockDriverState,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<()> {
        self.snapshot_load_tmp(id, name).await
    }

    async fn co_save_vmstate(
        &self,
        bs: &BlockDriverState,
        qiov: &IoVector,
        pos: u64,
    ) -> Result<()> {
        self.save_vmstate(bs, qiov, pos).await
    }

    async fn co_load_vmstate(
        &self,
        bs: &BlockDriverState,
        qiov: &IoVector,
        pos: u64,
    ) -> Result<()> {
        self.load_vmstate(bs, qiov, pos).await
    }

    /// Preallocated encrypted clusters hold zeroes that decrypt to noise
    /// (qcow2_has_zero_init).
    fn has_zero_init(&self, _bs: &BlockDriverState) -> bool {
        self.crypto.is_none() || self.info.borrow().l1_size == 0
    }

    fn is_encrypted(&self) -> bool {
        self.crypto.is_some()
    }

    async fn close(&self, bs: &BlockDriverState) -> Result<()> {
        if bs.is_inactive() {
            return Ok(());
        }
        // As in QEMU, lost bitmaps keep the image from being marked clean but do not make
        // closing fail.
        self.write_back(bs).await.1
    }

    async fn inactivate(&self, bs: &BlockDriverState) -> Result<()> {
        let (bitmaps_lost, written) = self.write_back(bs).await;
        written?;
        if bitmaps_lost {
            return Err(Error::from_errno(libc::EINVAL));
        }
        Ok(())
    }

    fn supports_persistent_dirty_bitmap(&self, _bs: &BlockDriverState) -> bool {
        self.info.borrow().version >= 3
    }

    async fn co_can_store_new_dirty_bitmap(
        &self,
        bs: &BlockDriverState,
        name: &str,
        granularity: u32,
    ) -> Result<()> {
        self.can_store_new_dirty_bitmap(bs, name, granularity).await
    }

    async fn co_remove_persistent_dirty_bitmap(
        &self,
        _bs: &BlockDriverState,
        name: &str,
    ) -> Result<()> {
        self.remove_persistent_dirty_bitmap(name).await
    }

    async fn reopen_prepare(
        &self,
        bs: &BlockDriverState,
        opts: &mut Options,
        flags: block::OpenFlags,
    ) -> Option<Result<Box<dyn std::any::Any>>> {
        Some(open::reopen_prepare(self, bs, opts, flags).await)
    }

    async fn reopen_commit(&self, bs: &BlockDriverState, staged: Box<dyn std::any::Any>) {
        open::reopen_commit(self, bs, staged).await;
    }

    fn mutable_opts(&self) -> &'static [&'static str] {
        runtime_opts::MUTABLE_OPTS
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
