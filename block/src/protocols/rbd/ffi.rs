//! The librados / librbd calls the driver uses, loaded at run time with dlopen.
//!
//! QEMU links block/rbd.c against librbd and builds it as a loadable module
//! (block-rbd.so), so that a qemu without Ceph installed still starts. Loading
//! `librbd.so.1` and `librados.so.2` on first use plays the same role here: rqemu builds
//! without Ceph's headers, and only opening an `rbd:` image needs the libraries. The
//! signatures are those of Ceph 16's <rados/librados.h> and <rbd/librbd.h>.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// A cluster handle (rados_t).
pub type RadosT = *mut c_void;
/// A pool I/O context (rados_ioctx_t).
pub type IoCtxT = *mut c_void;
/// An open image (rbd_image_t).
pub type ImageT = *mut c_void;
/// An asynchronous request (rbd_completion_t).
pub type CompletionT = *mut c_void;
/// Called by librbd, on one of its threads, when a request completes (rbd_callback_t).
pub type CallbackT = extern "C" fn(c: CompletionT, arg: *mut c_void);
/// Called by rbd_diff_iterate2 for each changed extent: offset, length, exists, arg.
pub type DiffCallbackT = extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// The image's fast-diff feature: block status can ask the object map (RBD_FEATURE_FAST_DIFF).
pub const RBD_FEATURE_FAST_DIFF: u64 = 1 << 4;
/// The object map is out of date; diffs would lie (RBD_FLAG_FAST_DIFF_INVALID).
pub const RBD_FLAG_FAST_DIFF_INVALID: u64 = 1 << 1;
/// Write zeroes without deallocating (RBD_WRITE_ZEROES_FLAG_THICK_PROVISION).
pub const RBD_WRITE_ZEROES_FLAG_THICK_PROVISION: c_int = 1;

/// rbd_image_info_t.
#[repr(C)]
pub struct ImageInfo {
    /// Image size in bytes.
    pub size: u64,
    /// Object size in bytes.
    pub obj_size: u64,
    /// Number of objects.
    pub num_objs: u64,
    /// log2 of the object size.
    pub order: c_int,
    /// Prefix of the image's object names.
    pub block_name_prefix: [c_char; 24],
    /// Pool of the parent image (clones), -1 if none.
    pub parent_pool: i64,
    /// Name of the parent image.
    pub parent_name: [c_char; 96],
}

/// rbd_snap_info_t.
#[repr(C)]
pub struct SnapInfo {
    /// Snapshot id.
    pub id: u64,
    /// Image size when the snapshot was taken.
    pub size: u64,
    /// Snapshot name, owned by librbd until rbd_snap_list_end.
    pub name: *const c_char,
}

