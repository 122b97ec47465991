//! The `file` protocol: a node whose bytes live in a host file (QEMU's block/file-posix.c).
//!
//! Reads and writes are preadv/pwritev, run on the AioContext's thread pool (aio=threads) or
//! handed to its io_uring (aio=io_uring). cache.direct opens with O_DIRECT, which makes the
//! node's request alignment the device's logical block size (probed at open) and sends
//! misaligned memory through a bounce buffer. Zeroes and discards become fallocate calls,
//! block status comes from SEEK_DATA/SEEK_HOLE, and the image is locked against other
//! writers with the byte-range scheme in [`super::locking`]. The system calls themselves are
//! in `posix`; creating and growing a file in `create`.

mod create;
mod posix;

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use async_trait::async_trait;

use super::host_device;
use super::locking::{self, lock_image};
use crate::aio::AioContext;
use crate::driver::{
    BlockDriver, BlockLimits, BlockStatus, CreateOption, DriverClass, PreallocMode, RequestFlags,
    StatusFlags,
};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::{AioMode, BlockDriverState, OpenFlags};
use crate::options::Options;

use create::{create, regular_truncate};
use posix::{blocking_rw, extent_size_hint, fallocate, file_size, open_fd, probe_alignment};

/// The class registered as `file`.
pub static FILE: DriverClass = DriverClass {
    format_name: "file",
    protocol_name: Some("file"),
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
            name: "nocow",
            kind: "bool",
            help: "Turn off copy-on-write (valid only on btrfs)",
            default: None,
        },
        CreateOption {
            name: "preallocation",
            kind: "str",
            help: "Preallocation mode (allowed values: off, falloc, full)",
            default: None,
        },
        CreateOption {
            name: "extent_size_hint",
            kind: "size",
            help: "Extent size hint for the image file, 0 to disable",
            default: None,
        },
    ],
};

/// Linux's limit on iovecs per preadv call.
const IOV_MAX: usize = 1024;

/// An open host file.
pub struct FileDriver {
    /// Replaced when the node is reopened read-only or read-write; requests in flight keep
    /// the descriptor they started with.
    fd: RefCell<Arc<OwnedFd>>,
    /// The descriptor first opened, which holds the image locks for the node's lifetime
    /// (a reopen replaces `fd` but moves the locks by changing them here), if locking.
    lock_fd: Option<Arc<OwnedFd>>,
    aio: AioMode,
    direct: Cell<bool>,
    alignment: Cell<u32>,
    /// The last data extent SEEK_DATA/SEEK_HOLE found, `start..end` (QEMU's
    /// BlockStatusCache): a request inside it is data without two more lseeks, which
    /// otherwise cost an NBD server a tenth of its time serving small reads. Writes only
    /// add data, so just discard, write-zeroes and truncate forget it.
    data_extent: Cell<Option<(u64, u64)>>,
}

/// The path of a `proto:path` filename (raw_parse_filename, hdev_parse_filename). A path
/// left with a colon before its first slash would read as another protocol prefix, so it
/// gets a "./" in front (bdrv_parse_filename_strip_prefix); that is also the name shown.
fn strip_protocol(filename: &str, protocol: &str) -> String {
    match filename
        .strip_prefix(protocol)
        .and_then(|rest| rest.strip_prefix(':'))
    {
        Some(path)
            if path
                .split('/')
                .next()
                .is_some_and(|head| head.contains(':')) =>
        {
            format!("./{path}")
        }
        Some(path) => path.to_string(),
        None => filename.to_string(),
    }
}

/// The open(2) flags of a node's mode (raw_parse_flags).
fn raw_parse_flags(flags: OpenFlags) -> libc::c_int {
    let access = if flags.read_only {
        libc::O_RDONLY
    } else {
        libc::O_RDWR
    };
    if flags.cache.direct {
        access | libc::O_DIRECT
    } else {
        access
    }
}

