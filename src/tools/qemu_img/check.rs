//! `qemu-img check`: verify (and with `-r`, repair) an image's metadata (qemu-img.c's
//! img_check). The work is the driver's `co_check`; this module reports its counts.
//!
//! Exit status: 0 clean, 1 check not completed (internal errors), 2 corruptions, 3 only
//! leaked clusters, 63 the format has no check.

use block::driver::{CheckFix, CheckResult};
use block::{BlockDriverState, OpenFlags};
use serde_json::{json, Map, Value};

use super::cli::{self, error_exit, error_report, long, OpenSpec, OutputFormat};
use super::cli::{OPT_IMAGE_OPTS, OPT_OBJECT, OPT_OUTPUT};
use crate::qjson;

const LONG: &[crate::tools::getopt::LongOpt] = &[
    long("help", false, 'h'),
    long("format", true, 'f'),
    long("repair", true, 'r'),
    long("output", true, OPT_OUTPUT),
    long("object", true, OPT_OBJECT),
    long("image-opts", false, OPT_IMAGE_OPTS),
    long("force-share", false, 'U'),
];

/// Runs `qemu-img check`.
pub fn run(args: &[String]) -> i32 {
    let parsed = match cli::getopt(args, ":hf:r:T:qU", LONG) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut spec = OpenSpec::default();
    let mut fix = CheckFix::default();
    let (mut output, mut cache, mut quiet) = (None, "writeback".to_string(), false);
    for opt in parsed.opts {
        let arg = opt.arg.unwrap_or_default();
        match opt.key {
            'h' => return super::help::print_help(),
            'f' => spec.fmt = Some(arg),
            'r' => match parse_repair(&arg) {
                Some(f) => fix = f,
                None => {
                    return error_exit(&format!(
                        "Unknown option value for -r (expecting 'leaks' or 'all'): {arg}"
                    ))
                }
            },
            OPT_OUTPUT => output = Some(arg),
            'T' => cache = arg,
            'q' => quiet = true,
            'U' => spec.flags.force_share = true,
            OPT_OBJECT => {
                if let Err(rc) = cli::object_add(&arg) {
                    return rc;
                }
            }
            OPT_IMAGE_OPTS => spec.image_opts = true,
            _ => {}
        }
    }
    if parsed.operands.len() != 1 {
        return error_exit("Expecting one image file name");
    }
    spec.filename = parsed.operands[0].clone();
    let Some(format) = cli::parse_output(output.as_deref()) else {
        return 1;
    };
    let Some(cache_mode) = cli::parse_cache(&cache) else {
        error_report(&format!("Invalid source cache option: {cache}"));
        return 1;
    };
    spec.flags = OpenFlags {
        read_only: !(fix.leaks || fix.errors),
        check: true,
        cache: cache_mode,
        force_share: spec.flags.force_share,
        ..OpenFlags::default()
    };
    spec.writethrough = !cache_mode.writeback;
    cli::run_co(async {
        let Some(blk) = cli::img_open(&spec).await else {
            return 1;
        };
        let ret = check_image(&blk.bs(), &spec.filename, fix, format, quiet).await;
        if !cli::close(&blk).await {
            return 1;
        }
        ret
    })
}

/// `-r leaks` or `-r all`.
fn parse_repair(arg: &str) -> Option<CheckFix> {
    match arg {
        "leaks" => Some(CheckFix {
            leaks: true,
            errors: false,
        }),
        "all" => Some(CheckFix {
            leaks: true,
            errors: true,
        }),
        _ => None,
    }
}

async fn check_image(
    bs: &BlockDriverState,
    filename: &str,
    fix: CheckFix,
    format: OutputFormat,
    quiet: bool,
) -> i32 {
    let mut result = match run_check(bs, fix).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    if result.corruptions_fixed != 0 || result.leaks_fixed != 0 {
        if format == OutputFormat::Human && !quiet {
            print!(
                "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
                result.leaks_fixed, result.corruptions_fixed
            );
        }
        let (leaks_fixed, corruptions_fixed) = (result.leaks_fixed, result.corruptions_fixed);
        result = match run_check(bs, CheckFix::default()).await {
            Ok(r) => r,
            Err(code) => return code,
        };
        result.leaks_fixed = leaks_fixed;
        result.corruptions_fixed = corruptions_fixed;
    }
    if !quiet {
        match format {
            OutputFormat::Human => print!("{}", human_report(&result)),
            OutputFormat::Json => println!(
                "{}",
                qjson::to_pretty(&json_report(&result, filename, bs.format_name()))
            ),
        }
    }
    if result.check_errors != 0 {
        error_report("Check failed");
        return 1;
    }
    if result.corruptions != 0 {
        2
    } else if result.leaks != 0 {
        3
    } else {
        0
    }
}

/// Runs the driver's check (bdrv_check); Err is the exit status after reporting.
async fn run_check(bs: &BlockDriverState, fix: CheckFix) -> Result<CheckResult, i32> {
    bs.drv().co_check(bs, fix).await.map_err(|e| {
        if e.errno() == libc::ENOTSUP {
            error_report("This image format does not support checks");
            63
        } else {
            error_report(&format!(
                "Check failed: {}",
                block::error::strerror(e.errno())
            ));
            1
        }
    })
}

/// The human report (dump_human_image_check).
pub fn human_report(r: &CheckResult) -> String {
    let mut out = String::new();
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        out += "No errors were found on the image.\n";
    } else {
        if r.corruptions != 0 {
            out += &format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                r.corruptions
            );
        }
        if r.leaks != 0 {
            out += &format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                r.leaks
            );
        }
        if r.check_errors != 0 {
            out += &format!(
                "\n{} internal errors have occurred during the check.\n",
                r.check_errors
            );
        }
    }
    if r.total_clusters != 0 && r.allocated_clusters != 0 {
        let alloc = r.allocated_clusters as f64;
        out += &format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            r.allocated_clusters,
            r.total_clusters,
            alloc * 100.0 / r.total_clusters as f64,
            r.fragmented_clusters as f64 * 100.0 / alloc,
            r.compressed_clusters as f64 * 100.0 / alloc
        );
    }
    if r.image_end_offset != 0 {
        out += &format!("Image end offset: {}\n", r.image_end_offset);
    }
    out
}

/// The ImageCheck object of `--output=json`; optional counts appear when non-zero.
pub fn json_report(r: &CheckResult, filename: &str, format: &str) -> Value {
    let mut m = Map::new();
    m.insert("filename".into(), json!(filename));
    m.insert("format".into(), json!(format));
    m.insert("check-errors".into(), json!(r.check_errors));
    let optional = [
        ("image-end-offset", r.image_end_offset),
        ("corruptions", r.corruptions),
        ("leaks", r.leaks),
        ("corruptions-fixed", r.corruptions_fixed),
        ("leaks-fixed", r.leaks_fixed),
        ("total-clusters", r.total_clusters),
        ("allocated-clusters", r.allocated_clusters),
        ("fragmented-clusters", r.fragmented_clusters),
        ("compressed-clusters", r.compressed_clusters),
    ];
    for (k, v) in optional {
        if v != 0 {
            m.insert(k.into(), json!(v));
        }
    }
    Value::Object(m)
}
