//! Encrypted images (QEMU's block/qcow2.c: the crypto part of qcow2_update_options_prepare
//! and qcow2_do_open, qcow2_set_up_encryption, qcow2_crypto_hdr_*_func, qcow2_co_encdec;
//! docs/interop/qcow2.txt "Full disk encryption header pointer").
//!
//! Only guest data is encrypted, never metadata: a data cluster is decrypted after it is
//! read and encrypted before it is written, 512-byte sector by sector. LUKS
//! (`crypt_method` 2) keeps its header area in clusters named by a header extension and
//! numbers sectors by their *host* offset; the legacy AES method (1) has no header and
//! numbers them by their *guest* offset, which QEMU keeps only for old images.

use std::cell::RefCell;
use std::sync::Arc;

use block::crypto::block::{CryptoBlock, Direction};
use block::crypto::luks::amend::{self as luks_amend, AmendOptions};
use block::crypto::luks::header::{LuksHeader, LuksParams};
use block::crypto::luks::volume::{self, HeaderArea, LuksVolume};
use block::crypto::luks::{self, LuksCreateOptions};
use block::crypto::options::{require_key_secret, take_iter_time, take_luks_params};
use block::crypto::qcow;
use block::objects::secret::qcrypto_secret_lookup_as_utf8;
use block::{BlockDriverState, Error, Options, Result};
use serde_json::{json, Value};

use super::header::{Header, CRYPT_AES, CRYPT_LUKS};
use super::Qcow2;

/// An image's encryption, as opened.
pub struct Qcow2Crypto {
    /// The payload cipher; None when opened for metadata only (`qemu-img info`).
    block: Option<Arc<CryptoBlock>>,
    /// The LUKS volume; None for AES.
    luks: Option<LuksState>,
}

/// What an open LUKS volume keeps: its header (amend changes it), algorithms, master key
/// and where its header area is.
struct LuksState {
    header: RefCell<LuksHeader>,
    params: LuksParams,
    master_key: Option<Vec<u8>>,
    area: (u64, u64),
}

fn format_name(method: u32) -> &'static str {
    if method == CRYPT_AES {
        "aes"
    } else {
        "luks"
    }
}

/// The passphrase the `encrypt.key-secret` secret holds.
fn password(opts: &mut Options) -> Result<String> {
    qcrypto_secret_lookup_as_utf8(&key_secret(opts)?)
}

fn key_secret(opts: &mut Options) -> Result<String> {
    require_key_secret(opts, "encrypt.")
}

impl Qcow2Crypto {
    /// Opens the encryption the header declares with the `encrypt.*` options; with `no_io`
    /// no passphrase is needed, nor asked for.
    pub async fn open(
        file: &BlockDriverState,
        h: &Header,
        options: &mut Options,
        no_io: bool,
    ) -> Result<Option<Qcow2Crypto>> {
        let mut opts = options.extract_prefix("encrypt");
        let format = opts.take("format");
        if h.crypt_method == 0 {
            return match format {
                Some(f) => Err(Error::invalid(format!(
                    "No encryption in image header, but options specified format '{f}'"
                ))),
                None => Ok(None),
            };
        }
        let name = format_name(h.crypt_method);
        if let Some(f) = format.filter(|f| f != name) {
            return Err(Error::invalid(format!(
                "Header reported '{name}' encryption format but options specify '{f}'"
            )));
        }
        let password = if no_io {
            None
        } else {
            Some(password(&mut opts)?)
        };
        if h.crypt_method == CRYPT_AES {
            let block = match password {
                Some(p) => Some(Arc::new(qcow::crypto_block(p.as_bytes())?)),
                None => None,
            };
            return Ok(Some(Qcow2Crypto { block, luks: None }));
        }
        let (offset, len) = h
            .crypto_header
            .ok_or_else(|| Error::invalid("Missing CRYPTO header for crypt method 2"))?;
        let area = HeaderArea {
            node: file,
            offset,
            len,
        };
        let LuksVolume {
            header,
            params,
            crypto,
            master_key,
        } = volume::open(&area, password).await?;
        let luks = LuksState {
            header: RefCell::new(header),
            params,
            master_key,
            area: (offset, len),
        };
        Ok(Some(Qcow2Crypto {
            block: crypto,
            luks: Some(luks),
        }))
    }

    /// Byte offset that numbers the sectors of data at `host` for guest offset `guest`
    /// (QEMU's crypt_physical_offset).
    fn iv_offset(&self, host: u64, guest: u64) -> u64 {
        if self.luks.is_some() {
            host
        } else {
            guest
        }
    }

    fn block(&self) -> Result<Arc<CryptoBlock>> {
        self.block
            .clone()
            .ok_or_else(|| Error::new(libc::EIO, "The image was opened without its key"))
    }

    /// Encrypts guest data about to be written at `host` for guest offset `guest`.
    pub async fn encrypt(&self, host: u64, guest: u64, data: Vec<u8>) -> Result<Vec<u8>> {
        let at = self.iv_offset(host, guest);
        self.block()?.co_encdec(at, data, Direction::Encrypt).await
    }

    /// Decrypts data read from `host` for guest offset `guest`.
    pub async fn decrypt(&self, host: u64, guest: u64, data: Vec<u8>) -> Result<Vec<u8>> {
        let at = self.iv_offset(host, guest);
        self.block()?.co_encdec(at, data, Direction::Decrypt).await
    }

