//! The qcow2 header extensions and the backing file name after the fixed header fields:
//! backing format, feature name table, external data file, and unknown extensions kept as
//! they are (docs/interop/qcow2.txt "Header extensions"; qcow2_read_extensions in
//! block/qcow2.c).

use block::{Error, Result};

use super::{
    be32, be64, err, BitmapsExt, Header, AUTOCLEAR_BITMAPS, CRYPT_LUKS, EXT_BACKING_FORMAT,
    EXT_BITMAPS, EXT_CRYPTO_HEADER, EXT_DATA_FILE, EXT_END, EXT_FEATURE_TABLE, MAX_BACKING_NAME,
};

/// Most bitmaps an image may hold (QCOW2_MAX_BITMAPS).
pub const MAX_BITMAPS: u32 = 65535;
/// Largest bitmap directory (QCOW2_MAX_BITMAP_DIRECTORY_SIZE).
pub const MAX_BITMAP_DIRECTORY_SIZE: u64 = 1024 * MAX_BITMAPS as u64;

/// One entry of the feature name table extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// Bit number.
    pub bit: u8,
    /// Human-readable name.
    pub name: String,
}

/// The names QEMU writes into every v3 image it creates.
pub const QEMU_FEATURE_NAMES: &[(u8, u8, &str)] = &[
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
];

impl Header {
    /// Walks the extensions between the fixed header and the end of the first cluster (or
    /// the backing file name, whichever comes first), as qcow2_read_extensions does.
    pub(super) fn parse_extensions(&mut self, buf: &[u8]) -> Result<()> {
        let cs = self.cluster_size() as usize;
        let end = if self.backing_file_offset != 0 {
            self.backing_file_offset as usize
        } else {
            cs
        }
        .min(buf.len());
        let mut pos = self.header_length as usize;
        while pos < end {
            if pos + 8 > end || pos + 8 > buf.len() {
                return Err(err("Header extension too large"));
            }
            let ty = be32(buf, pos);
            let len = be32(buf, pos + 4) as usize;
            pos += 8;
            if len > end - pos {
                return Err(err("Header extension too large"));
            }
            let data = &buf[pos..pos + len];
            match ty {
                EXT_END => return Ok(()),
                EXT_BACKING_FORMAT => {
                    if len >= 16 {
                        return Err(Error::invalid(format!(
                            "ERROR: ext_backing_format: len={len} too large (>=16)"
                        )));
                    }
                    self.backing_format = Some(String::from_utf8_lossy(data).into_owned());
                }
                EXT_FEATURE_TABLE => self.feature_names = parse_feature_table(data),
                EXT_DATA_FILE => {
                    self.data_file = Some(String::from_utf8_lossy(data).into_owned());
                }
                EXT_BITMAPS => self.parse_bitmaps_ext(data)?,
                EXT_CRYPTO_HEADER => self.crypto_header = Some(self.parse_crypto_header(data)?),
                _ => self.other_extensions.push((ty, data.to_vec())),
            }
            pos += len.next_multiple_of(8);
        }
        Ok(())
    }

    /// Takes the bitmaps extension, with QEMU's checks; without its autoclear bit the
    /// extension is stale and dropped (qcow2_read_extensions).
    fn parse_bitmaps_ext(&mut self, data: &[u8]) -> Result<()> {
        if data.len() != 24 {
            return Err(err("bitmaps_ext: Invalid extension length"));
        }
        if self.autoclear_features & AUTOCLEAR_BITMAPS == 0 {
            self.bitmaps_stale = true;
            return Ok(());
        }
        if be32(data, 4) != 0 {
            return Err(err("bitmaps_ext: Reserved field is not zero"));
        }
        let ext = BitmapsExt {
            nb_bitmaps: be32(data, 0),
            directory_size: be64(data, 8),
            directory_offset: be64(data, 16),
        };
        if ext.nb_bitmaps > MAX_BITMAPS {
            return Err(err(format!(
                "bitmaps_ext: Image has {} bitmaps, exceeding the QEMU supported maximum of {MAX_BITMAPS}",
                ext.nb_bitmaps
            )));
        }
        if ext.nb_bitmaps == 0 {
            return Err(err("found bitmaps extension with zero bitmaps"));
        }
        if !ext.directory_offset.is_multiple_of(self.cluster_size()) {
            return Err(err("bitmaps_ext: invalid bitmap directory offset"));
        }
        if ext.directory_size > MAX_BITMAP_DIRECTORY_SIZE {
            return Err(err(format!(
                "bitmaps_ext: bitmap directory size ({}) exceeds the maximum supported size ({MAX_BITMAP_DIRECTORY_SIZE})",
                ext.directory_size
            )));
        }
        self.bitmaps = Some(ext);
        Ok(())
    }