/// Opens a node of `file` or of the device drivers sharing its I/O (raw_open_common).
pub(super) async fn open(
    bs: &BlockDriverState,
    options: &mut Options,
) -> Result<Box<dyn BlockDriver>> {
    let filename = options
        .take("filename")
        .ok_or_else(|| Error::invalid("Parameter 'filename' is required"))?;
    let path = strip_protocol(&filename, bs.format_name());
    let flags = bs.open_flags();
    let locking = match options.take("locking").as_deref() {
        None | Some("auto") | Some("on") => true,
        Some("off") => false,
        Some(other) => {
            return Err(Error::invalid(format!(
                "Parameter 'locking' does not accept value '{other}'"
            )))
        }
    };
    for ignored in ["x-check-cache-dropped", "pr-manager", "drop-cache"] {
        options.take(ignored);
    }
    let fd = open_fd(&path, raw_parse_flags(flags), 0)
        .map_err(|e| Error::with_errno_message(e.errno(), format!("Could not open '{path}'")))?;
    host_device::check_kind(bs.format_name(), &filename, fd.as_raw_fd())?;
    if flags.aio == AioMode::IoUring {
        AioContext::current().io_uring()?;
    }
    if locking {
        let (perm, shared) = permissions(flags.read_only, flags.force_share);
        lock_image(fd.as_raw_fd(), perm, shared, &path)?;
    }
    let alignment = if flags.cache.direct {
        probe_alignment(fd.as_raw_fd())
    } else {
        1
    };
    bs.set_filename(path);
    let fd = Arc::new(fd);
    Ok(Box::new(FileDriver {
        fd: RefCell::new(fd.clone()),
        lock_fd: locking.then_some(fd),
        aio: flags.aio,
        direct: Cell::new(flags.cache.direct),
        alignment: Cell::new(alignment),
        data_extent: Cell::new(None),
    }))
}

/// Forgets the cached data extent when dropped: at the end of an operation that may make
/// holes, however it ends.
struct ForgetExtent<'a>(&'a Cell<Option<(u64, u64)>>);

impl Drop for ForgetExtent<'_> {
    fn drop(&mut self) {
        self.0.set(None);
    }
}

/// A new descriptor for a reopen that changes read-only or O_DIRECT (raw_reopen_prepare),
/// with its alignment; the image locks move to the new permissions at once.
struct FileReopen {
    fd: Option<(Arc<OwnedFd>, u32)>,
    direct: bool,
}

impl FileDriver {
    fn reopen_prepare(
        &self,
        bs: &BlockDriverState,
        opts: &mut Options,
        flags: OpenFlags,
    ) -> Result<Box<dyn std::any::Any>> {
        opts.take("x-check-cache-dropped");
        let old = bs.open_flags();
        if old.read_only == flags.read_only && old.cache.direct == flags.cache.direct {
            return Ok(Box::new(FileReopen {
                fd: None,
                direct: flags.cache.direct,
            }));
        }
        let filename = bs.filename();
        let path = strip_protocol(&filename, bs.format_name());
        let fd = open_fd(&path, raw_parse_flags(flags), 0).map_err(|e| {
            Error::with_errno_message(e.errno(), format!("Could not reopen '{path}'"))
        })?;
        if let Some(lock_fd) = &self.lock_fd {
            let (perm, shared) = permissions(flags.read_only, flags.force_share);
            lock_image(lock_fd.as_raw_fd(), perm, shared, &path)?;
        }
        let alignment = if flags.cache.direct {
            probe_alignment(fd.as_raw_fd())
        } else {
            1
        };
        Ok(Box::new(FileReopen {
            fd: Some((Arc::new(fd), alignment)),
            direct: flags.cache.direct,
        }))
    }
}

/// What a tool's open holds and shares (blk_new_open with BDRV_O_NO_SHARE unless -U).
fn permissions(read_only: bool, force_share: bool) -> (u32, u32) {
    let perm = if read_only {
        locking::PERM_CONSISTENT_READ
    } else {
        locking::PERM_CONSISTENT_READ | locking::PERM_WRITE | locking::PERM_RESIZE
    };
    let shared = if force_share {
        locking::PERM_ALL
    } else {
        locking::PERM_CONSISTENT_READ | locking::PERM_WRITE_UNCHANGED
    };
    (perm, shared)
}

