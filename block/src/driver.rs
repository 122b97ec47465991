//! The BlockDriver contract.
//!
//! QEMU's `struct BlockDriver` (include/block/block_int-common.h) is two things at once: a
//! class with static facts and constructors (format name, probe, open, create), and a table of
//! per-node callbacks working on `bs->opaque`. Here they are split the Rust way:
//! [`DriverClass`] is the static class, registered once; [`BlockDriver`] is the trait of the
//! per-node driver state that `open` returns, whose async methods are QEMU's coroutine
//! callbacks (`bdrv_co_preadv`...). A format driver reaches its data only through the node's
//! children (`bs.file()`, `bs.backing()`); a protocol driver is a leaf. The contract knows no
//! driver: they register in [`crate::registry`].

use std::rc::Rc;

use async_trait::async_trait;

use crate::coroutine::LocalBoxFuture;
use crate::debug_event::BlkdbgEvent;

use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::BlockDriverState;
use crate::options::Options;

bitflags::bitflags! {
    /// Per-request flags (QEMU's BdrvRequestFlags).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct RequestFlags: u32 {
        /// Write zeroes instead of a buffer (BDRV_REQ_ZERO_WRITE).
        const ZERO_WRITE = 0x2;
        /// A zero write may deallocate instead of writing (BDRV_REQ_MAY_UNMAP).
        const MAY_UNMAP = 0x4;
        /// The write must be on stable storage when it completes (BDRV_REQ_FUA).
        const FUA = 0x10;
        /// Fail with ENOTSUP rather than emulate the operation slowly (BDRV_REQ_NO_FALLBACK).
        const NO_FALLBACK = 0x100;
        /// Wait for overlapping requests and make later ones wait (BDRV_REQ_SERIALISING).
        const SERIALISING = 0x80;
        /// Store the data compressed; whole clusters only (BDRV_REQ_WRITE_COMPRESSED).
        const WRITE_COMPRESSED = 0x20;
        /// Copy what the read finds unallocated in the node into it (BDRV_REQ_COPY_ON_READ).
        const COPY_ON_READ = 0x1;
    }
}

bitflags::bitflags! {
    /// What a block-status query learned about a range (QEMU's BDRV_BLOCK_*).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct StatusFlags: u32 {
        /// The range holds data (reads may return anything).
        const DATA = 0x01;
        /// The range reads as zeroes.
        const ZERO = 0x02;
        /// `map` is a valid offset in `file`.
        const OFFSET_VALID = 0x04;
        /// The range is allocated in this layer (not inherited from a backing file).
        const ALLOCATED = 0x10;
        /// The range ends at the end of the image.
        const EOF = 0x20;
        /// Ask `file` at `map` whether the range is data or zero (raw-like mappings).
        const RECURSE = 0x40;
        /// The range is stored compressed.
        const COMPRESSED = 0x80;
        /// Data whose host range may be a hole of `file` (QEMU's BDRV_BLOCK_RECURSE, which
        /// qcow2 sets for metadata-preallocated images): ask `file` whether it reads as zeroes.
        const ZERO_FROM_FILE = 0x100;
    }
}

/// Answer of a block-status query: `flags` hold for `bytes` bytes from the query's offset.
#[derive(Clone, Debug)]
pub struct BlockStatus {
    /// What holds for the range.
    pub flags: StatusFlags,
    /// How many bytes from the start of the query the answer covers (> 0 unless at EOF).
    pub bytes: u64,
    /// Offset of the data in `file` when OFFSET_VALID.
    pub map: u64,
    /// The node the data lives in when OFFSET_VALID.
    pub file: Option<std::rc::Rc<BlockDriverState>>,
}

impl BlockStatus {
    /// A status with no mapping.
    pub fn new(flags: StatusFlags, bytes: u64) -> BlockStatus {
        BlockStatus {
            flags,
            bytes,
            map: 0,
            file: None,
        }
    }

    /// A range that lives 1:1 at `map` in `file`, whose own status says whether it is data
    /// or zeroes (raw-like mappings and filters: BDRV_BLOCK_RECURSE).
    pub fn in_file(
        file: Option<std::rc::Rc<BlockDriverState>>,
        map: u64,
        bytes: u64,
    ) -> BlockStatus {
        BlockStatus {
            flags: StatusFlags::RECURSE | StatusFlags::OFFSET_VALID,
            bytes,
            map,
            file,
        }
    }
}

