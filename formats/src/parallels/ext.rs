//! The Parallels Format Extension: one cluster of typed features after the data, of which
//! QEMU knows the dirty bitmaps (QEMU's block/parallels-ext.c;
//! docs/interop/parallels.txt).
//!
//! The cluster starts with a magic and an MD5 of the rest; features follow, each a
//! header (magic, flags, data size) and its data, 8-byte aligned, until one with magic 0.
//! A dirty bitmap feature names its bitmap by UUID and lists, per cluster of serialised
//! bitmap, 0 (all clear), 1 (all set) or the sector where that cluster is stored. Like
//! QEMU, this driver only reads the extension, and only on read-only opens.

use block::{BlockDriverState, Error, Result};
use md5::{Digest, Md5};

use super::header::{u32_at, u64_at};
use crate::image_file::read_bytes;

const EXTENSION_MAGIC: u64 = 0xab23_4cef_23dc_ea87;
const END_OF_FEATURES_MAGIC: u64 = 0;
const DIRTY_BITMAP_MAGIC: u64 = 0x2038_5fae_252c_b34a;
/// Bytes of the extension header: magic and MD5.
const EXTENSION_HEADER: usize = 24;
/// Bytes of a feature header.
const FEATURE_HEADER: usize = 24;
/// Bytes of a dirty bitmap feature before its L1 table.
const BITMAP_HEADER: usize = 32;

/// A dirty bitmap of the extension; its data clusters are read when asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmap {
    /// The bitmap's UUID, as QEMU names it.
    pub name: String,
    /// Bytes of disk each bit covers.
    pub granularity: u64,
    /// Per cluster of serialised bitmap: 0, 1, or the sector of its data.
    l1: Vec<u64>,
    cluster_size: u64,
}

