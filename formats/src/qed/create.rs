//! Creating a QED image (QEMU's bdrv_qed_co_create in block/qed.c).
//!
//! A new image is one header cluster — the fixed fields, then the backing file name — and
//! an empty L1 table right after it.

use block::driver::CreateOption;
use block::{Error, Options, Result};

use super::header::{
    cluster_size_valid, max_image_size, table_size_valid, Header, F_BACKING_FILE,
    F_BACKING_FORMAT_NO_PROBE, HEADER_BYTES, MAX_CLUSTER_SIZE, MAX_TABLE_SIZE, MIN_CLUSTER_SIZE,
    MIN_TABLE_SIZE,
};
use crate::image_file::{create_image_file, write_bytes};

/// Creation options in QEMU's order (qed_create_opts).
pub const CREATE_OPTIONS: [CreateOption; 5] = [
    CreateOption {
        name: "size",
        kind: "size",
        help: "Virtual disk size",
        default: None,
    },
    CreateOption {
        name: "backing_file",
        kind: "str",
        help: "File name of a base image",
        default: None,
    },
    CreateOption {
        name: "backing_fmt",
        kind: "str",
        help: "Image format of the base image",
        default: None,
    },
    CreateOption {
        name: "cluster_size",
        kind: "size",
        help: "Cluster size (in bytes)",
        default: Some("65536"),
    },
    CreateOption {
        name: "table_size",
        kind: "size",
        help: "L1/L2 table size (in clusters)",
        default: None,
    },
];

/// The header cluster and empty L1 table of a new image.
pub fn new_image(
    size: u64,
    cluster_size: u64,
    table_size: u64,
    backing: Option<(&str, Option<&str>)>,
) -> Result<Vec<u8>> {
    if !cluster_size_valid(cluster_size) {
        return Err(Error::invalid(format!(
            "QED cluster size must be within range [{MIN_CLUSTER_SIZE}, {MAX_CLUSTER_SIZE}] and power of 2"
        )));
    }
    if !table_size_valid(table_size) {
        return Err(Error::invalid(format!(
            "QED table size must be within range [{MIN_TABLE_SIZE}, {MAX_TABLE_SIZE}] and power of 2"
        )));
    }
    let max = max_image_size(cluster_size, table_size);
    if size > max {
        return Err(Error::invalid(format!(
            "QED image size must be a non-zero multiple of cluster size and less than {max} bytes"
        )));
    }
    let mut h = Header {
        cluster_size: cluster_size as u32,
        table_size: table_size as u32,
        header_size: 1,
        features: 0,
        compat_features: 0,
        autoclear_features: 0,
        l1_table_offset: cluster_size,
        image_size: size,
        backing_filename_offset: 0,
        backing_filename_size: 0,
    };
    let mut name = Vec::new();
    if let Some((file, fmt)) = backing {
        if file.len() as u64 > cluster_size - HEADER_BYTES as u64 {
            return Err(Error::invalid("Backing file name too long"));
        }
        h.features |= F_BACKING_FILE;
        if fmt == Some("raw") {
            h.features |= F_BACKING_FORMAT_NO_PROBE;
        }
        h.backing_filename_offset = HEADER_BYTES as u32;
        h.backing_filename_size = file.len() as u32;
        name.extend_from_slice(file.as_bytes());
    }
    let mut image = h.serialise();
    image.extend(name);
    image.resize(((1 + table_size) * cluster_size) as usize, 0);
    Ok(image)
}

/// Creates a QED image at `filename` (bdrv_qed_co_create_opts).
pub async fn create(filename: &str, options: &mut Options) -> Result<()> {
    let size = options
        .take_size("size")?
        .ok_or_else(|| Error::invalid("Image creation needs a size parameter"))?;
    let backing_file = options.take("backing_file");
    let backing_fmt = options.take("backing_fmt");
    if backing_fmt.is_some() && backing_file.is_none() {
        return Err(Error::invalid(
            "Backing format cannot be used without backing file",
        ));
    }
    let cluster_size = options.take_size("cluster_size")?.unwrap_or(65536);
    let table_size = options.take_size("table_size")?.unwrap_or(4);
    let file = create_image_file(filename, options).await?;
    let backing = backing_file.as_deref().map(|f| (f, backing_fmt.as_deref()));
    let result = match new_image(size, cluster_size, table_size, backing) {
        Ok(image) => write_bytes(&file, 0, &image).await,
        Err(e) => Err(e),
    };
    let flushed = file.co_flush().await;
    let closed = file.close().await;
    result.and(flushed).and(closed)
}
