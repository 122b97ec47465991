//! The qcow2 header: the fixed fields at offset 0, the header extensions after them, and the
//! backing file name (docs/interop/qcow2.txt "Header", "Header extensions"; QEMU parses it in
//! qcow2_do_open and writes it in qcow2_update_header, block/qcow2.c).
//!
//! Everything in the first cluster is described here, so that one function reads it and one
//! writes it back; the extensions and the backing file name after the fixed fields are read
//! in `extensions`. Every field is checked against QEMU's limits before anything is sized from
//! it: a lying header gets the same error QEMU gives, never a huge allocation.

mod extensions;

use block::{Error, Result};

use extensions::{feature_table_bytes, push_ext};
pub use extensions::{FeatureName, MAX_BITMAPS, MAX_BITMAP_DIRECTORY_SIZE, QEMU_FEATURE_NAMES};

/// The magic at offset 0: "QFI\xfb".
pub const QCOW_MAGIC: u32 = 0x5146_49fb;
/// Length of a version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Shortest valid version 3 header.
pub const V3_HEADER_LEN: u32 = 104;
/// Largest backing file name QEMU accepts.
pub const MAX_BACKING_NAME: u32 = 1023;
/// Largest active L1 table QEMU opens (QCOW_MAX_L1_SIZE).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table QEMU opens (QCOW_MAX_REFTABLE_SIZE).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Most internal snapshots QEMU opens (QCOW_MAX_SNAPSHOTS).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Smallest and largest cluster sizes, as powers of two.
pub const MIN_CLUSTER_BITS: u32 = 9;
/// See [`MIN_CLUSTER_BITS`].
pub const MAX_CLUSTER_BITS: u32 = 21;

/// Incompatible feature: refcounts may be stale (lazy refcounts).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature: metadata may be corrupt, open read-only only.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature: the compression type field is not zlib.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature: 128-bit L2 entries with subclusters.
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Incompatible features this driver understands.
pub const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
/// Compatible feature: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Autoclear feature: the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
/// Autoclear feature: the external data file is a valid raw image.
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// Header extension: end of the extension area.
pub const EXT_END: u32 = 0;
/// Header extension: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Header extension: external data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Header extension: where the bitmap directory is.
pub const EXT_BITMAPS: u32 = 0x2385_2875;

/// The bitmaps extension: the bitmap directory's place and size (Qcow2BitmapHeaderExt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitmapsExt {
    /// Bitmaps in the directory.
    pub nb_bitmaps: u32,
    /// Bytes of the directory.
    pub directory_size: u64,
    /// Host offset of the directory.
    pub directory_offset: u64,
}

/// Header extension: full disk encryption header pointer (LUKS).
pub const EXT_CRYPTO_HEADER: u32 = 0x0537_be77;
/// `crypt_method` of the legacy AES encryption.
pub const CRYPT_AES: u32 = 1;
/// `crypt_method` of LUKS encryption.
pub const CRYPT_LUKS: u32 = 2;

/// Compression types (header byte 104).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionType {
    /// Raw deflate, the default.
    Zlib,
    /// Zstandard.
    Zstd,
}

impl CompressionType {
    /// The name `qemu-img info` prints.
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// The parsed contents of the first cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Where the backing file name is stored (0: none).
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table occupies.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits.
    pub incompatible_features: u64,
    /// Compatible feature bits.
    pub compatible_features: u64,
    /// Autoclear feature bits.
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Length of the fixed header in bytes.
    pub header_length: u32,
    /// How compressed clusters are compressed.
    pub compression_type: CompressionType,
    /// Backing file name, if any.
    pub backing_file: Option<String>,
    /// Backing format from the extension, if any.
    pub backing_format: Option<String>,
    /// External data file name, if any.
    pub data_file: Option<String>,
    /// The feature name table.
    pub feature_names: Vec<FeatureName>,
    /// The bitmaps extension, when present and valid (its autoclear bit set).
    pub bitmaps: Option<BitmapsExt>,
    /// A bitmaps extension was found without its autoclear bit: a program unaware of
    /// bitmaps wrote the image, and the extension is dropped.
    pub bitmaps_stale: bool,
    /// Offset and length of the LUKS header area, from its pointer extension.
    pub crypto_header: Option<(u64, u64)>,
    /// Extensions this driver does not interpret, kept to be written back unchanged.
    pub other_extensions: Vec<(u32, Vec<u8>)>,
}

