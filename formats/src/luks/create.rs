//! Creating a LUKS image (QEMU's block_crypto_co_create_opts_luks and
//! qcrypto_block_luks_create): the volume header and slot 0 are computed off the main loop,
//! then the file is sized to header area + virtual size and the two are written.

use std::sync::Arc;

use block::crypto::cipher::{CipherAlg, CipherMode};
use block::crypto::hash::HashAlg;
use block::crypto::ivgen::{essiv_cipher, IvGenAlg};
use block::crypto::luks::header::LuksParams;
use block::crypto::luks::{self, key_material_range, LuksCreateOptions, DEFAULT_ITER_TIME_MS};
use block::driver::{CreateOption, PreallocMode};
use block::objects::secret::qcrypto_secret_lookup_as_utf8;
use block::{AioContext, Error, IoVector, OpenFlags, Options, RequestFlags, Result};

const fn opt(name: &'static str, kind: &'static str, help: &'static str) -> CreateOption {
    CreateOption {
        name,
        kind,
        help,
        default: None,
    }
}

/// Creation options in QEMU's order (block_crypto_create_opts_luks).
pub const CREATE_OPTIONS: [CreateOption; 9] = [
    opt("size", "size", "Virtual disk size"),
    opt(
        "key-secret",
        "str",
        "ID of the secret that provides the keyslot passphrase",
    ),
    opt("cipher-alg", "str", "Name of encryption cipher algorithm"),
    opt("cipher-mode", "str", "Name of encryption cipher mode"),
    opt("ivgen-alg", "str", "Name of IV generator algorithm"),
    opt(
        "ivgen-hash-alg",
        "str",
        "Name of IV generator hash algorithm",
    ),
    opt("hash-alg", "str", "Name of encryption hash algorithm"),
    opt("iter-time", "num", "Time to spend in PBKDF in milliseconds"),
    opt("detached-header", "bool", "Create a detached LUKS header"),
];

fn bad_value(key: &str, value: &str) -> Error {
    Error::invalid(format!("Parameter '{key}' does not accept value '{value}'"))
}

/// Takes an enum-valued option, parsed by `parse`, or its default.
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

/// The algorithms `-o` asks for, with QEMU's defaults (aes-256, xts, plain64, sha256).
fn parse_params(opts: &mut Options) -> Result<LuksParams> {
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

/// The algorithms and the passphrase a creation (or measurement) names.
fn parse_create(options: &mut Options) -> Result<(LuksParams, String)> {
    let key_secret = options.take("key-secret");
    let params = parse_params(options)?;
    if options.contains("detached-header") {
        return Err(Error::invalid("Parameter 'detached-header' is unexpected"));
    }
    let Some(key_secret) = key_secret else {
        return Err(Error::invalid(
            "Parameter 'key-secret' is required for cipher",
        ));
    };
    Ok((params, qcrypto_secret_lookup_as_utf8(&key_secret)?))
}

/// Bytes a LUKS image of `size` virtual bytes needs, allocated or not
/// (block_crypto_measure): the header area is always counted in full.
pub fn measure(options: &mut Options, size: u64) -> Result<u64> {
    let (params, _) = parse_create(options)?;
    Ok(luks::header_area_len(params.master_key_len()) + size)
}

/// Creates a LUKS image at `filename`. Like QEMU, a failed creation leaves no image file
/// behind, not even one that existed before (bdrv_co_delete_file_noerr).
pub async fn create(filename: &str, options: &mut Options) -> Result<()> {
    let result = create_image(filename, options).await;
    let is_file = block::registry::find_protocol(filename).is_ok_and(|c| c.format_name == "file");
    if result.is_err() && is_file {
        let path = filename.strip_prefix("file:").unwrap_or(filename);
        let _ = std::fs::remove_file(path);
    }
    result
}

async fn create_image(filename: &str, options: &mut Options) -> Result<()> {
    let size = options.take_size("size")?.unwrap_or(0);
    let prealloc = match options.take("preallocation") {
        Some(p) => PreallocMode::parse(&p)?,
        None => PreallocMode::Off,
    };
    let (params, password) = parse_create(options)?;
    let password = Arc::new(password);
    let iter_time_ms = options
        .take_u64("iter-time")?
        .unwrap_or(DEFAULT_ITER_TIME_MS);
    let create_opts = LuksCreateOptions {
        params,
        iter_time_ms,
        detached: false,
    };
    let volume = AioContext::current()
        .thread_pool()
        .submit(move || luks::create(&create_opts, password.as_bytes()))
        .await?;

    let mut file_opts = Options::new();
    file_opts.set("size", "0");
    for key in ["nocow", "extent_size_hint"] {
        if let Some(v) = options.take(key) {
            file_opts.set(key, v);
        }
    }
    let class = crate::image_file::create_protocol_file(filename, &file_opts).await?;
    let mut open_opts = Options::new();
    open_opts.set("driver", class.format_name);
    open_opts.set("filename", filename);
    let file = block::bdrv_open(None, open_opts, OpenFlags::default()).await?;
    let written = async {
        let header_len = volume.header_area_len();
        let total = header_len
            .checked_add(size)
            .ok_or_else(|| Error::invalid("Image size is too large"))?;
        file.co_truncate(total, true, prealloc).await?;
        let (slot_offset, _) = key_material_range(&volume.header, 0);
        let material = IoVector::from_slice(&volume.slot0_material);
        file.co_pwritev(slot_offset, &material, RequestFlags::empty())
            .await?;
        let header = IoVector::from_slice(&volume.header.to_bytes());
        file.co_pwritev(0, &header, RequestFlags::empty()).await?;
        file.co_flush().await
    }
    .await;
    let closed = file.close().await;
    written.and(closed)
}
