//! BlockDriverState: one node of the block graph, and how a graph is opened.
//!
//! QEMU's block.c. A node is a driver instance plus what the generic layer needs around it:
//! its children (`file` for a format's container, `backing` for copy-on-write chains), its open
//! flags, request limits, the cached length, and the list of requests in flight. Opening
//! (`bdrv_open`) reads the options, opens the `file` child first for a format (probing the
//! format from the child's first bytes when none was given), then the driver itself.

use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::coroutine::{CoQueue, InFlight};
use crate::driver::{
    find_driver, find_protocol, probe_format, BlockDriver, BlockLimits, DriverClass,
};
use crate::error::{Error, Result};
use crate::io::TrackedRequests;
use crate::iov::IoVector;
use crate::options::Options;

/// How data moves between the node and the host page cache (QEMU's cache modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheMode {
    /// Bypass the host page cache (O_DIRECT; `cache.direct`).
    pub direct: bool,
    /// Ignore flush requests (`cache.no-flush`; cache=unsafe).
    pub no_flush: bool,
    /// Complete writes once in the host cache; otherwise every write is FUA (writethrough).
    pub writeback: bool,
}

impl CacheMode {
    /// Parses QEMU's `-t` / `cache=` names: writeback (default), none/off, writethrough,
    /// directsync, unsafe.
    pub fn parse(name: &str) -> Result<CacheMode> {
        let (direct, no_flush, writeback) = match name {
            "writeback" => (false, false, true),
            "none" | "off" => (true, false, true),
            "writethrough" => (false, false, false),
            "directsync" => (true, false, false),
            "unsafe" => (false, true, true),
            _ => return Err(Error::invalid(format!("Invalid cache option: {name}"))),
        };
        Ok(CacheMode {
            direct,
            no_flush,
            writeback,
        })
    }
}

impl Default for CacheMode {
    fn default() -> Self {
        CacheMode {
            direct: false,
            no_flush: false,
            writeback: true,
        }
    }
}

/// Which engine the `file` protocol submits I/O to (`aio=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AioMode {
    /// The thread pool (aio=threads).
    #[default]
    Threads,
    /// io_uring (aio=io_uring).
    IoUring,
}

impl AioMode {
    /// Parses `threads`, `io_uring` (and refuses `native` by name).
    pub fn parse(name: &str) -> Result<AioMode> {
        match name {
            "threads" => Ok(AioMode::Threads),
            "io_uring" => Ok(AioMode::IoUring),
            "native" => Err(Error::not_supported(
                "aio=native (linux-aio) is not supported by rqemu; use threads or io_uring",
            )),
            _ => Err(Error::invalid(format!("Invalid aio option: {name}"))),
        }
    }

    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            AioMode::Threads => "threads",
            AioMode::IoUring => "io_uring",
        }
    }
}

/// Zero detection on writes (`detect-zeroes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DetectZeroes {
    /// No detection.
    #[default]
    Off,
    /// All-zero writes become write-zeroes.
    On,
    /// ...and may unmap, if discard=unmap.
    Unmap,
}

/// Flags a tool or device opens a graph with (QEMU's BDRV_O_* flags). Each becomes the
/// default of the matching option, which children inherit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// Open read-only (no BDRV_O_RDWR).
    pub read_only: bool,
    /// Cache mode.
    pub cache: CacheMode,
    /// Skip image locking conflicts (`-U`, force-share).
    pub force_share: bool,
    /// Do not open the backing file (BDRV_O_NO_BACKING).
    pub no_backing: bool,
    /// Discard requests reach the image (BDRV_O_UNMAP, discard=unmap).
    pub unmap: bool,
    /// I/O engine for the file protocol.
    pub aio: AioMode,
    /// Send writes to a temporary overlay (BDRV_O_SNAPSHOT, `-s`).
    pub snapshot: bool,
    /// Opened by a consistency check (BDRV_O_CHECK): a format may then open a damaged
    /// image read-write so that the check can repair it.
    pub check: bool,
    /// Only metadata is looked at, no guest data is read or written (BDRV_O_NO_IO, what
    /// `qemu-img info` opens with): a format need not open its external data file.
    pub no_io: bool,
}

/// A child link of a node (QEMU's BdrvChild).
#[derive(Clone)]
pub struct BdrvChild {
    /// The role name: "file", "backing", "data-file".
    pub name: String,
    /// The child node.
    pub bs: Rc<BlockDriverState>,
}