/// Declares the function table and its loader from one list of C signatures.
macro_rules! ceph_api {
    ($($lib:ident fn $name:ident($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// Entry points into librados and librbd.
        #[allow(non_snake_case)]
        pub struct Api {
            $(
                #[doc = concat!("`", stringify!($name), "`.")]
                pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,
            )*
        }

        impl Api {
            /// Resolves every symbol, or names the first one missing.
            fn resolve(libs: &Libraries) -> std::result::Result<Api, String> {
                Ok(Api {
                    $(
                        // SAFETY: the symbol comes from the Ceph library whose header declares
                        // it with exactly this signature; a fn pointer has a pointer's size.
                        $name: unsafe {
                            std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(
                                symbol(libs.$lib, stringify!($name))?,
                            )
                        },
                    )*
                })
            }
        }
    };
}

ceph_api! {
    rados fn rados_create(*mut RadosT, *const c_char) -> c_int;
    rados fn rados_conf_read_file(RadosT, *const c_char) -> c_int;
    rados fn rados_conf_set(RadosT, *const c_char, *const c_char) -> c_int;
    rados fn rados_connect(RadosT) -> c_int;
    rados fn rados_shutdown(RadosT);
    rados fn rados_ioctx_create(RadosT, *const c_char, *mut IoCtxT) -> c_int;
    rados fn rados_ioctx_destroy(IoCtxT);
    rados fn rados_ioctx_set_namespace(IoCtxT, *const c_char);
    rbd fn rbd_version(*mut c_int, *mut c_int, *mut c_int);
    rbd fn rbd_create(IoCtxT, *const c_char, u64, *mut c_int) -> c_int;
    rbd fn rbd_open(IoCtxT, *const c_char, *mut ImageT, *const c_char) -> c_int;
    rbd fn rbd_close(ImageT) -> c_int;
    rbd fn rbd_stat(ImageT, *mut ImageInfo, usize) -> c_int;
    rbd fn rbd_get_size(ImageT, *mut u64) -> c_int;
    rbd fn rbd_resize(ImageT, u64) -> c_int;
    rbd fn rbd_get_features(ImageT, *mut u64) -> c_int;
    rbd fn rbd_get_flags(ImageT, *mut u64) -> c_int;
    rbd fn rbd_diff_iterate2(ImageT, *const c_char, u64, u64, u8, u8, DiffCallbackT, *mut c_void) -> c_int;
    rbd fn rbd_aio_create_completion(*mut c_void, CallbackT, *mut CompletionT) -> c_int;
    rbd fn rbd_aio_get_return_value(CompletionT) -> isize;
    rbd fn rbd_aio_release(CompletionT);
    rbd fn rbd_aio_readv(ImageT, *const libc::iovec, c_int, u64, CompletionT) -> c_int;
    rbd fn rbd_aio_writev(ImageT, *const libc::iovec, c_int, u64, CompletionT) -> c_int;
    rbd fn rbd_aio_discard(ImageT, u64, u64, CompletionT) -> c_int;
    rbd fn rbd_aio_write_zeroes(ImageT, u64, usize, CompletionT, c_int, c_int) -> c_int;
    rbd fn rbd_aio_flush(ImageT, CompletionT) -> c_int;
    rbd fn rbd_snap_list(ImageT, *mut SnapInfo, *mut c_int) -> c_int;
    rbd fn rbd_snap_list_end(*mut SnapInfo);
    rbd fn rbd_snap_create(ImageT, *const c_char) -> c_int;
    rbd fn rbd_snap_remove(ImageT, *const c_char) -> c_int;
    rbd fn rbd_snap_rollback(ImageT, *const c_char) -> c_int;
}

fn dlerror_text() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl* call.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: non-NULL, NUL-terminated (see above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

fn library(name: &str) -> std::result::Result<*mut c_void, String> {
    let c = CString::new(name).expect("library names have no NUL");
    // SAFETY: dlopen with a NUL-terminated name; the handle is kept for the process's life.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(dlerror_text());
    }
    Ok(handle)
}

fn symbol(lib: *mut c_void, name: &str) -> std::result::Result<*mut c_void, String> {
    let c = CString::new(name).expect("symbol names have no NUL");
    // SAFETY: `lib` is a live dlopen handle and `c` a NUL-terminated symbol name.
    let p = unsafe { libc::dlsym(lib, c.as_ptr()) };
    if p.is_null() {
        return Err(format!("{name}: {}", dlerror_text()));
    }
    Ok(p)
}

/// The dlopen handles of the two libraries.
struct Libraries {
    rados: *mut c_void,
    rbd: *mut c_void,
}

fn load() -> std::result::Result<Api, String> {
    Api::resolve(&Libraries {
        rados: library("librados.so.2")?,
        rbd: library("librbd.so.1")?,
    })
}

/// The loaded libraries, or the error that says why rbd cannot be used on this host.
pub fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(|why| {
        Error::not_supported(format!(
            "rbd support is not available: librbd not found ({why}); install librbd1"
        ))
    })
}

/// librbd's version as (major, minor).
pub fn version(api: &Api) -> (c_int, c_int) {
    let (mut major, mut minor, mut extra) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    unsafe { (api.rbd_version)(&mut major, &mut minor, &mut extra) };
    (major, minor)
}

/// A C string for librbd, refusing names with NUL bytes.
pub fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::invalid(format!("'{s}' contains a NUL byte")))
}
