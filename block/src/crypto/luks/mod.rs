//! LUKS1 volumes: unlocking a key slot with a passphrase, creating a volume, and what
//! `qemu-img info` shows of one (QEMU's crypto/block-luks.c).
//!
//! A passphrase never encrypts data. PBKDF2 turns it into a slot key; the slot key
//! decrypts the slot's key material; the anti-forensic merge of that material is a
//! candidate master key, which is right when its own PBKDF2 matches the header's digest.
//! The master key encrypts the payload. Everything here is pure computation on bytes the
//! caller has read, so that the caller can run it off the main loop.

pub mod amend;
pub mod header;
pub mod volume;

use serde_json::{json, Value};

use self::header::{
    c_str, set_c_str, KeySlot, LuksHeader, LuksParams, DIGEST_LEN, KEY_SLOT_DISABLED,
    KEY_SLOT_ENABLED, KEY_SLOT_OFFSET, MAGIC, NUM_KEY_SLOTS, SECTOR_SIZE, STRIPES,
};
use super::afsplit;
use super::block::CryptoBlock;
use super::cipher::Cipher;
use super::ivgen::IvGen;
use super::random_bytes;
use crate::error::{Error, Result};

/// Smallest iteration count QEMU writes for a slot or the master key digest.
const MIN_ITERS: u64 = 1000;
/// QEMU's default `iter-time`, in milliseconds.
pub const DEFAULT_ITER_TIME_MS: u64 = 2000;

/// The cipher and IV generator keyed with `key`, for sectors of 512 bytes.
pub fn crypto_block(params: &LuksParams, key: &[u8]) -> Result<CryptoBlock> {
    let cipher = Cipher::new(params.cipher, params.mode, key)?;
    let ivgen = IvGen::new(params.ivgen, params.ivgen_cipher, params.ivgen_hash, key)?;
    Ok(CryptoBlock::new(cipher, ivgen, SECTOR_SIZE as usize))
}

/// Byte range of a slot's key material in the header area.
pub fn key_material_range(h: &LuksHeader, slot: usize) -> (u64, usize) {
    let s = &h.key_slots[slot];
    let len = h.master_key_len as usize * s.stripes as usize;
    (s.key_offset_sector as u64 * SECTOR_SIZE, len)
}

/// Tries `password` on one slot given its key material (qcrypto_block_luks_load_key):
/// the master key when it unlocks the slot, None when it does not.
pub fn load_key(
    h: &LuksHeader,
    params: &LuksParams,
    slot: usize,
    password: &[u8],
    material: &[u8],
) -> Result<Option<Vec<u8>>> {
    let s = &h.key_slots[slot];
    if !s.is_active() {
        return Ok(None);
    }
    let key_len = h.master_key_len as usize;
    let mut slot_key = vec![0u8; key_len];
    params
        .hash
        .pbkdf2(password, &s.salt, s.iterations, &mut slot_key);
    let mut split = material.to_vec();
    crypto_block(params, &slot_key)?.decrypt(0, &mut split)?;
    let candidate = afsplit::merge(params.hash, &split, key_len, s.stripes);
    let mut digest = [0u8; DIGEST_LEN];
    params.hash.pbkdf2(
        &candidate,
        &h.master_key_salt,
        h.master_key_iterations,
        &mut digest,
    );
    Ok((digest == h.master_key_digest).then_some(candidate))
}

/// What creating a volume asks for (QCryptoBlockCreateOptionsLUKS).
#[derive(Clone, Copy, Debug)]
pub struct LuksCreateOptions {
    /// The algorithms.
    pub params: LuksParams,
    /// Milliseconds PBKDF2 should take to unlock (`iter-time`).
    pub iter_time_ms: u64,
    /// Whether the payload lives in another file (payload offset 0).
    pub detached: bool,
}

/// A volume as created: its header, its master key, and slot 0's key material.
pub struct NewVolume {
    /// The header, slot 0 active.
    pub header: LuksHeader,
    /// The master key.
    pub master_key: Vec<u8>,
    /// Slot 0's encrypted, split key, to write at its key material offset.
    pub slot0_material: Vec<u8>,
}

