//! `qemu-img bitmap`: add, remove, clear, enable, disable and merge persistent dirty bitmaps
//! of an image offline (qemu-img.c's img_bitmap).
//!
//! The actions run in command-line order on one bitmap, each as the QMP command of the same
//! name would (block::bitmap_qmp); the image stores the result when it closes. A merge
//! source may live in another image (`-b`), opened read-only.

use std::rc::Rc;

use block::bitmap_qmp::{self as qmp, AddOptions};
use block::{BlockBackend, OpenFlags};

use super::cli::{self, error_report, long, OpenSpec, OPT_IMAGE_OPTS, OPT_OBJECT};

const OPT_ADD: char = '\u{120}';
const OPT_REMOVE: char = '\u{121}';
const OPT_CLEAR: char = '\u{122}';
const OPT_ENABLE: char = '\u{123}';
const OPT_DISABLE: char = '\u{124}';
const OPT_MERGE: char = '\u{125}';

const LONG: &[crate::tools::getopt::LongOpt] = &[
    long("help", false, 'h'),
    long("object", true, OPT_OBJECT),
    long("image-opts", false, OPT_IMAGE_OPTS),
    long("add", false, OPT_ADD),
    long("remove", false, OPT_REMOVE),
    long("clear", false, OPT_CLEAR),
    long("enable", false, OPT_ENABLE),
    long("disable", false, OPT_DISABLE),
    long("merge", true, OPT_MERGE),
    long("granularity", true, 'g'),
    long("source-file", true, 'b'),
    long("source-format", true, 'F'),
];

/// One action, in command-line order (ImgBitmapAction).
enum Action {
    Add,
    Remove,
    Clear,
    Enable,
    Disable,
    /// Merge the named bitmap of the source image.
    Merge(String),
}

impl Action {
    /// The operation's name in error messages.
    fn name(&self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
            Action::Clear => "clear",
            Action::Enable => "enable",
            Action::Disable => "disable",
            Action::Merge(_) => "merge",
        }
    }
}

/// Runs `qemu-img bitmap`.
pub fn run(args: &[String]) -> i32 {
    let parsed = match cli::getopt(args, ":b:f:F:g:h", LONG) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut spec = OpenSpec::default();
    let (mut src_file, mut src_fmt, mut granularity) = (None, None, 0);
    let mut actions = Vec::new();
    for opt in parsed.opts {
        let arg = opt.arg.unwrap_or_default();
        match opt.key {
            'h' => return super::help::print_help(),
            'b' => src_file = Some(arg),
            'f' => spec.fmt = Some(arg),
            'F' => src_fmt = Some(arg),
            'g' => match cli::cvtnum("granularity", &arg) {
                Some(g) => granularity = g,
                None => return 1,
            },
            OPT_ADD => actions.push(Action::Add),
            OPT_REMOVE => actions.push(Action::Remove),
            OPT_CLEAR => actions.push(Action::Clear),
            OPT_ENABLE => actions.push(Action::Enable),
            OPT_DISABLE => actions.push(Action::Disable),
            OPT_MERGE => actions.push(Action::Merge(arg)),
            OPT_OBJECT => {
                if let Err(rc) = cli::object_add(&arg) {
                    return rc;
                }
            }
            OPT_IMAGE_OPTS => spec.image_opts = true,
            _ => {}
        }
    }
    let usage = if actions.is_empty() {
        Some("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge")
    } else if granularity != 0 && !actions.iter().any(|a| matches!(a, Action::Add)) {
        Some("granularity only supported with --add")
    } else if src_fmt.is_some() && src_file.is_none() {
        Some("-F only supported with -b")
    } else if src_file.is_some() && !actions.iter().any(|a| matches!(a, Action::Merge(_))) {
        Some("Merge bitmap source file only supported with --merge")
    } else if parsed.operands.len() != 2 {
        Some("Expecting filename and bitmap name")
    } else {
        None
    };
    if let Some(msg) = usage {
        error_report(msg);
        return 1;
    }
    spec.filename = parsed.operands[0].clone();
    spec.flags = OpenFlags::default();
    let bitmap = parsed.operands[1].clone();
    let source = src_file.map(|filename| OpenSpec {
        filename,
        fmt: src_fmt,
        // Only the source's own bitmaps are read: its backing chain (which may be the
        // image being changed) stays closed.
        flags: OpenFlags {
            read_only: true,
            no_backing: true,
            ..OpenFlags::default()
        },
        ..OpenSpec::default()
    });
    let granularity = (granularity != 0).then_some(granularity as u32);
    cli::run_co(async move {
        let Some(blk) = cli::img_open(&spec).await else {
            return 1;
        };
        let src = match &source {
            Some(s) => match cli::img_open(s).await {
                Some(src) => Some(src),
                None => {
                    cli::close(&blk).await;
                    return 1;
                }
            },
            None => None,
        };
        let mut ret = perform(&blk, src.as_ref(), &bitmap, &actions, granularity).await;
        // Storing the bitmaps is the point: its failure, which closing would not tell,
        // fails the command (QEMU's img_bitmap inactivates everything first).
        let mut inactivated = blk.inactivate().await;
        if let Some(src) = &src {
            inactivated = inactivated.and(src.inactivate().await);
        }
        if let Err(e) = inactivated {
            cli::report_close_error(&e);
            ret = 1;
        }
        if let Some(src) = src {
            cli::close(&src).await;
        }
        if !cli::close(&blk).await {
            return 1;
        }
        ret
    })
}

/// Runs the actions in order, stopping at the first failure; returns the exit status.
async fn perform(
    blk: &BlockBackend,
    src: Option<&Rc<BlockBackend>>,
    bitmap: &str,
    actions: &[Action],
    granularity: Option<u32>,
) -> i32 {
    let bs = &blk.bs();
    let src_bs = src.map_or_else(|| bs.clone(), |s| s.bs());
    for action in actions {
        let done = match action {
            Action::Add => {
                let opts = AddOptions {
                    granularity,
                    persistent: true,
                    disabled: false,
                };
                qmp::add(bs, bitmap, opts).await
            }
            Action::Remove => qmp::remove(bs, bitmap).await,
            Action::Clear => qmp::clear(bs, bitmap),
            Action::Enable => qmp::enable(bs, bitmap),
            Action::Disable => qmp::disable(bs, bitmap),
            Action::Merge(name) => qmp::merge(bs, bitmap, &[(&src_bs, name)]),
        };
        if let Err(e) = done {
            error_report(&format!(
                "Operation {} on bitmap {bitmap} failed: {e}",
                action.name()
            ));
            return 1;
        }
    }
    0
}
