//! Mirror: keep a target identical to a source node while the guest writes to it, and on
//! `complete` switch the guest over to the target (QEMU's block/mirror.c: drive-mirror,
//! blockdev-mirror, and active block-commit, which mirrors the active layer into its base).
//!
//! The job inserts a `mirror_top` filter above the source, so that every guest write is
//! seen ([`copy`]); marks what must be copied first (all of it, the top layer, or nothing:
//! sync full/top/none); then copies dirty areas until none is left, flushes the target and
//! announces READY. From then on it keeps copying what the guest dirties. `complete` makes
//! it drain the source, copy the last dirty chunks and pivot: every parent of the source
//! (the guest's BlockBackend) now uses the target. A cancel after READY finishes without
//! pivoting, leaving a consistent copy.

mod backing;
mod copy;
mod ops;

pub use backing::BackingMode;
pub use copy::CopyMode;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use async_trait::async_trait;

use super::block_copy::CopyError;
use super::block_job::OnError;
use super::events::{ErrorAction, JobType};
use super::job::{Job, JobDriver};
use super::ratelimit::SLICE;
use super::top_filter::{self, WriteObserver};
use super::CommonOptions;
use crate::driver::{PreallocMode, RequestFlags, StatusFlags};
use crate::error::{Error, Result};
use crate::graph::blockers::OpBlocker;
use crate::graph::drain::{drained_begin, DrainedSection};
use crate::graph::permissions::{self, Perm};
use crate::graph::reopen::{bdrv_reopen_set_read_only, FrozenChain};
use crate::node::BlockDriverState;
use crate::trace;
use copy::MirrorState;

/// What is copied before READY (MirrorSyncMode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// The whole disk as the guest sees it.
    #[default]
    Full,
    /// What the source's top layer holds (its backing chain is shared with the target).
    Top,
    /// Nothing: only what the guest writes from now on.
    None,
}

impl SyncMode {
    /// Parses QEMU's names; incremental and bitmap need dirty bitmaps.
    pub fn parse(name: &str) -> Result<SyncMode> {
        match name {
            "full" => Ok(SyncMode::Full),
            "top" => Ok(SyncMode::Top),
            "none" => Ok(SyncMode::None),
            "incremental" | "bitmap" => Err(Error::not_supported(format!(
                "sync mode '{name}' needs dirty bitmaps, which are not supported yet"
            ))),
            _ => Err(Error::invalid(format!("Invalid parameter '{name}'"))),
        }
    }
}

/// The arguments of drive-mirror / blockdev-mirror.
#[derive(Clone, Debug, Default)]
pub struct MirrorOptions {
    /// Id, speed, finalize/dismiss flags.
    pub common: CommonOptions,
    /// What to copy before READY.
    pub sync: SyncMode,
    /// Dirty tracking chunk in bytes (0: the default, 64 KiB).
    pub granularity: u64,
    /// Most bytes the copies in flight hold at once (0: the default, 16 MiB).
    pub buf_size: u64,
    /// How guest writes reach the target.
    pub copy_mode: CopyMode,
    /// The node the target replaces on completion, if not the source.
    pub replaces: Option<Rc<BlockDriverState>>,
    /// Name of the mirror_top filter node.
    pub filter_node_name: Option<String>,
    /// What to do when reading the source fails.
    pub on_source_error: OnError,
    /// What to do when writing the target fails.
    pub on_target_error: OnError,
    /// sync=full must also zero what the source does not hold: the target may have
    /// data of its own (an existing image; QEMU's zero_target).
    pub zero_target: bool,
    /// The target's backing chain after completion.
    pub backing_mode: BackingMode,
}

/// The default granularity when the target has no cluster size, and the most the target's
/// cluster size makes it.
const DEFAULT_GRANULARITY: u64 = 64 << 10;
/// The default of buf-size: the bytes all copies in flight hold together
/// (DEFAULT_MIRROR_BUF_SIZE).
const DEFAULT_BUF_SIZE: u64 = 16 << 20;
/// The least of the most bytes one copy takes; more when the buffer is shared by fewer than
/// [`ops::MAX_IN_FLIGHT`] copies (MAX_IO_BYTES).
const MAX_IO_BYTES: u64 = 1 << 20;

struct Mirror {
    state: Rc<MirrorState>,
    granularity: u64,
    job_type: JobType,
    opts: MirrorOptions,
    /// The node whose parents move to the target on completion.
    to_replace: Rc<BlockDriverState>,
    /// Active commit: the target is a backing node of the source.
    base: Option<Rc<BlockDriverState>>,
    filter: RefCell<Option<Rc<BlockDriverState>>>,
    should_complete: Cell<bool>,
    drained: RefCell<Option<DrainedSection>>,
}

