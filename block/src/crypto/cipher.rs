//! Block ciphers and their modes by QEMU's names (QEMU's crypto/cipher.c and its nettle /
//! gcrypt back ends): AES, Serpent, Twofish and CAST5 from RustCrypto crates, in ECB, CBC
//! or XTS.
//!
//! A [`Cipher`] is keyed once and then asked to encrypt or decrypt one sector at a time with
//! that sector's IV, which is all disk encryption needs. The `aes` crate picks AES-NI at run
//! time when the CPU has it. XTS over whole blocks and CBC decryption hand a whole sector to
//! the cipher at once, so that AES-NI works on several blocks in parallel; CBC encryption is
//! a chain and goes a block at a time (`cbc`), as does XTS ciphertext stealing (`xts-mode`).

use cipher::generic_array::GenericArray;
use cipher::inout::InOutBuf;
use cipher::{
    consts::U16, BlockCipher, BlockDecrypt, BlockDecryptMut, BlockEncrypt, BlockEncryptMut,
    BlockSizeUser, InnerIvInit, KeyInit,
};

use crate::error::{Error, Result};

/// A cipher algorithm with its key size (QCryptoCipherAlgo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherAlg {
    /// AES with a 128-bit key.
    Aes128,
    /// AES with a 192-bit key.
    Aes192,
    /// AES with a 256-bit key.
    Aes256,
    /// CAST-128 (64-bit blocks).
    Cast5_128,
    /// Serpent with a 128-bit key.
    Serpent128,
    /// Serpent with a 192-bit key.
    Serpent192,
    /// Serpent with a 256-bit key.
    Serpent256,
    /// Twofish with a 128-bit key.
    Twofish128,
    /// Twofish with a 192-bit key.
    Twofish192,
    /// Twofish with a 256-bit key.
    Twofish256,
}

impl CipherAlg {
    const ALL: [CipherAlg; 10] = [
        CipherAlg::Aes128,
        CipherAlg::Aes192,
        CipherAlg::Aes256,
        CipherAlg::Cast5_128,
        CipherAlg::Serpent128,
        CipherAlg::Serpent192,
        CipherAlg::Serpent256,
        CipherAlg::Twofish128,
        CipherAlg::Twofish192,
        CipherAlg::Twofish256,
    ];

    /// QEMU's name (`aes-256`...).
    pub fn name(self) -> &'static str {
        match self {
            CipherAlg::Aes128 => "aes-128",
            CipherAlg::Aes192 => "aes-192",
            CipherAlg::Aes256 => "aes-256",
            CipherAlg::Cast5_128 => "cast5-128",
            CipherAlg::Serpent128 => "serpent-128",
            CipherAlg::Serpent192 => "serpent-192",
            CipherAlg::Serpent256 => "serpent-256",
            CipherAlg::Twofish128 => "twofish-128",
            CipherAlg::Twofish192 => "twofish-192",
            CipherAlg::Twofish256 => "twofish-256",
        }
    }

    /// The family name a LUKS header stores (`aes`, `serpent`...).
    pub fn family(self) -> &'static str {
        self.name().split('-').next().unwrap_or("")
    }

    /// Parses QEMU's name.
    pub fn parse(name: &str) -> Option<CipherAlg> {
        CipherAlg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The algorithm of a family with a key of `key_len` bytes (how LUKS names a cipher).
    pub fn from_family(family: &str, key_len: usize) -> Option<CipherAlg> {
        CipherAlg::ALL
            .into_iter()
            .find(|a| a.family() == family && a.key_len() == key_len)
    }

    /// Key size in bytes.
    pub fn key_len(self) -> usize {
        match self {
            CipherAlg::Aes128
            | CipherAlg::Cast5_128
            | CipherAlg::Serpent128
            | CipherAlg::Twofish128 => 16,
            CipherAlg::Aes192 | CipherAlg::Serpent192 | CipherAlg::Twofish192 => 24,
            CipherAlg::Aes256 | CipherAlg::Serpent256 | CipherAlg::Twofish256 => 32,
        }
    }

    /// Block size in bytes.
    pub fn block_len(self) -> usize {
        if self == CipherAlg::Cast5_128 {
            8
        } else {
            16
        }
    }
}

/// A block cipher mode (QCryptoCipherMode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherMode {
    /// Each block on its own (only for ESSIV's IV cipher in practice).
    Ecb,
    /// Cipher block chaining, restarted at every sector with its IV.
    Cbc,
    /// XEX-based tweaked codebook with ciphertext stealing; the IV is the tweak.
    Xts,
}