impl NewVolume {
    /// Bytes the header area takes: the header and all eight key material areas.
    pub fn header_area_len(&self) -> u64 {
        header_area_len(self.header.master_key_len as usize)
    }
}

/// Bytes the header area of a new volume takes for a master key of `master_key_len` bytes
/// (what `qemu-img measure` adds to the virtual size).
pub fn header_area_len(master_key_len: usize) -> u64 {
    let h = LuksHeader {
        master_key_len: master_key_len as u32,
        ..LuksHeader::default()
    };
    KEY_SLOT_OFFSET + NUM_KEY_SLOTS as u64 * h.splitkeylen_sectors(STRIPES) * SECTOR_SIZE
}

fn scaled_iters(per_sec: u64, iter_time_ms: u64, divisor: u64) -> Result<u32> {
    if per_sec > u64::MAX / iter_time_ms.max(1) {
        return Err(Error::new(
            libc::ERANGE,
            format!("PBKDF iterations {per_sec} too large to scale"),
        ));
    }
    let iters = per_sec * iter_time_ms / 1000 / divisor;
    if iters > u32::MAX as u64 {
        return Err(Error::new(
            libc::ERANGE,
            format!("PBKDF iterations {iters} larger than {}", u32::MAX),
        ));
    }
    Ok(iters.max(MIN_ITERS) as u32)
}

