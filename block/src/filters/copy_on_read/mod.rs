//! copy-on-read: a filter whose reads copy what the image below it shows from its backing
//! chain into that image (QEMU's block/copy-on-read.c).
//!
//! The filter itself only marks reads: it passes them to its `file` child with the
//! copy-on-read request flag, and the generic request path of the child
//! ([`crate::io`]'s copy_on_read) does the copying. The `bottom` option names the lowest node
//! of the child's backing chain whose data is copied; data found below it is read through
//! without being copied.

use std::rc::Rc;

use async_trait::async_trait;

use crate::driver::{BlockDriver, DriverClass, RequestFlags, StatusFlags};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::BlockDriverState;
use crate::open::open_protocol_child;
use crate::options::Options;

/// The copy-on-read driver class (`driver=copy-on-read`).
pub static COPY_ON_READ: DriverClass = DriverClass {
    format_name: "copy-on-read",
    protocol_name: None,
    is_format: false,
    probe: None,
    open: |bs, options| Box::pin(open(bs, options)),
    create: None,
    create_options: &[],
};

/// An open copy-on-read node (BDRVStateCOR).
pub struct CopyOnRead {
    /// The node below which nothing is copied: the backing of `bottom`; None copies from the
    /// whole chain.
    below_bottom: Option<Rc<BlockDriverState>>,
}

async fn open(bs: &BlockDriverState, options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let filename = options.take("filename");
    let bottom = options.take("bottom");
    let child = open_protocol_child("file", filename, options, bs.open_flags()).await?;
    // The copies are writes to the child: a read-only graph cannot take them.
    if bs.is_read_only() || child.is_read_only() {
        return Err(Error::invalid("Block node is read-only"));
    }
    let below_bottom = match bottom {
        None => None,
        Some(name) => {
            let bottom = find_in_backing_chain(&child, &name).ok_or_else(|| {
                Error::invalid(format!(
                    "Bottom node '{name}' is not in the backing chain of the filtered node"
                ))
            })?;
            bottom.backing()
        }
    };
    bs.set_filename(child.filename());
    bs.attach_child("file", child);
    Ok(Box::new(CopyOnRead { below_bottom }))
}

/// The node named `name` among the backing files of `top` (not `top` itself).
fn find_in_backing_chain(top: &BlockDriverState, name: &str) -> Option<Rc<BlockDriverState>> {
    let mut node = top.backing();
    while let Some(n) = node {
        if n.node_name() == name {
            return Some(n);
        }
        node = n.backing();
    }
    None
}

impl CopyOnRead {
    /// How many bytes at `offset` read with (true) or without (false) copying: with a
    /// bottom, only data allocated at or above it is copied.
    async fn copy_extent(
        &self,
        file: &BlockDriverState,
        offset: u64,
        bytes: u64,
    ) -> Result<(bool, u64)> {
        let Some(below) = &self.below_bottom else {
            return Ok((true, bytes));
        };
        let (status, _) = file
            .co_block_status_above(Some(below), false, offset, bytes)
            .await?;
        if status.bytes == 0 {
            return Ok((false, bytes));
        }
        Ok((status.flags.contains(StatusFlags::ALLOCATED), status.bytes))
    }
}

#[async_trait(?Send)]
impl BlockDriver for CopyOnRead {
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        let file = super::filtered(bs);
        let bytes = qiov.len() as u64;
        let mut done = 0;
        while done < bytes {
            let (copy, n) = self.copy_extent(&file, offset + done, bytes - done).await?;
            let n = n.min(bytes - done);
            let extra = if copy {
                RequestFlags::COPY_ON_READ
            } else {
                RequestFlags::empty()
            };
            let part = qiov.slice(done as usize, n as usize);
            file.co_preadv(offset + done, &part, flags | extra).await?;
            done += n;
        }
        Ok(())
    }

    fn supported_write_flags(&self) -> RequestFlags {
        RequestFlags::FUA
    }

    fn is_filter(&self) -> bool {
        true
    }

    fn reopen_keeps_options(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
