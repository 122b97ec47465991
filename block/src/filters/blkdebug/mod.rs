//! blkdebug: a filter that injects errors and suspends requests at debug events (QEMU's
//! block/blkdebug.c).
//!
//! Formats raise debug events on their `file` child (`l2_load`, `write_aio`...; see
//! [`BlkdbgEvent`]). When the child is a blkdebug node, its rules for that event run: an
//! `inject-error` rule becomes active and makes the following requests on the node fail, a
//! `set-state` rule moves the node to another state (rules may apply in one state only), and
//! a breakpoint set by qemu-io's `break` suspends the request that raised the event until
//! `resume`. Requests themselves pass through to the `image` child unchanged.

mod config;
mod rules;

use std::rc::Rc;

use async_trait::async_trait;

use crate::coroutine::LocalBoxFuture;
use crate::driver::{BlockDriver, BlockLimits, BlockStatus, DriverClass, RequestFlags};
use crate::error::{Error, Result};
use crate::graph::permissions::{self, Perm, PermHandle};
use crate::iov::IoVector;
use crate::node::BlockDriverState;
use crate::open::open_protocol_child;
use crate::options::Options;

pub use crate::debug_event::BlkdbgEvent;
pub use config::iotype;
pub use rules::set_message_sink;
use rules::RuleSet;

/// The blkdebug driver class (`blkdebug:CONFIG:IMAGE`, `driver=blkdebug`).
pub static BLKDEBUG: DriverClass = DriverClass {
    format_name: "blkdebug",
    protocol_name: Some("blkdebug"),
    is_format: false,
    probe: None,
    open: |bs, options| Box::pin(open(bs, options)),
    create: None,
    create_options: &[],
};

/// An open blkdebug node (BDRVBlkdebugState).
pub struct Blkdebug {
    rules: RuleSet,
    align: u32,
    max_transfer: u64,
    opt_write_zero: u32,
    max_write_zero: u64,
    opt_discard: u32,
    max_discard: u64,
    /// The permissions `take-child-perms` / `unshare-child-perms` ask for on the image.
    _child_perms: Option<PermHandle>,
}

/// The permissions a list option names (`take-child-perms.0=consistent-read`...).
fn take_perm_list(options: &mut Options, key: &str) -> Result<Perm> {
    let mut names: Vec<String> = options.take(key).into_iter().collect();
    names.extend(
        options
            .extract_prefix(key)
            .iter()
            .map(|(_, v)| v.to_string()),
    );
    let mut perm = Perm::empty();
    for name in names {
        perm |= match name.as_str() {
            "consistent-read" => Perm::CONSISTENT_READ,
            "write" => Perm::WRITE,
            "write-unchanged" => Perm::WRITE_UNCHANGED,
            "resize" => Perm::RESIZE,
            other => {
                return Err(Error::invalid(format!(
                    "Parameter '{key}' does not accept value '{other}'"
                )))
            }
        };
    }
    Ok(perm)
}

/// Splits `blkdebug:CONFIG:IMAGE` into the `config` and `x-image` options; any other
/// filename is the image (blkdebug_parse_filename).
fn parse_filename(filename: &str, options: &mut Options) -> Result<()> {
    // A plain filename (a filter's child named by path) is the image, with no config.
    let Some(rest) = filename.strip_prefix("blkdebug:") else {
        options.set_default("x-image", filename);
        return Ok(());
    };
    let (config, image) = rest
        .split_once(':')
        .ok_or_else(|| Error::invalid("blkdebug requires both config file and image path"))?;
    if !config.is_empty() {
        options.set_default("config", config);
    }
    options.set_default("x-image", image);
    Ok(())
}

/// Takes a size option that must be below 2^31 and, unless 0, a multiple of `align` (a
/// power of two for `align` itself: pass 0); QEMU's checks in blkdebug_open.
fn take_limit(options: &mut Options, key: &str, align: u64) -> Result<u64> {
    let v = options.take_size(key)?.unwrap_or(0);
    let fits = if align == 0 {
        v.is_power_of_two()
    } else {
        v.is_multiple_of(align)
    };
    if v != 0 && (!fits || v >= i32::MAX as u64) {
        return Err(Error::invalid(format!(
            "Cannot meet constraints with {key} {v}"
        )));
    }
    Ok(v)
}

