//! Connecting to a Ceph cluster and opening an image (QEMU's qemu_rbd_connect and the
//! first half of qemu_rbd_open in block/rbd.c).
//!
//! Every call here may wait on the network (rados_connect waits up to `client mount
//! timeout` for a monitor), so the driver runs them on the AioContext's thread pool: the
//! handles below are therefore `Send`, and each owns what it must release on drop.

use std::ffi::{c_char, CStr};
use std::ptr;

use super::ffi::{self, cstr, Api, ImageT, IoCtxT, RadosT};
use super::location::RbdLocation;
use crate::error::{Error, Result};

/// A connected cluster and an I/O context on the image's pool and namespace.
pub struct Cluster {
    api: &'static Api,
    cluster: RadosT,
    ioctx: IoCtxT,
}

// SAFETY: librados handles may be used from any thread; the driver uses each from one at a
// time (the thread pool while connecting, then the home thread).
unsafe impl Send for Cluster {}

fn errno_of(r: i32) -> i32 {
    -r
}

impl Cluster {
    /// Connects as `loc` says, with the client cache on unless `nocache` (cache.direct).
    pub fn connect(loc: &RbdLocation, key: Option<&str>, nocache: bool) -> Result<Cluster> {
        let api = ffi::api()?;
        let user = loc.user.as_deref().map(cstr).transpose()?;
        let mut cluster: RadosT = ptr::null_mut();
        // SAFETY: out-pointer and an optional NUL-terminated id, both live across the call.
        let r = unsafe {
            (api.rados_create)(
                &mut cluster,
                user.as_ref().map_or(ptr::null(), |u| u.as_ptr()),
            )
        };
        if r < 0 {
            return Err(Error::with_errno_message(errno_of(r), "error initializing"));
        }
        // From here on the handle is released by Drop, ioctx still null.
        let mut c = Cluster {
            api,
            cluster,
            ioctx: ptr::null_mut(),
        };
        let conf = loc.conf.as_deref().map(cstr).transpose()?;
        // SAFETY: live cluster handle; NULL asks for the default configuration search path.
        let r = unsafe {
            (api.rados_conf_read_file)(cluster, conf.as_ref().map_or(ptr::null(), |c| c.as_ptr()))
        };
        // Without an explicit file a missing default configuration is not an error.
        if let (Some(path), true) = (&loc.conf, r < 0) {
            return Err(Error::with_errno_message(
                errno_of(r),
                format!("error reading conf file {path}"),
            ));
        }
        for (name, value) in &loc.keyvalue_pairs {
            c.conf_set(name, value)
                .map_err(|e| Error::with_errno_message(e, format!("invalid conf option {name}")))?;
        }
        if !loc.servers.is_empty() {
            c.conf_set("mon_host", &loc.servers.join(";"))
                .map_err(|e| Error::with_errno_message(e, "invalid mon_host"))?;
        }
        if let Some(key) = key {
            c.conf_set("key", key)
                .map_err(|e| Error::with_errno_message(e, "Could not set 'key'"))?;
        }
        if !loc.auth_client_required.is_empty() {
            c.conf_set("auth_client_required", &loc.auth_client_required.join(";"))
                .map_err(|e| {
                    Error::with_errno_message(e, "Could not set 'auth_client_required'")
                })?;
        }
        // librbd without this option simply does not cache, so failure is harmless.
        let _ = c.conf_set("rbd_cache", if nocache { "false" } else { "true" });
        // SAFETY: live, configured cluster handle.
        let r = unsafe { (api.rados_connect)(cluster) };
        if r < 0 {
            return Err(Error::with_errno_message(errno_of(r), "error connecting"));
        }
        let pool = cstr(&loc.pool)?;
        // SAFETY: connected handle, NUL-terminated pool name, out-pointer.
        let r = unsafe { (api.rados_ioctx_create)(cluster, pool.as_ptr(), &mut c.ioctx) };
        if r < 0 {
            c.ioctx = ptr::null_mut();
            return Err(Error::with_errno_message(
                errno_of(r),
                format!("error opening pool {}", loc.pool),
            ));
        }
        let ns = cstr(loc.namespace.as_deref().unwrap_or_default())?;
        // SAFETY: live ioctx; librados copies the namespace.
        unsafe { (api.rados_ioctx_set_namespace)(c.ioctx, ns.as_ptr()) };
        Ok(c)
    }

    /// Sets one Ceph option on the unconnected handle; the errno on failure.
    fn conf_set(&self, name: &str, value: &str) -> std::result::Result<(), i32> {
        let (n, v) = (
            cstr(name).map_err(|e| e.errno())?,
            cstr(value).map_err(|e| e.errno())?,
        );
        // SAFETY: live handle and two NUL-terminated strings librados copies.
        let r = unsafe { (self.api.rados_conf_set)(self.cluster, n.as_ptr(), v.as_ptr()) };
        if r < 0 {
            Err(errno_of(r))
        } else {
            Ok(())
        }
    }

    /// Creates an image of `size` bytes with objects of 2^`order` bytes (None: Ceph's default).
    pub fn create_image(&self, name: &str, size: u64, order: Option<i32>) -> Result<()> {
        let n = cstr(name)?;
        let mut order = order.unwrap_or(0);
        // SAFETY: live ioctx, NUL-terminated name, in/out order.
        let r = unsafe { (self.api.rbd_create)(self.ioctx, n.as_ptr(), size, &mut order) };
        if r < 0 {
            return Err(Error::with_errno_message(errno_of(r), "error rbd create"));
        }
        Ok(())
    }