/// Starts mirroring `source` to `target` (mirror_start).
pub async fn mirror_start(
    source: &Rc<BlockDriverState>,
    target: &Rc<BlockDriverState>,
    opts: MirrorOptions,
) -> Result<Rc<Job>> {
    if Rc::ptr_eq(source, target) {
        return Err(Error::invalid("Can't mirror node into itself"));
    }
    start_job(source, target, None, JobType::Mirror, opts, Vec::new()).await
}

/// Starts committing the active layer `active` into `base`: a mirror whose target is the
/// base, reported as a commit job (commit_active_start).
pub async fn commit_active_start(
    active: &Rc<BlockDriverState>,
    base: &Rc<BlockDriverState>,
    common: CommonOptions,
    filter_node_name: Option<String>,
    on_error: OnError,
) -> Result<Rc<Job>> {
    if Rc::ptr_eq(active, base) {
        return Err(Error::invalid("cannot commit an image into itself"));
    }
    super::check_in_chain(active, base)?;
    // The layers below the active one are the job's down to the base, which becomes
    // writable: when the job completes it is the active layer.
    let mut claims: Vec<Box<dyn std::any::Any>> = Vec::new();
    let mut node = active.backing();
    while let Some(n) = node {
        claims.push(Box::new(OpBlocker::block_for_job(
            &n,
            JobType::Commit.name(),
        )?));
        if Rc::ptr_eq(&n, base) {
            break;
        }
        node = n.backing();
    }
    bdrv_reopen_set_read_only(base, false).await?;
    let opts = MirrorOptions {
        common,
        filter_node_name,
        on_source_error: on_error,
        on_target_error: on_error,
        ..MirrorOptions::default()
    };
    start_job(
        active,
        base,
        Some(base.clone()),
        JobType::Commit,
        opts,
        claims,
    )
    .await
}

async fn start_job(
    source: &Rc<BlockDriverState>,
    target: &Rc<BlockDriverState>,
    base: Option<Rc<BlockDriverState>>,
    job_type: JobType,
    opts: MirrorOptions,
    mut claims: Vec<Box<dyn std::any::Any>>,
) -> Result<Rc<Job>> {
    let target_cluster_size = target
        .drv()
        .get_info(target)
        .map(|i| i.cluster_size)
        .unwrap_or(0);
    let granularity = match opts.granularity {
        // The target's cluster size, within 4 KiB..64 KiB
        // (bdrv_get_default_bitmap_granularity).
        0 if target_cluster_size > 0 => target_cluster_size.clamp(4096, DEFAULT_GRANULARITY),
        0 => DEFAULT_GRANULARITY,
        g if !g.is_power_of_two() || !(512..=64 << 20).contains(&g) => {
            return Err(Error::invalid(
                "Granularity must be a power of 2 between 512 and 64M",
            ))
        }
        g => g,
    };
    claims.push(Box::new(OpBlocker::block_for_job(source, job_type.name())?));
    if base.is_none() {
        claims.push(Box::new(OpBlocker::block_for_job(target, job_type.name())?));
    }
    let user = format!(
        "{} job '{}'",
        job_type.name(),
        opts.common.job_id.as_deref().unwrap_or("")
    );
    // The source may be written and read by others while the job runs, but not resized.
    claims.push(Box::new(permissions::claim(
        source,
        &format!(
            "block job '{}'",
            opts.common.job_id.as_deref().unwrap_or("")
        ),
        "main node",
        Perm::empty(),
        Perm::CONSISTENT_READ | Perm::WRITE | Perm::WRITE_UNCHANGED,
    )?));
    let mut perm = Perm::WRITE | Perm::RESIZE;
    if base.is_some() {
        perm |= Perm::CONSISTENT_READ;
    }
    claims.push(Box::new(permissions::claim(
        target,
        &user,
        "target",
        perm,
        Perm::CONSISTENT_READ | Perm::WRITE_UNCHANGED,
    )?));
    let state = Rc::new(MirrorState::new(
        source.clone(),
        target.clone(),
        granularity,
        opts.copy_mode,
        // A backing file the target has, or names and gets only on completion.
        if target.backing().is_some() || target.drv().backing_file_name(target).is_some() {
            target_cluster_size
        } else {
            0
        },
    ));
    let observer: Rc<dyn WriteObserver> = state.clone();
    // Requests in flight finish before the filter goes in (mirror_start_job drains around
    // bdrv_append): a write issued below it would otherwise escape the dirty bitmap, which
    // the job only builds afterwards from what the source holds.
    let drained = drained_begin(source).await;
    let filter = top_filter::insert(
        source,
        &top_filter::MIRROR_TOP,
        opts.filter_node_name.clone(),
        Some(observer),
    )
    .await;
    drop(drained);
    let filter = filter?;
    trace!(
        mirror_start,
        "bs {} target {}",
        source.node_name(),
        target.node_name()
    );
    if let Some(base) = &base {
        // The links from the filter down to the base stay until the commit is done.
        claims.push(Box::new(FrozenChain::new(&filter, Some(base))));
    }
    let common = opts.common.clone();
    let mirror = Mirror {
        state,
        granularity,
        job_type,
        to_replace: opts.replaces.clone().unwrap_or_else(|| source.clone()),
        opts,
        base,
        filter: RefCell::new(Some(filter.clone())),
        should_complete: Cell::new(false),
        drained: RefCell::new(None),
    };
    match common.create(Box::new(mirror), claims) {
        Ok(job) => {
            job.start();
            Ok(job)
        }
        Err(e) => {
            crate::graph::replace::drop_filter(&filter);
            Err(e)
        }
    }
}

