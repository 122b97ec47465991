//! The dirty bitmaps of one node: creation, lookup, release, the hook every completed write
//! calls, and the successor dance of an operation that holds a bitmap (the bs-level half of
//! QEMU's block/dirty-bitmap.c).
//!
//! The list keeps QEMU's order: a new bitmap goes to the front (QLIST_INSERT_HEAD), which is
//! the order in which a qcow2 image appends bitmaps it has not stored yet.

use std::rc::Rc;

use super::BlockDriverState;
use crate::dirty_bitmap::{BdrvDirtyBitmap, BitmapCheck, MAX_NAME_SIZE};
use crate::error::{Error, Result};
use crate::trace;

impl BlockDriverState {
    /// Adds a clean, enabled bitmap covering the whole node (bdrv_create_dirty_bitmap).
    pub fn create_dirty_bitmap(
        &self,
        granularity: u32,
        name: Option<&str>,
    ) -> Result<Rc<BdrvDirtyBitmap>> {
        self.create_dirty_bitmap_sized(granularity, name, self.total_bytes.get())
    }

    /// [`BlockDriverState::create_dirty_bitmap`] for a node of `size` bytes: what a format
    /// loading bitmaps while it opens uses, before the node knows its length.
    pub fn create_dirty_bitmap_sized(
        &self,
        granularity: u32,
        name: Option<&str>,
        size: u64,
    ) -> Result<Rc<BdrvDirtyBitmap>> {
        if let Some(name) = name {
            if self.find_dirty_bitmap(name).is_some() {
                return Err(Error::invalid(format!("Bitmap already exists: {name}")));
            }
            if name.len() > MAX_NAME_SIZE {
                return Err(Error::invalid(format!("Bitmap name too long: {name}")));
            }
        }
        let bm = Rc::new(BdrvDirtyBitmap::new(name, granularity, size));
        trace!(
            bdrv_dirty_bitmap_create,
            "bs {:p} name {} granularity {}",
            self,
            name.unwrap_or(""),
            granularity
        );
        self.dirty_bitmaps.borrow_mut().insert(0, bm.clone());
        Ok(bm)
    }

    /// Puts a bitmap made elsewhere on the node's list, as the newest: a filter's own
    /// bitmaps, made before the node is (the copy-before-write ones).
    pub(crate) fn add_dirty_bitmap(&self, bitmap: Rc<BdrvDirtyBitmap>) {
        self.dirty_bitmaps.borrow_mut().insert(0, bitmap);
    }

    /// The named bitmap, if the node has one (bdrv_find_dirty_bitmap).
    pub fn find_dirty_bitmap(&self, name: &str) -> Option<Rc<BdrvDirtyBitmap>> {
        self.dirty_bitmaps
            .borrow()
            .iter()
            .find(|b| b.name.borrow().as_deref() == Some(name))
            .cloned()
    }

    /// Every bitmap of the node, newest first (FOR_EACH_DIRTY_BITMAP).
    pub fn dirty_bitmaps(&self) -> Vec<Rc<BdrvDirtyBitmap>> {
        self.dirty_bitmaps.borrow().clone()
    }

    /// Whether the node has a named bitmap (bdrv_has_named_bitmaps).
    pub fn has_named_bitmaps(&self) -> bool {
        self.dirty_bitmaps
            .borrow()
            .iter()
            .any(|b| b.name().is_some())
    }

    /// Drops a bitmap from the node; the image copy of a persistent one stays
    /// (bdrv_release_dirty_bitmap).
    pub fn release_dirty_bitmap(&self, bitmap: &Rc<BdrvDirtyBitmap>) {
        trace!(
            bdrv_dirty_bitmap_release,
            "bs {:p} name {}",
            self,
            bitmap.shown_name()
        );
        self.dirty_bitmaps
            .borrow_mut()
            .retain(|b| !Rc::ptr_eq(b, bitmap));
    }

    /// Drops every named bitmap, as closing a node does (bdrv_release_named_dirty_bitmaps).
    pub fn release_named_dirty_bitmaps(&self) {
        self.dirty_bitmaps
            .borrow_mut()
            .retain(|b| b.name().is_none());
    }

    /// Marks `bytes` at `offset` dirty in every enabled bitmap: what a completed write,
    /// write-zeroes or discard does (bdrv_set_dirty).
    pub(crate) fn set_dirty(&self, offset: u64, bytes: u64) {
        for bm in self.dirty_bitmaps.borrow().iter() {
            if bm.enabled() {
                trace!(
                    bdrv_dirty_bitmap_set,
                    "bitmap {} offset {} bytes {}",
                    bm.shown_name(),
                    offset,
                    bytes
                );
                bm.set_dirty(offset, bytes);
            }
        }
    }

