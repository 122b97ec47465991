//! The `secret` object: a passphrase or key given inline, in a file, in base64, or
//! encrypted with another secret (QEMU's crypto/secret.c and crypto/secret_common.c).
//!
//! Secrets keep passphrases off command lines that `ps` shows: `file=` reads them from a
//! file, and `keyid=`/`iv=` let a management tool pass them AES-256-CBC encrypted under a
//! master secret. The bytes are decoded once, when the object is created.

use std::sync::Arc;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use super::{check_unused, lookup, UserObject};
use crate::crypto::cipher::aes256_cbc_decrypt;
use crate::error::{Error, Result};
use crate::options::Options;

/// A loaded secret (QCryptoSecret).
pub struct Secret {
    data: Vec<u8>,
}

/// How the secret's text is encoded (QCryptoSecretFormat).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Raw,
    Base64,
}

/// QEMU decodes base64 leniently about padding (glib's decoder).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn base64_decode(text: &[u8]) -> Result<Vec<u8>> {
    let text: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    BASE64
        .decode(&text)
        .map_err(|_| Error::invalid("Base64 data contains invalid characters"))
}

impl Secret {
    /// Builds a secret from its `--object` options (qcrypto_secret_complete).
    pub fn create(opts: &mut Options) -> Result<UserObject> {
        let format = match opts.take("format").as_deref() {
            None | Some("raw") => Format::Raw,
            Some("base64") => Format::Base64,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "Parameter 'format' does not accept value '{other}'"
                )))
            }
        };
        let data = opts.take("data");
        let file = opts.take("file");
        let keyid = opts.take("keyid");
        let iv = opts.take("iv");
        check_unused(opts)?;
        let input = match (data, file) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid("'file' and 'data' are mutually exclusive"))
            }
            (None, None) => return Err(Error::invalid("Either 'file' or 'data' must be provided")),
            (Some(d), None) => d.into_bytes(),
            (None, Some(path)) => std::fs::read(&path).map_err(|e| {
                Error::invalid(format!(
                    "Unable to read {path}: Failed to open file \u{201c}{path}\u{201d}: {}",
                    crate::error::strerror(e.raw_os_error().unwrap_or(libc::EIO))
                ))
            })?,
        };
        let data = match (keyid, format) {
            (Some(keyid), _) => decrypt(&keyid, iv.as_deref(), format, &input)?,
            (None, Format::Base64) => base64_decode(&input)?,
            (None, Format::Raw) => input,
        };
        Ok(UserObject::Secret(Secret { data }))
    }

    /// The secret's bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

/// Decrypts secret data encrypted under the secret `keyid` (qcrypto_secret_decrypt):
/// AES-256-CBC with a base64 IV and PKCS#7-style padding.
fn decrypt(keyid: &str, iv: Option<&str>, format: Format, input: &[u8]) -> Result<Vec<u8>> {
    let key = qcrypto_secret_lookup(keyid)?;
    if key.len() != 32 {
        return Err(Error::invalid("Key should be 32 bytes in length"));
    }
    let iv = iv.ok_or_else(|| Error::invalid("IV is required to decrypt secret"))?;
    let iv = base64_decode(iv.as_bytes())?;
    if iv.len() != 16 {
        return Err(Error::invalid(format!(
            "IV should be 16 bytes in length not {}",
            iv.len()
        )));
    }
    let mut text = match format {
        Format::Base64 => base64_decode(input)?,
        Format::Raw => input.to_vec(),
    };
    if text.is_empty() || text.len() % 16 != 0 {
        return Err(Error::invalid(format!(
            "Length {} must be a multiple of block size 16",
            text.len()
        )));
    }
    aes256_cbc_decrypt(&key, &iv, &mut text)?;
    let pad = text[text.len() - 1] as usize;
    if pad > 16 || pad > text.len() {
        return Err(Error::invalid(format!(
            "Incorrect number of padding bytes ({pad}) found on decrypted data"
        )));
    }
    text.truncate(text.len() - pad);
    Ok(text)
}

