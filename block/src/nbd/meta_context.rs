//! The server's metadata contexts: which an export offers, which a client's queries pick,
//! how a block-status payload names them, and the extents each reports for
//! NBD_CMD_BLOCK_STATUS (the meta-context half of QEMU's nbd/server.c:
//! nbd_negotiate_meta_query, nbd_co_block_status_payload_read, blockstatus_to_extents,
//! blockalloc_to_extents, bitmap_to_extents).
//!
//! Context ids are fixed per export, as QEMU numbers them: `base:allocation` 0,
//! `qemu:allocation-depth` 1, and the export's i-th dirty bitmap 2 + i.

use super::export::NbdExport;
use super::proto::{Extent, NBD_STATE_HOLE, NBD_STATE_ZERO};
use crate::dirty_bitmap::BdrvDirtyBitmap;
use crate::driver::StatusFlags;
use crate::error::Result;
use crate::node::BlockDriverState;

/// The context id of base:allocation (QEMU's NBD_META_ID_BASE_ALLOCATION).
pub const META_ID_BASE_ALLOCATION: u32 = 0;
/// The context id of qemu:allocation-depth.
pub const META_ID_ALLOCATION_DEPTH: u32 = 1;
/// The context id of an export's first dirty bitmap; the others follow it.
pub const META_ID_DIRTY_BITMAP: u32 = 2;

/// Bitmaps one export offers at most: a context set is a 64-bit mask of them.
pub const MAX_EXPORT_BITMAPS: usize = 64;

/// The prefix of a dirty bitmap's context name.
pub const DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";

/// qemu:dirty-bitmap:NAME: the range is dirty in the bitmap.
pub const NBD_STATE_DIRTY: u32 = 1 << 0;

/// A set of metadata contexts of one export (what NBD_CMD_BLOCK_STATUS reports).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaContexts {
    /// `base:allocation`: holes and zeroes.
    pub base_allocation: bool,
    /// `qemu:allocation-depth`: which backing layer holds the data.
    pub allocation_depth: bool,
    /// `qemu:dirty-bitmap:NAME`: bit i stands for the export's i-th bitmap.
    pub bitmaps: u64,
}

impl MetaContexts {
    /// Whether no context is in the set.
    pub fn is_empty(&self) -> bool {
        *self == MetaContexts::default()
    }

    /// Every context `export` offers: what an empty NBD_OPT_LIST_META_CONTEXT lists.
    pub fn all(export: &NbdExport) -> MetaContexts {
        MetaContexts {
            base_allocation: true,
            allocation_depth: export.allocation_depth(),
            bitmaps: all_bitmaps(export),
        }
    }

    /// Adds what one query names (nbd_negotiate_meta_query). With `list` (LIST, not SET),
    /// an empty leaf (`base:`, `qemu:`, `qemu:dirty-bitmap:`) stands for every context
    /// under it; queries naming nothing offered pick nothing.
    pub fn add_query(&mut self, query: &str, export: &NbdExport, list: bool) {
        let depth = export.allocation_depth();
        if let Some(leaf) = query.strip_prefix("base:") {
            self.base_allocation |= leaf == "allocation" || (list && leaf.is_empty());
        } else if let Some(leaf) = query.strip_prefix("qemu:") {
            if leaf.is_empty() {
                if list {
                    self.allocation_depth |= depth;
                    self.bitmaps |= all_bitmaps(export);
                }
            } else if leaf == "allocation-depth" {
                self.allocation_depth |= depth;
            } else if let Some(name) = leaf.strip_prefix("dirty-bitmap:") {
                if name.is_empty() {
                    if list {
                        self.bitmaps |= all_bitmaps(export);
                    }
                } else if let Some(i) = export.bitmaps().iter().position(|(n, _)| n == name) {
                    self.bitmaps |= 1 << i;
                }
            }
        }
    }

    /// The contexts in the set with their ids and names, in id order.
    pub fn named(&self, export: &NbdExport) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        if self.base_allocation {
            out.push((META_ID_BASE_ALLOCATION, "base:allocation".to_string()));
        }
        if self.allocation_depth {
            out.push((
                META_ID_ALLOCATION_DEPTH,
                "qemu:allocation-depth".to_string(),
            ));
        }
        for (i, (name, _)) in export.bitmaps().iter().enumerate() {
            if self.bitmaps & (1 << i) != 0 {
                let id = META_ID_DIRTY_BITMAP + i as u32;
                out.push((id, format!("{DIRTY_BITMAP_PREFIX}{name}")));
            }
        }
        out
    }
}

