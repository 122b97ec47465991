//! The QED header (the `QEDHeader` struct and the validity checks of QEMU's block/qed.c;
//! the format is specified in QEMU's docs/interop/qed_spec.txt).
//!
//! All fields are little-endian. The header names the cluster size, the size of the L1 and
//! L2 tables in clusters, feature bits — a backing file, whether that file must not be
//! probed (it is raw), and the need-check bit that says the image may have been left
//! inconsistent — the L1 table's offset, the virtual size, and where in the header
//! cluster(s) the backing file name lies.

use block::{Error, Result};

/// 'QED\0' read as a little-endian word.
pub const MAGIC: u32 = 0x0044_4551;
/// Bytes of the fixed header fields.
pub const HEADER_BYTES: usize = 64;
/// The image has a backing file (QED_F_BACKING_FILE).
pub const F_BACKING_FILE: u64 = 0x01;
/// The image may be inconsistent and must be checked before it is written
/// (QED_F_NEED_CHECK).
pub const F_NEED_CHECK: u64 = 0x02;
/// The backing file is raw and must not be probed (QED_F_BACKING_FORMAT_NO_PROBE).
pub const F_BACKING_FORMAT_NO_PROBE: u64 = 0x04;
/// Every feature bit this driver understands (QED_FEATURE_MASK).
pub const FEATURE_MASK: u64 = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE;
/// Smallest cluster size.
pub const MIN_CLUSTER_SIZE: u32 = 4096;
/// Largest cluster size.
pub const MAX_CLUSTER_SIZE: u32 = 64 << 20;
/// Smallest table size, in clusters.
pub const MIN_TABLE_SIZE: u32 = 1;
/// Largest table size, in clusters.
pub const MAX_TABLE_SIZE: u32 = 16;

/// The decoded header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Clusters per L1 or L2 table.
    pub table_size: u32,
    /// Clusters the header takes.
    pub header_size: u32,
    /// Incompatible feature bits.
    pub features: u64,
    /// Compatible feature bits.
    pub compat_features: u64,
    /// Feature bits cleared by writers that do not know them.
    pub autoclear_features: u64,
    /// Byte offset of the L1 table.
    pub l1_table_offset: u64,
    /// Virtual size in bytes.
    pub image_size: u64,
    /// Offset of the backing file name from the start of the header.
    pub backing_filename_offset: u32,
    /// Bytes of the backing file name.
    pub backing_filename_size: u32,
}

/// Whether a cluster size is valid (qed_is_cluster_size_valid).
pub fn cluster_size_valid(size: u64) -> bool {
    size.is_power_of_two() && (MIN_CLUSTER_SIZE as u64..=MAX_CLUSTER_SIZE as u64).contains(&size)
}

/// Whether a table size is valid (qed_is_table_size_valid).
pub fn table_size_valid(size: u64) -> bool {
    size.is_power_of_two() && (MIN_TABLE_SIZE as u64..=MAX_TABLE_SIZE as u64).contains(&size)
}

/// The largest virtual size the geometry addresses: L1 entries × L2 entries × cluster
/// (qed_max_image_size).
pub fn max_image_size(cluster_size: u64, table_size: u64) -> u64 {
    let entries = table_size * cluster_size / 8;
    entries * entries * cluster_size
}

impl Header {
    /// Decodes the fixed fields.
    pub fn parse(b: &[u8]) -> Result<Header> {
        let le32 = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let le64 = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        if b.len() < HEADER_BYTES || le32(0) != MAGIC {
            return Err(Error::invalid("Image not in QED format"));
        }
        Ok(Header {
            cluster_size: le32(4),
            table_size: le32(8),
            header_size: le32(12),
            features: le64(16),
            compat_features: le64(24),
            autoclear_features: le64(32),
            l1_table_offset: le64(40),
            image_size: le64(48),
            backing_filename_offset: le32(56),
            backing_filename_size: le32(60),
        })
    }

    /// Encodes the fixed fields.
    pub fn serialise(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_BYTES);
        for w in [MAGIC, self.cluster_size, self.table_size, self.header_size] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        for q in [
            self.features,
            self.compat_features,
            self.autoclear_features,
            self.l1_table_offset,
            self.image_size,
        ] {
            b.extend_from_slice(&q.to_le_bytes());
        }
        b.extend_from_slice(&self.backing_filename_offset.to_le_bytes());
        b.extend_from_slice(&self.backing_filename_size.to_le_bytes());
        b
    }

    /// Bytes per table.
    pub fn table_bytes(&self) -> u64 {
        self.table_size as u64 * self.cluster_size as u64
    }

    /// Entries per table.
    pub fn table_entries(&self) -> u64 {
        self.table_bytes() / 8
    }

    /// Whether a virtual size fits the geometry (qed_is_image_size_valid).
    pub fn image_size_valid(&self, size: u64) -> bool {
        size.is_multiple_of(512)
            && size <= max_image_size(self.cluster_size as u64, self.table_size as u64)
    }

    /// Whether an offset can hold a cluster of `file_len`: aligned, past the header and
    /// inside the file (qed_check_cluster_offset).
    pub fn cluster_offset_valid(&self, offset: u64, file_len: u64) -> bool {
        offset.is_multiple_of(self.cluster_size as u64)
            && offset >= self.header_size as u64 * self.cluster_size as u64
            && offset < file_len
    }

    /// Whether a whole table fits at an offset (qed_check_table_offset): its first and
    /// last clusters must be valid. As in QEMU, the last must lie strictly after the first,
    /// which makes one-cluster tables unusable even in images QEMU creates.
    pub fn table_offset_valid(&self, offset: u64, file_len: u64) -> bool {
        let last = (self.table_size as u64 - 1) * self.cluster_size as u64;
        match offset.checked_add(last) {
            Some(end) if end > offset => {
                self.cluster_offset_valid(offset, file_len)
                    && self.cluster_offset_valid(end, file_len)
            }
            _ => false,
        }
    }

    /// Refuses what QEMU refuses to open (qed_open's checks), with its messages.
    pub fn validate(&self, file_len: u64) -> Result<()> {
        if self.features & !FEATURE_MASK != 0 {
            return Err(Error::not_supported(format!(
                "Unsupported QED features: {:x}",
                self.features & !FEATURE_MASK
            )));
        }
        if !cluster_size_valid(self.cluster_size as u64) {
            return Err(Error::invalid("QED cluster size is invalid"));
        }
        if !table_size_valid(self.table_size as u64) {
            return Err(Error::invalid("QED table size is invalid"));
        }
        if !self.image_size_valid(self.image_size) {
            return Err(Error::invalid("QED image size is invalid"));
        }
        if self.header_size == 0 || !self.table_offset_valid(self.l1_table_offset, file_len) {
            return Err(Error::invalid("QED table offset is invalid"));
        }
        let name_end = self.backing_filename_offset as u64 + self.backing_filename_size as u64;
        if self.features & F_BACKING_FILE != 0
            && name_end > self.header_size as u64 * self.cluster_size as u64
        {
            return Err(Error::invalid("QED backing file name exceeds the header"));
        }
        Ok(())
    }
}