impl Mirror {
    /// Marks what must be copied before READY (mirror_dirty_init).
    async fn dirty_init(&self, job: &Job, len: u64) -> Result<()> {
        let s = &self.state;
        // The first data node below the filters on the source (bdrv_skip_filters): what it
        // holds above the base is what the job copies.
        let top = s.source.skip_filters();
        let base = match (self.opts.sync, &self.base) {
            (SyncMode::None, _) => return Ok(()),
            (_, Some(base)) => Some(base.clone()),
            (SyncMode::Top, None) => top.backing(),
            // An existing target is zeroed first (not counted as progress, as QEMU's
            // initial zeroing is not); then only the source's data needs copying.
            (SyncMode::Full, None) if self.opts.zero_target => {
                let zeroed = s
                    .target
                    .co_pwrite_zeroes(0, len, RequestFlags::MAY_UNMAP)
                    .await;
                if zeroed.is_err() {
                    s.dirty.set_dirty(0, len);
                    return Ok(());
                }
                None
            }
            (SyncMode::Full, None) => {
                let zero_init =
                    s.target.backing().is_none() && s.target.drv().has_zero_init(&s.target);
                if !zero_init {
                    s.dirty.set_dirty(0, len);
                    return Ok(());
                }
                None
            }
        };
        let mut offset = 0;
        while offset < len {
            if job.is_cancelled() {
                return Ok(());
            }
            let (status, _) = top
                .co_block_status_above(base.as_deref(), false, offset, len - offset)
                .await?;
            let n = status.bytes.max(1).min(len - offset);
            if status.flags.contains(StatusFlags::ALLOCATED) {
                s.dirty.set_dirty(offset, n);
            }
            offset += n;
        }
        Ok(())
    }

    async fn flush_target(&self) -> Result<()> {
        trace!(mirror_before_flush, "s {:p}", self);
        self.state.target.co_flush().await
    }

    /// Applies the error policy to a failed copy: Err ends the job.
    fn handle_copy_error(&self, job: &Job, e: CopyError) -> Result<()> {
        let policy = if e.is_read {
            self.opts.on_source_error
        } else {
            self.opts.on_target_error
        };
        match job.error_action(policy, e.is_read, e.error.errno()) {
            ErrorAction::Report => Err(e.error),
            ErrorAction::Ignore | ErrorAction::Stop => Ok(()),
        }
    }

