//! Preparing one queued node for a reopen, and checking the permissions of the graph the
//! whole queue would make (QEMU's bdrv_reopen_prepare, bdrv_reset_options_allowed,
//! bdrv_reopen_parse_file_or_backing and the permission refresh of bdrv_reopen_multiple).

use std::rc::Rc;

use super::{order, Entry, Staged, NULL_CHILD};
use crate::error::{Error, Result};
use crate::graph::permissions::{self, Perm};
use crate::node::{BlockDriverState, DetectZeroes, OpenFlags};
use crate::options::{parse_bool, Options};

/// Options every driver takes, which a reopen may always leave out.
const COMMON_OPTIONS: [&str; 8] = [
    "node-name",
    "discard",
    "cache.direct",
    "cache.no-flush",
    "read-only",
    "auto-read-only",
    "detect-zeroes",
    "force-share",
];

fn invalid(msg: impl Into<String>) -> Error {
    Error::invalid(msg)
}

fn take_flag(o: &mut Options, key: &str) -> Result<bool> {
    Ok(o.take_bool(key)?.unwrap_or(false))
}

/// The generic options: the node's new flags and zero detection (update_flags_from_options).
fn take_generic(o: &mut Options, bs: &BlockDriverState) -> Result<(OpenFlags, DetectZeroes)> {
    let mut flags = bs.open_flags();
    flags.read_only = take_flag(o, "read-only")?;
    o.take("auto-read-only");
    flags.cache.direct = take_flag(o, "cache.direct")?;
    flags.cache.no_flush = take_flag(o, "cache.no-flush")?;
    flags.unmap = match o.take("discard").as_deref() {
        Some("unmap") | Some("on") => true,
        Some("ignore") | Some("off") | None => false,
        Some(other) => return Err(invalid(format!("Invalid discard option: {other}"))),
    };
    let detect = match o.take("detect-zeroes").as_deref() {
        None | Some("off") => DetectZeroes::Off,
        Some("on") => DetectZeroes::On,
        Some("unmap") => DetectZeroes::Unmap,
        Some(other) => {
            return Err(invalid(format!(
                "Parameter 'detect-zeroes' does not accept value '{other}'"
            )))
        }
    };
    if detect == DetectZeroes::Unmap && !flags.unmap {
        return Err(invalid(
            "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
        ));
    }
    if let Some(share) = o.take_bool("force-share")? {
        if share != flags.force_share {
            return Err(invalid("Cannot change the option 'force-share'"));
        }
    }
    Ok((flags, detect))
}

/// Refuses to drop an option the node was given that its driver cannot reset
/// (bdrv_reset_options_allowed).
fn check_reset_allowed(bs: &BlockDriverState, new: &Options) -> Result<()> {
    let mutable = bs.drv().mutable_opts();
    for (key, _) in bs.explicit_options.borrow().iter() {
        if !new.contains(key) && !COMMON_OPTIONS.contains(&key) && !mutable.contains(&key) {
            return Err(invalid(format!(
                "Option '{key}' cannot be reset to its default value"
            )));
        }
    }
    Ok(())
}

/// What the node holds for `key` now (an entry of bs->options).
fn current_value(bs: &BlockDriverState, key: &str) -> Option<String> {
    match key {
        "driver" => Some(bs.format_name().to_string()),
        "node-name" => Some(bs.node_name().to_string()),
        _ => bs
            .explicit_options
            .borrow()
            .get(key)
            .map(str::to_string)
            .or_else(|| (key == "filename" && !bs.class().is_format).then(|| bs.filename())),
    }
}

fn same_value(a: &str, b: &str) -> bool {
    a == b || matches!((parse_bool(a), parse_bool(b)), (Some(x), Some(y)) if x == y)
}

/// The node below any implicit filters (bdrv_skip_implicit_filters).
fn skip_implicit_filters(mut bs: Rc<BlockDriverState>) -> Rc<BlockDriverState> {
    while bs.is_implicit() {
        match bs.filtered() {
            Some(below) => bs = below,
            None => break,
        }
    }
    bs
}

