//! qcow's legacy AES encryption (QEMU's crypto/block-qcow.c): AES-128-CBC per 512-byte
//! sector with the sector number as IV, keyed by the passphrase itself, cut or
//! zero-padded to 16 bytes. It is weak, and QEMU keeps it only to read old images.

use block::crypto::block::CryptoBlock;
use block::crypto::cipher::{Cipher, CipherAlg, CipherMode};
use block::crypto::ivgen::{IvGen, IvGenAlg};
use block::objects::secret::qcrypto_secret_lookup_as_utf8;
use block::{Error, Options, Result};

/// The cipher of the passphrase in secret `key_secret` (qcrypto_block_qcow_init).
fn keyed(key_secret: Option<String>) -> Result<CryptoBlock> {
    let id = key_secret
        .ok_or_else(|| Error::invalid("Parameter 'encrypt.key-secret' is required for cipher"))?;
    let password = qcrypto_secret_lookup_as_utf8(&id)?;
    let mut key = [0u8; 16];
    let n = password.len().min(16);
    key[..n].copy_from_slice(&password.as_bytes()[..n]);
    let cipher = Cipher::new(CipherAlg::Aes128, CipherMode::Cbc, &key)?;
    let ivgen = IvGen::new(IvGenAlg::Plain64, CipherAlg::Aes128, None, &key)?;
    Ok(CryptoBlock::new(cipher, ivgen, 512))
}

/// The payload cipher of an encrypted image being opened, from the `encrypt.*` options;
/// None when only metadata is looked at (BDRV_O_NO_IO).
pub fn open(options: &mut Options, no_io: bool) -> Result<Option<CryptoBlock>> {
    let key_secret = options.take("encrypt.key-secret");
    match options.take("encrypt.format").as_deref() {
        None | Some("aes") => {}
        Some(other) => {
            return Err(Error::invalid(format!(
                "Parameter 'encrypt.format' does not accept value '{other}'"
            )))
        }
    }
    if no_io {
        return Ok(None);
    }
    keyed(key_secret).map(Some)
}

/// Whether a new image is encrypted, checking that its passphrase can be found
/// (`encryption=on` or `encrypt.format=aes` with `encrypt.key-secret`).
pub fn create(options: &mut Options) -> Result<bool> {
    let legacy = options.take_bool("encryption")?.unwrap_or(false);
    let format = options.take("encrypt.format");
    let key_secret = options.take("encrypt.key-secret");
    match format.as_deref() {
        None if !legacy => return Ok(false),
        None | Some("aes") => {}
        Some(other) => {
            return Err(Error::invalid(format!(
                "Parameter 'encrypt.format' does not accept value '{other}'"
            )))
        }
    }
    keyed(key_secret).map(|_| true)
}
