//! The `rbd` protocol: images stored in a Ceph cluster through librbd (QEMU's block/rbd.c).
//!
//! A node connects to the cluster when it opens (`cluster`), then every request is a librbd
//! asynchronous call whose completion comes back to the AioContext through a bottom half
//! (`aio`). Block status asks the image's object map (`status`), internal snapshots are
//! librbd's snapshots, and the libraries themselves are loaded on first use (`ffi`), so a
//! host without Ceph only loses this driver.

mod aio;
mod cluster;
mod ffi;
pub mod location;
mod status;

use std::cell::Cell;
use std::sync::Arc;

use async_trait::async_trait;

use self::aio::{start_co, RbdCmd};
use self::cluster::{Cluster, Image};
use self::location::RbdLocation;
use crate::aio::AioContext;
use crate::driver::{
    BlockDriver, BlockStatus, CreateOption, DriverClass, DriverInfo, PreallocMode, RequestFlags,
    StatusFlags,
};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::BlockDriverState;
use crate::options::Options;
use crate::snapshot::SnapshotInfo;

/// The class registered as `rbd`.
pub static RBD: DriverClass = DriverClass {
    format_name: "rbd",
    protocol_name: Some("rbd"),
    is_format: false,
    probe: None,
    open: |bs, options| Box::pin(open(bs, options)),
    create: Some(|filename, options| Box::pin(create(filename, options))),
    create_options: &[
        CreateOption {
            name: "size",
            kind: "size",
            help: "Virtual disk size",
            default: None,
        },
        CreateOption {
            name: "cluster_size",
            kind: "size",
            help: "RBD object size",
            default: None,
        },
    ],
};

/// Longest snapshot name librbd takes (RBD_MAX_SNAP_NAME_SIZE less the NUL).
const MAX_SNAP_NAME: usize = 127;

/// An open rbd image.
pub struct RbdDriver {
    image: Arc<Image>,
    /// The size as last seen, to know when a write must grow the image first.
    image_size: Cell<u64>,
    /// Held while a write grows the image, so concurrent growths never shrink it again.
    grow_lock: async_lock::Mutex<()>,
    object_size: u64,
    /// librbd before 1.17 needs block-status queries aligned to objects.
    align_status: bool,
}

/// Runs a blocking librbd or librados call on the thread pool, so the loop keeps going
/// while it waits on the network.
async fn blocking<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    AioContext::current().thread_pool().submit(work).await
}

/// The key to authenticate with, from the `key-secret` object: librados takes it in base64
/// (qemu_rbd_set_auth).
fn secret_key(loc: &RbdLocation) -> Result<Option<String>> {
    loc.key_secret
        .as_deref()
        .map(crate::objects::secret::qcrypto_secret_lookup_as_base64)
        .transpose()
}

async fn connect(loc: RbdLocation, nocache: bool) -> Result<Cluster> {
    let key = secret_key(&loc)?;
    blocking(move || Cluster::connect(&loc, key.as_deref(), nocache)).await
}

async fn open(bs: &BlockDriverState, options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let loc = RbdLocation::from_options(options)?;
    let flags = bs.open_flags();
    if loc.snapshot.is_some() && !flags.read_only {
        return Err(Error::new(libc::EACCES, "rbd snapshots are read-only"));
    }
    let cluster = connect(loc.clone(), flags.cache.direct).await?;
    let (name, snap) = (loc.image.clone(), loc.snapshot.clone());
    let image = blocking(move || cluster.open_image(&name, snap.as_deref())).await?;
    let info = image.stat().map_err(|e| {
        Error::with_errno_message(
            e.errno(),
            format!("error getting image info from {}", loc.image),
        )
    })?;
    let api = ffi::api()?;
    bs.set_filename(loc.json_filename());
    Ok(Box::new(RbdDriver {
        image: Arc::new(image),
        image_size: Cell::new(info.size),
        grow_lock: async_lock::Mutex::new(()),
        object_size: info.obj_size,
        align_status: ffi::version(api) < (1, 17),
    }))
}

async fn create(filename: &str, options: &mut Options) -> Result<()> {
    let size = options.take_size("size")?.unwrap_or(0);
    let order = match options.take_size("cluster_size")? {
        None => None,
        Some(objsize) if !objsize.is_power_of_two() => {
            return Err(Error::invalid("obj size needs to be power of 2"))
        }
        Some(objsize) if objsize < 4096 => return Err(Error::invalid("obj size too small")),
        Some(objsize) => Some(objsize.trailing_zeros() as i32),
    };
    if let Some(p) = options.take("preallocation") {
        if p != "off" {
            return Err(Error::not_supported(format!(
                "Unsupported preallocation mode '{p}'"
            )));
        }
    }
    let mut loc_opts = Options::new();
    loc_opts.set("filename", filename);
    let loc = RbdLocation::from_options(&mut loc_opts)?;
    let cluster = connect(loc.clone(), false).await?;
    blocking(move || cluster.create_image(&loc.image, size, order)).await
}

