//! Changing the options of an existing image in place (QEMU's qcow2_amend_options,
//! qcow2_upgrade and qcow2_downgrade in block/qcow2.c).
//!
//! The options are read in the order of [`AMEND_OPTIONS`], so that the first bad one is the
//! one reported; the changes are then made in QEMU's order: upgrade first (later features
//! may need version 3), refcount width, header, backing file, lazy refcounts, size, and the
//! downgrade last (after the features it cannot keep are gone). The two long walks, zero
//! cluster expansion and the refcount rebuild, live in [`super::amend_walk`].

use block::crypto::luks::amend::AmendOptions;
use block::driver::{CreateOption, PreallocMode};
use block::{BlockDriverState, Error, Options, Result};

use super::create::CREATE_OPTIONS;
use super::data_file::DataFile;
use super::header::{self, Header, AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS};
use super::header::{INCOMPAT_COMPRESSION, INCOMPAT_DIRTY};
use super::l2::Geometry;
use super::Qcow2;

const fn opt(name: &'static str, kind: &'static str, help: &'static str) -> CreateOption {
    CreateOption {
        name,
        kind,
        help,
        default: None,
    }
}

/// The options `amend` takes, in QEMU's order (qcow2_amend_opts: the LUKS keyslot options,
/// then those shared with creation).
pub const AMEND_OPTIONS: [CreateOption; 13] = [
    opt(
        "encrypt.state",
        "str",
        "Select new state of affected keyslots (active/inactive)",
    ),
    opt(
        "encrypt.keyslot",
        "num",
        "Select a single keyslot to modify explicitly",
    ),
    opt(
        "encrypt.old-secret",
        "str",
        "Select all keyslots that match this password",
    ),
    opt(
        "encrypt.new-secret",
        "str",
        "New secret to set in the matching keyslots. Empty string to erase",
    ),
    opt(
        "encrypt.iter-time",
        "num",
        "Time to spend in PBKDF in milliseconds",
    ),
    CREATE_OPTIONS[13],
    CREATE_OPTIONS[14],
    CREATE_OPTIONS[15],
    CREATE_OPTIONS[16],
    CREATE_OPTIONS[17],
    CREATE_OPTIONS[18],
    CREATE_OPTIONS[19],
    CREATE_OPTIONS[20],
];

/// The steps of an amendment that report progress (Qcow2AmendOperation).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Operation {
    None,
    Upgrading,
    ChangingRefcountOrder,
    Downgrading,
}

/// Turns each step's own (done, total) into progress of the whole amendment, projecting
/// the steps not begun yet to be as long as the ones seen (qcow2_amend_helper_cb).
pub(super) struct AmendProgress<'a> {
    status: &'a mut dyn FnMut(u64, u64),
    total_operations: u64,
    operations_completed: u64,
    offset_completed: u64,
    last_work_size: u64,
    current: Operation,
    last: Operation,
}

impl AmendProgress<'_> {
    /// Starts reporting for `op`.
    pub(super) fn begin(&mut self, op: Operation) {
        self.current = op;
    }

    /// The current step has done `offset` of `work_size`.
    pub(super) fn report(&mut self, offset: u64, work_size: u64) {
        if self.current != self.last {
            if self.last != Operation::None {
                self.offset_completed += self.last_work_size;
                self.operations_completed += 1;
            }
            self.last = self.current;
        }
        let total_ops = self.total_operations.max(self.operations_completed + 1);
        self.last_work_size = work_size;
        let current_work = self.offset_completed + work_size;
        let projected = current_work * (total_ops - self.operations_completed - 1)
            / (self.operations_completed + 1);
        (self.status)(self.offset_completed + offset, current_work + projected);
    }
}

/// What an amend command line asks for.
#[derive(Default)]
struct Request {
    version: Option<u32>,
    size: u64,
    backing_file: Option<String>,
    backing_fmt: Option<String>,
    lazy_refcounts: Option<bool>,
    refcount_bits: Option<u64>,
    encrypt: Option<AmendOptions>,
    /// The data file name to record; "" removes it from the header.
    data_file: Option<String>,
    /// Whether the data file stays a valid raw image (only clearing is allowed).
    data_file_raw: bool,
}

