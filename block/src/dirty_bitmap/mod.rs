//! Dirty bitmaps: which granules of a node were written since a point in time (QEMU's
//! block/dirty-bitmap.c over util/hbitmap.c).
//!
//! A [`BdrvDirtyBitmap`] belongs to one node. Every write, write-zeroes and discard that
//! completes on the node sets the bits of the range in each enabled bitmap (the hook is in
//! [`crate::io`]); incremental backup copies only what is dirty, and the qcow2 driver stores
//! bitmaps marked persistent in the image. The module is split by concept: [`hbitmap`] is the
//! bit array, this file the byte-addressed bitmap and its state flags, `serialize` the on-disk
//! bit layout and the SHA-256 QEMU's debug command reports. The list on a node lives with the
//! node (`node/dirty_bitmaps.rs`) and the block-dirty-bitmap-* operations in
//! [`crate::bitmap_qmp`]: both act on a BlockDriverState, which holds its bitmaps, so keeping
//! them out of this module keeps it below the node.

pub mod hbitmap;
mod serialize;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::error::{Error, Result};
use hbitmap::HBitmap;

/// Smallest granularity: one sector (BDRV_SECTOR_SIZE).
pub const MIN_GRANULARITY: u32 = 512;
/// Longest bitmap name (BDRV_BITMAP_MAX_NAME_SIZE).
pub const MAX_NAME_SIZE: usize = 1023;

/// What [`BdrvDirtyBitmap::check`] refuses (BDRV_BITMAP_* of QEMU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitmapCheck(u8);

impl BitmapCheck {
    /// A bitmap some operation (a backup job) holds.
    pub const BUSY: BitmapCheck = BitmapCheck(1);
    /// A bitmap of a read-only image.
    pub const RO: BitmapCheck = BitmapCheck(2);
    /// A persistent bitmap whose image copy was left in use.
    pub const INCONSISTENT: BitmapCheck = BitmapCheck(4);
    /// Everything: what modifying a bitmap requires (BDRV_BITMAP_DEFAULT).
    pub const DEFAULT: BitmapCheck = BitmapCheck(7);
    /// Busy or read-only: what removing a bitmap refuses.
    pub const BUSY_RO: BitmapCheck = BitmapCheck(3);
    /// Everything but read-only: enabling, disabling, reading (BDRV_BITMAP_ALLOW_RO).
    pub const ALLOW_RO: BitmapCheck = BitmapCheck(5);

    fn has(self, other: BitmapCheck) -> bool {
        self.0 & other.0 != 0
    }
}

/// One dirty bitmap of a node.
#[derive(Debug)]
pub struct BdrvDirtyBitmap {
    pub(crate) name: RefCell<Option<String>>,
    granularity: u32,
    bits: RefCell<HBitmap>,
    /// Size of the node in bytes the bitmap covers.
    size: Cell<u64>,
    pub(crate) disabled: Cell<bool>,
    busy: Cell<bool>,
    readonly: Cell<bool>,
    persistent: Cell<bool>,
    inconsistent: Cell<bool>,
    /// The anonymous bitmap recording writes while an operation holds this one.
    pub(crate) successor: RefCell<Option<Rc<BdrvDirtyBitmap>>>,
}

/// Bits needed to cover `size` bytes: at least one, as hbitmap_alloc allocates.
fn bits_for(size: u64, granularity: u32) -> u64 {
    size.div_ceil(granularity as u64).max(1)
}

impl BdrvDirtyBitmap {
    /// A clean, enabled bitmap of `size` bytes; `granularity` is a power of two, at least 512.
    pub(crate) fn new(name: Option<&str>, granularity: u32, size: u64) -> BdrvDirtyBitmap {
        debug_assert!(granularity.is_power_of_two() && granularity >= MIN_GRANULARITY);
        BdrvDirtyBitmap {
            name: RefCell::new(name.map(str::to_string)),
            granularity,
            bits: RefCell::new(HBitmap::new(bits_for(size, granularity))),
            size: Cell::new(size),
            disabled: Cell::new(false),
            busy: Cell::new(false),
            readonly: Cell::new(false),
            persistent: Cell::new(false),
            inconsistent: Cell::new(false),
            successor: RefCell::new(None),
        }
    }