/// The options that change what the node does besides its config file, as given
/// (blkdebug_strong_runtime_opts): a node opened with any of them needs a `json:` name.
fn strong_options(options: &Options) -> Vec<(String, String)> {
    const LIMITS: [&str; 6] = [
        "align",
        "max-transfer",
        "opt-write-zero",
        "max-write-zero",
        "opt-discard",
        "max-discard",
    ];
    options
        .iter()
        .filter(|(k, _)| {
            k.starts_with("inject-error.") || k.starts_with("set-state.") || LIMITS.contains(k)
        })
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The node's name (blkdebug_refresh_filename): `blkdebug:CONFIG:IMAGE` when that says
/// everything it was opened with, else a `json:` description of its image and options.
fn node_filename(
    image: &BlockDriverState,
    config: Option<&str>,
    strong: Vec<(String, String)>,
) -> String {
    let image_name = image.filename();
    if strong.is_empty() && crate::open::is_exact_filename(&image_name) {
        return format!("blkdebug:{}:{image_name}", config.unwrap_or_default());
    }
    let mut o = serde_json::Map::new();
    o.insert("driver".into(), "blkdebug".into());
    o.insert("image".into(), crate::open::full_open_options(image));
    if let Some(config) = config {
        o.insert("config".into(), config.into());
    }
    for (key, value) in strong {
        o.insert(key, value.into());
    }
    crate::open::json_name(&serde_json::Value::Object(o))
}

async fn open(bs: &BlockDriverState, options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    if let Some(name) = options.take("filename") {
        parse_filename(&name, options)?;
    }
    let strong = strong_options(options);
    let config = options.get("config").map(str::to_string);
    let rules = RuleSet::new();
    if let Some(path) = options.take("config") {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            Error::with_errno_message(errno, "Could not read blkdebug config file")
        })?;
        for (kind, opts) in config::parse_config(&text)? {
            rules.add(kind, opts)?;
        }
    }
    for (kind, opts) in config::take_option_rules(options) {
        rules.add(kind, opts)?;
    }
    let take = take_perm_list(options, "take-child-perms")?;
    let unshare = take_perm_list(options, "unshare-child-perms")?;
    let image = options.take("x-image");
    let child = open_protocol_child("image", image, options, bs.open_flags()).await?;
    // Tests use these to provoke permission conflicts on the image.
    let child_perms = if take.is_empty() && unshare.is_empty() {
        None
    } else {
        Some(permissions::claim(
            &child,
            &permissions::node_user(bs),
            "image",
            take,
            Perm::all() - unshare,
        )?)
    };
    bs.set_filename(node_filename(&child, config.as_deref(), strong));
    bs.attach_child("file", child.clone());
    let align = take_limit(options, "align", 0)?;
    let base = align.max(child.limits().request_alignment as u64);
    let max_transfer = take_limit(options, "max-transfer", base)?;
    let opt_write_zero = take_limit(options, "opt-write-zero", base)?;
    let max_write_zero = take_limit(options, "max-write-zero", opt_write_zero.max(base))?;
    let opt_discard = take_limit(options, "opt-discard", base)?;
    let max_discard = take_limit(options, "max-discard", opt_discard.max(base))?;
    // Rules of the `none` event apply from the start; no breakpoint can exist yet (qemu-io's
    // `break` sets them later), so nothing is suspended here.
    let suspends = rules.event(BlkdbgEvent::None).is_some();
    debug_assert!(!suspends);
    Ok(Box::new(Blkdebug {
        rules,
        align: align as u32,
        max_transfer,
        opt_write_zero: opt_write_zero as u32,
        max_write_zero,
        opt_discard: opt_discard as u32,
        max_discard,
        _child_perms: child_perms,
    }))
}

impl Blkdebug {
    /// The rules of the node, for breakpoints.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }
}

