//! BlockBackend: the handle devices and tools hold on a block graph (block/block-backend.c).
//!
//! A BlockBackend is the root of a graph as a user sees it: it checks requests against the
//! device's size, applies the write-cache mode (writethrough makes every write FUA), counts
//! requests in flight so that `drain` can wait for them, and offers two styles of call:
//!
//! * `co_*` — for code already running in a coroutine (tools, qemu-io commands);
//! * `aio_*` — for device emulation: start a coroutine, return at once, and later call the
//!   completion callback **from a bottom half**, never inside the submitting call, even when
//!   the request could finish immediately. Device code is therefore never re-entered.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use crate::accounting::{AcctType, BlockAcctStats};
use crate::aio::AioContext;
use crate::coroutine::{CoroutinePool, InFlight, PoolJob};
use crate::driver::{PreallocMode, RequestFlags};
use crate::error::{Error, Result};
use crate::error_action::{ErrorAction, IoStatus, OnError};
use crate::iov::IoVector;
use crate::node::{BlockDriverState, OpenFlags};
use crate::open::bdrv_open;
use crate::options::Options;
use crate::trace;

thread_local! {
    /// The BlockBackends of this thread (QEMU's block_backends list).
    static BACKENDS: RefCell<Vec<Weak<BlockBackend>>> = const { RefCell::new(Vec::new()) };
}

/// A completion callback of an `aio_*` request (QEMU's BlockCompletionFunc).
pub type CompletionFn = Box<dyn FnOnce(Result<()>)>;

/// The user-facing handle of a block graph.
pub struct BlockBackend {
    /// The root node; a job's pivot or filter insertion replaces it (blk->root).
    root: RefCell<Rc<BlockDriverState>>,
    ctx: Rc<AioContext>,
    in_flight: InFlight,
    write_cache: Cell<bool>,
    /// The device name the monitor knows it by (blk->name); empty for anonymous ones.
    name: RefCell<String>,
    /// The coroutines that run `aio_*` requests.
    aio_pool: Rc<CoroutinePool<AioJob>>,
    /// What the device's requests did (blk->stats).
    stats: BlockAcctStats,
    /// The device's policy for failed reads (`rerror=`, blk->on_read_error).
    on_read_error: Cell<OnError>,
    /// The device's policy for failed writes and flushes (`werror=`, blk->on_write_error).
    on_write_error: Cell<OnError>,
    /// The I/O status, once a device that reports one is attached (blk->iostatus).
    iostatus: Cell<Option<IoStatus>>,
    /// A device holds it (blk->dev): it stays in the device's AioContext.
    dev_attached: Cell<bool>,
}

/// What an `aio_*` request does, with its arguments.
enum AioOp {
    Read(u64, IoVector, RequestFlags),
    Write(u64, IoVector, RequestFlags),
    WriteZeroes(u64, u64, RequestFlags),
    Discard(u64, u64),
    Flush,
}

/// One `aio_*` request (QEMU's BlkAioEmAIOCB): run by a pooled coroutine, it reports its
/// result to `cb` from a bottom half.
struct AioJob {
    blk: Rc<BlockBackend>,
    op: AioOp,
    cb: CompletionFn,
}

impl AioOp {
    /// How the request is accounted.
    fn acct_type(&self) -> AcctType {
        match self {
            AioOp::Read(..) => AcctType::Read,
            AioOp::Write(..) | AioOp::WriteZeroes(..) => AcctType::Write,
            AioOp::Discard(..) => AcctType::Unmap,
            AioOp::Flush => AcctType::Flush,
        }
    }

    /// The bytes it covers.
    fn bytes(&self) -> u64 {
        match self {
            AioOp::Read(_, q, _) | AioOp::Write(_, q, _) => q.len() as u64,
            AioOp::WriteZeroes(_, b, _) | AioOp::Discard(_, b) => *b,
            AioOp::Flush => 0,
        }
    }
}

impl PoolJob for AioJob {
    async fn run(self) {
        let AioJob { blk, op, cb } = self;
        let cookie = BlockAcctStats::start(op.acct_type(), op.bytes());
        let result = match op {
            AioOp::Read(offset, qiov, flags) => blk.do_preadv(offset, &qiov, flags).await,
            AioOp::Write(offset, qiov, flags) => blk.do_pwritev(offset, &qiov, flags).await,
            AioOp::WriteZeroes(offset, bytes, flags) => {
                blk.do_pwrite_zeroes(offset, bytes, flags).await
            }
            AioOp::Discard(offset, bytes) => blk.do_pdiscard(offset, bytes).await,
            AioOp::Flush => blk.do_flush().await,
        };
        blk.stats.done(cookie, result.is_ok());
        let ctx = blk.ctx.clone();
        ctx.schedule_bh(move || {
            trace!(
                blk_aio_complete,
                "blk {:p} ret {}",
                Rc::as_ptr(&blk),
                result.as_ref().map_or_else(|e| -e.errno(), |_| 0)
            );
            cb(result);
            blk.in_flight.dec();
        });
    }
}