/// Reads the options in [`AMEND_OPTIONS`] order with QEMU's checks and messages; `data`
/// is where the image keeps its guest data now.
fn parse_request(opts: &mut Options, data: &DataFile) -> Result<Request> {
    let mut r = Request {
        data_file_raw: data.is_raw(),
        ..Request::default()
    };
    let mut encrypt = opts.extract_prefix("encrypt");
    r.encrypt = AmendOptions::take(&mut encrypt)?;
    for desc in AMEND_OPTIONS.iter() {
        let Some(value) = opts.take(desc.name) else {
            continue;
        };
        match desc.name {
            "compat" => {
                r.version = Some(match value.as_str() {
                    "0.10" | "v2" => 2,
                    "1.1" | "v3" => 3,
                    other => {
                        return Err(Error::invalid(format!(
                            "Unknown compatibility level {other}"
                        )))
                    }
                })
            }
            "size" => {
                r.size = block::options::parse_size(&value).ok_or_else(|| {
                    Error::invalid(format!("Parameter 'size' expects a size: {value}"))
                })?
            }
            "backing_file" => r.backing_file = Some(value),
            "backing_fmt" => r.backing_fmt = Some(value),
            "lazy_refcounts" => r.lazy_refcounts = block::options::parse_bool(&value),
            "refcount_bits" => {
                let bits: u64 = value.parse().unwrap_or(0);
                if bits == 0 || bits > 64 || !bits.is_power_of_two() {
                    return Err(Error::invalid(
                        "Refcount width must be a power of two and may not exceed 64 bits",
                    ));
                }
                r.refcount_bits = Some(bits);
            }
            "data_file" if !data.is_external() => {
                return Err(Error::invalid(
                    "data-file can only be set for images that use an external data file",
                ))
            }
            "data_file" => r.data_file = Some(value),
            "data_file_raw" => {
                // The raw property is a promise about the data file's whole past: it can
                // be given up, never taken on later.
                r.data_file_raw = block::options::parse_bool(&value).unwrap_or(r.data_file_raw);
                if r.data_file_raw && !data.is_raw() {
                    return Err(Error::invalid(
                        "data-file-raw cannot be set on existing images",
                    ));
                }
            }
            name => return Err(Error::invalid(format!("Invalid parameter '{name}'"))),
        }
    }
    Ok(r)
}

fn v3_feature_names() -> Vec<header::FeatureName> {
    Header::new(3, header::MIN_CLUSTER_BITS, 0).feature_names
}