/// Parses a new `file` or `backing` value (bdrv_reopen_parse_file_or_backing): the node it
/// stages, or None when the link stays as it is.
fn parse_child(
    bs: &Rc<BlockDriverState>,
    role: &str,
    value: &str,
) -> Result<Option<Option<Rc<BlockDriverState>>>> {
    let new = if value == NULL_CHILD {
        None
    } else {
        let node = crate::graph::find_node(value)
            .ok_or_else(|| invalid(format!("Cannot find device='' nor node-name='{value}'")))?;
        if crate::graph::subtree(&node)
            .iter()
            .any(|n| Rc::ptr_eq(n, bs))
        {
            return Err(invalid(format!(
                "Making '{value}' a {role} child of '{}' would create a cycle",
                bs.node_name()
            )));
        }
        Some(node)
    };
    let old = bs.child(role);
    let unchanged = match (&old, &new) {
        (None, None) => true,
        (Some(o), Some(n)) => Rc::ptr_eq(o, n) || Rc::ptr_eq(&skip_implicit_filters(o.clone()), n),
        _ => false,
    };
    if unchanged {
        return Ok(None);
    }
    if let Some(old) = &old {
        if old.is_implicit() {
            return Err(Error::new(
                libc::EPERM,
                format!("Cannot replace implicit {role} child of {}", bs.node_name()),
            ));
        }
    }
    if old.is_none() && bs.drv().is_filter() {
        return Err(invalid(format!(
            "'{}' is a {} filter node that does not support a {role} child",
            bs.node_name(),
            bs.format_name()
        )));
    }
    if let Some(old) = &old {
        if bs.frozen.borrow().iter().any(|r| r == role) {
            return Err(Error::new(
                libc::EPERM,
                format!(
                    "Cannot change frozen '{role}' link from '{}' to '{}'",
                    bs.node_name(),
                    old.node_name()
                ),
            ));
        }
    }
    Ok(Some(new))
}

/// Prepares one node (bdrv_reopen_prepare): checks everything and stages the change.
pub(super) async fn prepare(e: &Entry) -> Result<Staged> {
    let bs = &e.bs;
    let mut o = e.options.clone();
    let (flags, detect_zeroes) = take_generic(&mut o, bs)?;
    let reset = check_reset_allowed(bs, &o);
    let mut driver_opts = o.clone();
    for key in ["node-name", "driver", "backing", "file"] {
        driver_opts.take(key);
    }
    let given: Vec<String> = driver_opts.iter().map(|(k, _)| k.to_string()).collect();
    let Some(staged) = bs.drv().reopen_prepare(bs, &mut driver_opts, flags).await else {
        return Err(invalid(format!(
            "Block format '{}' used by node '{}' does not support reopening files",
            bs.format_name(),
            bs.node_name()
        )));
    };
    reset?;
    let driver = staged?;
    // What the driver took is applied; what it left must be unchanged.
    for key in given {
        if !driver_opts.contains(&key) {
            o.take(&key);
        }
    }
    if e.backing_missing
        && !bs.drv().is_filter()
        && (bs.backing().is_some() || bs.drv().backing_file_name(bs).is_some())
    {
        return Err(invalid(format!(
            "backing is missing for '{}'",
            bs.node_name()
        )));
    }
    let mut children = Vec::new();
    let mut moves = Vec::new();
    for role in ["backing", "file"] {
        if let Some(value) = o.take(role) {
            if let Some(new) = parse_child(bs, role, &value)? {
                if let Some(child) = &new {
                    moves.extend(crate::graph::aio_context::plan_attach(bs, child)?);
                }
                children.push((role.to_string(), new));
            }
        }
    }
    for key in order::qdict_order(o.iter().map(|(k, _)| k)) {
        let new = o.get(key).unwrap_or_default();
        if bs.child(key).is_some_and(|c| c.node_name() == new) {
            continue;
        }
        if !current_value(bs, key).is_some_and(|old| same_value(&old, new)) {
            return Err(invalid(format!("Cannot change the option '{key}'")));
        }
    }
    Ok(Staged {
        flags,
        detect_zeroes,
        driver,
        children,
        moves,
    })
}