/// Request limits of a node (QEMU's BlockLimits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLimits {
    /// Requests must be aligned to this (1 for buffered files, 512/4096 for O_DIRECT).
    pub request_alignment: u32,
    /// Largest request the driver takes at once (0: no limit).
    pub max_transfer: u64,
    /// Alignment a driver prefers for write-zeroes (0: none).
    pub pwrite_zeroes_alignment: u32,
    /// Alignment a driver prefers for discard (0: none).
    pub pdiscard_alignment: u32,
    /// Largest write-zeroes request the driver takes at once (0: no limit).
    pub max_pwrite_zeroes: u64,
    /// Largest discard request the driver takes at once (0: no limit).
    pub max_pdiscard: u64,
    /// Memory alignment buffers need (O_DIRECT).
    pub min_mem_alignment: usize,
}

impl Default for BlockLimits {
    fn default() -> Self {
        BlockLimits {
            request_alignment: 1,
            max_transfer: 0,
            pwrite_zeroes_alignment: 0,
            pdiscard_alignment: 0,
            max_pwrite_zeroes: 0,
            max_pdiscard: 0,
            min_mem_alignment: 1,
        }
    }
}

pub use crate::prealloc::PreallocMode;

/// Facts `qemu-io info` and `qemu-img info` print (QEMU's BlockDriverInfo).
#[derive(Clone, Debug, Default)]
pub struct DriverInfo {
    /// Allocation unit of the format (0 when it has none).
    pub cluster_size: u64,
    /// Smallest unit a cluster's allocation is tracked in (qcow2's extended L2 subclusters;
    /// 0 when it is the cluster itself): copy-on-read rounds to it.
    pub subcluster_size: u64,
    /// Where VM state would be stored (qcow2 internal snapshots).
    pub vm_state_offset: u64,
    /// The image is marked dirty (lazy refcounts).
    pub is_dirty: bool,
    /// Data can only be written compressed (vmdk streamOptimized): convert compresses.
    pub needs_compressed_writes: bool,
}

pub use crate::driver_check::{CheckFix, CheckResult};

/// The child a filter passes a request to, or why a driver that is not a filter and did
/// not implement the request cannot serve it.
fn pass_through(
    is_filter: bool,
    bs: &BlockDriverState,
    what: &str,
) -> Result<Rc<BlockDriverState>> {
    match bs.filtered() {
        Some(child) if is_filter => Ok(child),
        _ => Err(Error::not_supported(format!("the driver does not {what}"))),
    }
}

/// The per-node state of an open driver and its coroutine callbacks.
///
/// Every method receives the node it serves, so that a format can reach `bs.file()` and
/// `bs.backing()`. The generic request path (`crate::io`) has already checked bounds,
/// alignment and permissions when a driver is called.
#[async_trait(?Send)]
pub trait BlockDriver {
    /// Whether the node only passes requests on to one child, changing how they behave but
    /// not where the data lies (QEMU's BlockDriver.is_filter). A filter gets pass-through
    /// defaults for the requests, status, size and zero-init it does not change; every other
    /// driver must implement reads, writes and its length.
    fn is_filter(&self) -> bool {
        false
    }