    /// Opens `name` at its head or, read-only, at `snapshot`.
    pub fn open_image(self, name: &str, snapshot: Option<&str>) -> Result<Image> {
        let n = cstr(name)?;
        let snap = snapshot.map(cstr).transpose()?;
        let mut image: ImageT = ptr::null_mut();
        // SAFETY: live ioctx, NUL-terminated names, out-pointer.
        let r = unsafe {
            (self.api.rbd_open)(
                self.ioctx,
                n.as_ptr(),
                &mut image,
                snap.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
            )
        };
        if r < 0 {
            return Err(Error::with_errno_message(
                errno_of(r),
                format!("error reading header from {name}"),
            ));
        }
        Ok(Image {
            api: self.api,
            image,
            _cluster: self,
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: handles created by this object, released once, images closed before
        // (an Image holds its Cluster and drops it after rbd_close).
        unsafe {
            if !self.ioctx.is_null() {
                (self.api.rados_ioctx_destroy)(self.ioctx);
            }
            (self.api.rados_shutdown)(self.cluster);
        }
    }
}

/// An open image, keeping its cluster connection alive.
pub struct Image {
    api: &'static Api,
    image: ImageT,
    _cluster: Cluster,
}

// SAFETY: librbd images are thread-safe; requests may be issued from any thread.
unsafe impl Send for Image {}
// SAFETY: as above; the driver shares it with thread-pool jobs that only issue librbd calls.
unsafe impl Sync for Image {}

/// A librbd return code as a Result (negative errno on failure).
pub fn check(r: i32) -> Result<()> {
    if r < 0 {
        Err(Error::from_errno(-r))
    } else {
        Ok(())
    }
}

impl Image {
    /// The library's entry points.
    pub fn api(&self) -> &'static Api {
        self.api
    }

    /// The raw handle, for the calls in `aio` and `status`.
    pub fn raw(&self) -> ImageT {
        self.image
    }

    /// rbd_stat: size and object size.
    pub fn stat(&self) -> Result<ffi::ImageInfo> {
        // SAFETY: an all-zero ImageInfo is valid (integers and arrays of c_char).
        let mut info: ffi::ImageInfo = unsafe { std::mem::zeroed() };
        // SAFETY: live image, out-pointer of the size given.
        check(unsafe {
            (self.api.rbd_stat)(self.image, &mut info, std::mem::size_of::<ffi::ImageInfo>())
        })?;
        Ok(info)
    }

    /// The image's current size.
    pub fn size(&self) -> Result<u64> {
        let mut size = 0;
        // SAFETY: live image, out-pointer.
        check(unsafe { (self.api.rbd_get_size)(self.image, &mut size) })?;
        Ok(size)
    }

    /// Resizes the image.
    pub fn resize(&self, size: u64) -> Result<()> {
        // SAFETY: live image.
        check(unsafe { (self.api.rbd_resize)(self.image, size) })
    }

    /// Whether diffs may be asked of the object map (fast-diff on and valid).
    pub fn fast_diff_usable(&self) -> Result<bool> {
        let (mut features, mut flags) = (0, 0);
        // SAFETY: live image, out-pointers.
        check(unsafe { (self.api.rbd_get_features)(self.image, &mut features) })?;
        if features & ffi::RBD_FEATURE_FAST_DIFF == 0 {
            return Ok(false);
        }
        // SAFETY: live image, out-pointer.
        check(unsafe { (self.api.rbd_get_flags)(self.image, &mut flags) })?;
        Ok(flags & ffi::RBD_FLAG_FAST_DIFF_INVALID == 0)
    }

    /// Snapshot names and sizes, in librbd's order.
    pub fn snapshots(&self) -> Result<Vec<(String, u64)>> {
        let mut max: i32 = 16;
        loop {
            // SAFETY: an all-zero SnapInfo is valid (integers and a null pointer).
            let mut snaps: Vec<ffi::SnapInfo> =
                (0..max).map(|_| unsafe { std::mem::zeroed() }).collect();
            // SAFETY: `snaps` has room for `max` entries; librbd raises `max` on ERANGE.
            let r = unsafe { (self.api.rbd_snap_list)(self.image, snaps.as_mut_ptr(), &mut max) };
            if r == -libc::ERANGE {
                continue;
            }
            check(r)?;
            let list = snaps[..r as usize]
                .iter()
                // SAFETY: librbd filled `r` entries with NUL-terminated names.
                .map(|s| (unsafe { cstr_lossy(s.name) }, s.size))
                .collect();
            // SAFETY: frees the names librbd allocated into this array.
            unsafe { (self.api.rbd_snap_list_end)(snaps.as_mut_ptr()) };
            return Ok(list);
        }
    }

    /// Runs one snapshot call (create, remove, rollback) on the named snapshot.
    pub fn snap_op(
        &self,
        op: unsafe extern "C" fn(ImageT, *const c_char) -> i32,
        name: &str,
    ) -> Result<()> {
        let n = cstr(name)?;
        // SAFETY: `op` is one of librbd's snapshot calls taking a live image and a name.
        check(unsafe { op(self.image, n.as_ptr()) })
    }
}

/// Copies a C string librbd owns.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
unsafe fn cstr_lossy(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the caller promises a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: the image was opened by this object and is closed once; no request is in
        // flight (the node drains before it closes).
        unsafe { (self.api.rbd_close)(self.image) };
    }
}
