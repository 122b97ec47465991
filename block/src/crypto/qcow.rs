//! The legacy qcow/qcow2 AES encryption (QEMU's crypto/block-qcow.c): the passphrase
//! itself, cut or NUL-padded to 16 bytes, is the AES-128 key; sectors are encrypted in
//! CBC mode with the plain64 IV of their *guest* sector number.
//!
//! QEMU keeps it only to read old images: the key has no salt, no stretching, and
//! identical guest sectors of two images with the same passphrase encrypt identically.

use super::block::CryptoBlock;
use super::cipher::{Cipher, CipherAlg, CipherMode};
use super::ivgen::{IvGen, IvGenAlg};
use crate::error::Result;

/// Encryption sector size of the legacy format.
pub const SECTOR_SIZE: usize = 512;

/// The payload cipher for `password` (qcrypto_block_qcow_init).
pub fn crypto_block(password: &[u8]) -> Result<CryptoBlock> {
    let mut key = [0u8; 16];
    let n = password.len().min(key.len());
    key[..n].copy_from_slice(&password[..n]);
    let cipher = Cipher::new(CipherAlg::Aes128, CipherMode::Cbc, &key)?;
    let ivgen = IvGen::new(IvGenAlg::Plain64, CipherAlg::Aes128, None, &key)?;
    Ok(CryptoBlock::new(cipher, ivgen, SECTOR_SIZE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_round_trip_and_depend_on_the_sector_number() {
        let c = crypto_block(b"a passphrase longer than sixteen").unwrap();
        let plain = vec![7u8; 1024];
        let mut a = plain.clone();
        c.encrypt(3, &mut a).unwrap();
        assert_ne!(a, plain);
        assert_ne!(a[..512], a[512..], "each sector has its own IV");
        c.decrypt(3, &mut a).unwrap();
        assert_eq!(a, plain);
    }
}
