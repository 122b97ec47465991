//! The `luks` format: a LUKS1 volume whose payload is the guest disk, encrypted sector by
//! sector (QEMU's block/crypto.c over crypto/block-luks.c).
//!
//! Opening reads the header, checks it, and (unless only metadata is wanted, as for
//! `qemu-img info`) unlocks a key slot with the passphrase of the `key-secret` object. Guest
//! offset N lives at payload offset + N in the file; its 512-byte sector N/512 is encrypted
//! with the IV of that sector number. PBKDF2 and the ciphers run on the thread pool, never
//! on the main loop.

mod create;

pub use create::measure;

use std::sync::Arc;

use async_trait::async_trait;
use block::crypto::block::CryptoBlock;
use block::crypto::luks::header::{LuksHeader, LuksParams, HEADER_LEN, MAGIC, NUM_KEY_SLOTS};
use block::crypto::luks::{self, key_material_range, load_key};
use block::driver::{
    BlockDriver, BlockLimits, BlockStatus, DriverClass, PreallocMode, RequestFlags, StatusFlags,
};
use block::objects::secret::qcrypto_secret_lookup_as_utf8;
use block::{AioContext, BlockDriverState, Error, IoVector, Options, Result};

/// The class registered as `luks`.
pub static LUKS: DriverClass = DriverClass {
    format_name: "luks",
    protocol_name: None,
    is_format: true,
    probe: Some(probe),
    open: |bs, options| Box::pin(open(bs, options)),
    create: Some(|filename, options| Box::pin(create::create(filename, options))),
    create_options: &create::CREATE_OPTIONS,
};

/// Bytes encrypted or decrypted per bounce buffer (QEMU's BLOCK_CRYPTO_MAX_IO_SIZE).
const MAX_IO_SIZE: usize = 1024 * 1024;

/// Scores 100 for the LUKS magic with version 1 (block_crypto_probe_luks).
fn probe(buf: &[u8], _filename: &str) -> u32 {
    let ok = buf.len() >= 8 && buf[..6] == MAGIC && u16::from_be_bytes([buf[6], buf[7]]) == 1;
    if ok {
        100
    } else {
        0
    }
}

/// An open LUKS volume.
pub struct LuksDriver {
    header: LuksHeader,
    params: LuksParams,
    /// The payload cipher; None when opened for metadata only.
    crypto: Option<Arc<CryptoBlock>>,
    payload_offset: u64,
}

fn file(bs: &BlockDriverState) -> std::rc::Rc<BlockDriverState> {
    bs.file().expect("format nodes have a file child")
}

/// Reads `len` bytes of the file at `offset`.
pub(crate) async fn read_file(bs: &BlockDriverState, offset: u64, len: usize) -> Result<Vec<u8>> {
    let buf = IoVector::alloc(len);
    bs.co_preadv(offset, &buf, RequestFlags::empty()).await?;
    Ok(buf.to_vec())
}

async fn open(bs: &BlockDriverState, options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let key_secret = options.take("key-secret");
    let no_io = bs.open_flags().no_io;
    let password = match (&key_secret, no_io) {
        (Some(id), false) => Some(qcrypto_secret_lookup_as_utf8(id)?),
        (None, false) => {
            return Err(Error::invalid(
                "Parameter 'key-secret' is required for cipher",
            ))
        }
        (_, true) => None,
    };
    let file = file(bs);
    let header = LuksHeader::parse(&read_file(&file, 0, HEADER_LEN).await?)?;
    header.check(false)?;
    let params = header.params()?;
    let crypto = match password {
        Some(password) => Some(Arc::new(unlock(&file, &header, &params, password).await?)),
        None => None,
    };
    let payload_offset = header.payload_offset_sector as u64 * 512;
    Ok(Box::new(LuksDriver {
        header,
        params,
        crypto,
        payload_offset,
    }))
}

