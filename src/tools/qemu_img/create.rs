//! `qemu-img create`: make a new image (qemu-img.c's img_create + block.c's bdrv_img_create).
//!
//! The format's and protocol's options are merged and filled from `-o`, the size operand and
//! `-b`/`-F`; a backing file is opened (unless `-u`) to check it and to borrow its size; then
//! the "Formatting" line is printed and the driver's create function runs.

use block::open::resolve_relative;
use block::{OpenFlags, Options};

use super::cli::{self, error_exit, error_report, long, OPT_OBJECT};
use super::create_opts::CreateOpts;
use super::create_opts::{has_help_option, is_valid_option_list, print_block_option_help};

const LONG: &[crate::tools::getopt::LongOpt] =
    &[long("help", false, 'h'), long("object", true, OPT_OBJECT)];

/// What `create` was asked to make.
pub struct ImgCreate {
    /// Target filename.
    pub filename: String,
    /// Format name (`-f`, default raw).
    pub fmt: String,
    /// `-b`.
    pub backing: Option<String>,
    /// `-F`.
    pub backing_fmt: Option<String>,
    /// The accumulated `-o` list.
    pub options: Option<String>,
    /// The size operand.
    pub size: Option<u64>,
    /// `-u`: do not open the backing file.
    pub unsafe_backing: bool,
    /// `-q`.
    pub quiet: bool,
}

/// Appends a `-o` argument to the list (accumulate_options); false after reporting.
pub fn accumulate_options(options: &mut Option<String>, list: &str) -> bool {
    if !is_valid_option_list(list) {
        error_report(&format!("Invalid option list: {list}"));
        return false;
    }
    *options = Some(match options.take() {
        None => list.to_string(),
        Some(prev) => format!("{prev},{list}"),
    });
    true
}

/// Runs `qemu-img create`.
pub fn run(args: &[String]) -> i32 {
    let parsed = match cli::getopt(args, ":F:b:f:ho:qu", LONG) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut req = ImgCreate {
        filename: String::new(),
        fmt: "raw".to_string(),
        backing: None,
        backing_fmt: None,
        options: None,
        size: None,
        unsafe_backing: false,
        quiet: false,
    };
    for opt in parsed.opts {
        let arg = opt.arg.unwrap_or_default();
        match opt.key {
            'h' => return super::help::print_help(),
            'F' => req.backing_fmt = Some(arg),
            'b' => req.backing = Some(arg),
            'f' => req.fmt = arg,
            'o' if !accumulate_options(&mut req.options, &arg) => return 1,
            'q' => req.quiet = true,
            'u' => req.unsafe_backing = true,
            OPT_OBJECT => {
                if let Err(rc) = cli::object_add(&arg) {
                    return rc;
                }
            }
            _ => {}
        }
    }
    let mut operands = parsed.operands.into_iter();
    let filename = operands.next();
    if req.options.as_deref().is_some_and(has_help_option) {
        return print_block_option_help(filename.as_deref(), &req.fmt);
    }
    let Some(filename) = filename else {
        return error_exit("Expecting image file name");
    };
    req.filename = filename;
    if let Some(size) = operands.next() {
        match cli::cvtnum("image size", &size) {
            Some(v) => req.size = Some(v as u64),
            None => return 1,
        }
    }
    if let Some(extra) = operands.next() {
        return error_exit(&format!("Unexpected argument: {extra}"));
    }
    match cli::run_co(img_create(&req)) {
        Ok(()) => 0,
        Err(msg) => {
            error_report(&format!("{}: {msg}", req.filename));
            1
        }
    }
}

/// Creates the image (bdrv_img_create); the error is the message to print after the name.
pub async fn img_create(req: &ImgCreate) -> Result<(), String> {
    let drv = block::registry::find_driver(&req.fmt)
        .ok_or_else(|| format!("Unknown file format '{}'", req.fmt))?;
    let proto = block::registry::find_protocol(&req.filename).map_err(|e| e.to_string())?;
    let Some(create) = drv.create else {
        return Err(format!(
            "Format driver '{}' does not support image creation",
            drv.format_name
        ));
    };
    if proto.create.is_none() {
        return Err(format!(
            "Protocol driver '{}' does not support image creation",
            proto.format_name
        ));
    }
    let mut opts = CreateOpts::new(drv, Some(proto));
    if let Some(list) = &req.options {
        opts.parse(list)?;
    }
    match (opts.get("size").is_some(), req.size) {
        (false, Some(size)) => opts.set_number("size", size),
        (true, Some(_)) => return Err("The image size must be specified only once".into()),
        _ => {}
    }
    set_backing_options(req, &mut opts)?;
    check_backing(req, &mut opts).await?;
    if opts.get("size").is_none() {
        return Err("Image creation needs a size parameter".into());
    }
    if !req.quiet {
        println!(
            "Formatting '{}', fmt={} {}",
            req.filename,
            req.fmt,
            opts.print_line()
        );
    }
    let mut options = opts.to_options();
    create(&req.filename, &mut options).await.map_err(|e| {
        if e.errno() == libc::EFBIG {
            // A format's default cluster size counts too, as in bdrv_img_create.
            let hint = if opts.get_size("cluster_size") != 0 {
                " (try using a larger cluster size)"
            } else {
                ""
            };
            format!(
                "The image size is too large for file format '{}'{hint}",
                req.fmt
            )
        } else {
            e.to_string()
        }
    })
}

fn set_backing_options(req: &ImgCreate, opts: &mut CreateOpts) -> Result<(), String> {
    if let Some(b) = &req.backing {
        if !opts.has("backing_file") {
            return Err(format!(
                "Backing file not supported for file format '{}'",
                req.fmt
            ));
        }
        opts.set("backing_file", b)?;
    }
    if let Some(f) = &req.backing_fmt {
        if !opts.has("backing_fmt") {
            return Err(format!(
                "Backing file format not supported for file format '{}'",
                req.fmt
            ));
        }
        opts.set("backing_fmt", f)?;
    }
    if let Some(b) = opts.get("backing_file") {
        if b == req.filename {
            return Err(
                "Error: Trying to create an image with the same filename as the backing file"
                    .into(),
            );
        }
        if b.is_empty() {
            return Err("Expected backing file name, got empty string".into());
        }
    }
    Ok(())
}

/// Opens the backing file to validate it and take its size when none was given.
async fn check_backing(req: &ImgCreate, opts: &mut CreateOpts) -> Result<(), String> {
    let Some(backing) = opts.get("backing_file").map(str::to_string) else {
        return Ok(());
    };
    let backing_fmt = opts.get("backing_fmt").map(str::to_string);
    if req.unsafe_backing {
        if backing_fmt.is_none() {
            return Err("Backing file specified without backing format".into());
        }
        return Ok(());
    }
    let full = resolve_relative(&req.filename, &backing);
    let mut options = Options::new();
    if let Some(f) = &backing_fmt {
        options.set("driver", f.clone());
    }
    let flags = OpenFlags {
        read_only: true,
        force_share: true,
        no_io: true,
        ..OpenFlags::default()
    };
    let bs = block::bdrv_open(Some(&full), options, flags)
        .await
        .map_err(|e| format!("{e}\nCould not open backing image."))?;
    if backing_fmt.is_none() {
        return Err(format!(
            "Backing file specified without backing format\nDetected format of {}.",
            bs.format_name()
        ));
    }
    if opts.get("size").is_none() {
        opts.set_number("size", bs.getlength());
    }
    let _ = bs.close().await;
    Ok(())
}
