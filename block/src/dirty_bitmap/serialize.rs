//! The bitmap's bits as bytes: the layout qcow2 stores (docs/interop/qcow2.txt "Bitmaps":
//! bit 0 of byte 0 is the first granule) and the SHA-256 of that layout that QEMU's
//! x-debug-block-dirty-bitmap-sha256 reports (hbitmap_serialize_part and hbitmap_sha256 in
//! util/hbitmap.c).
//!
//! Serialization works in whole 64-bit little-endian words, as QEMU's does, so a range to
//! (de)serialize starts on a word boundary: [`BdrvDirtyBitmap::serialization_align`] bytes of
//! the node.

use sha2::{Digest, Sha256};

use super::BdrvDirtyBitmap;

impl BdrvDirtyBitmap {
    /// Bytes of the node one serialized 64-bit word covers (hbitmap_serialization_align).
    pub fn serialization_align(&self) -> u64 {
        64 << self.shift()
    }

    /// Bytes of the node that `chunk` serialized bytes cover
    /// (bdrv_dirty_bitmap_serialization_coverage).
    pub fn serialization_coverage(&self, chunk: u64) -> u64 {
        (chunk * 8) << self.shift()
    }

    /// The words covering `bytes` of the node at `offset` (aligned): first index and count.
    fn words(&self, offset: u64, bytes: u64) -> (u64, u64) {
        if bytes == 0 {
            return (offset >> self.shift() >> 6, 0);
        }
        let first = (offset >> self.shift()) >> 6;
        let last = ((offset + bytes - 1) >> self.shift()) >> 6;
        (first, last - first + 1)
    }

    /// Serialized bytes of `bytes` of the node at `offset` (hbitmap_serialization_size).
    pub fn serialization_size(&self, offset: u64, bytes: u64) -> u64 {
        self.words(offset, bytes).1 * 8
    }

    /// Writes the bits of `bytes` at `offset` into `buf`, which holds at least
    /// [`BdrvDirtyBitmap::serialization_size`] bytes (bdrv_dirty_bitmap_serialize_part).
    pub fn serialize_part(&self, buf: &mut [u8], offset: u64, bytes: u64) {
        let (first, n) = self.words(offset, bytes);
        let bits = self.bits.borrow();
        for (i, out) in buf.chunks_exact_mut(8).take(n as usize).enumerate() {
            out.copy_from_slice(&bits.word(first + i as u64).to_le_bytes());
        }
    }

    /// Loads the bits of `bytes` at `offset` from `buf` (bdrv_dirty_bitmap_deserialize_part).
    pub fn deserialize_part(&self, buf: &[u8], offset: u64, bytes: u64) {
        let (first, n) = self.words(offset, bytes);
        let mut bits = self.bits.borrow_mut();
        for (i, w) in buf.chunks_exact(8).take(n as usize).enumerate() {
            bits.set_word(first + i as u64, u64::from_le_bytes(w.try_into().unwrap()));
        }
    }

    /// Sets every bit of `bytes` at `offset`: a stored all-ones cluster
    /// (bdrv_dirty_bitmap_deserialize_ones).
    pub fn deserialize_ones(&self, offset: u64, bytes: u64) {
        self.set_dirty(offset, bytes);
    }

    /// The SHA-256 of the whole serialized bitmap in lowercase hex, as QEMU computes it over
    /// its last level (at least one word; x-debug-block-dirty-bitmap-sha256).
    pub fn sha256(&self) -> String {
        let bits = self.bits.borrow();
        let words = bits.len().div_ceil(64).max(1);
        let mut hasher = Sha256::new();
        for i in 0..words {
            hasher.update(bits.word(i).to_le_bytes());
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_granule_is_bit_zero_of_byte_zero() {
        let bm = BdrvDirtyBitmap::new(None, 65536, 10 << 20);
        bm.set_dirty(0, 65536);
        bm.set_dirty(9 * 65536, 1);
        // 160 granules: three words.
        assert_eq!(bm.serialization_size(0, bm.size()), 24);
        let mut buf = [0u8; 24];
        bm.serialize_part(&mut buf, 0, bm.size());
        assert_eq!(buf[..8], [0x01, 0x02, 0, 0, 0, 0, 0, 0]);
        assert!(buf[8..].iter().all(|&b| b == 0));
        let back = BdrvDirtyBitmap::new(None, 65536, 10 << 20);
        back.deserialize_part(&buf, 0, back.size());
        assert_eq!(back.dirty_extents(), bm.dirty_extents());
        assert_eq!(back.sha256(), bm.sha256());
    }

    #[test]
    fn sha256_of_an_empty_bitmap_covers_its_words() {
        // 1 MiB at 64 KiB: 16 bits, one zero word (QEMU reports the digest of 8 zero bytes).
        let bm = BdrvDirtyBitmap::new(None, 65536, 1 << 20);
        assert_eq!(
            bm.sha256(),
            "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"
        );
        assert_eq!(bm.serialization_coverage(65536), 65536 * 8 * 65536);
    }
}