impl BlockBackend {
    /// A backend over an opened graph, bound to the current thread's AioContext.
    pub fn new(root: Rc<BlockDriverState>) -> Rc<BlockBackend> {
        let write_cache = root.open_flags().cache.writeback;
        let blk = Rc::new(BlockBackend {
            root: RefCell::new(root),
            ctx: AioContext::current(),
            in_flight: InFlight::default(),
            write_cache: Cell::new(write_cache),
            name: RefCell::new(String::new()),
            aio_pool: CoroutinePool::new(),
            stats: BlockAcctStats::default(),
            on_read_error: Cell::new(OnError::Report),
            on_write_error: Cell::new(OnError::Enospc),
            iostatus: Cell::new(None),
            dev_attached: Cell::new(false),
        });
        let parent: Rc<dyn crate::graph::RootParent> = blk.clone();
        crate::graph::add_root_parent(Rc::downgrade(&parent));
        BACKENDS.with(|b| {
            let mut b = b.borrow_mut();
            b.retain(|w| w.strong_count() > 0);
            b.push(Rc::downgrade(&blk));
        });
        blk
    }

    /// Sets the error policies (blk_set_on_error); `Auto` keeps the current one, as a
    /// device property left at its default does.
    pub fn set_on_error(&self, on_read_error: OnError, on_write_error: OnError) {
        if on_read_error != OnError::Auto {
            self.on_read_error.set(on_read_error);
        }
        if on_write_error != OnError::Auto {
            self.on_write_error.set(on_write_error);
        }
    }

    /// The policy for failed reads (`is_read`) or writes (blk_get_on_error).
    pub fn on_error(&self, is_read: bool) -> OnError {
        if is_read {
            self.on_read_error.get()
        } else {
            self.on_write_error.get()
        }
    }

    /// What a device does about a failed request (blk_get_error_action).
    pub fn get_error_action(&self, is_read: bool, errno: i32) -> ErrorAction {
        self.on_error(is_read).action(errno)
    }

    /// Starts keeping an I/O status: the device reports errors that stop the VM
    /// (blk_iostatus_enable).
    pub fn iostatus_enable(&self) {
        self.iostatus.set(Some(IoStatus::Ok));
    }

    /// The I/O status, if a device keeps one and a policy can stop the VM
    /// (blk_iostatus_is_enabled, blk_iostatus).
    pub fn iostatus(&self) -> Option<IoStatus> {
        let can_stop = matches!(self.on_write_error.get(), OnError::Enospc | OnError::Stop)
            || self.on_read_error.get() == OnError::Stop;
        self.iostatus.get().filter(|_| can_stop)
    }

    /// Records the error that stops the VM; the first one sticks until a reset
    /// (blk_iostatus_set_err).
    pub fn iostatus_set_err(&self, errno: i32) {
        if self.iostatus.get() == Some(IoStatus::Ok) {
            self.iostatus.set(Some(IoStatus::of_errno(errno)));
        }
    }

    /// Clears the I/O status when the VM resumes (blk_iostatus_reset).
    pub fn iostatus_reset(&self) {
        if self.iostatus.get().is_some() {
            self.iostatus.set(Some(IoStatus::Ok));
        }
    }

    /// Every BlockBackend alive on this thread (blk_next): the roots from which the graph
    /// layer finds a node's parents.
    pub fn all() -> Vec<Rc<BlockBackend>> {
        BACKENDS.with(|b| b.borrow().iter().filter_map(Weak::upgrade).collect())
    }

    /// Points the backend at another root node at once (the BlockBackend side of
    /// bdrv_replace_node, for a caller that has drained the graph): later requests go there.
    pub fn set_root(&self, bs: Rc<BlockDriverState>) {
        *self.root.borrow_mut() = bs;
    }

    /// Points the backend at another root once the requests in flight have drained
    /// (blk_replace_bs): later requests go to `new`, which usually has the old root below
    /// it (a snapshot overlay).
    pub async fn replace_root(&self, new: Rc<BlockDriverState>) {
        self.drain().await;
        self.set_root(new);
    }

    /// Holds a new request back while a drained section covers the graph.
    async fn wait_while_drained(&self) {
        crate::graph::drain::wait_while_drained(|| self.bs()).await;
    }

    /// Opens a graph and wraps it (blk_new_open).
    pub async fn open(
        filename: Option<&str>,
        options: Options,
        flags: OpenFlags,
    ) -> Result<Rc<BlockBackend>> {
        let root = bdrv_open(filename, options, flags).await?;
        Ok(BlockBackend::new(root))
    }

