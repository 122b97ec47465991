//! The LUKS1 partition header: its 592 big-endian bytes, and the checks QEMU makes before
//! trusting them (the LUKS1 on-disk format specification; QEMU's crypto/block-luks.c,
//! qcrypto_block_luks_check_header and qcrypto_block_luks_parse_header).
//!
//! ```text
//!   0  magic "LUKS\xba\xbe"   6  version (1)      8  cipher name[32]   40 cipher mode[32]
//!  72  hash spec[32]        104  payload offset (sectors)  108 master key length
//! 112  master key digest[20] 132 digest salt[32]  164 digest iterations  168 uuid[40]
//! 208  8 key slots of 48 bytes: active, iterations, salt[32], key material sector, stripes
//! ```

use crate::crypto::cipher::{CipherAlg, CipherMode};
use crate::crypto::hash::HashAlg;
use crate::crypto::ivgen::{essiv_cipher, IvGenAlg};
use crate::error::{Error, Result};

/// The LUKS magic bytes.
pub const MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// Size of the header proper.
pub const HEADER_LEN: usize = 592;
/// Number of key slots.
pub const NUM_KEY_SLOTS: usize = 8;
/// Anti-forensic stripes per key slot (the only value QEMU accepts).
pub const STRIPES: u32 = 4000;
/// Sector size of key material and payload offsets.
pub const SECTOR_SIZE: u64 = 512;
/// Where key material may start: after the header's first 4 KiB.
pub const KEY_SLOT_OFFSET: u64 = 4096;
/// Length of the master key digest.
pub const DIGEST_LEN: usize = 20;
/// Length of the salts.
pub const SALT_LEN: usize = 32;
/// `active` of a key slot in use.
pub const KEY_SLOT_ENABLED: u32 = 0x00AC_71F3;
/// `active` of a free key slot.
pub const KEY_SLOT_DISABLED: u32 = 0x0000_DEAD;

/// One key slot (QCryptoBlockLUKSKeySlot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySlot {
    /// KEY_SLOT_ENABLED or KEY_SLOT_DISABLED.
    pub active: u32,
    /// PBKDF2 iterations of the passphrase.
    pub iterations: u32,
    /// PBKDF2 salt of the passphrase.
    pub salt: [u8; SALT_LEN],
    /// First sector of the slot's key material.
    pub key_offset_sector: u32,
    /// Anti-forensic stripes.
    pub stripes: u32,
}

impl KeySlot {
    /// Whether the slot holds a key.
    pub fn is_active(&self) -> bool {
        self.active == KEY_SLOT_ENABLED
    }
}

/// The header (QCryptoBlockLUKSHeader), fields in host order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LuksHeader {
    /// Must be MAGIC.
    pub magic: [u8; 6],
    /// Must be 1.
    pub version: u16,
    /// Cipher family, NUL-padded (`aes`).
    pub cipher_name: [u8; 32],
    /// Mode and IV generator, NUL-padded (`xts-plain64`, `cbc-essiv:sha256`).
    pub cipher_mode: [u8; 32],
    /// PBKDF2 and splitter hash, NUL-padded (`sha256`).
    pub hash_spec: [u8; 32],
    /// Where the encrypted payload starts, in sectors (0: detached header).
    pub payload_offset_sector: u32,
    /// Master key length in bytes.
    pub master_key_len: u32,
    /// PBKDF2 of the master key, to recognise it.
    pub master_key_digest: [u8; DIGEST_LEN],
    /// Salt of that PBKDF2.
    pub master_key_salt: [u8; SALT_LEN],
    /// Iterations of that PBKDF2.
    pub master_key_iterations: u32,
    /// The volume's UUID as text, NUL-padded.
    pub uuid: [u8; 40],
    /// The key slots.
    pub key_slots: [KeySlot; NUM_KEY_SLOTS],
}

