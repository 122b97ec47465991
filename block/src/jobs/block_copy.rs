//! Copying chunks of a node to a target exactly once, whoever asks first: the backup job
//! walking the disk, or the copy-before-write filter saving old data before a guest write
//! overwrites it (QEMU's block/block-copy.c).
//!
//! A bitmap says which chunks still need saving. A chunk being copied is marked busy; a
//! second request for it waits until the first is done and then finds it clean, so old
//! data is never copied after a guest write has replaced it.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use super::job::Job;
use crate::coroutine::CoQueue;
use crate::dirty_bitmap::BdrvDirtyBitmap;
use crate::driver::{RequestFlags, StatusFlags};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::BlockDriverState;
use crate::trace;

/// A failed copy: which side failed and why.
pub struct CopyError {
    /// The source read failed (else the target write).
    pub is_read: bool,
    /// The error.
    pub error: Error,
}

/// The shared copier of one backup (BlockCopyState).
pub struct BlockCopy {
    source: Rc<BlockDriverState>,
    target: Rc<BlockDriverState>,
    /// Chunks not saved yet (the copy bitmap of BlockCopyState): anonymous and disabled,
    /// since guest writes do not make a chunk need saving again; the copy-before-write
    /// node lists it, as QEMU's does.
    pub(crate) bitmap: Rc<BdrvDirtyBitmap>,
    busy: RefCell<Vec<u64>>,
    done: CoQueue,
    /// Writes go to the target compressed (backup's compress=true).
    write_flags: RequestFlags,
    /// The job whose progress counts every chunk saved, by the job or by the filter
    /// (block_copy_set_progress_meter).
    progress: RefCell<Weak<Job>>,
}

impl BlockCopy {
    /// A copier from `source` to `target` in chunks of `cluster_size`; every chunk needs
    /// saving at first.
    pub fn new(
        source: Rc<BlockDriverState>,
        target: Rc<BlockDriverState>,
        cluster_size: u64,
        compress: bool,
    ) -> BlockCopy {
        let len = source.getlength();
        let bitmap = Rc::new(BdrvDirtyBitmap::new(None, cluster_size as u32, len));
        bitmap.disable();
        bitmap.set_dirty(0, len);
        BlockCopy {
            source,
            target,
            bitmap,
            busy: RefCell::new(Vec::new()),
            done: CoQueue::new(),
            write_flags: if compress {
                RequestFlags::WRITE_COMPRESSED
            } else {
                RequestFlags::empty()
            },
            progress: RefCell::new(Weak::new()),
        }
    }

    /// Makes every chunk saved count as progress of `job`.
    pub fn set_progress_meter(&self, job: &Rc<Job>) {
        *self.progress.borrow_mut() = Rc::downgrade(job);
    }

    /// The node copied from.
    pub fn source(&self) -> &Rc<BlockDriverState> {
        &self.source
    }

    /// The node copied to.
    pub fn target(&self) -> &Rc<BlockDriverState> {
        &self.target
    }

    /// The chunk size.
    pub fn cluster_size(&self) -> u64 {
        self.bitmap.granularity() as u64
    }

    /// Drops chunks the source's top layer does not allocate (sync=top:
    /// block_copy_reset_unallocated); returns the bytes left to save.
    pub async fn reset_unallocated(&self) -> Result<u64> {
        let len = self.source.getlength();
        let mut offset = 0;
        while offset < len {
            let (allocated, n) = self.source.co_is_allocated(offset, len - offset).await?;
            let n = n.max(1);
            if !allocated {
                self.bitmap.reset_covered(offset, n);
            }
            offset += n;
        }
        Ok(self.bitmap.count())
    }

    /// Saves every chunk of `[offset, offset + bytes)` not saved yet (block_copy); returns
    /// the bytes this call copied.
    pub async fn copy(&self, offset: u64, bytes: u64) -> std::result::Result<u64, CopyError> {
        let cluster = self.cluster_size();
        let len = self.source.getlength();
        let mut chunk = offset - offset % cluster;
        let end = (offset + bytes).min(len);
        let mut copied = 0;
        while chunk < end {
            self.done
                .wait_while(|| self.busy.borrow().contains(&chunk))
                .await;
            if self.bitmap.get(chunk) {
                let n = cluster.min(len - chunk);
                self.busy.borrow_mut().push(chunk);
                self.bitmap.reset_covered(chunk, n);
                let result = self.copy_chunk(chunk, n).await;
                self.busy.borrow_mut().retain(|c| *c != chunk);
                self.done.restart_all();
                if let Err(e) = result {
                    self.bitmap.set_dirty(chunk, n);
                    return Err(e);
                }
                copied += n;
                if let Some(job) = self.progress.borrow().upgrade() {
                    job.progress_update(n);
                }
            }
            chunk += cluster;
        }
        Ok(copied)
    }

    async fn copy_chunk(&self, offset: u64, bytes: u64) -> std::result::Result<(), CopyError> {
        trace!(
            block_copy_process,
            "bcs {:p} start {} bytes {}",
            self,
            offset,
            bytes
        );
        // Zeroes are written as zeroes, not copied (block_copy_do_copy's zeroes case).
        let (status, _) = self
            .source
            .co_block_status_above(None, true, offset, bytes)
            .await
            .map_err(|error| CopyError {
                is_read: true,
                error,
            })?;
        if status.flags.contains(StatusFlags::ZERO) && status.bytes >= bytes {
            return self
                .target
                .co_pwrite_zeroes(
                    offset,
                    bytes,
                    (self.write_flags - RequestFlags::WRITE_COMPRESSED) | RequestFlags::MAY_UNMAP,
                )
                .await
                .map_err(|error| CopyError {
                    is_read: false,
                    error,
                });
        }
        let buf = IoVector::alloc(bytes as usize);
        self.source
            .co_preadv(offset, &buf, RequestFlags::empty())
            .await
            .map_err(|error| CopyError {
                is_read: true,
                error,
            })?;
        self.target
            .co_pwritev(offset, &buf, self.write_flags)
            .await
            .map_err(|error| CopyError {
                is_read: false,
                error,
            })
    }
}