    /// The accounting of the device's requests (blk_get_stats).
    pub fn stats(&self) -> &BlockAcctStats {
        &self.stats
    }

    /// Marks the backend as held by a device (blk_attach_dev): its graph may no longer be
    /// moved to another AioContext under the device.
    pub fn attach_dev(&self) {
        self.dev_attached.set(true);
    }

    /// Names the backend as a drive (blk_new with a name, monitor_add_blk).
    pub fn set_name(&self, name: &str) {
        *self.name.borrow_mut() = name.to_string();
    }

    /// The device name the monitor knows it by; empty for an anonymous backend (blk_name).
    pub fn name(&self) -> String {
        self.name.borrow().clone()
    }

    /// The root node.
    pub fn bs(&self) -> Rc<BlockDriverState> {
        self.root.borrow().clone()
    }

    /// The device size in bytes.
    pub fn getlength(&self) -> u64 {
        self.bs().getlength()
    }

    /// Whether writes complete only once stable (writethrough) or once cached (writeback).
    pub fn set_write_cache(&self, enabled: bool) {
        self.write_cache.set(enabled);
    }

    /// Whether the write cache is enabled.
    pub fn write_cache(&self) -> bool {
        self.write_cache.get()
    }

    /// Whether the root is read-only.
    pub fn is_read_only(&self) -> bool {
        self.bs().is_read_only()
    }

    /// Requests past the device's end fail with EIO (blk_check_byte_request).
    fn check_byte_request(&self, offset: u64, bytes: u64) -> Result<()> {
        let len = self.getlength();
        if offset > len || len - offset < bytes {
            return Err(Error::from_errno(libc::EIO));
        }
        Ok(())
    }

    fn write_flags(&self, flags: RequestFlags) -> RequestFlags {
        if self.write_cache.get() {
            flags
        } else {
            flags | RequestFlags::FUA
        }
    }

    /// Reads into `qiov` at `offset` (blk_co_preadv).
    pub async fn co_preadv(&self, offset: u64, qiov: &IoVector, flags: RequestFlags) -> Result<()> {
        self.counted(self.do_preadv(offset, qiov, flags)).await
    }

    /// Writes `qiov` at `offset` (blk_co_pwritev).
    pub async fn co_pwritev(
        &self,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        self.counted(self.do_pwritev(offset, qiov, flags)).await
    }

    /// Writes zeroes (blk_co_pwrite_zeroes); `MAY_UNMAP` lets the range be deallocated.
    pub async fn co_pwrite_zeroes(
        &self,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        self.counted(self.do_pwrite_zeroes(offset, bytes, flags))
            .await
    }

    /// Discards a range (blk_co_pdiscard).
    pub async fn co_pdiscard(&self, offset: u64, bytes: u64) -> Result<()> {
        self.counted(self.do_pdiscard(offset, bytes)).await
    }

    /// Flushes the whole graph (blk_co_flush).
    pub async fn co_flush(&self) -> Result<()> {
        self.counted(self.do_flush()).await
    }

    /// Resizes the device (blk_co_truncate).
    pub async fn co_truncate(
        &self,
        offset: u64,
        exact: bool,
        prealloc: PreallocMode,
    ) -> Result<()> {
        let root = self.bs();
        self.counted(root.co_truncate(offset, exact, prealloc))
            .await
    }

    // The uncounted bodies: co_* count them here, aio_* count them together with the callback.

    async fn do_preadv(&self, offset: u64, qiov: &IoVector, flags: RequestFlags) -> Result<()> {
        trace!(
            blk_co_preadv,
            "blk {:p} bs {:p} offset {} bytes {} flags 0x{:x}",
            self,
            Rc::as_ptr(&self.bs()),
            offset,
            qiov.len(),
            flags.bits()
        );
        self.check_byte_request(offset, qiov.len() as u64)?;
        self.wait_while_drained().await;
        self.bs().co_preadv(offset, qiov, flags).await
    }

    async fn do_pwritev(&self, offset: u64, qiov: &IoVector, flags: RequestFlags) -> Result<()> {
        trace!(
            blk_co_pwritev,
            "blk {:p} bs {:p} offset {} bytes {} flags 0x{:x}",
            self,
            Rc::as_ptr(&self.bs()),
            offset,
            qiov.len(),
            flags.bits()
        );
        self.check_byte_request(offset, qiov.len() as u64)?;
        self.wait_while_drained().await;
        self.bs()
            .co_pwritev(offset, qiov, self.write_flags(flags))
            .await
    }

    async fn do_pwrite_zeroes(&self, offset: u64, bytes: u64, flags: RequestFlags) -> Result<()> {
        trace!(
            blk_co_pwrite_zeroes,
            "blk {:p} offset {} bytes {} flags 0x{:x}",
            self,
            offset,
            bytes,
            flags.bits()
        );
        self.check_byte_request(offset, bytes)?;
        self.wait_while_drained().await;
        self.bs()
            .co_pwrite_zeroes(offset, bytes, self.write_flags(flags))
            .await
    }

