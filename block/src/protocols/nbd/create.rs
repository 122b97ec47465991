//! "Creating" an image on an NBD export (QEMU's bdrv_co_create_opts_simple, which block/nbd.c
//! uses): an export already exists and cannot be made, so creation opens it, checks that it
//! is large enough, and zeroes its first sector so that no old header is probed later.

use crate::driver::{CreateOption, PreallocMode, RequestFlags};
use crate::error::{Error, Result};
use crate::node::OpenFlags;
use crate::options::Options;

/// The options creation on an existing node takes (bdrv_create_opts_simple).
pub(super) const CREATE_OPTIONS: &[CreateOption] = &[
    CreateOption::SIZE,
    CreateOption {
        name: "preallocation",
        kind: "str",
        help: "Preallocation mode (allowed values: off)",
        default: None,
    },
];

/// Opens the export `filename` names, makes sure it holds `size` bytes (it cannot grow), and
/// zeroes its first sector.
pub(super) async fn create(filename: &str, options: &mut Options) -> Result<()> {
    let size = options.take_size("size")?.unwrap_or(0);
    if let Some(p) = options.take("preallocation") {
        if p != "off" {
            return Err(Error::not_supported(format!(
                "Unsupported preallocation mode '{p}'"
            )));
        }
    }
    let mut open = Options::new();
    open.set("driver", "nbd");
    open.set("filename", filename);
    let bs = crate::bdrv_open(None, open, OpenFlags::default()).await?;
    let result = async {
        bs.co_truncate(size, false, PreallocMode::Off).await?;
        let first = bs.getlength().min(512);
        if first > 0 {
            bs.co_pwrite_zeroes(0, first, RequestFlags::MAY_UNMAP)
                .await?;
        }
        Ok(())
    }
    .await;
    let closed = bs.close().await;
    result.and(closed)
}