impl Default for LuksHeader {
    fn default() -> Self {
        LuksHeader {
            magic: [0; 6],
            version: 0,
            cipher_name: [0; 32],
            cipher_mode: [0; 32],
            hash_spec: [0; 32],
            payload_offset_sector: 0,
            master_key_len: 0,
            master_key_digest: [0; DIGEST_LEN],
            master_key_salt: [0; SALT_LEN],
            master_key_iterations: 0,
            uuid: [0; 40],
            key_slots: Default::default(),
        }
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// A NUL-padded header string up to its first NUL.
pub fn c_str(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Copies `s` into a NUL-padded field; the caller has checked that it fits.
pub fn set_c_str(field: &mut [u8], s: &str) {
    field.fill(0);
    field[..s.len()].copy_from_slice(s.as_bytes());
}

impl LuksHeader {
    /// Decodes the first HEADER_LEN bytes of a volume (no validation yet).
    pub fn parse(buf: &[u8]) -> Result<LuksHeader> {
        if buf.len() < HEADER_LEN {
            return Err(Error::invalid("Volume is not in LUKS format"));
        }
        let mut h = LuksHeader {
            magic: buf[0..6].try_into().expect("6 bytes"),
            version: u16::from_be_bytes([buf[6], buf[7]]),
            payload_offset_sector: be32(buf, 104),
            master_key_len: be32(buf, 108),
            master_key_iterations: be32(buf, 164),
            ..LuksHeader::default()
        };
        h.cipher_name.copy_from_slice(&buf[8..40]);
        h.cipher_mode.copy_from_slice(&buf[40..72]);
        h.hash_spec.copy_from_slice(&buf[72..104]);
        h.master_key_digest.copy_from_slice(&buf[112..132]);
        h.master_key_salt.copy_from_slice(&buf[132..164]);
        h.uuid.copy_from_slice(&buf[168..208]);
        for (i, slot) in h.key_slots.iter_mut().enumerate() {
            let at = 208 + i * 48;
            slot.active = be32(buf, at);
            slot.iterations = be32(buf, at + 4);
            slot.salt.copy_from_slice(&buf[at + 8..at + 40]);
            slot.key_offset_sector = be32(buf, at + 40);
            slot.stripes = be32(buf, at + 44);
        }
        Ok(h)
    }

    /// Encodes the header (qcrypto_block_luks_to_disk_endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN);
        b.extend_from_slice(&self.magic);
        b.extend_from_slice(&self.version.to_be_bytes());
        b.extend_from_slice(&self.cipher_name);
        b.extend_from_slice(&self.cipher_mode);
        b.extend_from_slice(&self.hash_spec);
        b.extend_from_slice(&self.payload_offset_sector.to_be_bytes());
        b.extend_from_slice(&self.master_key_len.to_be_bytes());
        b.extend_from_slice(&self.master_key_digest);
        b.extend_from_slice(&self.master_key_salt);
        b.extend_from_slice(&self.master_key_iterations.to_be_bytes());
        b.extend_from_slice(&self.uuid);
        for slot in &self.key_slots {
            b.extend_from_slice(&slot.active.to_be_bytes());
            b.extend_from_slice(&slot.iterations.to_be_bytes());
            b.extend_from_slice(&slot.salt);
            b.extend_from_slice(&slot.key_offset_sector.to_be_bytes());
            b.extend_from_slice(&slot.stripes.to_be_bytes());
        }
        b
    }

    /// Sectors the key material of a slot occupies, rounded up to whole 4 KiB
    /// (qcrypto_block_luks_splitkeylen_sectors).
    pub fn splitkeylen_sectors(&self, stripes: u32) -> u64 {
        let header_sectors = KEY_SLOT_OFFSET / SECTOR_SIZE;
        let bytes = self.master_key_len as u64 * stripes as u64;
        bytes.div_ceil(SECTOR_SIZE).next_multiple_of(header_sectors)
    }

    /// Refuses a header QEMU would refuse, with QEMU's messages
    /// (qcrypto_block_luks_check_header). `detached`: the payload lives elsewhere.
    pub fn check(&self, detached: bool) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid(msg));
        if self.magic != MAGIC {
            return bad("Volume is not in LUKS format".into());
        }
        if self.version != 1 {
            return Err(Error::not_supported(format!(
                "LUKS version {} is not supported",
                self.version
            )));
        }
        for (field, what) in [
            (&self.cipher_name, "cipher name"),
            (&self.cipher_mode, "cipher mode"),
            (&self.hash_spec, "hash spec"),
        ] {
            if !field.contains(&0) {
                return bad(format!("LUKS header {what} is not NUL terminated"));
            }
        }
        let header_sectors = (KEY_SLOT_OFFSET / SECTOR_SIZE) as u32;
        if !detached && self.payload_offset_sector < header_sectors {
            return bad("LUKS payload is overlapping with the header".into());
        }
        if self.master_key_iterations == 0 {
            return bad("LUKS key iteration count is zero".into());
        }
        for (i, s1) in self.key_slots.iter().enumerate() {
            let start1 = s1.key_offset_sector as u64;
            let len1 = self.splitkeylen_sectors(s1.stripes);
            if s1.stripes != STRIPES {
                return bad(format!(
                    "Keyslot {i} is corrupted (stripes {} != {STRIPES})",
                    s1.stripes as i32
                ));
            }
            if s1.active != KEY_SLOT_DISABLED && s1.active != KEY_SLOT_ENABLED {
                return bad(format!("Keyslot {i} state (active/disable) is corrupted"));
            }
            if s1.is_active() && s1.iterations == 0 {
                return bad(format!("Keyslot {i} iteration count is zero"));
            }
            if start1 < header_sectors as u64 {
                return bad(format!("Keyslot {i} is overlapping with the LUKS header"));
            }
            if !detached && start1 + len1 > self.payload_offset_sector as u64 {
                return bad(format!(
                    "Keyslot {i} is overlapping with the encrypted payload"
                ));
            }
            for (j, s2) in self.key_slots.iter().enumerate().skip(i + 1) {
                let start2 = s2.key_offset_sector as u64;
                let len2 = self.splitkeylen_sectors(s2.stripes);
                if start1 < start2 + len2 && start2 < start1 + len1 {
                    return bad(format!(
                        "Keyslots {i} and {j} are overlapping in the header"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads the algorithms the header names (qcrypto_block_luks_parse_header).
    pub fn params(&self) -> Result<LuksParams> {
        let unsupported = |msg: String| Err(Error::not_supported(msg));
        let mode_spec = c_str(&self.cipher_mode);
        let Some((mode_name, ivgen_spec)) = mode_spec.split_once('-') else {
            return Err(Error::invalid(format!(
                "Unexpected cipher mode string format '{mode_spec}'"
            )));
        };
        let (ivgen_name, ivhash_name) = match ivgen_spec.split_once(':') {
            Some((g, h)) => (g, Some(h)),
            None => (ivgen_spec, None),
        };
        let ivgen_hash = match ivhash_name {
            Some(h) => match HashAlg::parse(h) {
                Some(a) => Some(a),
                None => return unsupported(format!("Hash algorithm {h} not supported")),
            },
            None => None,
        };
        let Some(mode) = CipherMode::parse(mode_name)? else {
            return unsupported(format!("Cipher mode {mode_name} not supported"));
        };
        let family = c_str(&self.cipher_name);
        let mut key_len = self.master_key_len as usize;
        if mode == CipherMode::Xts {
            key_len /= 2;
        }
        let Some(cipher) = CipherAlg::from_family(&family, key_len) else {
            return unsupported(format!(
                "Algorithm '{family}' with key size {key_len} bytes not supported"
            ));
        };
        let hash_name = c_str(&self.hash_spec);
        let Some(hash) = HashAlg::parse(&hash_name) else {
            return unsupported(format!("Hash algorithm {hash_name} not supported"));
        };
        let Some(ivgen) = IvGenAlg::parse(ivgen_name) else {
            return unsupported(format!("IV generator {ivgen_name} not supported"));
        };
        let ivgen_cipher = if ivgen == IvGenAlg::Essiv {
            let h = ivgen_hash
                .ok_or_else(|| Error::invalid("Missing IV generator hash specification"))?;
            essiv_cipher(cipher, h)?
        } else {
            cipher
        };
        Ok(LuksParams {
            cipher,
            mode,
            ivgen,
            ivgen_hash,
            ivgen_cipher,
            hash,
        })
    }
}

/// The algorithms of a volume, parsed from its header or chosen at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LuksParams {
    /// Payload cipher.
    pub cipher: CipherAlg,
    /// Payload cipher mode.
    pub mode: CipherMode,
    /// IV generator.
    pub ivgen: IvGenAlg,
    /// ESSIV's hash, if the header names one.
    pub ivgen_hash: Option<HashAlg>,
    /// ESSIV's cipher (the payload cipher for other generators).
    pub ivgen_cipher: CipherAlg,
    /// PBKDF2 and splitter hash.
    pub hash: HashAlg,
}

impl LuksParams {
    /// Master key length: XTS takes two keys.
    pub fn master_key_len(&self) -> usize {
        self.cipher.key_len() * if self.mode == CipherMode::Xts { 2 } else { 1 }
    }

    /// The header's cipher mode string (`xts-plain64`, `cbc-essiv:sha256`).
    pub fn mode_spec(&self) -> String {
        match self.ivgen_hash {
            Some(h) => format!("{}-{}:{}", self.mode.name(), self.ivgen.name(), h.name()),
            None => format!("{}-{}", self.mode.name(), self.ivgen.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> LuksHeader {
        let mut h = LuksHeader {
            magic: MAGIC,
            version: 1,
            master_key_len: 64,
            master_key_iterations: 1000,
            payload_offset_sector: 4040,
            ..LuksHeader::default()
        };
        set_c_str(&mut h.cipher_name, "aes");
        set_c_str(&mut h.cipher_mode, "xts-plain64");
        set_c_str(&mut h.hash_spec, "sha256");
        for (i, s) in h.key_slots.iter_mut().enumerate() {
            s.active = KEY_SLOT_DISABLED;
            s.stripes = STRIPES;
            s.key_offset_sector = 8 + i as u32 * 504;
        }
        h
    }

    fn corrupt(f: impl Fn(&mut LuksHeader)) -> String {
        let mut h = valid();
        f(&mut h);
        let h = LuksHeader::parse(&h.to_bytes()).unwrap();
        h.check(false)
            .and_then(|_| h.params().map(|_| ()))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn round_trip_and_layout() {
        let h = valid();
        let b = h.to_bytes();
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(LuksHeader::parse(&b).unwrap(), h);
        assert_eq!(h.splitkeylen_sectors(STRIPES), 504);
        h.check(false).unwrap();
        let p = h.params().unwrap();
        assert_eq!(p.cipher, CipherAlg::Aes256);
        assert_eq!(p.mode_spec(), "xts-plain64");
    }

    #[test]
    fn corruptions_get_qemus_messages() {
        assert_eq!(
            corrupt(|h| h.magic[0] = b'X'),
            "Volume is not in LUKS format"
        );
        assert_eq!(
            corrupt(|h| h.version = 2),
            "LUKS version 2 is not supported"
        );
        assert_eq!(
            corrupt(|h| h.hash_spec = [b'a'; 32]),
            "LUKS header hash spec is not NUL terminated"
        );
        assert_eq!(
            corrupt(|h| h.payload_offset_sector = 2),
            "LUKS payload is overlapping with the header"
        );
        assert_eq!(
            corrupt(|h| h.key_slots[0].stripes = 3999),
            "Keyslot 0 is corrupted (stripes 3999 != 4000)"
        );
        assert_eq!(
            corrupt(|h| h.key_slots[2].active = 1),
            "Keyslot 2 state (active/disable) is corrupted"
        );
        assert_eq!(
            corrupt(|h| h.key_slots[0].key_offset_sector = 2),
            "Keyslot 0 is overlapping with the LUKS header"
        );
        assert_eq!(
            corrupt(|h| h.key_slots[0].key_offset_sector = 4040 + 42),
            "Keyslot 0 is overlapping with the encrypted payload"
        );
        assert_eq!(
            corrupt(|h| h.key_slots[0].key_offset_sector = 512),
            "Keyslots 0 and 1 are overlapping in the header"
        );
        assert_eq!(
            corrupt(|h| set_c_str(&mut h.hash_spec, "sha2566")),
            "Hash algorithm sha2566 not supported"
        );
        assert_eq!(
            corrupt(|h| set_c_str(&mut h.cipher_mode, "xtsplain64")),
            "Unexpected cipher mode string format 'xtsplain64'"
        );
    }
}
