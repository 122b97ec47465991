//! The command table and how one command line is checked and run (qemu-io-cmds.c's
//! cmdinfo_t table, find_command, command() and qemuio_command).

use block::coroutine::LocalBoxFuture;

use super::output::{err, out, report};
use super::parse::breakline;
use super::{cmd_absent, cmd_aio, cmd_break, cmd_file, cmd_misc, cmd_reopen, cmd_rw, help, QemuIo};

/// A command's implementation: gets the words (the name first), returns 0 or -errno.
pub type CmdFn = for<'a> fn(&'a QemuIo, &'a [String]) -> LocalBoxFuture<'a, i32>;

/// When a command may run without an open image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeedsFile {
    /// Needs an open image ("no file open, try 'help open'").
    Yes,
    /// Runs with or without one (CMD_NOFILE_OK, CMD_FLAG_GLOBAL).
    No,
}

/// One entry of the command table (cmdinfo_t).
pub struct Command {
    /// Name.
    pub name: &'static str,
    /// Short alias (`r` for read).
    pub altname: Option<&'static str>,
    /// Implementation.
    pub run: CmdFn,
    /// Fewest arguments after the name.
    pub argmin: usize,
    /// Most arguments, None for no limit.
    pub argmax: Option<usize>,
    /// Synopsis of the arguments for help and usage lines.
    pub args: Option<&'static str>,
    /// One-line description.
    pub oneline: &'static str,
    /// Extended help.
    pub help: Option<fn() -> String>,
    /// Whether an open image is required.
    pub needs_file: NeedsFile,
    /// Whether the command writes (needs BLK_PERM_WRITE: refused on a read-only node).
    pub writes: bool,
}

macro_rules! run {
    ($f:path) => {
        |io, argv| Box::pin($f(io, argv))
    };
}

