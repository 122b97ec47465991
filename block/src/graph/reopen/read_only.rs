//! Making a node writable while a job writes to it, and read-only again when it is done
//! (QEMU's bdrv_reopen_set_read_only in block.c): a reopen of the node with its old options
//! and only `read-only` changed, through the same [`bdrv_reopen_multiple`] as
//! blockdev-reopen. Stream writes into an intermediate backing node and commit into its
//! base, both opened read-only as backing files; the children the node opened follow it
//! unless they were given `read-only` themselves.

use std::rc::Rc;

use super::{bdrv_reopen_multiple, ReopenRequest, NULL_CHILD};
use crate::error::Result;
use crate::node::{BlockDriverState, DetectZeroes};
use crate::options::Options;

/// Makes `bs` read-only or writable, keeping its other options
/// (bdrv_reopen_set_read_only with keep_old_opts).
pub async fn bdrv_reopen_set_read_only(bs: &Rc<BlockDriverState>, read_only: bool) -> Result<()> {
    if bs.is_read_only() == read_only {
        return Ok(());
    }
    let mut options = Options::new();
    for (k, v) in bs.explicit_options.borrow().iter() {
        options.set(k, v);
    }
    for c in bs.children() {
        options.set(&c.name, c.bs.node_name());
    }
    if bs.backing().is_none() {
        options.set("backing", NULL_CHILD);
    }
    options.set("read-only", if read_only { "on" } else { "off" });
    let flags = bs.open_flags();
    let onoff = |b: bool| if b { "on" } else { "off" };
    options.set_default("cache.direct", onoff(flags.cache.direct));
    options.set_default("cache.no-flush", onoff(flags.cache.no_flush));
    options.set_default("discard", if flags.unmap { "unmap" } else { "ignore" });
    options.set_default("force-share", onoff(flags.force_share));
    let detect = match bs.detect_zeroes() {
        DetectZeroes::Off => "off",
        DetectZeroes::On => "on",
        DetectZeroes::Unmap => "unmap",
    };
    options.set_default("detect-zeroes", detect);
    bdrv_reopen_multiple(vec![ReopenRequest {
        bs: bs.clone(),
        options,
    }])
    .await?;
    Ok(())
}

/// A node made writable for a job; [`ReadWriteClaim::restore`] makes it read-only again
/// (the `bs_read_only` / `base_read_only` a QEMU job remembers).
pub struct ReadWriteClaim {
    bs: Rc<BlockDriverState>,
}

impl ReadWriteClaim {
    /// Makes `bs` writable if it is read-only: `Some` when it had to be reopened, to be
    /// restored when the job ends.
    pub async fn take(bs: &Rc<BlockDriverState>) -> Result<Option<ReadWriteClaim>> {
        if !bs.is_read_only() {
            return Ok(None);
        }
        bdrv_reopen_set_read_only(bs, false).await?;
        Ok(Some(ReadWriteClaim { bs: bs.clone() }))
    }

    /// Reopens the node read-only again, once the job gave up its write permission; a
    /// failure is reported and the node stays writable (QEMU's stream_clean/commit_clean
    /// ignore it too).
    pub async fn restore(self) {
        if let Err(e) = bdrv_reopen_set_read_only(&self.bs, true).await {
            crate::error::error_report(&format!(
                "Could not reopen '{}' read-only: {e}",
                self.bs.node_name()
            ));
        }
    }
}