    /// Reads `qiov.len()` bytes at `offset` (bdrv_co_preadv).
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        let child = pass_through(self.is_filter(), bs, "read")?;
        child.co_preadv(offset, qiov, flags).await
    }

    /// Writes `qiov` at `offset` (bdrv_co_pwritev).
    async fn co_pwritev(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        let child = pass_through(self.is_filter(), bs, "write")?;
        child.co_pwritev(offset, qiov, flags).await
    }

    /// Writes zeroes efficiently; ENOTSUP makes the caller write a zero buffer instead.
    async fn co_pwrite_zeroes(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        match bs.filtered() {
            Some(child) if self.is_filter() => child.co_pwrite_zeroes(offset, bytes, flags).await,
            _ => Err(Error::from_errno(libc::ENOTSUP)),
        }
    }

    /// Discards a range (advisory: ENOTSUP is ignored by the caller).
    async fn co_pdiscard(&self, bs: &BlockDriverState, offset: u64, bytes: u64) -> Result<()> {
        match bs.filtered() {
            Some(child) if self.is_filter() => child.co_pdiscard(offset, bytes).await,
            _ => Err(Error::from_errno(libc::ENOTSUP)),
        }
    }

    /// Writes cached metadata to the children (bdrv_co_flush_to_os).
    async fn co_flush_to_os(&self, _bs: &BlockDriverState) -> Result<()> {
        Ok(())
    }

    /// Makes written data stable on the storage itself (bdrv_co_flush_to_disk; protocols).
    async fn co_flush_to_disk(&self, _bs: &BlockDriverState) -> Result<()> {
        Ok(())
    }

    /// Flushes the node and its children in one go (a driver's own bdrv_co_flush), for a
    /// driver that decides itself how its children's flushes count (quorum votes on them);
    /// None leaves it to the generic order: to_os, to_disk, then every written child.
    async fn co_flush(&self, _bs: &BlockDriverState) -> Option<Result<()>> {
        None
    }

    /// Describes the range starting at `offset` (bdrv_co_block_status). The default suits a
    /// format that maps everything 1:1 onto its `file` child, or a protocol with only data;
    /// a filter sends the question on to its child (bdrv_co_block_status_from_file).
    async fn co_block_status(
        &self,
        bs: &BlockDriverState,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        if self.is_filter() {
            return Ok(BlockStatus::in_file(bs.filtered(), offset, bytes));
        }
        let mut status = BlockStatus::new(StatusFlags::DATA | StatusFlags::OFFSET_VALID, bytes);
        status.map = offset;
        status.file = bs.file();
        Ok(status)
    }

    /// Changes the node's size (bdrv_co_truncate); a filter resizes its child.
    async fn co_truncate(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        exact: bool,
        prealloc: PreallocMode,
    ) -> Result<()> {
        match bs.filtered() {
            Some(child) if self.is_filter() => child.co_truncate(offset, exact, prealloc).await,
            _ => Err(Error::not_supported(
                "Image format driver does not support resize",
            )),
        }
    }

    /// The node's length in bytes (bdrv_co_getlength). Every driver but a filter, whose
    /// length is its child's, must say.
    async fn co_getlength(&self, bs: &BlockDriverState) -> Result<u64> {
        Ok(pass_through(self.is_filter(), bs, "know its length")?.getlength())
    }

    /// Bytes the node occupies on the host, if known (bdrv_co_get_allocated_file_size).
    async fn co_get_allocated_file_size(&self, bs: &BlockDriverState) -> Result<Option<u64>> {
        match bs.file() {
            Some(file) => file.co_get_allocated_file_size().await,
            None => Ok(None),
        }
    }

    /// The node's limits; the default inherits the `file` child's (bdrv_refresh_limits).
    fn refresh_limits(&self, bs: &BlockDriverState) -> BlockLimits {
        bs.file().map(|f| f.limits()).unwrap_or_default()
    }

    /// Request flags the driver honours itself on writes (the rest are emulated).
    fn supported_write_flags(&self) -> RequestFlags {
        RequestFlags::empty()
    }

    /// Facts for `info` (bdrv_get_info).
    fn get_info(&self, _bs: &BlockDriverState) -> Result<DriverInfo> {
        Ok(DriverInfo::default())
    }

    /// The format-specific part of `qemu-img info` (ImageInfoSpecific), as JSON.
    fn get_specific_info(&self, _bs: &BlockDriverState) -> Option<serde_json::Value> {
        None
    }

    /// Whether guest data is stored encrypted (bdrv_is_encrypted; `encrypted: yes`).
    fn is_encrypted(&self) -> bool {
        false
    }

    /// The backing file name recorded in the image and its format, if any (bs->backing_file
    /// and bs->backing_format), for `qemu-img info`.
    fn backing_file_name(&self, _bs: &BlockDriverState) -> Option<(String, Option<String>)> {
        None
    }

    /// Rewrites the backing file reference stored in the image (bdrv_change_backing_file):
    /// `None` removes it. Only the header changes; the open backing child stays as it is.
    async fn co_change_backing_file(
        &self,
        _bs: &BlockDriverState,
        _backing_file: Option<&str>,
        _backing_fmt: Option<&str>,
    ) -> Result<()> {
        Err(Error::from_errno(libc::ENOTSUP))
    }

    /// Deallocates everything the image stores itself, so that it reads from its backing
    /// file again (bdrv_make_empty; `qemu-img commit` empties the committed overlay).
    async fn co_make_empty(&self, _bs: &BlockDriverState) -> Result<()> {
        Err(Error::from_errno(libc::ENOTSUP))
    }

    /// Changes creation options of an open image in place (bdrv_amend_options): `options`
    /// holds the driver's amend options as given, `status` hears (done, total) progress.
    async fn co_amend(
        &self,
        _bs: &BlockDriverState,
        _options: &mut Options,
        _force: bool,
        _status: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        Err(Error::not_supported(
            "The block driver does not support option amendment",
        ))
    }

    /// Checks (and with `fix`, repairs) the image's metadata (bdrv_co_check). Problems are
    /// reported on stderr as they are found, like QEMU's; the counts come back. Drivers
    /// without a check answer ENOTSUP ("This image format does not support checks").
    async fn co_check(&self, _bs: &BlockDriverState, _fix: CheckFix) -> Result<CheckResult> {
        Err(Error::from_errno(libc::ENOTSUP))
    }

    /// The internal snapshots the image holds (bdrv_snapshot_list).
    fn snapshot_list(&self, _bs: &BlockDriverState) -> Result<Vec<SnapshotInfo>> {
        Err(Error::from_errno(libc::ENOTSUP))
    }

    /// Takes an internal snapshot of the current state (bdrv_snapshot_create).
    async fn co_snapshot_create(&self, _bs: &BlockDriverState, _sn: &SnapshotInfo) -> Result<()> {
        Err(Error::from_errno(libc::ENOTSUP))
    }

    /// Reverts the current state to a snapshot found by id, else by name
    /// (bdrv_snapshot_goto).
    async fn co_snapshot_goto(&self, _bs: &BlockDriverState, _id_or_name: &str) -> Result<()> {
        Err(Error::from_errno(libc::ENOTSUP))
    }

    /// Deletes the snapshot matching the id and/or name given (bdrv_snapshot_delete).
    async fn co_snapshot_delete(
        &self,
        _bs: &BlockDriverState,
        _id: Option<&str>,
        _name: Option<&str>,
    ) -> Result<()> {
        Err(Error::from_errno(libc::ENOTSUP))
    }

    /// Shows a snapshot read-only instead of the current state (bdrv_snapshot_load_tmp).
    async fn co_snapshot_load_tmp(
        &self,
        _bs: &BlockDriverState,
        _id: Option<&str>,
        _name: Option<&str>,
    ) -> Result<()> {
        Err(Error::from_errno(libc::ENOTSUP))
    }

    /// Writes into the VM state area (bdrv_co_writev_vmstate).
    async fn co_save_vmstate(
        &self,
        _bs: &BlockDriverState,
        _qiov: &IoVector,
        _pos: u64,
    ) -> Result<()> {
        Err(Error::from_errno(libc::ENOTSUP))
    }

    /// Reads from the VM state area (bdrv_co_readv_vmstate).
    async fn co_load_vmstate(
        &self,
        _bs: &BlockDriverState,
        _qiov: &IoVector,
        _pos: u64,
    ) -> Result<()> {
        Err(Error::from_errno(libc::ENOTSUP))
    }

    /// Whether a freshly created image reads as zeroes (bdrv_has_zero_init); a filter's
    /// answer is its child's.
    fn has_zero_init(&self, bs: &BlockDriverState) -> bool {
        match bs.filtered() {
            Some(child) if self.is_filter() => child.drv().has_zero_init(&child),
            _ => false,
        }
    }

    /// Whether the format can store dirty bitmaps in the image
    /// (bdrv_supports_persistent_dirty_bitmap).
    fn supports_persistent_dirty_bitmap(&self, _bs: &BlockDriverState) -> bool {
        false
    }

    /// Checks that a new persistent bitmap fits in the image
    /// (bdrv_co_can_store_new_dirty_bitmap); only called where the format supports them.
    async fn co_can_store_new_dirty_bitmap(
        &self,
        bs: &BlockDriverState,
        _name: &str,
        _granularity: u32,
    ) -> Result<()> {
        Err(Error::not_supported(format!(
            "Can't store persistent bitmaps to {}",
            bs.node_name()
        )))
    }

    /// Removes a bitmap from the image; one the image does not hold is no error
    /// (bdrv_co_remove_persistent_dirty_bitmap).
    async fn co_remove_persistent_dirty_bitmap(
        &self,
        _bs: &BlockDriverState,
        _name: &str,
    ) -> Result<()> {
        Ok(())
    }

    /// Checks new options for a reopen, taking those the driver applies, and stages the
    /// change (bdrv_reopen_prepare); None: the driver cannot be reopened.
    async fn reopen_prepare(
        &self,
        _bs: &BlockDriverState,
        _opts: &mut Options,
        _flags: crate::node::OpenFlags,
    ) -> Option<Result<Box<dyn std::any::Any>>> {
        self.reopen_keeps_options()
            .then(|| Ok(Box::new(()) as Box<dyn std::any::Any>))
    }

    /// Whether a reopen that changes none of the driver's own options is accepted (a
    /// bdrv_reopen_prepare that only returns 0), when `reopen_prepare` is not implemented.
    fn reopen_keeps_options(&self) -> bool {
        false
    }

    /// Applies what `reopen_prepare` staged (bdrv_reopen_commit).
    async fn reopen_commit(&self, _bs: &BlockDriverState, _staged: Box<dyn std::any::Any>) {}

    /// Fills a reopen's new options with the node's old explicit ones, which the new ones
    /// override (bdrv_join_options); a driver whose options stand for one another says
    /// which old ones a new one replaces.
    fn join_options(&self, options: &mut Options, old: &Options) {
        for (k, v) in old.iter() {
            options.set_default(k, v);
        }
    }

    /// Options a reopen may leave out to reset them to their defaults (mutable_opts).
    fn mutable_opts(&self) -> &'static [&'static str] {
        &[]
    }

    /// Writes back state before the node goes away (bdrv_close). After a successful
    /// `inactivate` there is nothing left to write, and `bs.is_inactive()` says so.
    async fn close(&self, _bs: &BlockDriverState) -> Result<()> {
        Ok(())
    }

    /// Writes back everything the driver holds and says whether it all made it
    /// (bdrv_inactivate); the node stays open.
    async fn inactivate(&self, _bs: &BlockDriverState) -> Result<()> {
        Ok(())
    }

    /// Acts on a debug event raised on this node (bdrv_debug_event): None when there is
    /// nothing to do, as for every driver but blkdebug; a future when the request must wait.
    fn debug_event(&self, _event: BlkdbgEvent) -> Option<LocalBoxFuture<'_, ()>> {
        None
    }

    /// Lets tests and tools reach a driver's concrete type.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// What `open` is given: the node being built (its children already attached for formats)
