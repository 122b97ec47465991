//! A LUKS volume whose header area lives in a node: unlocking it and writing a new one,
//! with PBKDF2 on the thread pool (QEMU's qcrypto_block_open and qcrypto_block_create,
//! driven by the read/write callbacks of block/crypto.c and block/qcow2.c).
//!
//! The luks format keeps the header area at the start of its file; qcow2 keeps it in the
//! clusters its "full disk encryption header pointer" extension names. Offsets inside the
//! area are the same either way, so both come here with their own [`HeaderArea`].

use std::sync::Arc;

use super::header::{LuksHeader, LuksParams, HEADER_LEN, NUM_KEY_SLOTS};
use super::{crypto_block, key_material_range, load_key, LuksCreateOptions, NewVolume};
use crate::crypto::block::CryptoBlock;
use crate::error::{Error, Result};
use crate::{AioContext, BlockDriverState, IoVector, RequestFlags};

/// Where a volume's header area is: `len` bytes of `node` from `offset`.
pub struct HeaderArea<'a> {
    /// The node holding it.
    pub node: &'a BlockDriverState,
    /// Its first byte in the node.
    pub offset: u64,
    /// Its length; nothing outside it is read or written.
    pub len: u64,
}

impl HeaderArea<'_> {
    fn bounds(&self, at: u64, len: usize) -> Result<u64> {
        match at.checked_add(len as u64) {
            Some(end) if end <= self.len => Ok(self.offset + at),
            _ => Err(Error::invalid(
                "Request for data outside of extension header",
            )),
        }
    }

    pub(super) async fn read(&self, at: u64, len: usize) -> Result<Vec<u8>> {
        let pos = self.bounds(at, len)?;
        let buf = IoVector::alloc(len);
        self.node
            .co_preadv(pos, &buf, RequestFlags::empty())
            .await?;
        Ok(buf.to_vec())
    }

    pub(super) async fn write(&self, at: u64, data: &[u8]) -> Result<()> {
        let pos = self.bounds(at, data.len())?;
        let buf = IoVector::from_slice(data);
        self.node.co_pwritev(pos, &buf, RequestFlags::empty()).await
    }
}

/// An opened volume: its header, algorithms, and payload cipher once unlocked.
pub struct LuksVolume {
    /// The header as read.
    pub header: LuksHeader,
    /// The algorithms it names.
    pub params: LuksParams,
    /// The payload cipher; None when opened without a passphrase (metadata only).
    pub crypto: Option<Arc<CryptoBlock>>,
    /// The master key, kept for adding key slots (QEMU keeps it too); None without a
    /// passphrase.
    pub master_key: Option<Vec<u8>>,
}

/// Reads and checks the header, and unlocks a key slot with `password` when one is given
/// (qcrypto_block_luks_open; without a password, QCRYPTO_BLOCK_OPEN_NO_IO).
pub async fn open(area: &HeaderArea<'_>, password: Option<String>) -> Result<LuksVolume> {
    let header = LuksHeader::parse(&area.read(0, HEADER_LEN).await?)?;
    header.check(false)?;
    let params = header.params()?;
    let (crypto, master_key) = match password {
        Some(password) => {
            let key = find_key(area, &header, &params, password).await?;
            (Some(Arc::new(crypto_block(&params, &key)?)), Some(key))
        }
        None => (None, None),
    };
    Ok(LuksVolume {
        header,
        params,
        crypto,
        master_key,
    })
}

/// The master key `password` unlocks in one slot, tried off the main loop
/// (qcrypto_block_luks_load_key); None when the slot is free or the password is wrong.
async fn load_slot(
    area: &HeaderArea<'_>,
    header: &LuksHeader,
    params: &LuksParams,
    slot: usize,
    password: Arc<String>,
) -> Result<Option<Vec<u8>>> {
    if !header.key_slots[slot].is_active() {
        return Ok(None);
    }
    let (offset, len) = key_material_range(header, slot);
    let material = area.read(offset, len).await?;
    let (h, p) = (header.clone(), *params);
    AioContext::current()
        .thread_pool()
        .submit(move || load_key(&h, &p, slot, password.as_bytes(), &material))
        .await
}

/// Whether `password` unlocks slot `slot`.
pub(super) async fn try_slot(
    area: &HeaderArea<'_>,
    header: &LuksHeader,
    params: &LuksParams,
    slot: usize,
    password: String,
) -> Result<bool> {
    let found = load_slot(area, header, params, slot, Arc::new(password)).await?;
    Ok(found.is_some())
}

/// Tries the passphrase on every active slot (qcrypto_block_luks_find_key) and returns
/// the master key.
pub(super) async fn find_key(
    area: &HeaderArea<'_>,
    header: &LuksHeader,
    params: &LuksParams,
    password: String,
) -> Result<Vec<u8>> {
    let password = Arc::new(password);
    for slot in 0..NUM_KEY_SLOTS {
        if let Some(key) = load_slot(area, header, params, slot, password.clone()).await? {
            return Ok(key);
        }
    }
    Err(Error::new(
        libc::EACCES,
        "Invalid password, cannot unlock any keyslot",
    ))
}

/// Computes a new volume with `password` in slot 0, off the main loop (PBKDF2 timing
/// takes `iter-time`).
pub async fn create(opts: LuksCreateOptions, password: String) -> Result<NewVolume> {
    AioContext::current()
        .thread_pool()
        .submit(move || super::create(&opts, password.as_bytes()))
        .await
}

/// Writes a new volume's slot 0 key material, then its header, into the area.
pub async fn write(area: &HeaderArea<'_>, volume: &NewVolume) -> Result<()> {
    let (slot_offset, _) = key_material_range(&volume.header, 0);
    area.write(slot_offset, &volume.slot0_material).await?;
    area.write(0, &volume.header.to_bytes()).await
}
