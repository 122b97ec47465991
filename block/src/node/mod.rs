//! BlockDriverState: one node of the block graph.
//!
//! QEMU's block.c. A node is a driver instance plus what the generic layer needs around it:
//! its children (`file` for a format's container, `backing` for copy-on-write chains), its open
//! flags, request limits, the cached length, and the list of requests in flight. How a graph
//! of nodes is opened is [`crate::open`].
//!
//! The per-node state other layers act on is defined here, below them: the dirty bitmap list
//! (`dirty_bitmaps`) and what the graph layer keeps on each node (`graph_state`).

use std::cell::{Cell, OnceCell, RefCell};
use std::rc::{Rc, Weak};

use crate::coroutine::InFlight;
use crate::debug_event::BlkdbgEvent;
use crate::driver::{BlockDriver, BlockLimits, DriverClass};
use crate::error::{Error, Result};
use crate::tracked::TrackedRequests;

mod dirty_bitmaps;
pub mod graph_state;

/// How data moves between the node and the host page cache (QEMU's cache modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheMode {
    /// Bypass the host page cache (O_DIRECT; `cache.direct`).
    pub direct: bool,
    /// Ignore flush requests (`cache.no-flush`; cache=unsafe).
    pub no_flush: bool,
    /// Complete writes once in the host cache; otherwise every write is FUA (writethrough).
    pub writeback: bool,
}

impl CacheMode {
    /// Parses QEMU's `-t` / `cache=` names: writeback (default), none/off, writethrough,
    /// directsync, unsafe.
    pub fn parse(name: &str) -> Result<CacheMode> {
        let (direct, no_flush, writeback) = match name {
            "writeback" => (false, false, true),
            "none" | "off" => (true, false, true),
            "writethrough" => (false, false, false),
            "directsync" => (true, false, false),
            "unsafe" => (false, true, true),
            _ => return Err(Error::invalid(format!("Invalid cache option: {name}"))),
        };
        Ok(CacheMode {
            direct,
            no_flush,
            writeback,
        })
    }
}

impl Default for CacheMode {
    fn default() -> Self {
        CacheMode {
            direct: false,
            no_flush: false,
            writeback: true,
        }
    }
}

/// Which engine the `file` protocol submits I/O to (`aio=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AioMode {
    /// The thread pool (aio=threads).
    #[default]
    Threads,
    /// io_uring (aio=io_uring).
    IoUring,
}

impl AioMode {
    /// Parses `threads`, `io_uring` (and refuses `native` by name).
    pub fn parse(name: &str) -> Result<AioMode> {
        match name {
            "threads" => Ok(AioMode::Threads),
            "io_uring" => Ok(AioMode::IoUring),
            "native" => Err(Error::not_supported(
                "aio=native (linux-aio) is not supported by rqemu; use threads or io_uring",
            )),
            _ => Err(Error::invalid(format!("Invalid aio option: {name}"))),
        }
    }

    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            AioMode::Threads => "threads",
            AioMode::IoUring => "io_uring",
        }
    }
}

/// Zero detection on writes (`detect-zeroes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DetectZeroes {
    /// No detection.
    #[default]
    Off,
    /// All-zero writes become write-zeroes.
    On,
    /// ...and may unmap, if discard=unmap.
    Unmap,
}

/// Flags a tool or device opens a graph with (QEMU's BDRV_O_* flags). Each becomes the
/// default of the matching option, which children inherit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// Open read-only (no BDRV_O_RDWR).
    pub read_only: bool,
    /// Cache mode.
    pub cache: CacheMode,
    /// Skip image locking conflicts (`-U`, force-share).
    pub force_share: bool,
    /// Do not open the backing file (BDRV_O_NO_BACKING).
    pub no_backing: bool,
    /// Discard requests reach the image (BDRV_O_UNMAP, discard=unmap).
    pub unmap: bool,
    /// I/O engine for the file protocol.
    pub aio: AioMode,
    /// Send writes to a temporary overlay (BDRV_O_SNAPSHOT, `-s`).
    pub snapshot: bool,
    /// Opened by a consistency check (BDRV_O_CHECK): a format may then open a damaged
    /// image read-write so that the check can repair it.
    pub check: bool,
    /// Only metadata is looked at, no guest data is read or written (BDRV_O_NO_IO, what
    /// `qemu-img info` opens with): a format need not open its external data file.
    pub no_io: bool,
}