/// The node's child in `role` once the queue is committed.
fn new_child(
    queue: &[Entry],
    bs: &Rc<BlockDriverState>,
    role: &str,
) -> Option<Rc<BlockDriverState>> {
    for e in queue.iter().filter(|e| Rc::ptr_eq(&e.bs, bs)) {
        let staged = e.staged.as_ref().expect("prepared");
        if let Some((_, new)) = staged.children.iter().find(|(r, _)| r == role) {
            return new.clone();
        }
    }
    bs.child(role)
}

/// Whether `bs` is read-only once the queue is committed.
fn new_read_only(queue: &[Entry], bs: &Rc<BlockDriverState>) -> bool {
    queue
        .iter()
        .find(|e| Rc::ptr_eq(&e.bs, bs))
        .map_or(bs.is_read_only(), |e| {
            e.staged.as_ref().expect("prepared").flags.read_only
        })
}

/// What a parent takes on its child in a role (bdrv_default_perms): a format writes and
/// resizes its `file` (when writable) and shares neither; other links only read.
fn link_perms(queue: &[Entry], parent: &Rc<BlockDriverState>, role: &str) -> (Perm, Perm) {
    let metadata = role != "backing" && parent.class().is_format && !parent.drv().is_filter();
    if !metadata {
        return (Perm::empty(), Perm::all());
    }
    let mut perm = Perm::CONSISTENT_READ;
    if !new_read_only(queue, parent) {
        perm |= Perm::WRITE | Perm::RESIZE;
    }
    (perm, Perm::all() & !(Perm::WRITE | Perm::RESIZE))
}

/// Checks the permissions of the graph the queue would make (bdrv_reopen_multiple's
/// bdrv_list_refresh_perms): a node made read-only may have no writer, and a node linked
/// under a new parent must suit its other parents.
pub(super) fn check_permissions(queue: &[Entry]) -> Result<()> {
    for e in queue {
        let bs = &e.bs;
        if new_read_only(queue, bs) {
            let writer = bs
                .graph
                .perms
                .borrow()
                .iter()
                .any(|c| c.perm.intersects(Perm::WRITE | Perm::WRITE_UNCHANGED))
                || crate::graph::node_parents(bs).iter().any(|(p, role)| {
                    new_child(queue, p, role).is_some_and(|c| Rc::ptr_eq(&c, bs))
                        && link_perms(queue, p, role).0.contains(Perm::WRITE)
                });
            if writer && bs.is_read_only() {
                // It stays read-only under a parent that now writes to it (a child
                // given `read-only` itself, below a node made writable).
                return Err(Error::new(libc::EPERM, "Block node is read-only"));
            }
            if writer {
                return Err(Error::new(
                    libc::EPERM,
                    format!(
                        "Read-only block node '{}' cannot support read-write users",
                        bs.node_name()
                    ),
                ));
            }
        }
        let staged = e.staged.as_ref().expect("prepared");
        for (role, child) in &staged.children {
            let Some(child) = child else { continue };
            let (perm, shared) = link_perms(queue, bs, role);
            let new = permissions::node_claim(bs.node_name(), role, perm, shared);
            let mut held = Vec::new();
            for (p, r) in crate::graph::node_parents(child) {
                let still = new_child(queue, &p, &r).is_some_and(|c| Rc::ptr_eq(&c, child));
                if still && !Rc::ptr_eq(&p, bs) {
                    let (perm, shared) = link_perms(queue, &p, &r);
                    held.push(permissions::node_claim(p.node_name(), &r, perm, shared));
                }
            }
            permissions::check_new_claim(child, &new, &held)?;
        }
    }
    Ok(())
}
