//! Which chunks of a node a job still has to copy: one bit per `granularity` bytes. Mirror
//! marks what the guest dirtied, backup what it has not saved yet. A minimal stand-in for
//! QEMU's BdrvDirtyBitmap over an HBitmap (block/dirty-bitmap.c, util/hbitmap.c) until the
//! dirty bitmap layer lands in `crate::dirty_bitmap`.

/// Dirty chunks of a node.
pub struct DirtyBitmap {
    granularity: u64,
    len: u64,
    words: Vec<u64>,
    dirty_chunks: u64,
}

impl DirtyBitmap {
    /// A clean bitmap for `len` bytes in chunks of `granularity` (a power of two).
    pub fn new(len: u64, granularity: u64) -> DirtyBitmap {
        let chunks = len.div_ceil(granularity);
        DirtyBitmap {
            granularity,
            len,
            words: vec![0; chunks.div_ceil(64) as usize],
            dirty_chunks: 0,
        }
    }

    /// The bytes the bitmap covers.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// The chunk size.
    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    fn chunks(&self, offset: u64, bytes: u64) -> std::ops::Range<u64> {
        let end = (offset + bytes).min(self.len);
        if offset >= end {
            return 0..0;
        }
        offset / self.granularity..end.div_ceil(self.granularity)
    }

    fn set_bit(&mut self, chunk: u64, value: bool) {
        let (w, b) = ((chunk / 64) as usize, chunk % 64);
        let was = self.words[w] >> b & 1 == 1;
        if was != value {
            self.words[w] ^= 1 << b;
            if value {
                self.dirty_chunks += 1;
            } else {
                self.dirty_chunks -= 1;
            }
        }
    }

    /// Marks every chunk touching the range dirty (bdrv_set_dirty_bitmap).
    pub fn set(&mut self, offset: u64, bytes: u64) {
        for c in self.chunks(offset, bytes) {
            self.set_bit(c, true);
        }
    }

    /// Marks the chunks the range covers entirely clean (bdrv_reset_dirty_bitmap).
    pub fn reset_covered(&mut self, offset: u64, bytes: u64) {
        let g = self.granularity;
        let first = offset.div_ceil(g);
        let end = offset + bytes;
        // A range reaching the end of the node covers the short last chunk too.
        let last = if end >= self.len {
            self.len.div_ceil(g)
        } else {
            end / g
        };
        for c in first..last {
            self.set_bit(c, false);
        }
    }

    /// Whether the chunk holding `offset` is dirty (bdrv_dirty_bitmap_get).
    pub fn get(&self, offset: u64) -> bool {
        offset < self.len && self.is_dirty(offset / self.granularity)
    }

    fn is_dirty(&self, chunk: u64) -> bool {
        self.words[(chunk / 64) as usize] >> (chunk % 64) & 1 == 1
    }

    /// Dirty bytes (bdrv_get_dirty_count); the last chunk may be short.
    pub fn count(&self) -> u64 {
        let mut bytes = self.dirty_chunks * self.granularity;
        let last = self.len.div_ceil(self.granularity);
        if last > 0 && self.is_dirty(last - 1) {
            bytes -= last * self.granularity - self.len;
        }
        bytes
    }

    /// The first dirty range at or after `from`, wrapping around to the start, at most
    /// `max` bytes long: (offset, bytes).
    pub fn next_dirty_area(&self, from: u64, max: u64) -> Option<(u64, u64)> {
        if self.dirty_chunks == 0 {
            return None;
        }
        let total = self.len.div_ceil(self.granularity);
        let is_dirty = |c: u64| self.is_dirty(c);
        let start_chunk = (from / self.granularity) % total.max(1);
        let first = (start_chunk..total)
            .chain(0..start_chunk)
            .find(|&c| is_dirty(c))?;
        let max_chunks = (max / self.granularity).max(1);
        let mut end = first + 1;
        while end < total && end - first < max_chunks && is_dirty(end) {
            end += 1;
        }
        let offset = first * self.granularity;
        Some((offset, (end * self.granularity).min(self.len) - offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_chunks_and_finds_dirty_areas() {
        let mut d = DirtyBitmap::new(10 * 4096 + 100, 4096);
        d.set(5000, 10); // chunk 1
        d.set(8 * 4096, 3 * 4096); // chunks 8..=10, the last one short
        assert_eq!(d.count(), 4096 + 2 * 4096 + 100);
        assert_eq!(d.next_dirty_area(0, 1 << 20), Some((4096, 4096)));
        assert_eq!(d.next_dirty_area(3 * 4096, 4096), Some((8 * 4096, 4096)));
        assert_eq!(
            d.next_dirty_area(9 * 4096, 1 << 20),
            Some((9 * 4096, 4096 + 100))
        );
        d.reset_covered(4096 + 1, 4096); // does not cover chunk 1 entirely
        assert_eq!(d.next_dirty_area(0, 1 << 20), Some((4096, 4096)));
        d.reset_covered(0, 11 * 4096);
        assert_eq!(d.count(), 0);
        assert_eq!(d.next_dirty_area(0, 1 << 20), None);
    }
}
