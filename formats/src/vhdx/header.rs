//! The VHDX header section: the file identifier, the two headers and the region table
//! (QEMU's header code in block/vhdx.c and block/vhdx-endian.c; VHDX spec v1.00 §2.2).
//!
//! The first megabyte of a VHDX file holds a signature, two copies of a 4 KiB header and
//! two copies of a 64 KiB region table, each guarded by a CRC-32C. The headers alternate:
//! an update rewrites the older one with a higher sequence number, so a crash mid-write
//! leaves the other intact, and the valid header with the highest sequence number is the
//! current one. The region table says where the BAT and the metadata region live.

use block::error::error_report;
use block::{BlockDriverState, Error, Result};

use crate::image_file::{random_uuid, read_bytes, write_bytes};

/// One mebibyte: the unit of VHDX placement.
pub const MIB: u64 = 1 << 20;
/// Each structure of the header section occupies a 64 KiB block.
pub const HEADER_BLOCK_SIZE: u64 = 64 << 10;
/// Where the two headers live.
pub const HEADER_OFFSETS: [u64; 2] = [HEADER_BLOCK_SIZE, 2 * HEADER_BLOCK_SIZE];
/// Where the region table and its copy live.
pub const REGION_TABLE_OFFSETS: [u64; 2] = [3 * HEADER_BLOCK_SIZE, 4 * HEADER_BLOCK_SIZE];
/// The header section: nothing else may lie in the first megabyte.
pub const HEADER_SECTION_END: u64 = MIB;
/// The bytes a header's checksum covers.
pub const HEADER_SIZE: usize = 4096;
/// The file identifier's signature.
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";

const HEADER_SIGNATURE: &[u8; 4] = b"head";
const REGION_SIGNATURE: &[u8; 4] = b"regi";
/// Bytes of a header that carry fields; the rest of the 4 KiB is reserved.
const HEADER_FIELDS: usize = 80;
/// The spec's limit on region table entries.
const MAX_REGION_ENTRIES: u32 = 2047;

/// A GUID as the spec stores it: the first three fields little-endian.
pub type Guid = [u8; 16];

/// Builds the on-disk bytes of a Microsoft-style GUID.
pub const fn ms_guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

/// The region holding the block allocation table.
pub const BAT_GUID: Guid = ms_guid(
    0x2dc2_7766,
    0xf623,
    0x4200,
    [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08],
);
/// The region holding the metadata table and items.
pub const METADATA_GUID: Guid = ms_guid(
    0x8b7c_a206,
    0x4790,
    0x4b9a,
    [0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e],
);

/// A little-endian field of a structure.
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

/// A little-endian field of a structure.
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// A little-endian field of a structure.
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// CRC-32C of `buf` with its 4-byte checksum field at `crc_offset` taken as zero
/// (vhdx_checksum_calc).
pub fn checksum(buf: &[u8], crc_offset: usize) -> u32 {
    let crc = crc32c::crc32c(&buf[..crc_offset]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &buf[crc_offset + 4..])
}

/// Whether the checksum stored at `crc_offset` matches (vhdx_checksum_is_valid).
pub fn checksum_valid(buf: &[u8], crc_offset: usize) -> bool {
    le_u32(buf, crc_offset) == checksum(buf, crc_offset)
}

/// Stores the checksum of `buf` at `crc_offset` (vhdx_update_checksum).
pub fn set_checksum(buf: &mut [u8], crc_offset: usize) {
    let crc = checksum(buf, crc_offset);
    buf[crc_offset..crc_offset + 4].copy_from_slice(&crc.to_le_bytes());
}

/// One header (VHDXHeader).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The header with the higher number is current.
    pub sequence_number: u64,
    /// Changed before the first write of a session.
    pub file_write_guid: Guid,
    /// Changed before the first write the guest can see.
    pub data_write_guid: Guid,
    /// Zero when the log is empty; log entries carry the same GUID.
    pub log_guid: Guid,
    /// Must be 0.
    pub log_version: u16,
    /// Must be 1.
    pub version: u16,
    /// Bytes of the log, a multiple of 1 MiB.
    pub log_length: u32,
    /// Where the log starts, a multiple of 1 MiB.
    pub log_offset: u64,
}

impl Header {
    /// Parses a 4 KiB header block; None unless its checksum, signature and version are
    /// right (vhdx_parse_header's validity test).
    pub fn parse(buf: &[u8]) -> Option<Header> {
        if buf.len() < HEADER_SIZE || !checksum_valid(&buf[..HEADER_SIZE], 4) {
            return None;
        }
        let h = Header {
            sequence_number: le_u64(buf, 8),
            file_write_guid: buf[16..32].try_into().unwrap(),
            data_write_guid: buf[32..48].try_into().unwrap(),
            log_guid: buf[48..64].try_into().unwrap(),
            log_version: le_u16(buf, 64),
            version: le_u16(buf, 66),
            log_length: le_u32(buf, 68),
            log_offset: le_u64(buf, 72),
        };
        (&buf[0..4] == HEADER_SIGNATURE && h.version == 1).then_some(h)
    }