    /// Resizes every bitmap with the node (bdrv_dirty_bitmap_truncate).
    pub(crate) fn truncate_dirty_bitmaps(&self, size: u64) {
        for bm in self.dirty_bitmaps.borrow().iter() {
            bm.truncate(size);
        }
    }

    /// The granularity a bitmap gets when none is asked for: the cluster size within
    /// 4 KiB..64 KiB, or 64 KiB (bdrv_get_default_bitmap_granularity).
    pub fn default_bitmap_granularity(&self) -> u32 {
        match self.drv().get_info(self) {
            Ok(info) if info.cluster_size > 0 => info.cluster_size.clamp(4096, 65536) as u32,
            _ => 65536,
        }
    }

    /// Whether the node's format can store bitmaps in the image
    /// (bdrv_supports_persistent_dirty_bitmap).
    pub fn supports_persistent_dirty_bitmap(&self) -> bool {
        self.drv().supports_persistent_dirty_bitmap(self)
    }

    /// Asks the format whether a new persistent bitmap fits in the image
    /// (bdrv_co_can_store_new_dirty_bitmap).
    pub async fn co_can_store_new_dirty_bitmap(&self, name: &str, granularity: u32) -> Result<()> {
        if !self.supports_persistent_dirty_bitmap() {
            return Err(Error::not_supported(format!(
                "Can't store persistent bitmaps to {}",
                self.node_name()
            )));
        }
        self.drv()
            .co_can_store_new_dirty_bitmap(self, name, granularity)
            .await
    }

    /// Removes a bitmap from the image; one not stored yet is no error
    /// (bdrv_co_remove_persistent_dirty_bitmap).
    pub async fn co_remove_persistent_dirty_bitmap(&self, name: &str) -> Result<()> {
        self.drv()
            .co_remove_persistent_dirty_bitmap(self, name)
            .await
    }

    /// Freezes `bitmap` for an operation (a backup): from now on an anonymous successor
    /// records the writes (bdrv_dirty_bitmap_create_successor).
    pub fn dirty_bitmap_create_successor(&self, bitmap: &BdrvDirtyBitmap) -> Result<()> {
        if bitmap.busy() {
            return Err(Error::invalid(
                "Cannot create a successor for a bitmap that is in-use by an operation",
            ));
        }
        if bitmap.has_successor() {
            return Err(Error::invalid(
                "Cannot create a successor for a bitmap that already has one",
            ));
        }
        let child = self.create_dirty_bitmap(bitmap.granularity(), None)?;
        child.disabled.set(bitmap.disabled.get());
        bitmap.disable();
        *bitmap.successor.borrow_mut() = Some(child);
        bitmap.set_busy(true);
        Ok(())
    }

    /// The operation succeeded: the successor takes the bitmap's name and persistence and
    /// replaces it (bdrv_dirty_bitmap_abdicate).
    pub fn dirty_bitmap_abdicate(
        &self,
        bitmap: &Rc<BdrvDirtyBitmap>,
    ) -> Result<Rc<BdrvDirtyBitmap>> {
        let successor = bitmap.successor.borrow_mut().take().ok_or_else(|| {
            Error::invalid("Cannot relinquish control if there's no successor present")
        })?;
        successor.set_name(bitmap.take_name());
        successor.set_persistence(bitmap.persistent());
        bitmap.set_persistence(false);
        bitmap.set_busy(false);
        self.release_dirty_bitmap(bitmap);
        Ok(successor)
    }

    /// The operation failed: what the successor recorded goes back into the bitmap, which
    /// is enabled again if the successor was (bdrv_reclaim_dirty_bitmap).
    pub fn dirty_bitmap_reclaim(&self, bitmap: &BdrvDirtyBitmap) -> Result<()> {
        let successor = bitmap
            .successor
            .borrow_mut()
            .take()
            .ok_or_else(|| Error::invalid("Cannot reclaim a successor when none is present"))?;
        bitmap.merge_bits_from(&successor);
        bitmap.disabled.set(successor.disabled.get());
        bitmap.set_busy(false);
        self.release_dirty_bitmap(&successor);
        Ok(())
    }

    /// Refuses resizing a node whose bitmaps cannot follow (the bdrv_dirty_bitmap_check
    /// half of qcow2_truncate_bitmaps_check, for bitmaps in memory).
    pub fn check_dirty_bitmaps_resizable(&self) -> Result<()> {
        for bm in self.dirty_bitmaps.borrow().iter() {
            bm.check(BitmapCheck::DEFAULT)?;
        }
        Ok(())
    }
}
