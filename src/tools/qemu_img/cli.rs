//! What every qemu-img subcommand shares: option parsing with qemu-img's error wording,
//! error reporting, number parsing (cvtnum), and opening images (qemu-img.c's img_open).

use std::future::Future;
use std::rc::Rc;

use block::node::CacheMode;
use block::{AioContext, BlockBackend, OpenFlags, Options};

use crate::tools::getopt::{getopt_long, HasArg, LongOpt, Parsed};
use crate::tools::image::{warn_if_probed_raw, ImageSpec};

/// The name QEMU's error_report prefixes messages with (the tool we stand in for).
pub const PROG: &str = "qemu-img";

/// Long-option key of `--output`.
pub const OPT_OUTPUT: char = '\u{100}';
/// Long-option key of `--backing-chain`.
pub const OPT_BACKING_CHAIN: char = '\u{101}';
/// Long-option key of `--object`.
pub const OPT_OBJECT: char = '\u{102}';
/// Long-option key of `--image-opts`.
pub const OPT_IMAGE_OPTS: char = '\u{103}';
/// Long-option key of `--pattern`.
pub const OPT_PATTERN: char = '\u{104}';
/// Long-option key of `--flush-interval`.
pub const OPT_FLUSH_INTERVAL: char = '\u{105}';
/// Long-option key of `--no-drain`.
pub const OPT_NO_DRAIN: char = '\u{106}';
/// Long-option key of `--target-image-opts`.
pub const OPT_TARGET_IMAGE_OPTS: char = '\u{107}';
/// Long-option key of `--size`.
pub const OPT_SIZE: char = '\u{108}';
/// Long-option key of `--preallocation`.
pub const OPT_PREALLOCATION: char = '\u{109}';
/// Long-option key of `--shrink`.
pub const OPT_SHRINK: char = '\u{10a}';
/// Long-option key of `--salvage`.
pub const OPT_SALVAGE: char = '\u{10b}';
/// Long-option key of `--target-is-zero`.
pub const OPT_TARGET_IS_ZERO: char = '\u{10c}';
/// Long-option key of `--bitmaps`.
pub const OPT_BITMAPS: char = '\u{10d}';
/// Long-option key of `--skip-broken-bitmaps`.
pub const OPT_SKIP_BROKEN: char = '\u{10e}';
/// Long-option key of `--start-offset`.
pub const OPT_START_OFFSET: char = 's';
/// Long-option key of `--max-length`.
pub const OPT_MAX_LENGTH: char = 'l';

/// A long option entry (`takes_arg`: required argument).
pub const fn long(name: &'static str, takes_arg: bool, key: char) -> LongOpt {
    LongOpt {
        name,
        has_arg: if takes_arg {
            HasArg::Required
        } else {
            HasArg::No
        },
        key,
    }
}

/// Prints `qemu-img: MSG` on stderr (error_report).
pub fn error_report(msg: &str) {
    eprintln!("{PROG}: {msg}");
}

/// Prints a warning the way warn_report does.
pub fn warn_report(msg: &str) {
    eprintln!("{PROG}: warning: {msg}");
}

/// Reports a usage error and the pointer to --help; returns exit status 1 (error_exit).
pub fn error_exit(msg: &str) -> i32 {
    error_report(msg);
    eprintln!("Try '{PROG} --help' for more information");
    1
}

/// Parses a subcommand's options. On a bad option, reports it in qemu-img's words
/// ("unrecognized option '-x'", "missing argument for option '-f'") and returns Err(status).
/// `args[0]` is the subcommand name and is skipped.
pub fn getopt(args: &[String], short: &str, long: &[LongOpt]) -> Result<Parsed, i32> {
    let rest = args.get(1..).unwrap_or(&[]);
    let Err(first) = getopt_long(rest, short, long) else {
        return Ok(getopt_long(rest, short, long).unwrap_or_default());
    };
    // Find the argument that caused the error: the shortest prefix of the command line that
    // fails for a reason more arguments could not cure.
    for end in 1..=rest.len() {
        if let Err(msg) = getopt_long(&rest[..end], short, long) {
            let missing = msg.contains("requires an argument");
            if !missing || end == rest.len() {
                let arg = &rest[end - 1];
                return Err(if missing {
                    error_exit(&format!("missing argument for option '{arg}'"))
                } else {
                    error_exit(&format!("unrecognized option '{arg}'"))
                });
            }
        }
    }
    Err(error_exit(&first))
}

pub use block::options::{strtosz as qemu_strtosz, SizeError};

