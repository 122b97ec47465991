//! Internal snapshots and the VM state area, seen from above the format driver (QEMU's
//! block/snapshot.c and the vmstate part of block/io.c).
//!
//! A format that keeps snapshots inside the image (qcow2) implements the `co_snapshot_*`
//! hooks of [`crate::driver::BlockDriver`]; these functions add what every caller needs: the
//! lookup rules (by id, by name), the error texts QEMU's callers print, and the refresh of
//! the node's length after a snapshot with another disk size was applied. A node whose
//! driver has no snapshots of its own and whose only child is its `file` (raw over rbd)
//! passes the operation down to that child, as QEMU's bdrv_snapshot_fallback does.

use std::future::Future;
use std::rc::Rc;

pub use crate::driver::SnapshotInfo;
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::BlockDriverState;

fn no_internal_snapshots(bs: &BlockDriverState) -> Error {
    Error::not_supported(format!(
        "Block format '{}' used by device '{}' does not support internal snapshots",
        bs.format_name(),
        bs.node_name()
    ))
}

/// The child that snapshot operations fall back to when the driver has none: the `file`
/// child, when it is the node's only child (bdrv_snapshot_fallback).
fn fallback(bs: &BlockDriverState, e: &Error) -> Option<Rc<BlockDriverState>> {
    let unsupported = e.errno() == libc::ENOTSUP && e.message().is_none();
    match bs.children().as_slice() {
        [only] if unsupported && only.name == "file" => Some(only.bs.clone()),
        _ => None,
    }
}

/// `result` of the node's driver, or when the driver has no snapshots, `again` on the
/// fallback child.
async fn or_fallback<F: Future<Output = Result<()>>>(
    bs: &BlockDriverState,
    result: Result<()>,
    again: impl FnOnce(Rc<BlockDriverState>) -> F,
) -> Result<()> {
    match result {
        Err(e) => match fallback(bs, &e) {
            Some(file) => again(file).await,
            None => Err(e),
        },
        ok => ok,
    }
}

/// The node's snapshots (bdrv_snapshot_list); ENOTSUP for formats without any.
pub fn bdrv_snapshot_list(bs: &BlockDriverState) -> Result<Vec<SnapshotInfo>> {
    bs.drv()
        .snapshot_list(bs)
        .or_else(|e| match fallback(bs, &e) {
            Some(file) => bdrv_snapshot_list(&file),
            None => Err(e),
        })
}

/// The first snapshot named `name` (bdrv_snapshot_find: names only, not ids).
pub fn bdrv_snapshot_find(bs: &BlockDriverState, name: &str) -> Result<SnapshotInfo> {
    bdrv_snapshot_list(bs)?
        .into_iter()
        .find(|sn| sn.name == name)
        .ok_or_else(|| Error::from_errno(libc::ENOENT))
}

/// Takes a snapshot of the node's current state (bdrv_snapshot_create).
pub async fn bdrv_snapshot_create(bs: &BlockDriverState, sn: &SnapshotInfo) -> Result<()> {
    // A write planned before the snapshot must not land in a cluster it makes shared
    // (QEMU drains the node around snapshot operations).
    bs.in_flight.drained().await;
    or_fallback(
        bs,
        bs.drv().co_snapshot_create(bs, sn).await,
        |file| async move { Box::pin(bdrv_snapshot_create(&file, sn)).await },
    )
    .await
}

/// Reverts the node to the snapshot with this id, or else this name (bdrv_snapshot_goto).
pub async fn bdrv_snapshot_goto(bs: &BlockDriverState, id_or_name: &str) -> Result<()> {
    bs.in_flight.drained().await;
    let result = or_fallback(
        bs,
        bs.drv().co_snapshot_goto(bs, id_or_name).await,
        |file| async move { Box::pin(bdrv_snapshot_goto(&file, id_or_name)).await },
    )
    .await;
    match result {
        Err(e) if e.errno() == libc::ENOTSUP && e.message().is_none() => Err(Error::new(
            libc::ENOTSUP,
            "Block driver does not support snapshots",
        )),
        Err(e) if e.message().is_none() => Err(Error::with_errno_message(
            e.errno(),
            "Failed to load snapshot",
        )),
        Err(e) => Err(e),
        Ok(()) => bs.refresh_total_bytes().await.map(|_| ()),
    }
}

/// Deletes the snapshot that matches `id` and/or `name` (bdrv_snapshot_delete).
pub async fn bdrv_snapshot_delete(
    bs: &BlockDriverState,
    id: Option<&str>,
    name: Option<&str>,
) -> Result<()> {
    if id.is_none() && name.is_none() {
        return Err(Error::invalid(
            "snapshot_id and snapshot_name are both NULL",
        ));
    }
    bs.in_flight.drained().await;
    let result = or_fallback(
        bs,
        bs.drv().co_snapshot_delete(bs, id, name).await,
        |file| async move { Box::pin(bdrv_snapshot_delete(&file, id, name)).await },
    )
    .await;
    match result {
        Err(e) if e.errno() == libc::ENOTSUP && e.message().is_none() => {
            Err(no_internal_snapshots(bs))
        }
        other => other,
    }
}

/// Shows a snapshot read-only in place of the current state, until the node is closed
/// (bdrv_snapshot_load_tmp). The node must be read-only; its length does not change.
pub async fn bdrv_snapshot_load_tmp(
    bs: &BlockDriverState,
    id: Option<&str>,
    name: Option<&str>,
) -> Result<()> {
    if id.is_none() && name.is_none() {
        return Err(Error::invalid("snapshot_id and name are both NULL"));
    }
    if !bs.is_read_only() {
        return Err(Error::invalid("Device is not readonly"));
    }
    let result = or_fallback(
        bs,
        bs.drv().co_snapshot_load_tmp(bs, id, name).await,
        |file| async move { Box::pin(bdrv_snapshot_load_tmp(&file, id, name)).await },
    )
    .await;
    match result {
        Err(e) if e.errno() == libc::ENOTSUP && e.message().is_none() => {
            Err(no_internal_snapshots(bs))
        }
        other => other,
    }
}

/// [`bdrv_snapshot_load_tmp`] by id first, then by name
/// (bdrv_snapshot_load_tmp_by_id_or_name).
pub async fn bdrv_snapshot_load_tmp_by_id_or_name(
    bs: &BlockDriverState,
    id_or_name: &str,
) -> Result<()> {
    match bdrv_snapshot_load_tmp(bs, Some(id_or_name), None).await {
        Err(e) if matches!(e.errno(), libc::ENOENT | libc::EINVAL) => {
            bdrv_snapshot_load_tmp(bs, None, Some(id_or_name)).await
        }
        other => other,
    }
}

/// Writes VM state at `pos` of the node's VM state area (bdrv_save_vmstate).
pub async fn bdrv_save_vmstate(bs: &BlockDriverState, qiov: &IoVector, pos: u64) -> Result<()> {
    bs.drv().co_save_vmstate(bs, qiov, pos).await
}

/// Reads VM state from `pos` of the node's VM state area (bdrv_load_vmstate).
pub async fn bdrv_load_vmstate(bs: &BlockDriverState, qiov: &IoVector, pos: u64) -> Result<()> {
    bs.drv().co_load_vmstate(bs, qiov, pos).await
}
