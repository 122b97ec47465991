//! Creating a Parallels image (QEMU's parallels_co_create and parallels_co_create_opts in
//! block/parallels.c).
//!
//! A new image is an extended-format header and an empty BAT, padded to a whole number of
//! clusters; the data area starts right after.

use block::driver::CreateOption;
use block::{Error, Options, Result};

use super::header::{Header, HEADER_SIZE, HEADS, SECTORS_PER_CYLINDER};
use crate::image_file::{create_image_file, finish_create, write_bytes};

/// Creation options in QEMU's order (parallels_create_opts).
pub const CREATE_OPTIONS: [CreateOption; 2] = [
    CreateOption {
        name: "size",
        kind: "size",
        help: "Virtual disk size",
        default: None,
    },
    CreateOption {
        name: "cluster_size",
        kind: "size",
        help: "Parallels image cluster size",
        default: Some("1048576"),
    },
];

/// The cluster size new images get.
const DEFAULT_CLUSTER_SIZE: u64 = 1 << 20;
/// Clusters the BAT can address at most, per cluster byte (MAX_PARALLELS_IMAGE_FACTOR).
const MAX_IMAGE_FACTOR: u64 = 1 << 32;

/// The header cluster(s) and empty BAT of a new image of `size` bytes.
pub fn new_image(size: u64, cluster_size: u64) -> Result<Vec<u8>> {
    if cluster_size >= i64::MAX as u64 / MAX_IMAGE_FACTOR {
        return Err(Error::invalid("Cluster size is too large"));
    }
    if size as u128 >= MAX_IMAGE_FACTOR as u128 * cluster_size as u128 {
        return Err(Error::new(
            libc::E2BIG,
            "Image size is too large for this cluster size",
        ));
    }
    if cluster_size == 0 {
        return Err(Error::invalid(
            "Cluster size must be a multiple of 512 bytes",
        ));
    }
    let bat_entries = size.div_ceil(cluster_size);
    let bat_bytes = (HEADER_SIZE as u64 + 4 * bat_entries).div_ceil(cluster_size) * cluster_size;
    let header = Header {
        extended: true,
        heads: HEADS,
        cylinders: (size / 512 / HEADS as u64 / SECTORS_PER_CYLINDER) as u32,
        tracks: (cluster_size / 512) as u32,
        bat_entries: bat_entries as u32,
        nb_sectors: size.div_ceil(512),
        inuse: 0,
        data_off: (bat_bytes / 512) as u32,
        flags: 0,
        ext_off: 0,
    };
    let mut image = header.serialise();
    image.resize(bat_bytes as usize, 0);
    Ok(image)
}

/// Creates a Parallels image at `filename` (parallels_co_create_opts); sizes are rounded
/// up to whole sectors.
pub async fn create(filename: &str, options: &mut Options) -> Result<()> {
    let size = options
        .take_size("size")?
        .ok_or_else(|| Error::invalid("Image creation needs a size parameter"))?
        .div_ceil(512)
        * 512;
    let cluster_size = options
        .take_size("cluster_size")?
        .unwrap_or(DEFAULT_CLUSTER_SIZE)
        .div_ceil(512)
        * 512;
    let file = create_image_file(filename, options).await?;
    let result = match new_image(size, cluster_size) {
        Ok(image) => write_bytes(&file, 0, &image)
            .await
            .map_err(|e| e.context("Failed to create Parallels image: ")),
        Err(e) => Err(e),
    };
    finish_create(&file, result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_image_is_its_header_cluster() {
        let image = new_image(64 << 20, 1 << 20).unwrap();
        assert_eq!(image.len(), 1 << 20);
        let h = Header::parse(&image).unwrap();
        assert_eq!((h.bat_entries, h.data_off, h.tracks), (64, 2048, 2048));
        let e = new_image(1 << 50, 512).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Image size is too large for this cluster size"
        );
    }
}
