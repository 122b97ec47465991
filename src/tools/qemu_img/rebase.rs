//! `qemu-img rebase`: point an image at a different backing file (qemu-img.c's img_rebase).
//!
//! Safe mode keeps what the guest sees: for every range the image does not allocate itself,
//! the data of the old backing chain is compared with the data of the new backing file, and
//! where they differ the old data is copied into the image before the header changes.
//! Unsafe mode (`-u`) only rewrites the backing file name and format in the header.

use std::rc::Rc;

use block::driver::{RequestFlags, StatusFlags};
use block::open::resolve_relative;
use block::{BlockBackend, BlockDriverState, IoVector, OpenFlags, Options, Result};

use super::cli::{self, error_exit, error_report, long, OpenSpec};
use super::cli::{OPT_IMAGE_OPTS, OPT_OBJECT};
use super::human::Progress;

/// How much is compared per step (QEMU's IO_BUF_SIZE).
const IO_BUF_SIZE: u64 = 2 << 20;

const LONG: &[crate::tools::getopt::LongOpt] = &[
    long("help", false, 'h'),
    long("object", true, OPT_OBJECT),
    long("image-opts", false, OPT_IMAGE_OPTS),
    long("force-share", false, 'U'),
    long("compress", false, 'c'),
];

/// The parsed command line.
#[derive(Default)]
struct Args {
    spec: OpenSpec,
    backing: Option<String>,
    backing_fmt: Option<String>,
    cache: Option<String>,
    src_cache: Option<String>,
    unsafe_mode: bool,
    compress: bool,
    progress: bool,
    quiet: bool,
    force_share: bool,
}

