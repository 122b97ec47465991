//! What becomes of a mirror target's backing chain when the job completes (QEMU's
//! MirrorBackingMode and the backing step of mirror_exit_common in block/mirror.c).
//!
//! drive-mirror opens its target without a backing file, whatever the image names: the job
//! copies what the target must hold itself, and the chain below is settled at completion,
//! before the guest moves to the target. blockdev-mirror and active commit leave the
//! target's chain as its user built it.

use std::rc::Rc;

use super::SyncMode;
use crate::error::Result;
use crate::node::BlockDriverState;
use crate::options::Options;

/// How the target gets its backing chain on completion (MirrorBackingMode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackingMode {
    /// The source's: the source itself for sync=none, the source's backing node for
    /// sync=top, none for sync=full (drive-mirror creating the image:
    /// MIRROR_SOURCE_BACKING_CHAIN).
    Source,
    /// The backing file the target image names, opened now (drive-mirror mode=existing:
    /// MIRROR_OPEN_BACKING_CHAIN).
    Open,
    /// As it is (blockdev-mirror, active commit: MIRROR_LEAVE_BACKING_CHAIN).
    #[default]
    Leave,
}

/// Links `target` onto the backing chain `mode` gives it, `source` being the node the
/// job mirrors (below its filter).
pub(super) async fn settle_target_backing(
    mode: BackingMode,
    sync: SyncMode,
    source: &Rc<BlockDriverState>,
    target: &Rc<BlockDriverState>,
) -> Result<()> {
    let target = target.skip_filters();
    match mode {
        BackingMode::Leave => Ok(()),
        BackingMode::Source => {
            let backing = match sync {
                SyncMode::None => Some(source.clone()),
                SyncMode::Top => source.skip_filters().backing().map(|b| b.skip_filters()),
                SyncMode::Full => None,
            };
            let current = target.backing();
            if current.as_ref().map(Rc::as_ptr) == backing.as_ref().map(Rc::as_ptr) {
                return Ok(());
            }
            match backing {
                Some(b) => target.attach_child("backing", b),
                None => target.detach_child("backing"),
            }
            Ok(())
        }
        BackingMode::Open => {
            if target.backing().is_some() {
                return Ok(());
            }
            let Some((name, format)) = target.drv().backing_file_name(&target) else {
                return Ok(());
            };
            let node =
                crate::open::bdrv_open_backing(&target, &name, format.as_deref(), Options::new())
                    .await?;
            target.attach_child("backing", node);
            Ok(())
        }
    }
}
