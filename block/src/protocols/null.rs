//! The `null-co` protocol: a device of a given size that stores nothing (block/null.c).
//!
//! Reads leave the buffer untouched unless `read-zeroes=on`; writes succeed and vanish. It
//! exists to benchmark the block layer itself: `rqemu-img bench -f raw null-co://`.

use async_trait::async_trait;

use crate::driver::{BlockDriver, BlockStatus, DriverClass, RequestFlags, StatusFlags};
use crate::error::Result;
use crate::iov::IoVector;
use crate::node::BlockDriverState;
use crate::options::Options;

/// The class registered as `null-co` (URI prefix `null-co://`).
pub static NULL_CO: DriverClass = DriverClass {
    format_name: "null-co",
    protocol_name: Some("null-co"),
    is_format: false,
    probe: None,
    open: |bs, options| {
        // Without the options that change what it is, the node is named by its URI
        // (null_refresh_filename), also when opened by options alone.
        if !options.contains("size") && !options.contains("read-zeroes") {
            bs.set_filename("null-co://");
        }
        Box::pin(open(options))
    },
    create: None,
    create_options: &[],
};

/// Default size: 1 GiB, as QEMU's null driver.
const DEFAULT_SIZE: u64 = 1 << 30;

struct NullDriver {
    size: u64,
    read_zeroes: bool,
}

async fn open(options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    if let Some(f) = options.take("filename") {
        if f != "null-co://" {
            return Err(crate::error::Error::invalid(
                "The only allowed filename for this driver is 'null-co://'",
            ));
        }
    }
    let size = options.take_size("size")?.unwrap_or(DEFAULT_SIZE);
    let read_zeroes = options.take_bool("read-zeroes")?.unwrap_or(false);
    options.take("latency-ns");
    Ok(Box::new(NullDriver { size, read_zeroes }))
}

#[async_trait(?Send)]
impl BlockDriver for NullDriver {
    /// null-co has no cluster size or VM state to report (no bdrv_co_get_info: ENOTSUP).
    fn get_info(&self, _bs: &BlockDriverState) -> Result<crate::driver::DriverInfo> {
        Err(crate::error::Error::from_errno(libc::ENOTSUP))
    }

    async fn co_preadv(
        &self,
        _bs: &BlockDriverState,
        _offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        if self.read_zeroes {
            qiov.fill(0, qiov.len(), 0);
        }
        Ok(())
    }

    async fn co_pwritev(
        &self,
        _bs: &BlockDriverState,
        _offset: u64,
        _qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        Ok(())
    }

    async fn co_pwrite_zeroes(
        &self,
        _bs: &BlockDriverState,
        _offset: u64,
        _bytes: u64,
        _flags: RequestFlags,
    ) -> Result<()> {
        Ok(())
    }

    async fn co_block_status(
        &self,
        _bs: &BlockDriverState,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        let mut flags = StatusFlags::OFFSET_VALID;
        if self.read_zeroes {
            flags |= StatusFlags::ZERO;
        }
        let mut status = BlockStatus::new(flags, bytes);
        status.map = offset;
        Ok(status)
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        Ok(self.size)
    }

    fn supported_write_flags(&self) -> RequestFlags {
        RequestFlags::FUA
    }

    fn reopen_keeps_options(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