    /// Checks the LUKS header pointer as qcow2_read_extensions does.
    fn parse_crypto_header(&self, data: &[u8]) -> Result<(u64, u64)> {
        if self.crypt_method != CRYPT_LUKS {
            return Err(Error::invalid(
                "ERROR: crypto header extension only expected with LUKS encryption method",
            ));
        }
        if data.len() != 16 {
            return Err(Error::invalid(
                "ERROR: crypto header extension: size mismatch",
            ));
        }
        let offset = u64::from_be_bytes(data[..8].try_into().unwrap());
        let length = u64::from_be_bytes(data[8..].try_into().unwrap());
        let cs = self.cluster_size();
        if !offset.is_multiple_of(cs) {
            return Err(Error::invalid(format!(
                "Encryption header offset '{offset}' is not a multiple of cluster size '{cs}'"
            )));
        }
        Ok((offset, length))
    }

    /// Reads the backing file name the header points to.
    pub(super) fn parse_backing_name(&mut self, buf: &[u8]) -> Result<()> {
        if self.backing_file_offset == 0 {
            return Ok(());
        }
        let start = self.backing_file_offset as usize;
        let len = self.backing_file_size as usize;
        if len as u32 > MAX_BACKING_NAME || start + len > self.cluster_size() as usize {
            return Err(err("Backing file name too long"));
        }
        if start + len > buf.len() {
            return Err(err("Backing file name too long"));
        }
        self.backing_file = Some(String::from_utf8_lossy(&buf[start..start + len]).into_owned());
        Ok(())
    }
}

/// Parses the feature name table; a short last entry is zero-padded and the table ends at
/// the first entry without a name, as QEMU reads it.
fn parse_feature_table(data: &[u8]) -> Vec<FeatureName> {
    let mut padded = data.to_vec();
    padded.resize(data.len().next_multiple_of(48), 0);
    padded
        .chunks_exact(48)
        .take_while(|e| e[2] != 0)
        .map(|e| {
            let name = &e[2..];
            let n = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            FeatureName {
                kind: e[0],
                bit: e[1],
                name: String::from_utf8_lossy(&name[..n]).into_owned(),
            }
        })
        .collect()
}

/// The feature name table extension's bytes.
pub(super) fn feature_table_bytes(names: &[FeatureName]) -> Vec<u8> {
    let mut out = Vec::with_capacity(names.len() * 48);
    for f in names {
        let mut e = [0u8; 48];
        e[0] = f.kind;
        e[1] = f.bit;
        let n = f.name.len().min(46);
        e[2..2 + n].copy_from_slice(&f.name.as_bytes()[..n]);
        out.extend_from_slice(&e);
    }
    out
}

/// The bitmaps extension's 24 bytes.
pub(super) fn bitmaps_ext_bytes(ext: &BitmapsExt) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&ext.nb_bitmaps.to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&ext.directory_size.to_be_bytes());
    b.extend_from_slice(&ext.directory_offset.to_be_bytes());
    b
}

/// Appends one extension (type, length, data padded to 8 bytes).
pub(super) fn push_ext(b: &mut Vec<u8>, ty: u32, data: &[u8]) {
    b.extend_from_slice(&ty.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b.resize(b.len().next_multiple_of(8), 0);
}
