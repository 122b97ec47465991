//! The `raw` format: the virtual disk is the file's bytes, optionally a window of them
//! (QEMU's block/raw-format.c).
//!
//! `offset` and `size` options expose only part of the file, which is how a partition or an
//! embedded image is presented as a disk. Every probe scores raw at 1, the lowest non-zero
//! score, so it is chosen only when no real format recognises the image.

use std::cell::Cell;

use async_trait::async_trait;
use block::driver::{
    BlockDriver, BlockLimits, BlockStatus, CreateOption, DriverClass, DriverInfo, PreallocMode,
    RequestFlags,
};
use block::{BlockDriverState, Error, IoVector, OpenFlags, Options, Result};

/// The class registered as `raw`.
pub static RAW: DriverClass = DriverClass {
    format_name: "raw",
    protocol_name: None,
    is_format: true,
    probe: Some(|_buf, _filename| 1),
    open: |bs, options| Box::pin(open(bs, options)),
    create: Some(|filename, options| Box::pin(create(filename, options))),
    create_options: &[CreateOption {
        name: "size",
        kind: "size",
        help: "Virtual disk size",
        default: None,
    }],
};

/// An open raw node: a window `[offset, offset + size)` of the file child.
pub struct RawDriver {
    offset: Cell<u64>,
    size: Cell<Option<u64>>,
}

async fn open(bs: &BlockDriverState, options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let (offset, size) = take_window(bs, options)?;
    Ok(Box::new(RawDriver {
        offset: Cell::new(offset),
        size: Cell::new(size),
    }))
}

/// The `offset` and `size` options, checked against the file's length (raw_apply_options).
fn take_window(bs: &BlockDriverState, options: &mut Options) -> Result<(u64, Option<u64>)> {
    let offset = options.take_size("offset")?.unwrap_or(0);
    let size = options.take_size("size")?;
    let file = bs.file().expect("format nodes have a file child");
    let file_len = file.getlength();
    if offset > file_len {
        return Err(Error::invalid(format!(
            "The sum of offset ({offset}) and size (0) has to be smaller or equal to the  actual size of the containing file ({file_len})"
        )));
    }
    if let Some(size) = size {
        if offset.checked_add(size).is_none_or(|end| end > file_len) {
            return Err(Error::invalid(format!(
                "The sum of offset ({offset}) and size ({size}) has to be smaller or equal to the  actual size of the containing file ({file_len})"
            )));
        }
        if size % 512 != 0 {
            return Err(Error::invalid("Specified size is not multiple of 512"));
        }
    }
    Ok((offset, size))
}

/// A raw image is the protocol's bytes: the protocol the name selects creates it
/// (raw_co_create_opts -> bdrv_co_create_file).
async fn create(filename: &str, options: &mut Options) -> Result<()> {
    let class = block::registry::find_protocol(filename)?;
    let create = class.create.ok_or_else(|| {
        Error::not_supported(format!(
            "Protocol driver '{}' does not support image creation",
            class.format_name
        ))
    })?;
    create(filename, options).await
}

/// How much of the start of an image probing looks at (and a probed raw image guards).
const PROBE_GUARD_BYTES: u64 = 512;

/// A probed raw image must stay raw: refuse a write to its first sector that would make the
/// next probe pick another format, which could let a guest turn its disk into, say, a qcow2
/// header pointing at host files (raw_co_pwritev's probing guard).
async fn check_probe_guard(bs: &BlockDriverState, offset: u64, qiov: &IoVector) -> Result<()> {
    let first = IoVector::alloc(PROBE_GUARD_BYTES as usize);
    bs.file()
        .expect("format nodes have a file child")
        .co_preadv(0, &first, RequestFlags::empty())
        .await?;
    let n = (PROBE_GUARD_BYTES - offset).min(qiov.len() as u64) as usize;
    first.copy_from(offset as usize, qiov, 0, n);
    let probed = block::registry::probe_format(&first.to_vec(), &bs.filename());
    if probed.is_some_and(|c| c.format_name != "raw") {
        return Err(Error::from_errno(libc::EPERM));
    }
    Ok(())
}