/// Tries the passphrase on every active slot, off the main loop
/// (qcrypto_block_luks_find_key), and keys the payload cipher with the master key.
async fn unlock(
    file: &BlockDriverState,
    header: &LuksHeader,
    params: &LuksParams,
    password: String,
) -> Result<CryptoBlock> {
    let password = Arc::new(password);
    for slot in 0..NUM_KEY_SLOTS {
        if !header.key_slots[slot].is_active() {
            continue;
        }
        let (offset, len) = key_material_range(header, slot);
        let material = read_file(file, offset, len).await?;
        let (h, p, pw) = (header.clone(), *params, password.clone());
        let found = AioContext::current()
            .thread_pool()
            .submit(move || load_key(&h, &p, slot, pw.as_bytes(), &material))
            .await?;
        if let Some(master_key) = found {
            return luks::crypto_block(params, &master_key);
        }
    }
    Err(Error::new(
        libc::EACCES,
        "Invalid password, cannot unlock any keyslot",
    ))
}

impl LuksDriver {
    fn crypto(&self) -> Result<Arc<CryptoBlock>> {
        self.crypto
            .clone()
            .ok_or_else(|| Error::new(libc::EIO, "The LUKS volume was opened without a key"))
    }
}

/// (offset, length) of each bounce buffer a request of `len` bytes goes through.
fn bounce_chunks(len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len)
        .step_by(MAX_IO_SIZE)
        .map(move |done| (done, (len - done).min(MAX_IO_SIZE)))
}

/// Encrypts or decrypts `buf` on the thread pool and hands the buffer back.
async fn on_pool(
    crypto: Arc<CryptoBlock>,
    start_sector: u64,
    mut buf: Vec<u8>,
    encrypt: bool,
) -> Result<Vec<u8>> {
    AioContext::current()
        .thread_pool()
        .submit(move || {
            if encrypt {
                crypto.encrypt(start_sector, &mut buf)
            } else {
                crypto.decrypt(start_sector, &mut buf)
            }
            .map(|_| buf)
        })
        .await
}

#[async_trait(?Send)]
impl BlockDriver for LuksDriver {
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        let (crypto, file) = (self.crypto()?, file(bs));
        for (done, n) in bounce_chunks(qiov.len()) {
            let at = offset + done as u64;
            let data = read_file(&file, self.payload_offset + at, n).await?;
            let data = on_pool(crypto.clone(), at / 512, data, false).await?;
            qiov.copy_from_slice(done, &data);
        }
        Ok(())
    }

    async fn co_pwritev(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        let (crypto, file) = (self.crypto()?, file(bs));
        for (done, n) in bounce_chunks(qiov.len()) {
            let at = offset + done as u64;
            let mut data = vec![0u8; n];
            qiov.copy_to_slice(done, &mut data);
            let data = on_pool(crypto.clone(), at / 512, data, true).await?;
            let flags = flags & RequestFlags::FUA;
            file.co_pwritev(
                self.payload_offset + at,
                &IoVector::from_slice(&data),
                flags,
            )
            .await?;
        }
        Ok(())
    }

    /// Everything is data: without its key nothing can tell zeroes apart.
    async fn co_block_status(
        &self,
        _bs: &BlockDriverState,
        _want_zero: bool,
        _offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        Ok(BlockStatus::new(StatusFlags::DATA, bytes))
    }

    async fn co_truncate(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        exact: bool,
        prealloc: PreallocMode,
    ) -> Result<()> {
        let end = offset
            .checked_add(self.payload_offset)
            .ok_or_else(|| Error::invalid("Image size is too large"))?;
        file(bs).co_truncate(end, exact, prealloc).await
    }

    async fn co_getlength(&self, bs: &BlockDriverState) -> Result<u64> {
        let len = file(bs).getlength();
        len.checked_sub(self.payload_offset)
            .ok_or_else(|| Error::from_errno(libc::EIO))
    }

    /// Requests come in whole encryption sectors; the generic path pads the rest.
    fn refresh_limits(&self, bs: &BlockDriverState) -> BlockLimits {
        let f = file(bs).limits();
        BlockLimits {
            request_alignment: f.request_alignment.max(512),
            ..f
        }
    }

    fn supported_write_flags(&self) -> RequestFlags {
        RequestFlags::FUA
    }

    fn get_specific_info(&self, _bs: &BlockDriverState) -> Option<serde_json::Value> {
        let data = luks::info_json(&self.header, &self.params);
        Some(serde_json::json!({"type": "luks", "data": data}))
    }

    fn is_encrypted(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