/// The mask of every bitmap `export` offers.
fn all_bitmaps(export: &NbdExport) -> u64 {
    match export.bitmaps().len() {
        0 => 0,
        n => u64::MAX >> (64 - n),
    }
}

/// A block-status payload (an effect length, then context ids): the length and the contexts
/// it picks out of those negotiated, or None when it is malformed, repeats an id or names
/// one not negotiated (nbd_co_block_status_payload_read).
pub fn status_payload(data: &[u8], negotiated: MetaContexts) -> Option<(u64, MetaContexts)> {
    if data.len() < 8 || !data.len().is_multiple_of(4) {
        return None;
    }
    let length = u64::from_be_bytes(data[..8].try_into().ok()?);
    let mut picked = MetaContexts::default();
    for id in data[8..].chunks_exact(4) {
        let before = picked;
        match u32::from_be_bytes(id.try_into().ok()?) {
            META_ID_BASE_ALLOCATION if negotiated.base_allocation => picked.base_allocation = true,
            META_ID_ALLOCATION_DEPTH if negotiated.allocation_depth => {
                picked.allocation_depth = true
            }
            id if id >= META_ID_DIRTY_BITMAP
                && id - META_ID_DIRTY_BITMAP < MAX_EXPORT_BITMAPS as u32
                && negotiated.bitmaps & (1 << (id - META_ID_DIRTY_BITMAP)) != 0 =>
            {
                picked.bitmaps |= 1 << (id - META_ID_DIRTY_BITMAP)
            }
            _ => return None,
        }
        if picked == before {
            return None;
        }
    }
    Some((length, picked))
}

/// Collects extents for one reply: at most `max` of them, neighbours with equal flags merged
/// while the sum fits `max_len` (NBDExtentArray and nbd_extent_array_add).
pub struct ExtentArray {
    extents: Vec<Extent>,
    max: usize,
    max_len: u64,
}

impl ExtentArray {
    /// An empty array of at most `max` extents, each at most `max_len` bytes.
    pub fn new(max: usize, max_len: u64) -> ExtentArray {
        ExtentArray {
            extents: Vec::new(),
            max,
            max_len,
        }
    }

    /// Appends `length` bytes with `flags`; false when the array is full and they did not fit.
    pub fn add(&mut self, length: u64, flags: u32) -> bool {
        if length == 0 {
            return true;
        }
        let full = self.extents.len() == self.max;
        match self.extents.last_mut() {
            Some(last) if last.flags == flags && last.length + length <= self.max_len => {
                last.length += length;
                true
            }
            _ if full => false,
            _ => {
                self.extents.push(Extent { length, flags });
                true
            }
        }
    }

    /// The extents collected.
    pub fn into_vec(self) -> Vec<Extent> {
        self.extents
    }
}

/// The extents of base:allocation, or of qemu:allocation-depth with `depth`, over
/// `offset..offset+length` of `bs` (blockstatus_to_extents / blockalloc_to_extents).
pub async fn allocation_extents(
    bs: &BlockDriverState,
    offset: u64,
    length: u64,
    depth: bool,
    ea: &mut ExtentArray,
) -> Result<()> {
    let end = offset + length;
    let mut offset = offset;
    while offset < end {
        let (status, layer) = bs
            .co_block_status_above(None, !depth, offset, end - offset)
            .await?;
        if status.bytes == 0 {
            break;
        }
        let flags = if depth {
            if status.flags.contains(StatusFlags::ALLOCATED) {
                layer + 1
            } else {
                0
            }
        } else {
            let mut f = 0;
            if !status.flags.contains(StatusFlags::DATA) {
                f |= NBD_STATE_HOLE;
            }
            if status.flags.contains(StatusFlags::ZERO) {
                f |= NBD_STATE_ZERO;
            }
            f
        };
        let n = status.bytes.min(end - offset);
        if !ea.add(n, flags) {
            break;
        }
        offset += n;
    }
    Ok(())
}