#[async_trait(?Send)]
impl BlockDriver for Blkdebug {
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        let bytes = qiov.len() as u64;
        self.rules.check(offset, bytes, iotype::READ).await?;
        super::filtered(bs).co_preadv(offset, qiov, flags).await
    }

    async fn co_pwritev(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        let bytes = qiov.len() as u64;
        self.rules.check(offset, bytes, iotype::WRITE).await?;
        super::filtered(bs).co_pwritev(offset, qiov, flags).await
    }

    async fn co_pwrite_zeroes(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        // Requests smaller than the preferred alignment are refused, so that the block
        // layer's fallback to writing zeroes as data gets tested.
        let limits = bs.limits();
        if bytes < limits.request_alignment.max(limits.pwrite_zeroes_alignment) as u64 {
            return Err(Error::from_errno(libc::ENOTSUP));
        }
        self.rules
            .check(offset, bytes, iotype::WRITE_ZEROES)
            .await?;
        super::filtered(bs)
            .co_pwrite_zeroes(offset, bytes, flags)
            .await
    }

    async fn co_pdiscard(&self, bs: &BlockDriverState, offset: u64, bytes: u64) -> Result<()> {
        if bytes < bs.limits().request_alignment as u64 {
            return Err(Error::from_errno(libc::ENOTSUP));
        }
        self.rules.check(offset, bytes, iotype::DISCARD).await?;
        super::filtered(bs).co_pdiscard(offset, bytes).await
    }

    async fn co_flush_to_disk(&self, _bs: &BlockDriverState) -> Result<()> {
        // The generic flush goes on to the image child by itself.
        self.rules.check(0, 0, iotype::FLUSH).await
    }

    async fn co_block_status(
        &self,
        bs: &BlockDriverState,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        self.rules
            .check(offset, bytes, iotype::BLOCK_STATUS)
            .await?;
        Ok(BlockStatus::in_file(bs.file(), offset, bytes))
    }

    fn refresh_limits(&self, bs: &BlockDriverState) -> BlockLimits {
        let mut limits = super::filtered(bs).limits();
        if self.align != 0 {
            limits.request_alignment = self.align;
        }
        if self.max_transfer != 0 {
            limits.max_transfer = self.max_transfer;
        }
        // As in QEMU, the child's zero and discard preferences are not inherited.
        limits.pwrite_zeroes_alignment = self.opt_write_zero;
        limits.max_pwrite_zeroes = self.max_write_zero;
        limits.pdiscard_alignment = self.opt_discard;
        limits.max_pdiscard = self.max_discard;
        limits
    }

    fn supported_write_flags(&self) -> RequestFlags {
        RequestFlags::FUA
    }

    fn debug_event(&self, event: BlkdbgEvent) -> Option<LocalBoxFuture<'_, ()>> {
        self.rules.event(event)
    }

    fn is_filter(&self) -> bool {
        true
    }

    fn reopen_keeps_options(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The first blkdebug node on the way down from `bs` through primary children (a filter's
/// filtered child, else `file`), as bdrv_debug_breakpoint and friends look for one: a job's
/// filter above the blkdebug node does not hide it.
pub fn find_blkdebug(bs: &Rc<BlockDriverState>) -> Option<Rc<BlockDriverState>> {
    let mut node = bs.clone();
    loop {
        if node.drv().as_any().is::<Blkdebug>() {
            return Some(node);
        }
        node = if node.drv().is_filter() {
            node.filtered()?
        } else {
            node.file()?
        };
    }
}

fn with_rules<T>(bs: &Rc<BlockDriverState>, f: impl FnOnce(&RuleSet) -> Result<T>) -> Result<T> {
    let node = find_blkdebug(bs).ok_or_else(|| Error::from_errno(libc::ENOTSUP))?;
    let drv = node.drv().as_any().downcast_ref::<Blkdebug>();
    f(&drv.expect("find_blkdebug checked the type").rules)
}

/// Sets a breakpoint: the next request raising `event` is suspended as `tag`
/// (bdrv_debug_breakpoint).
pub fn debug_breakpoint(bs: &Rc<BlockDriverState>, event: &str, tag: &str) -> Result<()> {
    with_rules(bs, |r| r.add_breakpoint(event, tag))
}

/// Removes the breakpoints tagged `tag` and resumes requests suspended there
/// (bdrv_debug_remove_breakpoint).
pub fn debug_remove_breakpoint(bs: &Rc<BlockDriverState>, tag: &str) -> Result<()> {
    with_rules(bs, |r| r.remove_breakpoint(tag))
}

/// Resumes the request suspended as `tag` (bdrv_debug_resume).
pub fn debug_resume(bs: &Rc<BlockDriverState>, tag: &str) -> Result<()> {
    with_rules(bs, |r| r.resume(tag))
}

/// Whether a request is suspended as `tag` (bdrv_debug_is_suspended).
pub fn debug_is_suspended(bs: &Rc<BlockDriverState>, tag: &str) -> bool {
    with_rules(bs, |r| Ok(r.is_suspended(tag))).unwrap_or(false)
}

/// Waits until a request is suspended as `tag`; None when the graph has no blkdebug node,
/// where no request could ever stop.
pub async fn debug_wait_suspended(bs: &Rc<BlockDriverState>, tag: &str) -> Option<()> {
    let node = find_blkdebug(bs)?;
    let drv = node.drv().as_any().downcast_ref::<Blkdebug>()?;
    drv.rules.wait_suspended(tag).await;
    Some(())
}
