//! What every format does with its image file: reads and writes of metadata through the
//! `file` child, and creating that file before the first header is written (the
//! bdrv_pread/bdrv_pwrite and blk_co_create_file + blk_new_open steps at the start of each
//! QEMU driver's co_create).

use std::rc::Rc;

use block::driver::DriverClass;
use block::{BlockDriverState, Error, IoVector, OpenFlags, Options, RequestFlags, Result};

/// Reads `len` bytes of a node into a vector (metadata reads).
pub(crate) async fn read_bytes(
    file: &BlockDriverState,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let buf = IoVector::alloc(len);
    file.co_preadv(offset, &buf, RequestFlags::empty()).await?;
    Ok(buf.to_vec())
}

/// Writes bytes to a node (metadata writes).
pub(crate) async fn write_bytes(file: &BlockDriverState, offset: u64, data: &[u8]) -> Result<()> {
    file.co_pwritev(offset, &IoVector::from_slice(data), RequestFlags::empty())
        .await
}

/// Reads a backing file range; what lies past its end reads as zeroes (the backing
/// reads of formats whose backing file may be shorter than the image).
pub(crate) async fn read_backing(
    backing: &BlockDriverState,
    offset: u64,
    buf: &IoVector,
) -> Result<()> {
    let n = backing
        .getlength()
        .saturating_sub(offset)
        .min(buf.len() as u64) as usize;
    if n > 0 {
        backing
            .co_preadv(offset, &buf.slice(0, n), RequestFlags::empty())
            .await?;
    }
    buf.fill(n, buf.len() - n, 0);
    Ok(())
}

/// Flushes and closes the file a new image was written into, keeping the first error
/// (the end of each driver's co_create).
pub(crate) async fn finish_create(file: &BlockDriverState, written: Result<()>) -> Result<()> {
    let flushed = file.co_flush().await;
    let closed = file.close().await;
    written.and(flushed).and(closed)
}

/// Creates an empty file with the protocol its name selects, and names that protocol.
pub(crate) async fn create_protocol_file(
    name: &str,
    file_opts: &Options,
) -> Result<&'static DriverClass> {
    let class = block::registry::find_protocol(name)?;
    let file_create = class
        .create
        .ok_or_else(|| Error::not_supported("The protocol cannot create images"))?;
    file_create(name, &mut file_opts.clone()).await?;
    Ok(class)
}

/// Creates the empty file a new image is written into, passing on the protocol's own
/// creation options (`nocow`, `extent_size_hint`, `preallocation`, which a size-0 file
/// ignores but whose values it still checks), and opens it for writing.
pub(crate) async fn create_image_file(
    filename: &str,
    options: &mut Options,
) -> Result<Rc<BlockDriverState>> {
    let mut file_opts = Options::new();
    file_opts.set("size", "0");
    for key in ["nocow", "extent_size_hint", "preallocation"] {
        if let Some(v) = options.take(key) {
            file_opts.set(key, v);
        }
    }
    let class = create_protocol_file(filename, &file_opts).await?;
    let mut open_opts = Options::new();
    open_opts.set("driver", class.format_name);
    open_opts.set("filename", filename);
    block::bdrv_open(None, open_opts, OpenFlags::default()).await
}

/// Reads `len` bytes at `offset`; what lies beyond the end of the file reads as zeroes
/// and is never allocated for, however large `len` claims to be.
pub(crate) async fn read_in_file(
    file: &BlockDriverState,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>> {
    let n = len.min(file.getlength().saturating_sub(offset));
    let buf = IoVector::alloc(n as usize);
    if n > 0 {
        file.co_preadv(offset, &buf, RequestFlags::empty()).await?;
    }
    Ok(buf.to_vec())
}

/// A random UUID (version 4), as uuid_generate makes for a new image's identity.
pub(crate) fn random_uuid() -> [u8; 16] {
    let mut u: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}