/// A node of the block graph.
pub struct BlockDriverState {
    class: &'static DriverClass,
    drv: OnceCell<Box<dyn BlockDriver>>,
    node_name: String,
    filename: RefCell<String>,
    read_only: Cell<bool>,
    flags: OpenFlags,
    pub(crate) detect_zeroes: DetectZeroes,
    children: RefCell<Vec<BdrvChild>>,
    probed: Cell<bool>,
    limits: Cell<BlockLimits>,
    pub(crate) total_bytes: Cell<u64>,
    pub(crate) tracked: TrackedRequests,
    pub(crate) tracked_done: CoQueue,
    pub(crate) in_flight: InFlight,
    /// Files of the overlays above this node while it is a backing file being opened
    /// (canonical paths), to refuse a chain that loops back on itself.
    backing_ancestors: RefCell<Vec<String>>,
    /// Writes finished so far and the count at the last successful flush (write_gen,
    /// flushed_gen).
    pub(crate) write_gen: Cell<u64>,
    pub(crate) flushed_gen: Cell<u64>,
}

static NEXT_NODE: AtomicU64 = AtomicU64::new(1);

impl BlockDriverState {
    fn new(
        class: &'static DriverClass,
        node_name: String,
        filename: String,
        flags: OpenFlags,
        detect_zeroes: DetectZeroes,
    ) -> BlockDriverState {
        BlockDriverState {
            class,
            drv: OnceCell::new(),
            node_name,
            filename: RefCell::new(filename),
            read_only: Cell::new(flags.read_only),
            flags,
            detect_zeroes,
            children: RefCell::new(Vec::new()),
            probed: Cell::new(false),
            limits: Cell::new(BlockLimits::default()),
            total_bytes: Cell::new(0),
            tracked: TrackedRequests::default(),
            tracked_done: CoQueue::new(),
            in_flight: InFlight::default(),
            backing_ancestors: RefCell::new(Vec::new()),
            write_gen: Cell::new(0),
            flushed_gen: Cell::new(0),
        }
    }

    /// The driver's per-node state.
    pub fn drv(&self) -> &dyn BlockDriver {
        self.drv
            .get()
            .expect("node used before its driver was opened")
            .as_ref()
    }

    /// The driver class (format name, probe, create).
    pub fn class(&self) -> &'static DriverClass {
        self.class
    }

    /// The driver's format name (`raw`, `file`, `qcow2`).
    pub fn format_name(&self) -> &'static str {
        self.class.format_name
    }

    /// The node name (`node-name=` or an automatic `#blockN`).
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The filename the node represents (bs->filename).
    pub fn filename(&self) -> String {
        self.filename.borrow().clone()
    }

    /// Sets the filename (drivers refine it during open).
    pub fn set_filename(&self, name: impl Into<String>) {
        *self.filename.borrow_mut() = name.into();
    }

    /// Whether the node is read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only.get()
    }

    /// Whether the format was guessed by probing rather than named (bs->probed): raw then
    /// refuses writes that would make the image probe as another format.
    pub fn was_probed(&self) -> bool {
        self.probed.get()
    }

    /// The flags the node was opened with.
    pub fn open_flags(&self) -> OpenFlags {
        self.flags
    }

    /// Request limits.
    pub fn limits(&self) -> BlockLimits {
        self.limits.get()
    }

    /// The child with the given role.
    pub fn child(&self, name: &str) -> Option<Rc<BlockDriverState>> {
        self.children
            .borrow()
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.bs.clone())
    }

    /// All children, in attach order.
    pub fn children(&self) -> Vec<BdrvChild> {
        self.children.borrow().clone()
    }

    /// The `file` child (a format's container).
    pub fn file(&self) -> Option<Rc<BlockDriverState>> {
        self.child("file")
    }

    /// The `backing` child (copy-on-write source).
    pub fn backing(&self) -> Option<Rc<BlockDriverState>> {
        self.child("backing")
    }

    /// Attaches a child under a role, replacing any previous one.
    pub fn attach_child(&self, name: &str, bs: Rc<BlockDriverState>) {
        let mut children = self.children.borrow_mut();
        children.retain(|c| c.name != name);
        children.push(BdrvChild {
            name: name.to_string(),
            bs,
        });
    }

    /// Detaches the child with a role.
    pub fn detach_child(&self, name: &str) {
        self.children.borrow_mut().retain(|c| c.name != name);
    }

    /// Bytes of the node occupied on the host, if known.
    pub async fn co_get_allocated_file_size(&self) -> Result<Option<u64>> {
        self.drv().co_get_allocated_file_size(self).await
    }

    /// Re-reads the length from the driver (after truncate or a change underneath). Like
    /// QEMU's total_sectors, it is rounded up to whole 512-byte sectors: the tail of a short
    /// file reads as zeroes.
    pub async fn refresh_total_bytes(&self) -> Result<u64> {
        let len = self
            .drv()
            .co_getlength(self)
            .await?
            .checked_next_multiple_of(512)
            .ok_or_else(|| Error::from_errno(libc::EFBIG))?;
        self.total_bytes.set(len);
        Ok(len)
    }

    /// Raises a debug event on this node (bdrv_debug_event, what QEMU's BLKDBG_EVENT calls
    /// on a child): a blkdebug node may then fail later requests or suspend this one.
    pub async fn debug_event(&self, event: crate::filters::blkdebug::BlkdbgEvent) {
        if let Some(wait) = self.drv.get().and_then(|d| d.debug_event(event)) {
            wait.await;
        }
    }

    /// Writes back state and closes the driver (bdrv_close); children close when dropped.
    /// The driver closes even when the flush failed, as in QEMU: it may report what it
    /// could not write back itself.
    pub async fn close(&self) -> Result<()> {
        self.in_flight.drained().await;
        let flushed = if self.is_read_only() {
            Ok(())
        } else {
            self.co_flush().await
        };
        let closed = self.drv().close(self).await;
        flushed.and(closed)
    }
}

