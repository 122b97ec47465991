//! drive-backup and blockdev-backup: their arguments, the dirty bitmap ones checked as QEMU
//! checks them, and the job they create (QEMU's blockdev.c do_backup_common,
//! qmp_drive_backup, qmp_blockdev_backup). `transaction` creates the same jobs and starts
//! them once every action is prepared.

use std::rc::Rc;

use block::dirty_bitmap::BitmapCheck;
use block::jobs::backup::{backup_job_create, BackupOptions, BitmapSyncMode, SyncBitmap};
use block::jobs::mirror::SyncMode;
use block::jobs::{CommonOptions, Job, JobTxn};
use block::BlockDriverState;
use serde_json::Value;

use super::block::lookup_bs;
use super::jobs::{
    common, device, drive_target, on_error, started, subscribe_events, target_backing,
};
use super::{Args, CmdResult, QmpError};

/// backup's bitmap arguments, checked in the order QEMU's do_backup_common checks them;
/// sync=incremental is sync=bitmap with bitmap-mode on-success.
fn backup_options(
    args: &mut Args,
    bs: &BlockDriverState,
    common: CommonOptions,
) -> Result<BackupOptions, QmpError> {
    let sync_name = args
        .opt_str("sync")?
        .ok_or_else(|| QmpError::generic("Parameter 'sync' is missing"))?;
    let bitmap_name = args.opt_str("bitmap")?;
    // Before incremental becomes bitmap, so that the message names the mode given.
    if matches!(sync_name.as_str(), "bitmap" | "incremental") && bitmap_name.is_none() {
        return Err(QmpError::generic(format!(
            "must provide a valid bitmap name for '{sync_name}' sync mode"
        )));
    }
    let mut bitmap_mode = match args.opt_str("bitmap-mode")? {
        Some(m) => Some(BitmapSyncMode::parse(&m)?),
        None => None,
    };
    let sync = match sync_name.as_str() {
        "incremental" => {
            if bitmap_mode.is_some_and(|m| m != BitmapSyncMode::OnSuccess) {
                return Err(QmpError::generic(
                    "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'",
                ));
            }
            bitmap_mode = Some(BitmapSyncMode::OnSuccess);
            None
        }
        "bitmap" => None,
        other => Some(SyncMode::parse(other)?),
    };
    let bitmap = match bitmap_name {
        Some(name) => {
            let bm = bs
                .find_dirty_bitmap(&name)
                .ok_or_else(|| QmpError::generic(format!("Bitmap '{name}' could not be found")))?;
            let mode = bitmap_mode.ok_or_else(|| {
                QmpError::generic("Bitmap sync mode must be given when providing a bitmap")
            })?;
            bm.check(BitmapCheck::ALLOW_RO)?;
            if sync == Some(SyncMode::None) {
                return Err(QmpError::generic(
                    "sync mode 'none' does not produce meaningful bitmap outputs",
                ));
            }
            if mode == BitmapSyncMode::Never && sync.is_some() {
                return Err(QmpError::generic(format!(
                    "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '{sync_name}'"
                )));
            }
            Some(SyncBitmap {
                bitmap: bm,
                mode,
                copy_marked_only: sync.is_none(),
            })
        }
        None if bitmap_mode.is_some() => {
            return Err(QmpError::generic(
                "Cannot specify bitmap sync mode without a bitmap",
            ))
        }
        None => None,
    };
    backup_perf(args)?;
    Ok(BackupOptions {
        common,
        sync: sync.unwrap_or(SyncMode::Full),
        filter_node_name: args.opt_str("filter-node-name")?,
        on_source_error: on_error(args, "on-source-error")?,
        on_target_error: on_error(args, "on-target-error")?,
        bitmap,
        compress: args.opt_bool("compress")?.unwrap_or(false),
    })
}

/// Checks backup's `x-perf` tuning (BackupPerf). The job copies one chunk at a time,
/// itself the cluster size: one worker and any chunk limit of at least a cluster are what it
/// does anyway, and copy offloading is only ever an optimisation.
fn backup_perf(args: &mut Args) -> Result<(), QmpError> {
    let Some(v) = args.opt_value("x-perf") else {
        return Ok(());
    };
    let Value::Object(m) = v else {
        return Err(QmpError::generic(
            "Invalid parameter type for 'x-perf', expected: object",
        ));
    };
    let mut perf = Args::new(m);
    perf.opt_bool("use-copy-range")?;
    if perf.opt_int("max-workers")?.is_some_and(|w| w < 1) {
        return Err(QmpError::generic("max-workers must be greater than zero"));
    }
    if let Some(c) = perf.opt_int("max-chunk")? {
        if c < 0 || c > i32::MAX as i64 {
            return Err(QmpError::generic(
                "max-chunk must be zero (which means no limit) or not less than cluster size",
            ));
        }
    }
    perf.finish()
}

/// Creates the job of a `drive-backup` (`drive`) or `blockdev-backup`, in `txn` if
/// given, without starting it.
pub async fn backup_job(
    mut args: Args,
    drive: bool,
    txn: Option<Rc<JobTxn>>,
) -> Result<Rc<Job>, QmpError> {
    subscribe_events();
    let args = &mut args;
    let (dev, bs) = device(args)?;
    let target = if drive {
        None
    } else {
        // A device name or a node name (bdrv_lookup_bs).
        let name = args.str("target")?;
        Some(lookup_bs(Some(&name), Some(&name))?)
    };
    let mut common = common(args, &dev)?;
    common.txn = txn;
    let opts = backup_options(args, &bs, common)?;
    let target = match target {
        Some(t) => t,
        None => {
            let sync = if opts.bitmap.as_ref().is_some_and(|b| b.copy_marked_only) {
                SyncMode::Full
            } else {
                opts.sync
            };
            drive_target(args, &bs, target_backing(&bs, sync), true)
                .await?
                .0
        }
    };
    std::mem::replace(args, Args::new(Default::default())).finish()?;
    Ok(backup_job_create(&bs, &target, opts).await?)
}

/// `blockdev-backup`.
pub async fn blockdev_backup(args: Args) -> CmdResult {
    let job = backup_job(args, false, None).await?;
    job.start();
    started(job)
}

/// `drive-backup`.
pub async fn drive_backup(args: Args) -> CmdResult {
    let job = backup_job(args, true, None).await?;
    job.start();
    started(job)
}
