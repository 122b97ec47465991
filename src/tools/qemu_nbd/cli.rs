//! qemu-nbd's command line: the options, their checks and their messages (the option loop
//! of QEMU's qemu-nbd.c main).

use block::node::{AioMode, CacheMode};

use crate::tools::getopt::{getopt_long, HasArg, LongOpt};

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `-b HOST -p PORT`.
    Tcp {
        /// The address to bind.
        host: String,
        /// The port.
        port: String,
    },
    /// `-k PATH`.
    Unix(String),
}

/// Everything the command line asked for.
#[derive(Clone, Debug, Default)]
pub struct NbdOptions {
    /// The image (a filename, `json:` or, with `--image-opts`, an option string).
    pub file: Option<String>,
    /// `-f FORMAT`.
    pub format: Option<String>,
    /// `--image-opts`.
    pub image_opts: bool,
    /// `-b`.
    pub bind: Option<String>,
    /// `-p`.
    pub port: Option<String>,
    /// `-k`.
    pub socket: Option<String>,
    /// `-o`: where the export starts in the image.
    pub offset: u64,
    /// `-r` (also implied by `-l`).
    pub read_only: bool,
    /// `-s`.
    pub snapshot: bool,
    /// `-l`: an internal snapshot to export (by id or name, or `snapshot.id=,snapshot.name=`).
    pub load_snapshot: Option<String>,
    /// `-A`.
    pub allocation_depth: bool,
    /// `-B NAME`.
    pub bitmaps: Vec<String>,
    /// `-c DEV`.
    pub connect: Option<String>,
    /// `-d`.
    pub disconnect: bool,
    /// `-L`.
    pub list: bool,
    /// `-e NUM` (default 1; 0: unlimited).
    pub shared: usize,
    /// `-t`.
    pub persistent: bool,
    /// `-v`.
    pub verbose: bool,
    /// `-x NAME`.
    pub export_name: Option<String>,
    /// `-D TEXT`.
    pub description: Option<String>,
    /// `--handshake-limit` in seconds.
    pub handshake_limit: Option<u64>,
    /// `--cache` / `-n`.
    pub cache: CacheMode,
    /// `--aio`.
    pub aio: AioMode,
    /// `--discard=unmap`.
    pub unmap: bool,
    /// `--detect-zeroes`.
    pub detect_zeroes: Option<String>,
    /// `--object` arguments.
    pub objects: Vec<String>,
    /// `--tls-creds`, `--tls-authz`, `--tls-hostname`.
    pub tls: Vec<(&'static str, String)>,
    /// `--fork`.
    pub fork: bool,
    /// `--pid-file`.
    pub pid_file: Option<String>,
}

impl NbdOptions {
    /// The value of a `--tls-*` option, if given.
    pub fn tls_option(&self, name: &str) -> Option<&str> {
        self.tls
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Where to listen, with qemu-nbd's defaults (0.0.0.0:10809).
    pub fn listen(&self) -> Listen {
        match &self.socket {
            Some(path) => Listen::Unix(path.clone()),
            None => Listen::Tcp {
                host: self.bind.clone().unwrap_or_else(|| "0.0.0.0".into()),
                port: self.port.clone().unwrap_or_else(|| "10809".into()),
            },
        }
    }
}

/// What parsing decided: run with options, or exit with a status (after `--help`,
/// `--version` or an error, already printed).
pub enum Parsed {
    /// Run the program.
    Run(Box<NbdOptions>),
    /// Exit with this status.
    Exit(i32),
}

const OPT_CACHE: char = '\u{100}';
const OPT_AIO: char = '\u{101}';
const OPT_DISCARD: char = '\u{102}';
const OPT_DETECT_ZEROES: char = '\u{103}';
const OPT_OBJECT: char = '\u{104}';
const OPT_TLS_CREDS: char = '\u{105}';
const OPT_TLS_HOSTNAME: char = '\u{106}';
const OPT_TLS_AUTHZ: char = '\u{107}';
const OPT_IMAGE_OPTS: char = '\u{108}';
const OPT_FORK: char = '\u{109}';
const OPT_PID_FILE: char = '\u{10a}';
const OPT_SELINUX_LABEL: char = '\u{10b}';
const OPT_HANDSHAKE_LIMIT: char = '\u{10c}';

const SHORT: &str = "hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L";

const fn long(name: &'static str, has_arg: HasArg, key: char) -> LongOpt {
    LongOpt { name, has_arg, key }
}

const LONG: &[LongOpt] = &[
    long("help", HasArg::No, 'h'),
    long("version", HasArg::No, 'V'),
    long("bind", HasArg::Required, 'b'),
    long("port", HasArg::Required, 'p'),
    long("socket", HasArg::Required, 'k'),
    long("offset", HasArg::Required, 'o'),
    long("read-only", HasArg::No, 'r'),
    long("allocation-depth", HasArg::No, 'A'),
    long("bitmap", HasArg::Required, 'B'),
    long("connect", HasArg::Required, 'c'),
    long("disconnect", HasArg::No, 'd'),
    long("list", HasArg::No, 'L'),
    long("snapshot", HasArg::No, 's'),
    long("load-snapshot", HasArg::Required, 'l'),
    long("nocache", HasArg::No, 'n'),
    long("cache", HasArg::Required, OPT_CACHE),
    long("aio", HasArg::Required, OPT_AIO),
    long("discard", HasArg::Required, OPT_DISCARD),
    long("detect-zeroes", HasArg::Required, OPT_DETECT_ZEROES),
    long("shared", HasArg::Required, 'e'),
    long("format", HasArg::Required, 'f'),
    long("persistent", HasArg::No, 't'),
    long("verbose", HasArg::No, 'v'),
    long("object", HasArg::Required, OPT_OBJECT),
    long("export-name", HasArg::Required, 'x'),
    long("description", HasArg::Required, 'D'),
    long("handshake-limit", HasArg::Required, OPT_HANDSHAKE_LIMIT),
    long("tls-creds", HasArg::Required, OPT_TLS_CREDS),
    long("tls-hostname", HasArg::Required, OPT_TLS_HOSTNAME),
    long("tls-authz", HasArg::Required, OPT_TLS_AUTHZ),
    long("image-opts", HasArg::No, OPT_IMAGE_OPTS),
    long("trace", HasArg::Required, 'T'),
    long("fork", HasArg::No, OPT_FORK),
    long("pid-file", HasArg::Required, OPT_PID_FILE),
    long("selinux-label", HasArg::Required, OPT_SELINUX_LABEL),
];

/// QEMU's qemu_strtou64 in base 0: the whole argument must be a non-negative number.
fn strtou64(arg: &str) -> Option<u64> {
    let (value, rest) = crate::tools::qemu_io::parse::strtol(arg);
    (!arg.is_empty() && rest.is_empty() && value >= 0).then_some(value as u64)
}

/// An error already worth exiting on: printed as `qemu-nbd: MSG`, status 1.
fn fail(msg: impl std::fmt::Display) -> Parsed {
    block::error::error_report(&msg.to_string());
    Parsed::Exit(1)
}

/// Parses qemu-nbd's arguments (without the program name).
pub fn parse(argv0: &str, args: &[String]) -> Parsed {
    let parsed = match getopt_long(args, SHORT, LONG) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{argv0}: {e}");
            return fail(format_args!("Try `{argv0} --help' for more information."));
        }
    };
    let mut o = NbdOptions {
        shared: 1,
        ..NbdOptions::default()
    };
    let (mut seen_cache, mut seen_aio, mut seen_discard) = (false, false, false);
    for opt in parsed.opts {
        let arg = opt.arg.unwrap_or_default();
        match opt.key {
            'h' => {
                super::help::usage(argv0);
                return Parsed::Exit(0);
            }
            'V' => {
                super::help::version(argv0);
                return Parsed::Exit(0);
            }
            's' => o.snapshot = true,
            'n' | OPT_CACHE => {
                if seen_cache {
                    return fail("-n and --cache can only be specified once");
                }
                seen_cache = true;
                let mode = if opt.key == 'n' { "none" } else { &arg };
                match CacheMode::parse(mode) {
                    Ok(c) => o.cache = c,
                    Err(_) => return fail(format_args!("Invalid cache mode `{mode}'")),
                }
            }
            OPT_AIO => {
                if seen_aio {
                    return fail("--aio can only be specified once");
                }
                seen_aio = true;
                match AioMode::parse(&arg) {
                    Ok(a) => o.aio = a,
                    Err(e) if e.errno() == libc::ENOTSUP => return fail(e),
                    Err(_) => return fail(format_args!("Invalid aio mode '{arg}'")),
                }
            }
            OPT_DISCARD => {
                if seen_discard {
                    return fail("--discard can only be specified once");
                }
                seen_discard = true;
                o.unmap = match arg.as_str() {
                    "off" | "ignore" => false,
                    "on" | "unmap" => true,
                    _ => return fail(format_args!("Invalid discard mode `{arg}'")),
                };
            }
            OPT_DETECT_ZEROES => {
                if !matches!(arg.as_str(), "off" | "on" | "unmap") {
                    return fail(format_args!(
                        "Failed to parse detect_zeroes mode: invalid parameter value: {arg}"
                    ));
                }
                if arg == "unmap" && !o.unmap {
                    return fail(
                        "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
                    );
                }
                o.detect_zeroes = Some(arg);
            }
            'b' => o.bind = Some(arg),
            'p' => o.port = Some(arg),
            'o' => match strtou64(&arg) {
                Some(v) => o.offset = v,
                None => return fail(format_args!("Invalid offset '{arg}'")),
            },
            'l' => {
                o.load_snapshot = Some(arg);
                o.read_only = true;
            }
            'r' => o.read_only = true,
            'A' => o.allocation_depth = true,
            'B' => o.bitmaps.push(arg),
            'k' => {
                if !arg.starts_with('/') {
                    return fail("socket path must be absolute");
                }
                o.socket = Some(arg);
            }
            'd' => o.disconnect = true,
            'c' => o.connect = Some(arg),
            'e' => match strtou64(&arg) {
                Some(v) if v <= i32::MAX as u64 => o.shared = v as usize,
                _ => return fail(format_args!("Invalid shared device number '{arg}'")),
            },
            'f' => o.format = Some(arg),
            't' => o.persistent = true,
            'x' => {
                if arg.len() > block::nbd::proto::NBD_MAX_STRING_SIZE {
                    return fail(format_args!("export name '{arg}' too long"));
                }
                o.export_name = Some(arg);
            }
            'D' => {
                if arg.len() > block::nbd::proto::NBD_MAX_STRING_SIZE {
                    return fail(format_args!("export description '{arg}' too long"));
                }
                o.description = Some(arg);
            }
            'v' => o.verbose = true,
            OPT_OBJECT => o.objects.push(arg),
            OPT_TLS_CREDS => o.tls.push(("--tls-creds", arg)),
            OPT_TLS_HOSTNAME => o.tls.push(("--tls-hostname", arg)),
            OPT_TLS_AUTHZ => o.tls.push(("--tls-authz", arg)),
            OPT_IMAGE_OPTS => o.image_opts = true,
            'T' => match block::trace::configure(&arg) {
                Ok(None) => {}
                Ok(Some(events)) => {
                    print!("{events}");
                    return Parsed::Exit(0);
                }
                Err(e) => return fail(e),
            },
            OPT_FORK => o.fork = true,
            'L' => o.list = true,
            OPT_PID_FILE => o.pid_file = Some(arg),
            OPT_SELINUX_LABEL => return fail("SELinux support not enabled in this binary"),
            OPT_HANDSHAKE_LIMIT => match strtou64(&arg) {
                Some(v) if v <= i32::MAX as u64 => o.handshake_limit = Some(v),
                _ => return fail(format_args!("Invalid handshake limit '{arg}'")),
            },
            _ => unreachable!("getopt returned an option not in the table"),
        }
    }
    let operands = parsed.operands;
    if o.list {
        if !operands.is_empty() {
            return fail("List mode is incompatible with a file name");
        }
        if o.export_name.is_some() || o.description.is_some() || o.offset != 0 {
            return fail("List mode is incompatible with per-device settings");
        }
        if o.fork {
            return fail("List mode is incompatible with forking");
        }
    } else if operands.len() != 1 {
        block::error::error_report("Invalid number of arguments");
        eprintln!("Try `{argv0} --help' for more information.");
        return Parsed::Exit(1);
    } else {
        o.file = operands.into_iter().next();
    }
    Parsed::Run(Box::new(o))
}
