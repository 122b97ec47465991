//! `qemu-img measure`: how large a file an image of a format would need (qemu-img.c's
//! img_measure + the driver's bdrv_measure).
//!
//! Measured either for a new image of `--size N` or for converting an existing image. The
//! raw answer is the virtual size (sector-rounded), allocated or not; qcow2 measures its
//! metadata geometry (formats::qcow2::measure); luks adds its header area.

use block::BlockDriverState;
use serde_json::{json, Map, Value};

use super::cli::{self, error_report, long, OpenSpec, OutputFormat};
use super::cli::{OPT_IMAGE_OPTS, OPT_OBJECT, OPT_OUTPUT, OPT_SIZE};
use super::convert::SnapshotParam;
use super::create::accumulate_options;
use super::create_opts::CreateOpts;
use crate::qjson;

const LONG: &[crate::tools::getopt::LongOpt] = &[
    long("help", false, 'h'),
    long("image-opts", false, OPT_IMAGE_OPTS),
    long("object", true, OPT_OBJECT),
    long("output", true, OPT_OUTPUT),
    long("size", true, OPT_SIZE),
    long("force-share", false, 'U'),
];

/// The answer of a measurement (BlockMeasureInfo).
pub struct MeasureInfo {
    /// Bytes the image needs as converted (allocated data only).
    pub required: u64,
    /// Bytes a fully allocated image needs.
    pub fully_allocated: u64,
    /// Bytes for persistent bitmaps, when both sides could hold them.
    pub bitmaps: Option<u64>,
}

/// Runs `qemu-img measure`.
pub fn run(args: &[String]) -> i32 {
    let parsed = match cli::getopt(args, "hf:O:o:l:U", LONG) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut spec = OpenSpec::default();
    let (mut out_fmt, mut options, mut size) = ("raw".to_string(), None, None);
    let (mut format, mut snapshot) = (OutputFormat::Human, None);
    for opt in parsed.opts {
        let arg = opt.arg.unwrap_or_default();
        match opt.key {
            'h' => return super::help::print_help(),
            'f' => spec.fmt = Some(arg),
            'O' => out_fmt = arg,
            'o' if !accumulate_options(&mut options, &arg) => return 1,
            'l' => match SnapshotParam::parse(&arg) {
                Some(p) => snapshot = Some(p),
                None => return 1,
            },
            'U' => spec.flags.force_share = true,
            OPT_OBJECT => {
                if let Err(rc) = cli::object_add(&arg) {
                    return rc;
                }
            }
            OPT_IMAGE_OPTS => spec.image_opts = true,
            OPT_OUTPUT => match cli::parse_output(Some(&arg)) {
                Some(f) => format = f,
                None => return 1,
            },
            OPT_SIZE => match cli::cvtnum("image size", &arg) {
                Some(v) => size = Some(v as u64),
                None => return 1,
            },
            _ => {}
        }
    }
    let filename = parsed.operands.first().cloned();
    if let Err(msg) = check_args(&parsed.operands, &spec, size, snapshot.is_some()) {
        error_report(msg);
        return 1;
    }
    spec.filename = filename.clone().unwrap_or_default();
    spec.flags.read_only = true;
    cli::run_co(async {
        let blk = match filename {
            Some(_) => match cli::img_open(&spec).await {
                Some(b) => Some(b),
                None => return 1,
            },
            None => None,
        };
        if let (Some(param), Some(b)) = (&snapshot, &blk) {
            if let Err(e) = param.load(&b.bs()).await {
                error_report(&format!("Failed to load snapshot: {e}"));
                let _ = b.close().await;
                return 1;
            }
        }
        let root = blk.as_ref().map(|b| b.bs());
        let info = measure(&out_fmt, options.as_deref(), size, root.as_ref()).await;
        if let Some(b) = blk {
            let _ = b.close().await;
        }
        match info {
            Some(info) => {
                print_info(&info, format);
                0
            }
            None => 1,
        }
    })
}

/// The combinations of filename, --size, -f, -l and --image-opts measure refuses.
fn check_args(
    operands: &[String],
    spec: &OpenSpec,
    size: Option<u64>,
    snapshot: bool,
) -> Result<(), &'static str> {
    if operands.len() > 1 {
        return Err("At most one filename argument is allowed.");
    }
    let has_file = !operands.is_empty();
    if !has_file && (spec.image_opts || spec.fmt.is_some() || snapshot) {
        return Err("--image-opts, -f, and -l require a filename argument.");
    }
    match (has_file, size) {
        (true, Some(_)) => Err("--size N cannot be used together with a filename."),
        (false, None) => Err("Either --size N or one filename must be specified."),
        _ => Ok(()),
    }
}

/// Measures for `out_fmt` (bdrv_measure); errors are reported.
async fn measure(
    out_fmt: &str,
    options: Option<&str>,
    size: Option<u64>,
    input: Option<&std::rc::Rc<BlockDriverState>>,
) -> Option<MeasureInfo> {
    let Some(drv) = block::registry::find_driver(out_fmt) else {
        error_report(&format!("Unknown file format '{out_fmt}'"));
        return None;
    };
    if drv.create.is_none() {
        error_report(&format!(
            "Format driver '{}' does not support image creation",
            drv.format_name
        ));
        return None;
    }
    let file = block::registry::find_driver("file");
    let mut opts = CreateOpts::new(drv, file);
    if let Some(list) = options {
        if let Err(e) = opts.parse(list) {
            error_report(&e);
            error_report(&format!("Invalid options for file format '{out_fmt}'"));
            return None;
        }
    }
    if let Some(size) = size {
        opts.set_number("size", size);
    }
    match drv.format_name {
        "raw" => {
            let required = match input {
                Some(bs) => bs.getlength(),
                None => opts.get_number("size").unwrap_or(0).div_ceil(512) * 512,
            };
            Some(MeasureInfo {
                required,
                fully_allocated: required,
                bitmaps: None,
            })
        }
        "qcow2" => {
            let mut create_opts = opts.to_options();
            match formats::qcow2::measure::measure(&mut create_opts, input.map(|b| &**b)).await {
                Ok(m) => Some(MeasureInfo {
                    required: m.required,
                    fully_allocated: m.fully_allocated,
                    bitmaps: m.bitmaps,
                }),
                Err(e) => {
                    error_report(&e.to_string());
                    None
                }
            }
        }
        "luks" => {
            let size = match input {
                Some(bs) => bs.getlength(),
                None => opts.get_number("size").unwrap_or(0),
            };
            match formats::luks::measure(&mut opts.to_options(), size) {
                Ok(required) => Some(MeasureInfo {
                    required,
                    fully_allocated: required,
                    bitmaps: None,
                }),
                Err(e) => {
                    error_report(&e.to_string());
                    None
                }
            }
        }
        other => {
            error_report(&format!(
                "Block driver '{other}' does not support size measurement"
            ));
            None
        }
    }
}

fn print_info(info: &MeasureInfo, format: OutputFormat) {
    match format {
        OutputFormat::Human => {
            println!("required size: {}", info.required);
            println!("fully allocated size: {}", info.fully_allocated);
            if let Some(b) = info.bitmaps {
                println!("bitmaps size: {b}");
            }
        }
        OutputFormat::Json => {
            let mut m = Map::new();
            m.insert("required".into(), json!(info.required));
            m.insert("fully-allocated".into(), json!(info.fully_allocated));
            if let Some(b) = info.bitmaps {
                m.insert("bitmaps".into(), json!(b));
            }
            println!("{}", qjson::to_pretty(&Value::Object(m)));
        }
    }
}