impl std::fmt::Debug for BlockDriverState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BlockDriverState({} '{}')",
            self.format_name(),
            self.filename()
        )
    }
}

/// Opens a block graph from a filename and/or options (bdrv_open).
///
/// `filename` may be a path, a `proto:` URI (`null-co://`), or a `json:{...}` pseudo-filename;
/// `options` may name the `driver` and child options (`file.driver`, `file.filename`...).
/// Without a `driver`, the format is probed from the file's first bytes.
pub async fn bdrv_open(
    filename: Option<&str>,
    options: Options,
    flags: OpenFlags,
) -> Result<Rc<BlockDriverState>> {
    if !flags.snapshot {
        return open_node(filename.map(str::to_string), options, flags, true).await;
    }
    let base_flags = OpenFlags {
        read_only: true,
        snapshot: false,
        ..flags
    };
    let base = open_node(filename.map(str::to_string), options, base_flags, true).await?;
    crate::temp_snapshot::bdrv_append_temp_snapshot(base, flags).await
}

/// Generic option keys every node takes, with the flag each one defaults from.
fn apply_flag_defaults(options: &mut Options, flags: &OpenFlags) {
    let onoff = |b: bool| if b { "on" } else { "off" };
    options.set_default("read-only", onoff(flags.read_only));
    options.set_default("cache.direct", onoff(flags.cache.direct));
    options.set_default("cache.no-flush", onoff(flags.cache.no_flush));
    options.set_default("force-share", onoff(flags.force_share));
    options.set_default("discard", if flags.unmap { "unmap" } else { "ignore" });
}

fn take_flag(options: &mut Options, key: &str) -> Result<bool> {
    Ok(options.take_bool(key)?.unwrap_or(false))
}

/// Reads the generic keys back into flags (what the node and its children will use).
fn take_generic_options(
    options: &mut Options,
    mut flags: OpenFlags,
) -> Result<(OpenFlags, DetectZeroes)> {
    flags.read_only = take_flag(options, "read-only")?;
    flags.cache.direct = take_flag(options, "cache.direct")?;
    flags.cache.no_flush = take_flag(options, "cache.no-flush")?;
    flags.force_share = take_flag(options, "force-share")?;
    flags.unmap = match options.take("discard").as_deref() {
        Some("unmap") | Some("on") => true,
        Some("ignore") | Some("off") | None => false,
        Some(other) => return Err(Error::invalid(format!("Invalid discard option: {other}"))),
    };
    if let Some(aio) = options.take("aio") {
        flags.aio = AioMode::parse(&aio)?;
    }
    let detect = match options.take("detect-zeroes").as_deref() {
        None | Some("off") => DetectZeroes::Off,
        Some("on") => DetectZeroes::On,
        Some("unmap") => DetectZeroes::Unmap,
        Some(other) => {
            return Err(Error::invalid(format!(
                "Parameter 'detect-zeroes' does not accept value '{other}'"
            )))
        }
    };
    if flags.force_share && !flags.read_only {
        return Err(Error::invalid(
            "force-share=on can only be used with read-only images",
        ));
    }
    Ok((flags, detect))
}