impl Qcow2 {
    /// Applies an amend option list (qcow2_amend_options). `status` hears (done, total).
    pub(super) async fn amend(
        &self,
        bs: &BlockDriverState,
        opts: &mut Options,
        force: bool,
        status: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        let (old_version, old_bits) = {
            let h = self.info.borrow();
            (h.version, h.refcount_bits() as u64)
        };
        // As qcow2_amend_options, an image without encryption refuses encrypt.* options
        // before they are parsed.
        if self.crypto.is_none() && opts.iter().any(|(k, _)| k.starts_with("encrypt.")) {
            return Err(Error::invalid(
                "Can't amend encryption options - encryption not present",
            ));
        }
        let mut r = parse_request(opts, &self.data)?;
        if let Some(encrypt) = r.encrypt.take() {
            let file = self.file(bs);
            super::crypto::amend(self.crypto.as_ref(), &file, encrypt, force).await?;
        }
        let new_version = r.version.unwrap_or(old_version);
        let refcount_bits = r.refcount_bits.unwrap_or(old_bits);
        self.repair_if_dirty(bs).await?;
        let mut progress = AmendProgress {
            status,
            total_operations: (new_version != old_version) as u64
                + (refcount_bits != old_bits) as u64,
            operations_completed: 0,
            offset_completed: 0,
            last_work_size: 0,
            current: Operation::None,
            last: Operation::None,
        };
        if new_version > old_version {
            progress.begin(Operation::Upgrading);
            self.upgrade(&mut progress).await?;
        }
        if refcount_bits != old_bits {
            if new_version < 3 && refcount_bits != 16 {
                return Err(Error::invalid("Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"));
            }
            progress.begin(Operation::ChangingRefcountOrder);
            let mut meta = self.meta.lock().await;
            meta.check_writable()?;
            meta.change_refcount_order(refcount_bits.trailing_zeros(), &mut progress)
                .await?;
            self.info.borrow_mut().refcount_order = meta.header.refcount_order;
        }
        self.set_data_file(&r).await;
        self.rewrite_header()
            .await
            .map_err(|e| e.context("Failed to update the image header: "))?;
        self.check_backing(&r)?;
        if let Some(lazy) = r.lazy_refcounts {
            self.set_lazy_refcounts(lazy, new_version).await?;
        }
        if r.size != 0 {
            bs.co_truncate(r.size, true, PreallocMode::Off).await?;
        }
        if new_version < old_version {
            progress.begin(Operation::Downgrading);
            self.downgrade(bs, &mut progress).await?;
        }
        Ok(())
    }

    /// Records the data file options in the header to be written (before the backing file
    /// check, as QEMU: data-file-raw forbids a backing file).
    async fn set_data_file(&self, r: &Request) {
        let mut meta = self.meta.lock().await;
        if !meta.data.is_external() {
            return;
        }
        if r.data_file_raw {
            meta.header.autoclear_features |= AUTOCLEAR_DATA_FILE_RAW;
        } else {
            meta.header.autoclear_features &= !AUTOCLEAR_DATA_FILE_RAW;
            if let DataFile::External { raw, .. } = &mut meta.data {
                *raw = false;
            }
        }
        if let Some(name) = &r.data_file {
            meta.header.data_file = Some(name.clone()).filter(|n| !n.is_empty());
        }
        let mut info = self.info.borrow_mut();
        info.autoclear_features = meta.header.autoclear_features;
        info.data_file = meta.header.data_file.clone();
    }

    /// Writes the header as it stands (qcow2_update_header).
    async fn rewrite_header(&self) -> Result<()> {
        let mut meta = self.meta.lock().await;
        meta.write_header().await?;
        meta.file.co_flush().await
    }

    /// Amend no longer changes the backing file; naming the current one is allowed.
    fn check_backing(&self, r: &Request) -> Result<()> {
        if r.backing_file.is_none() && r.backing_fmt.is_none() {
            return Ok(());
        }
        let h = self.info.borrow();
        if r.backing_file != h.backing_file || r.backing_fmt != h.backing_format {
            return Err(Error::invalid(
                "Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.",
            ));
        }
        Ok(())
    }

    /// Turns lazy refcounts on or off; off makes the image clean first.
    async fn set_lazy_refcounts(&self, lazy: bool, version: u32) -> Result<()> {
        if lazy == self.lazy_refcounts.get() {
            return Ok(());
        }
        if lazy && version < 3 {
            return Err(Error::invalid("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"));
        }
        let mut meta = self.meta.lock().await;
        if !lazy {
            self.mark_clean(&mut meta)
                .await
                .map_err(|e| e.context("Failed to make the image clean: "))?;
        }
        let saved = meta.header.compatible_features;
        meta.header.compatible_features ^= COMPAT_LAZY_REFCOUNTS;
        if let Err(e) = meta.write_header().await {
            meta.header.compatible_features = saved;
            return Err(e.context("Failed to update the image header: "));
        }
        self.info.borrow_mut().compatible_features = meta.header.compatible_features;
        self.lazy_refcounts.set(lazy);
        Ok(())
    }

