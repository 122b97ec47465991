//! The dmg format driver, read-only: Apple disk images (UDIF) as QEMU's block/dmg.c reads
//! them.
//!
//! A dmg ends with a 512-byte [`koly`] trailer that points at the [`chunks`] table: runs
//! of disk sectors stored as zeroes, raw bytes, or zlib/bzip2 blobs that only decode
//! whole. A read finds the chunk of each sector, decodes it into a one-chunk cache (a
//! sequential reader decodes each chunk once), and copies sectors out of it.

pub mod chunks;
pub mod koly;

use std::cell::RefCell;
use std::rc::Rc;

use async_trait::async_trait;
use block::coroutine::CoMutex;
use block::driver::DriverClass;
use block::{BlockDriverState, Error, IoVector, Result};

use crate::read_only::{self, ReadOnlyFormat, SECTOR_SIZE};
use chunks::{Chunk, ChunkType};

/// The class registered as `dmg`.
pub static DMG: DriverClass = read_only::class("dmg", probe, |bs, _options| {
    Box::pin(read_only::open(bs, read_image))
});

/// A dmg has no magic at its start: QEMU goes by the `.dmg` extension, weakly.
fn probe(_buf: &[u8], filename: &str) -> u32 {
    if filename.len() > 4 && filename.ends_with(".dmg") {
        2
    } else {
        0
    }
}

/// The chunk last decoded.
struct Cached {
    index: usize,
    data: Vec<u8>,
}

/// An open dmg image.
pub struct Dmg {
    chunks: Vec<Chunk>,
    sector_count: u64,
    /// One decoded chunk; the lock keeps one request's decode from replacing it under
    /// another's copy (QEMU's s->lock).
    cache: RefCell<Option<Cached>>,
    lock: CoMutex<()>,
}

/// Reads the trailer and the chunk table.
async fn read_image(file: Rc<BlockDriverState>) -> Result<Dmg> {
    let k = koly::read(&file).await?;
    Ok(Dmg {
        chunks: chunks::read_table(&file, &k).await?,
        sector_count: k.sector_count,
        cache: RefCell::new(None),
        lock: CoMutex::new(()),
    })
}

impl Dmg {
    fn contains(&self, index: usize, sector: u64) -> bool {
        self.chunks
            .get(index)
            .is_some_and(|c| sector >= c.sector && sector - c.sector < c.sector_count)
    }

    /// The chunk of a sector: the cached one if it holds it, else a binary search over
    /// the table in file order, as QEMU's search_chunk (which assumes sorted chunks).
    fn chunk_of(&self, sector: u64) -> Option<usize> {
        if let Some(c) = self.cache.borrow().as_ref() {
            if self.contains(c.index, sector) {
                return Some(c.index);
            }
        }
        let (mut lo, mut hi) = (0usize, self.chunks.len());
        while lo <= hi {
            let mid = (lo + hi) / 2;
            let c = self.chunks.get(mid)?;
            if c.sector > sector {
                hi = mid.checked_sub(1)?;
            } else if sector - c.sector < c.sector_count {
                return Some(mid);
            } else {
                lo = mid + 1;
            }
        }
        None
    }

    /// Reads a chunk's stored bytes; the part past the end of the file reads as zeroes,
    /// as it does from QEMU's file driver, without being allocated for.
    async fn stored_bytes(&self, file: &BlockDriverState, c: &Chunk) -> Result<Vec<u8>> {
        let in_file = file.getlength().saturating_sub(c.offset).min(c.length) as usize;
        let mut buf = if in_file > 0 {
            crate::image_file::read_bytes(file, c.offset, in_file).await?
        } else {
            Vec::new()
        };
        if c.kind == ChunkType::Raw {
            buf.resize(c.length as usize, 0);
        }
        Ok(buf)
    }

    /// Decodes a chunk into its sectors (dmg_read_chunk); any failure is an I/O error.
    async fn decode(&self, file: &BlockDriverState, index: usize) -> Result<Vec<u8>> {
        let c = &self.chunks[index];
        // Bounded by SECTORCOUNTS_MAX, checked when the table was read.
        let out_len = (c.sector_count * SECTOR_SIZE) as usize;
        let stored = self.stored_bytes(file, c).await?;
        let mut out = vec![0u8; out_len];
        let ok = match c.kind {
            ChunkType::Zlib => {
                let mut z = flate2::Decompress::new(true);
                let r = z.decompress(&stored, &mut out, flate2::FlushDecompress::Finish);
                matches!(r, Ok(flate2::Status::StreamEnd)) && z.total_out() == out_len as u64
            }
            ChunkType::Bzip2 => {
                let mut bz = bzip2::Decompress::new(false);
                let r = bz.decompress(&stored, &mut out);
                matches!(r, Ok(bzip2::Status::StreamEnd)) && bz.total_out() == out_len as u64
            }
            ChunkType::Raw => {
                let n = stored.len().min(out_len);
                out[..n].copy_from_slice(&stored[..n]);
                true
            }
            ChunkType::Zero | ChunkType::Ignore => true,
        };
        if ok {
            Ok(out)
        } else {
            Err(Error::from_errno(libc::EIO))
        }
    }
}

#[async_trait(?Send)]
impl ReadOnlyFormat for Dmg {
    async fn read(&self, file: &BlockDriverState, offset: u64, qiov: &IoVector) -> Result<()> {
        let _guard = self.lock.lock().await;
        let first = offset / SECTOR_SIZE;
        let count = qiov.len() as u64 / SECTOR_SIZE;
        let mut i = 0;
        while i < count {
            let sector = first + i;
            let index = self
                .chunk_of(sector)
                .ok_or_else(|| Error::from_errno(libc::EIO))?;
            let c = &self.chunks[index];
            let run = (c.sector_count - (sector - c.sector)).min(count - i);
            let at = (i * SECTOR_SIZE) as usize;
            let len = (run * SECTOR_SIZE) as usize;
            if matches!(c.kind, ChunkType::Zero | ChunkType::Ignore) {
                // Never decoded: such a chunk may be far larger than any buffer.
                qiov.fill(at, len, 0);
            } else {
                if self
                    .cache
                    .borrow()
                    .as_ref()
                    .is_none_or(|x| x.index != index)
                {
                    *self.cache.borrow_mut() = None;
                    let data = self.decode(file, index).await?;
                    *self.cache.borrow_mut() = Some(Cached { index, data });
                }
                let cache = self.cache.borrow();
                let data = &cache.as_ref().unwrap().data;
                let from = ((sector - c.sector) * SECTOR_SIZE) as usize;
                qiov.copy_from_slice(at, &data[from..from + len]);
            }
            i += run;
        }
        Ok(())
    }

    fn length(&self) -> u64 {
        self.sector_count * SECTOR_SIZE
    }
}
