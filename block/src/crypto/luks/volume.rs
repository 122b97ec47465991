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

    async fn read(&self, at: u64, len: usize) -> Result<Vec<u8>> {
        let pos = self.bounds(at, len)?;
        let buf = IoVector::alloc(len);
        self.node
            .co_preadv(pos, &buf, RequestFlags::empty())
            .await?;
        Ok(buf.to_vec())
    }

    async fn write(&self, at: u64, data: &[u8]) -> Result<()> {
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
}

/// Reads and checks the header, and unlocks a key slot with `password` when one is given
/// (qcrypto_block_luks_open; without a password, QCRYPTO_BLOCK_OPEN_NO_IO).
pub async fn open(area: &HeaderArea<'_>, password: Option<String>) -> Result<LuksVolume> {
    let header = LuksHeader::parse(&area.read(0, HEADER_LEN).await?)?;
    header.check(false)?;
    let params = header.params()?;
    let crypto = match password {
        Some(password) => Some(Arc::new(unlock(area, &header, &params, password).await?)),
        None => None,
    };
    Ok(LuksVolume {
        header,
        params,
        crypto,
    })
}

/// Tries the passphrase on every active slot, off the main loop
/// (qcrypto_block_luks_find_key), and keys the payload cipher with the master key.
async fn unlock(
    area: &HeaderArea<'_>,
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
        let material = area.read(offset, len).await?;
        let (h, p, pw) = (header.clone(), *params, password.clone());
        let found = AioContext::current()
            .thread_pool()
            .submit(move || load_key(&h, &p, slot, pw.as_bytes(), &material))
            .await?;
        if let Some(master_key) = found {
            return crypto_block(params, &master_key);
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
