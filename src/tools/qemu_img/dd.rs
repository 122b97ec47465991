//! `qemu-img dd`: copy an image dd-style into a new image (qemu-img.c's img_dd).
//!
//! Operands are `bs=`, `count=`, `if=`, `of=`, `skip=` (in `bs` blocks). The output image is
//! created with the input's size minus the skipped part (or `count` blocks), then filled by
//! reading and writing one block at a time.

use block::{IoVector, OpenFlags, RequestFlags};

use super::cli::{self, error_report, long, OpenSpec};
use super::cli::{OPT_IMAGE_OPTS, OPT_OBJECT};
use super::create_opts::CreateOpts;

const LONG: &[crate::tools::getopt::LongOpt] = &[
    long("help", false, 'h'),
    long("object", true, OPT_OBJECT),
    long("image-opts", false, OPT_IMAGE_OPTS),
    long("force-share", false, 'U'),
];

/// The dd operands.
#[derive(Default)]
struct Dd {
    bs: u64,
    count: Option<u64>,
    input: Option<String>,
    output: Option<String>,
    skip: Option<u64>,
}

/// Parses the `key=value` operands; false after reporting an error.
fn parse_operands(operands: &[String], dd: &mut Dd) -> bool {
    for arg in operands {
        let Some((key, value)) = arg.split_once('=') else {
            error_report(&format!("unrecognized operand {arg}"));
            return false;
        };
        let ok = match key {
            "bs" => cli::cvtnum_full("bs", value, 1, i32::MAX as i64).map(|v| dd.bs = v as u64),
            "count" => cli::cvtnum("count", value).map(|v| dd.count = Some(v as u64)),
            "if" => {
                dd.input = Some(value.to_string());
                Some(())
            }
            "of" => {
                dd.output = Some(value.to_string());
                Some(())
            }
            "skip" => cli::cvtnum("skip", value).map(|v| dd.skip = Some(v as u64)),
            _ => {
                error_report(&format!("unrecognized operand {key}"));
                None
            }
        };
        if ok.is_none() {
            return false;
        }
    }
    true
}

/// Runs `qemu-img dd`.
pub fn run(args: &[String]) -> i32 {
    let parsed = match cli::getopt(args, ":hf:O:U", LONG) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut spec = OpenSpec::default();
    let mut out_fmt = "raw".to_string();
    for opt in parsed.opts {
        match opt.key {
            'h' => return super::help::print_help(),
            'O' => out_fmt = opt.arg.unwrap_or_default(),
            'f' => spec.fmt = opt.arg,
            'U' => spec.flags.force_share = true,
            OPT_OBJECT => {
                if let Err(rc) = cli::object_add(opt.arg.as_deref().unwrap_or_default()) {
                    return rc;
                }
            }
            OPT_IMAGE_OPTS => spec.image_opts = true,
            _ => {}
        }
    }
    let mut dd = Dd {
        bs: 512,
        ..Dd::default()
    };
    if !parse_operands(&parsed.operands, &mut dd) {
        return 1;
    }
    let (Some(input), Some(output)) = (dd.input.clone(), dd.output.clone()) else {
        error_report("Must specify both input and output files");
        return 1;
    };
    spec.filename = input;
    spec.flags.read_only = true;
    i32::from(!cli::run_co(copy(&spec, &dd, &output, &out_fmt)))
}

/// Creates the output image of `size` bytes; false after reporting.
async fn create_output(output: &str, out_fmt: &str, size: u64) -> bool {
    let Some(drv) = block::registry::find_driver(out_fmt) else {
        error_report("Unknown file format");
        return false;
    };
    let proto = match block::registry::find_protocol(output) {
        Ok(p) => p,
        Err(e) => {
            error_report(&e.to_string());
            return false;
        }
    };
    let Some(create) = drv.create.filter(|_| proto.create.is_some()) else {
        let who = if drv.create.is_none() {
            format!("Format driver '{}'", drv.format_name)
        } else {
            format!("Protocol driver '{}'", proto.format_name)
        };
        error_report(&format!("{who} does not support image creation"));
        return false;
    };
    let mut opts = CreateOpts::new(drv, Some(proto));
    opts.set_number("size", size);
    if let Err(e) = create(output, &mut opts.to_options()).await {
        error_report(&format!("{output}: error while creating output image: {e}"));
        return false;
    }
    true
}

async fn copy(spec: &OpenSpec, dd: &Dd, output: &str, out_fmt: &str) -> bool {
    let Some(src) = cli::img_open(spec).await else {
        return false;
    };
    let mut size = src.getlength();
    if let Some(count) = dd.count {
        if count.checked_mul(dd.bs).is_some_and(|b| b < size) {
            size = count * dd.bs;
        }
    }
    let skip_bytes = dd.skip.map(|s| s.checked_mul(dd.bs));
    let beyond =
        matches!(skip_bytes, Some(None)) || matches!(skip_bytes, Some(Some(b)) if b > size);
    let in_start = if beyond {
        size
    } else {
        skip_bytes.flatten().unwrap_or(0)
    };
    if !create_output(output, out_fmt, size - in_start).await {
        return false;
    }
    let out_spec = OpenSpec {
        filename: output.to_string(),
        fmt: Some(out_fmt.to_string()),
        flags: OpenFlags::default(),
        ..OpenSpec::default()
    };
    let Some(dst) = cli::img_open(&out_spec).await else {
        return false;
    };
    if beyond {
        error_report(&format!(
            "{}: cannot skip to specified offset",
            spec.filename
        ));
    }
    let buf = IoVector::alloc(dd.bs as usize);
    let (mut in_pos, mut out_pos) = (in_start, 0);
    while in_pos < size {
        let n = (size - in_pos).min(dd.bs) as usize;
        let part = buf.slice(0, n);
        if let Err(e) = src.co_preadv(in_pos, &part, RequestFlags::empty()).await {
            error_report(&format!(
                "error while reading from input image file: {}",
                block::error::strerror(e.errno())
            ));
            return false;
        }
        in_pos += n as u64;
        if let Err(e) = dst.co_pwritev(out_pos, &part, RequestFlags::empty()).await {
            error_report(&format!(
                "error while writing to output image file: {}",
                block::error::strerror(e.errno())
            ));
            return false;
        }
        out_pos += n as u64;
    }
    let _ = src.close().await;
    cli::close(&dst).await
}
