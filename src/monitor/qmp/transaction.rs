//! `transaction`: several actions applied all or none (QEMU's qmp_transaction in
//! blockdev.c over util/transactions.c).
//!
//! Every action is prepared in order; the first that fails makes the ones already prepared
//! roll back, newest first, and the command fails with its error. When all are prepared they
//! commit, newest first as QEMU's list runs: that is when backup jobs start. With
//! completion-mode `grouped` the jobs share one [`JobTxn`], so they finish together or fail
//! together.

use std::rc::Rc;

use block::bitmap_qmp as ops;
use block::dirty_bitmap::hbitmap::HBitmap;
use block::dirty_bitmap::BdrvDirtyBitmap;
use block::jobs::{Job, JobTxn};
use block::BlockDriverState;
use serde_json::{json, Value};

use super::{backup, bitmaps, Args, CmdResult, QmpError};

/// What a prepared action undoes on abort, or finishes on commit.
enum Prepared {
    /// A backup job, created and not started.
    Job(Rc<Job>),
    /// A bitmap this transaction added.
    BitmapAdded(Rc<BlockDriverState>, Rc<BdrvDirtyBitmap>),
    /// A bitmap whose bits changed (clear, merge), with the bits before.
    BitmapBits(Rc<BdrvDirtyBitmap>, HBitmap),
    /// A bitmap enabled or disabled, with whether it was enabled before.
    BitmapEnabled(Rc<BdrvDirtyBitmap>, bool),
}

impl Prepared {
    /// Rolls the action back; a job is only cancelled, and returned to be waited for once
    /// every job of the transaction is (a grouped job waits for the others).
    fn abort(self) -> Option<Rc<Job>> {
        match self {
            Prepared::Job(job) => {
                job.cancel(true);
                return Some(job);
            }
            Prepared::BitmapAdded(bs, bm) => bs.release_dirty_bitmap(&bm),
            Prepared::BitmapBits(bm, bits) => bm.restore_bits(bits),
            Prepared::BitmapEnabled(bm, true) => bm.enable(),
            Prepared::BitmapEnabled(bm, false) => bm.disable(),
        }
        None
    }

    fn commit(self) {
        if let Prepared::Job(job) = self {
            job.start();
        }
    }
}

/// Whether a job action may run in a group: those that are not jobs refuse it
/// (action_check_completion_mode).
fn check_not_grouped(kind: &str, grouped: bool) -> Result<(), QmpError> {
    if grouped {
        return Err(QmpError::generic(format!(
            "Action '{kind}' does not support Transaction property completion-mode = grouped"
        )));
    }
    Ok(())
}

