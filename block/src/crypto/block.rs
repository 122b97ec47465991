//! Sector-wise payload encryption: a keyed cipher plus an IV generator, applied one
//! encryption sector at a time (QEMU's crypto/block.c, qcrypto_block_encrypt and its
//! cipher helper).
//!
//! The IV of a sector depends on its number counted from the start of the *guest* disk
//! (or of the key material, for key slots), never on where the bytes sit in the host file.

use std::sync::Arc;

use super::cipher::{Cipher, CipherAlg, CipherMode};
use super::ivgen::IvGen;
use crate::error::Result;
use crate::AioContext;

/// The largest buffer [`CryptoBlock::co_encdec`] ciphers on the calling coroutine's thread.
const INLINE_ENCDEC_MAX: usize = 16 * 1024;

/// Which way [`CryptoBlock::co_encdec`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Plaintext to ciphertext.
    Encrypt,
    /// Ciphertext to plaintext.
    Decrypt,
}

/// The encryption a volume's payload (or a key slot's material) uses.
pub struct CryptoBlock {
    cipher: Cipher,
    ivgen: IvGen,
    niv: usize,
    sector_size: usize,
}

impl CryptoBlock {
    /// Pairs a keyed cipher with its IV generator, for `sector_size`-byte sectors.
    pub fn new(cipher: Cipher, ivgen: IvGen, sector_size: usize) -> CryptoBlock {
        let niv = cipher.mode().iv_len(cipher.alg());
        CryptoBlock {
            cipher,
            ivgen,
            niv,
            sector_size,
        }
    }

    /// The cipher algorithm.
    pub fn alg(&self) -> CipherAlg {
        self.cipher.alg()
    }

    /// The cipher mode.
    pub fn mode(&self) -> CipherMode {
        self.cipher.mode()
    }

    /// Size of an encryption sector.
    pub fn sector_size(&self) -> usize {
        self.sector_size
    }

    /// Encrypts `data`, whose first byte starts sector `start_sector`, in place.
    pub fn encrypt(&self, start_sector: u64, data: &mut [u8]) -> Result<()> {
        self.each_sector(start_sector, data, |c, iv, s| c.encrypt(iv, s))
    }

    /// Decrypts `data`, whose first byte starts sector `start_sector`, in place.
    pub fn decrypt(&self, start_sector: u64, data: &mut [u8]) -> Result<()> {
        self.each_sector(start_sector, data, |c, iv, s| c.decrypt(iv, s))
    }

    /// Encrypts or decrypts `buf`, whose first byte is at byte `offset` of the encrypted
    /// space, and hands the buffer back. Large buffers go to the thread pool, so that
    /// cipher work runs beside the main loop (qcow2_co_encdec); small ones are done in
    /// place, as QEMU's luks driver does them all (block_crypto_co_preadv): AES-NI takes
    /// a few microseconds over 16 KiB, less than the hand-off to a worker and back costs.
    pub async fn co_encdec(
        self: Arc<Self>,
        offset: u64,
        mut buf: Vec<u8>,
        dir: Direction,
    ) -> Result<Vec<u8>> {
        let sector = offset / self.sector_size as u64;
        if buf.len() <= INLINE_ENCDEC_MAX {
            match dir {
                Direction::Encrypt => self.encrypt(sector, &mut buf)?,
                Direction::Decrypt => self.decrypt(sector, &mut buf)?,
            }
            return Ok(buf);
        }
        AioContext::current()
            .thread_pool()
            .submit(move || {
                match dir {
                    Direction::Encrypt => self.encrypt(sector, &mut buf),
                    Direction::Decrypt => self.decrypt(sector, &mut buf),
                }
                .map(|_| buf)
            })
            .await
    }

    fn each_sector(
        &self,
        start_sector: u64,
        data: &mut [u8],
        op: impl Fn(&Cipher, &[u8], &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let mut iv = vec![0u8; self.niv];
        for (i, sector) in data.chunks_mut(self.sector_size).enumerate() {
            if self.niv > 0 {
                self.ivgen.calculate(start_sector + i as u64, &mut iv)?;
            }
            op(&self.cipher, &iv, sector)?;
        }
        Ok(())
    }
}
