//! A large, mostly empty bit array: one bit per granule of a node (QEMU's util/hbitmap.c).
//!
//! QEMU keeps a tree of levels so that finding the next set bit skips empty regions fast. The
//! same property here comes from storing only the chunks that hold a set bit, in a sorted map:
//! an untouched 2 TiB disk tracked at 512-byte granularity costs nothing, and the search for
//! the next dirty bit walks the allocated chunks only. Bits are numbered from 0; the
//! byte-addressed view (granularity) belongs to [`super::BdrvDirtyBitmap`].

use std::collections::BTreeMap;

/// 64-bit words per chunk: 32768 bits, 4 KiB of memory once something in it is set.
const CHUNK_WORDS: usize = 512;
const CHUNK_BITS: u64 = (CHUNK_WORDS * 64) as u64;

type Chunk = Box<[u64; CHUNK_WORDS]>;

/// A sparse bit array of `len` bits.
#[derive(Clone, Debug, Default)]
pub struct HBitmap {
    len: u64,
    chunks: BTreeMap<u64, Chunk>,
    /// Set bits, kept up to date so that counting is free (hb->count).
    count: u64,
}

impl HBitmap {
    /// An all-zero array of `len` bits.
    pub fn new(len: u64) -> HBitmap {
        HBitmap {
            len,
            chunks: BTreeMap::new(),
            count: 0,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the array has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether bit `bit` is set (hbitmap_get).
    pub fn get(&self, bit: u64) -> bool {
        self.word(bit / 64) & (1 << (bit % 64)) != 0
    }

    /// The 64-bit word holding bits `64 * idx ..`, bit 0 of the word the lowest bit.
    pub fn word(&self, idx: u64) -> u64 {
        self.chunks
            .get(&(idx / CHUNK_WORDS as u64))
            .map_or(0, |c| c[(idx % CHUNK_WORDS as u64) as usize])
    }

    /// Replaces one 64-bit word; bits past the end are dropped.
    pub fn set_word(&mut self, idx: u64, value: u64) {
        let first_bit = idx * 64;
        if first_bit >= self.len {
            return;
        }
        let valid = self.len - first_bit;
        let value = if valid < 64 {
            value & ((1 << valid) - 1)
        } else {
            value
        };
        self.update_word(idx, |_| value);
    }

    /// Applies `f` to one word, keeping the count and dropping chunks that become empty.
    fn update_word(&mut self, idx: u64, f: impl FnOnce(u64) -> u64) {
        let key = idx / CHUNK_WORDS as u64;
        let at = (idx % CHUNK_WORDS as u64) as usize;
        let old = self.word(idx);
        let new = f(old);
        if new == old {
            return;
        }
        self.count = self.count - old.count_ones() as u64 + new.count_ones() as u64;
        let chunk = self
            .chunks
            .entry(key)
            .or_insert_with(|| Box::new([0; CHUNK_WORDS]));
        chunk[at] = new;
        if new == 0 && chunk.iter().all(|&w| w == 0) {
            self.chunks.remove(&key);
        }
    }

    /// Sets or clears the bits `first..end` (clamped to the array), word by word.
    fn fill(&mut self, first: u64, end: u64, set: bool) {
        let end = end.min(self.len);
        let mut bit = first;
        while bit < end {
            let idx = bit / 64;
            let lo = bit % 64;
            let hi = (end - idx * 64).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            self.update_word(idx, |w| if set { w | mask } else { w & !mask });
            bit = idx * 64 + hi;
        }
    }

    /// Sets the bits `first..end` (hbitmap_set).
    pub fn set(&mut self, first: u64, end: u64) {
        self.fill(first, end, true);
    }

    /// Clears the bits `first..end` (hbitmap_reset).
    pub fn reset(&mut self, first: u64, end: u64) {
        self.fill(first, end, false);
    }

    /// Clears every bit (hbitmap_reset_all).
    pub fn reset_all(&mut self) {
        self.chunks.clear();
        self.count = 0;
    }

    /// The first set bit in `from..end`, if any (hbitmap_next_dirty).
    pub fn next_set(&self, from: u64, end: u64) -> Option<u64> {
        let end = end.min(self.len);
        if from >= end {
            return None;
        }
        for (&key, chunk) in self.chunks.range(from / CHUNK_BITS..) {
            let base = key * CHUNK_BITS;
            if base >= end {
                return None;
            }
            let start_word = if base < from {
                ((from - base) / 64) as usize
            } else {
                0
            };
            for (i, &w) in chunk.iter().enumerate().skip(start_word) {
                let word_base = base + i as u64 * 64;
                let w = if word_base < from {
                    w & (u64::MAX << (from - word_base))
                } else {
                    w
                };
                if w != 0 {
                    let bit = word_base + w.trailing_zeros() as u64;
                    return (bit < end).then_some(bit);
                }
            }
        }
        None
    }

    /// The first clear bit in `from..end`, if any (hbitmap_next_zero).
    pub fn next_clear(&self, from: u64, end: u64) -> Option<u64> {
        let end = end.min(self.len);
        let mut bit = from;
        while bit < end {
            let idx = bit / 64;
            let w = !self.word(idx) & (u64::MAX << (bit % 64));
            if w != 0 {
                let found = idx * 64 + w.trailing_zeros() as u64;
                return (found < end).then_some(found);
            }
            bit = (idx + 1) * 64;
        }
        None
    }

    /// Sets every bit that is set in `other` (the same length; hbitmap_merge).
    pub fn merge(&mut self, other: &HBitmap) {
        for (&key, chunk) in &other.chunks {
            for (i, &w) in chunk.iter().enumerate() {
                if w != 0 {
                    self.update_word(key * CHUNK_WORDS as u64 + i as u64, |old| old | w);
                }
            }
        }
    }

    /// Changes the length, dropping the bits past a shorter end (hbitmap_truncate).
    pub fn truncate(&mut self, len: u64) {
        if len < self.len {
            self.reset(len, self.len);
        }
        self.len = len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_reset_and_count_across_words_and_chunks() {
        let mut hb = HBitmap::new(100_000);
        hb.set(60, 70_000);
        assert_eq!(hb.count(), 70_000 - 60);
        assert!(hb.get(60) && hb.get(69_999) && !hb.get(59) && !hb.get(70_000));
        hb.reset(100, 69_000);
        assert_eq!(hb.count(), 40 + 1000);
        hb.reset_all();
        assert_eq!(hb.count(), 0);
        assert!(hb.chunks.is_empty());
    }

    #[test]
    fn searches_find_the_next_set_and_clear_bit() {
        let mut hb = HBitmap::new(1 << 40);
        assert_eq!(hb.next_set(0, u64::MAX), None);
        hb.set(1 << 35, (1 << 35) + 3);
        assert_eq!(hb.next_set(5, u64::MAX), Some(1 << 35));
        assert_eq!(hb.next_set((1 << 35) + 1, u64::MAX), Some((1 << 35) + 1));
        assert_eq!(hb.next_set(0, 1 << 35), None);
        assert_eq!(hb.next_clear(1 << 35, u64::MAX), Some((1 << 35) + 3));
        assert_eq!(hb.next_clear(0, u64::MAX), Some(0));
        assert_eq!(hb.next_clear(1 << 35, (1 << 35) + 3), None);
    }

    #[test]
    fn words_past_the_end_are_masked_and_truncate_drops_bits() {
        let mut hb = HBitmap::new(70);
        hb.set_word(1, u64::MAX);
        assert_eq!(hb.count(), 6);
        hb.set(0, 70);
        hb.truncate(10);
        assert_eq!(hb.count(), 10);
        let mut other = HBitmap::new(10);
        other.merge(&hb);
        assert_eq!(other.count(), 10);
    }
}
