//! virtio-blk requests: turning a validated descriptor chain into a typed [`Request`].
//!
//! The parsing half of QEMU's hw/block/virtio-blk.c (virtio_blk_handle_request,
//! virtio_blk_sect_range_ok), kept apart from execution as Firecracker's request.rs does. A
//! request is a chain of: a device-readable header {type u32, ioprio u32, sector u64}, data,
//! and a device-writable status byte at the very end. What can go wrong comes in two kinds:
//!
//! * the chain cannot be a request at all (no header, no status byte): a [`RequestError`],
//!   which marks the device broken, as QEMU's virtio_error does;
//! * the request is well-formed but cannot be served (unknown type, sectors past the end):
//!   a [`RequestKind::Status`] that completes at once with UNSUPP or IOERR.
//!
//! Data buffers become an [`IoVector`] pointing straight into guest RAM (no copy); the
//! vector keeps the guest memory mapping alive for as long as the I/O needs it.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use block::IoVector;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::queue::{host_pieces, Buffer, DescriptorChain, QueueError};

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write (also a flag bit of DISCARD and WRITE_ZEROES).
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush the write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: read the device serial (20 bytes).
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request type: discard sectors.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Request type: write zeroes to sectors.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
/// Legacy barrier flag, ignored.
pub const VIRTIO_BLK_T_BARRIER: u32 = 0x8000_0000;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: unsupported request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Write-zeroes flag: the range may be deallocated.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;
/// Length of the GET_ID answer.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// virtio-blk sectors are always 512 bytes, whatever the logical block size.
pub const SECTOR_SHIFT: u32 = 9;
/// Largest request in sectors (QEMU's BDRV_REQUEST_MAX_SECTORS).
pub const MAX_REQUEST_SECTORS: u64 = (i32::MAX as u64) >> SECTOR_SHIFT;

const OUTHDR_LEN: usize = 16;
const DWZ_LEN: usize = 16;

/// A chain that cannot be a virtio-blk request; the device reports it with virtio_error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// No readable or no writable buffer (no header or no status byte).
    MissingHeaders,
    /// The readable part is shorter than the request header.
    OutHeaderTooShort,
    /// The discard/write-zeroes segment is shorter than its 16 bytes.
    DwzHeaderTooShort,
    /// Guest memory could not be mapped.
    Queue(QueueError),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::MissingHeaders => write!(f, "virtio-blk missing headers"),
            RequestError::OutHeaderTooShort => write!(f, "virtio-blk request outhdr too short"),
            RequestError::DwzHeaderTooShort => {
                write!(f, "virtio-blk discard/write_zeroes header too short")
            }
            RequestError::Queue(e) => e.fmt(f),
        }
    }
}

impl From<QueueError> for RequestError {
    fn from(e: QueueError) -> Self {
        RequestError::Queue(e)
    }
}

/// What the device offers, which decides how requests are judged.
#[derive(Clone, Debug)]
pub struct DiskLimits {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Logical block size; request sizes and sectors must be multiples of it.
    pub logical_block_size: u32,
    /// DISCARD offered.
    pub discard: bool,
    /// WRITE_ZEROES offered.
    pub write_zeroes: bool,
    /// Largest discard in sectors.
    pub max_discard_sectors: u32,
    /// Largest write-zeroes in sectors.
    pub max_write_zeroes_sectors: u32,
    /// The serial number GET_ID returns.
    pub serial: String,
}

/// The operation a request asks for.
#[derive(Debug)]
pub enum RequestKind {
    /// Read `data.len()` bytes at byte `offset` into guest memory.
    Read {
        /// Byte offset on the disk.
        offset: u64,
        /// Guest buffers.
        data: IoVector,
    },
    /// Write guest memory at byte `offset`.
    Write {
        /// Byte offset on the disk.
        offset: u64,
        /// Guest buffers.
        data: IoVector,
    },
    /// Flush the disk's write cache.
    Flush,
    /// Write the serial into `data`.
    GetId {
        /// Guest buffers (before the status byte).
        data: IoVector,
    },
    /// Discard a byte range.
    Discard {
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        bytes: u64,
    },
    /// Write zeroes over a byte range, deallocating it if `unmap`.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        bytes: u64,
        /// Whether the range may be deallocated.
        unmap: bool,
    },
    /// Complete at once with this status (UNSUPP or IOERR), without I/O.
    Status(u8),
}

/// A parsed virtio-blk request.
#[derive(Debug)]
pub struct Request {
    /// The chain head, for the used ring.
    pub head: u16,
    /// What to do.
    pub kind: RequestKind,
    /// The status byte, in guest RAM (the last byte of the chain). The pointer stays valid
    /// while the guest memory lives, which the device holds.
    pub status: NonNull<u8>,
    /// Bytes reported written in the used element: every writable byte (as QEMU does).
    pub used_len: u32,
}

