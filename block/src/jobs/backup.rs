//! Backup: a point-in-time copy of a node to a target while the guest keeps writing
//! (QEMU's block/backup.c: drive-backup, blockdev-backup).
//!
//! A copy-before-write filter goes above the source first: from that instant, any chunk
//! the guest is about to overwrite is saved to the target before the write proceeds. The
//! job then walks the disk saving every chunk not saved yet (sync=full), only those the top
//! layer allocates (sync=top), or none — leaving the filter to save only what the guest
//! overwrites until the job is cancelled (sync=none, the fleecing setup). With a dirty
//! bitmap, sync=bitmap saves only the chunks the bitmap marks (an incremental backup), and
//! any sync mode hands the bitmap on: frozen while the job runs, it is replaced by what was
//! written since the job started, or keeps its bits, as the bitmap sync mode says.

use std::cell::RefCell;
use std::rc::Rc;

use async_trait::async_trait;

use super::block_copy::BlockCopy;
use super::block_job::OnError;
use super::copy_before_write::{CopyBeforeWrite, COPY_BEFORE_WRITE};
use super::events::{ErrorAction, JobType};
use super::job::{Job, JobDriver};
use super::mirror::SyncMode;
use super::CommonOptions;
use crate::dirty_bitmap::{BdrvDirtyBitmap, BitmapCheck};
use crate::driver::RequestFlags;
use crate::error::{Error, Result};
use crate::graph::blockers::OpBlocker;
use crate::graph::permissions::{self, Perm};
use crate::node::BlockDriverState;
use crate::trace;

/// The chunk backup saves in (BACKUP_CLUSTER_SIZE_DEFAULT).
const BACKUP_CLUSTER_SIZE: u64 = 64 << 10;

/// The arguments of drive-backup / blockdev-backup.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Id, speed, finalize/dismiss flags.
    pub common: CommonOptions,
    /// What to save (incremental and bitmap need dirty bitmaps).
    pub sync: SyncMode,
    /// Name of the copy-before-write filter node.
    pub filter_node_name: Option<String>,
    /// What to do when reading the source fails.
    pub on_source_error: OnError,
    /// What to do when writing the target fails.
    pub on_target_error: OnError,
    /// The dirty bitmap the job reads (sync=bitmap) or updates.
    pub bitmap: Option<SyncBitmap>,
    /// Write the target compressed.
    pub compress: bool,
}

/// When the bitmap of a backup is handed on (BitmapSyncMode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitmapSyncMode {
    /// Only if the job succeeds: the bitmap then holds what was written since it started.
    OnSuccess,
    /// Whatever the result; after a failure, what was not copied stays marked too.
    Always,
    /// Never: the bitmap keeps its bits and gains what was written meanwhile.
    Never,
}

impl BitmapSyncMode {
    /// Parses QEMU's names.
    pub fn parse(name: &str) -> Result<BitmapSyncMode> {
        match name {
            "on-success" => Ok(BitmapSyncMode::OnSuccess),
            "always" => Ok(BitmapSyncMode::Always),
            "never" => Ok(BitmapSyncMode::Never),
            _ => Err(Error::invalid(format!(
                "Parameter 'bitmap-mode' does not accept value '{name}'"
            ))),
        }
    }

    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            BitmapSyncMode::OnSuccess => "on-success",
            BitmapSyncMode::Always => "always",
            BitmapSyncMode::Never => "never",
        }
    }
}

/// A backup's dirty bitmap and what it does with it.
#[derive(Clone, Debug)]
pub struct SyncBitmap {
    /// The bitmap, on the source node.
    pub bitmap: Rc<BdrvDirtyBitmap>,
    /// When it is handed on.
    pub mode: BitmapSyncMode,
    /// sync=bitmap: copy only the chunks it marks.
    pub copy_marked_only: bool,
}

struct Backup {
    bcs: Rc<BlockCopy>,
    opts: BackupOptions,
    filter: RefCell<Option<Rc<BlockDriverState>>>,
}

