//! rqemu-img: a qemu-img compatible disk image utility (QEMU's qemu-img.c).
//!
//! `main` parses the global options (`-h`, `-V`, `-T`), finds the subcommand and runs it. Each
//! subcommand lives in its own module and returns the process exit status; the ones that do
//! I/O run their work as a coroutine on the thread's AioContext. Shared pieces: [`cli`]
//! (option parsing and error reporting in qemu-img's words, opening images), [`create_opts`]
//! (`-o` option lists, `-o help`, the "Formatting" line), [`human`] (sizes and the progress
//! bar) and `crate::qjson` (JSON printed exactly as QEMU's QDict/JSON writer prints it).

pub mod amend;
pub mod bench;
pub mod check;
pub mod cli;
pub mod commit;
pub mod compare;
pub mod convert;
pub mod convert_copy;
pub mod create;
pub mod create_opts;
pub mod dd;
pub mod help;
pub mod human;
pub mod info;
pub mod map;
pub mod measure;
pub mod rebase;
pub mod resize;
pub mod snapshot;

use cli::error_exit;

/// A subcommand: its name and the function that runs it with its arguments (the
/// subcommand name first, like QEMU's argv for a handler).
struct Command {
    name: &'static str,
    run: fn(&[String]) -> i32,
}

/// Subcommands qemu-img 10.0.2 has that rqemu-img does not implement yet.
const NOT_YET: &[&str] = &["bitmap"];

const COMMANDS: &[Command] = &[
    Command {
        name: "amend",
        run: amend::run,
    },
    Command {
        name: "bench",
        run: bench::run,
    },
    Command {
        name: "check",
        run: check::run,
    },
    Command {
        name: "commit",
        run: commit::run,
    },
    Command {
        name: "compare",
        run: compare::run,
    },
    Command {
        name: "convert",
        run: convert::run,
    },
    Command {
        name: "create",
        run: create::run,
    },
    Command {
        name: "dd",
        run: dd::run,
    },
    Command {
        name: "info",
        run: info::run,
    },
    Command {
        name: "map",
        run: map::run,
    },
    Command {
        name: "measure",
        run: measure::run,
    },
    Command {
        name: "rebase",
        run: rebase::run,
    },
    Command {
        name: "resize",
        run: resize::run,
    },
    Command {
        name: "snapshot",
        run: snapshot::run,
    },
];

const GLOBAL_LONG: &[crate::tools::getopt::LongOpt] = &[
    cli::long("help", false, 'h'),
    cli::long("version", false, 'V'),
    cli::long("trace", true, 'T'),
];

/// Runs qemu-img with `args` (without the program name); returns the exit status.
pub fn main(args: Vec<String>) -> i32 {
    block::error::set_progname(cli::PROG);
    formats::register_all();
    if args.is_empty() {
        return error_exit("Not enough arguments");
    }
    // Global options stop at the subcommand name (POSIX mode, like "+:hVT:").
    let argv: Vec<String> = std::iter::once(cli::PROG.to_string()).chain(args).collect();
    let parsed = match cli::getopt(&argv, "+hVT:", GLOBAL_LONG) {
        Ok(p) => p,
        Err(code) => return code,
    };
    for opt in &parsed.opts {
        match opt.key {
            'h' => return help::print_help(),
            'V' => {
                print!("{}", help::version());
                return 0;
            }
            'T' => match block::trace::configure(opt.arg.as_deref().unwrap_or("")) {
                Ok(None) => {}
                Ok(Some(events)) => {
                    print!("{events}");
                    return 0;
                }
                Err(e) => {
                    cli::error_report(&e);
                    return 1;
                }
            },
            _ => {}
        }
    }
    let Some(name) = parsed.operands.first() else {
        return 0;
    };
    if let Some(cmd) = COMMANDS.iter().find(|c| c.name == name) {
        return (cmd.run)(&parsed.operands);
    }
    if NOT_YET.contains(&name.as_str()) {
        cli::error_report(&format!(
            "The '{name}' command is not supported by rqemu-img yet"
        ));
        return 1;
    }
    error_exit(&format!("Command not found: {name}"))
}
