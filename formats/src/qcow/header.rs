//! The qcow version 1 header (QCowHeader in QEMU's block/qcow.c): big-endian, 48 bytes,
//! followed by the backing file name and the L1 table.

use block::{Error, Result};

/// "QFI\xfb".
pub const MAGIC: u32 = u32::from_be_bytes([b'Q', b'F', b'I', 0xfb]);
/// The only version this driver reads.
pub const VERSION: u32 = 1;
/// Bytes of the header.
pub const HEADER_BYTES: usize = 48;
/// crypt_method of an unencrypted image.
pub const CRYPT_NONE: u32 = 0;
/// crypt_method of an AES-CBC encrypted image.
pub const CRYPT_AES: u32 = 1;

/// A qcow header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// MAGIC.
    pub magic: u32,
    /// VERSION.
    pub version: u32,
    /// Where the backing file name is, 0 for none.
    pub backing_file_offset: u64,
    /// Bytes of the backing file name.
    pub backing_file_size: u32,
    /// Modification time of the backing file (unused, 0).
    pub mtime: u32,
    /// Virtual size in bytes.
    pub size: u64,
    /// log2 of the cluster size.
    pub cluster_bits: u8,
    /// log2 of the entries per L2 table.
    pub l2_bits: u8,
    /// CRYPT_NONE or CRYPT_AES.
    pub crypt_method: u32,
    /// Where the L1 table is.
    pub l1_table_offset: u64,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Header {
    /// Parses the first HEADER_BYTES of `b`.
    pub fn parse(b: &[u8]) -> Header {
        Header {
            magic: be32(b, 0),
            version: be32(b, 4),
            backing_file_offset: be64(b, 8),
            backing_file_size: be32(b, 16),
            mtime: be32(b, 20),
            size: be64(b, 24),
            cluster_bits: b[32],
            l2_bits: b[33],
            crypt_method: be32(b, 36),
            l1_table_offset: be64(b, 40),
        }
    }

    /// The header's bytes.
    pub fn serialise(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_BYTES);
        b.extend(self.magic.to_be_bytes());
        b.extend(self.version.to_be_bytes());
        b.extend(self.backing_file_offset.to_be_bytes());
        b.extend(self.backing_file_size.to_be_bytes());
        b.extend(self.mtime.to_be_bytes());
        b.extend(self.size.to_be_bytes());
        b.extend([self.cluster_bits, self.l2_bits, 0, 0]);
        b.extend(self.crypt_method.to_be_bytes());
        b.extend(self.l1_table_offset.to_be_bytes());
        b
    }

    /// QEMU's checks on an image's header (qcow_open), and the L1 table's entry count.
    pub fn validate(&self) -> Result<u64> {
        if self.magic != MAGIC {
            return Err(Error::invalid("Image not in qcow format"));
        }
        if self.version != VERSION {
            return Err(Error::not_supported(format!(
                "Unsupported qcow version {}",
                self.version
            )));
        }
        if self.size <= 1 {
            return Err(Error::invalid(
                "Image size is too small (must be at least 2 bytes)",
            ));
        }
        if !(9..=16).contains(&self.cluster_bits) {
            return Err(Error::invalid("Cluster size must be between 512 and 64k"));
        }
        // Entries are 8 bytes: 2^6..2^13 entries make 512 B..64 KiB tables.
        if !(6..=13).contains(&self.l2_bits) {
            return Err(Error::invalid("L2 table size must be between 512 and 64k"));
        }
        if self.crypt_method > CRYPT_AES {
            return Err(Error::invalid("invalid encryption method in qcow header"));
        }
        let shift = self.cluster_bits as u32 + self.l2_bits as u32;
        if self.size > u64::MAX - (1u64 << shift) {
            return Err(Error::invalid("Image too large"));
        }
        let l1_size = (self.size + (1u64 << shift) - 1) >> shift;
        if l1_size > i32::MAX as u64 / 8 {
            return Err(Error::invalid("Image too large"));
        }
        Ok(l1_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_is_checked() {
        let h = Header {
            magic: MAGIC,
            version: VERSION,
            size: 1 << 20,
            cluster_bits: 12,
            l2_bits: 9,
            l1_table_offset: 48,
            ..Header::default()
        };
        let raw = h.serialise();
        assert_eq!(raw.len(), HEADER_BYTES);
        assert_eq!(Header::parse(&raw), h);
        assert_eq!(h.validate().unwrap(), 1);
        let bad = Header {
            cluster_bits: 20,
            ..h.clone()
        };
        assert!(bad.validate().is_err());
        let huge = Header {
            size: u64::MAX - 10,
            ..h
        };
        assert_eq!(huge.validate().unwrap_err().to_string(), "Image too large");
    }
}
