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
use create::opt;

use std::cell::RefCell;
use std::sync::Arc;

use async_trait::async_trait;
use block::crypto::block::{CryptoBlock, Direction};
use block::crypto::luks;
use block::crypto::luks::amend::{amend, AmendOptions};
use block::crypto::luks::header::{LuksHeader, LuksParams, KEY_SLOT_OFFSET, MAGIC};
use block::crypto::luks::volume::{self, HeaderArea};
use block::driver::{
    BlockDriver, BlockLimits, BlockStatus, CreateOption, DriverClass, PreallocMode, RequestFlags,
    StatusFlags,
};
use block::objects::secret::qcrypto_secret_lookup_as_utf8;
use block::{BlockDriverState, Error, IoVector, Options, Result};

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

/// The options `qemu-img amend` takes, in QEMU's order (block_crypto_amend_opts_luks).
pub const AMEND_OPTIONS: [CreateOption; 5] = [
    opt(
        "state",
        "str",
        "Select new state of affected keyslots (active/inactive)",
    ),
    opt(
        "keyslot",
        "num",
        "Select a single keyslot to modify explicitly",
    ),
    opt(
        "old-secret",
        "str",
        "Select all keyslots that match this password",
    ),
    opt(
        "new-secret",
        "str",
        "New secret to set in the matching keyslots. Empty string to erase",
    ),
    opt("iter-time", "num", "Time to spend in PBKDF in milliseconds"),
];

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
    /// The header; amend changes its key slots.
    header: RefCell<LuksHeader>,
    /// The master key, for adding key slots; None when opened for metadata only.
    master_key: Option<Vec<u8>>,
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
    // The secret is part of what opens the image, so the node is named in JSON.
    let json_name = key_secret
        .as_deref()
        .map(|id| block::open::json_filename(bs, &[("key-secret", id)]));
    let password = match (key_secret, bs.open_flags().no_io) {
        (_, true) => None,
        (Some(id), false) => Some(qcrypto_secret_lookup_as_utf8(&id)?),
        (None, false) => {
            return Err(Error::invalid(
                "Parameter 'key-secret' is required for cipher",
            ))
        }
    };
    let file = file(bs);
    let area = HeaderArea {
        node: &file,
        offset: 0,
        len: u64::MAX,
    };
    let v = volume::open(&area, password).await?;
    if let Some(name) = json_name {
        bs.set_filename(name);
    }
    let payload_offset = v.header.payload_offset_sector as u64 * 512;
    Ok(Box::new(LuksDriver {
        header: RefCell::new(v.header),
        master_key: v.master_key,
        params: v.params,
        crypto: v.crypto,
        payload_offset,
    }))
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
            let data = crypto
                .clone()
                .co_encdec(at, data, Direction::Decrypt)
                .await?;
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
            let data = crypto
                .clone()
                .co_encdec(at, data, Direction::Encrypt)
                .await?;
            let flags = flags & RequestFlags::FUA;
            // The ciphertext buffer itself goes down, with no second copy.
            file.co_pwritev(self.payload_offset + at, &IoVector::from_vec(data), flags)
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
        let data = luks::info_json(&self.header.borrow(), &self.params);
        Some(serde_json::json!({"type": "luks", "data": data}))
    }

    fn is_encrypted(&self) -> bool {
        true
    }

    /// Adds or erases key slots (block_crypto_amend_options_luks).
    async fn co_amend(
        &self,
        bs: &BlockDriverState,
        options: &mut Options,
        force: bool,
        _status: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        let Some(opts) = AmendOptions::take(options)? else {
            return Ok(());
        };
        let file = file(bs);
        let area = HeaderArea {
            node: &file,
            offset: 0,
            len: self.payload_offset.max(KEY_SLOT_OFFSET),
        };
        let mut header = self.header.borrow().clone();
        let key = self.master_key.as_deref();
        let lookup = qcrypto_secret_lookup_as_utf8;
        let result = amend(&area, &mut header, &self.params, key, (opts, lookup), force).await;
        *self.header.borrow_mut() = header;
        result?;
        file.co_flush().await
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