impl FileDriver {
    /// The descriptor requests use now.
    fn fd(&self) -> Arc<OwnedFd> {
        self.fd.borrow().clone()
    }

    /// One read or write through the selected engine (raw_co_prw).
    async fn co_prw(&self, offset: u64, qiov: &IoVector, write: bool) -> Result<()> {
        // O_DIRECT needs aligned memory; long vectors exceed IOV_MAX: both use a bounce buffer.
        let needs_bounce = (self.direct.get() && !qiov.is_aligned(self.alignment.get() as usize))
            || qiov.niov() > IOV_MAX;
        if needs_bounce {
            let bounce = IoVector::alloc(qiov.len());
            if write {
                bounce.copy_from(0, qiov, 0, qiov.len());
            }
            self.co_prw_engine(offset, &bounce, write).await?;
            if !write {
                qiov.copy_from(0, &bounce, 0, qiov.len());
            }
            return Ok(());
        }
        self.co_prw_engine(offset, qiov, write).await
    }

    async fn co_prw_engine(&self, offset: u64, qiov: &IoVector, write: bool) -> Result<()> {
        match self.aio {
            AioMode::Threads => {
                let fd = self.fd();
                let qiov = qiov.clone();
                let pool = AioContext::current().thread_pool();
                pool.submit(move || blocking_rw(fd.as_raw_fd(), &qiov, offset, write))
                    .await
            }
            AioMode::IoUring => self.co_prw_uring(offset, qiov, write).await,
        }
    }

    /// io_uring may complete short: resubmit the rest, zero-fill at end of file.
    async fn co_prw_uring(&self, offset: u64, qiov: &IoVector, write: bool) -> Result<()> {
        let engine = AioContext::current().io_uring()?;
        // Held to the end, so that a reopen cannot close it under the ring.
        let fd = self.fd();
        let total = qiov.len();
        let mut done = 0;
        while done < total {
            // Only a short completion needs the rest as a vector of its own.
            let rest;
            let part = if done == 0 {
                qiov
            } else {
                rest = qiov.slice(done, total - done);
                &rest
            };
            let pos = offset + done as u64;
            let n = if write {
                engine.pwritev(fd.as_raw_fd(), part, pos).await?
            } else {
                engine.preadv(fd.as_raw_fd(), part, pos).await?
            };
            if n == 0 {
                if write {
                    return Err(Error::from_errno(libc::ENOSPC));
                }
                qiov.fill(done, total - done, 0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(RawFd) -> R + Send + 'static,
    ) -> R {
        let fd = self.fd();
        AioContext::current()
            .thread_pool()
            .submit(move || work(fd.as_raw_fd()))
            .await
    }
}

#[async_trait(?Send)]
impl BlockDriver for FileDriver {
    /// Opens the file again in the new mode and moves the image locks to the new
    /// descriptor (raw_reopen_prepare/commit); on failure the old one stays in use.
    async fn co_preadv(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        self.co_prw(offset, qiov, false).await
    }

    async fn co_pwritev(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        self.co_prw(offset, qiov, true).await
    }

    async fn co_pwrite_zeroes(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        let may_unmap = flags.contains(RequestFlags::MAY_UNMAP);
        // Forgotten before (a hole may be punched) and after (a status taken meanwhile).
        self.data_extent.set(None);
        let _forget = ForgetExtent(&self.data_extent);
        self.blocking(move |fd| {
            let size = file_size(fd)?;
            if may_unmap && offset + bytes <= size {
                let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                if fallocate(fd, punch, offset, bytes).is_ok() {
                    return Ok(());
                }
            }
            fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, offset, bytes)
        })
        .await
    }

    async fn co_pdiscard(&self, _bs: &BlockDriverState, offset: u64, bytes: u64) -> Result<()> {
        self.data_extent.set(None);
        let _forget = ForgetExtent(&self.data_extent);
        self.blocking(move |fd| {
            fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                bytes,
            )
        })
        .await
    }

    async fn co_flush_to_disk(&self, _bs: &BlockDriverState) -> Result<()> {
        match self.aio {
            AioMode::IoUring => {
                AioContext::current()
                    .io_uring()?
                    .fdatasync(self.fd().as_raw_fd())
                    .await
            }
            AioMode::Threads => {
                self.blocking(|fd| {
                    // SAFETY: plain syscall on our descriptor.
                    if unsafe { libc::fdatasync(fd) } < 0 {
                        Err(Error::last_os_error())
                    } else {
                        Ok(())
                    }
                })
                .await
            }
        }
    }

    /// SEEK_DATA/SEEK_HOLE tell data from holes (find_allocation).
    async fn co_block_status(
        &self,
        _bs: &BlockDriverState,
        want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        let data_at = |bytes| {
            let mut s = BlockStatus::new(StatusFlags::DATA | StatusFlags::OFFSET_VALID, bytes);
            s.map = offset;
            s
        };
        if !want_zero {
            return Ok(data_at(bytes));
        }
        if let Some((start, end)) = self.data_extent.get() {
            if (start..end).contains(&offset) {
                return Ok(data_at((end - offset).min(bytes)));
            }
        }
        let fd = self.fd().as_raw_fd();
        // SAFETY: lseek on our own descriptor.
        let data = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
        let (flags, len) = if data < 0 {
            // ENXIO: no data after offset; anything else: be conservative and say data.
            match Error::last_os_error().errno() {
                libc::ENXIO => (StatusFlags::ZERO, bytes),
                _ => return Ok(data_at(bytes)),
            }
        } else if data as u64 > offset {
            (StatusFlags::ZERO, (data as u64 - offset).min(bytes))
        } else {
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_HOLE) };
            if hole < 0 || (hole as u64) <= offset {
                return Ok(data_at(bytes));
            }
            // A data extent ends in the middle of a request-alignment block only at a
            // partial block at EOF: it counts whole, as a read of it would (QEMU rounds up).
            let len = (hole as u64 - offset).next_multiple_of(self.alignment.get() as u64);
            self.data_extent.set(Some((offset, offset + len)));
            (StatusFlags::DATA, len.min(bytes))
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
        self.data_extent.set(None);
        let _forget = ForgetExtent(&self.data_extent);
        self.blocking(move |fd| regular_truncate(fd, offset, prealloc))
            .await
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        file_size(self.fd().as_raw_fd())
    }