/// A random version 4 UUID in its text form.
fn uuid_string() -> Result<String> {
    let mut u = [0u8; 16];
    random_bytes(&mut u)?;
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// Sets up a new volume with `password` in slot 0 (qcrypto_block_luks_create), timing
/// PBKDF2 on this thread to turn `iter-time` into iteration counts as QEMU does.
pub fn create(opts: &LuksCreateOptions, password: &[u8]) -> Result<NewVolume> {
    let p = &opts.params;
    let mut h = LuksHeader {
        magic: MAGIC,
        version: 1,
        master_key_len: p.master_key_len() as u32,
        ..LuksHeader::default()
    };
    set_c_str(&mut h.uuid, &uuid_string()?);
    set_c_str(&mut h.cipher_name, p.cipher.family());
    set_c_str(&mut h.cipher_mode, &p.mode_spec());
    set_c_str(&mut h.hash_spec, p.hash.name());
    random_bytes(&mut h.master_key_salt)?;
    let mut master_key = vec![0u8; p.master_key_len()];
    random_bytes(&mut master_key)?;
    // Refuse an impossible combination (cast5 in xts...) before the slow part.
    crypto_block(p, &master_key)?;
    let per_sec = p
        .hash
        .pbkdf2_count_iters(&master_key, &h.master_key_salt, DIGEST_LEN)?;
    h.master_key_iterations = scaled_iters(per_sec, opts.iter_time_ms, 8)?;
    p.hash.pbkdf2(
        &master_key,
        &h.master_key_salt,
        h.master_key_iterations,
        &mut h.master_key_digest,
    );
    let header_sectors = (KEY_SLOT_OFFSET / SECTOR_SIZE) as u32;
    let split_sectors = h.splitkeylen_sectors(STRIPES) as u32;
    for (i, slot) in h.key_slots.iter_mut().enumerate() {
        *slot = KeySlot {
            active: KEY_SLOT_DISABLED,
            key_offset_sector: header_sectors + i as u32 * split_sectors,
            stripes: STRIPES,
            ..KeySlot::default()
        };
    }
    h.payload_offset_sector = if opts.detached {
        0
    } else {
        header_sectors + NUM_KEY_SLOTS as u32 * split_sectors
    };
    let slot0_material = store_key(&mut h, p, 0, password, &master_key, opts.iter_time_ms)?;
    Ok(NewVolume {
        header: h,
        master_key,
        slot0_material,
    })
}

/// Fills slot `slot` for `password` and returns the key material to write at its offset
/// (qcrypto_block_luks_store_key); the slot is marked active in `h`.
pub fn store_key(
    h: &mut LuksHeader,
    p: &LuksParams,
    slot: usize,
    password: &[u8],
    master_key: &[u8],
    iter_time_ms: u64,
) -> Result<Vec<u8>> {
    let key_len = h.master_key_len as usize;
    let s = &mut h.key_slots[slot];
    random_bytes(&mut s.salt)?;
    let per_sec = p.hash.pbkdf2_count_iters(password, &s.salt, key_len)?;
    s.iterations = scaled_iters(per_sec, iter_time_ms, 1)?;
    let mut slot_key = vec![0u8; key_len];
    p.hash
        .pbkdf2(password, &s.salt, s.iterations, &mut slot_key);
    let mut material = afsplit::split(p.hash, master_key, s.stripes)?;
    crypto_block(p, &slot_key)?.encrypt(0, &mut material)?;
    s.active = KEY_SLOT_ENABLED;
    Ok(material)
}

/// The `format-specific` data `qemu-img info` prints (QCryptoBlockInfoLUKS), in QAPI
/// member order.
pub fn info_json(h: &LuksHeader, p: &LuksParams) -> Value {
    let slots: Vec<Value> = h
        .key_slots
        .iter()
        .map(|s| {
            let offset = s.key_offset_sector as u64 * SECTOR_SIZE;
            if s.is_active() {
                json!({"active": true, "iters": s.iterations, "key-offset": offset,
                       "stripes": s.stripes})
            } else {
                json!({"active": false, "key-offset": offset})
            }
        })
        .collect();
    // QEMU prints these members in its QDict's hash order, not in schema order.
    let mut data = serde_json::Map::new();
    data.insert("ivgen-alg".into(), json!(p.ivgen.name()));
    data.insert(
        "detached-header".into(),
        json!(h.payload_offset_sector == 0),
    );
    data.insert("hash-alg".into(), json!(p.hash.name()));
    data.insert("cipher-alg".into(), json!(p.cipher.name()));
    data.insert("uuid".into(), json!(c_str(&h.uuid)));
    if let Some(hash) = p.ivgen_hash {
        data.insert("ivgen-hash-alg".into(), json!(hash.name()));
    }
    data.insert("cipher-mode".into(), json!(p.mode.name()));
    data.insert("slots".into(), Value::Array(slots));
    data.insert(
        "payload-offset".into(),
        json!(h.payload_offset_sector as u64 * SECTOR_SIZE),
    );
    data.insert("master-key-iters".into(), json!(h.master_key_iterations));
    Value::Object(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::cipher::{CipherAlg, CipherMode};
    use crate::crypto::hash::HashAlg;
    use crate::crypto::ivgen::IvGenAlg;

    #[test]
    fn a_created_volume_unlocks_with_its_password_only() {
        let params = LuksParams {
            cipher: CipherAlg::Aes128,
            mode: CipherMode::Cbc,
            ivgen: IvGenAlg::Essiv,
            ivgen_hash: Some(HashAlg::Sha256),
            ivgen_cipher: CipherAlg::Aes256,
            hash: HashAlg::Sha1,
        };
        let opts = LuksCreateOptions {
            params,
            iter_time_ms: 1,
            detached: false,
        };
        let v = create(&opts, b"secret").unwrap();
        v.header.check(false).unwrap();
        assert_eq!(v.header.params().unwrap(), params);
        assert_eq!(
            v.header_area_len(),
            v.header.payload_offset_sector as u64 * 512
        );
        let (_, len) = key_material_range(&v.header, 0);
        assert_eq!(v.slot0_material.len(), len);
        let good = load_key(&v.header, &params, 0, b"secret", &v.slot0_material).unwrap();
        assert_eq!(good, Some(v.master_key.clone()));
        let bad = load_key(&v.header, &params, 0, b"secreT", &v.slot0_material).unwrap();
        assert_eq!(bad, None);
    }
}