impl Request {
    /// Parses and validates a chain popped from a queue over `mem`. The chain's buffers
    /// were checked against guest RAM and mapped by the queue; here the request layout and
    /// values are checked.
    ///
    /// # Panics
    /// If the chain was not popped from `mem` (its host addresses belong to that memory).
    pub fn parse(
        chain: &DescriptorChain,
        mem: &Arc<GuestMemoryMmap>,
        limits: &DiskLimits,
    ) -> Result<Request, RequestError> {
        assert!(
            chain.popped_from(mem),
            "a chain parsed against another memory"
        );
        let (readable, writable) = (chain.readable(), chain.writable());
        let last = *writable.last().ok_or(RequestError::MissingHeaders)?;
        if readable.is_empty() {
            return Err(RequestError::MissingHeaders);
        }
        let hdr =
            read_array::<OUTHDR_LEN>(mem, readable, 0)?.ok_or(RequestError::OutHeaderTooShort)?;
        let req_type = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
        let in_len: u64 = writable.iter().map(|b| u64::from(b.len)).sum();
        let out_len: u64 = readable.iter().map(|b| u64::from(b.len)).sum();
        let parts = Parts {
            mem,
            readable,
            writable,
            in_data: in_len - 1,
            out_data: out_len - OUTHDR_LEN as u64,
        };
        let kind = parts.kind(req_type, sector, limits)?;
        Ok(Request {
            head: chain.head,
            kind,
            status: last_byte(mem, &last)?,
            used_len: u32::try_from(in_len).unwrap_or(u32::MAX),
        })
    }
}

/// The pieces of a chain a request is built from.
struct Parts<'a> {
    mem: &'a Arc<GuestMemoryMmap>,
    readable: &'a [Buffer],
    writable: &'a [Buffer],
    /// Writable bytes before the status byte.
    in_data: u64,
    /// Readable bytes after the header.
    out_data: u64,
}

impl Parts<'_> {
    /// Dispatches on the type as QEMU does: OUT and BARRIER are flag bits of the type.
    fn kind(&self, t: u32, sector: u64, limits: &DiskLimits) -> Result<RequestKind, RequestError> {
        let is_out = t & VIRTIO_BLK_T_OUT != 0;
        Ok(match t & !(VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_BARRIER) {
            VIRTIO_BLK_T_IN if is_out => self.rw(sector, limits, true)?,
            VIRTIO_BLK_T_IN => self.rw(sector, limits, false)?,
            VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
            VIRTIO_BLK_T_GET_ID => RequestKind::GetId {
                data: guest_iovec(self.mem, self.writable, 0, self.in_data)?,
            },
            x if x == VIRTIO_BLK_T_DISCARD & !VIRTIO_BLK_T_OUT
                || x == VIRTIO_BLK_T_WRITE_ZEROES & !VIRTIO_BLK_T_OUT =>
            {
                let wz = t & !VIRTIO_BLK_T_BARRIER == VIRTIO_BLK_T_WRITE_ZEROES;
                self.discard_write_zeroes(wz, is_out, limits)?
            }
            _ => RequestKind::Status(VIRTIO_BLK_S_UNSUPP),
        })
    }

    fn rw(
        &self,
        sector: u64,
        limits: &DiskLimits,
        write: bool,
    ) -> Result<RequestKind, RequestError> {
        let len = if write { self.out_data } else { self.in_data };
        if !sector_range_ok(limits, sector, len) {
            return Ok(RequestKind::Status(VIRTIO_BLK_S_IOERR));
        }
        let offset = sector << SECTOR_SHIFT;
        Ok(if write {
            let data = guest_iovec(self.mem, self.readable, OUTHDR_LEN as u64, len)?;
            RequestKind::Write { offset, data }
        } else {
            let data = guest_iovec(self.mem, self.writable, 0, len)?;
            RequestKind::Read { offset, data }
        })
    }

    fn discard_write_zeroes(
        &self,
        wz: bool,
        is_out: bool,
        limits: &DiskLimits,
    ) -> Result<RequestKind, RequestError> {
        let offered = if wz {
            limits.write_zeroes
        } else {
            limits.discard
        };
        // One segment only; the type must carry the OUT bit.
        if !offered || !is_out || self.out_data > DWZ_LEN as u64 {
            return Ok(RequestKind::Status(VIRTIO_BLK_S_UNSUPP));
        }
        let seg = read_array::<DWZ_LEN>(self.mem, self.readable, OUTHDR_LEN as u64)?
            .ok_or(RequestError::DwzHeaderTooShort)?;
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap());
        let num_sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap());
        let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap());
        let max = if wz {
            limits.max_write_zeroes_sectors
        } else {
            limits.max_discard_sectors
        };
        let bytes = u64::from(num_sectors) << SECTOR_SHIFT;
        if num_sectors > max || !sector_range_ok(limits, sector, bytes) {
            return Ok(RequestKind::Status(VIRTIO_BLK_S_IOERR));
        }
        let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        // Unknown flags, and UNMAP on a discard, are unsupported (virtio spec 5.2.6.2).
        if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 || (!wz && unmap) {
            return Ok(RequestKind::Status(VIRTIO_BLK_S_UNSUPP));
        }
        let offset = sector << SECTOR_SHIFT;
        Ok(if wz {
            RequestKind::WriteZeroes {
                offset,
                bytes,
                unmap,
            }
        } else {
            RequestKind::Discard { offset, bytes }
        })
    }
}