    async fn co_get_allocated_file_size(&self, _bs: &BlockDriverState) -> Result<Option<u64>> {
        // SAFETY: fstat into a zeroed stat struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(self.fd().as_raw_fd(), &mut st) } < 0 {
            return Err(Error::last_os_error());
        }
        Ok(Some(st.st_blocks as u64 * 512))
    }

    /// ImageInfoSpecificFile: the extent size hint, when the file system has one set.
    fn get_specific_info(&self, _bs: &BlockDriverState) -> Option<serde_json::Value> {
        let mut data = serde_json::Map::new();
        if let Some(hint) = extent_size_hint(self.fd().as_raw_fd()) {
            data.insert("extent-size-hint".into(), hint.into());
        }
        Some(serde_json::json!({"type": "file", "data": data}))
    }

    fn refresh_limits(&self, _bs: &BlockDriverState) -> BlockLimits {
        BlockLimits {
            request_alignment: self.alignment.get(),
            min_mem_alignment: if self.direct.get() {
                self.alignment.get() as usize
            } else {
                1
            },
            ..BlockLimits::default()
        }
    }

    fn has_zero_init(&self, _bs: &BlockDriverState) -> bool {
        true
    }

    async fn reopen_prepare(
        &self,
        bs: &BlockDriverState,
        opts: &mut Options,
        flags: OpenFlags,
    ) -> Option<Result<Box<dyn std::any::Any>>> {
        Some(FileDriver::reopen_prepare(self, bs, opts, flags))
    }

    async fn reopen_commit(&self, _bs: &BlockDriverState, staged: Box<dyn std::any::Any>) {
        if let Ok(r) = staged.downcast::<FileReopen>() {
            if let Some((fd, alignment)) = r.fd {
                *self.fd.borrow_mut() = fd;
                self.alignment.set(alignment);
            }
            self.direct.set(r.direct);
        }
    }

    fn mutable_opts(&self) -> &'static [&'static str] {
        &["x-check-cache-dropped"]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