/// Every command, sorted by name as qemu-io lists them.
pub static COMMANDS: &[Command] = &[
    Command {
        name: "abort",
        altname: None,
        run: run!(cmd_misc::abort_f),
        argmin: 0,
        argmax: Some(0),
        args: None,
        oneline: "simulate a program crash using abort(3)",
        help: None,
        needs_file: NeedsFile::No,
        writes: false,
    },
    Command {
        name: "aio_flush",
        altname: None,
        run: run!(cmd_aio::aio_flush_f),
        argmin: 0,
        argmax: Some(0),
        args: None,
        oneline: "completes all outstanding aio requests",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "aio_read",
        altname: None,
        run: run!(cmd_aio::aio_read_f),
        argmin: 2,
        argmax: None,
        args: Some("[-Ciqrv] [-P pattern] off len [len..]"),
        oneline: "asynchronously reads a number of bytes",
        help: Some(help::aio_read),
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "aio_write",
        altname: None,
        run: run!(cmd_aio::aio_write_f),
        argmin: 2,
        argmax: None,
        args: Some("[-Cfiqruz] [-P pattern] off len [len..]"),
        oneline: "asynchronously writes a number of bytes",
        help: Some(help::aio_write),
        needs_file: NeedsFile::Yes,
        writes: true,
    },
    Command {
        name: "alloc",
        altname: Some("a"),
        run: run!(cmd_misc::alloc_f),
        argmin: 1,
        argmax: Some(2),
        args: Some("offset [count]"),
        oneline: "checks if offset is allocated in the file",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "break",
        altname: None,
        run: run!(cmd_break::break_f),
        argmin: 2,
        argmax: Some(2),
        args: Some("event tag"),
        oneline: "sets a breakpoint on event and tags the stopped request as tag",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "close",
        altname: Some("c"),
        run: run!(cmd_file::close_f),
        argmin: 0,
        argmax: Some(0),
        args: None,
        oneline: "close the current open file",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "discard",
        altname: Some("d"),
        run: run!(cmd_misc::discard_f),
        argmin: 2,
        argmax: None,
        args: Some("[-Cq] off len"),
        oneline: "discards a number of bytes at a specified offset",
        help: Some(|| help::DISCARD.to_string()),
        needs_file: NeedsFile::Yes,
        writes: true,
    },
    Command {
        name: "flush",
        altname: Some("f"),
        run: run!(cmd_misc::flush_f),
        argmin: 0,
        argmax: Some(0),
        args: None,
        oneline: "flush all in-core file state to disk",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "help",
        altname: Some("?"),
        run: run!(cmd_file::help_f),
        argmin: 0,
        argmax: Some(1),
        args: Some("[command]"),
        oneline: "help for one or all commands",
        help: None,
        needs_file: NeedsFile::No,
        writes: false,
    },
    Command {
        name: "info",
        altname: Some("i"),
        run: run!(cmd_misc::info_f),
        argmin: 0,
        argmax: Some(0),
        args: None,
        oneline: "prints information about the current file",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "length",
        altname: Some("l"),
        run: run!(cmd_misc::length_f),
        argmin: 0,
        argmax: Some(0),
        args: None,
        oneline: "gets the length of the current file",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "map",
        altname: None,
        run: run!(cmd_misc::map_f),
        argmin: 0,
        argmax: Some(0),
        args: Some(""),
        oneline: "prints the allocated areas of a file",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "open",
        altname: Some("o"),
        run: run!(cmd_file::open_f),
        argmin: 1,
        argmax: None,
        args: Some("[-rsCnkU] [-t cache] [-d discard] [-o options] [path]"),
        oneline: "open the file specified by path",
        help: Some(|| help::OPEN.to_string()),
        needs_file: NeedsFile::No,
        writes: false,
    },
    Command {
        name: "quit",
        altname: Some("q"),
        run: run!(cmd_file::quit_f),
        argmin: 0,
        argmax: None,
        args: None,
        oneline: "exit the program",
        help: None,
        needs_file: NeedsFile::No,
        writes: false,
    },
    Command {
        name: "read",
        altname: Some("r"),
        run: run!(cmd_rw::read_f),
        argmin: 2,
        argmax: None,
        args: Some("[-abCqrv] [-P pattern [-s off] [-l len]] off len"),
        oneline: "reads a number of bytes at a specified offset",
        help: Some(|| help::READ.to_string()),
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "readv",
        altname: None,
        run: run!(cmd_rw::readv_f),
        argmin: 2,
        argmax: None,
        args: Some("[-Cqrv] [-P pattern] off len [len..]"),
        oneline: "reads a number of bytes at a specified offset",
        help: Some(|| help::READV.to_string()),
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "remove_break",
        altname: None,
        run: run!(cmd_break::remove_break_f),
        argmin: 1,
        argmax: Some(1),
        args: Some("tag"),
        oneline: "remove a breakpoint by tag",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "reopen",
        altname: None,
        run: run!(cmd_reopen::reopen_f),
        argmin: 0,
        argmax: None,
        args: Some("[(-r|-w)] [-c cache] [-o options]"),
        oneline: "reopens an image with new options",
        help: Some(|| help::REOPEN.to_string()),
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "resume",
        altname: None,
        run: run!(cmd_break::resume_f),
        argmin: 1,
        argmax: Some(1),
        args: Some("tag"),
        oneline: "resumes the request tagged as tag",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "sigraise",
        altname: None,
        run: run!(cmd_misc::sigraise_f),
        argmin: 1,
        argmax: Some(1),
        args: Some("signal"),
        oneline: "raises a signal",
        help: Some(|| help::SIGRAISE.to_string()),
        needs_file: NeedsFile::No,
        writes: false,
    },
    Command {
        name: "sleep",
        altname: None,
        run: run!(cmd_misc::sleep_f),
        argmin: 1,
        argmax: Some(1),
        args: None,
        oneline: "waits for the given value in milliseconds",
        help: None,
        needs_file: NeedsFile::No,
        writes: false,
    },
    Command {
        name: "truncate",
        altname: Some("t"),
        run: run!(cmd_misc::truncate_f),
        argmin: 1,
        argmax: Some(3),
        args: Some("[-m prealloc_mode] off"),
        oneline: "truncates the current file at the given offset",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: true,
    },
    Command {
        name: "wait_break",
        altname: None,
        run: run!(cmd_break::wait_break_f),
        argmin: 1,
        argmax: Some(1),
        args: Some("tag"),
        oneline: "waits for the suspension of a request",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "write",
        altname: Some("w"),
        run: run!(cmd_rw::write_f),
        argmin: 2,
        argmax: None,
        args: Some("[-bcCfnqruz] [-P pattern | -s source_file] off len"),
        oneline: "writes a number of bytes at a specified offset",
        help: Some(|| help::WRITE.to_string()),
        needs_file: NeedsFile::Yes,
        writes: true,
    },
    Command {
        name: "writev",
        altname: None,
        run: run!(cmd_rw::writev_f),
        argmin: 2,
        argmax: None,
        args: Some("[-Cfqr] [-P pattern] off len [len..]"),
        oneline: "writes a number of bytes at a specified offset",
        help: Some(|| help::WRITEV.to_string()),
        needs_file: NeedsFile::Yes,
        writes: true,
    },
    Command {
        name: "zone_append",
        altname: Some("zap"),
        run: run!(cmd_absent::zone_append_f),
        argmin: 3,
        argmax: Some(4),
        args: Some("offset len [len..]"),
        oneline: "append write a number of bytes at a specified offset",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: true,
    },
    Command {
        name: "zone_close",
        altname: Some("zc"),
        run: run!(cmd_absent::zone_f),
        argmin: 2,
        argmax: Some(2),
        args: Some("offset len"),
        oneline: "close a range of zones in zone block device",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "zone_finish",
        altname: Some("zf"),
        run: run!(cmd_absent::zone_f),
        argmin: 2,
        argmax: Some(2),
        args: Some("offset len"),
        oneline: "finish a range of zones in zone block device",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "zone_open",
        altname: Some("zo"),
        run: run!(cmd_absent::zone_f),
        argmin: 2,
        argmax: Some(2),
        args: Some("offset len"),
        oneline: "explicit open a range of zones in zone block device",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "zone_report",
        altname: Some("zrp"),
        run: run!(cmd_absent::zone_f),
        argmin: 2,
        argmax: Some(2),
        args: Some("offset number"),
        oneline: "report zone information",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
    Command {
        name: "zone_reset",
        altname: Some("zrs"),
        run: run!(cmd_absent::zone_f),
        argmin: 2,
        argmax: Some(2),
        args: Some("offset len"),
        oneline: "reset a zone write pointer in zone block device",
        help: None,
        needs_file: NeedsFile::Yes,
        writes: false,
    },
];

/// Looks a command up by name or alias (find_command).
pub fn find_command(name: &str) -> Option<&'static Command> {
    COMMANDS
        .iter()
        .find(|c| c.name == name || c.altname == Some(name))
}