/// Starts backing `source` up to `target`.
pub async fn backup_start(
    source: &Rc<BlockDriverState>,
    target: &Rc<BlockDriverState>,
    opts: BackupOptions,
) -> Result<Rc<Job>> {
    let job = backup_job_create(source, target, opts).await?;
    job.start();
    Ok(job)
}

/// Creates the backup job, its filter in place, without starting it: a transaction starts
/// it once every action is prepared (backup_job_create).
pub async fn backup_job_create(
    source: &Rc<BlockDriverState>,
    target: &Rc<BlockDriverState>,
    opts: BackupOptions,
) -> Result<Rc<Job>> {
    if Rc::ptr_eq(source, target) {
        return Err(Error::invalid("Source and target cannot be the same"));
    }
    if source.getlength() != target.getlength() {
        return Err(Error::invalid(
            "Source and target image have different sizes",
        ));
    }
    if opts.compress
        && !target
            .drv()
            .supported_write_flags()
            .contains(RequestFlags::WRITE_COMPRESSED)
    {
        return Err(Error::invalid(format!(
            "Compression is not supported for this drive {}",
            target.node_name()
        )));
    }
    if let Some(sb) = &opts.bitmap {
        // The job will replace or refill it: it must be modifiable, unless never handed on.
        if sb.mode != BitmapSyncMode::Never {
            sb.bitmap.check(BitmapCheck::DEFAULT)?;
        }
    }
    let user = format!(
        "backup job '{}'",
        opts.common.job_id.as_deref().unwrap_or("")
    );
    let claims: Vec<Box<dyn std::any::Any>> = vec![
        Box::new(OpBlocker::block_for_job(source, "backup")?),
        Box::new(OpBlocker::block_for_job(target, "backup")?),
        Box::new(permissions::claim(
            target,
            &user,
            "target",
            Perm::WRITE,
            Perm::CONSISTENT_READ | Perm::WRITE_UNCHANGED,
        )?),
    ];
    let bcs = Rc::new(BlockCopy::new(
        source.clone(),
        target.clone(),
        cluster_size(target),
        opts.compress,
    ));
    let cbw = CopyBeforeWrite::new(bcs.clone());
    let cbw_bitmaps = cbw.bitmaps();
    // A sync=none target is backed by the source itself. In QEMU the target is the filter's
    // child, so the filter's insertion leaves the target's links alone: the target keeps
    // reading the source directly.
    let backed_by_source = target.backing().is_some_and(|b| Rc::ptr_eq(&b, source));
    let filter = crate::graph::replace::insert_filter(
        source,
        &COPY_BEFORE_WRITE,
        opts.filter_node_name.clone(),
        "file",
        Box::new(cbw),
    )
    .await?;
    for bm in cbw_bitmaps {
        filter.add_dirty_bitmap(bm);
    }
    if backed_by_source {
        target.attach_child("backing", source.clone());
    }
    if let Some(sb) = &opts.bitmap {
        // From here on an anonymous successor records the guest's writes
        // (bdrv_dirty_bitmap_create_successor).
        if let Err(e) = source.dirty_bitmap_create_successor(&sb.bitmap) {
            crate::graph::replace::drop_filter(&filter);
            return Err(e);
        }
    }
    let common = opts.common.clone();
    let backup = Backup {
        bcs,
        opts,
        filter: RefCell::new(Some(filter.clone())),
    };
    let sync_bitmap = backup.opts.bitmap.clone();
    let bcs = backup.bcs.clone();
    let job = common.create(Box::new(backup), claims).inspect_err(|_| {
        if let Some(sb) = sync_bitmap {
            let _ = source.dirty_bitmap_reclaim(&sb.bitmap);
        }
        crate::graph::replace::drop_filter(&filter);
    })?;
    bcs.set_progress_meter(&job);
    Ok(job)
}

/// The chunk size: the default, or the target's cluster if larger, so that a chunk never
/// fills part of a target cluster that has no backing file to supply the rest
/// (block_copy_calculate_cluster_size).
fn cluster_size(target: &BlockDriverState) -> u64 {
    match target.drv().get_info(target) {
        Ok(info) if info.cluster_size > 0 => BACKUP_CLUSTER_SIZE.max(info.cluster_size),
        _ => BACKUP_CLUSTER_SIZE,
    }
}

