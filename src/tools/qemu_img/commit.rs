//! `qemu-img commit`: write an overlay's changes into its backing file (qemu-img.c's
//! img_commit, which runs QEMU's commit block job, block/commit.c).
//!
//! Every range allocated above the base is copied into it (zeroes as zero writes), the base
//! grows first if it is shorter than the overlay, and then the overlay is emptied unless
//! `-d` was given or a base further down the chain was named with `-b` (which implies `-d`,
//! since the layers in between would otherwise change meaning).
//!
//! Only the overlay's own chain is opened: the base is opened read-write through the
//! `backing.…read-only=off` option of its place in the chain, because nodes here cannot be
//! reopened once open.

use std::rc::Rc;
use std::time::{Duration, Instant};

use block::driver::{PreallocMode, RequestFlags, StatusFlags};
use block::open::resolve_relative;
use block::{BlockBackend, BlockDriverState, IoVector, OpenFlags, Options, Result};

use super::cli::{self, error_exit, error_report, long, OpenSpec};
use super::cli::{OPT_IMAGE_OPTS, OPT_OBJECT};
use super::human::Progress;

/// How much is copied per step (block/commit.c's COMMIT_BUFFER_SIZE).
const COMMIT_BUFFER_SIZE: u64 = 512 << 10;

const LONG: &[crate::tools::getopt::LongOpt] = &[
    long("help", false, 'h'),
    long("object", true, OPT_OBJECT),
    long("image-opts", false, OPT_IMAGE_OPTS),
];

/// The parsed command line.
#[derive(Default)]
struct Args {
    spec: OpenSpec,
    base: Option<String>,
    drop: bool,
    progress: bool,
    quiet: bool,
    /// Bytes per second, 0 for no limit.
    rate_limit: u64,
}

fn parse(args: &[String]) -> std::result::Result<Args, i32> {
    let parsed = cli::getopt(args, ":f:ht:b:dpqr:", LONG)?;
    let mut a = Args::default();
    let mut cache = "writeback".to_string();
    for opt in parsed.opts {
        let arg = opt.arg.unwrap_or_default();
        match opt.key {
            'h' => return Err(super::help::print_help()),
            'f' => a.spec.fmt = Some(arg),
            't' => cache = arg,
            'b' => {
                a.base = Some(arg);
                a.drop = true;
            }
            'd' => a.drop = true,
            'p' => a.progress = true,
            'q' => a.quiet = true,
            'r' => match cli::cvtnum("rate limit", &arg) {
                Some(v) => a.rate_limit = v as u64,
                None => return Err(1),
            },
            OPT_OBJECT => cli::object_add(&arg)?,
            OPT_IMAGE_OPTS => a.spec.image_opts = true,
            _ => {}
        }
    }
    if a.quiet {
        a.progress = false;
    }
    if parsed.operands.len() != 1 {
        return Err(error_exit("Expecting one image file name"));
    }
    a.spec.filename = parsed.operands[0].clone();
    let Some(mode) = cli::parse_cache(&cache) else {
        error_report(&format!("Invalid cache option: {cache}"));
        return Err(1);
    };
    a.spec.flags = OpenFlags {
        cache: mode,
        unmap: true,
        ..OpenFlags::default()
    };
    a.spec.writethrough = !mode.writeback;
    Ok(a)
}