/// The bytes of the secret `id` (qcrypto_secret_lookup).
pub fn qcrypto_secret_lookup(id: &str) -> Result<Vec<u8>> {
    let object: Arc<UserObject> =
        lookup(id).ok_or_else(|| Error::invalid(format!("No secret with id '{id}'")))?;
    match &*object {
        UserObject::Secret(s) => Ok(s.data.clone()),
        _ => Err(Error::invalid(format!(
            "Object with id '{id}' is not a secret"
        ))),
    }
}

/// The secret `id` as text (qcrypto_secret_lookup_as_utf8): passphrases must be UTF-8.
pub fn qcrypto_secret_lookup_as_utf8(id: &str) -> Result<String> {
    String::from_utf8(qcrypto_secret_lookup(id)?)
        .map_err(|_| Error::invalid(format!("Data from secret {id} is not valid UTF-8")))
}

/// The secret `id` in base64 (qcrypto_secret_lookup_as_base64): how librados takes a key.
pub fn qcrypto_secret_lookup_as_base64(id: &str) -> Result<String> {
    Ok(base64::engine::general_purpose::STANDARD.encode(qcrypto_secret_lookup(id)?))
}

#[cfg(test)]
mod tests {
    use super::super::user_creatable_add_from_str as add;
    use super::*;

    #[test]
    fn data_file_and_base64_secrets() {
        add("secret,id=t-raw,data=abc").unwrap();
        assert_eq!(qcrypto_secret_lookup("t-raw").unwrap(), b"abc");
        add("secret,id=t-b64,data=YWJj,format=base64").unwrap();
        assert_eq!(qcrypto_secret_lookup_as_utf8("t-b64").unwrap(), "abc");
        assert_eq!(qcrypto_secret_lookup_as_base64("t-raw").unwrap(), "YWJj");
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"pw\n").unwrap();
        add(&format!("secret,id=t-file,file={}", f.path().display())).unwrap();
        assert_eq!(qcrypto_secret_lookup("t-file").unwrap(), b"pw\n");
        let err = |s: &str| add(s).unwrap_err().to_string();
        assert_eq!(
            err("secret,id=t-x"),
            "Either 'file' or 'data' must be provided"
        );
        assert_eq!(
            err("secret,id=t-x,data=a,file=b"),
            "'file' and 'data' are mutually exclusive"
        );
        assert_eq!(
            err("secret,id=t-x,data=a,bogus=1"),
            "Parameter 'bogus' is unexpected"
        );
        assert_eq!(err("secret,data=a"), "Parameter 'id' is missing");
        assert_eq!(
            err("secret,id=t-raw,data=a"),
            "attempt to add duplicate property 't-raw' to object (type 'container')"
        );
        assert_eq!(
            qcrypto_secret_lookup("t-none").unwrap_err().to_string(),
            "No secret with id 't-none'"
        );
    }

    #[test]
    fn aes_encrypted_secret() {
        // "abc" + 13 bytes of padding, AES-256-CBC under key "0123...cdef", IV all zero.
        use cipher::{BlockEncryptMut, KeyIvInit};
        let key = b"0123456789abcdef0123456789abcdef";
        let mut block = [13u8; 16];
        block[..3].copy_from_slice(b"abc");
        let mut enc = cbc::Encryptor::<aes::Aes256>::new(key.into(), &[0u8; 16].into());
        enc.encrypt_block_mut((&mut block).into());
        add(&format!(
            "secret,id=t-master,data={}",
            std::str::from_utf8(key).unwrap()
        ))
        .unwrap();
        let data = BASE64.encode(block);
        add(&format!(
            "secret,id=t-enc,keyid=t-master,format=base64,iv=AAAAAAAAAAAAAAAAAAAAAA==,data={data}"
        ))
        .unwrap();
        assert_eq!(qcrypto_secret_lookup("t-enc").unwrap(), b"abc");
        assert_eq!(
            add("secret,id=t-e2,keyid=t-master,data=a")
                .unwrap_err()
                .to_string(),
            "IV is required to decrypt secret"
        );
    }
}
