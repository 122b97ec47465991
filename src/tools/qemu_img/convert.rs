//! `qemu-img convert`: copy one or more images (concatenated) into a new or existing image,
//! possibly of another format (qemu-img.c's img_convert). This module parses the command
//! line, opens the sources, creates and opens the target; [`super::convert_copy`] copies.

use std::rc::Rc;

use block::{BlockBackend, OpenFlags, Options, RequestFlags};

use super::cli::{self, error_report, long, OpenSpec};
use super::cli::{OPT_BITMAPS, OPT_IMAGE_OPTS, OPT_OBJECT, OPT_SALVAGE, OPT_SKIP_BROKEN};
use super::cli::{OPT_TARGET_IMAGE_OPTS, OPT_TARGET_IS_ZERO};
use super::convert_bitmaps;
use super::convert_copy::{ConvertState, SECTOR};
use super::create::accumulate_options;
use super::create_opts::{has_help_option, print_block_option_help, CreateOpts};
use super::human::Progress;

const LONG: &[crate::tools::getopt::LongOpt] = &[
    long("help", false, 'h'),
    long("object", true, OPT_OBJECT),
    long("image-opts", false, OPT_IMAGE_OPTS),
    long("force-share", false, 'U'),
    long("target-image-opts", false, OPT_TARGET_IMAGE_OPTS),
    long("salvage", false, OPT_SALVAGE),
    long("target-is-zero", false, OPT_TARGET_IS_ZERO),
    long("bitmaps", false, OPT_BITMAPS),
    long("skip-broken-bitmaps", false, OPT_SKIP_BROKEN),
];

/// Largest `-S` and data buffer, in sectors (MAX_BUF_SECTORS).
const MAX_BUF_SECTORS: u64 = 32768;

/// The parsed command line of `convert`.
#[derive(Default)]
struct Args {
    fmt: Option<String>,
    out_fmt: Option<String>,
    backing: Option<String>,
    backing_fmt: Option<String>,
    options: Option<String>,
    compressed: bool,
    copy_range: bool,
    snapshot: Option<SnapshotParam>,
    min_sparse: Option<u64>,
    progress: bool,
    cache: Option<String>,
    src_cache: Option<String>,
    quiet: bool,
    skip_create: bool,
    coroutines: Option<usize>,
    out_of_order: bool,
    force_share: bool,
    rate_limit: u64,
    image_opts: bool,
    tgt_image_opts: bool,
    salvage: bool,
    target_is_zero: bool,
    bitmaps: bool,
    skip_broken: bool,
    files: Vec<String>,
}

/// Applies one option; Err(status) stops with that exit status.
fn apply(a: &mut Args, key: char, arg: String) -> Result<(), i32> {
    match key {
        'h' => return Err(super::help::print_help()),
        'f' => a.fmt = Some(arg),
        'O' => a.out_fmt = Some(arg),
        'B' => a.backing = Some(arg),
        'C' => a.copy_range = true,
        'c' => a.compressed = true,
        'F' => a.backing_fmt = Some(arg),
        'o' if !accumulate_options(&mut a.options, &arg) => return Err(1),
        'l' => a.snapshot = Some(SnapshotParam::parse(&arg).ok_or(1)?),
        'S' => {
            let v = cli::cvtnum("buffer size for sparse output", &arg).ok_or(1)? as u64;
            if !v.is_multiple_of(SECTOR) || v / SECTOR > MAX_BUF_SECTORS {
                error_report(&format!(
                    "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to {}. Select 0 to disable sparse detection (fully allocates output).",
                    MAX_BUF_SECTORS * SECTOR
                ));
                return Err(1);
            }
            a.min_sparse = Some(v / SECTOR);
        }
        'p' => a.progress = true,
        't' => a.cache = Some(arg),
        'T' => a.src_cache = Some(arg),
        'q' => a.quiet = true,
        'n' => a.skip_create = true,
        'm' => match cli::strtoul(&arg).filter(|v| (1..=16).contains(v)) {
            Some(v) => a.coroutines = Some(v as usize),
            None => {
                error_report("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16");
                return Err(1);
            }
        },
        'W' => a.out_of_order = true,
        'U' => a.force_share = true,
        'r' => a.rate_limit = cli::cvtnum("rate limit", &arg).ok_or(1)? as u64,
        OPT_OBJECT => cli::object_add(&arg)?,
        OPT_IMAGE_OPTS => a.image_opts = true,
        OPT_SALVAGE => a.salvage = true,
        OPT_TARGET_IMAGE_OPTS => a.tgt_image_opts = true,
        OPT_TARGET_IS_ZERO => a.target_is_zero = true,
        OPT_BITMAPS => a.bitmaps = true,
        OPT_SKIP_BROKEN => a.skip_broken = true,
        _ => {}
    }
    Ok(())
}