impl RawDriver {
    /// Checks a request against the window and moves it into file coordinates. A write past
    /// the window finds no space there (ENOSPC, as a full disk would say); a read past it is
    /// an invalid request (raw_adjust_offset).
    fn map(&self, offset: u64, bytes: u64, is_write: bool) -> Result<u64> {
        if let Some(size) = self.size.get() {
            if offset.checked_add(bytes).is_none_or(|end| end > size) {
                let errno = if is_write { libc::ENOSPC } else { libc::EINVAL };
                return Err(Error::from_errno(errno));
            }
        }
        Ok(offset + self.offset.get())
    }

    fn file(bs: &BlockDriverState) -> std::rc::Rc<BlockDriverState> {
        bs.file().expect("format nodes have a file child")
    }
}

#[async_trait(?Send)]
impl BlockDriver for RawDriver {
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        let at = self.map(offset, qiov.len() as u64, false)?;
        let file = Self::file(bs);
        file.debug_event(block::BlkdbgEvent::ReadAio).await;
        file.co_preadv(at, qiov, flags).await
    }

    async fn co_pwritev(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        let at = self.map(offset, qiov.len() as u64, true)?;
        if bs.was_probed() && offset < PROBE_GUARD_BYTES {
            check_probe_guard(bs, offset, qiov).await?;
        }
        let file = Self::file(bs);
        file.debug_event(block::BlkdbgEvent::WriteAio).await;
        file.co_pwritev(at, qiov, flags).await
    }

    async fn co_pwrite_zeroes(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        let at = self.map(offset, bytes, true)?;
        Self::file(bs).co_pwrite_zeroes(at, bytes, flags).await
    }

    async fn co_pdiscard(&self, bs: &BlockDriverState, offset: u64, bytes: u64) -> Result<()> {
        let at = self.map(offset, bytes, true)?;
        Self::file(bs).co_pdiscard(at, bytes).await
    }

    async fn co_block_status(
        &self,
        bs: &BlockDriverState,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        Ok(BlockStatus::in_file(
            bs.file(),
            offset + self.offset.get(),
            bytes,
        ))
    }

    async fn co_truncate(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        exact: bool,
        prealloc: PreallocMode,
    ) -> Result<()> {
        if self.offset.get() != 0 || self.size.get().is_some() {
            return Err(Error::not_supported(
                "Cannot resize a raw image with an offset or size option",
            ));
        }
        Self::file(bs).co_truncate(offset, exact, prealloc).await
    }

    async fn co_getlength(&self, bs: &BlockDriverState) -> Result<u64> {
        let file_len = Self::file(bs).getlength();
        Ok(self
            .size
            .get()
            .unwrap_or(file_len.saturating_sub(self.offset.get())))
    }

    /// The protocol's facts (an rbd object size shows as the cluster size), as raw_get_info.
    fn get_info(&self, bs: &BlockDriverState) -> Result<DriverInfo> {
        let file = Self::file(bs);
        file.drv().get_info(&file)
    }

    fn has_zero_init(&self, bs: &BlockDriverState) -> bool {
        Self::file(bs).drv().has_zero_init(&Self::file(bs))
    }

    /// The child's limits except its request alignment: as in QEMU (bdrv_merge_limits),
    /// unaligned requests pass through and the child pads them itself, which is where
    /// blkdebug's pwritev_rmw_* events are raised. A probed image works in whole sectors,
    /// so that the write guard above always sees the first sector whole (raw_refresh_limits).
    fn refresh_limits(&self, bs: &BlockDriverState) -> BlockLimits {
        let align = if bs.was_probed() {
            PROBE_GUARD_BYTES as u32
        } else {
            1
        };
        BlockLimits {
            request_alignment: align,
            ..Self::file(bs).limits()
        }
    }

    async fn reopen_prepare(
        &self,
        bs: &BlockDriverState,
        opts: &mut Options,
        _flags: OpenFlags,
    ) -> Option<Result<Box<dyn std::any::Any>>> {
        Some(take_window(bs, opts).map(|w| Box::new(w) as Box<dyn std::any::Any>))
    }

    async fn reopen_commit(&self, _bs: &BlockDriverState, staged: Box<dyn std::any::Any>) {
        if let Ok(w) = staged.downcast::<(u64, Option<u64>)>() {
            self.offset.set(w.0);
            self.size.set(w.1);
        }
    }

    fn mutable_opts(&self) -> &'static [&'static str] {
        &["offset", "size"]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