pub(crate) fn open_node(
    filename: Option<String>,
    mut options: Options,
    flags: OpenFlags,
    allow_probe: bool,
) -> crate::coroutine::LocalBoxFuture<'static, Result<Rc<BlockDriverState>>> {
    Box::pin(async move {
        let mut filename = filename;
        if let Some(json) = filename.as_deref().filter(|f| f.starts_with("json:")) {
            let from_json = Options::parse_json_filename(json)?;
            for (k, v) in from_json.iter() {
                options.set_default(k, v);
            }
            filename = None;
        }
        if filename.is_none() && !is_protocol_opts(&options) {
            filename = options.take("filename");
        }
        let ancestors = options.take(BACKING_ANCESTORS_KEY);
        apply_flag_defaults(&mut options, &flags);
        let (flags, detect_zeroes) = take_generic_options(&mut options, flags)?;
        let node_name = options
            .take("node-name")
            .unwrap_or_else(|| format!("#block{:03}", NEXT_NODE.fetch_add(1, Ordering::Relaxed)));

        let class = match options.take("driver") {
            Some(name) => Some(
                find_driver(&name)
                    .ok_or_else(|| Error::invalid(format!("Unknown driver '{name}'")))?,
            ),
            None => None,
        };
        let bs = match class {
            Some(c) if !c.is_format => {
                if let Some(f) = &filename {
                    options.set_default("filename", f.clone());
                }
                let name = options.get("filename").unwrap_or_default().to_string();
                Rc::new(BlockDriverState::new(
                    c,
                    node_name,
                    name,
                    flags,
                    detect_zeroes,
                ))
            }
            _ => {
                let file = open_file_child(filename.clone(), &mut options, flags).await?;
                let c = match class {
                    Some(c) => c,
                    None if allow_probe => probe(&file).await?,
                    None => return Err(Error::invalid("A block driver must be specified")),
                };
                let bs = Rc::new(BlockDriverState::new(
                    c,
                    node_name,
                    format_node_filename(c.format_name, &file.filename()),
                    flags,
                    detect_zeroes,
                ));
                bs.probed.set(class.is_none());
                bs.attach_child("file", file);
                bs
            }
        };
        if let Some(list) = ancestors {
            *bs.backing_ancestors.borrow_mut() = list.split('\n').map(str::to_string).collect();
        }
        let drv = (bs.class.open)(&bs, &mut options).await?;
        if let Some(key) = options.first_key() {
            let (kind, verb) = if bs.class.is_format {
                ("format", "does not")
            } else {
                ("protocol", "doesn't")
            };
            return Err(Error::invalid(format!(
                "Block {kind} '{}' {verb} support the option '{key}'",
                bs.format_name()
            )));
        }
        assert!(bs.drv.set(drv).is_ok());
        bs.limits.set(bs.drv().refresh_limits(&bs));
        bs.refresh_total_bytes().await?;
        Ok(bs)
    })
}

/// A format node's name: its file's, or when the file is named by a `json:` description
/// (rbd), a description of both, as QEMU's bdrv_refresh_filename builds it.
fn format_node_filename(format: &str, file: &str) -> String {
    match file.strip_prefix("json:") {
        Some(inner) => format!("json:{{\"driver\": \"{format}\", \"file\": {inner}}}"),
        None => file.to_string(),
    }
}

/// Whether options describe a protocol node directly (`driver=file,filename=...`).
fn is_protocol_opts(options: &Options) -> bool {
    options
        .get("driver")
        .and_then(find_driver)
        .is_some_and(|c| !c.is_format)
}

/// Opens the `file` child of a format node from `file.*` options or the filename.
async fn open_file_child(
    filename: Option<String>,
    options: &mut Options,
    flags: OpenFlags,
) -> Result<Rc<BlockDriverState>> {
    open_protocol_child("file", filename, options, flags).await
}

/// Opens a protocol-level child under `role` (`file`, a filter's `image`, qcow2's
/// `data-file`) from `role.*` options or a filename.
pub async fn open_protocol_child(
    role: &str,
    filename: Option<String>,
    options: &mut Options,
    flags: OpenFlags,
) -> Result<Rc<BlockDriverState>> {
    let mut child_opts = options.extract_prefix(role);
    let child_name = options.take(role).or(filename);
    inherit(&mut child_opts, options);
    if !child_opts.contains("driver") {
        let class = match child_opts.get("filename").or(child_name.as_deref()) {
            Some(name) => find_protocol(name)?,
            None => {
                return Err(Error::invalid(format!(
                    "A block device must be specified for \"{role}\""
                )))
            }
        };
        child_opts.set("driver", class.format_name);
    }
    open_node(child_name, child_opts, flags, false).await
}

