//! The anti-forensic splitter of LUKS1 (the LUKS on-disk format specification, "AF-Splitter";
//! QEMU's crypto/afsplit.c).
//!
//! A key slot does not store the master key encrypted as is: it stores `stripes` blocks of
//! the key's size, all random but the last, chained through a hash-based diffusion so that
//! every bit of every stripe is needed to recover the key. Destroying a few sectors of the
//! key material, as erasing a slot on a disk that remaps sectors may do, loses the key.

use super::hash::HashAlg;
use crate::error::Result;

/// Spreads `block` through the hash: each digest-sized chunk `j` becomes
/// H(be32(j) || chunk), truncated to the chunk's length.
fn diffuse(hash: HashAlg, block: &mut [u8]) {
    let digest_len = hash.digest_len();
    for (j, chunk) in block.chunks_mut(digest_len).enumerate() {
        let d = hash.digest(&[&(j as u32).to_be_bytes(), chunk]);
        let n = chunk.len();
        chunk.copy_from_slice(&d[..n]);
    }
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// Splits `key` into `stripes` blocks (qcrypto_afsplit_encode); the result is
/// `key.len() * stripes` bytes.
pub fn split(hash: HashAlg, key: &[u8], stripes: u32) -> Result<Vec<u8>> {
    let n = key.len();
    let mut out = vec![0u8; n * stripes as usize];
    super::random_bytes(&mut out[..n * (stripes as usize - 1)])?;
    let mut acc = vec![0u8; n];
    for stripe in out.chunks(n).take(stripes as usize - 1) {
        xor_into(&mut acc, stripe);
        diffuse(hash, &mut acc);
    }
    xor_into(&mut acc, key);
    out[n * (stripes as usize - 1)..].copy_from_slice(&acc);
    Ok(out)
}

/// Recovers a `key_len`-byte key from its split form (qcrypto_afsplit_decode).
pub fn merge(hash: HashAlg, split: &[u8], key_len: usize, stripes: u32) -> Vec<u8> {
    let mut acc = vec![0u8; key_len];
    let mut stripes_iter = split.chunks(key_len).take(stripes as usize);
    for stripe in stripes_iter.by_ref().take(stripes as usize - 1) {
        xor_into(&mut acc, stripe);
        diffuse(hash, &mut acc);
    }
    if let Some(last) = stripes_iter.next() {
        xor_into(&mut acc, last);
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_merge_gives_the_key_back() {
        let key: Vec<u8> = (0..64).collect();
        for hash in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
            let s = split(hash, &key, 4000).unwrap();
            assert_eq!(s.len(), 64 * 4000);
            assert_eq!(merge(hash, &s, 64, 4000), key);
            let mut damaged = s.clone();
            damaged[100] ^= 1;
            assert_ne!(merge(hash, &damaged, 64, 4000), key);
        }
    }
}
