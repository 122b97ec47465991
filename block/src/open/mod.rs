//! Opening a block graph: options, the `file` child, format probing, backing files.
//!
//! QEMU's bdrv_open and its helpers in block.c. Opening reads the generic options into flags,
//! opens the `file` child first for a format (probing the format from the child's first bytes
//! when none was given), then the driver itself, which may open a backing file in turn;
//! `temp_snapshot` puts the throw-away overlay of snapshot mode on top.

mod filename;
mod temp_snapshot;

pub use filename::{
    bdrv_dirname, bdrv_make_absolute_filename, full_open_options, is_exact_filename, json_name,
};

use std::rc::Rc;

use crate::driver::DriverClass;
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::{AioMode, BlockDriverState, DetectZeroes, OpenFlags};
use crate::options::Options;
use crate::registry::{find_driver, find_protocol, probe_format};

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
    temp_snapshot::bdrv_append_temp_snapshot(base, flags).await
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
    // auto-read-only=on lets a node fall back to read-only where it cannot be opened for
    // writing, which rqemu does not do yet; off is what it always does.
    if take_flag(options, "auto-read-only")? {
        return Err(Error::invalid(
            "auto-read-only=on (falling back to read-only) is not supported by rqemu yet",
        ));
    }
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
        let mut explicit = options.clone();
        apply_flag_defaults(&mut options, &flags);
        let (flags, detect_zeroes) = take_generic_options(&mut options, flags)?;
        let node_name = match options.take("node-name") {
            Some(name) => {
                crate::graph::check_node_name_free(&name)?;
                name
            }
            None => crate::graph::auto_node_name(),
        };

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
        crate::trace!(
            bdrv_open_common,
            "bs {:p} node {} filename \"{}\" format_name \"{}\"",
            Rc::as_ptr(&bs),
            bs.node_name(),
            bs.filename(),
            bs.format_name()
        );
        crate::graph::reserve_place(&bs);
        let drv = (bs.class().open)(&bs, &mut options).await?;
        if let Some(key) = options.first_key() {
            // Only drivers opened from a filename of their own are protocols here (QEMU's
            // bdrv_file_open); filters and quorum speak as formats.
            let (kind, verb) = if bs.class().is_format || bs.class().protocol_name.is_none() {
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
        bs.refresh_total_bytes().await.map_err(|e| {
            Error::with_errno_message(e.errno(), "Could not refresh total sector count")
        })?;
        // The children keep their own options; the ones opened here inherit from `bs`.
        for c in bs.children() {
            explicit.extract_prefix(&c.name);
            explicit.take(&c.name);
            if c.bs.opened_as_child.take() {
                *c.bs.inherits_from.borrow_mut() = Rc::downgrade(&bs);
            }
        }
        *bs.explicit_options.borrow_mut() = explicit;
        crate::graph::register(&bs);
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

/// The `json:` name of a format node opened with options its plain filename cannot carry
/// (QEMU's strong runtime options, such as a key secret): bdrv_refresh_filename describes
/// the node, its `file` child and those options, members in sorted order.
pub fn json_filename(bs: &BlockDriverState, strong: &[(&str, &str)]) -> String {
    use serde_json::Value;
    let mut o = serde_json::Map::new();
    o.insert("driver".into(), bs.format_name().into());
    if let Some(file) = bs.file() {
        let name = file.filename();
        let child = match name.strip_prefix("json:") {
            Some(inner) => serde_json::from_str(inner).unwrap_or(Value::String(name.clone())),
            None => serde_json::json!({"driver": file.format_name(), "filename": name}),
        };
        o.insert("file".into(), child);
    }
    for (key, value) in strong {
        o.insert((*key).into(), (*value).into());
    }
    format!(
        "json:{}",
        crate::options::spaced_json(&Value::Object(o).to_string())
    )
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
    open_protocol_child("file", filename, options, format_child_flags(flags)).await
}

/// The flags a format node's data-holding child (`file`, `data-file`, an extent) opens with:
/// the format decides which discards to pass down, so the child defaults to discard=unmap
/// whatever the parent's own setting (bdrv_inherited_options); `file.discard=` still wins.
pub fn format_child_flags(flags: OpenFlags) -> OpenFlags {
    OpenFlags {
        unmap: true,
        ..flags
    }
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
    let role_value = options.take(role);
    // `file=NAME` with no other child options may name a node opened earlier (a reference,
    // as blockdev-add's `"file": "node-name"`).
    if let Some(bs) = role_value
        .as_deref()
        .filter(|_| child_opts.is_empty())
        .and_then(crate::graph::find_node)
    {
        return Ok(bs);
    }
    let child_name = role_value.or(filename);
    inherit(&mut child_opts, options);
    let probed_protocol = !child_opts.contains("driver");
    if probed_protocol {
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
    let bs = open_node(child_name, child_opts, flags, false).await?;
    if probed_protocol {
        // Found from the filename, not given: a reopen need not repeat it.
        bs.explicit_options.borrow_mut().take("driver");
    }
    bs.opened_as_child.set(true);
    Ok(bs)
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
    let path = bdrv_make_absolute_filename(parent, backing_name)?;
    let mut ancestors = parent.backing_ancestors.borrow().clone();
    ancestors.push(canonical_name(&parent.filename()));
    // The file actually opened: options may name another than the header does, or a node.
    let opened = match (options.get("file.filename"), options.contains("file")) {
        (Some(file), _) => Some(file.to_string()),
        (None, true) => None,
        (None, false) => Some(path.clone()),
    };
    if let Some(file) = opened.filter(|f| ancestors.contains(&canonical_name(f))) {
        return Err(Error::invalid(format!(
            "Backing file '{file}' creates an infinite loop."
        )));
    }
    options.set(BACKING_ANCESTORS_KEY, ancestors.join("\n"));
    if let Some(fmt) = backing_format {
        options.set_default("driver", fmt);
    }
    let mut flags = parent.open_flags();
    flags.read_only = true;
    flags.force_share = parent.open_flags().force_share;
    // Options alone (no name in the header) describe the node, as a driver that takes no
    // file name (null-co) needs: the parent's directory is no file to hand it.
    let filename = (!backing_name.is_empty()).then_some(path);
    let bs = open_node(filename, options, flags, true)
        .await
        .map_err(|e| e.context("Could not open backing file: "))?;
    bs.opened_as_child.set(true);
    Ok(bs)
}

/// The node a `backing=NAME` option refers to, as blockdev-add's `"backing": "node-name"`
/// does: a live node of that name, when no `backing.*` options describe a new one.
pub fn backing_reference(
    backing_opt: Option<&str>,
    backing_opts: &Options,
) -> Option<Rc<BlockDriverState>> {
    backing_opt
        .filter(|_| backing_opts.is_empty())
        .and_then(crate::graph::find_node)
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