/// and the options left for the driver to take.
pub type OpenFn = for<'a> fn(
    &'a BlockDriverState,
    &'a mut Options,
) -> LocalBoxFuture<'a, Result<Box<dyn BlockDriver>>>;

/// How `create` is called: filename, options (size, preallocation, format options).
pub type CreateFn = for<'a> fn(&'a str, &'a mut Options) -> LocalBoxFuture<'a, Result<()>>;

/// A creation option a driver accepts (for `-o help` and the "Formatting" line).
#[derive(Clone, Copy, Debug)]
pub struct CreateOption {
    /// Option name (`size`, `preallocation`, `cluster_size`...).
    pub name: &'static str,
    /// Kind shown by `-o help`: "size", "str", "bool", "num".
    pub kind: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Default printed in the "Formatting" line, if it is printed there.
    pub default: Option<&'static str>,
}

impl CreateOption {
    /// The `size` option that every driver able to create images takes.
    pub const SIZE: CreateOption = CreateOption {
        name: "size",
        kind: "size",
        help: "Virtual disk size",
        default: None,
    };
}

/// The static side of a driver (QEMU's BlockDriver struct fields that are not callbacks).
pub struct DriverClass {
    /// Name used with `-f` / `driver=` (`raw`, `qcow2`, `file`, `null-co`).
    pub format_name: &'static str,
    /// URI prefix for protocol drivers (`file`, `null-co`), None for formats.
    pub protocol_name: Option<&'static str>,
    /// Whether this is a format (has a `file` child) rather than a protocol.
    pub is_format: bool,
    /// Scores how well the first bytes of an image match (0 no, 100 certain).
    pub probe: Option<fn(buf: &[u8], filename: &str) -> u32>,
    /// Opens a node.
    pub open: OpenFn,
    /// Creates an image, if the driver can.
    pub create: Option<CreateFn>,
    /// Options `create` accepts, in the order QEMU lists them.
    pub create_options: &'static [CreateOption],
}

/// One internal snapshot as a driver describes it (QEMU's QEMUSnapshotInfo).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Unique id, numeric by convention ("1", "2"...); empty asks the driver to pick one.
    pub id_str: String,
    /// Name (tag) given by the user; need not be unique.
    pub name: String,
    /// Bytes of saved VM state.
    pub vm_state_size: u64,
    /// Creation time, seconds since the epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// Guest clock when the snapshot was taken, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Instruction counter when taken; `u64::MAX` when not recorded (QEMU's -1).
    pub icount: u64,
}
