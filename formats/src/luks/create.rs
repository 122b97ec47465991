//! Creating a LUKS image (QEMU's block_crypto_co_create_opts_luks and
//! qcrypto_block_luks_create): the volume header and slot 0 are computed off the main loop,
//! then the file is sized to header area + virtual size and the two are written.

use block::crypto::luks::header::LuksParams;
use block::crypto::luks::volume::{self, HeaderArea};
use block::crypto::luks::{self, LuksCreateOptions};
use block::crypto::options::{take_iter_time, take_luks_params};
use block::driver::{CreateOption, PreallocMode};
use block::objects::secret::qcrypto_secret_lookup_as_utf8;
use block::{Error, OpenFlags, Options, Result};

/// An option without a default.
pub(crate) const fn opt(
    name: &'static str,
    kind: &'static str,
    help: &'static str,
) -> CreateOption {
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

/// The algorithms and the passphrase a creation (or measurement) names.
fn parse_create(options: &mut Options) -> Result<(LuksParams, String)> {
    let key_secret = options.take("key-secret");
    let params = take_luks_params(options)?;
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
    let create_opts = LuksCreateOptions {
        params,
        iter_time_ms: take_iter_time(options)?,
        detached: false,
    };
    let volume = volume::create(create_opts, password).await?;

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
        let area = HeaderArea {
            node: &file,
            offset: 0,
            len: header_len,
        };
        volume::write(&area, &volume).await?;
        file.co_flush().await
    }
    .await;
    let closed = file.close().await;
    written.and(closed)
}