    /// The name; None for an anonymous bitmap (a successor, a merge's scratch copy).
    pub fn name(&self) -> Option<String> {
        self.name.borrow().clone()
    }

    /// The name as messages print it.
    pub(crate) fn shown_name(&self) -> String {
        self.name().unwrap_or_default()
    }

    /// Bytes per bit.
    pub fn granularity(&self) -> u32 {
        self.granularity
    }

    fn shift(&self) -> u32 {
        self.granularity.trailing_zeros()
    }

    /// Bytes of the node the bitmap covers (bdrv_dirty_bitmap_size).
    pub fn size(&self) -> u64 {
        self.size.get()
    }

    /// Whether writes to the node set bits (bdrv_dirty_bitmap_enabled).
    pub fn enabled(&self) -> bool {
        !self.disabled.get()
    }

    /// Starts recording writes (bdrv_enable_dirty_bitmap).
    pub fn enable(&self) {
        self.disabled.set(false);
    }

    /// Stops recording writes (bdrv_disable_dirty_bitmap).
    pub fn disable(&self) {
        self.disabled.set(true);
    }

    /// Whether an operation holds the bitmap.
    pub fn busy(&self) -> bool {
        self.busy.get()
    }

    /// Marks the bitmap held (or released) by an operation.
    pub fn set_busy(&self, busy: bool) {
        self.busy.set(busy);
    }

    /// Whether the bitmap belongs to a read-only image and may not change.
    pub fn readonly(&self) -> bool {
        self.readonly.get()
    }

    /// Marks the bitmap read-only (its image is open read-only).
    pub fn set_readonly(&self, readonly: bool) {
        self.readonly.set(readonly);
    }

    /// Whether the image stores the bitmap when it closes.
    pub fn persistent(&self) -> bool {
        self.persistent.get()
    }

    /// Makes the bitmap persistent or not (bdrv_dirty_bitmap_set_persistence).
    pub fn set_persistence(&self, persistent: bool) {
        self.persistent.set(persistent);
    }

    /// Whether the stored copy was found in use (a crash): the contents mean nothing.
    pub fn inconsistent(&self) -> bool {
        self.inconsistent.get()
    }

    /// Marks a loaded bitmap inconsistent, and so disabled
    /// (bdrv_dirty_bitmap_set_inconsistent).
    pub fn set_inconsistent(&self) {
        self.inconsistent.set(true);
        self.disabled.set(true);
    }

    /// Whether an operation installed a successor (the bitmap is "frozen").
    pub fn has_successor(&self) -> bool {
        self.successor.borrow().is_some()
    }

    /// Refuses a bitmap in one of the `what` states, with QEMU's messages
    /// (bdrv_dirty_bitmap_check).
    pub fn check(&self, what: BitmapCheck) -> Result<()> {
        let name = self.shown_name();
        if what.has(BitmapCheck::BUSY) && self.busy() {
            return Err(Error::invalid(format!(
                "Bitmap '{name}' is currently in use by another operation and cannot be used"
            )));
        }
        if what.has(BitmapCheck::RO) && self.readonly() {
            return Err(Error::invalid(format!(
                "Bitmap '{name}' is readonly and cannot be modified"
            )));
        }
        if what.has(BitmapCheck::INCONSISTENT) && self.inconsistent() {
            return Err(Error::invalid(format!(
                "Bitmap '{name}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk"
            )));
        }
        Ok(())
    }

    /// The bit range `first..end` covering `bytes` bytes at `offset`.
    fn bit_range(&self, offset: u64, bytes: u64) -> (u64, u64) {
        let g = self.granularity as u64;
        (
            offset >> self.shift(),
            offset.saturating_add(bytes).div_ceil(g),
        )
    }

    /// Marks `bytes` at `offset` dirty, whether enabled or not (bdrv_set_dirty_bitmap).
    pub fn set_dirty(&self, offset: u64, bytes: u64) {
        let (first, end) = self.bit_range(offset, bytes);
        self.bits.borrow_mut().set(first, end);
    }

