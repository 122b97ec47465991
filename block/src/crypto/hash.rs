//! Hash algorithms by QEMU's names, and the two things LUKS does with them: plain digests
//! (the anti-forensic splitter, ESSIV) and PBKDF2 (QEMU's crypto/hash.c and crypto/pbkdf.c).
//!
//! Every algorithm comes from a RustCrypto crate; this module only maps names to types.

use std::time::Duration;

use digest::Digest;
use hmac::Hmac;

use crate::error::{Error, Result};

/// A hash algorithm QEMU's crypto layer knows (QCryptoHashAlgo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlg {
    /// SHA-1 (cryptsetup's historical LUKS1 default).
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256 (QEMU's default for new LUKS volumes).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// RIPEMD-160.
    Ripemd160,
}

impl HashAlg {
    /// Every algorithm, for parsing.
    const ALL: [HashAlg; 6] = [
        HashAlg::Sha1,
        HashAlg::Sha224,
        HashAlg::Sha256,
        HashAlg::Sha384,
        HashAlg::Sha512,
        HashAlg::Ripemd160,
    ];

    /// QEMU's (and the LUKS header's) name.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha224 => "sha224",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
            HashAlg::Ripemd160 => "ripemd160",
        }
    }

    /// Parses a name; None when the algorithm is not built.
    pub fn parse(name: &str) -> Option<HashAlg> {
        HashAlg::ALL.into_iter().find(|h| h.name() == name)
    }

    /// Size of a digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha1 | HashAlg::Ripemd160 => 20,
            HashAlg::Sha224 => 28,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The digest of the concatenation of `parts` (qcrypto_hash_bytesv).
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            HashAlg::Sha1 => run::<sha1::Sha1>(parts),
            HashAlg::Sha224 => run::<sha2::Sha224>(parts),
            HashAlg::Sha256 => run::<sha2::Sha256>(parts),
            HashAlg::Sha384 => run::<sha2::Sha384>(parts),
            HashAlg::Sha512 => run::<sha2::Sha512>(parts),
            HashAlg::Ripemd160 => run::<ripemd::Ripemd160>(parts),
        }
    }

    /// Fills `out` with PBKDF2-HMAC of `password` and `salt` (qcrypto_pbkdf2).
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        use pbkdf2::pbkdf2_hmac as p;
        match self {
            HashAlg::Sha1 => p::<sha1::Sha1>(password, salt, iterations, out),
            HashAlg::Sha224 => p::<sha2::Sha224>(password, salt, iterations, out),
            HashAlg::Sha256 => p::<sha2::Sha256>(password, salt, iterations, out),
            HashAlg::Sha384 => p::<sha2::Sha384>(password, salt, iterations, out),
            HashAlg::Sha512 => p::<sha2::Sha512>(password, salt, iterations, out),
            HashAlg::Ripemd160 => {
                let _ = pbkdf2::pbkdf2::<Hmac<ripemd::Ripemd160>>(password, salt, iterations, out);
            }
        }
    }

    /// How many PBKDF2 iterations this thread computes per second for an output of
    /// `out_len` bytes (qcrypto_pbkdf2_count_iters): iter-time is turned into an iteration
    /// count with it. Like QEMU it times the thread's CPU, growing the trial until one run
    /// takes at least half a second, so the figure does not depend on other load.
    pub fn pbkdf2_count_iters(self, password: &[u8], salt: &[u8], out_len: usize) -> Result<u64> {
        let mut out = vec![0u8; out_len];
        let mut iterations: u64 = 1 << 15;
        loop {
            let start = thread_cpu_time();
            self.pbkdf2(password, salt, iterations as u32, &mut out);
            let delta = thread_cpu_time().saturating_sub(start);
            let ms = delta.as_millis() as u64;
            if ms >= 500 {
                return Ok(iterations * 1000 / ms);
            }
            // A run too short to time at all: try a thousand times as many.
            iterations = (iterations * 1000)
                .checked_div(ms)
                .unwrap_or(iterations * 1000);
            if iterations > u32::MAX as u64 {
                return Err(Error::invalid(format!(
                    "PBKDF iterations {iterations} larger than {}",
                    u32::MAX
                )));
            }
        }
    }
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_rfc6070() {
        let mut out = [0u8; 20];
        HashAlg::Sha1.pbkdf2(b"password", b"salt", 2, &mut out);
        assert_eq!(
            out,
            [
                0xea, 0x6c, 0x01, 0x4d, 0xc7, 0x2d, 0x6f, 0x8c, 0xcd, 0x1e, 0xd9, 0x2a, 0xce, 0x1d,
                0x41, 0xf0, 0xd8, 0xde, 0x89, 0x57
            ]
        );
    }

    #[test]
    fn names_round_trip() {
        for h in HashAlg::ALL {
            assert_eq!(HashAlg::parse(h.name()), Some(h));
            assert_eq!(h.digest(&[b"x"]).len(), h.digest_len());
        }
        assert_eq!(HashAlg::parse("md4"), None);
    }
}
