//! `qemu-img amend`: change the options of an existing image in place (qemu-img.c's
//! img_amend and print_amend_option_help; the work is the driver's co_amend).
//!
//! The option list is checked against the driver's amend options first; an option that only
//! creation knows gets QEMU's hint that it is creation-only.

use block::driver::CreateOption;
use block::OpenFlags;

use super::cli::{self, error_exit, error_report, long, OpenSpec};
use super::cli::{OPT_IMAGE_OPTS, OPT_OBJECT};
use super::create::accumulate_options;
use super::create_opts::{has_help_option, CreateOpts};
use super::human::Progress;

/// `--force` (QEMU's OPTION_FORCE).
const OPT_FORCE: char = '\u{1ff}';

const LONG: &[crate::tools::getopt::LongOpt] = &[
    long("help", false, 'h'),
    long("object", true, OPT_OBJECT),
    long("image-opts", false, OPT_IMAGE_OPTS),
    long("force", false, OPT_FORCE),
];

/// The amend options of a format, if its driver can amend (drv->amend_opts).
fn amend_options(format: &str) -> Option<&'static [CreateOption]> {
    match format {
        "qcow2" => Some(&formats::qcow2::amend::AMEND_OPTIONS),
        "luks" => Some(&formats::luks::AMEND_OPTIONS),
        _ => None,
    }
}

/// The parsed command line.
struct Args {
    spec: OpenSpec,
    options: String,
    cache: String,
    progress: bool,
    force: bool,
}

fn parse(args: &[String]) -> Result<Args, i32> {
    let parsed = cli::getopt(args, ":ho:f:t:pq", LONG)?;
    let mut spec = OpenSpec::default();
    let (mut options, mut cache) = (None, "writeback".to_string());
    let (mut progress, mut quiet, mut force) = (false, false, false);
    for opt in parsed.opts {
        let arg = opt.arg.unwrap_or_default();
        match opt.key {
            'h' => return Err(super::help::print_help()),
            'o' if !accumulate_options(&mut options, &arg) => return Err(1),
            'f' => spec.fmt = Some(arg),
            't' => cache = arg,
            'p' => progress = true,
            'q' => quiet = true,
            OPT_OBJECT => cli::object_add(&arg)?,
            OPT_IMAGE_OPTS => spec.image_opts = true,
            OPT_FORCE => force = true,
            _ => {}
        }
    }
    let Some(options) = options else {
        return Err(error_exit("Must specify options (-o)"));
    };
    if let Some(fmt) = spec.fmt.clone().filter(|_| has_help_option(&options)) {
        return Err(print_amend_option_help(&fmt));
    }
    if parsed.operands.len() != 1 {
        error_report("Expecting one image file name");
        return Err(1);
    }
    spec.filename = parsed.operands[0].clone();
    Ok(Args {
        spec,
        options,
        cache,
        progress: progress && !quiet,
        force,
    })
}

/// Runs `qemu-img amend`.
pub fn run(args: &[String]) -> i32 {
    let mut a = match parse(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let Some(mode) = cli::parse_cache(&a.cache) else {
        error_report(&format!("Invalid cache option: {}", a.cache));
        return 1;
    };
    a.spec.flags = OpenFlags {
        cache: mode,
        ..OpenFlags::default()
    };
    a.spec.writethrough = !mode.writeback;
    let mut progress = Progress::new(a.progress, 1.0);
    let ret = cli::run_co(async {
        let Some(blk) = cli::img_open(&a.spec).await else {
            return 1;
        };
        let mut ret = amend(&blk, &a, &mut progress).await;
        if !cli::close(&blk).await {
            ret = 1;
        }
        ret
    });
    progress.end();
    ret
}

/// Checks the option list against the driver and amends the open image.
async fn amend(blk: &block::BlockBackend, a: &Args, progress: &mut Progress) -> i32 {
    let bs = &blk.bs();
    let fmt = bs.format_name();
    if has_help_option(&a.options) {
        return print_amend_option_help(fmt);
    }
    let Some(descs) = amend_options(fmt) else {
        error_report(&format!(
            "Format driver '{fmt}' does not support option amendment"
        ));
        return 1;
    };
    let mut opts = CreateOpts::from_descs(descs);
    if let Err(e) = opts.parse(&a.options) {
        error_report(&creation_only_hint(
            bs.class().create_options,
            descs,
            &a.options,
            e,
        ));
        return 1;
    }
    progress.print(0.0, 0);
    let mut options = opts.to_options();
    let mut status = |done: u64, total: u64| {
        if total > 0 {
            progress.print(100.0 * done as f32 / total as f32, 0);
        }
    };
    let result = bs
        .drv()
        .co_amend(bs, &mut options, a.force, &mut status)
        .await;
    progress.print(100.0, 0);
    match result {
        Ok(()) => 0,
        Err(e) => {
            error_report(&e.to_string());
            1
        }
    }
}

/// The parse error, with QEMU's hint when the list would be valid for creation.
fn creation_only_hint(
    create: &[CreateOption],
    amend: &[CreateOption],
    list: &str,
    err: String,
) -> String {
    let mut all = amend.to_vec();
    all.extend(
        create
            .iter()
            .filter(|c| !amend.iter().any(|d| d.name == c.name)),
    );
    if CreateOpts::from_descs(&all).parse(list).is_ok() {
        format!("{err}\nThis option is only supported for image creation")
    } else {
        err
    }
}

/// Prints the amend options of a format (print_amend_option_help); returns the exit status.
fn print_amend_option_help(format: &str) -> i32 {
    let Some(drv) = block::registry::find_driver(format) else {
        error_report(&format!("Unknown file format '{format}'"));
        return 1;
    };
    let Some(descs) = amend_options(drv.format_name) else {
        error_report(&format!(
            "Format driver '{format}' does not support option amendment"
        ));
        return 1;
    };
    println!("Amend options for '{format}':");
    for line in CreateOpts::from_descs(descs).help_lines() {
        println!("{line}");
    }
    0
}
