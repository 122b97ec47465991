//! Opening and closing the image, and the interpreter's own commands: open, close, help,
//! quit (open_f/openfile in qemu-io.c, help_f in qemu-io-cmds.c).

use std::rc::Rc;

use block::node::{AioMode, CacheMode};
use block::{BlockBackend, OpenFlags, Options};

use super::commands::{find_command, oneline, usage, COMMANDS};
use super::output::{out, report, Reported};
use super::parse::Getopt;
use super::QemuIo;
use crate::tools::image::raw_probe_warning;

/// Everything needed to open the image (openfile's arguments).
#[derive(Clone, Debug, Default)]
pub struct OpenRequest {
    /// The filename, `json:{...}` included; None when options name the file.
    pub name: Option<String>,
    /// Driver options (`driver=`, `-o`, `--image-opts`).
    pub opts: Options,
    /// Block layer flags; the cache mode's `writeback` is the BlockBackend's write cache.
    pub flags: OpenFlags,
    /// `-U`: share every permission (force-share=on).
    pub force_share: bool,
    /// `-s`: writes go to a temporary overlay (BDRV_O_SNAPSHOT).
    pub snapshot: bool,
    /// `-C`: reads copy backing data into the image (BDRV_O_COPY_ON_READ).
    pub copy_on_read: bool,
}

impl OpenRequest {
    /// qemu-io's defaults: read-write, writethrough, discard=unmap, thread pool I/O.
    pub fn new() -> OpenRequest {
        OpenRequest {
            flags: OpenFlags {
                unmap: true,
                cache: CacheMode {
                    writeback: false,
                    ..CacheMode::default()
                },
                ..OpenFlags::default()
            },
            ..OpenRequest::default()
        }
    }

    /// Whether the format will be probed (no driver named anywhere), which earns a warning
    /// if probing guesses raw.
    fn probes(&self) -> bool {
        if self.opts.contains("driver") {
            return false;
        }
        match self.name.as_deref() {
            Some(json) if json.starts_with("json:") => Options::parse_json_filename(json)
                .map(|o| !o.contains("driver"))
                .unwrap_or(true),
            Some(_) => true,
            None => false,
        }
    }
}

/// Applies `-t MODE` (bdrv_parse_cache_mode); prints the error itself.
pub fn parse_cache(req: &mut OpenRequest, mode: &str) -> Result<(), Reported> {
    req.flags.cache = CacheMode::parse(mode).map_err(|e| {
        report!("{e}");
        Reported
    })?;
    Ok(())
}

/// Applies `-d MODE` (bdrv_parse_discard_flags); prints the error itself.
pub fn parse_discard(req: &mut OpenRequest, mode: &str) -> Result<(), Reported> {
    req.flags.unmap = match mode {
        "off" | "ignore" => false,
        "on" | "unmap" => true,
        _ => {
            report!("Invalid discard option: {mode}");
            return Err(Reported);
        }
    };
    Ok(())
}

/// Applies `-i MODE` (bdrv_parse_aio); prints the error itself.
pub fn parse_aio(req: &mut OpenRequest, mode: &str) -> Result<(), Reported> {
    req.flags.aio = AioMode::parse(mode).map_err(|e| {
        report!("{e}");
        Reported
    })?;
    Ok(())
}

/// Opens the image as qemu-io's current one; errors are printed as "can't open device
/// NAME: why" (openfile).
pub async fn openfile(io: &QemuIo, mut req: OpenRequest) -> Result<(), Reported> {
    if io.has_blk() {
        report!("file open already, try 'help close'");
        return Err(Reported);
    }
    let fail = |why: &dyn std::fmt::Display, name: &Option<String>| {
        match name {
            Some(n) => report!("can't open device {n}: {why}"),
            None => report!("can't open: {why}"),
        }
        Reported
    };
    if req.force_share {
        if req.opts.get("force-share").is_some_and(|v| v != "on") {
            report!("-U conflicts with image options");
            return Err(Reported);
        }
        req.opts.set("force-share", "on");
        req.flags.force_share = true;
    }
    let blk = open_backend(&req).await.map_err(|e| fail(&e, &req.name))?;
    if req.probes() && blk.bs().format_name() == "raw" {
        let name = req.name.clone().unwrap_or_default();
        super::output::eprint(format_args!("{}\n", raw_probe_warning(&name)));
    }
    io.set_blk(blk, req);
    Ok(())
}