/// A UUID in its text form.
fn uuid_text(id: &[u8]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Bytes of memory a loaded bitmap may take: the disk size in the header is the image's
/// word, so a huge disk with a fine granularity is refused instead of allocated.
const MAX_LOADED_BITMAP_BYTES: u64 = 256 << 20;

impl DirtyBitmap {
    /// Makes this bitmap one of `bs`'s dirty bitmaps, named by its UUID, its bits read
    /// from `file` (the loading half of parallels_load_bitmap); `disk_size` in bytes.
    pub async fn load(
        &self,
        bs: &BlockDriverState,
        file: &BlockDriverState,
        disk_size: u64,
    ) -> Result<()> {
        let granularity = u32::try_from(self.granularity)
            .map_err(|_| Error::invalid("Bitmap granularity is too large"))?;
        if disk_size.div_ceil(self.granularity).div_ceil(8) > MAX_LOADED_BITMAP_BYTES {
            return Err(Error::invalid(format!(
                "Bitmap '{}' is too large to load",
                self.name
            )));
        }
        let bm = bs.create_dirty_bitmap_sized(granularity, Some(&self.name), disk_size)?;
        let coverage = bm.serialization_coverage(self.cluster_size);
        for (i, &entry) in self.l1.iter().enumerate() {
            let offset = i as u64 * coverage;
            if offset >= disk_size {
                break;
            }
            let count = coverage.min(disk_size - offset);
            match entry {
                0 => {}
                1 => bm.deserialize_ones(offset, count),
                sector => {
                    let at = sector.checked_mul(512).ok_or_else(|| {
                        Error::invalid(format!("Bitmap '{}' has a bad data offset", self.name))
                    })?;
                    let data = read_bytes(file, at, self.cluster_size as usize).await?;
                    bm.deserialize_part(&data, offset, count);
                }
            }
        }
        Ok(())
    }

    /// Whether the bit covering guest byte `offset` is set.
    pub async fn get(&self, file: &BlockDriverState, offset: u64) -> Result<bool> {
        let bit = offset / self.granularity;
        let per_cluster = self.cluster_size * 8;
        match self.l1.get((bit / per_cluster) as usize).copied() {
            None | Some(0) => Ok(false),
            Some(1) => Ok(true),
            Some(sector) => {
                let in_cluster = bit % per_cluster;
                let at = sector * 512 + in_cluster / 8;
                let byte = read_bytes(file, at, 1).await?[0];
                Ok(byte >> (in_cluster % 8) & 1 != 0)
            }
        }
    }
}

/// Parses a dirty bitmap feature (parallels_load_bitmap).
fn parse_bitmap(data: &[u8], disk_sectors: u64, cluster_size: u64) -> Result<DirtyBitmap> {
    if data.len() < BITMAP_HEADER {
        return Err(Error::invalid(format!(
            "Too small Bitmap Feature area in Parallels Format Extension: {} bytes, expected at least {BITMAP_HEADER} bytes",
            data.len()
        )));
    }
    let size = u64_at(data, 0);
    let granularity = (u32_at(data, 24) as u64) << 9;
    let l1_size = u32_at(data, 28) as usize;
    if size != disk_sectors {
        return Err(Error::invalid(format!(
            "Bitmap size (in sectors) {size} differs from disk size in sectors {disk_sectors}"
        )));
    }
    if l1_size * 8 > data.len() - BITMAP_HEADER {
        return Err(Error::invalid(
            "Bitmaps feature corrupted: l1 table exceeds extension data_size",
        ));
    }
    if !granularity.is_power_of_two() {
        return Err(Error::invalid("Bitmap granularity must be a power of two"));
    }
    // The serialised bitmap is whole 64-bit words, stored a cluster per L1 entry.
    let bits = (disk_sectors * 512).div_ceil(granularity);
    let expected = (bits.div_ceil(64) * 8).div_ceil(cluster_size);
    if expected != l1_size as u64 {
        return Err(Error::invalid(format!(
            "Bitmap table size {l1_size} does not correspond to bitmap size and cluster size. Expected {expected}"
        )));
    }
    let l1 = data[BITMAP_HEADER..BITMAP_HEADER + l1_size * 8]
        .chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().unwrap()))
        .collect();
    Ok(DirtyBitmap {
        name: uuid_text(&data[8..24]),
        granularity,
        l1,
        cluster_size,
    })
}

/// Parses an extension cluster (parallels_parse_format_extension).
pub fn parse(cluster: &[u8], disk_sectors: u64) -> Result<Vec<DirtyBitmap>> {
    let cluster_size = cluster.len() as u64;
    let magic = u64_at(cluster, 0);
    if magic != EXTENSION_MAGIC {
        return Err(Error::invalid(format!(
            "Wrong parallels Format Extension magic: 0x{magic:x}, expected: 0x{EXTENSION_MAGIC:x}"
        )));
    }
    if Md5::digest(&cluster[EXTENSION_HEADER..])[..] != cluster[8..24] {
        return Err(Error::invalid(
            "Wrong checksum in Format Extension header. Format extension is corrupted.",
        ));
    }
    let mut bitmaps = Vec::new();
    let mut pos = EXTENSION_HEADER;
    loop {
        let remaining = cluster.len() - pos;
        if remaining < FEATURE_HEADER {
            return Err(Error::invalid(format!(
                "Can not read feature header, as remaining bytes ({remaining}) in Format Extension is less than Feature header size ({FEATURE_HEADER})"
            )));
        }
        let fh = &cluster[pos..pos + FEATURE_HEADER];
        pos += FEATURE_HEADER;
        let (magic, flags, data_size) = (u64_at(fh, 0), u64_at(fh, 8), u32_at(fh, 16) as usize);
        if flags != 0 {
            return Err(Error::invalid(
                "Flags for extension feature are unsupported",
            ));
        }
        if data_size > cluster.len() - pos {
            return Err(Error::invalid(
                "Feature data_size exceedes Format Extension cluster",
            ));
        }
        match magic {
            END_OF_FEATURES_MAGIC => return Ok(bitmaps),
            DIRTY_BITMAP_MAGIC => bitmaps.push(parse_bitmap(
                &cluster[pos..pos + data_size],
                disk_sectors,
                cluster_size,
            )?),
            // QEMU prints the number in decimal after its "0x".
            other => return Err(Error::invalid(format!("Unknown feature: 0x{other}"))),
        }
        pos = (pos + data_size).div_ceil(8) * 8;
        if pos > cluster.len() {
            pos = cluster.len();
        }
    }
}

