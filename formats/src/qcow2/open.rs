//! Opening an image (QEMU's qcow2_open and qcow2_do_open in block/qcow2.c): the header is
//! read and checked, runtime options taken, the metadata loaded, the encryption unlocked
//! and the backing file opened.

use std::cell::{Cell, RefCell};

use block::coroutine::CoMutex;
use block::coroutine::CoQueue;
use block::driver::BlockDriver;
use block::open::bdrv_open_backing;
use block::{BlockDriverState, Error, Options, Result};

use super::crypto::Qcow2Crypto;
use super::header::{self, Header};
use super::l2::Geometry;
use super::state::Meta;
use super::{bitmaps, data_file, read_bytes, runtime_opts, Qcow2};

async fn read_first_cluster(file: &BlockDriverState) -> Result<Vec<u8>> {
    let head = read_bytes(file, 0, 512).await?;
    if head.len() < 24 || head[0..4] != header::QCOW_MAGIC.to_be_bytes() {
        return Err(Error::invalid("Image is not in qcow2 format"));
    }
    let bits = u32::from_be_bytes(head[20..24].try_into().unwrap());
    if !(header::MIN_CLUSTER_BITS..=header::MAX_CLUSTER_BITS).contains(&bits) {
        return Ok(head);
    }
    read_bytes(file, 0, 1 << bits).await
}

/// Whether refcount updates may be deferred behind the dirty bit: the `lazy-refcounts`
/// option, by default the header's compatible bit (QCOW2_OPT_LAZY_REFCOUNTS).
fn take_lazy_refcounts(options: &mut Options, h: &Header) -> Result<bool> {
    let lazy = options
        .take_bool("lazy-refcounts")?
        .unwrap_or(h.compatible_features & header::COMPAT_LAZY_REFCOUNTS != 0);
    if lazy && h.version < 3 {
        return Err(Error::invalid(
            "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level",
        ));
    }
    Ok(lazy)
}

pub(super) async fn open(
    bs: &BlockDriverState,
    options: &mut Options,
) -> Result<Box<dyn BlockDriver>> {
    let file = bs.file().expect("format nodes have a file child");
    let key_secret = options.get("encrypt.key-secret").map(str::to_string);
    let first = read_first_cluster(&file).await?;
    let mut h = Header::parse(&first)?;
    h.check_incompatible()?;
    let writable = !bs.is_read_only();
    let checking = bs.open_flags().check;
    if writable && !checking && h.incompatible_features & header::INCOMPAT_CORRUPT != 0 {
        return Err(Error::new(
            libc::EACCES,
            "qcow2: Image is corrupt; cannot be opened read/write",
        ));
    }
    let sizes = runtime_opts::take_cache_options(options, &h)?;
    let lazy_refcounts = take_lazy_refcounts(options, &h)?;
    runtime_opts::take_policies(options)?;
    let no_io = bs.open_flags().no_io;
    let crypto = Qcow2Crypto::open(&file, &h, options, no_io).await?;
    let backing_opt = options.take("backing");
    let backing_opts = options.extract_prefix("backing");
    let data = data_file::open(bs, &h, options).await?;
    let g = Geometry::new(&h);
    let dirty = h.incompatible_features & header::INCOMPAT_DIRTY != 0;
    // Autoclear bits this driver does not know are cleared: what they guarded is stale.
    let kept = h.autoclear_features & (header::AUTOCLEAR_DATA_FILE_RAW | header::AUTOCLEAR_BITMAPS);
    if h.bitmaps_stale {
        bitmaps::warn_stale(h.version);
    }
    let stale_autoclear = writable && (h.autoclear_features != kept || h.bitmaps_stale);
    if stale_autoclear {
        h.autoclear_features = kept;
    }
    let mut meta = Meta::load(file.clone(), h.clone(), writable, sizes).await?;
    meta.data = data.clone();
    let q = Qcow2 {
        meta: CoMutex::new(meta),
        g,
        compression_type: h.compression_type,
        size: Cell::new(h.size),
        allocs: RefCell::new(Vec::new()),
        next_alloc_id: Cell::new(1),
        alloc_done: CoQueue::new(),
        lazy_refcounts: Cell::new(lazy_refcounts),
        info: RefCell::new(h.clone()),
        needs_repair: Cell::new(writable && dirty && !checking),
        repair_lock: CoMutex::new(()),
        data,
        snapshot_infos: RefCell::new(Vec::new()),
        metadata_preallocation: Cell::new(None),
        crypto,
        bitmap_dir: RefCell::new(Vec::new()),
    };
    q.publish_snapshots(&*q.meta.lock().await);
    let mut meta = q.meta.lock().await;
    if stale_autoclear {
        meta.write_header_sync().await?;
    }
    q.load_dirty_bitmaps(bs, &mut meta).await?;
    drop(meta);
    open_backing(bs, &h, backing_opt, backing_opts).await?;
    if let Some(id) = key_secret {
        bs.set_filename(block::open::json_filename(
            bs,
            &[("encrypt.key-secret", &id)],
        ));
    }
    Ok(Box::new(q))
}