impl CipherMode {
    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            CipherMode::Ecb => "ecb",
            CipherMode::Cbc => "cbc",
            CipherMode::Xts => "xts",
        }
    }

    /// Parses QEMU's name. `ctr`, which QEMU also has, is refused by name here.
    pub fn parse(name: &str) -> Result<Option<CipherMode>> {
        Ok(match name {
            "ecb" => Some(CipherMode::Ecb),
            "cbc" => Some(CipherMode::Cbc),
            "xts" => Some(CipherMode::Xts),
            "ctr" => {
                return Err(Error::not_supported(
                    "Cipher mode ctr is not supported by rqemu yet",
                ))
            }
            _ => None,
        })
    }

    /// Size of the IV the mode takes for `alg` (qcrypto_cipher_get_iv_len).
    pub fn iv_len(self, alg: CipherAlg) -> usize {
        match self {
            CipherMode::Ecb => 0,
            CipherMode::Cbc | CipherMode::Xts => alg.block_len(),
        }
    }
}

/// One keyed mode of one algorithm, working on whole sectors.
trait SectorCipher: Send + Sync {
    fn encrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<()>;
    fn decrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<()>;
}

/// The block size of `C`, once `data` is known to be whole blocks of it.
fn whole_blocks<C: BlockSizeUser>(data: &[u8]) -> Result<usize> {
    let bs = C::block_size();
    if !data.len().is_multiple_of(bs) {
        return Err(Error::invalid(format!(
            "Length {} must be a multiple of block size {bs}",
            data.len()
        )));
    }
    Ok(bs)
}

struct Ecb<C>(C);

impl<C: BlockEncrypt + BlockDecrypt + Send + Sync> SectorCipher for Ecb<C> {
    fn encrypt(&self, _iv: &[u8], data: &mut [u8]) -> Result<()> {
        let bs = whole_blocks::<C>(data)?;
        for block in data.chunks_exact_mut(bs) {
            self.0.encrypt_block(GenericArray::from_mut_slice(block));
        }
        Ok(())
    }

    fn decrypt(&self, _iv: &[u8], data: &mut [u8]) -> Result<()> {
        let bs = whole_blocks::<C>(data)?;
        for block in data.chunks_exact_mut(bs) {
            self.0.decrypt_block(GenericArray::from_mut_slice(block));
        }
        Ok(())
    }
}

/// CBC keeps the expanded key and starts a fresh chain per sector from a copy of it.
struct Cbc<C>(C);

impl<C> SectorCipher for Cbc<C>
where
    C: BlockCipher + BlockEncrypt + BlockDecrypt + Clone + Send + Sync,
{
    fn encrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<()> {
        let bs = whole_blocks::<C>(data)?;
        let mut enc = cbc::Encryptor::<C>::inner_iv_slice_init(self.0.clone(), iv)
            .map_err(|_| Error::invalid("Invalid IV length"))?;
        for block in data.chunks_exact_mut(bs) {
            enc.encrypt_block_mut(GenericArray::from_mut_slice(block));
        }
        Ok(())
    }

    fn decrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<()> {
        whole_blocks::<C>(data)?;
        let mut dec = cbc::Decryptor::<C>::inner_iv_slice_init(self.0.clone(), iv)
            .map_err(|_| Error::invalid("Invalid IV length"))?;
        // All blocks in one call: CBC decryption has no chain to wait for, so the mode
        // crate feeds the cipher's parallel (AES-NI pipelined) path.
        let (blocks, _) = InOutBuf::from(data).into_chunks();
        dec.decrypt_blocks_inout_mut(blocks);
        Ok(())
    }
}

/// XTS keeps both halves of the key: the data cipher and the tweak cipher.
///
/// Sectors of whole blocks (every disk sector) are done here: the tweaks of a batch of
/// blocks are computed first and the data cipher is handed the whole batch at once, so the
/// aes crate's parallel AES-NI path (8 blocks in the pipeline) does the work instead of one
/// block at a time as `xts_mode` does. The rare sector that ends in a partial block
/// (ciphertext stealing) goes to `xts_mode`, which also checks this path in the tests.
struct Xts<C: BlockCipher + BlockEncrypt + BlockDecrypt> {
    data: C,
    tweak: C,
    stealing: xts_mode::Xts128<C>,
}

/// Blocks whose tweaks are kept at once: a 512-byte sector's worth.
const XTS_BATCH: usize = 32;

impl<C> Xts<C>
where
    C: BlockCipher + BlockEncrypt + BlockDecrypt + BlockSizeUser<BlockSize = U16>,
{
    /// IEEE P1619 XTS on a sector of whole blocks, `encrypt` or decrypt.
    fn whole_blocks(&self, iv: &[u8], data: &mut [u8], encrypt: bool) {
        let mut t = GenericArray::from(tweak(iv));
        self.tweak.encrypt_block(&mut t);
        let mut tw = u128::from_le_bytes(t.into());
        let (blocks, _) = InOutBuf::from(data).into_chunks::<U16>();
        for batch in blocks.into_out().chunks_mut(XTS_BATCH) {
            let mut tweaks = [0u128; XTS_BATCH];
            for (block, t) in batch.iter_mut().zip(tweaks.iter_mut()) {
                *t = tw;
                xor_block(block, tw);
                // Multiply by x in GF(2^128), little-endian as P1619 defines it.
                tw = (tw << 1) ^ ((tw >> 127) * 0x87);
            }
            if encrypt {
                self.data.encrypt_blocks(batch);
            } else {
                self.data.decrypt_blocks(batch);
            }
            for (block, t) in batch.iter_mut().zip(tweaks) {
                xor_block(block, t);
            }
        }
    }
}

