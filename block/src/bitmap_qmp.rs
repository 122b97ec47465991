//! The operations behind QMP's block-dirty-bitmap-add/-remove/-clear/-enable/-disable/-merge
//! and x-debug-block-dirty-bitmap-sha256, which `qemu-img bitmap` and `convert --bitmaps`
//! perform too (QEMU's block/monitor/bitmap-qmp-cmds.c). They take the node itself: finding
//! it by node or device name ("Node '%s' not found") is the monitor's job.

use std::rc::Rc;

use crate::dirty_bitmap::{BdrvDirtyBitmap, BitmapCheck, MIN_GRANULARITY};
use crate::error::{Error, Result};
use crate::node::BlockDriverState;

/// The named bitmap of a node, or QEMU's "not found" error (block_dirty_bitmap_lookup).
pub fn lookup(bs: &BlockDriverState, name: &str) -> Result<Rc<BdrvDirtyBitmap>> {
    bs.find_dirty_bitmap(name)
        .ok_or_else(|| Error::invalid(format!("Dirty bitmap '{name}' not found")))
}

/// The arguments of block-dirty-bitmap-add beyond node and name.
#[derive(Clone, Copy, Debug, Default)]
pub struct AddOptions {
    /// Bytes per bit; None picks the node's default.
    pub granularity: Option<u32>,
    /// Store the bitmap in the image.
    pub persistent: bool,
    /// Create it not recording writes.
    pub disabled: bool,
}

/// block-dirty-bitmap-add.
pub async fn add(bs: &BlockDriverState, name: &str, opts: AddOptions) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("Bitmap name cannot be empty"));
    }
    let granularity = match opts.granularity {
        Some(g) if g < MIN_GRANULARITY || !g.is_power_of_two() => {
            return Err(Error::invalid(
                "Granularity must be power of 2 and at least 512",
            ))
        }
        Some(g) => g,
        None => bs.default_bitmap_granularity(),
    };
    if opts.persistent {
        bs.co_can_store_new_dirty_bitmap(name, granularity).await?;
    }
    let bm = bs.create_dirty_bitmap(granularity, Some(name))?;
    if opts.disabled {
        bm.disable();
    }
    bm.set_persistence(opts.persistent);
    Ok(())
}

/// block-dirty-bitmap-remove: drops the bitmap, and its copy in the image.
pub async fn remove(bs: &BlockDriverState, name: &str) -> Result<()> {
    let bm = lookup_checked(bs, name, BitmapCheck::BUSY_RO)?;
    if bm.persistent() {
        bs.co_remove_persistent_dirty_bitmap(name).await?;
    }
    bs.release_dirty_bitmap(&bm);
    Ok(())
}

/// The named bitmap, refused in any of the `what` states.
fn lookup_checked(
    bs: &BlockDriverState,
    name: &str,
    what: BitmapCheck,
) -> Result<Rc<BdrvDirtyBitmap>> {
    let bm = lookup(bs, name)?;
    bm.check(what)?;
    Ok(bm)
}

/// block-dirty-bitmap-clear.
pub fn clear(bs: &BlockDriverState, name: &str) -> Result<()> {
    lookup_checked(bs, name, BitmapCheck::DEFAULT)?.clear();
    Ok(())
}

/// block-dirty-bitmap-enable.
pub fn enable(bs: &BlockDriverState, name: &str) -> Result<()> {
    lookup_checked(bs, name, BitmapCheck::ALLOW_RO)?.enable();
    Ok(())
}

/// block-dirty-bitmap-disable.
pub fn disable(bs: &BlockDriverState, name: &str) -> Result<()> {
    lookup_checked(bs, name, BitmapCheck::ALLOW_RO)?.disable();
    Ok(())
}

/// Merges `src` into `dst` after QEMU's checks (bdrv_merge_dirty_bitmap); `dst` is
/// unchanged on failure.
pub fn merge_bitmap(dst: &BdrvDirtyBitmap, src: &BdrvDirtyBitmap) -> Result<()> {
    dst.check(BitmapCheck::DEFAULT)?;
    src.check(BitmapCheck::ALLOW_RO)?;
    if src.size() != dst.size() {
        return Err(Error::invalid(format!(
            "Bitmaps are of different sizes (destination size is {}, source size is {}) and can't be merged",
            dst.size(),
            src.size()
        )));
    }
    dst.merge_bits_from(src);
    Ok(())
}

/// block-dirty-bitmap-merge: every source, each a (node, bitmap name), merged into the
/// `target` bitmap of `bs` all or nothing (block_dirty_bitmap_merge).
pub fn merge(
    bs: &BlockDriverState,
    target: &str,
    sources: &[(&BlockDriverState, &str)],
) -> Result<()> {
    let dst = lookup(bs, target)?;
    let scratch = BdrvDirtyBitmap::new(None, dst.granularity(), dst.size());
    for (node, name) in sources {
        let src = lookup(node, name)?;
        merge_bitmap(&scratch, &src)?;
    }
    merge_bitmap(&dst, &scratch)
}

/// x-debug-block-dirty-bitmap-sha256.
pub fn sha256(bs: &BlockDriverState, name: &str) -> Result<String> {
    Ok(lookup(bs, name)?.sha256())
}
