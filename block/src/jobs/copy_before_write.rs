//! copy-before-write: a filter that, before a write reaches the node below it, saves the
//! data about to be overwritten to a target — what a backup needs to be a point-in-time
//! copy while the guest keeps writing (QEMU's block/copy-before-write.c).
//!
//! The saving is [`crate::jobs::block_copy`]'s, shared with the backup job that walks the
//! rest of the disk. A failed save fails the guest's write (QEMU's default
//! on-cbw-error=break-guest-write): the backup must never miss old data silently.

use std::rc::Rc;

use async_trait::async_trait;

use crate::dirty_bitmap::BdrvDirtyBitmap;
use crate::driver::{BlockDriver, DriverClass, PreallocMode, RequestFlags};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::jobs::block_copy::BlockCopy;
use crate::node::BlockDriverState;

/// The copy-before-write class (`driver=copy-before-write`, inserted by backup).
pub static COPY_BEFORE_WRITE: DriverClass = DriverClass {
    format_name: "copy-before-write",
    protocol_name: None,
    is_format: false,
    probe: None,
    open: |_, _| {
        Box::pin(async {
            Err(Error::not_supported(
                "copy-before-write with blockdev-add is not supported yet; backup inserts it",
            ))
        })
    },
    create: None,
    create_options: &[],
};

/// An open copy-before-write node (BDRVCopyBeforeWriteState).
pub struct CopyBeforeWrite {
    bcs: Rc<BlockCopy>,
    /// The chunks guest writes had saved first (done_bitmap): the target holds the
    /// point-in-time data there, whatever the source holds now.
    done: Rc<BdrvDirtyBitmap>,
    /// The chunks the point-in-time view covers (access_bitmap): every chunk the copier had
    /// to save when the filter was inserted.
    access: Rc<BdrvDirtyBitmap>,
}

impl CopyBeforeWrite {
    /// A filter saving through `bcs` before each write.
    pub fn new(bcs: Rc<BlockCopy>) -> CopyBeforeWrite {
        let bitmap = |size| {
            let bm = BdrvDirtyBitmap::new(None, bcs.cluster_size() as u32, size);
            bm.disable();
            Rc::new(bm)
        };
        let done = bitmap(bcs.bitmap.size());
        let access = bitmap(bcs.bitmap.size());
        access.merge_bits_from(&bcs.bitmap);
        CopyBeforeWrite { bcs, done, access }
    }

    /// The bitmaps the node keeps, oldest first: the copier's, then its own (cbw_open
    /// creates them on the node in that order, so that queries list them).
    pub fn bitmaps(&self) -> [Rc<BdrvDirtyBitmap>; 3] {
        [
            self.bcs.bitmap.clone(),
            self.done.clone(),
            self.access.clone(),
        ]
    }

    /// Saves what `[offset, offset + bytes)` holds now (cbw_do_copy_before_write).
    async fn save(&self, offset: u64, bytes: u64) -> Result<()> {
        self.bcs.copy(offset, bytes).await.map_err(|e| e.error)?;
        self.done.set_dirty(offset, bytes);
        Ok(())
    }
}

#[async_trait(?Send)]
impl BlockDriver for CopyBeforeWrite {
    async fn co_pwritev(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        self.save(offset, qiov.len() as u64).await?;
        crate::filters::filtered(bs)
            .co_pwritev(offset, qiov, flags)
            .await
    }

    async fn co_pwrite_zeroes(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        self.save(offset, bytes).await?;
        crate::filters::filtered(bs)
            .co_pwrite_zeroes(offset, bytes, flags)
            .await
    }

    async fn co_pdiscard(&self, bs: &BlockDriverState, offset: u64, bytes: u64) -> Result<()> {
        self.save(offset, bytes).await?;
        crate::filters::filtered(bs)
            .co_pdiscard(offset, bytes)
            .await
    }

    async fn co_flush_to_disk(&self, bs: &BlockDriverState) -> Result<()> {
        crate::filters::filtered(bs).co_flush().await
    }

    async fn co_truncate(
        &self,
        _bs: &BlockDriverState,
        _offset: u64,
        _exact: bool,
        _prealloc: PreallocMode,
    ) -> Result<()> {
        // The backup's target has the old size: the disk cannot change under it.
        Err(Error::new(
            libc::EPERM,
            "Cannot resize a node under copy-before-write",
        ))
    }

    fn supported_write_flags(&self) -> RequestFlags {
        RequestFlags::FUA
    }

    fn is_filter(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