    async fn do_pdiscard(&self, offset: u64, bytes: u64) -> Result<()> {
        trace!(
            blk_co_pdiscard,
            "blk {:p} offset {} bytes {}",
            self,
            offset,
            bytes
        );
        self.check_byte_request(offset, bytes)?;
        self.wait_while_drained().await;
        self.bs().co_pdiscard(offset, bytes).await
    }

    async fn do_flush(&self) -> Result<()> {
        trace!(blk_co_flush, "blk {:p}", self);
        self.wait_while_drained().await;
        self.bs().co_flush().await
    }

    async fn counted<T>(&self, request: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        self.in_flight.inc();
        let r = request.await;
        self.in_flight.dec();
        r
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.get()
    }

    /// Waits until every request in flight has completed, callbacks included (blk_drain).
    pub async fn drain(&self) {
        self.in_flight.drained().await;
    }

    /// Hands `op` to a pooled coroutine and reports its result to `cb` from a bottom half
    /// (blk_aio_prwv + blk_aio_complete_bh). The request stays counted in flight until the
    /// callback has run.
    fn aio_submit(self: &Rc<Self>, op: AioOp, cb: CompletionFn) {
        self.in_flight.inc();
        self.aio_pool.submit(AioJob {
            blk: self.clone(),
            op,
            cb,
        });
    }

    /// Reads asynchronously; `cb` runs from a bottom half (blk_aio_preadv).
    pub fn aio_preadv(
        self: &Rc<Self>,
        offset: u64,
        qiov: IoVector,
        flags: RequestFlags,
        cb: CompletionFn,
    ) {
        self.aio_submit(AioOp::Read(offset, qiov, flags), cb);
    }

    /// Writes asynchronously; `cb` runs from a bottom half (blk_aio_pwritev).
    pub fn aio_pwritev(
        self: &Rc<Self>,
        offset: u64,
        qiov: IoVector,
        flags: RequestFlags,
        cb: CompletionFn,
    ) {
        self.aio_submit(AioOp::Write(offset, qiov, flags), cb);
    }

    /// Writes zeroes asynchronously (blk_aio_pwrite_zeroes).
    pub fn aio_pwrite_zeroes(
        self: &Rc<Self>,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
        cb: CompletionFn,
    ) {
        self.aio_submit(AioOp::WriteZeroes(offset, bytes, flags), cb);
    }

    /// Discards asynchronously (blk_aio_pdiscard).
    pub fn aio_pdiscard(self: &Rc<Self>, offset: u64, bytes: u64, cb: CompletionFn) {
        self.aio_submit(AioOp::Discard(offset, bytes), cb);
    }

    /// Flushes asynchronously (blk_aio_flush).
    pub fn aio_flush(self: &Rc<Self>, cb: CompletionFn) {
        self.aio_submit(AioOp::Flush, cb);
    }

    /// Drains the graph and writes back everything its nodes hold, saying whether it all made
    /// it, which closing does not (bdrv_inactivate_all, for this backend's graph).
    pub async fn inactivate(&self) -> Result<()> {
        self.drain().await;
        for bs in top_down(&self.bs()) {
            bs.inactivate().await?;
        }
        Ok(())
    }

    /// Drains and closes the graph, writing back cached metadata (blk_unref of the last ref).
    pub async fn close(&self) -> Result<()> {
        self.drain().await;
        close_graph(&self.bs()).await
    }
}

impl std::fmt::Debug for BlockBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockBackend({:?})", self.bs())
    }
}

/// A node and every node below it, each before its children (the order in which
/// bdrv_inactivate_recurse visits them).
fn top_down(bs: &Rc<BlockDriverState>) -> Vec<Rc<BlockDriverState>> {
    let mut nodes = vec![bs.clone()];
    for child in bs.children() {
        nodes.extend(top_down(&child.bs));
    }
    nodes
}

/// Closes a node and then its children, top-down as QEMU's bdrv_close does.
fn close_graph(bs: &Rc<BlockDriverState>) -> crate::coroutine::LocalBoxFuture<'_, Result<()>> {
    Box::pin(async move {
        bs.close().await?;
        for child in bs.children() {
            close_graph(&child.bs).await?;
        }
        Ok(())
    })
}

impl crate::graph::RootParent for BlockBackend {
    fn root(&self) -> Rc<BlockDriverState> {
        self.bs()
    }

    fn set_root(&self, bs: Rc<BlockDriverState>) {
        BlockBackend::set_root(self, bs);
    }

    fn name(&self) -> String {
        self.name.borrow().clone()
    }

    fn can_change_aio_context(&self) -> bool {
        !self.dev_attached.get()
    }
}