    /// The 4 KiB block of this header over `reserved` (the block's current bytes, kept
    /// past the fields as QEMU keeps them), checksummed.
    pub fn serialise(&self, reserved: &[u8]) -> Vec<u8> {
        let mut b = reserved[..HEADER_SIZE].to_vec();
        b[0..4].copy_from_slice(HEADER_SIGNATURE);
        b[8..16].copy_from_slice(&self.sequence_number.to_le_bytes());
        b[16..32].copy_from_slice(&self.file_write_guid);
        b[32..48].copy_from_slice(&self.data_write_guid);
        b[48..64].copy_from_slice(&self.log_guid);
        b[64..66].copy_from_slice(&self.log_version.to_le_bytes());
        b[66..68].copy_from_slice(&self.version.to_le_bytes());
        b[68..72].copy_from_slice(&self.log_length.to_le_bytes());
        b[72..80].copy_from_slice(&self.log_offset.to_le_bytes());
        b[HEADER_FIELDS..HEADER_SIZE].copy_from_slice(&reserved[HEADER_FIELDS..HEADER_SIZE]);
        set_checksum(&mut b, 4);
        b
    }
}

/// Both headers and which one is current.
pub struct Headers {
    /// Header 1 and header 2 as last read or written.
    pub headers: [Header; 2],
    /// Index of the current header.
    pub current: usize,
    /// The file write GUID of this session (s->session_guid).
    pub session_guid: Guid,
}

impl Headers {
    /// Reads both headers and picks the current one (vhdx_parse_header).
    pub async fn read(file: &BlockDriverState) -> Result<Headers> {
        let mut parsed = [None, None];
        for (i, &at) in HEADER_OFFSETS.iter().enumerate() {
            parsed[i] = Header::parse(&read_bytes(file, at, HEADER_SIZE).await?);
        }
        let current = match (&parsed[0], &parsed[1]) {
            (Some(_), None) => 0,
            (None, Some(_)) => 1,
            (Some(a), Some(b)) if a.sequence_number > b.sequence_number => 0,
            (Some(a), Some(b)) if b.sequence_number > a.sequence_number => 1,
            // Disk2VHD writes two identical headers: not a corruption.
            (Some(a), Some(b)) if a == b => 0,
            _ => return Err(Error::invalid("No valid VHDX header found")),
        };
        let fallback = parsed[current].clone().unwrap();
        let [h1, h2] = parsed;
        Ok(Headers {
            headers: [
                h1.unwrap_or_else(|| fallback.clone()),
                h2.unwrap_or(fallback),
            ],
            current,
            session_guid: random_uuid(),
        })
    }

    /// The current header.
    pub fn current(&self) -> &Header {
        &self.headers[self.current]
    }

    /// Rewrites the older header as the newer one (vhdx_update_header): a higher
    /// sequence number, this session's file write GUID, optionally a new data write GUID
    /// and a new log GUID; it becomes current once it is on disk.
    async fn update_one(
        &mut self,
        file: &BlockDriverState,
        new_data_guid: bool,
        log_guid: Option<Guid>,
    ) -> Result<()> {
        let other = 1 - self.current;
        let mut h = self.current().clone();
        h.sequence_number += 1;
        h.file_write_guid = self.session_guid;
        if new_data_guid {
            h.data_write_guid = random_uuid();
        }
        if let Some(g) = log_guid {
            h.log_guid = g;
        }
        let at = HEADER_OFFSETS[other];
        let block = h.serialise(&read_bytes(file, at, HEADER_SIZE).await?);
        write_bytes(file, at, &block).await?;
        file.co_flush().await?;
        self.headers[other] = h;
        self.current = other;
        Ok(())
    }

    /// Updates both headers, so that either one is valid and current after a crash
    /// (vhdx_update_headers).
    pub async fn update(
        &mut self,
        file: &BlockDriverState,
        new_data_guid: bool,
        log_guid: Option<Guid>,
    ) -> Result<()> {
        self.update_one(file, new_data_guid, log_guid).await?;
        self.update_one(file, new_data_guid, log_guid).await
    }
}

/// One region table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    /// Where the region starts in the file.
    pub file_offset: u64,
    /// Its length in bytes.
    pub length: u32,
}

/// The byte ranges of the file that structures claim, to catch overlaps
/// (vhdx_region_register / vhdx_region_check).
#[derive(Default)]
pub struct Regions(Vec<(u64, u64)>);

impl Regions {
    /// Claims a range; an overlap with one already claimed is reported and refused.
    pub fn check(&self, start: u64, length: u64) -> Result<()> {
        let end = start.saturating_add(length);
        for &(s, e) in &self.0 {
            if start < e && end > s {
                error_report(&format!(
                    "VHDX region {start}-{end} overlaps with region {s}-{e}"
                ));
                return Err(Error::from_errno(libc::EINVAL));
            }
        }
        Ok(())
    }