/// The extents of a dirty bitmap over `offset..offset+length`: clean ranges 0, dirty ones
/// NBD_STATE_DIRTY (bitmap_to_extents).
pub fn bitmap_extents(bitmap: &BdrvDirtyBitmap, offset: u64, length: u64, ea: &mut ExtentArray) {
    let end = offset + length;
    let mut start = offset;
    while let Some((dirty, count)) = bitmap.next_dirty_area(start, end - start, ea.max_len) {
        if !ea.add(dirty - start, 0) || !ea.add(count, NBD_STATE_DIRTY) {
            return;
        }
        start = dirty + count;
    }
    ea.add(end - start, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(length: u64, ids: &[u32]) -> Vec<u8> {
        let mut v = length.to_be_bytes().to_vec();
        for id in ids {
            v.extend_from_slice(&id.to_be_bytes());
        }
        v
    }

    #[test]
    fn status_payload_picks_only_negotiated_contexts_once() {
        let both = MetaContexts {
            base_allocation: true,
            allocation_depth: true,
            bitmaps: 0b10,
        };
        let depth_only = MetaContexts {
            allocation_depth: true,
            ..MetaContexts::default()
        };
        let got = status_payload(&payload(4096, &[META_ID_ALLOCATION_DEPTH]), both);
        assert_eq!(got, Some((4096, depth_only)));
        assert_eq!(
            status_payload(&payload(1, &[]), both),
            Some((1, MetaContexts::default()))
        );
        let second_bitmap = MetaContexts {
            bitmaps: 0b10,
            ..MetaContexts::default()
        };
        let got = status_payload(&payload(9, &[META_ID_DIRTY_BITMAP + 1]), both);
        assert_eq!(got, Some((9, second_bitmap)));
        // Repeated, unknown or not negotiated ids, and ragged or short payloads, are refused.
        let twice = [META_ID_BASE_ALLOCATION, META_ID_BASE_ALLOCATION];
        assert_eq!(status_payload(&payload(1, &twice), both), None);
        let twice = [META_ID_DIRTY_BITMAP + 1, META_ID_DIRTY_BITMAP + 1];
        assert_eq!(status_payload(&payload(1, &twice), both), None);
        assert_eq!(
            status_payload(&payload(1, &[META_ID_DIRTY_BITMAP]), both),
            None
        );
        assert_eq!(status_payload(&payload(1, &[7]), both), None);
        assert_eq!(status_payload(&payload(1, &[u32::MAX]), both), None);
        let base = [META_ID_BASE_ALLOCATION];
        assert_eq!(status_payload(&payload(1, &base), depth_only), None);
        assert_eq!(status_payload(&payload(1, &base)[..10], both), None);
        assert_eq!(status_payload(&[0; 4], both), None);
    }

    #[test]
    fn extent_array_merges_and_stops_when_full() {
        let mut ea = ExtentArray::new(2, 10);
        assert!(ea.add(4, 0));
        assert!(ea.add(0, 1));
        assert!(ea.add(6, 0));
        // Over max_len: a new extent.
        assert!(ea.add(1, 0));
        assert!(!ea.add(1, 1));
        let e = ea.into_vec();
        assert_eq!(
            e,
            [
                Extent {
                    length: 10,
                    flags: 0
                },
                Extent {
                    length: 1,
                    flags: 0
                }
            ]
        );
    }

    #[test]
    fn bitmap_extents_alternate_clean_and_dirty() {
        let bm = BdrvDirtyBitmap::new(Some("b0"), 512, 8192);
        bm.set_dirty(1024, 1024);
        bm.set_dirty(4096, 512);
        let mut ea = ExtentArray::new(100, u64::MAX);
        bitmap_extents(&bm, 512, 7680, &mut ea);
        let got: Vec<(u64, u32)> = ea.into_vec().iter().map(|e| (e.length, e.flags)).collect();
        assert_eq!(got, [(512, 0), (1024, 1), (2048, 0), (512, 1), (3584, 0)]);
        let mut one = ExtentArray::new(1, u64::MAX);
        bitmap_extents(&bm, 1024, 7168, &mut one);
        let got: Vec<(u64, u32)> = one.into_vec().iter().map(|e| (e.length, e.flags)).collect();
        assert_eq!(got, [(1024, 1)]);
    }
}