impl RbdDriver {
    async fn request(
        &self,
        cmd: RbdCmd,
        offset: u64,
        bytes: u64,
        qiov: Option<&IoVector>,
        may_unmap: bool,
    ) -> Result<()> {
        // librbd refuses writes past the end; a growing image (a qcow2 file) is resized first.
        let writes = matches!(cmd, RbdCmd::Write | RbdCmd::WriteZeroes);
        if writes && offset + bytes > self.image_size.get() {
            let _growing = self.grow_lock.lock().await;
            if offset + bytes > self.image_size.get() {
                self.resize(offset + bytes).await?;
            }
        }
        start_co(&self.image, cmd, offset, bytes, qiov, may_unmap).await
    }

    async fn resize(&self, size: u64) -> Result<()> {
        let image = self.image.clone();
        blocking(move || image.resize(size))
            .await
            .map_err(|e| Error::with_errno_message(e.errno(), "failed to resize"))?;
        self.image_size.set(size);
        Ok(())
    }

    async fn snap_op(
        &self,
        op: fn(&ffi::Api) -> unsafe extern "C" fn(ffi::ImageT, *const std::ffi::c_char) -> i32,
        name: &str,
    ) -> Result<()> {
        let (image, name) = (self.image.clone(), name.to_string());
        blocking(move || image.snap_op(op(image.api()), &name)).await
    }
}

#[async_trait(?Send)]
impl BlockDriver for RbdDriver {
    async fn co_preadv(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        self.request(RbdCmd::Read, offset, qiov.len() as u64, Some(qiov), false)
            .await
    }

    async fn co_pwritev(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        self.request(RbdCmd::Write, offset, qiov.len() as u64, Some(qiov), false)
            .await
    }

    async fn co_pwrite_zeroes(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        let may_unmap = flags.contains(RequestFlags::MAY_UNMAP);
        self.request(RbdCmd::WriteZeroes, offset, bytes, None, may_unmap)
            .await
    }

    async fn co_pdiscard(&self, _bs: &BlockDriverState, offset: u64, bytes: u64) -> Result<()> {
        self.request(RbdCmd::Discard, offset, bytes, None, false)
            .await
    }

    async fn co_flush_to_disk(&self, _bs: &BlockDriverState) -> Result<()> {
        self.request(RbdCmd::Flush, 0, 0, None, false).await
    }

    async fn co_block_status(
        &self,
        _bs: &BlockDriverState,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        let (image, object_size, align) = (self.image.clone(), self.object_size, self.align_status);
        let (data, len) =
            blocking(move || status::block_status(&image, offset, bytes, object_size, align)).await;
        let flags = if data {
            StatusFlags::DATA
        } else {
            StatusFlags::ZERO
        };
        let mut s = BlockStatus::new(flags | StatusFlags::OFFSET_VALID, len);
        s.map = offset;
        Ok(s)
    }

    async fn co_truncate(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        _exact: bool,
        prealloc: PreallocMode,
    ) -> Result<()> {
        if prealloc != PreallocMode::Off {
            return Err(Error::not_supported(format!(
                "Unsupported preallocation mode '{}'",
                prealloc.name()
            )));
        }
        self.resize(offset).await
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        let size = self.image.size()?;
        self.image_size.set(size);
        Ok(size)
    }

    async fn co_get_allocated_file_size(&self, _bs: &BlockDriverState) -> Result<Option<u64>> {
        Ok(None)
    }

    fn supported_write_flags(&self) -> RequestFlags {
        RequestFlags::MAY_UNMAP
    }

    fn get_info(&self, _bs: &BlockDriverState) -> Result<DriverInfo> {
        Ok(DriverInfo {
            subcluster_size: 0,
            cluster_size: self.object_size,
            ..DriverInfo::default()
        })
    }

    /// Only encryption would have facts to show; the section is there, empty, as QEMU's.
    fn get_specific_info(&self, _bs: &BlockDriverState) -> Option<serde_json::Value> {
        Some(serde_json::json!({"type": "rbd", "data": {}}))
    }

    fn snapshot_list(&self, _bs: &BlockDriverState) -> Result<Vec<SnapshotInfo>> {
        // librbd keeps no dates; like QEMU, the id is the name and the size the disk size.
        Ok(self
            .image
            .snapshots()?
            .into_iter()
            .map(|(name, size)| SnapshotInfo {
                id_str: name.clone(),
                name,
                vm_state_size: size,
                ..SnapshotInfo::default()
            })
            .collect())
    }

    async fn co_snapshot_create(&self, _bs: &BlockDriverState, sn: &SnapshotInfo) -> Result<()> {
        // Snapshots are found by name alone, so an id other than the name cannot be kept.
        if sn.name.is_empty() || (!sn.id_str.is_empty() && sn.id_str != sn.name) {
            return Err(Error::from_errno(libc::EINVAL));
        }
        if sn.name.len() > MAX_SNAP_NAME {
            return Err(Error::from_errno(libc::ERANGE));
        }
        self.snap_op(|api| api.rbd_snap_create, &sn.name).await
    }

    async fn co_snapshot_goto(&self, _bs: &BlockDriverState, id_or_name: &str) -> Result<()> {
        self.snap_op(|api| api.rbd_snap_rollback, id_or_name).await
    }

    async fn co_snapshot_delete(
        &self,
        _bs: &BlockDriverState,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<()> {
        let name = name.or(id).unwrap_or_default();
        self.snap_op(|api| api.rbd_snap_remove, name)
            .await
            .map_err(|e| Error::with_errno_message(e.errno(), "Failed to remove the snapshot"))
    }

    fn has_zero_init(&self, _bs: &BlockDriverState) -> bool {
        true
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