/// The option combinations qemu-img refuses before opening anything.
fn check_combinations(a: &Args) -> Result<(), &'static str> {
    if a.skip_broken && !a.bitmaps {
        return Err("Use of --skip-broken-bitmaps requires --bitmaps");
    }
    if a.compressed && a.copy_range {
        return Err("Cannot enable copy offloading when -c is used");
    }
    if a.min_sparse.is_some() && a.copy_range {
        return Err("Cannot enable copy offloading when -S is used");
    }
    if a.copy_range && a.salvage {
        return Err("Cannot use copy offloading in salvaging mode");
    }
    if a.tgt_image_opts && !a.skip_create {
        return Err("--target-image-opts requires use of -n flag");
    }
    if a.skip_create && a.options.is_some() {
        return Err("-o has no effect when skipping image creation");
    }
    if a.target_is_zero && !a.skip_create {
        return Err("--target-is-zero requires use of -n flag");
    }
    Ok(())
}

/// Runs `qemu-img convert`.
pub fn run(args: &[String]) -> i32 {
    let parsed = match cli::getopt(args, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:", LONG) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut a = Args::default();
    for opt in parsed.opts {
        if let Err(code) = apply(&mut a, opt.key, opt.arg.unwrap_or_default()) {
            return code;
        }
    }
    if a.out_fmt.is_none() && !a.tgt_image_opts {
        a.out_fmt = Some("raw".into());
    }
    if let Err(msg) = check_combinations(&a) {
        error_report(msg);
        return 1;
    }
    a.files = parsed.operands;
    let out_filename = (a.files.len() >= 2).then(|| a.files[a.files.len() - 1].clone());
    if a.options.as_deref().is_some_and(has_help_option) {
        return match &a.out_fmt {
            Some(f) => print_block_option_help(out_filename.as_deref(), f),
            None => {
                error_report("Option help requires a format be specified");
                1
            }
        };
    }
    if a.files.len() < 2 {
        error_report("Must specify image file name");
        return 1;
    }
    if a.snapshot.is_some() && a.files.len() > 2 {
        error_report("No support for concatenating multiple snapshot");
        return 1;
    }
    let src_cache = a.src_cache.clone().unwrap_or_else(|| "writeback".into());
    let Some(src_mode) = cli::parse_cache(&src_cache) else {
        error_report(&format!("Invalid source cache option: {src_cache}"));
        return 1;
    };
    if a.quiet {
        a.progress = false;
    }
    let progress = Progress::new(a.progress, 1.0);
    let out = out_filename.unwrap_or_default();
    let ok = cli::run_co(convert(&a, src_mode, &out, progress));
    i32::from(!ok)
}

async fn open_sources(a: &Args, mode: block::node::CacheMode) -> Option<Vec<Rc<BlockBackend>>> {
    let mut src = Vec::new();
    for name in &a.files[..a.files.len() - 1] {
        let spec = OpenSpec {
            filename: name.clone(),
            fmt: a.fmt.clone(),
            image_opts: a.image_opts,
            flags: OpenFlags {
                read_only: true,
                cache: mode,
                force_share: a.force_share,
                ..OpenFlags::default()
            },
            writethrough: !mode.writeback,
        };
        src.push(cli::img_open(&spec).await?);
    }
    Some(src)
}

async fn convert(
    a: &Args,
    src_mode: block::node::CacheMode,
    out: &str,
    mut progress: Progress,
) -> bool {
    progress.print(0.0, 100);
    let Some(src) = open_sources(a, src_mode).await else {
        progress.end();
        return false;
    };
    if let Some(param) = &a.snapshot {
        if let Err(e) = param.load(&src[0].bs()).await {
            error_report(&format!("Failed to load snapshot: {e}"));
            progress.end();
            return false;
        }
    }
    if a.bitmaps {
        let fine = if src.len() > 1 {
            error_report("Copying bitmaps only possible with single source");
            false
        } else {
            convert_bitmaps::check_source(&src[0].bs(), a.skip_broken)
        };
        if !fine {
            progress.end();
            close_all(src).await;
            return false;
        }
    }
    let total_bytes: u64 = src.iter().map(|b| b.getlength()).sum();
    let result = match prepare_target(a, out, total_bytes, src.len()).await {
        Some((target, target_has_backing)) => {
            copy(a, src.clone(), target.clone(), target_has_backing, progress).await
                && (!a.bitmaps
                    || convert_bitmaps::copy(&src[0].bs(), &target.bs(), a.skip_broken).await)
                && cli::close(&target).await
        }
        None => {
            progress.end();
            false
        }
    };
    close_all(src).await;
    result
}

/// Closes the sources; what they fail to write back is not the conversion's concern.
async fn close_all(src: Vec<Rc<BlockBackend>>) {
    for s in src {
        let _ = s.close().await;
    }
}

/// Creates (unless -n) and opens the target; reports errors. Returns it and whether it has
/// a backing file.
async fn prepare_target(
    a: &Args,
    out: &str,
    total_bytes: u64,
    nsrc: usize,
) -> Option<(Rc<BlockBackend>, bool)> {
    let create = match a.skip_create {
        true => None,
        false => {
            let fmt = a.out_fmt.clone().unwrap_or_default();
            Some((create_options(a, &fmt, out, total_bytes)?, fmt))
        }
    };
    let opts = create.as_ref().map(|(o, _)| o);
    let backing = opts
        .and_then(|o| o.get("backing_file").map(str::to_string))
        .or_else(|| a.backing.clone());
    if let Err(msg) = check_target(a, opts, backing.is_some(), nsrc) {
        error_report(msg);
        return None;
    }
    if let Some((opts, fmt)) = &create {
        let drv = block::registry::find_driver(fmt).expect("checked in create_options");
        let create_fn = drv.create.expect("checked in create_options");
        if let Err(e) = create_fn(out, &mut opts.to_options()).await {
            error_report(&format!("{out}: error while converting {fmt}: {e}"));
            return None;
        }
    }
    let target = open_target(a, out, create.as_ref().map(|(o, _)| o)).await?;
    if a.bitmaps && !convert_bitmaps::check_target(&target.bs()) {
        return None;
    }
    let can_compress = target
        .bs()
        .drv()
        .supported_write_flags()
        .contains(RequestFlags::WRITE_COMPRESSED);
    if a.compressed && !can_compress {
        error_report("Compression not supported for this file format");
        return None;
    }
    if a.skip_create && target.getlength() / SECTOR < total_bytes / SECTOR {
        error_report("output file is smaller than input file");
        return None;
    }
    Some((target, backing.is_some()))
}

/// The checks img_convert makes between parsing the target options and creating it.
fn check_target(
    a: &Args,
    opts: Option<&CreateOpts>,
    has_backing: bool,
    nsrc: usize,
) -> Result<(), &'static str> {
    let opt = |k: &str| opts.and_then(|o| o.get(k));
    if a.target_is_zero && has_backing {
        return Err("Cannot use --target-is-zero when the destination image has a backing file");
    }
    if nsrc > 1 && has_backing {
        return Err("Having a backing file for the target makes no sense when concatenating multiple input images");
    }
    if opt("backing_file").is_some() && opt("backing_fmt").is_none() {
        return Err("Use of backing file requires explicit backing format");
    }
    if a.compressed {
        // raw has no compressed layout; other formats are asked once the target is open.
        if a.out_fmt.as_deref() == Some("raw") && !a.skip_create {
            return Err("Compression not supported for this file format");
        }
        let encryption =
            opt("encryption").is_some_and(|v| block::options::parse_bool(v) == Some(true));
        if encryption || opt("encrypt.format").is_some() {
            return Err("Compression and encryption not supported at the same time");
        }
        if opt("preallocation").is_some_and(|p| p != "off") {
            return Err("Compression and preallocation not supported at the same time");
        }
    }
    if a.copy_range {
        return Err("Copy offloading (-C) is not supported by rqemu-img yet");
    }
    Ok(())
}