/// "NAME ARGS -- ONELINE", naming the command as it was typed (help_oneline).
pub fn oneline(cmd: &str, ct: &Command) -> String {
    match ct.args {
        Some(args) => format!("{cmd} {args} -- {}\n", ct.oneline),
        None => format!("{cmd} -- {}\n", ct.oneline),
    }
}

/// Prints a command's usage line after a bad option or operand (qemuio_command_usage).
pub fn usage(ct: &Command) -> i32 {
    out!("{}", oneline(ct.name, ct));
    -libc::EINVAL
}

fn argcount_error(cmd: &str, ct: &Command, n: usize) {
    match ct.argmax {
        Some(0) => err!("bad argument count {n} to {cmd}, expected 0 arguments\n"),
        Some(max) if max == ct.argmin => {
            err!("bad argument count {n} to {cmd}, expected {max} arguments\n")
        }
        None => err!(
            "bad argument count {n} to {cmd}, expected at least {} arguments\n",
            ct.argmin
        ),
        Some(max) => err!(
            "bad argument count {n} to {cmd}, expected between {} and {max} arguments\n",
            ct.argmin
        ),
    }
}

/// Checks and runs one command (command()): an image must be open unless the command does
/// without, the argument count must fit, and a writing command needs a writable node.
async fn command(io: &QemuIo, ct: &Command, argv: &[String]) -> i32 {
    if ct.needs_file == NeedsFile::Yes && !io.has_blk() {
        err!("no file open, try 'help open'\n");
        return -libc::EINVAL;
    }
    let n = argv.len() - 1;
    if n < ct.argmin || ct.argmax.is_some_and(|max| n > max) {
        argcount_error(&argv[0], ct, n);
        return -libc::EINVAL;
    }
    if ct.writes && io.blk().is_read_only() {
        report!("Block node is read-only");
        return -libc::EPERM;
    }
    (ct.run)(io, argv).await
}

/// Runs one command line; returns 0 or a negative errno (qemuio_command).
pub async fn run_line(io: &QemuIo, line: &str) -> i32 {
    let argv = breakline(line);
    let Some(name) = argv.first() else {
        return 0;
    };
    match find_command(name) {
        Some(ct) => command(io, ct, &argv).await,
        None => {
            err!("command \"{name}\" not found\n");
            -libc::EINVAL
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_found_by_name_and_alias() {
        assert_eq!(find_command("r").unwrap().name, "read");
        assert_eq!(find_command("?").unwrap().name, "help");
        assert!(find_command("len").is_none());
        let names: Vec<_> = COMMANDS.iter().map(|c| c.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    #[test]
    fn oneline_names_the_command_as_typed() {
        let read = find_command("read").unwrap();
        assert_eq!(
            oneline("r", read),
            "r [-abCqrv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset\n"
        );
        assert_eq!(
            oneline("map", find_command("map").unwrap()),
            "map  -- prints the allocated areas of a file\n"
        );
    }
}
