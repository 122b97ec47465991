//! What QEMU's read-only formats (dmg, cloop, bochs) share: they refuse a read-write open
//! (bdrv_apply_auto_read_only in each driver's open), work in 512-byte sectors (their
//! refresh_limits), and have no block-status callback, so every byte is data whose host
//! offset the format does not expose (the generic fallback in bdrv_co_do_block_status).
//! A format supplies its reader as a [`ReadOnlyFormat`]; [`ReadOnly`] makes it a driver.

use std::future::Future;
use std::rc::Rc;

use async_trait::async_trait;
use block::driver::{
    BlockDriver, BlockLimits, BlockStatus, DriverClass, OpenFn, RequestFlags, StatusFlags,
};
use block::{BlockDriverState, Error, IoVector, Result};

/// The sector these formats address their data in (BDRV_SECTOR_SIZE).
pub(crate) const SECTOR_SIZE: u64 = 512;

/// The part of a read-only format that differs between formats: its reads and its size.
#[async_trait(?Send)]
pub(crate) trait ReadOnlyFormat: 'static {
    /// Reads `qiov.len()` bytes at `offset`, both whole sectors, from the image in `file`.
    async fn read(&self, file: &BlockDriverState, offset: u64, qiov: &IoVector) -> Result<()>;

    /// The virtual disk's size in bytes.
    fn length(&self) -> u64;
}

/// The class of a read-only format: probed and opened, never created.
pub(crate) const fn class(
    format_name: &'static str,
    probe: fn(&[u8], &str) -> u32,
    open: OpenFn,
) -> DriverClass {
    DriverClass {
        format_name,
        protocol_name: None,
        is_format: true,
        probe: Some(probe),
        open,
        create: None,
        create_options: &[],
    }
}

/// A read-only format as a block driver.
pub(crate) struct ReadOnly<F>(F);

/// Opens a read-only format: refuses write access, then lets `read_image` parse the
/// image's metadata, giving errno-only failures QEMU's generic "Could not open 'x': ...".
pub(crate) async fn open<F, Fut>(
    bs: &BlockDriverState,
    read_image: impl FnOnce(Rc<BlockDriverState>) -> Fut,
) -> Result<Box<dyn BlockDriver>>
where
    F: ReadOnlyFormat,
    Fut: Future<Output = Result<F>>,
{
    if !bs.is_read_only() {
        return Err(read_only_error());
    }
    let file = bs.file().expect("format nodes have a file child");
    match read_image(file).await {
        Ok(format) => Ok(Box::new(ReadOnly(format))),
        // bdrv_open_driver's wrapping, which the tools then prefix once more.
        Err(e) if e.message().is_none() => Err(Error::with_errno_message(
            e.errno(),
            format!("Could not open '{}'", bs.filename()),
        )),
        Err(e) => Err(e),
    }
}

/// What bdrv_apply_auto_read_only says to a read-write open without `auto-read-only`.
fn read_only_error() -> Error {
    Error::new(libc::EACCES, "Image is read-only")
}

#[async_trait(?Send)]
impl<F: ReadOnlyFormat> BlockDriver for ReadOnly<F> {
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        let file = bs.file().expect("format nodes have a file child");
        self.0.read(&file, offset, qiov).await
    }

    /// Unreachable through an open that refused write access, but a driver still answers.
    async fn co_pwritev(
        &self,
        _bs: &BlockDriverState,
        _offset: u64,
        _qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        Err(read_only_error())
    }

    async fn co_block_status(
        &self,
        _bs: &BlockDriverState,
        _want_zero: bool,
        _offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        Ok(BlockStatus::new(StatusFlags::DATA, bytes))
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        Ok(self.0.length())
    }

    /// Requests in whole sectors, as the formats read them.
    fn refresh_limits(&self, bs: &BlockDriverState) -> BlockLimits {
        let f = bs.file().map(|f| f.limits()).unwrap_or_default();
        BlockLimits {
            request_alignment: f.request_alignment.max(SECTOR_SIZE as u32),
            ..f
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