/// Opens the target: cache mode `-t` (default unsafe), discard on when sparse.
/// Opens the target; the creation options' key secrets come along, so that an encrypted
/// target opens with the passphrase it was created with (img_add_key_secrets).
async fn open_target(
    a: &Args,
    out: &str,
    created: Option<&CreateOpts>,
) -> Option<Rc<BlockBackend>> {
    let cache = a.cache.clone().unwrap_or_else(|| "unsafe".into());
    let Some(mode) = cli::parse_cache(&cache) else {
        error_report(&format!("Invalid cache option: {cache}"));
        return None;
    };
    let spec = OpenSpec {
        filename: out.to_string(),
        fmt: a.out_fmt.clone(),
        image_opts: a.skip_create && a.tgt_image_opts,
        flags: OpenFlags {
            cache: mode,
            unmap: a.min_sparse.unwrap_or(8) != 0,
            ..OpenFlags::default()
        },
        writethrough: !mode.writeback,
    };
    let mut secrets = Options::new();
    if let Some(opts) = created {
        for (key, value) in opts.to_options().iter() {
            if key.ends_with("key-secret") {
                secrets.set(key, value);
            }
        }
    }
    cli::img_open_with(&spec, secrets).await
}

/// The target's creation options: -o, the size, -B/-F (convert's part of bdrv_img_create).
fn create_options(a: &Args, fmt: &str, out: &str, total_bytes: u64) -> Option<CreateOpts> {
    let Some(drv) = block::registry::find_driver(fmt) else {
        error_report(&format!("Unknown file format '{fmt}'"));
        return None;
    };
    let proto = match block::registry::find_protocol(out) {
        Ok(p) => p,
        Err(e) => {
            error_report(&e.to_string());
            return None;
        }
    };
    if drv.create.is_none() || proto.create.is_none() {
        let (kind, name) = if drv.create.is_none() {
            ("Format", drv.format_name)
        } else {
            ("Protocol", proto.format_name)
        };
        error_report(&format!(
            "{kind} driver '{name}' does not support image creation"
        ));
        return None;
    }
    let mut opts = CreateOpts::new(drv, Some(proto));
    if let Some(list) = &a.options {
        if let Err(e) = opts.parse(list) {
            error_report(&e);
            return None;
        }
    }
    opts.set_number("size", total_bytes);
    for (value, key, what) in [
        (&a.backing, "backing_file", "Backing file"),
        (&a.backing_fmt, "backing_fmt", "Backing file format"),
    ] {
        if let Some(v) = value {
            if !opts.has(key) || opts.set(key, v).is_err() {
                error_report(&format!("{what} not supported for file format '{fmt}'"));
                return None;
            }
        }
    }
    Some(opts)
}