/// XORs a tweak into a block as one 128-bit word (byte by byte compiles to shuffles that
/// cost more than the AES rounds).
fn xor_block(block: &mut GenericArray<u8, U16>, t: u128) {
    let mut word = [0u8; 16];
    word.copy_from_slice(block);
    block.copy_from_slice(&(u128::from_le_bytes(word) ^ t).to_le_bytes());
}

impl<C> SectorCipher for Xts<C>
where
    C: BlockCipher + BlockEncrypt + BlockDecrypt + BlockSizeUser<BlockSize = U16> + Send + Sync,
{
    fn encrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<()> {
        if data.len() < 16 {
            return Err(Error::invalid("XTS needs at least one whole block"));
        }
        if data.len().is_multiple_of(16) {
            self.whole_blocks(iv, data, true);
        } else {
            self.stealing.encrypt_sector(data, tweak(iv));
        }
        Ok(())
    }

    fn decrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<()> {
        if data.len() < 16 {
            return Err(Error::invalid("XTS needs at least one whole block"));
        }
        if data.len().is_multiple_of(16) {
            self.whole_blocks(iv, data, false);
        } else {
            self.stealing.decrypt_sector(data, tweak(iv));
        }
        Ok(())
    }
}

fn tweak(iv: &[u8]) -> [u8; 16] {
    let mut t = [0u8; 16];
    let n = iv.len().min(16);
    t[..n].copy_from_slice(&iv[..n]);
    t
}

fn bad_key(alg: CipherAlg, mode: CipherMode, len: usize) -> Error {
    Error::invalid(format!(
        "Cipher key length {len} is wrong for {}-{}",
        alg.name(),
        mode.name()
    ))
}

/// Keys a 128-bit-block cipher in any mode.
fn build16<C>(alg: CipherAlg, mode: CipherMode, key: &[u8]) -> Result<Box<dyn SectorCipher>>
where
    C: BlockCipher
        + BlockEncrypt
        + BlockDecrypt
        + BlockSizeUser<BlockSize = U16>
        + KeyInit
        + Clone
        + Send
        + Sync
        + 'static,
{
    if mode != CipherMode::Xts {
        return build_any::<C>(alg, mode, key);
    }
    let half = key.len() / 2;
    let (k1, k2) = (&key[..half], &key[half..]);
    let c1 = C::new_from_slice(k1).map_err(|_| bad_key(alg, mode, key.len()))?;
    let c2 = C::new_from_slice(k2).map_err(|_| bad_key(alg, mode, key.len()))?;
    Ok(Box::new(Xts {
        data: c1.clone(),
        tweak: c2.clone(),
        stealing: xts_mode::Xts128::new(c1, c2),
    }))
}

/// Keys a cipher of any block size in ECB or CBC.
fn build_any<C>(alg: CipherAlg, mode: CipherMode, key: &[u8]) -> Result<Box<dyn SectorCipher>>
where
    C: BlockCipher + BlockEncrypt + BlockDecrypt + KeyInit + Clone + Send + Sync + 'static,
{
    let c = C::new_from_slice(key).map_err(|_| bad_key(alg, mode, key.len()))?;
    match mode {
        CipherMode::Ecb => Ok(Box::new(Ecb(c))),
        CipherMode::Cbc => Ok(Box::new(Cbc(c))),
        CipherMode::Xts => Err(Error::not_supported("Unsupported cipher mode xts")),
    }
}

/// A keyed cipher in a mode (QCryptoCipher).
pub struct Cipher {
    alg: CipherAlg,
    mode: CipherMode,
    imp: Box<dyn SectorCipher>,
}