/// Opens the backing file the header names, unless options say otherwise
/// (bdrv_open_backing_file).
async fn open_backing(
    bs: &BlockDriverState,
    h: &Header,
    backing_opt: Option<String>,
    backing_opts: Options,
) -> Result<()> {
    if bs.open_flags().no_backing
        || backing_opt.as_deref() == Some("")
        || backing_opt.as_deref() == Some("null")
    {
        return Ok(());
    }
    if let Some(node) = block::open::backing_reference(backing_opt.as_deref(), &backing_opts) {
        bs.attach_child("backing", node);
        return Ok(());
    }
    let name = match (&backing_opt, &h.backing_file) {
        (Some(n), _) => n.clone(),
        (None, Some(n)) => n.clone(),
        (None, None) if backing_opts.is_empty() => return Ok(()),
        (None, None) => String::new(),
    };
    let backing = bdrv_open_backing(bs, &name, h.backing_format.as_deref(), backing_opts).await?;
    bs.attach_child("backing", backing);
    Ok(())
}

/// What a reopen of a qcow2 node stages (qcow2_reopen_prepare): whether it will be
/// writable and its lazy-refcounts setting. The cache sizes are checked like at open; the
/// caches keep the size they were opened with.
struct Qcow2Reopen {
    writable: bool,
    lazy_refcounts: bool,
}

/// Checks a qcow2 node's new options, and writes back what a node that becomes read-only
/// must not keep in its caches.
pub(super) async fn reopen_prepare(
    q: &Qcow2,
    bs: &BlockDriverState,
    options: &mut Options,
    flags: block::OpenFlags,
) -> Result<Box<dyn std::any::Any>> {
    let h = q.info.borrow().clone();
    runtime_opts::take_cache_options(options, &h)?;
    let lazy_refcounts = take_lazy_refcounts(options, &h)?;
    runtime_opts::take_policies(options)?;
    if flags.read_only && !bs.is_read_only() {
        // What the node still caches must reach its file while that is writable.
        bs.co_flush().await?;
    } else if !bs.is_read_only() {
        // The caches are started afresh on commit: what they hold dirty is written back
        // now (qcow2_update_options_prepare flushes them).
        q.meta.lock().await.caches.flush_all().await?;
    } else if !flags.read_only
        && q.meta.lock().await.header.incompatible_features & header::INCOMPAT_CORRUPT != 0
    {
        // A corrupt image stays read-only.
        return Err(Error::new(
            libc::EACCES,
            "qcow2: Image is corrupt; cannot be opened read/write",
        ));
    }
    Ok(Box::new(Qcow2Reopen {
        writable: !flags.read_only,
        lazy_refcounts,
    }))
}

/// Applies a prepared reopen (qcow2_reopen_commit).
pub(super) async fn reopen_commit(
    q: &Qcow2,
    bs: &BlockDriverState,
    staged: Box<dyn std::any::Any>,
) {
    if let Ok(r) = staged.downcast::<Qcow2Reopen>() {
        let mut meta = q.meta.lock().await;
        meta.writable = r.writable;
        // A reopen may have given the node another `file` (a filter inserted, or swapped).
        if let Some(file) = bs.file() {
            meta.caches.set_file(file.clone());
            meta.file = file;
        }
        drop(meta);
        q.lazy_refcounts.set(r.lazy_refcounts);
    }
}
