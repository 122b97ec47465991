//! `reopen [(-r|-w)] [-c cache] [-o options]`: change the options of the open image
//! (reopen_f in qemu-io-cmds.c, bdrv_reopen in block.c).
//!
//! QEMU re-applies options to the nodes in place. rqemu has no in-place reopen yet, so the
//! graph is closed and opened again from the request it was opened with, updated by the
//! command's options; keys not named keep their values, as with bdrv_reopen. If the new
//! options do not open, the image is opened again as it was, and the error is reported.
//! As in qemu-io, `reopen` reports a failure but still returns success.

use std::rc::Rc;

use block::node::CacheMode;
use block::{BlockDriverState, Options};

use super::cmd_file::{open_backend, OpenRequest};
use super::commands::{find_command, usage};
use super::output::{report, Reported};
use super::parse::Getopt;
use super::QemuIo;

/// What the command asked to change.
#[derive(Default)]
struct Changes {
    read_only: Option<bool>,
    cache: Option<CacheMode>,
    opts: Options,
}

fn parse(argv: &[String]) -> Result<Changes, i32> {
    let ct = find_command("reopen").unwrap();
    let mut changes = Changes::default();
    let mut g = Getopt::new(argv, "c:o:rw");
    while let Some(opt) = g.next() {
        let applied = match opt {
            Ok(('c', Some(mode))) => CacheMode::parse(&mode)
                .map(|c| changes.cache = Some(c))
                .map_err(|e| report!("{e}")),
            Ok(('o', Some(text))) => Options::parse_keyval(&text, None)
                .map(|o| o.iter().for_each(|(k, v)| changes.opts.set(k, v)))
                .map_err(|e| report!("{e}")),
            Ok((rw @ ('r' | 'w'), _)) => {
                if changes.read_only.is_some() {
                    report!("Only one -r/-w option may be given");
                    Err(())
                } else {
                    changes.read_only = Some(rw == 'r');
                    Ok(())
                }
            }
            _ => return Err(usage(ct)),
        };
        applied.map_err(|()| -libc::EINVAL)?;
    }
    if !g.operands().is_empty() {
        return Err(usage(ct));
    }
    Ok(changes)
}

/// The request updated by `changes`; errors are printed.
/// The request the image is opened with again. `join` fills the new options with the old
/// ones they leave in force (the top driver's bdrv_join_options).
fn apply(
    mut req: OpenRequest,
    changes: Changes,
    join: &dyn Fn(&mut Options, &Options),
) -> Result<OpenRequest, Reported> {
    if let Some(read_only) = changes.read_only {
        if changes.opts.contains("read-only") {
            report!("Cannot set both -r/-w and 'read-only'");
            return Err(Reported);
        }
        req.opts.take("read-only");
        req.flags.read_only = read_only;
        if !read_only {
            // QEMU lets a force-share node become writable; rqemu checks force-share only
            // when opening, where it requires read-only, so it is dropped here.
            req.opts.take("force-share");
            req.flags.force_share = false;
            req.force_share = false;
        }
    }
    if let Some(cache) = changes.cache {
        for key in ["cache.direct", "cache.no-flush"] {
            if changes.opts.contains(key) {
                report!("Cannot set both -c and the cache options");
                return Err(Reported);
            }
            req.opts.take(key);
        }
        req.flags.cache = cache;
    }
    let mut opts = changes.opts;
    join(&mut opts, &req.opts);
    req.opts = opts;
    Ok(req)
}

/// The first option that would change what a node is, its name or its driver, which a
/// reopen may not do (bdrv_reopen_prepare); `file.driver` names the `file` child's.
fn unchangeable(top: &Rc<BlockDriverState>, opts: &Options) -> Option<&'static str> {
    'keys: for (key, value) in opts.iter() {
        let (path, name) = match key.rsplit_once('.') {
            Some((path, name)) => (Some(path), name),
            None => (None, key),
        };
        let (name, current): (&'static str, fn(&BlockDriverState) -> String) = match name {
            "node-name" => ("node-name", |bs| bs.node_name().to_string()),
            "driver" => ("driver", |bs| bs.format_name().to_string()),
            _ => continue,
        };
        let mut node = top.clone();
        for role in path.into_iter().flat_map(|p| p.split('.')) {
            match node.child(role) {
                Some(child) => node = child,
                None => continue 'keys,
            }
        }
        if current(&node) != value {
            return Some(name);
        }
    }
    None
}

/// `reopen [(-r|-w)] [-c cache] [-o options]`.
pub async fn reopen_f(io: &QemuIo, argv: &[String]) -> i32 {
    let changes = match parse(argv) {
        Ok(c) => c,
        Err(ret) => return ret,
    };
    let Some(old) = io.request() else {
        return -libc::EINVAL;
    };
    if old.snapshot {
        report!("reopen of an image opened with -s is not supported by rqemu yet");
        return 0;
    }
    let asked = changes.opts.clone();
    let applied = {
        // (The node must not outlive this: its image locks go with the old graph.)
        let top = io.blk().bs();
        let join = |new: &mut Options, old: &Options| top.drv().join_options(new, old);
        apply(old.clone(), changes, &join)
    };
    let Ok(new) = applied else {
        return -libc::EINVAL;
    };
    if let Some(key) = unchangeable(&io.blk().bs(), &asked) {
        report!("Cannot change the option '{key}'");
        return 0;
    }
    let wants_read_only = new
        .opts
        .get("read-only")
        .and_then(block::options::parse_bool)
        .unwrap_or(new.flags.read_only);
    if wants_read_only && !new.flags.read_only && !io.blk().is_read_only() {
        // Only -r gives up qemu-io's write permission; `-o read-only=on` alone cannot.
        report!(
            "Read-only block node '{}' cannot support read-write users",
            io.blk().bs().node_name()
        );
        return 0;
    }
    // The old graph must be gone (its image locks released) before the new one opens.
    io.close_image().await;
    match open_backend(&new).await {
        Ok(blk) => io.set_blk(blk, new),
        Err(e) => {
            report!("{e}");
            match open_backend(&old).await {
                Ok(blk) => io.set_blk(blk, old),
                Err(e) => report!("the image could not be opened again as it was: {e}"),
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep_old(new: &mut Options, old: &Options) {
        for (k, v) in old.iter() {
            new.set_default(k, v);
        }
    }

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn options_override_and_flags_replace_their_keys() {
        let mut req = OpenRequest::new();
        req.opts.set("driver", "raw");
        req.opts.set("offset", "512");
        req.opts.set("read-only", "on");
        let changes = parse(&words("reopen -w -o offset=1536,size=1024")).unwrap();
        let new = apply(req, changes, &keep_old).unwrap();
        assert_eq!(new.opts.get("offset"), Some("1536"));
        assert_eq!(new.opts.get("size"), Some("1024"));
        assert_eq!(new.opts.get("driver"), Some("raw"));
        assert!(!new.opts.contains("read-only"));
        assert!(!new.flags.read_only);
    }

    #[test]
    fn conflicting_changes_are_refused() {
        assert!(parse(&words("reopen -r -w")).is_err());
        let changes = parse(&words("reopen -r -o read-only=off")).unwrap();
        assert!(apply(OpenRequest::new(), changes, &keep_old).is_err());
        let changes = parse(&words("reopen -c none -o cache.direct=off")).unwrap();
        assert!(apply(OpenRequest::new(), changes, &keep_old).is_err());
        let changes = parse(&words("reopen -c none -o cache.no-flush=off")).unwrap();
        assert!(apply(OpenRequest::new(), changes, &keep_old).is_err());
    }
}