/// Runs of a source are aligned to its request alignment and cluster size, in sectors.
fn source_alignment(blk: &BlockBackend) -> u64 {
    let bs = &blk.bs();
    let align = (bs.limits().request_alignment as u64).div_ceil(SECTOR);
    let cluster = bs.drv().get_info(bs).map_or(0, |i| i.cluster_size / SECTOR);
    align.max(cluster).max(1)
}

async fn copy(
    a: &Args,
    src: Vec<Rc<BlockBackend>>,
    target: Rc<BlockBackend>,
    target_has_backing: bool,
    progress: Progress,
) -> bool {
    let mut s = ConvertState::new(src, target.clone(), progress);
    s.src_alignment = s.src.iter().map(|b| source_alignment(b)).collect();
    s.min_sparse = a.min_sparse.unwrap_or(8);
    s.quiet = a.quiet;
    s.salvage = a.salvage;
    s.wr_in_order = !a.out_of_order;
    s.num_coroutines = a.coroutines.unwrap_or(8);
    s.rate_limit = a.rate_limit;
    s.target_has_backing = target_has_backing;
    let out_bs = &target.bs();
    let limits = out_bs.limits();
    s.buf_sectors =
        MAX_BUF_SECTORS.min(s.buf_sectors.max(limits.pdiscard_alignment as u64 / SECTOR));
    let pow2floor = |x: u64| {
        if x == 0 {
            0
        } else {
            1u64 << (63 - x.leading_zeros())
        }
    };
    s.alignment = pow2floor(s.min_sparse)
        .max((limits.request_alignment as u64).div_ceil(SECTOR))
        .max(1);
    if target_has_backing && !a.skip_create {
        s.target_backing_sectors = out_bs.backing().map(|b| b.getlength() / SECTOR);
    }
    let out_info = out_bs.drv().get_info(out_bs).unwrap_or_default();
    s.compressed = a.compressed || out_info.needs_compressed_writes;
    s.cluster_sectors = out_info.cluster_size / SECTOR;
    if s.compressed {
        if s.cluster_sectors == 0 || s.cluster_sectors > s.buf_sectors {
            error_report("invalid cluster size");
            return false;
        }
        s.buf_sectors = s.cluster_sectors;
    }
    s.has_zero_init = a.target_is_zero
        || (!a.skip_create
            && s.min_sparse != 0
            && !target_has_backing
            && out_bs.drv().has_zero_init(out_bs));
    let s = Rc::new(s);
    let ret = s.do_copy().await;
    s.progress_end(ret == 0);
    ret == 0
}