    /// Records a claimed range.
    pub fn register(&mut self, start: u64, length: u64) {
        self.0.push((start, start.saturating_add(length)));
    }
}

/// The two regions every image has.
#[derive(Debug)]
pub struct RegionTable {
    /// The block allocation table.
    pub bat: Region,
    /// The metadata region.
    pub metadata: Region,
}

/// Parses the region table block (vhdx_open_region_tables): checksum, signature, entry
/// count, no overlaps, exactly one BAT and one metadata region, and no required region
/// this driver does not know.
pub fn parse_region_table(buf: &[u8], regions: &mut Regions) -> Result<RegionTable> {
    let einval = || Error::from_errno(libc::EINVAL);
    if !checksum_valid(buf, 4) || &buf[0..4] != REGION_SIGNATURE {
        return Err(einval());
    }
    let count = le_u32(buf, 8);
    if count > MAX_REGION_ENTRIES {
        return Err(einval());
    }
    let (mut bat, mut metadata) = (None, None);
    for i in 0..count as usize {
        let e = &buf[16 + i * 32..48 + i * 32];
        let region = Region {
            file_offset: le_u64(e, 16),
            length: le_u32(e, 24),
        };
        regions.check(region.file_offset, region.length as u64)?;
        regions.register(region.file_offset, region.length as u64);
        let slot = match &e[0..16] {
            g if g == BAT_GUID => &mut bat,
            g if g == METADATA_GUID => &mut metadata,
            _ if le_u32(e, 28) & 1 != 0 => return Err(Error::from_errno(libc::ENOTSUP)),
            _ => continue,
        };
        if slot.replace(region).is_some() {
            return Err(einval());
        }
    }
    match (bat, metadata) {
        (Some(bat), Some(metadata)) => Ok(RegionTable { bat, metadata }),
        _ => Err(einval()),
    }
}

/// A region table block naming the BAT and the metadata region.
pub fn new_region_table(bat: Region, metadata: Region) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_BLOCK_SIZE as usize];
    b[0..4].copy_from_slice(REGION_SIGNATURE);
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    for (i, (guid, r)) in [(BAT_GUID, bat), (METADATA_GUID, metadata)]
        .iter()
        .enumerate()
    {
        let e = &mut b[16 + i * 32..48 + i * 32];
        e[0..16].copy_from_slice(guid);
        e[16..24].copy_from_slice(&r.file_offset.to_le_bytes());
        e[24..28].copy_from_slice(&r.length.to_le_bytes());
        e[28..32].copy_from_slice(&1u32.to_le_bytes());
    }
    set_checksum(&mut b, 4);
    b
}

/// Reads the region table (its first copy, as QEMU does).
pub async fn read_region_table(
    file: &BlockDriverState,
    regions: &mut Regions,
) -> Result<RegionTable> {
    let buf = read_bytes(file, REGION_TABLE_OFFSETS[0], HEADER_BLOCK_SIZE as usize).await?;
    parse_region_table(&buf, regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_stored_little_endian_in_their_first_fields() {
        assert_eq!(&BAT_GUID[0..4], &[0x66, 0x77, 0xc2, 0x2d]);
        assert_eq!(
            &BAT_GUID[8..],
            &[0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08]
        );
    }

    #[test]
    fn a_header_survives_serialisation_and_a_flipped_bit_voids_it() {
        let h = Header {
            sequence_number: 7,
            file_write_guid: [1; 16],
            data_write_guid: [2; 16],
            log_guid: [0; 16],
            log_version: 0,
            version: 1,
            log_length: MIB as u32,
            log_offset: MIB,
        };
        let mut b = h.serialise(&[0; HEADER_SIZE]);
        assert_eq!(Header::parse(&b), Some(h));
        b[100] ^= 1;
        assert_eq!(Header::parse(&b), None);
    }

    #[test]
    fn region_tables_refuse_overlaps_duplicates_and_unknown_required_regions() {
        let bat = Region {
            file_offset: 2 * MIB,
            length: MIB as u32,
        };
        let md = Region {
            file_offset: 3 * MIB,
            length: MIB as u32,
        };
        let t = parse_region_table(&new_region_table(bat, md), &mut Regions::default()).unwrap();
        assert_eq!((t.bat, t.metadata), (bat, md));
        let overlapping = new_region_table(bat, bat);
        assert!(parse_region_table(&overlapping, &mut Regions::default()).is_err());
        let mut unknown = new_region_table(bat, md);
        unknown[16] ^= 0xff;
        set_checksum(&mut unknown, 4);
        let e = parse_region_table(&unknown, &mut Regions::default()).unwrap_err();
        assert_eq!(e.errno(), libc::ENOTSUP);
        let mut bad_crc = new_region_table(bat, md);
        bad_crc[40] ^= 1;
        assert!(parse_region_table(&bad_crc, &mut Regions::default()).is_err());
    }
}