/// A child link of a node (QEMU's BdrvChild).
#[derive(Clone)]
pub struct BdrvChild {
    /// The role name: "file", "backing", "data-file".
    pub name: String,
    /// The child node.
    pub bs: Rc<BlockDriverState>,
}

/// A node of the block graph.
pub struct BlockDriverState {
    class: &'static DriverClass,
    pub(crate) drv: OnceCell<Box<dyn BlockDriver>>,
    node_name: String,
    filename: RefCell<String>,
    read_only: Cell<bool>,
    /// The options the node was opened (or last reopened) with, its children's left out
    /// (bs->explicit_options): what a reopen compares new options against.
    pub(crate) explicit_options: RefCell<crate::options::Options>,
    /// The parent that opened this node as its child (bs->inherits_from); a reopen of the
    /// parent passes its child options only to the children it opened itself.
    pub(crate) inherits_from: RefCell<Weak<BlockDriverState>>,
    /// Opened by a parent and not yet claimed by it (set by the child opens, taken by
    /// the parent when it records `inherits_from`).
    pub(crate) opened_as_child: Cell<bool>,
    /// Child roles frozen by a job (BdrvChild.frozen): a reopen may not change them.
    pub(crate) frozen: RefCell<Vec<String>>,
    /// Every read copies what it finds unallocated into this node (bs->copy_on_read).
    pub(crate) copy_on_read: Cell<bool>,
    flags: Cell<OpenFlags>,
    pub(crate) detect_zeroes: Cell<DetectZeroes>,
    children: RefCell<Vec<BdrvChild>>,
    pub(crate) probed: Cell<bool>,
    pub(crate) limits: Cell<BlockLimits>,
    pub(crate) total_bytes: Cell<u64>,
    pub(crate) tracked: TrackedRequests,
    pub(crate) in_flight: InFlight,
    /// Files of the overlays above this node while it is a backing file being opened
    /// (canonical paths), to refuse a chain that loops back on itself.
    pub(crate) backing_ancestors: RefCell<Vec<String>>,
    /// Writes finished so far and the count at the last successful flush (write_gen,
    /// flushed_gen).
    pub(crate) write_gen: Cell<u64>,
    pub(crate) flushed_gen: Cell<u64>,
    /// A flush is running on the node, and the flushes waiting for it (active_flush_req,
    /// flush_queue): one at a time, so that a flush arriving while another runs finds
    /// afterwards whether anything is left to force to the disk.
    pub(crate) active_flush: Cell<bool>,
    pub(crate) flush_queue: crate::coroutine::CoQueue,
    /// The node's dirty bitmaps, newest first (bs->dirty_bitmaps).
    pub(crate) dirty_bitmaps: RefCell<Vec<Rc<crate::dirty_bitmap::BdrvDirtyBitmap>>>,
    /// Drained sections, permissions and blockers on the node ([`crate::graph`]).
    pub(crate) graph: graph_state::GraphState,
    /// A filter a job inserted without a user-given node name: device-level queries look
    /// through it (bs->implicit).
    pub(crate) implicit: Cell<bool>,
    /// The end of the highest write so far (bs->wr_highest_offset).
    pub(crate) wr_highest_offset: Cell<u64>,
    /// Everything the node held is written back (BDRV_O_INACTIVE): closing has nothing
    /// left to write.
    inactive: Cell<bool>,
}