/// Runs `qemu-img commit`.
pub fn run(args: &[String]) -> i32 {
    let a = match parse(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let mut progress = Progress::new(a.progress, 1.0);
    progress.print(0.0, 100);
    let ret = cli::run_co(async {
        let Some(depth) = base_depth(&a).await else {
            return 1;
        };
        let key = format!("{}read-only", "backing.".repeat(depth));
        let mut extra = Options::new();
        extra.set(&key, "off");
        let Some(blk) = cli::img_open_with(&a.spec, extra).await else {
            return 1;
        };
        let mut ret = commit(&blk, depth, &a, &mut progress).await;
        // Closing does not say whether the images' metadata (bitmaps) made it to disk:
        // inactivating first does, as QEMU's img_commit asks bdrv_inactivate_all.
        let inactivated = blk.inactivate().await;
        if !cli::close(&blk).await {
            ret = 1;
        }
        if let (0, Err(e)) = (ret, inactivated) {
            cli::report_close_error(&e);
            ret = 1;
        }
        ret
    });
    if ret == 0 {
        progress.print(100.0, 0);
    }
    progress.end();
    if ret == 0 && !a.quiet {
        println!("Image committed.");
    }
    ret
}

/// How many backing links below the image the base is (1: its backing file); reports a
/// missing backing file or a `-b` name not in the chain.
async fn base_depth(a: &Args) -> Option<usize> {
    let blk = cli::img_open(&a.spec).await?;
    let bs = blk.bs().clone();
    let depth = match &a.base {
        None if bs.backing().is_some() => Some(1),
        None => {
            error_report("Image does not have a backing file");
            None
        }
        Some(name) => {
            let found = find_in_chain(&bs, name);
            if found.is_none() {
                error_report(&format!(
                    "Did not find '{name}' in the backing chain of '{}'",
                    a.spec.filename
                ));
            }
            found
        }
    };
    let closed = cli::close(&blk).await;
    depth.filter(|_| closed)
}

/// The depth of the backing file named `name` (a relative name is taken relative to the
/// overlay's directory, as bdrv_find_backing_image does; compared as canonical paths).
fn find_in_chain(bs: &Rc<BlockDriverState>, name: &str) -> Option<usize> {
    let wanted = std::fs::canonicalize(resolve_relative(&bs.filename(), name)).ok()?;
    let mut layer = bs.backing();
    let mut depth = 1;
    while let Some(node) = layer {
        if std::fs::canonicalize(node.filename()).is_ok_and(|p| p == wanted) {
            return Some(depth);
        }
        layer = node.backing();
        depth += 1;
    }
    None
}

/// Copies what lies above the base into it and empties the overlay unless told not to.
async fn commit(blk: &BlockBackend, depth: usize, a: &Args, progress: &mut Progress) -> i32 {
    let top = blk.bs().clone();
    let mut base = top.backing();
    for _ in 1..depth {
        base = base.and_then(|b| b.backing());
    }
    let Some(base) = base else {
        error_report("Image does not have a backing file");
        return 1;
    };
    if let Err(e) = copy_down(&top, &base, a.rate_limit, progress).await {
        error_report(&format!("Block job failed: {e}"));
        return 1;
    }
    if !a.drop {
        match top.drv().co_make_empty(&top).await {
            // A format that cannot empty itself (vmdk) keeps its data, as in QEMU,
            // where only drivers with bdrv_make_empty are emptied.
            Err(e) if e.errno() == libc::ENOTSUP => {}
            Err(e) => {
                error_report(&format!("Could not empty {}: {e}", a.spec.filename));
                return 1;
            }
            Ok(()) => {}
        }
    }
    0
}

/// The commit job proper: every range allocated above `base` is written into `base`.
async fn copy_down(
    top: &BlockDriverState,
    base: &BlockDriverState,
    rate_limit: u64,
    progress: &mut Progress,
) -> Result<()> {
    let size = top.getlength();
    if base.getlength() < size {
        base.co_truncate(size, false, PreallocMode::Off).await?;
    }
    let start = Instant::now();
    let mut copied = 0u64;
    let mut offset = 0;
    while offset < size {
        let want = COMMIT_BUFFER_SIZE.min(size - offset);
        let (status, _) = top
            .co_block_status_above(Some(base), false, offset, want)
            .await?;
        let n = status.bytes.clamp(1, want);
        if status.flags.contains(StatusFlags::ALLOCATED) {
            if status.flags.contains(StatusFlags::ZERO) {
                base.co_pwrite_zeroes(offset, n, RequestFlags::MAY_UNMAP)
                    .await?;
            } else {
                let buf = IoVector::alloc(n as usize);
                top.co_preadv(offset, &buf, RequestFlags::empty()).await?;
                base.co_pwritev(offset, &buf, RequestFlags::empty()).await?;
                copied += n;
                throttle(start, copied, rate_limit);
            }
        }
        offset += n;
        progress.print(offset as f32 * 100.0 / size as f32, 0);
    }
    base.co_flush().await
}

/// Sleeps until `copied` bytes are within `rate` bytes per second of `start` (`-r`).
fn throttle(start: Instant, copied: u64, rate: u64) {
    if rate == 0 {
        return;
    }
    let due = Duration::from_secs_f64(copied as f64 / rate as f64);
    if let Some(wait) = due.checked_sub(start.elapsed()) {
        std::thread::sleep(wait);
    }
}