/// Whether `bytes` at `sector` is a valid transfer (virtio_blk_sect_range_ok): a multiple of
/// the logical block size, aligned, not too large, inside the disk.
pub fn sector_range_ok(limits: &DiskLimits, sector: u64, bytes: u64) -> bool {
    let nb_sectors = bytes >> SECTOR_SHIFT;
    let sector_mask = u64::from(limits.logical_block_size / 512).saturating_sub(1);
    nb_sectors <= MAX_REQUEST_SECTORS
        && sector & sector_mask == 0
        && bytes.is_multiple_of(u64::from(limits.logical_block_size.max(1)))
        && sector <= limits.capacity
        && nb_sectors <= limits.capacity - sector
}

/// The `N` bytes at logical `offset` of `buffers`, or `None` if the buffers end first.
fn read_array<const N: usize>(
    mem: &GuestMemoryMmap,
    buffers: &[Buffer],
    offset: u64,
) -> Result<Option<[u8; N]>, RequestError> {
    // Usual case: the bytes sit in the first buffer, mapped at pop time: one load.
    if let Some((b, Some(host))) = buffers.first().map(|b| (b, b.host())) {
        if offset + N as u64 <= u64::from(b.len) {
            // SAFETY: `host` maps the whole buffer and `offset + N` lies inside it; an array
            // of bytes needs no alignment; volatile, as the guest may write concurrently.
            let at = unsafe { host.as_ptr().add(offset as usize) };
            return Ok(Some(unsafe {
                std::ptr::read_volatile(at as *const [u8; N])
            }));
        }
    }
    let mut out = [0u8; N];
    let mut done = 0;
    for (b, at, len) in ranges(buffers, offset, N as u64) {
        buffer_pieces(mem, b, at, len, |ptr, n| {
            for (i, byte) in out[done..done + n].iter_mut().enumerate() {
                // SAFETY: `buffer_pieces` hands out pointers into mapped guest RAM with `n`
                // bytes after them; volatile, as the guest may write concurrently.
                *byte = unsafe { std::ptr::read_volatile(ptr.add(i)) };
            }
            done += n;
        })?;
    }
    Ok((done == N).then_some(out))
}

/// The (buffer, offset in it, length) pieces of `buffers` covering logical
/// `offset..offset+len`.
fn ranges(
    buffers: &[Buffer],
    mut offset: u64,
    mut len: u64,
) -> impl Iterator<Item = (&Buffer, u64, u64)> + '_ {
    buffers.iter().filter_map(move |b| {
        let blen = u64::from(b.len);
        if len == 0 {
            return None;
        }
        if offset >= blen {
            offset -= blen;
            return None;
        }
        let n = (blen - offset).min(len);
        let piece = (b, offset, n);
        offset = 0;
        len -= n;
        Some(piece)
    })
}

/// Calls `f` with the host (pointer, length) pieces of bytes `at..at+len` of buffer `b`
/// (`at + len <= b.len`): one piece through the pointer found at pop time, or a walk over
/// the memory regions of a buffer that spans two.
fn buffer_pieces(
    mem: &GuestMemoryMmap,
    b: &Buffer,
    at: u64,
    len: u64,
    mut f: impl FnMut(*mut u8, usize),
) -> Result<(), QueueError> {
    debug_assert!(at + len <= u64::from(b.len));
    match b.host() {
        Some(host) => {
            // SAFETY: `host` maps the whole buffer, `b.len` bytes, and `at + len <= b.len`.
            f(unsafe { host.as_ptr().add(at as usize) }, len as usize);
            Ok(())
        }
        None => host_pieces(mem, GuestAddress(b.addr.0 + at), len as usize, f),
    }
}

/// The host address of the last byte of `b`, where a request's status goes.
fn last_byte(mem: &GuestMemoryMmap, b: &Buffer) -> Result<NonNull<u8>, QueueError> {
    let mut last = None;
    buffer_pieces(mem, b, u64::from(b.len) - 1, 1, |ptr, _| {
        last = NonNull::new(ptr)
    })?;
    last.ok_or(QueueError::BufferOutsideMemory {
        addr: b.addr.0,
        len: b.len,
    })
}

/// An IoVector over logical `offset..offset+len` of `buffers`, pointing into guest RAM. The
/// vector holds a reference to the guest memory so the mapping outlives the I/O.
fn guest_iovec(
    mem: &Arc<GuestMemoryMmap>,
    buffers: &[Buffer],
    offset: u64,
    len: u64,
) -> Result<IoVector, RequestError> {
    let mut qiov = IoVector::with_owner(mem.clone());
    for (b, at, n) in ranges(buffers, offset, len) {
        buffer_pieces(mem, b, at, n, |ptr, plen| {
            // SAFETY: `buffer_pieces` hands out pointers into mapped guest memory regions with
            // `plen` bytes after them; the vector's owner, the guest memory, keeps the mapping
            // alive as long as the vector. The guest may change the bytes concurrently, as
            // with any DMA.
            unsafe { qiov.push_raw_parts(ptr, plen) }
        })?;
    }
    Ok(qiov)
}