impl BlockDriverState {
    pub(crate) fn new(
        class: &'static DriverClass,
        node_name: String,
        filename: String,
        flags: OpenFlags,
        detect_zeroes: DetectZeroes,
    ) -> BlockDriverState {
        BlockDriverState {
            class,
            drv: OnceCell::new(),
            node_name,
            filename: RefCell::new(filename),
            read_only: Cell::new(flags.read_only),
            explicit_options: RefCell::new(crate::options::Options::new()),
            inherits_from: RefCell::new(Weak::new()),
            opened_as_child: Cell::new(false),
            frozen: RefCell::new(Vec::new()),
            copy_on_read: Cell::new(false),
            flags: Cell::new(flags),
            detect_zeroes: Cell::new(detect_zeroes),
            children: RefCell::new(Vec::new()),
            probed: Cell::new(false),
            limits: Cell::new(BlockLimits::default()),
            total_bytes: Cell::new(0),
            tracked: TrackedRequests::default(),
            in_flight: InFlight::default(),
            backing_ancestors: RefCell::new(Vec::new()),
            write_gen: Cell::new(0),
            flushed_gen: Cell::new(0),
            active_flush: Cell::new(false),
            flush_queue: crate::coroutine::CoQueue::new(),
            dirty_bitmaps: RefCell::new(Vec::new()),
            graph: graph_state::GraphState::default(),
            implicit: Cell::new(false),
            wr_highest_offset: Cell::new(0),
            inactive: Cell::new(false),
        }
    }

    /// The end of the highest write to the node so far (query-blockstats).
    pub fn wr_highest_offset(&self) -> u64 {
        self.wr_highest_offset.get()
    }

    /// Whether the node is a filter a job inserted without a name (bs->implicit).
    pub fn is_implicit(&self) -> bool {
        self.implicit.get()
    }

    /// Makes every read of this node copy-on-read (bdrv_enable_copy_on_read, what
    /// BDRV_O_COPY_ON_READ asks for); a read-only node cannot take the copies.
    pub fn enable_copy_on_read(&self) -> Result<()> {
        if self.is_read_only() {
            return Err(Error::invalid("Can't use copy-on-read on read-only device"));
        }
        self.copy_on_read.set(true);
        Ok(())
    }

    /// The driver's per-node state.
    pub fn drv(&self) -> &dyn BlockDriver {
        self.drv
            .get()
            .expect("node used before its driver was opened")
            .as_ref()
    }