/// Opens the graph a request describes, with its write-cache mode applied.
pub async fn open_backend(req: &OpenRequest) -> block::Result<Rc<BlockBackend>> {
    let flags = OpenFlags {
        snapshot: req.snapshot,
        ..req.flags
    };
    let blk = BlockBackend::open(req.name.as_deref(), req.opts.clone(), flags).await?;
    if req.copy_on_read {
        blk.bs().enable_copy_on_read()?;
    }
    blk.set_write_cache(req.flags.cache.writeback);
    Ok(blk)
}

/// Parses `open`'s options into a request; Err carries the command's return value.
fn open_request(io: &QemuIo, argv: &[String]) -> Result<(OpenRequest, Vec<String>), i32> {
    let ct = find_command("open").unwrap();
    let mut req = OpenRequest::new();
    let mut read_only = false;
    let mut g = Getopt::new(argv, "snCro:ki:t:d:U");
    while let Some(opt) = g.next() {
        let applied = match opt {
            Ok(('s', _)) => {
                req.snapshot = true;
                Ok(())
            }
            Ok(('n', _)) => parse_cache(&mut req, "none"),
            Ok(('C', _)) => {
                req.copy_on_read = true;
                Ok(())
            }
            Ok(('r', _)) => {
                read_only = true;
                Ok(())
            }
            Ok(('k', _)) => parse_aio(&mut req, "native"),
            Ok(('t', Some(mode))) => parse_cache(&mut req, &mode),
            Ok(('d', Some(mode))) => parse_discard(&mut req, &mode),
            Ok(('i', Some(mode))) => parse_aio(&mut req, &mode),
            Ok(('o', Some(text))) => add_open_options(io, &mut req.opts, &text),
            Ok(('U', _)) => {
                req.force_share = true;
                Ok(())
            }
            _ => return Err(usage(ct)),
        };
        applied.map_err(|Reported| -libc::EINVAL)?;
    }
    req.flags.read_only = read_only;
    Ok((req, g.operands()))
}

/// Merges one `-o` option string (qemu_opts_parse_noisily into empty_opts).
fn add_open_options(io: &QemuIo, opts: &mut Options, text: &str) -> Result<(), Reported> {
    if io.image_opts {
        out!("--image-opts and 'open -o' are mutually exclusive\n");
        return Err(Reported);
    }
    let parsed = Options::parse_keyval(text, None).map_err(|e| {
        report!("{e}");
        Reported
    })?;
    for (k, v) in parsed.iter() {
        opts.set(k, v);
    }
    Ok(())
}

/// `open [-rsCnkU] [-t cache] [-d discard] [-o options] [path]`.
pub async fn open_f(io: &QemuIo, argv: &[String]) -> i32 {
    let (mut req, mut operands) = match open_request(io, argv) {
        Ok(r) => r,
        Err(ret) => return ret,
    };
    if io.image_opts && operands.len() == 1 {
        match Options::parse_keyval(&operands[0], None) {
            Ok(parsed) => req.opts = parsed,
            Err(e) => {
                report!("{e}");
                return -libc::EINVAL;
            }
        }
        operands.clear();
    }
    match operands.len() {
        0 => {}
        1 => req.name = operands.pop(),
        _ => return usage(find_command("open").unwrap()),
    }
    match openfile(io, req).await {
        Ok(()) => 0,
        Err(Reported) => -libc::EINVAL,
    }
}

/// `close`: drains and closes the image; completions of its requests print first.
pub async fn close_f(io: &QemuIo, _argv: &[String]) -> i32 {
    io.close_image().await;
    0
}

/// `help [command]`.
pub async fn help_f(_io: &QemuIo, argv: &[String]) -> i32 {
    let Some(name) = argv.get(1) else {
        for ct in COMMANDS {
            out!("{}", oneline(ct.name, ct));
        }
        out!("\nUse 'help commandname' for extended help.\n");
        return 0;
    };
    match find_command(name) {
        Some(ct) => {
            out!("{}", oneline(name, ct));
            if let Some(help) = ct.help {
                out!("{}", help());
            }
            0
        }
        None => {
            out!("command {name} not found\n");
            -libc::EINVAL
        }
    }
}

/// `quit`.
pub async fn quit_f(io: &QemuIo, _argv: &[String]) -> i32 {
    io.request_quit();
    0
}
