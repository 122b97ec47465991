//! `qemu-img resize`: grow or shrink an image's virtual size (qemu-img.c's img_resize).
//!
//! The size operand is taken off the end of the command line before option parsing, so that
//! `-1G` is a size and not an option. Shrinking needs `--shrink`; preallocation only applies
//! to growing.

use block::driver::PreallocMode;
use block::OpenFlags;

use super::cli::{self, error_exit, error_report, long, OpenSpec};
use super::cli::{OPT_IMAGE_OPTS, OPT_OBJECT, OPT_PREALLOCATION, OPT_SHRINK};

const LONG: &[crate::tools::getopt::LongOpt] = &[
    long("help", false, 'h'),
    long("object", true, OPT_OBJECT),
    long("image-opts", false, OPT_IMAGE_OPTS),
    long("preallocation", true, OPT_PREALLOCATION),
    long("shrink", false, OPT_SHRINK),
];

/// Runs `qemu-img resize`.
pub fn run(args: &[String]) -> i32 {
    if args.len() < 3 {
        return error_exit("Not enough arguments");
    }
    let size_arg = args[args.len() - 1].clone();
    let parsed = match cli::getopt(&args[..args.len() - 1], ":f:hq", LONG) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut spec = OpenSpec::default();
    let (mut quiet, mut shrink, mut prealloc) = (false, false, PreallocMode::Off);
    for opt in parsed.opts {
        let arg = opt.arg.unwrap_or_default();
        match opt.key {
            'h' => return super::help::print_help(),
            'f' => spec.fmt = Some(arg),
            'q' => quiet = true,
            OPT_OBJECT => {
                if let Err(rc) = cli::object_add(&arg) {
                    return rc;
                }
            }
            OPT_IMAGE_OPTS => spec.image_opts = true,
            OPT_PREALLOCATION => match PreallocMode::parse(&arg) {
                Ok(p) => prealloc = p,
                Err(_) => {
                    error_report(&format!("Invalid preallocation mode '{arg}'"));
                    return 1;
                }
            },
            OPT_SHRINK => shrink = true,
            _ => {}
        }
    }
    if parsed.operands.len() != 1 {
        return error_exit("Expecting image file name and size");
    }
    spec.filename = parsed.operands[0].clone();
    let (relative, number) = match size_arg.as_bytes().first() {
        Some(b'+') => (1i128, &size_arg[1..]),
        Some(b'-') => (-1, &size_arg[1..]),
        _ => (0, size_arg.as_str()),
    };
    let n = match cli::qemu_strtosz(number) {
        Ok(n) => n,
        Err(cli::SizeError::Range) => {
            error_report(&format!(
                "Value '{number}' is out of range for parameter 'size'"
            ));
            return 1;
        }
        Err(cli::SizeError::Invalid) => {
            error_report(
                "Parameter 'size' expects a non-negative number below 2^64\n\
                 Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
                 and exabytes, respectively.",
            );
            return 1;
        }
    };
    spec.flags = OpenFlags::default();
    let req = Resize {
        relative,
        n,
        prealloc,
        shrink,
        quiet,
    };
    cli::run_co(async {
        let Some(blk) = cli::img_open(&spec).await else {
            return 1;
        };
        let ret = resize(&blk, &req).await;
        if !cli::close(&blk).await {
            return 1;
        }
        ret
    })
}

/// What to resize to: `n` bytes absolute (relative 0) or added/removed (relative +1/-1).
struct Resize {
    relative: i128,
    n: u64,
    prealloc: PreallocMode,
    shrink: bool,
    quiet: bool,
}

/// Checks the new size against the current one and truncates; returns the exit status.
async fn resize(blk: &block::BlockBackend, r: &Resize) -> i32 {
    let current = blk.getlength() as i128;
    let total = if r.relative != 0 {
        current + r.relative * r.n as i128
    } else {
        r.n as i128
    };
    if total <= 0 || total > i64::MAX as i128 {
        error_report("New image size must be positive");
        return 1;
    }
    if total <= current && r.prealloc != PreallocMode::Off {
        error_report("Preallocation can only be used for growing images");
        return 1;
    }
    if total < current && !r.shrink {
        error_report("Use the --shrink option to perform a shrink operation.");
        cli::warn_report(
            "Shrinking an image will delete all data beyond the shrunken image's end. \
             Before performing such an operation, make sure there is no important data there.",
        );
        return 1;
    }
    match blk.co_truncate(total as u64, true, r.prealloc).await {
        Ok(()) => {
            if !r.quiet {
                println!("Image resized.");
            }
            0
        }
        Err(e) => {
            error_report(&e.to_string());
            1
        }
    }
}