    /// The `encrypt` member of `qemu-img info`'s format-specific data
    /// (ImageInfoSpecificQCow2Encryption), in the order QEMU prints it.
    pub fn info(&self) -> Value {
        let Some(l) = &self.luks else {
            return json!({"format": "aes"});
        };
        let mut out = serde_json::Map::new();
        if let Value::Object(data) = luks::info_json(&l.header.borrow(), &l.params) {
            for (k, v) in data {
                if k == "cipher-mode" {
                    out.insert("format".into(), json!("luks"));
                }
                out.insert(k, v);
            }
        }
        Value::Object(out)
    }
}

/// Adds or erases LUKS key slots (the encryption part of qcow2_amend_options).
pub async fn amend(
    crypto: Option<&Qcow2Crypto>,
    file: &BlockDriverState,
    opts: AmendOptions,
    force: bool,
) -> Result<()> {
    let Some(crypto) = crypto else {
        return Err(Error::invalid(
            "Can't amend encryption options - encryption not present",
        ));
    };
    let Some(l) = &crypto.luks else {
        return Err(Error::not_supported(
            "Only LUKS encryption options can be amended",
        ));
    };
    let area = HeaderArea {
        node: file,
        offset: l.area.0,
        len: l.area.1,
    };
    let mut header = l.header.borrow().clone();
    let key = l.master_key.as_deref();
    let lookup = qcrypto_secret_lookup_as_utf8;
    let result = luks_amend::amend(&area, &mut header, &l.params, key, (opts, lookup), force).await;
    *l.header.borrow_mut() = header;
    result?;
    file.co_flush().await
}

/// What `encrypt.*` (or the deprecated `encryption=on`) asks a new image for; the
/// passphrase's secret is looked up only when the image is set up, as QEMU does.
#[derive(Clone, Debug)]
pub enum EncryptCreate {
    /// The legacy AES method, with the id of the passphrase's secret.
    Aes(String),
    /// LUKS with these options, and the id of the passphrase's secret.
    Luks(LuksCreateOptions, String),
}

impl EncryptCreate {
    /// Takes the encryption creation options (qcow2_co_create_opts and
    /// block_crypto_create_opts_init): None when the image is not to be encrypted.
    pub fn take(options: &mut Options) -> Result<Option<EncryptCreate>> {
        let legacy = options.take_bool("encryption")?.unwrap_or(false);
        let mut opts = options.extract_prefix("encrypt");
        let format = match (opts.take("format"), legacy) {
            (Some(f), true) if f != "aes" => {
                return Err(Error::invalid(
                    "Options \"encrypt\" and \"encrypt.format\" are mutually exclusive",
                ))
            }
            (Some(f), _) => f,
            (None, true) => "aes".to_string(),
            (None, false) if opts.is_empty() => return Ok(None),
            (None, false) => return Err(Error::invalid("Parameter 'encrypt.format' is missing")),
        };
        match format.as_str() {
            "aes" => Ok(Some(EncryptCreate::Aes(key_secret(&mut opts)?))),
            "luks" => {
                let secret = key_secret(&mut opts)?;
                let create = LuksCreateOptions {
                    params: take_luks_params(&mut opts)?,
                    iter_time_ms: take_iter_time(&mut opts)?,
                    detached: false,
                };
                Ok(Some(EncryptCreate::Luks(create, secret)))
            }
            other => Err(Error::invalid(format!(
                "Parameter 'encrypt.format' does not accept value '{other}'"
            ))),
        }
    }
}

impl Qcow2 {
    /// Encrypts a freshly created image (qcow2_set_up_encryption): for LUKS, the header
    /// area goes into newly allocated, zeroed clusters the header extension points to.
    pub(super) async fn set_up_encryption(&self, how: EncryptCreate) -> Result<()> {
        let (method, volume) = match how {
            EncryptCreate::Aes(secret) => {
                qcrypto_secret_lookup_as_utf8(&secret)?;
                (CRYPT_AES, None)
            }
            EncryptCreate::Luks(opts, secret) => {
                let password = qcrypto_secret_lookup_as_utf8(&secret)?;
                (CRYPT_LUKS, Some(volume::create(opts, password).await?))
            }
        };
        let mut meta = self.meta.lock().await;
        if let Some(volume) = volume {
            let len = volume.header_area_len();
            let clusters = len.div_ceil(self.g.cluster_size);
            let offset = meta.alloc_clusters(clusters).await?;
            let file = meta.file.clone();
            file.co_pwrite_zeroes(
                offset,
                clusters * self.g.cluster_size,
                block::RequestFlags::empty(),
            )
            .await?;
            let area = HeaderArea {
                node: &file,
                offset,
                len,
            };
            volume::write(&area, &volume).await?;
            meta.header.crypto_header = Some((offset, len));
        }
        meta.header.crypt_method = method;
        meta.write_header().await?;
        let mut info = self.info.borrow_mut();
        info.crypt_method = method;
        info.crypto_header = meta.header.crypto_header;
        Ok(())
    }
}

/// Puts `encrypt` into qcow2's format-specific data right after `refcount-bits`, where
/// QEMU prints it.
pub fn insert_info(data: &mut Value, encrypt: Value) {
    let Value::Object(map) = data else {
        return;
    };
    let mut encrypt = Some(encrypt);
    for (k, v) in std::mem::take(map) {
        let after = k == "refcount-bits";
        map.insert(k, v);
        if after {
            if let Some(e) = encrypt.take() {
                map.insert("encrypt".into(), e);
            }
        }
    }
}
