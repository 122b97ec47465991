//! Creating a qcow image (qcow_co_create and qcow_co_create_opts in QEMU's block/qcow.c).
//!
//! A new image is the header, the backing file name and an empty L1 table. Images with a
//! backing file use 512-byte clusters, so that a write never has to copy the rest of a
//! cluster from the backing file; the others 4 KiB clusters.

use block::driver::CreateOption;
use block::{Error, Options, Result};

use super::header::{Header, CRYPT_AES, CRYPT_NONE, HEADER_BYTES, MAGIC, VERSION};
use crate::image_file::{create_image_file, write_bytes};

/// Creation options in QEMU's order (qcow_create_opts).
pub const CREATE_OPTIONS: [CreateOption; 6] = [
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
        help: "Format of the backing image",
        default: None,
    },
    CreateOption {
        name: "encryption",
        kind: "bool",
        help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
        default: None,
    },
    CreateOption {
        name: "encrypt.format",
        kind: "str",
        help: "Encrypt the image, format choices: 'aes'",
        default: None,
    },
    CreateOption {
        name: "encrypt.key-secret",
        kind: "str",
        help: "ID of the secret that provides the AES encryption key",
        default: None,
    },
];

/// The header, backing file name and zeroed L1 table of a new image.
pub fn new_image(size: u64, backing_file: Option<&str>) -> Vec<u8> {
    // vvfat's "fat:" pseudo-backing file is not recorded.
    let backing_file = backing_file.filter(|b| *b != "fat:");
    let (cluster_bits, l2_bits) = if backing_file.is_some() {
        (9, 12)
    } else {
        (12, 9)
    };
    let name_len = backing_file.map_or(0, str::len);
    let header_size = (HEADER_BYTES + name_len).next_multiple_of(8) as u64;
    let shift = cluster_bits + l2_bits;
    let l1_size = (size + (1u64 << shift) - 1) >> shift;
    let h = Header {
        magic: MAGIC,
        version: VERSION,
        backing_file_offset: if backing_file.is_some() {
            HEADER_BYTES as u64
        } else {
            0
        },
        backing_file_size: name_len as u32,
        mtime: 0,
        size,
        cluster_bits: cluster_bits as u8,
        l2_bits: l2_bits as u8,
        crypt_method: CRYPT_NONE,
        l1_table_offset: header_size,
    };
    let mut image = h.serialise();
    image.extend(backing_file.unwrap_or("").as_bytes());
    // The table is written as whole zeroed sectors.
    let l1_bytes = (l1_size * 8).div_ceil(512) * 512;
    image.resize((header_size + l1_bytes) as usize, 0);
    image
}

/// Creates a qcow image at `filename` (qcow_co_create_opts).
pub async fn create(filename: &str, options: &mut Options) -> Result<()> {
    let size = options.take_size("size")?.unwrap_or(0).div_ceil(512) * 512;
    let backing_file = options.take("backing_file");
    options.take("backing_fmt");
    let encrypted = super::crypt::create(options)?;
    if size == 0 {
        return Err(Error::invalid(
            "Image size is too small, cannot be zero length",
        ));
    }
    let file = create_image_file(filename, options).await?;
    let mut image = new_image(size, backing_file.as_deref());
    if encrypted {
        image[36..40].copy_from_slice(&CRYPT_AES.to_be_bytes());
    }
    let result = write_bytes(&file, 0, &image).await;
    let flushed = file.co_flush().await;
    let closed = file.close().await;
    result.and(flushed).and(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_images_match_qemu_layout() {
        // qemu-img create -f qcow q.qcow 1M: 560 bytes, L1 at 0x30, 4 KiB clusters.
        let image = new_image(1 << 20, None);
        assert_eq!(image.len(), 560);
        let h = Header::parse(&image);
        assert_eq!((h.cluster_bits, h.l2_bits, h.l1_table_offset), (12, 9, 48));
        // With a backing file "q.qcow": 568 bytes, L1 at 0x38, 512-byte clusters.
        let image = new_image(1 << 20, Some("q.qcow"));
        assert_eq!(image.len(), 568);
        let h = Header::parse(&image);
        assert_eq!((h.cluster_bits, h.l1_table_offset), (9, 56));
        assert_eq!(&image[48..54], b"q.qcow");
    }
}