/// Parses a size argument within [min, max], reporting errors as qemu-img's cvtnum_full.
pub fn cvtnum_full(name: &str, value: &str, min: i64, max: i64) -> Option<i64> {
    match qemu_strtosz(value) {
        Err(SizeError::Invalid) => {
            error_report(&format!(
                "Invalid {name} specified. You may use k, M, G, T, P or E suffixes for"
            ));
            error_report("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
            None
        }
        Ok(v) if v <= max as u64 && v >= min as u64 => Some(v as i64),
        _ => {
            error_report(&format!(
                "Invalid {name} specified. Must be between {min} and {max}."
            ));
            None
        }
    }
}

/// cvtnum: a non-negative size up to INT64_MAX.
pub fn cvtnum(name: &str, value: &str) -> Option<i64> {
    cvtnum_full(name, value, 0, i64::MAX)
}

/// Parses an unsigned number as qemu_strtoul with base 0 (decimal, 0x hex, 0 octal).
pub fn strtoul(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if text.len() > 1 && text.starts_with('0') {
        u64::from_str_radix(&text[1..], 8).ok()
    } else {
        text.parse().ok()
    }
}

/// `--output=human|json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Text for people.
    Human,
    /// QEMU's pretty JSON.
    Json,
}

/// Parses `--output`; reports the qemu-img error for other values.
pub fn parse_output(output: Option<&str>) -> Option<OutputFormat> {
    match output {
        None | Some("human") => Some(OutputFormat::Human),
        Some("json") => Some(OutputFormat::Json),
        Some(_) => {
            error_report("--output must be used with human or json as argument.");
            None
        }
    }
}

/// `--object OBJECTDEF`: creates a user object (a secret...) right away, as qemu-img
/// does while parsing its options; a bad definition ends the program with status 1.
pub fn object_add(optarg: &str) -> Result<(), i32> {
    block::objects::user_creatable_add_from_str(optarg).map_err(|e| {
        error_report(&e.to_string());
        1
    })
}

/// Parses a cache mode name (bdrv_parse_cache_mode); None when invalid.
pub fn parse_cache(name: &str) -> Option<CacheMode> {
    CacheMode::parse(name).ok()
}

/// Runs a subcommand's coroutine to completion on this thread's AioContext.
pub fn run_co<T>(future: impl Future<Output = T>) -> T {
    AioContext::current().run_until(future)
}

/// How a subcommand names and opens one image (img_open's parameters).
#[derive(Clone, Debug, Default)]
pub struct OpenSpec {
    /// Filename, or the keyval string with `image_opts`.
    pub filename: String,
    /// `-f FORMAT`.
    pub fmt: Option<String>,
    /// `--image-opts`.
    pub image_opts: bool,
    /// Open flags (read-only, cache, ...); `force_share` is `-U`.
    pub flags: OpenFlags,
    /// Disable the write cache (writethrough, directsync).
    pub writethrough: bool,
}

/// Opens an image as qemu-img's img_open does; errors are reported ("Could not open 'x': ...")
/// and give None.
pub async fn img_open(spec: &OpenSpec) -> Option<Rc<BlockBackend>> {
    img_open_with(spec, Options::new()).await
}

/// img_open with extra driver options (img_open_file's `options`).
pub async fn img_open_with(spec: &OpenSpec, extra: Options) -> Option<Rc<BlockBackend>> {
    let image = ImageSpec {
        filename: spec.filename.clone(),
        format: spec.fmt.clone(),
        image_opts: spec.image_opts,
    };
    let (filename, mut opts) = match image.to_open_args() {
        Ok(x) => x,
        Err(e) => {
            error_report(&e.to_string());
            return None;
        }
    };
    if spec.image_opts && spec.flags.force_share {
        if opts.get("force-share").is_some_and(|v| v != "on") {
            error_report("--force-share/-U conflicts with image options");
            return None;
        }
        opts.set("force-share", "on");
    }
    for (k, v) in extra.iter() {
        opts.set_default(k, v);
    }
    match BlockBackend::open(filename.as_deref(), opts, spec.flags).await {
        Ok(blk) => {
            blk.set_write_cache(!spec.writethrough);
            warn_if_probed_raw(&blk, &spec.filename);
            Some(blk)
        }
        Err(e) => {
            error_report(&format!("Could not open '{}': {e}", spec.filename));
            None
        }
    }
}

/// Reports that writing back an image's state before closing it failed.
pub fn report_close_error(e: &block::Error) {
    error_report(&format!(
        "Error while closing the image: {}",
        block::error::strerror(e.errno())
    ));
}

/// Closes a backend, reporting a failed write-back (blk_unref of the last reference).
pub async fn close(blk: &BlockBackend) -> bool {
    match blk.close().await {
        Ok(()) => true,
        Err(e) => {
            error_report(&format!("Failed to flush the image: {e}"));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strtosz_like_qemu() {
        assert_eq!(qemu_strtosz("1M"), Ok(1 << 20));
        assert_eq!(qemu_strtosz("1.5k"), Ok(1536));
        assert_eq!(qemu_strtosz("0x10"), Ok(16));
        assert_eq!(qemu_strtosz("12b"), Ok(12));
        assert_eq!(qemu_strtosz("1.5"), Err(SizeError::Invalid));
        assert_eq!(qemu_strtosz("-1"), Err(SizeError::Range));
        assert_eq!(qemu_strtosz("-1k"), Err(SizeError::Invalid));
        assert_eq!(qemu_strtosz("16E"), Err(SizeError::Range));
        assert_eq!(qemu_strtosz("99999999999999999999"), Err(SizeError::Range));
        assert_eq!(qemu_strtosz("1x"), Err(SizeError::Invalid));
    }
}
