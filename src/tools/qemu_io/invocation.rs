//! The qemu-io program: its command-line options, opening the image, and the command loop
//! over `-c` commands or standard input (main and command_loop in qemu-io.c).

use block::AioContext;

use super::cmd_file::{openfile, parse_aio, parse_cache, parse_discard, OpenRequest};
use super::commands::run_line;
use super::help::USAGE;
use super::output::{self, out, report, Reported};
use super::stdin::LineReader;
use super::QemuIo;
use crate::tools::getopt::{getopt_long, HasArg, LongOpt};
use crate::tools::image::ImageSpec;

const OPT_OBJECT: char = '\u{100}';
const OPT_IMAGE_OPTS: char = '\u{101}';

const SHORT: &str = "hVc:d:f:rsnCmki:t:UT:";

const LONG: &[LongOpt] = &[
    LongOpt {
        name: "help",
        has_arg: HasArg::No,
        key: 'h',
    },
    LongOpt {
        name: "version",
        has_arg: HasArg::No,
        key: 'V',
    },
    LongOpt {
        name: "cmd",
        has_arg: HasArg::Required,
        key: 'c',
    },
    LongOpt {
        name: "format",
        has_arg: HasArg::Required,
        key: 'f',
    },
    LongOpt {
        name: "read-only",
        has_arg: HasArg::No,
        key: 'r',
    },
    LongOpt {
        name: "snapshot",
        has_arg: HasArg::No,
        key: 's',
    },
    LongOpt {
        name: "nocache",
        has_arg: HasArg::No,
        key: 'n',
    },
    LongOpt {
        name: "copy-on-read",
        has_arg: HasArg::No,
        key: 'C',
    },
    LongOpt {
        name: "misalign",
        has_arg: HasArg::No,
        key: 'm',
    },
    LongOpt {
        name: "native-aio",
        has_arg: HasArg::No,
        key: 'k',
    },
    LongOpt {
        name: "discard",
        has_arg: HasArg::Required,
        key: 'd',
    },
    LongOpt {
        name: "cache",
        has_arg: HasArg::Required,
        key: 't',
    },
    LongOpt {
        name: "aio",
        has_arg: HasArg::Required,
        key: 'i',
    },
    LongOpt {
        name: "trace",
        has_arg: HasArg::Required,
        key: 'T',
    },
    LongOpt {
        name: "object",
        has_arg: HasArg::Required,
        key: OPT_OBJECT,
    },
    LongOpt {
        name: "image-opts",
        has_arg: HasArg::No,
        key: OPT_IMAGE_OPTS,
    },
    LongOpt {
        name: "force-share",
        has_arg: HasArg::No,
        key: 'U',
    },
];

/// What the command line asked for.
struct Invocation {
    io: QemuIo,
    commands: Vec<String>,
    format: Option<String>,
    req: OpenRequest,
    file: Option<String>,
}

/// Parsing the command line ended the program early (after -h, -V, or an error already
/// printed) with this exit status.
struct Exit(i32);

fn usage_error() -> Exit {
    out!("{USAGE}");
    Exit(1)
}

/// Applies one program option; `Err` ends the program early.
fn apply_option(inv: &mut Invocation, key: char, arg: String) -> Result<(), Exit> {
    let fail = |_: Reported| Exit(1);
    match key {
        's' => inv.req.snapshot = true,
        'n' => parse_cache(&mut inv.req, "none").map_err(fail)?,
        'C' => inv.req.copy_on_read = true,
        'd' => parse_discard(&mut inv.req, &arg).map_err(fail)?,
        'f' => inv.format = Some(arg),
        'c' => inv.commands.push(arg),
        'r' => inv.req.flags.read_only = true,
        'm' => inv.io.misalign = true,
        'k' => parse_aio(&mut inv.req, "native").map_err(fail)?,
        'i' => parse_aio(&mut inv.req, &arg).map_err(fail)?,
        't' => parse_cache(&mut inv.req, &arg).map_err(fail)?,
        'T' => match block::trace::configure(&arg) {
            Ok(None) => {}
            Ok(Some(events)) => {
                out!("{events}");
                return Err(Exit(0));
            }
            Err(e) => {
                report!("{e}");
                return Err(Exit(1));
            }
        },
        'V' => {
            out!(
                "qemu-io version 10.0.2 (rqemu {})\n\
                 rqemu: a Rust reproduction of QEMU's block layer\n",
                env!("CARGO_PKG_VERSION")
            );
            return Err(Exit(0));
        }
        'h' => {
            out!("{USAGE}");
            return Err(Exit(0));
        }
        'U' => inv.req.force_share = true,
        OPT_OBJECT => {
            if let Err(e) = block::objects::user_creatable_add_from_str(&arg) {
                report!("{e}");
                return Err(Exit(1));
            }
        }
        OPT_IMAGE_OPTS => inv.io.image_opts = true,
        _ => return Err(usage_error()),
    }
    Ok(())
}