fn parse(args: &[String]) -> std::result::Result<Args, i32> {
    let parsed = cli::getopt(args, ":hf:F:b:upt:T:qUc", LONG)?;
    let mut a = Args::default();
    for opt in parsed.opts {
        let arg = opt.arg.unwrap_or_default();
        match opt.key {
            'h' => return Err(super::help::print_help()),
            'f' => a.spec.fmt = Some(arg),
            'F' => a.backing_fmt = Some(arg),
            'b' => a.backing = Some(arg),
            'u' => a.unsafe_mode = true,
            'p' => a.progress = true,
            't' => a.cache = Some(arg),
            'T' => a.src_cache = Some(arg),
            'q' => a.quiet = true,
            'U' => a.force_share = true,
            'c' => a.compress = true,
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
    if !a.unsafe_mode && a.backing.is_none() {
        return Err(error_exit(
            "Must specify backing file (-b) or use unsafe mode (-u)",
        ));
    }
    a.spec.filename = parsed.operands[0].clone();
    Ok(a)
}

/// Runs `qemu-img rebase`.
pub fn run(args: &[String]) -> i32 {
    let mut a = match parse(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let mut progress = Progress::new(a.progress, 2.0);
    progress.print(0.0, 100);
    let cache = a.cache.clone().unwrap_or_else(|| "writeback".into());
    let Some(mode) = cli::parse_cache(&cache) else {
        error_report(&format!("Invalid cache option: {cache}"));
        return 1;
    };
    let src_cache = a.src_cache.clone().unwrap_or_else(|| "writeback".into());
    let Some(src_mode) = cli::parse_cache(&src_cache) else {
        error_report(&format!("Invalid source cache option: {src_cache}"));
        return 1;
    };
    a.spec.flags = OpenFlags {
        cache: mode,
        no_backing: a.unsafe_mode,
        ..OpenFlags::default()
    };
    a.spec.writethrough = !mode.writeback;
    let src_flags = OpenFlags {
        read_only: true,
        cache: src_mode,
        force_share: a.force_share,
        ..OpenFlags::default()
    };
    cli::run_co(async {
        let Some(blk) = cli::img_open(&a.spec).await else {
            return 1;
        };
        let mut ret = rebase(&blk, &a, src_flags, &mut progress).await;
        if !cli::close(&blk).await {
            ret = 1;
        }
        if ret == 0 {
            progress.print(100.0, 0);
        }
        progress.end();
        ret
    })
}

/// Checks the options against the opened image, copies data in safe mode and rewrites the
/// header; returns the exit status.
async fn rebase(
    blk: &Rc<BlockBackend>,
    a: &Args,
    src_flags: OpenFlags,
    progress: &mut Progress,
) -> i32 {
    let bs = blk.bs().clone();
    let mut write_flags = RequestFlags::empty();
    if a.compress {
        if !bs
            .drv()
            .supported_write_flags()
            .contains(RequestFlags::WRITE_COMPRESSED)
        {
            error_report("Compression not supported for this file format");
            return 1;
        }
        write_flags |= RequestFlags::WRITE_COMPRESSED;
    }
    if let Some(fmt) = &a.backing_fmt {
        if block::registry::find_driver(fmt).is_none() {
            error_report(&format!("Invalid format name: '{fmt}'"));
            return 1;
        }
    }
    let new_name = a.backing.clone().unwrap_or_default();
    if !a.unsafe_mode {
        let new_backing = match open_new_backing(&bs, &new_name, a, src_flags).await {
            Ok(b) => b,
            Err(code) => return code,
        };
        let copy = Copy {
            blk,
            bs: &bs,
            new_backing: new_backing.as_ref().map(|(_, node)| node),
            write_flags,
        };
        let copied = copy.run(progress).await;
        if let Some((Some(new_blk), _)) = &new_backing {
            let _ = new_blk.close().await;
        }
        // The copied clusters' mappings must be on disk before the header names the new
        // backing file: a crash in between would show the new backing file's data where
        // the old one's was (found by rqemu-crash-explore). And the copied data before its
        // mappings: the copy is the guest's durable view, and with lazy refcounts nothing
        // else orders a cached L2 table's write-back after the data (a crash could map a
        // cluster whose copy never landed), so the image's file is flushed first.
        let data_flushed = match bs.file() {
            Some(file) => file.co_flush().await,
            None => Ok(()),
        };
        if let Err(e) = copied.and(data_flushed).and(blk.co_flush().await) {
            error_report(&format!("Error while rebasing the image: {e}"));
            return 1;
        }
    }
    change_backing_file(&bs, &new_name, a.backing_fmt.as_deref()).await
}

/// The new backing node, and the backend that keeps it open when rebase opened it itself.
type NewBacking = (Option<Rc<BlockBackend>>, Rc<BlockDriverState>);

/// The new backing file to compare against: a node of the image's own chain when the new
/// backing file is one of its current backing files, otherwise a freshly opened one; None
/// for `-b ''`.
async fn open_new_backing(
    bs: &Rc<BlockDriverState>,
    name: &str,
    a: &Args,
    src_flags: OpenFlags,
) -> std::result::Result<Option<NewBacking>, i32> {
    if name.is_empty() {
        return Ok(None);
    }
    let real_path = resolve_relative(&bs.filename(), name);
    if let Some(node) = find_backing_image(bs, &real_path) {
        return Ok(Some((None, node)));
    }
    let mut options = Options::new();
    if let Some(fmt) = &a.backing_fmt {
        options.set("driver", fmt.clone());
    }
    match BlockBackend::open(Some(&real_path), options, src_flags).await {
        Ok(blk) => Ok(Some((Some(blk.clone()), blk.bs().clone()))),
        Err(e) => {
            error_report(&format!("Could not open new backing file '{name}': {e}"));
            Err(1)
        }
    }
}

/// The node of `bs`'s backing chain whose file is `path` (bdrv_find_backing_image).
fn find_backing_image(bs: &BlockDriverState, path: &str) -> Option<Rc<BlockDriverState>> {
    let wanted = std::fs::canonicalize(path).ok()?;
    let mut layer = bs.backing();
    while let Some(node) = layer {
        if std::fs::canonicalize(node.filename()).is_ok_and(|p| p == wanted) {
            return Some(node);
        }
        layer = node.backing();
    }
    None
}

/// Rewrites the header's backing reference; reports failures as img_rebase does.
async fn change_backing_file(bs: &BlockDriverState, name: &str, fmt: Option<&str>) -> i32 {
    let result = if name.is_empty() {
        bs.drv().co_change_backing_file(bs, None, None).await
    } else if fmt.is_none() {
        Err(block::Error::invalid("backing format must be specified"))
    } else {
        bs.drv().co_change_backing_file(bs, Some(name), fmt).await
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            let why = match e.errno() {
                libc::ENOSPC => block::error::strerror(libc::ENOSPC),
                _ => e.to_string(),
            };
            error_report(&format!(
                "Could not change the backing file to '{name}': {why}"
            ));
            1
        }
    }
}

/// The safe-mode copy: old backing data goes into the image wherever the new backing file
/// would read differently.
struct Copy<'a> {
    blk: &'a BlockBackend,
    bs: &'a Rc<BlockDriverState>,
    new_backing: Option<&'a Rc<BlockDriverState>>,
    write_flags: RequestFlags,
}

impl Copy<'_> {
    async fn run(&self, progress: &mut Progress) -> Result<()> {
        let size = self.blk.getlength();
        let cluster = self.bs.drv().get_info(self.bs)?.cluster_size.max(512);
        let steps = size.div_ceil(IO_BUF_SIZE.min(size.max(1))).max(1);
        let local_progress = 100.0 / steps as f32;
        let old_backing = self.bs.backing();
        // When the new backing file is below the old one in the chain, only what lies in
        // between can differ.
        let prefix = self
            .new_backing
            .filter(|n| in_chain(old_backing.as_ref(), n));
        let mut offset = 0;
        while offset < size {
            progress.print(local_progress, 100);
            let end = (offset + IO_BUF_SIZE).min(size);
            let mut pos = offset;
            while pos < end {
                let (allocated, n) = self.bs.co_is_allocated(pos, end - pos).await?;
                let n = n.clamp(1, end - pos);
                let n = match (&old_backing, prefix) {
                    _ if allocated => n,
                    // Beyond the end of the old backing file the guest saw zeroes.
                    (Some(old), Some(_)) if pos >= old.getlength() => {
                        self.copy_range(old_backing.as_ref(), pos, n, cluster)
                            .await?;
                        n
                    }
                    (Some(old), Some(p)) => {
                        let n = n.min(old.getlength() - pos);
                        let (st, _) = old.co_block_status_above(Some(p), false, pos, n).await?;
                        let m = st.bytes.clamp(1, n);
                        if st.flags.contains(StatusFlags::ALLOCATED) {
                            self.copy_range(old_backing.as_ref(), pos, m, cluster)
                                .await?;
                        }
                        m
                    }
                    _ => {
                        self.copy_range(old_backing.as_ref(), pos, n, cluster)
                            .await?;
                        n
                    }
                };
                pos += n;
            }
            offset = end;
        }
        Ok(())
    }

    /// Compares old and new backing data over an unallocated range, one image cluster at a
    /// time, and writes the old data of each cluster that differs.
    async fn copy_range(
        &self,
        old: Option<&Rc<BlockDriverState>>,
        offset: u64,
        bytes: u64,
        cluster: u64,
    ) -> Result<()> {
        let old_data = read_or_zero(old, offset, bytes).await?;
        let new_data = read_or_zero(self.new_backing, offset, bytes).await?;
        // Where the old backing read as zeroes throughout, zero writes keep the overlay
        // sparse (a zero cluster rather than a data cluster of zeroes), as img_rebase does.
        let old_is_zero = old_data.iter().all(|&b| b == 0);
        let mut pos = 0u64;
        while pos < bytes {
            let next = ((offset + pos) / cluster + 1) * cluster - offset;
            let len = next.min(bytes) - pos;
            let r = pos as usize..(pos + len) as usize;
            if old_data[r.clone()] != new_data[r.clone()] {
                let flags = if (offset + pos).is_multiple_of(cluster) && len == cluster {
                    self.write_flags
                } else {
                    RequestFlags::empty()
                };
                if old_is_zero {
                    self.blk
                        .co_pwrite_zeroes(offset + pos, len, RequestFlags::empty())
                        .await?;
                } else {
                    let qiov = IoVector::from_slice(&old_data[r]);
                    self.blk.co_pwritev(offset + pos, &qiov, flags).await?;
                }
            }
            pos += len;
        }
        Ok(())
    }
}

/// Whether `node` is `top` or one of its backing files.
fn in_chain(top: Option<&Rc<BlockDriverState>>, node: &Rc<BlockDriverState>) -> bool {
    let mut layer = top.cloned();
    while let Some(l) = layer {
        if Rc::ptr_eq(&l, node) {
            return true;
        }
        layer = l.backing();
    }
    false
}

/// Reads a range of a backing node; what lies beyond its end (or without one) reads as
/// zeroes, as the guest would see it.
async fn read_or_zero(
    node: Option<&Rc<BlockDriverState>>,
    offset: u64,
    bytes: u64,
) -> Result<Vec<u8>> {
    let mut data = vec![0u8; bytes as usize];
    let Some(node) = node else {
        return Ok(data);
    };
    let len = node.getlength();
    if offset < len {
        let n = (len - offset).min(bytes) as usize;
        let buf = IoVector::alloc(n);
        node.co_preadv(offset, &buf, RequestFlags::empty()).await?;
        data[..n].copy_from_slice(&buf.to_vec());
    }
    Ok(data)
}
