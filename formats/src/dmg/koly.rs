//! The UDIF trailer ("koly" block) at the end of a dmg: where the data fork, the resource
//! fork and the XML property list lie, and the disk's sector count (dmg_find_koly_offset
//! and the trailer reads of dmg_open in QEMU's block/dmg.c).

use block::{BlockDriverState, Error, Result};

use crate::image_file::read_bytes;

/// The trailer fields dmg_open uses.
pub struct Koly {
    /// Offset of the data fork, which chunk offsets are relative to.
    pub data_fork_offset: u64,
    /// Offset of the resource fork that holds the mish blocks.
    pub rsrc_fork_offset: u64,
    /// Length of the resource fork (0: use the XML property list).
    pub rsrc_fork_length: u64,
    /// Offset of the XML property list.
    pub plist_xml_offset: u64,
    /// Length of the XML property list.
    pub plist_xml_length: u64,
    /// Size of the disk in sectors.
    pub sector_count: u64,
}

/// Bytes searched for the magic: the last 511 bytes of the second-last sector and the
/// first 4 of the last one, since an odd-sized file is seen rounded up to sectors.
const SEARCH_LEN: u64 = 515;

/// Finds the trailer's offset: the file length is a multiple of 512 while the dmg need
/// not be, so the magic is looked for rather than assumed at `length - 512`.
async fn find_koly_offset(file: &BlockDriverState) -> Result<u64> {
    let length = file.getlength();
    if length < 512 {
        return Err(Error::invalid("dmg file must be at least 512 bytes long"));
    }
    let offset = length.saturating_sub(511 + 512);
    let buf = read_bytes(file, offset, length.min(SEARCH_LEN) as usize)
        .await
        .map_err(|e| Error::with_errno_message(e.errno(), "Failed while reading UDIF trailer"))?;
    buf.windows(4)
        .position(|w| w == b"koly")
        .map(|i| offset + i as u64)
        .ok_or_else(|| Error::invalid("Could not locate UDIF trailer in dmg file"))
}

fn be64(buf: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(buf[at..at + 8].try_into().unwrap())
}

/// Reads and checks the trailer: every region it names must lie before it.
pub async fn read(file: &BlockDriverState) -> Result<Koly> {
    let offset = find_koly_offset(file).await?;
    // The trailer is 512 bytes; at the end of a short file its tail reads as zeroes.
    let avail = file.getlength().saturating_sub(offset).min(512) as usize;
    let mut t = read_bytes(file, offset, avail).await?;
    t.resize(512, 0);
    let einval = || Error::from_errno(libc::EINVAL);
    let k = Koly {
        data_fork_offset: be64(&t, 0x18),
        rsrc_fork_offset: be64(&t, 0x28),
        rsrc_fork_length: be64(&t, 0x30),
        plist_xml_offset: be64(&t, 0xd8),
        plist_xml_length: be64(&t, 0xe0),
        sector_count: be64(&t, 0x1ec),
    };
    if k.data_fork_offset > offset
        || k.rsrc_fork_offset >= offset
        || k.rsrc_fork_length > offset - k.rsrc_fork_offset
        || k.plist_xml_offset >= offset
        || k.plist_xml_length > offset - k.plist_xml_offset
        || k.sector_count > i64::MAX as u64 / 512
    {
        return Err(einval());
    }
    Ok(k)
}