pub(super) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

pub(super) fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

pub(super) fn err(msg: impl Into<String>) -> Error {
    Error::invalid(msg)
}

impl Header {
    /// A fresh header for `create` (no tables placed yet).
    pub fn new(version: u32, cluster_bits: u32, size: u64) -> Header {
        Header {
            version,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits,
            size,
            crypt_method: 0,
            l1_size: 0,
            l1_table_offset: 0,
            refcount_table_offset: 0,
            refcount_table_clusters: 0,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: if version >= 3 { 112 } else { V2_HEADER_LEN },
            compression_type: CompressionType::Zlib,
            backing_file: None,
            backing_format: None,
            data_file: None,
            crypto_header: None,
            feature_names: if version >= 3 {
                QEMU_FEATURE_NAMES
                    .iter()
                    .map(|&(kind, bit, name)| FeatureName {
                        kind,
                        bit,
                        name: name.to_string(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            bitmaps: None,
            bitmaps_stale: false,
            other_extensions: Vec::new(),
        }
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Whether L2 entries are 128 bits with subclusters.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    /// Parses and validates the first cluster (`buf` holds at least the header and may hold
    /// the whole first cluster). `file_size` bounds nothing QEMU does not bound, but is used
    /// for no allocation either: the limits are QEMU's.
    pub fn parse(buf: &[u8]) -> Result<Header> {
        if buf.len() < V2_HEADER_LEN as usize || be32(buf, 0) != QCOW_MAGIC {
            return Err(err("Image is not in qcow2 format"));
        }
        let version = be32(buf, 4);
        if !(2..=3).contains(&version) {
            return Err(Error::not_supported(format!(
                "Unsupported qcow2 version {version}"
            )));
        }
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(err(format!("Unsupported cluster size: 2^{cluster_bits}")));
        }
        let mut h = Header::new(version, cluster_bits, be64(buf, 24));
        h.backing_file_offset = be64(buf, 8);
        h.backing_file_size = be32(buf, 16);
        h.crypt_method = be32(buf, 32);
        h.l1_size = be32(buf, 36);
        h.l1_table_offset = be64(buf, 40);
        h.refcount_table_offset = be64(buf, 48);
        h.refcount_table_clusters = be32(buf, 56);
        h.nb_snapshots = be32(buf, 60);
        h.snapshots_offset = be64(buf, 64);
        h.feature_names.clear();
        if version == 2 {
            h.header_length = V2_HEADER_LEN;
        } else {
            h.parse_v3_fields(buf)?;
        }
        h.validate_fixed()?;
        h.parse_extensions(buf)?;
        h.parse_backing_name(buf)?;
        Ok(h)
    }

    fn parse_v3_fields(&mut self, buf: &[u8]) -> Result<()> {
        if buf.len() < V3_HEADER_LEN as usize {
            return Err(err("qcow2 header too short"));
        }
        self.incompatible_features = be64(buf, 72);
        self.compatible_features = be64(buf, 80);
        self.autoclear_features = be64(buf, 88);
        self.refcount_order = be32(buf, 96);
        self.header_length = be32(buf, 100);
        if self.header_length < V3_HEADER_LEN {
            return Err(err("qcow2 header too short"));
        }
        if self.header_length as u64 > self.cluster_size() {
            return Err(err("qcow2 header exceeds cluster size"));
        }
        if self.header_length as usize > buf.len() {
            return Err(err("qcow2 header exceeds cluster size"));
        }
        if self.header_length > 104 {
            self.compression_type = match buf[104] {
                0 => CompressionType::Zlib,
                1 => CompressionType::Zstd,
                t => return Err(err(format!("qcow2: unknown compression type: {t}"))),
            };
        }
        let flagged = self.incompatible_features & INCOMPAT_COMPRESSION != 0;
        if flagged != (self.compression_type != CompressionType::Zlib) {
            return Err(err(if flagged {
                "qcow2: Compression type incompatible feature bit must not be set"
            } else {
                "qcow2: Invalid compression type: incompatible feature bit is not set"
            }));
        }
        Ok(())
    }

    /// The checks of qcow2_do_open on the fixed fields, in QEMU's order where it matters.
    fn validate_fixed(&self) -> Result<()> {
        let cs = self.cluster_size();
        if self.backing_file_offset > cs {
            return Err(err("Invalid backing file offset"));
        }
        if self.refcount_order > 6 {
            return Err(err(
                "Reference count entry width too large; may not exceed 64 bits",
            ));
        }
        if self.crypt_method > 2 {
            return Err(err(format!(
                "Unsupported encryption method: {}",
                self.crypt_method
            )));
        }
        if self.extended_l2() && self.cluster_bits < 14 {
            return Err(err(
                "The cluster size must be at least 16 KiB when using extended L2 entries",
            ));
        }
        if self.refcount_table_clusters as u64 > MAX_REFTABLE_BYTES / cs {
            return Err(err("Reference count table too large"));
        }
        validate_table(
            self.refcount_table_offset,
            self.refcount_table_clusters as u64 * cs,
            cs,
        )
        .map_err(|_| err("Reference count table offset invalid"))?;
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(err("Snapshot table too large"));
        }
        validate_table(self.snapshots_offset, self.nb_snapshots as u64 * 40, cs)
            .map_err(|_| err("Snapshot table offset invalid"))?;
        if self.l1_size as u64 > MAX_L1_BYTES / 8 {
            return Err(err("Active L1 table too large"));
        }
        validate_table(self.l1_table_offset, self.l1_size as u64 * 8, cs)
            .map_err(|_| err("Active L1 table offset invalid"))?;
        // The L1 index of the VM state, past the guest's data, must fit an int.
        let l1_needed = l1_entries_for(self.size, self.cluster_bits, self.extended_l2());
        if self.size > i64::MAX as u64 || l1_needed > i32::MAX as u64 {
            return Err(err("Image is too big"));
        }
        if (self.l1_size as u64) < l1_needed {
            return Err(err("L1 table is too small"));
        }
        Ok(())
    }

    /// The "Unsupported qcow2 feature(s): ..." refusal for unknown incompatible bits.
    pub fn check_incompatible(&self) -> Result<()> {
        let unknown = self.incompatible_features & !INCOMPAT_KNOWN;
        if unknown == 0 {
            return Ok(());
        }
        let mut parts = Vec::new();
        let mut left = unknown;
        for f in self.feature_names.iter().filter(|f| f.kind == 0) {
            let bit = 1u64 << (f.bit & 63);
            if left & bit != 0 {
                parts.push(f.name.clone());
                left &= !bit;
            }
        }
        if left != 0 {
            parts.push(format!("Unknown incompatible feature: {left:x}"));
        }
        Err(Error::not_supported(format!(
            "Unsupported qcow2 feature(s): {}",
            parts.join(", ")
        )))
    }

    /// Serialises the header, its extensions and the backing file name into one cluster.
    pub fn serialise(&mut self) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let mut b = vec![0u8; V2_HEADER_LEN as usize];
        self.put_fixed(&mut b);
        if self.version >= 3 {
            self.header_length = 112;
            b.resize(112, 0);
            put64(&mut b, 72, self.incompatible_features);
            put64(&mut b, 80, self.compatible_features);
            put64(&mut b, 88, self.autoclear_features);
            put32(&mut b, 96, self.refcount_order);
            put32(&mut b, 100, self.header_length);
            b[104] = match self.compression_type {
                CompressionType::Zlib => 0,
                CompressionType::Zstd => 1,
            };
        }
        if let Some(fmt) = &self.backing_format {
            push_ext(&mut b, EXT_BACKING_FORMAT, fmt.as_bytes());
        }
        if let Some(df) = &self.data_file {
            push_ext(&mut b, EXT_DATA_FILE, df.as_bytes());
        }
        if let Some((offset, length)) = self.crypto_header {
            let mut ext = offset.to_be_bytes().to_vec();
            ext.extend_from_slice(&length.to_be_bytes());
            push_ext(&mut b, EXT_CRYPTO_HEADER, &ext);
        }
        // QEMU leaves the table out of small clusters, where it would crowd out the
        // other extensions and the backing file name.
        if !self.feature_names.is_empty() && cs > 4096 {
            push_ext(
                &mut b,
                EXT_FEATURE_TABLE,
                &feature_table_bytes(&self.feature_names),
            );
        }
        if let Some(ext) = &self.bitmaps {
            push_ext(&mut b, EXT_BITMAPS, &extensions::bitmaps_ext_bytes(ext));
        }
        for (ty, data) in &self.other_extensions {
            push_ext(&mut b, *ty, data);
        }
        push_ext(&mut b, EXT_END, &[]);
        match &self.backing_file {
            Some(name) => {
                self.backing_file_offset = b.len() as u64;
                self.backing_file_size = name.len() as u32;
                b.extend_from_slice(name.as_bytes());
            }
            None => {
                self.backing_file_offset = 0;
                self.backing_file_size = 0;
            }
        }
        if b.len() > cs {
            return Err(Error::new(
                libc::ENOSPC,
                "Cannot fit the qcow2 header into one cluster",
            ));
        }
        self.put_fixed(&mut b);
        Ok(b)
    }

    fn put_fixed(&self, b: &mut [u8]) {
        put32(b, 0, QCOW_MAGIC);
        put32(b, 4, self.version);
        put64(b, 8, self.backing_file_offset);
        put32(b, 16, self.backing_file_size);
        put32(b, 20, self.cluster_bits);
        put64(b, 24, self.size);
        put32(b, 32, self.crypt_method);
        put32(b, 36, self.l1_size);
        put64(b, 40, self.l1_table_offset);
        put64(b, 48, self.refcount_table_offset);
        put32(b, 56, self.refcount_table_clusters);
        put32(b, 60, self.nb_snapshots);
        put64(b, 64, self.snapshots_offset);
    }
}

/// Entries an L1 table needs to map `size` bytes.
pub fn l1_entries_for(size: u64, cluster_bits: u32, extended_l2: bool) -> u64 {
    let entry_bits = if extended_l2 { 4 } else { 3 };
    let l2_bits = cluster_bits - entry_bits;
    let shift = cluster_bits + l2_bits;
    size.div_ceil(1u64 << shift)
}

/// QEMU's validate_table_offset: aligned, and the end representable.
fn validate_table(offset: u64, bytes: u64, cluster_size: u64) -> Result<()> {
    if !offset.is_multiple_of(cluster_size)
        || offset
            .checked_add(bytes)
            .is_none_or(|e| e > i64::MAX as u64)
    {
        return Err(Error::from_errno(libc::EINVAL));
    }
    Ok(())
}

/// Stores a big-endian u32 at `at`.
pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Stores a big-endian u64 at `at`.
pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Reads a big-endian u64 at `at`.
pub fn get64(b: &[u8], at: usize) -> u64 {
    be64(b, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_extensions_and_backing_name() {
        let mut h = Header::new(3, 16, 1 << 20);
        h.l1_size = 1;
        h.l1_table_offset = 0x30000;
        h.refcount_table_offset = 0x10000;
        h.refcount_table_clusters = 1;
        h.backing_file = Some("base.qcow2".into());
        h.backing_format = Some("qcow2".into());
        h.other_extensions.push((0x1234_5678, vec![1, 2, 3]));
        let bytes = h.serialise().unwrap();
        let back = Header::parse(&bytes).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn unknown_incompatible_bits_are_named() {
        let mut h = Header::new(3, 16, 1 << 20);
        h.l1_size = 1;
        h.refcount_table_clusters = 1;
        h.incompatible_features = 1 << 63 | INCOMPAT_DIRTY;
        let e = h.check_incompatible().unwrap_err();
        assert_eq!(
            e.to_string(),
            "Unsupported qcow2 feature(s): Unknown incompatible feature: 8000000000000000"
        );
    }
}
