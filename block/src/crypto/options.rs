//! The `encrypt.*`/luks creation options as QEMU parses them into
//! QCryptoBlockCreateOptionsLUKS, with its defaults (QEMU's block/crypto.c,
//! block_crypto_create_opts_init, and the QAPI defaults of crypto.json).
//!
//! The luks format reads them at the top level, qcow2 under its `encrypt.` prefix: both
//! hand this module the options with the prefix already stripped.

use super::cipher::{CipherAlg, CipherMode};
use super::hash::HashAlg;
use super::ivgen::{essiv_cipher, IvGenAlg};
use super::luks::header::LuksParams;
use super::luks::DEFAULT_ITER_TIME_MS;
use crate::error::{Error, Result};
use crate::Options;

fn bad_value(key: &str, value: &str) -> Error {
    Error::invalid(format!("Parameter '{key}' does not accept value '{value}'"))
}

/// Takes an enum-valued option, parsed by `parse`, or None when absent.
fn take_enum<T>(
    opts: &mut Options,
    key: &str,
    parse: impl Fn(&str) -> Result<Option<T>>,
) -> Result<Option<T>> {
    match opts.take(key) {
        Some(v) => parse(&v)?.map(Some).ok_or_else(|| bad_value(key, &v)),
        None => Ok(None),
    }
}

/// The algorithms the options ask for, with QEMU's defaults (aes-256, xts, plain64,
/// sha256).
pub fn take_luks_params(opts: &mut Options) -> Result<LuksParams> {
    let cipher = take_enum(opts, "cipher-alg", |v| Ok(CipherAlg::parse(v)))?;
    let mode = take_enum(opts, "cipher-mode", CipherMode::parse)?;
    let ivgen = take_enum(opts, "ivgen-alg", |v| Ok(IvGenAlg::parse(v)))?;
    let ivgen_hash = take_enum(opts, "ivgen-hash-alg", |v| Ok(HashAlg::parse(v)))?;
    let hash = take_enum(opts, "hash-alg", |v| Ok(HashAlg::parse(v)))?;
    let cipher = cipher.unwrap_or(CipherAlg::Aes256);
    let ivgen = ivgen.unwrap_or(IvGenAlg::Plain64);
    // ESSIV needs a hash; the plain generators keep one if given, as dm-crypt does.
    let ivgen_hash = match ivgen {
        IvGenAlg::Essiv => Some(ivgen_hash.unwrap_or(HashAlg::Sha256)),
        _ => ivgen_hash,
    };
    let ivgen_cipher = match (ivgen, ivgen_hash) {
        (IvGenAlg::Essiv, Some(h)) => essiv_cipher(cipher, h)?,
        _ => cipher,
    };
    Ok(LuksParams {
        cipher,
        mode: mode.unwrap_or(CipherMode::Xts),
        ivgen,
        ivgen_hash,
        ivgen_cipher,
        hash: hash.unwrap_or(HashAlg::Sha256),
    })
}

/// `iter-time` in milliseconds, QEMU's 2000 when absent.
pub fn take_iter_time(opts: &mut Options) -> Result<u64> {
    Ok(opts.take_u64("iter-time")?.unwrap_or(DEFAULT_ITER_TIME_MS))
}

/// The id of the secret holding the passphrase; `prefix` is how the option was spelled
/// by the user (`encrypt.` under qcow2), for QEMU's message when it is missing.
pub fn require_key_secret(opts: &mut Options, prefix: &str) -> Result<String> {
    opts.take("key-secret").ok_or_else(|| {
        Error::invalid(format!(
            "Parameter '{prefix}key-secret' is required for cipher"
        ))
    })
}