fn parse_args(argv0: &str, args: &[String]) -> Result<Invocation, Exit> {
    let parsed = getopt_long(args, SHORT, LONG).map_err(|e| {
        // glibc names the program as it was invoked.
        output::eprint(format_args!("{argv0}: {e}\n"));
        usage_error()
    })?;
    let mut inv = Invocation {
        io: QemuIo::default(),
        commands: Vec::new(),
        format: None,
        req: OpenRequest::new(),
        file: None,
    };
    for opt in parsed.opts {
        apply_option(&mut inv, opt.key, opt.arg.unwrap_or_default())?;
    }
    if parsed.operands.len() > 1 {
        return Err(usage_error());
    }
    if inv.format.is_some() && inv.io.image_opts {
        report!("--image-opts and -f are mutually exclusive");
        return Err(Exit(1));
    }
    inv.file = parsed.operands.into_iter().next();
    Ok(inv)
}

/// Turns the file operand into the open request (the image spec rules shared with qemu-img).
fn complete_request(inv: &Invocation, file: String) -> block::Result<OpenRequest> {
    let spec = ImageSpec {
        filename: file,
        format: inv.format.clone(),
        image_opts: inv.io.image_opts,
    };
    let (name, opts) = spec.to_open_args()?;
    let mut req = inv.req.clone();
    req.name = name;
    req.opts = opts;
    Ok(req)
}

/// Runs the `-c` commands in order, or else the interactive loop; returns the last error.
fn command_loop(ctx: &std::rc::Rc<AioContext>, io: &QemuIo, commands: &[String]) -> i32 {
    let mut last_error = 0;
    if !commands.is_empty() {
        for cmd in commands {
            let ret = ctx.run_until(run_line(io, cmd));
            if ret < 0 {
                last_error = ret;
            }
            if io.quitting() {
                break;
            }
        }
        return last_error;
    }
    let stdin = LineReader::stdin();
    while !io.quitting() {
        out!("qemu-io> ");
        output::flush();
        // Completions already due are handled before the next line, as one iteration of
        // QEMU's main loop dispatches every ready handler, stdin's among them.
        let next = ctx.run_until(async {
            futures_lite::future::yield_now().await;
            stdin.next_line().await
        });
        let Some(line) = next else {
            break;
        };
        let ret = ctx.run_until(run_line(io, &line));
        if ret < 0 {
            last_error = ret;
        }
    }
    last_error
}

/// The program, given its whole command line (`argv[0]` first): returns the exit status.
pub fn main(args: Vec<String>) -> i32 {
    block::error::set_progname("qemu-io");
    formats::register_all();
    super::cmd_break::install_message_sink();
    let argv0 = args.first().map_or("qemu-io", String::as_str);
    let mut inv = match parse_args(argv0, args.get(1..).unwrap_or_default()) {
        Ok(inv) => inv,
        Err(Exit(code)) => {
            output::flush();
            return code;
        }
    };
    let ctx = AioContext::current();
    if let Some(file) = inv.file.take() {
        let opened = match complete_request(&inv, file) {
            Ok(req) => ctx.run_until(openfile(&inv.io, req)),
            // Only an --image-opts string can fail here; qemu-io reports it bare.
            Err(e) => {
                report!("{e}");
                Err(Reported)
            }
        };
        if opened.is_err() {
            output::flush();
            return 1;
        }
    }
    let last_error = command_loop(&ctx, &inv.io, &inv.commands);
    ctx.run_until(inv.io.close_image());
    output::flush();
    i32::from(last_error != 0)
}
