//! IV generators: how a sector number becomes the IV its encryption starts from (QEMU's
//! crypto/ivgen*.c; dm-crypt's "plain", "plain64" and "essiv").
//!
//! `plain` and `plain64` are the sector number in little endian, truncated to 32 bits or
//! not. `essiv` ("encrypted salt-sector IV") encrypts that number with a second cipher
//! keyed by a hash of the master key, so that IVs are not predictable from the sector.

use super::cipher::{Cipher, CipherAlg, CipherMode};
use super::hash::HashAlg;
use crate::error::{Error, Result};

/// An IV generator algorithm (QCryptoIVGenAlgo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IvGenAlg {
    /// The low 32 bits of the sector number.
    Plain,
    /// The 64-bit sector number.
    Plain64,
    /// The 64-bit sector number encrypted with a key derived from the master key.
    Essiv,
}

impl IvGenAlg {
    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            IvGenAlg::Plain => "plain",
            IvGenAlg::Plain64 => "plain64",
            IvGenAlg::Essiv => "essiv",
        }
    }

    /// Parses QEMU's name.
    pub fn parse(name: &str) -> Option<IvGenAlg> {
        [IvGenAlg::Plain, IvGenAlg::Plain64, IvGenAlg::Essiv]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// The cipher ESSIV encrypts with: dm-crypt keys it with the whole digest, so the key size
/// follows the hash, not the data cipher (qcrypto_block_luks_essiv_cipher).
pub fn essiv_cipher(cipher: CipherAlg, hash: HashAlg) -> Result<CipherAlg> {
    let digest_len = hash.digest_len();
    if digest_len == cipher.key_len() {
        return Ok(cipher);
    }
    let family = cipher.family();
    CipherAlg::from_family(family, digest_len)
        .filter(|_| family != "cast5")
        .ok_or_else(|| {
            let pretty = match family {
                "aes" => "AES".to_string(),
                "serpent" => "Serpent".to_string(),
                "twofish" => "Twofish".to_string(),
                _ => {
                    return Error::invalid(format!(
                        "Cipher {} not supported with essiv",
                        cipher.name()
                    ))
                }
            };
            Error::invalid(format!(
                "No {pretty} cipher with key size {digest_len} available"
            ))
        })
}

/// A keyed IV generator (QCryptoIVGen).
pub struct IvGen {
    alg: IvGenAlg,
    essiv: Option<Cipher>,
}

impl IvGen {
    /// Builds the generator for a master key (qcrypto_ivgen_new). `cipher` and `hash` are
    /// ESSIV's cipher and hash, unused by the plain generators.
    pub fn new(
        alg: IvGenAlg,
        cipher: CipherAlg,
        hash: Option<HashAlg>,
        key: &[u8],
    ) -> Result<IvGen> {
        let essiv = match alg {
            IvGenAlg::Essiv => {
                let hash =
                    hash.ok_or_else(|| Error::invalid("Missing IV generator hash specification"))?;
                let salt = hash.digest(&[key]);
                let n = salt.len().min(cipher.key_len());
                Some(Cipher::new(cipher, CipherMode::Ecb, &salt[..n])?)
            }
            _ => None,
        };
        Ok(IvGen { alg, essiv })
    }

    /// Writes the IV of `sector` into `iv` (qcrypto_ivgen_calculate).
    pub fn calculate(&self, sector: u64, iv: &mut [u8]) -> Result<()> {
        let value = match self.alg {
            IvGenAlg::Plain => sector & 0xffff_ffff,
            IvGenAlg::Plain64 | IvGenAlg::Essiv => sector,
        };
        iv.fill(0);
        let le = value.to_le_bytes();
        let n = iv.len().min(8);
        iv[..n].copy_from_slice(&le[..n]);
        if let Some(c) = &self.essiv {
            let mut block = vec![0u8; c.alg().block_len().max(8)];
            block[..8].copy_from_slice(&le);
            c.encrypt(&[], &mut block)?;
            let n = iv.len().min(block.len());
            iv[..n].copy_from_slice(&block[..n]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_truncates_and_plain64_does_not() {
        let mut iv = [0u8; 16];
        let sector = 0x1_2345_6789u64;
        IvGen::new(IvGenAlg::Plain, CipherAlg::Aes256, None, &[0; 32])
            .unwrap()
            .calculate(sector, &mut iv)
            .unwrap();
        assert_eq!(&iv[..8], &[0x89, 0x67, 0x45, 0x23, 0, 0, 0, 0]);
        IvGen::new(IvGenAlg::Plain64, CipherAlg::Aes256, None, &[0; 32])
            .unwrap()
            .calculate(sector, &mut iv)
            .unwrap();
        assert_eq!(&iv[..8], &[0x89, 0x67, 0x45, 0x23, 1, 0, 0, 0]);
    }

    #[test]
    fn essiv_picks_the_cipher_the_digest_keys() {
        assert_eq!(
            essiv_cipher(CipherAlg::Aes128, HashAlg::Sha256).unwrap(),
            CipherAlg::Aes256
        );
        assert!(essiv_cipher(CipherAlg::Aes128, HashAlg::Sha1).is_err());
        let g = IvGen::new(
            IvGenAlg::Essiv,
            CipherAlg::Aes256,
            Some(HashAlg::Sha256),
            &[1; 16],
        )
        .unwrap();
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        g.calculate(1, &mut a).unwrap();
        g.calculate(2, &mut b).unwrap();
        assert_ne!(a, b);
        assert_ne!(&a[..8], &1u64.to_le_bytes());
    }
}