    /// Copies until nothing is dirty, announces READY, and keeps copying until `complete`
    /// or a cancel (the loop of mirror_run).
    async fn mirror_loop(&self, job: &Rc<Job>) -> Result<()> {
        let s = &self.state;
        // The buffer the copies in flight share, in whole chunks, and each copy's share of
        // it (mirror_start_job, mirror_iteration's max_io_bytes).
        let g = self.granularity;
        let buf_size = match self.opts.buf_size {
            0 => DEFAULT_BUF_SIZE,
            b => b.max(g).div_ceil(g) * g,
        };
        let max_io = buf_size.min((buf_size / ops::MAX_IN_FLIGHT as u64).max(MAX_IO_BYTES));
        let mut cursor = 0;
        loop {
            while let Some(e) = s.take_failure() {
                self.handle_copy_error(job, e)?;
            }
            if let Some(e) = s.sync_error.borrow_mut().take() {
                self.handle_copy_error(
                    job,
                    CopyError {
                        is_read: false,
                        error: e,
                    },
                )?;
            }
            let cnt = s.dirty.count();
            job.progress_set_remaining(cnt + s.in_flight().1);
            if cnt > 0 && !job.pause_requested() {
                if let Some((next, bytes)) =
                    s.launch(cursor, max_io, buf_size, Rc::downgrade(job)).await
                {
                    job.ratelimit_processed_bytes(bytes);
                    cursor = next;
                }
            }
            let (in_flight, _) = s.in_flight();
            let cnt = s.dirty.count();
            let mut should_complete = false;
            if cnt == 0 && in_flight == 0 {
                if !job.is_ready() {
                    if self.flush_target().await.is_err() {
                        continue;
                    }
                    // Converged: from now on a cancel leaves a consistent target.
                    job.transition_to_ready();
                }
                should_complete = self.should_complete.get() || job.cancel_requested();
            }
            if should_complete {
                trace!(mirror_before_drain, "s {:p} cnt {}", self, cnt);
                let drained = drained_begin(&s.source).await;
                if s.dirty.count() > 0 || self.flush_target().await.is_err() {
                    drop(drained);
                    continue;
                }
                // In sync: stay drained until the pivot, so no write slips in between.
                *self.drained.borrow_mut() = Some(drained);
                return Ok(());
            }
            if job.pause_requested() {
                // A paused job does no I/O: its copies end first (mirror_pause).
                s.wait_for_all_copies().await;
            } else if cnt == 0 && in_flight > 0 {
                // Nothing left to start: wait for a copy to end, which may fail or leave
                // chunks dirty again.
                s.wait_for_any_copy().await;
            }
            if job.is_ready() && !should_complete {
                if cnt == 0 && in_flight == 0 {
                    trace!(mirror_before_sleep, "s {:p} cnt {} synced 1", self, cnt);
                    job.sleep(SLICE).await;
                } else {
                    // Still a pause point between copies while ready.
                    job.sleep(Duration::ZERO).await;
                }
            } else {
                job.ratelimit_sleep().await;
            }
            if job.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Takes the filter out and, after success with `complete`, moves the parents of the
    /// replaced node onto the target (mirror_exit_common).
    fn exit_common(&self, pivot: bool) -> Result<()> {
        self.state.active.set(false);
        if let Some(filter) = self.filter.borrow_mut().take() {
            crate::graph::replace::drop_filter(&filter);
        }
        let mut result = Ok(());
        if pivot {
            if let Err(e) =
                crate::graph::replace::try_replace_node(&self.to_replace, &self.state.target)
            {
                // QEMU reports the conflict and fails the job with EPERM's text.
                eprintln!(
                    "rqemu: Can no longer replace '{}' by '{}': {e}",
                    self.to_replace.node_name(),
                    self.state.target.node_name()
                );
                result = Err(Error::from_errno(libc::EPERM));
            }
        }
        self.drained.borrow_mut().take();
        result
    }
}

#[async_trait(?Send)]
impl JobDriver for Mirror {
    fn job_type(&self) -> JobType {
        self.job_type
    }

    async fn run(&self, job: &Rc<Job>) -> Result<()> {
        let s = &self.state;
        let len = s.source.getlength();
        let target_len = s.target.getlength();
        if self.base.is_some() {
            if len > target_len {
                s.target.co_truncate(len, false, PreallocMode::Off).await?;
            }
        } else if len != target_len {
            return Err(Error::invalid(
                "Source and target image have different sizes",
            ));
        }
        self.dirty_init(job, len).await?;
        if job.is_cancelled() {
            return Ok(());
        }
        let result = self.mirror_loop(job).await;
        // No copy outlives the job, whatever ended it (mirror_wait_for_all_io).
        self.state.wait_for_all_copies().await;
        result
    }

    async fn prepare(&self, _job: &Rc<Job>) -> Result<()> {
        let pivot = self.should_complete.get();
        let settled = if pivot {
            backing::settle_target_backing(
                self.opts.backing_mode,
                self.opts.sync,
                &self.state.source,
                &self.state.target,
            )
            .await
            .inspect_err(|e| eprintln!("rqemu: {e}"))
        } else {
            Ok(())
        };
        // The guest moves to the target even when its chain could not be settled, and
        // the job then fails (mirror_exit_common).
        self.exit_common(pivot)?;
        settled?;
        if pivot {
            // The replaced node has left the guest's graph and may never be closed: what
            // its driver caches (qcow2's tables) reaches its image now, as QEMU's close of
            // it would write it back. Its failure changes nothing the job could report.
            let _ = self.to_replace.co_flush().await;
        }
        Ok(())
    }

    async fn abort(&self, _job: &Rc<Job>) {
        // Without a pivot nothing can fail.
        let _ = self.exit_common(false);
    }

    fn can_complete(&self) -> bool {
        true
    }

    fn complete(&self, job: &Rc<Job>) -> Result<()> {
        self.should_complete.set(true);
        job.enter();
        Ok(())
    }

    fn cancel(&self, job: &Rc<Job>, force: bool) -> bool {
        // A cancel after READY only stops the mirror, leaving the target consistent.
        force || !job.is_ready()
    }
}