impl Cipher {
    /// Keys `alg` in `mode` (qcrypto_cipher_new); XTS takes two keys back to back.
    pub fn new(alg: CipherAlg, mode: CipherMode, key: &[u8]) -> Result<Cipher> {
        let want = alg.key_len() * if mode == CipherMode::Xts { 2 } else { 1 };
        if key.len() != want {
            return Err(bad_key(alg, mode, key.len()));
        }
        let imp = match alg {
            CipherAlg::Aes128 => build16::<aes::Aes128>(alg, mode, key)?,
            CipherAlg::Aes192 => build16::<aes::Aes192>(alg, mode, key)?,
            CipherAlg::Aes256 => build16::<aes::Aes256>(alg, mode, key)?,
            CipherAlg::Cast5_128 => build_any::<cast5::Cast5>(alg, mode, key)?,
            CipherAlg::Serpent128 | CipherAlg::Serpent192 | CipherAlg::Serpent256 => {
                build16::<serpent::Serpent>(alg, mode, key)?
            }
            CipherAlg::Twofish128 | CipherAlg::Twofish192 | CipherAlg::Twofish256 => {
                build16::<twofish::Twofish>(alg, mode, key)?
            }
        };
        Ok(Cipher { alg, mode, imp })
    }

    /// The algorithm.
    pub fn alg(&self) -> CipherAlg {
        self.alg
    }

    /// The mode.
    pub fn mode(&self) -> CipherMode {
        self.mode
    }

    /// Encrypts `data` in place, starting from `iv` (qcrypto_cipher_encrypt after setiv).
    pub fn encrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<()> {
        self.imp.encrypt(iv, data)
    }

    /// Decrypts `data` in place, starting from `iv`.
    pub fn decrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<()> {
        self.imp.decrypt(iv, data)
    }
}

/// The AES-256-CBC decryption QEMU's `secret` objects use for `keyid`-encrypted data.
pub fn aes256_cbc_decrypt(key: &[u8], iv: &[u8], data: &mut [u8]) -> Result<()> {
    Cipher::new(CipherAlg::Aes256, CipherMode::Cbc, key)?.decrypt(iv, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_xts_matches_ieee1619_vector_1() {
        // IEEE P1619 XTS-AES-128 vector 1: all-zero keys, tweak and data.
        let c = Cipher::new(CipherAlg::Aes128, CipherMode::Xts, &[0u8; 32]).unwrap();
        let mut data = [0u8; 32];
        c.encrypt(&[0u8; 16], &mut data).unwrap();
        assert_eq!(
            &data[..8],
            &[0x91, 0x7c, 0xf6, 0x9e, 0xbd, 0x68, 0xb2, 0xec]
        );
        c.decrypt(&[0u8; 16], &mut data).unwrap();
        assert_eq!(data, [0u8; 32]);
    }

    #[test]
    fn batched_xts_matches_xts_mode() {
        // The batched whole-block path against the xts-mode crate, over sectors longer
        // than one batch, for each AES key size; a partial last block takes xts-mode's path.
        for alg in [CipherAlg::Aes128, CipherAlg::Aes256] {
            let key: Vec<u8> = (0..alg.key_len() * 2).map(|i| i as u8 * 7 + 1).collect();
            let c = Cipher::new(alg, CipherMode::Xts, &key).unwrap();
            let half = key.len() / 2;
            for len in [16, 512, 4096, 520] {
                let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                let iv = 0x1234_5678u64.to_le_bytes();
                let mut ours = plain.clone();
                c.encrypt(&iv, &mut ours).unwrap();
                let mut theirs = plain.clone();
                let mut t = [0u8; 16];
                t[..8].copy_from_slice(&iv);
                if alg == CipherAlg::Aes128 {
                    let x = xts_mode::Xts128::new(
                        aes::Aes128::new_from_slice(&key[..half]).unwrap(),
                        aes::Aes128::new_from_slice(&key[half..]).unwrap(),
                    );
                    x.encrypt_sector(&mut theirs, t);
                } else {
                    let x = xts_mode::Xts128::new(
                        aes::Aes256::new_from_slice(&key[..half]).unwrap(),
                        aes::Aes256::new_from_slice(&key[half..]).unwrap(),
                    );
                    x.encrypt_sector(&mut theirs, t);
                }
                assert_eq!(ours, theirs, "{} len {len}", alg.name());
                c.decrypt(&iv, &mut ours).unwrap();
                assert_eq!(ours, plain);
            }
        }
    }

    #[test]
    fn every_algorithm_round_trips_in_cbc() {
        for alg in CipherAlg::ALL {
            let key = vec![7u8; alg.key_len()];
            let c = Cipher::new(alg, CipherMode::Cbc, &key).unwrap();
            let iv = vec![1u8; alg.block_len()];
            let mut data: Vec<u8> = (0..=255).cycle().take(512).collect();
            let orig = data.clone();
            c.encrypt(&iv, &mut data).unwrap();
            assert_ne!(data, orig);
            c.decrypt(&iv, &mut data).unwrap();
            assert_eq!(data, orig, "{}", alg.name());
        }
        assert!(Cipher::new(CipherAlg::Cast5_128, CipherMode::Xts, &[0; 32]).is_err());
        assert!(Cipher::new(CipherAlg::Aes256, CipherMode::Cbc, &[0; 16]).is_err());
    }
}
