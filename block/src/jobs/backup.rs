//! Backup: a point-in-time copy of a node to a target while the guest keeps writing
//! (QEMU's block/backup.c: drive-backup, blockdev-backup).
//!
//! A copy-before-write filter goes above the source first: from that instant, any chunk
//! the guest is about to overwrite is saved to the target before the write proceeds. The
//! job then walks the disk saving every chunk not saved yet (sync=full), only those the top
//! layer allocates (sync=top), or none — leaving the filter to save only what the guest
//! overwrites until the job is cancelled (sync=none, the fleecing setup).

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
}

struct Backup {
    bcs: Rc<BlockCopy>,
    opts: BackupOptions,
    filter: RefCell<Option<Rc<BlockDriverState>>>,
}

/// Starts backing `source` up to `target` (backup_job_create).
pub async fn backup_start(
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
        BACKUP_CLUSTER_SIZE,
    ));
    let filter = crate::graph::replace::insert_filter(
        source,
        &COPY_BEFORE_WRITE,
        opts.filter_node_name.clone(),
        "file",
        Box::new(CopyBeforeWrite::new(bcs.clone())),
    )
    .await?;
    let common = opts.common.clone();
    let backup = Backup {
        bcs,
        opts,
        filter: RefCell::new(Some(filter.clone())),
    };
    match common.create(Box::new(backup), claims) {
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

#[async_trait(?Send)]
impl JobDriver for Backup {
    fn job_type(&self) -> JobType {
        JobType::Backup
    }

    async fn run(&self, job: &Rc<Job>) -> Result<()> {
        let len = self.bcs.bitmap.borrow().size();
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
                    job.progress_update(copied);
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

    async fn clean(&self, _job: &Rc<Job>) {
        if let Some(filter) = self.filter.borrow_mut().take() {
            crate::graph::replace::drop_filter(&filter);
        }
    }
}
