//! `convert --bitmaps`: copying the source's persistent dirty bitmaps into the new image,
//! optionally skipping inconsistent ones (convert_check_bitmaps and convert_copy_bitmaps in
//! qemu-img.c).

use block::bitmap_qmp::{self as qmp, AddOptions};
use block::BlockDriverState;

use super::cli::{error_report, warn_report};

/// Before anything is created: the source must hold bitmaps, and none it would copy may be
/// inconsistent unless skipped (convert_check_bitmaps).
pub fn check_source(src: &BlockDriverState, skip_broken: bool) -> bool {
    if !src.supports_persistent_dirty_bitmap() {
        error_report("Source lacks bitmap support");
        return false;
    }
    let broken = src
        .dirty_bitmaps()
        .into_iter()
        .find(|b| b.persistent() && b.inconsistent() && !skip_broken);
    if let Some(bm) = broken {
        error_report(&format!(
            "Cannot copy inconsistent bitmap '{}'",
            bm.name().unwrap_or_default()
        ));
        eprintln!("Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it");
        return false;
    }
    true
}

/// Once the target is open: its format must be able to store bitmaps.
pub fn check_target(target: &BlockDriverState) -> bool {
    if target.supports_persistent_dirty_bitmap() {
        return true;
    }
    error_report(&format!(
        "Format driver '{}' does not support bitmaps",
        target.format_name()
    ));
    false
}

/// After the data: one bitmap in the target per persistent bitmap of the source, with the
/// same granularity, state and contents (convert_copy_bitmaps).
pub async fn copy(src: &BlockDriverState, dst: &BlockDriverState, skip_broken: bool) -> bool {
    for bm in src.dirty_bitmaps() {
        if !bm.persistent() {
            continue;
        }
        let name = bm.name().unwrap_or_default();
        if skip_broken && bm.inconsistent() {
            warn_report(&format!("Skipping inconsistent bitmap '{name}'"));
            continue;
        }
        let opts = AddOptions {
            granularity: Some(bm.granularity()),
            persistent: true,
            disabled: !bm.enabled(),
        };
        if let Err(e) = qmp::add(dst, &name, opts).await {
            error_report(&format!("Failed to create bitmap {name}: {e}"));
            return false;
        }
        if let Err(e) = qmp::merge(dst, &name, &[(src, &name)]) {
            error_report(&format!("Failed to populate bitmap {name}: {e}"));
            let _ = qmp::remove(dst, &name).await;
            return false;
        }
    }
    true
}