    /// Makes a version 2 image version 3 (qcow2_upgrade).
    async fn upgrade(&self, progress: &mut AmendProgress<'_>) -> Result<()> {
        progress.report(0, 2);
        let mut meta = self.meta.lock().await;
        if meta.header.nb_snapshots > 0 {
            // Version 3 requires each snapshot entry's extra data to hold the 64-bit VM state
            // size and the disk size; version 2 readers skip extra data, so the rewritten
            // table goes out before the header says version 3.
            meta.write_snapshots()
                .await
                .map_err(|e| e.context("Failed to update the snapshot table: "))?;
        }
        progress.report(1, 2);
        let saved = meta.header.clone();
        meta.header.version = 3;
        meta.header.feature_names = v3_feature_names();
        if let Err(e) = meta.write_header().await {
            meta.header = saved;
            return Err(e.context("Failed to update the image header: "));
        }
        self.after_header_change(&mut meta);
        progress.report(2, 2);
        Ok(())
    }

    /// Makes a version 3 image version 2, expanding zero clusters (qcow2_downgrade).
    async fn downgrade(
        &self,
        bs: &BlockDriverState,
        progress: &mut AmendProgress<'_>,
    ) -> Result<()> {
        let mut meta = self.meta.lock().await;
        if meta.header.refcount_order != 4 {
            return Err(Error::not_supported(
                "compat=0.10 requires refcount_bits=16",
            ));
        }
        if meta.data.is_external() {
            return Err(Error::not_supported(
                "Cannot downgrade an image with a data file",
            ));
        }
        // A version 2 reader would take the image's size for every snapshot's and might
        // truncate its VM state size to 32 bits.
        let size = self.size.get();
        if meta
            .snapshots
            .iter()
            .any(|sn| sn.vm_state_size > u32::MAX as u64 || sn.disk_size != size)
        {
            return Err(Error::not_supported(
                "Internal snapshots prevent downgrade of image",
            ));
        }
        if meta.header.incompatible_features & INCOMPAT_DIRTY != 0 {
            self.mark_clean(&mut meta)
                .await
                .map_err(|e| e.context("Failed to make the image clean: "))?;
        }
        let incompatible = meta.header.incompatible_features & !INCOMPAT_COMPRESSION;
        if incompatible != 0 {
            return Err(Error::not_supported(format!(
                "Cannot downgrade an image with incompatible features {incompatible:#x} set"
            )));
        }
        meta.header.compatible_features = 0;
        meta.header.autoclear_features = 0;
        meta.expand_zero_clusters(bs.backing().is_some(), progress)
            .await
            .map_err(|e| e.context("Failed to turn zero into data clusters: "))?;
        if meta.header.compression_type != header::CompressionType::Zlib {
            if meta.has_compressed_clusters().await? {
                return Err(Error::not_supported("Cannot downgrade an image with zstd compression type and existing compressed clusters"));
            }
            meta.header.incompatible_features &= !INCOMPAT_COMPRESSION;
            meta.header.compression_type = header::CompressionType::Zlib;
        }
        let saved = meta.header.clone();
        meta.header.version = 2;
        meta.header.feature_names.clear();
        if let Err(e) = meta.write_header().await {
            meta.header = saved;
            return Err(e.context("Failed to update the image header: "));
        }
        meta.file.co_flush().await?;
        self.after_header_change(&mut meta);
        Ok(())
    }

    /// Brings the derived state in line with a rewritten header.
    fn after_header_change(&self, meta: &mut super::state::Meta) {
        meta.g = Geometry::new(&meta.header);
        let mut info = self.info.borrow_mut();
        info.version = meta.header.version;
        info.compatible_features = meta.header.compatible_features;
        info.autoclear_features = meta.header.autoclear_features;
        info.incompatible_features = meta.header.incompatible_features;
        info.compression_type = meta.header.compression_type;
        info.feature_names = meta.header.feature_names.clone();
        self.lazy_refcounts
            .set(meta.header.compatible_features & COMPAT_LAZY_REFCOUNTS != 0);
    }
}