    /// Marks `bytes` at `offset` clean (bdrv_reset_dirty_bitmap).
    pub fn reset_dirty(&self, offset: u64, bytes: u64) {
        let (first, end) = self.bit_range(offset, bytes);
        self.bits.borrow_mut().reset(first, end);
    }

    /// Marks clean only the granules `bytes` at `offset` covers entirely, plus a short last
    /// granule the range reaches the end of: what a copy of an unaligned range may clear
    /// (the alignment mirror's do_sync_target_write does before bdrv_reset_dirty_bitmap).
    pub fn reset_covered(&self, offset: u64, bytes: u64) {
        let g = self.granularity as u64;
        let end = offset.saturating_add(bytes);
        let first = offset.div_ceil(g);
        let last = if end >= self.size() {
            self.size().div_ceil(g)
        } else {
            end / g
        };
        if last > first {
            self.bits.borrow_mut().reset(first, last);
        }
    }

    /// A copy of the bits, for a transaction to put back if it aborts (the `out` of
    /// bdrv_clear_dirty_bitmap and bdrv_merge_dirty_bitmap).
    pub fn backup_bits(&self) -> HBitmap {
        self.bits.borrow().clone()
    }

    /// Puts back bits saved by [`BdrvDirtyBitmap::backup_bits`] (bdrv_restore_dirty_bitmap).
    pub fn restore_bits(&self, bits: HBitmap) {
        *self.bits.borrow_mut() = bits;
    }

    /// Whether writes are recorded, by the bitmap or by the successor standing in for it
    /// (bdrv_dirty_bitmap_recording).
    pub fn recording(&self) -> bool {
        self.enabled()
            || self
                .successor
                .borrow()
                .as_ref()
                .is_some_and(|s| s.enabled())
    }

    /// Marks everything clean (bdrv_clear_dirty_bitmap).
    pub fn clear(&self) {
        self.bits.borrow_mut().reset_all();
    }

    /// Whether the granule holding `offset` is dirty (bdrv_dirty_bitmap_get).
    pub fn get(&self, offset: u64) -> bool {
        self.bits.borrow().get(offset >> self.shift())
    }

    /// Dirty bytes, counted in whole granules (bdrv_get_dirty_count).
    pub fn count(&self) -> u64 {
        self.bits.borrow().count() << self.shift()
    }

    /// The first dirty byte in `offset..offset+bytes` (bdrv_dirty_bitmap_next_dirty).
    pub fn next_dirty(&self, offset: u64, bytes: u64) -> Option<u64> {
        self.find(offset, bytes, HBitmap::next_set)
    }

    /// The first clean byte in `offset..offset+bytes` (bdrv_dirty_bitmap_next_zero).
    pub fn next_zero(&self, offset: u64, bytes: u64) -> Option<u64> {
        self.find(offset, bytes, HBitmap::next_clear)
    }

    /// Runs a bit search over the granules of a byte range, clamped to the bitmap, and
    /// turns the bit found back into a byte offset no lower than `offset`.
    fn find(
        &self,
        offset: u64,
        bytes: u64,
        search: fn(&HBitmap, u64, u64) -> Option<u64>,
    ) -> Option<u64> {
        let end = offset.saturating_add(bytes).min(self.size());
        if offset >= end {
            return None;
        }
        let (first, last) = self.bit_range(offset, end - offset);
        let bit = search(&self.bits.borrow(), first, last)?;
        Some((bit << self.shift()).max(offset))
    }

    /// The next dirty extent `(offset, length)` in `offset..offset+bytes`, at most
    /// `max_bytes` long (bdrv_dirty_bitmap_next_dirty_area).
    pub fn next_dirty_area(&self, offset: u64, bytes: u64, max_bytes: u64) -> Option<(u64, u64)> {
        let end = offset.saturating_add(bytes).min(self.size());
        let start = self.next_dirty(offset, end.saturating_sub(offset))?;
        let stop = self.next_zero(start, end - start).unwrap_or(end);
        Some((start, (stop - start).min(max_bytes)))
    }