/// Reads and parses the extension cluster at byte `offset`
/// (parallels_read_format_extension).
pub async fn read(
    file: &BlockDriverState,
    offset: u64,
    cluster_size: u64,
    disk_sectors: u64,
) -> Result<Vec<DirtyBitmap>> {
    if offset.saturating_add(cluster_size) > file.getlength() {
        return Err(Error::new(
            libc::EIO,
            "Failed to read Format Extension cluster: the cluster lies past the end of the file",
        ));
    }
    let cluster = read_bytes(file, offset, cluster_size as usize).await?;
    parse(&cluster, disk_sectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An extension cluster with the given features, checksummed.
    fn cluster(features: &[(u64, u64, Vec<u8>)]) -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        c[0..8].copy_from_slice(&EXTENSION_MAGIC.to_le_bytes());
        let mut pos = EXTENSION_HEADER;
        for (magic, flags, data) in features {
            c[pos..pos + 8].copy_from_slice(&magic.to_le_bytes());
            c[pos + 8..pos + 16].copy_from_slice(&flags.to_le_bytes());
            c[pos + 16..pos + 20].copy_from_slice(&(data.len() as u32).to_le_bytes());
            pos += FEATURE_HEADER;
            c[pos..pos + data.len()].copy_from_slice(data);
            pos = (pos + data.len()).div_ceil(8) * 8;
        }
        let sum = Md5::digest(&c[EXTENSION_HEADER..]);
        c[8..24].copy_from_slice(&sum);
        c
    }

    fn bitmap_feature(sectors: u64, granularity_sectors: u32, l1: &[u64]) -> Vec<u8> {
        let mut d = sectors.to_le_bytes().to_vec();
        d.extend([0x11; 16]);
        d.extend(granularity_sectors.to_le_bytes());
        d.extend((l1.len() as u32).to_le_bytes());
        for e in l1 {
            d.extend(e.to_le_bytes());
        }
        d
    }

    #[test]
    fn bitmaps_are_parsed_and_bad_extensions_refused() {
        let c = cluster(&[(DIRTY_BITMAP_MAGIC, 0, bitmap_feature(2048, 128, &[1]))]);
        let b = parse(&c, 2048).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].name, "11111111-1111-1111-1111-111111111111");
        assert_eq!(b[0].granularity, 65536);
        let e = parse(&c, 4096).unwrap_err().to_string();
        assert!(
            e.starts_with("Bitmap size (in sectors) 2048 differs"),
            "{e}"
        );
        let mut bad = c.clone();
        bad[100] ^= 1;
        let e = parse(&bad, 2048).unwrap_err().to_string();
        assert!(e.starts_with("Wrong checksum"), "{e}");
        let c = cluster(&[(5, 0, vec![])]);
        assert_eq!(
            parse(&c, 2048).unwrap_err().to_string(),
            "Unknown feature: 0x5"
        );
        let c = cluster(&[(DIRTY_BITMAP_MAGIC, 1, vec![])]);
        let e = parse(&c, 2048).unwrap_err().to_string();
        assert_eq!(e, "Flags for extension feature are unsupported");
        let c = cluster(&[(DIRTY_BITMAP_MAGIC, 0, bitmap_feature(2048, 128, &[1, 1]))]);
        let e = parse(&c, 2048).unwrap_err().to_string();
        assert!(
            e.starts_with("Bitmap table size 2 does not correspond"),
            "{e}"
        );
    }
}