/// Children inherit the generic options their parent was given explicitly.
fn inherit(child: &mut Options, parent: &Options) {
    for key in [
        "read-only",
        "cache.direct",
        "cache.no-flush",
        "force-share",
        "discard",
        "aio",
    ] {
        if let Some(v) = parent.get(key) {
            child.set_default(key, v);
        }
    }
}

/// Reads the first bytes of a protocol node and picks the format (find_image_format).
async fn probe(file: &Rc<BlockDriverState>) -> Result<&'static DriverClass> {
    const PROBE_BUF_SIZE: usize = 2048;
    let len = (file.total_bytes.get() as usize).min(PROBE_BUF_SIZE);
    let buf = IoVector::alloc(
        len.next_multiple_of(file.limits().request_alignment as usize)
            .max(512),
    );
    file.co_preadv(0, &buf, Default::default())
        .await
        .map_err(|e| e.context("Could not read image for determining its format: "))?;
    let bytes = buf.to_vec();
    probe_format(&bytes[..len], &file.filename()).ok_or_else(|| {
        Error::invalid("Could not determine image format: No compatible driver found")
    })
}

/// Opens a backing file for `parent` (bdrv_open_backing_file): relative names are resolved
/// against the parent's directory, and the backing node is opened read-only.
pub async fn bdrv_open_backing(
    parent: &BlockDriverState,
    backing_name: &str,
    backing_format: Option<&str>,
    mut options: Options,
) -> Result<Rc<BlockDriverState>> {
    let path = resolve_relative(&parent.filename(), backing_name);
    let mut ancestors = parent.backing_ancestors.borrow().clone();
    ancestors.push(canonical_name(&parent.filename()));
    if ancestors.contains(&canonical_name(&path)) {
        return Err(Error::invalid(format!(
            "Backing file '{path}' creates an infinite loop."
        )));
    }
    options.set(BACKING_ANCESTORS_KEY, ancestors.join("\n"));
    if let Some(fmt) = backing_format {
        options.set_default("driver", fmt);
    }
    let mut flags = parent.open_flags();
    flags.read_only = true;
    flags.force_share = parent.open_flags().force_share;
    let bs = open_node(Some(path.clone()), options, flags, true)
        .await
        .map_err(|e| e.context("Could not open backing file: "))?;
    Ok(bs)
}

/// Internal option through which a backing node learns the files of the overlays above it.
const BACKING_ANCESTORS_KEY: &str = "x-rqemu-backing-ancestors";

/// A name that is the same for every path to one file (symlinks, `..`), for loop detection;
/// names that are not local files stay as they are.
fn canonical_name(name: &str) -> String {
    std::fs::canonicalize(name).map_or_else(|_| name.to_string(), |p| p.display().to_string())
}

/// Resolves `name` against the directory of `base` unless it is absolute or a URI
/// (path_combine).
pub fn resolve_relative(base: &str, name: &str) -> String {
    // A ':' before any '/' names a protocol (`rbd:pool/image`), as QEMU's path_has_protocol.
    let has_protocol = name
        .find([':', '/'])
        .is_some_and(|i| name.as_bytes()[i] == b':');
    if name.starts_with('/') || has_protocol || name.starts_with("json:") || base.contains("://") {
        return name.to_string();
    }
    match base.rfind('/') {
        Some(slash) => format!("{}{}", &base[..=slash], name),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_modes_map_like_qemu() {
        assert_eq!(
            CacheMode::parse("none").unwrap(),
            CacheMode {
                direct: true,
                no_flush: false,
                writeback: true
            }
        );
        assert_eq!(
            CacheMode::parse("unsafe").unwrap(),
            CacheMode {
                direct: false,
                no_flush: true,
                writeback: true
            }
        );
        assert!(!CacheMode::parse("directsync").unwrap().writeback);
        assert!(CacheMode::parse("bogus").is_err());
    }

    #[test]
    fn backing_names_resolve_against_the_overlay() {
        assert_eq!(
            resolve_relative("/a/b/top.qcow2", "base.img"),
            "/a/b/base.img"
        );
        assert_eq!(resolve_relative("top.qcow2", "base.img"), "base.img");
        assert_eq!(
            resolve_relative("/a/top.qcow2", "/x/base.img"),
            "/x/base.img"
        );
    }
}