/// The `-l` argument: a bare id-or-name, or `snapshot.id=...,snapshot.name=...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotParam {
    /// Tried as an id first, then as a name.
    IdOrName(String),
    /// Both given must match.
    IdName(Option<String>, Option<String>),
}

impl SnapshotParam {
    /// Parses `-l` as qemu-img does; errors are reported and give None.
    pub fn parse(arg: &str) -> Option<SnapshotParam> {
        if !arg.starts_with("snapshot.") {
            return Some(SnapshotParam::IdOrName(arg.to_string()));
        }
        let (mut id, mut name) = (None, None);
        for item in arg.split(',') {
            let (key, value) = item.split_once('=').unwrap_or((item, "on"));
            match key {
                "snapshot.id" => id = Some(value.to_string()),
                "snapshot.name" => name = Some(value.to_string()),
                _ => {
                    error_report(&format!("Invalid parameter '{key}'"));
                    error_report(&format!("Failed in parsing snapshot param '{arg}'"));
                    return None;
                }
            }
        }
        Some(SnapshotParam::IdName(id, name))
    }

    /// Shows the snapshot in place of the image's current state (read-only).
    pub async fn load(&self, bs: &block::BlockDriverState) -> block::Result<()> {
        match self {
            SnapshotParam::IdOrName(s) => {
                block::snapshot::bdrv_snapshot_load_tmp_by_id_or_name(bs, s).await
            }
            SnapshotParam::IdName(id, name) => {
                block::snapshot::bdrv_snapshot_load_tmp(bs, id.as_deref(), name.as_deref()).await
            }
        }
    }
}
