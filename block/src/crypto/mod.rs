//! Disk encryption: ciphers, hashes, IV generators and the LUKS1 format, shared by the
//! `luks` format driver and qcow2's encrypted images (QEMU's crypto/ directory).
//!
//! Every primitive comes from a RustCrypto crate; these modules hold what QEMU adds on top:
//! names, the sector/IV discipline of dm-crypt, and LUKS's key slots.

pub mod afsplit;
pub mod block;
pub mod cipher;
pub mod hash;
pub mod ivgen;
pub mod luks;
pub mod options;
pub mod qcow;

use crate::error::{Error, Result};

/// Fills `buf` from the kernel's CSPRNG (qcrypto_random_bytes).
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::getrandom(buf)
        .map_err(|e| Error::new(libc::EIO, format!("Unable to read random bytes: {e}")))
}