/// Prepares one action.
async fn prepare(
    kind: &str,
    mut data: Args,
    txn: &Option<Rc<JobTxn>>,
) -> Result<Prepared, QmpError> {
    let grouped = txn.is_some();
    match kind {
        "drive-backup" | "blockdev-backup" => Ok(Prepared::Job(
            backup::backup_job(data, kind == "drive-backup", txn.clone()).await?,
        )),
        "block-dirty-bitmap-add" => {
            check_not_grouped(kind, grouped)?;
            let bs = bitmaps::bitmap_node(&mut data)?;
            let name = data.str("name")?;
            let opts = bitmaps::add_options(&mut data)?;
            data.finish()?;
            ops::add(&bs, &name, opts).await?;
            let bm = ops::lookup(&bs, &name)?;
            Ok(Prepared::BitmapAdded(bs, bm))
        }
        "block-dirty-bitmap-clear" => {
            check_not_grouped(kind, grouped)?;
            let (bs, bm) = bitmaps::lookup(&mut data)?;
            data.finish()?;
            let bits = bm.backup_bits();
            ops::clear(&bs, &bm.name().unwrap_or_default())?;
            Ok(Prepared::BitmapBits(bm, bits))
        }
        "block-dirty-bitmap-enable" | "block-dirty-bitmap-disable" => {
            check_not_grouped(kind, grouped)?;
            let (bs, bm) = bitmaps::lookup(&mut data)?;
            data.finish()?;
            let was = bm.enabled();
            let name = bm.name().unwrap_or_default();
            if kind == "block-dirty-bitmap-enable" {
                ops::enable(&bs, &name)?;
            } else {
                ops::disable(&bs, &name)?;
            }
            Ok(Prepared::BitmapEnabled(bm, was))
        }
        "block-dirty-bitmap-merge" => {
            check_not_grouped(kind, grouped)?;
            // The target's bits are saved before the merge changes them.
            let node = data.str("node")?;
            let target = data.str("target")?;
            let bs = super::block::lookup_bs(Some(&node), Some(&node))?;
            let bits = ops::lookup(&bs, &target)?.backup_bits();
            let mut again = serde_json::Map::new();
            again.insert("node".into(), json!(node));
            again.insert("target".into(), json!(target));
            if let Some(list) = data.opt_value("bitmaps") {
                again.insert("bitmaps".into(), list);
            }
            data.finish()?;
            let dst = bitmaps::do_merge(&mut Args::new(again))?;
            Ok(Prepared::BitmapBits(dst, bits))
        }
        "Abort" => {
            data.finish()?;
            Err(QmpError::generic("Transaction aborted using Abort action"))
        }
        "blockdev-snapshot-sync"
        | "blockdev-snapshot"
        | "blockdev-snapshot-internal-sync"
        | "block-dirty-bitmap-remove" => Err(QmpError::generic(format!(
            "Transaction action '{kind}' is not supported yet"
        ))),
        other => Err(QmpError::generic(format!(
            "Invalid parameter 'type': '{other}' is not a transaction action"
        ))),
    }
}

/// The completion mode of the `properties` member: grouped or not.
fn grouped(properties: Option<Value>) -> Result<bool, QmpError> {
    let Some(Value::Object(m)) = properties else {
        return match properties {
            None => Ok(false),
            Some(_) => Err(QmpError::generic(
                "Invalid parameter type for 'properties', expected: object",
            )),
        };
    };
    let mut props = Args::new(m);
    let mode = props.opt_str("completion-mode")?;
    props.finish()?;
    match mode.as_deref() {
        None | Some("individual") => Ok(false),
        Some("grouped") => Ok(true),
        Some(other) => Err(QmpError::generic(format!(
            "Parameter 'completion-mode' does not accept value '{other}'"
        ))),
    }
}

/// Splits the `actions` list into (type, data) pairs.
fn actions(list: Value) -> Result<Vec<(String, Args)>, QmpError> {
    let Value::Array(items) = list else {
        return Err(QmpError::generic(
            "Invalid parameter type for 'actions', expected: array",
        ));
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Object(m) = item else {
                return Err(QmpError::generic(
                    "Invalid parameter type for 'actions[0]', expected: object",
                ));
            };
            let mut a = Args::new(m);
            let kind = a.str("type")?;
            let data = match a.opt_value("data") {
                Some(Value::Object(d)) => d,
                None => Default::default(),
                Some(_) => {
                    return Err(QmpError::generic(
                        "Invalid parameter type for 'data', expected: object",
                    ))
                }
            };
            a.finish()?;
            Ok((kind, Args::new(data)))
        })
        .collect()
}

/// `transaction actions [properties]`.
pub async fn transaction(mut args: Args) -> CmdResult {
    let list = args
        .opt_value("actions")
        .ok_or_else(|| QmpError::generic("Parameter 'actions' is missing"))?;
    let txn = grouped(args.opt_value("properties"))?.then(JobTxn::new);
    args.finish()?;
    let mut done: Vec<Prepared> = Vec::new();
    for (kind, data) in actions(list)? {
        match prepare(&kind, data, &txn).await {
            Ok(p) => done.push(p),
            Err(e) => {
                let mut cancelled = Vec::new();
                while let Some(p) = done.pop() {
                    cancelled.extend(p.abort());
                }
                for job in cancelled {
                    // job_cancel_sync: the command returns once the jobs are gone.
                    let _ = job.wait_concluded().await;
                }
                return Err(e);
            }
        }
    }
    while let Some(p) = done.pop() {
        p.commit();
    }
    Ok(json!({}))
}