impl Backup {
    /// Hands the bitmap on or gives it its bits back, after success (`ok`) or failure
    /// (backup_cleanup_sync_bitmap).
    fn cleanup_sync_bitmap(&self, ok: bool) {
        let Some(sb) = &self.opts.bitmap else {
            return;
        };
        let source = self.bcs.source();
        let handed_on =
            (ok || sb.mode == BitmapSyncMode::Always) && sb.mode != BitmapSyncMode::Never;
        let result = if handed_on {
            source.dirty_bitmap_abdicate(&sb.bitmap)
        } else {
            source
                .dirty_bitmap_reclaim(&sb.bitmap)
                .map(|()| sb.bitmap.clone())
        };
        if let Ok(bm) = result {
            if !ok && sb.mode == BitmapSyncMode::Always {
                // Handed on after a failure: what was not copied must be copied next time.
                bm.merge_bits_from(&self.bcs.bitmap);
            }
        }
    }
}

#[async_trait(?Send)]
impl JobDriver for Backup {
    fn job_type(&self) -> JobType {
        JobType::Backup
    }

    async fn run(&self, job: &Rc<Job>) -> Result<()> {
        let len = self.bcs.bitmap.size();
        if let Some(sb) = self.opts.bitmap.as_ref().filter(|sb| sb.copy_marked_only) {
            // sync=bitmap: the chunks the (frozen) bitmap marks, rounded out to whole chunks
            // (backup_init_bcs_bitmap).
            self.bcs.bitmap.clear();
            self.bcs.bitmap.merge_bits_from(&sb.bitmap);
            job.progress_set_remaining(self.bcs.bitmap.count());
            return self.copy_all(job, len).await;
        }
        match self.opts.sync {
            SyncMode::None => {
                job.progress_set_remaining(len);
                // The filter does all the saving; the job only lives until cancelled.
                while !job.is_cancelled() {
                    job.yield_().await;
                }
                return Ok(());
            }
            SyncMode::Top => {
                let left = self.bcs.reset_unallocated().await?;
                job.progress_set_remaining(left);
            }
            SyncMode::Full => job.progress_set_remaining(len),
        }
        self.copy_all(job, len).await
    }

    async fn commit(&self, _job: &Rc<Job>) {
        self.cleanup_sync_bitmap(true);
    }

    async fn abort(&self, _job: &Rc<Job>) {
        self.cleanup_sync_bitmap(false);
    }

    async fn clean(&self, _job: &Rc<Job>) {
        if let Some(filter) = self.filter.borrow_mut().take() {
            crate::graph::replace::drop_filter(&filter);
        }
        // What was saved must reach the target's image even if nothing closes the node
        // (QEMU's drive-backup closes it, which flushes); a failure here changes nothing
        // the job can still report.
        let _ = self.bcs.target().co_flush().await;
    }
}

impl Backup {
    /// Saves every chunk not saved yet, in order (backup_loop).
    async fn copy_all(&self, job: &Rc<Job>, len: u64) -> Result<()> {
        let cluster = self.bcs.cluster_size();
        let mut offset = 0;
        while offset < len {
            job.ratelimit_sleep().await;
            if job.is_cancelled() {
                break;
            }
            trace!(backup_do_cow_enter, "job {} offset {}", job.id(), offset);
            match self.bcs.copy(offset, cluster).await {
                Ok(copied) => {
                    // The copier counted the progress (the filter's saves count too).
                    job.ratelimit_processed_bytes(copied);
                    offset += cluster;
                }
                Err(e) => {
                    let policy = if e.is_read {
                        self.opts.on_source_error
                    } else {
                        self.opts.on_target_error
                    };
                    if job.error_action(policy, e.is_read, e.error.errno()) == ErrorAction::Report {
                        return Err(e.error);
                    }
                }
            }
        }
        Ok(())
    }
}
