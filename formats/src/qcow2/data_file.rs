//! External data files: guest data in a file of its own, metadata in the qcow2 file
//! (qcow2.txt: incompatible bit 2 "external data file", the data file name extension
//! 0x44415441 and autoclear bit 1 "raw external data"; QEMU's has_data_file and
//! data_file_is_raw, with the data-file parts of qcow2_do_open and qcow2_co_create in
//! block/qcow2.c).
//!
//! With a data file, the L2 tables still say which guest clusters are allocated, but a host
//! offset is an offset in the data file and always equals the guest offset. So allocating a
//! data cluster takes no refcount, and dropping one discards it in the data file instead of
//! freeing it; compressed clusters cannot exist. With "raw" data the data file must stay
//! a valid raw image of the disk by itself: zero writes reach it too, and every cluster is
//! preallocated so that the metadata agrees with it.
//!
//! The data file is opened from the `data-file` options if given, else from the name in
//! the header, which (unlike a backing file name) is taken as it stands, relative to the
//! current directory, as QEMU does.

use std::rc::Rc;

use block::driver::PreallocMode;
use block::open::open_protocol_child;
use block::{BlockDriverState, Error, Options, Result};

use super::header::{Header, AUTOCLEAR_DATA_FILE_RAW, INCOMPAT_DATA_FILE};

/// The option (and child role) naming the data file.
const ROLE: &str = "data-file";

/// Where an image keeps its guest data (QEMU's s->data_file).
#[derive(Clone, Debug)]
pub enum DataFile {
    /// In the qcow2 file itself, next to the metadata.
    Internal,
    /// In an external data file.
    External {
        /// The opened data file; None when the image was opened for metadata only
        /// (`qemu-img info`), so that no guest data can be reached.
        node: Option<Rc<BlockDriverState>>,
        /// The data file is a valid raw image by itself (the autoclear bit).
        raw: bool,
    },
}

impl DataFile {
    /// Whether guest data lives outside the qcow2 file (has_data_file).
    pub fn is_external(&self) -> bool {
        matches!(self, DataFile::External { .. })
    }

    /// Whether the data file must stay a valid raw image (data_file_is_raw).
    pub fn is_raw(&self) -> bool {
        matches!(self, DataFile::External { raw: true, .. })
    }

    /// The node guest data is read from and written to: `file` itself without a data file.
    pub fn node(&self, file: &Rc<BlockDriverState>) -> Result<Rc<BlockDriverState>> {
        match self {
            DataFile::Internal => Ok(file.clone()),
            DataFile::External { node: Some(n), .. } => Ok(n.clone()),
            DataFile::External { node: None, .. } => Err(Error::new(
                libc::EIO,
                "qcow2: the external data file was not opened (metadata-only open)",
            )),
        }
    }

    /// Makes the data file `size` bytes long, as a truncate of the image does when it
    /// preallocates nothing in the qcow2 file.
    pub async fn truncate(&self, size: u64, exact: bool, prealloc: PreallocMode) -> Result<()> {
        match self {
            DataFile::External { node: Some(n), .. } => n.co_truncate(size, exact, prealloc).await,
            _ => Ok(()),
        }
    }

    /// The preallocation a resize gets: a raw data file needs every cluster mapped one
    /// to one, so "off" becomes "metadata" (also when the image is created).
    pub fn prealloc(&self, asked: PreallocMode) -> PreallocMode {
        if self.is_raw() && asked == PreallocMode::Off {
            PreallocMode::Metadata
        } else {
            asked
        }
    }

    /// Grows the data file to at least `size` bytes after a preallocation
    /// (the end of preallocate_co): metadata preallocation gives it no space.
    pub async fn grow_to(&self, size: u64, prealloc: PreallocMode) -> Result<()> {
        let DataFile::External { node: Some(n), .. } = self else {
            return Ok(());
        };
        if size <= n.getlength() {
            return Ok(());
        }
        let mode = match prealloc {
            PreallocMode::Metadata => PreallocMode::Off,
            other => other,
        };
        n.co_truncate(size, false, mode).await
    }
}

/// Opens the data file of an image being opened and attaches it as the `data-file` child,
/// with QEMU's errors when it is missing or not wanted.
pub async fn open(bs: &BlockDriverState, h: &Header, options: &mut Options) -> Result<DataFile> {
    let wanted = h.incompatible_features & INCOMPAT_DATA_FILE != 0;
    let raw = h.autoclear_features & AUTOCLEAR_DATA_FILE_RAW != 0;
    let prefix = format!("{ROLE}.");
    let explicit = options.iter().any(|(k, _)| k.starts_with(&prefix));
    let reference = options.take(ROLE);
    if bs.open_flags().no_io {
        // Metadata only: the data file is not even looked at (the options are consumed).
        drop(options.extract_prefix(ROLE));
        return Ok(if wanted {
            DataFile::External { node: None, raw }
        } else {
            DataFile::Internal
        });
    }
    if let Some(name) = reference {
        // A string names another node, and rqemu's tools build no graph with named nodes.
        return Err(Error::invalid(format!(
            "Cannot find device='{name}' nor node-name='{name}'"
        )));
    }
    let flags = block::open::format_child_flags(bs.open_flags());
    let mut node = None;
    if explicit {
        node = Some(open_protocol_child(ROLE, None, options, flags).await?);
    }
    if !wanted {
        if node.is_some() {
            return Err(Error::invalid(
                "'data-file' can only be set for images with an external data file",
            ));
        }
        if raw {
            return Err(Error::invalid("data-file-raw requires a data file"));
        }
        return Ok(DataFile::Internal);
    }
    if node.is_none() {
        if let Some(name) = &h.data_file {
            node = Some(open_protocol_child(ROLE, Some(name.clone()), options, flags).await?);
        }
    }
    let node = node.ok_or_else(|| Error::invalid("'data-file' is required for this image"))?;
    bs.attach_child(ROLE, node.clone());
    Ok(DataFile::External {
        node: Some(node),
        raw,
    })
}

/// The data file options of `qemu-img create` (QEMU's BLOCK_OPT_DATA_FILE and
/// BLOCK_OPT_DATA_FILE_RAW), checked against the other options.
#[derive(Clone, Debug, Default)]
pub struct DataFileParams {
    /// Name of the data file to create, stored in the header as given.
    pub name: Option<String>,
    /// Whether the data file must stay a valid raw image.
    pub raw: bool,
}

impl DataFileParams {
    /// Takes `data_file` and `data_file_raw` and validates them with QEMU's messages.
    pub fn take(options: &mut Options, version: u32, has_backing: bool) -> Result<Self> {
        let name = options.take("data_file");
        let raw = options.take_bool("data_file_raw")?.unwrap_or(false);
        if raw && name.is_none() {
            return Err(Error::invalid("data-file-raw requires data-file"));
        }
        if raw && has_backing {
            return Err(Error::invalid(
                "Backing file and data-file-raw cannot be used at the same time",
            ));
        }
        if name.is_some() && version < 3 {
            return Err(Error::invalid(
                "External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)",
            ));
        }
        Ok(DataFileParams { name, raw })
    }

    /// Records the data file in a new image's header.
    pub fn apply(&self, h: &mut Header) {
        if let Some(name) = &self.name {
            h.incompatible_features |= INCOMPAT_DATA_FILE;
            h.data_file = Some(name.clone());
            if self.raw {
                h.autoclear_features |= AUTOCLEAR_DATA_FILE_RAW;
            }
        }
    }
}