    /// Every dirty extent, in order.
    pub fn dirty_extents(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut offset = 0;
        while let Some((start, len)) = self.next_dirty_area(offset, u64::MAX, u64::MAX) {
            out.push((start, len));
            offset = start + len;
        }
        out
    }

    /// Sets in `self` every bit dirty in `src`, which may have another granularity
    /// (the merge inside bdrv_merge_dirty_bitmap; the checks are the caller's).
    pub fn merge_bits_from(&self, src: &BdrvDirtyBitmap) {
        if src.granularity == self.granularity {
            let src_bits = src.bits.borrow().clone();
            self.bits.borrow_mut().merge(&src_bits);
            return;
        }
        for (start, len) in src.dirty_extents() {
            self.set_dirty(start, len);
        }
    }

    /// Follows a resize of the node (bdrv_dirty_bitmap_truncate).
    pub(crate) fn truncate(&self, size: u64) {
        self.bits
            .borrow_mut()
            .truncate(bits_for(size, self.granularity));
        self.size.set(size);
    }

    pub(crate) fn take_name(&self) -> Option<String> {
        self.name.borrow_mut().take()
    }

    pub(crate) fn set_name(&self, name: Option<String>) {
        *self.name.borrow_mut() = name;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_map_to_granules() {
        let bm = BdrvDirtyBitmap::new(Some("b"), 65536, 10 << 20);
        bm.set_dirty(65535, 2);
        assert_eq!(bm.count(), 2 * 65536);
        assert_eq!(bm.next_dirty(0, u64::MAX), Some(0));
        assert_eq!(bm.next_zero(0, u64::MAX), Some(131072));
        assert_eq!(bm.next_dirty(1000, u64::MAX), Some(1000));
        assert_eq!(bm.dirty_extents(), vec![(0, 131072)]);
        bm.reset_dirty(0, 65536);
        assert_eq!(bm.dirty_extents(), vec![(65536, 65536)]);
        bm.reset_covered(65537, 65536);
        assert_eq!(bm.dirty_extents(), vec![(65536, 65536)]);
        bm.reset_covered(65536, 65536);
        assert_eq!(bm.count(), 0);
    }

    #[test]
    fn a_range_reaching_the_end_covers_the_short_last_granule() {
        let bm = BdrvDirtyBitmap::new(None, 4096, 10 * 4096 + 100);
        bm.set_dirty(8 * 4096, 3 * 4096);
        assert_eq!(bm.count(), 3 * 4096);
        bm.reset_covered(9 * 4096 + 1, 4096 + 99);
        assert_eq!(bm.dirty_extents(), vec![(8 * 4096, 2 * 4096)]);
        bm.reset_covered(9 * 4096, 4096 + 100);
        assert_eq!(bm.dirty_extents(), vec![(8 * 4096, 4096)]);
    }

    #[test]
    fn inconsistent_bitmaps_are_refused_with_a_hint() {
        let bm = BdrvDirtyBitmap::new(Some("b0"), 65536, 1 << 20);
        assert!(bm.check(BitmapCheck::DEFAULT).is_ok());
        bm.set_inconsistent();
        let e = bm.check(BitmapCheck::ALLOW_RO).unwrap_err().to_string();
        assert!(e.starts_with("Bitmap 'b0' is inconsistent and cannot be used"));
        bm.set_readonly(true);
        assert_eq!(
            bm.check(BitmapCheck::DEFAULT).unwrap_err().to_string(),
            "Bitmap 'b0' is readonly and cannot be modified"
        );
    }

    #[test]
    fn merge_across_granularities_rounds_to_the_destination() {
        let fine = BdrvDirtyBitmap::new(None, 512, 1 << 20);
        fine.set_dirty(70_000, 512);
        let coarse = BdrvDirtyBitmap::new(None, 65536, 1 << 20);
        coarse.merge_bits_from(&fine);
        assert_eq!(coarse.dirty_extents(), vec![(65536, 65536)]);
    }
}
