//! The cloop format driver, read-only: compressed loopback images of Linux live CDs
//! (QEMU's block/cloop.c).
//!
//! After a 128-byte shell-script preamble come the block size and block count (both
//! big-endian 32-bit), then one big-endian 64-bit file offset per block plus one for the
//! end; block `i` is the zlib stream between offsets `i` and `i + 1` and decodes to
//! exactly one block. A read decodes each block it touches into a one-block cache.

use std::cell::RefCell;
use std::rc::Rc;

use async_trait::async_trait;
use block::coroutine::CoMutex;
use block::driver::DriverClass;
use block::{BlockDriverState, Error, IoVector, Result};

use crate::image_file::read_bytes;
use crate::read_only::{self, ReadOnlyFormat};

/// The class registered as `cloop`.
pub static CLOOP: DriverClass = read_only::class("cloop", probe, |bs, _options| {
    Box::pin(read_only::open(bs, read_image))
});

/// The preamble of a version 2.0 image, which is all that identifies one.
const MAGIC_V2_0: &[u8] =
    b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";
/// Where the block size and count follow the preamble.
const HEADER_OFFSET: u64 = 128;
/// Largest block QEMU decodes (MAX_BLOCK_SIZE).
const MAX_BLOCK_SIZE: u32 = 64 * 1024 * 1024;
/// Largest offsets table QEMU reads.
const MAX_OFFSETS_SIZE: u64 = 512 * 1024 * 1024;

/// A weak score for the preamble: other shell scripts could start alike (cloop_probe).
fn probe(buf: &[u8], _filename: &str) -> u32 {
    if buf.starts_with(MAGIC_V2_0) {
        2
    } else {
        0
    }
}

/// An open cloop image.
pub struct Cloop {
    block_size: u32,
    n_blocks: u32,
    /// The file offsets that lie inside the file: block `i` lies between entries `i` and
    /// `i + 1` of n_blocks + 1, and entries past the end of the file read as 0.
    offsets: Vec<u64>,
    /// The block last decoded, and its bytes.
    cache: RefCell<Option<(usize, Vec<u8>)>>,
    lock: CoMutex<()>,
}

/// Checks the block size and count and reads the offsets, with QEMU's messages.
async fn read_image(file: Rc<BlockDriverState>) -> Result<Cloop> {
    let h = read_bytes(&file, HEADER_OFFSET, 8).await?;
    let block_size = u32::from_be_bytes(h[0..4].try_into().unwrap());
    if block_size % 512 != 0 {
        return Err(Error::invalid(format!(
            "block_size {block_size} must be a multiple of 512"
        )));
    }
    if block_size == 0 {
        return Err(Error::invalid("block_size cannot be zero"));
    }
    if block_size > MAX_BLOCK_SIZE {
        return Err(Error::invalid(format!(
            "block_size {block_size} must be {} MB or less",
            MAX_BLOCK_SIZE / (1024 * 1024)
        )));
    }
    let n_blocks = u32::from_be_bytes(h[4..8].try_into().unwrap());
    let max_blocks = (u32::MAX - 1) / 8;
    if n_blocks > max_blocks {
        return Err(Error::invalid(format!(
            "n_blocks {n_blocks} must be {max_blocks} or less"
        )));
    }
    let offsets_size = (n_blocks as u64 + 1) * 8;
    if offsets_size > MAX_OFFSETS_SIZE {
        return Err(Error::invalid(
            "image requires too many offsets, try increasing block size",
        ));
    }
    // Only the part of the table inside the file is read (and allocated for); the rest
    // reads as zeroes, as it does from QEMU's file driver.
    let table_at = HEADER_OFFSET + 8;
    let in_file = file.getlength().saturating_sub(table_at).min(offsets_size) / 8;
    let raw = read_bytes(&file, table_at, (in_file * 8) as usize).await?;
    let offsets: Vec<u64> = raw
        .chunks_exact(8)
        .map(|e| u64::from_be_bytes(e.try_into().unwrap()))
        .collect();
    let missing_zero = (in_file * 8 < offsets_size).then_some(0);
    let entries = offsets.iter().copied().chain(missing_zero);
    for (i, (prev, next)) in entries.clone().zip(entries.skip(1)).enumerate() {
        let index = i + 1;
        if next < prev {
            return Err(Error::invalid(format!(
                "offsets not monotonically increasing at index {index}, image file is corrupt"
            )));
        }
        if next - prev > 2 * MAX_BLOCK_SIZE as u64 {
            return Err(Error::invalid(format!(
                "invalid compressed block size at index {index}, image file is corrupt"
            )));
        }
    }
    Ok(Cloop {
        block_size,
        n_blocks,
        offsets,
        cache: RefCell::new(None),
        lock: CoMutex::new(()),
    })
}

impl Cloop {
    /// Inflates one block; a stream that fails or is not exactly a block long is an I/O
    /// error (cloop_read_block).
    async fn read_block(&self, file: &BlockDriverState, block: usize) -> Result<Vec<u8>> {
        let entry = |i: usize| self.offsets.get(i).copied().unwrap_or(0);
        let (start, end) = (entry(block), entry(block + 1));
        let eio = || Error::from_errno(libc::EIO);
        // The open check bounded the length by 128 MiB; the file bounds what is read.
        let in_file = file.getlength().min(end).saturating_sub(start);
        let compressed = read_bytes(file, start, in_file as usize).await?;
        let mut out = vec![0u8; self.block_size as usize];
        let mut z = flate2::Decompress::new(true);
        match z.decompress(&compressed, &mut out, flate2::FlushDecompress::Finish) {
            Ok(flate2::Status::StreamEnd) if z.total_out() == out.len() as u64 => Ok(out),
            _ => Err(eio()),
        }
    }
}

#[async_trait(?Send)]
impl ReadOnlyFormat for Cloop {
    async fn read(&self, file: &BlockDriverState, offset: u64, qiov: &IoVector) -> Result<()> {
        let _guard = self.lock.lock().await;
        let bsize = self.block_size as u64;
        let mut done = 0u64;
        let len = qiov.len() as u64;
        while done < len {
            let pos = offset + done;
            let block = (pos / bsize) as usize;
            let in_block = pos % bsize;
            let n = (bsize - in_block).min(len - done);
            if self.cache.borrow().as_ref().is_none_or(|c| c.0 != block) {
                *self.cache.borrow_mut() = None;
                let data = self.read_block(file, block).await?;
                *self.cache.borrow_mut() = Some((block, data));
            }
            let cache = self.cache.borrow();
            let data = &cache.as_ref().unwrap().1;
            qiov.copy_from_slice(
                done as usize,
                &data[in_block as usize..(in_block + n) as usize],
            );
            done += n;
        }
        Ok(())
    }

    fn length(&self) -> u64 {
        self.n_blocks as u64 * self.block_size as u64
    }
}
