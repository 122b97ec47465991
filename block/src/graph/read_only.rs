//! Making a node writable while a job writes to it, and read-only again when it is done
//! (QEMU's bdrv_reopen_set_read_only in block.c: the `read-only` part of a reopen). Stream
//! writes into an intermediate backing node and commit into its base, both opened read-only
//! as backing files; the node's driver switches in place and the nodes below it other than
//! its own backing chain follow, as they inherited the mode when opened.

use std::rc::Rc;

use crate::error::{Error, Result};
use crate::node::BlockDriverState;

/// Reopens `bs` read-only or read-write. Refused with QEMU's "Block node is read-only"
/// for a node that was opened read-only on purpose rather than as a backing file.
pub async fn bdrv_reopen_set_read_only(bs: &Rc<BlockDriverState>, read_only: bool) -> Result<()> {
    if bs.is_read_only() == read_only {
        return Ok(());
    }
    if !read_only && !bs.allow_rdwr() {
        return Err(Error::new(libc::EPERM, "Block node is read-only"));
    }
    let below: Vec<Rc<BlockDriverState>> = bs
        .children()
        .into_iter()
        .filter(|c| c.name != "backing")
        .map(|c| c.bs)
        .collect();
    if read_only {
        // What the node still caches must reach its file while that is writable.
        bs.co_flush().await?;
    } else {
        for child in &below {
            Box::pin(bdrv_reopen_set_read_only(child, false)).await?;
        }
    }
    bs.drv().co_reopen_read_only(bs, read_only).await?;
    bs.set_read_only(read_only);
    if read_only {
        for child in &below {
            Box::pin(bdrv_reopen_set_read_only(child, true)).await?;
        }
    }
    Ok(())
}

/// A node made writable for a job; [`ReadWriteClaim::restore`] makes it read-only again.
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

    /// Reopens the node read-only again; a failure is reported, the node stays writable.
    pub async fn restore(self) {
        if let Err(e) = bdrv_reopen_set_read_only(&self.bs, true).await {
            crate::error::error_report(&format!(
                "Could not reopen '{}' read-only: {e}",
                self.bs.node_name()
            ));
        }
    }
}