    /// The driver class (format name, probe, create).
    pub fn class(&self) -> &'static DriverClass {
        self.class
    }

    /// The driver's format name (`raw`, `file`, `qcow2`).
    pub fn format_name(&self) -> &'static str {
        self.class.format_name
    }

    /// The node name (`node-name=` or an automatic `#blockN`).
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The filename the node represents (bs->filename).
    pub fn filename(&self) -> String {
        self.filename.borrow().clone()
    }

    /// Sets the filename (drivers refine it during open).
    pub fn set_filename(&self, name: impl Into<String>) {
        *self.filename.borrow_mut() = name.into();
    }

    /// The detect-zeroes mode writes to this node use.
    pub fn detect_zeroes(&self) -> DetectZeroes {
        self.detect_zeroes.get()
    }

    /// Whether the node is read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only.get()
    }

    /// Whether the format was guessed by probing rather than named (bs->probed): raw then
    /// refuses writes that would make the image probe as another format.
    pub fn was_probed(&self) -> bool {
        self.probed.get()
    }

    /// The flags the node was opened with.
    pub fn open_flags(&self) -> OpenFlags {
        self.flags.get()
    }

    /// Applies the flags and read-only state a committed reopen decided on.
    pub(crate) fn set_open_flags(&self, flags: OpenFlags, detect_zeroes: DetectZeroes) {
        self.flags.set(flags);
        self.read_only.set(flags.read_only);
        self.detect_zeroes.set(detect_zeroes);
    }

    /// Request limits.
    pub fn limits(&self) -> BlockLimits {
        self.limits.get()
    }

    /// The child with the given role.
    pub fn child(&self, name: &str) -> Option<Rc<BlockDriverState>> {
        self.children
            .borrow()
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.bs.clone())
    }

    /// All children, in attach order.
    pub fn children(&self) -> Vec<BdrvChild> {
        self.children.borrow().clone()
    }

    /// The `file` child (a format's container).
    pub fn file(&self) -> Option<Rc<BlockDriverState>> {
        self.child("file")
    }

    /// The `backing` child (copy-on-write source).
    pub fn backing(&self) -> Option<Rc<BlockDriverState>> {
        self.child("backing")
    }

    /// The child a filter passes requests to (bdrv_filter_bs): its `file`, or its `backing`
    /// for the filters that sit on a backing link (a job's mirror_top and commit_top).
    pub fn filtered(&self) -> Option<Rc<BlockDriverState>> {
        self.file().or_else(|| self.backing())
    }

    /// The first node at or below this one that is not a filter (bdrv_skip_filters): what an
    /// image header can name, where a job's filter may sit above the real node for a while.
    pub fn skip_filters(self: &Rc<Self>) -> Rc<Self> {
        let mut node = self.clone();
        while node.drv().is_filter() {
            match node.filtered() {
                Some(below) => node = below,
                None => break,
            }
        }
        node
    }

    /// Attaches a child under a role, replacing any previous one.
    pub fn attach_child(&self, name: &str, bs: Rc<BlockDriverState>) {
        let mut children = self.children.borrow_mut();
        children.retain(|c| c.name != name);
        children.push(BdrvChild {
            name: name.to_string(),
            bs,
        });
    }

    /// Detaches the child with a role.
    pub fn detach_child(&self, name: &str) {
        self.children.borrow_mut().retain(|c| c.name != name);
    }

    /// Bytes of the node occupied on the host, if known.
    pub async fn co_get_allocated_file_size(&self) -> Result<Option<u64>> {
        self.drv().co_get_allocated_file_size(self).await
    }

    /// Re-reads the length from the driver (after truncate or a change underneath). Like
    /// QEMU's total_sectors, it is rounded up to whole 512-byte sectors: the tail of a short
    /// file reads as zeroes.
    pub async fn refresh_total_bytes(&self) -> Result<u64> {
        let len = self
            .drv()
            .co_getlength(self)
            .await?
            .checked_next_multiple_of(512)
            .ok_or_else(|| Error::from_errno(libc::EFBIG))?;
        self.total_bytes.set(len);
        Ok(len)
    }

    /// Raises a debug event on this node (bdrv_debug_event, what QEMU's BLKDBG_EVENT calls
    /// on a child): a blkdebug node may then fail later requests or suspend this one.
    pub async fn debug_event(&self, event: BlkdbgEvent) {
        if let Some(wait) = self.drv.get().and_then(|d| d.debug_event(event)) {
            wait.await;
        }
    }

    /// Whether the node has been inactivated: all written back, nothing left to write.
    pub fn is_inactive(&self) -> bool {
        self.inactive.get()
    }

    /// Writes back everything the node holds, so that closing it has nothing left to do
    /// (one node of bdrv_inactivate_recurse). Unlike closing, this says whether it all
    /// made it; a node that failed stays active, and closing tries again.
    pub async fn inactivate(&self) -> Result<()> {
        if self.inactive.get() {
            return Ok(());
        }
        self.in_flight.drained().await;
        if !self.is_read_only() {
            self.co_flush().await?;
        }
        self.drv().inactivate(self).await?;
        self.inactive.set(true);
        Ok(())
    }

    /// Writes back state and closes the driver (bdrv_close); children close when dropped.
    /// The driver closes even when the flush failed, as in QEMU: it may report what it
    /// could not write back itself.
    pub async fn close(&self) -> Result<()> {
        self.in_flight.drained().await;
        let flushed = if self.is_read_only() || self.inactive.get() {
            Ok(())
        } else {
            self.co_flush().await
        };
        let closed = self.drv().close(self).await;
        self.release_named_dirty_bitmaps();
        flushed.and(closed)
    }
}

impl std::fmt::Debug for BlockDriverState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BlockDriverState({} '{}')",
            self.format_name(),
            self.filename()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_modes_map_like_qemu() {
        assert_eq!(
            CacheMode::parse("none").unwrap(),
            CacheMode {
                direct: true,
                no_flush: false,
                writeback: true
            }
        );
        assert_eq!(
            CacheMode::parse("unsafe").unwrap(),
            CacheMode {
                direct: false,
                no_flush: true,
                writeback: true
            }
        );
        assert!(!CacheMode::parse("directsync").unwrap().writeback);
        assert!(CacheMode::parse("bogus").is_err());
    }
}
