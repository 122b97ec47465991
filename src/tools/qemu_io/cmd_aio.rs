//! The asynchronous commands: aio_read, aio_write and aio_flush (aio_read_f, aio_write_f,
//! aio_flush_f in qemu-io-cmds.c).
//!
//! `aio_read`/`aio_write` submit through BlockBackend's `aio_*` interface and return at
//! once; the report is printed by the completion callback, which runs from a bottom half
//! whenever the loop next turns (during a later command, `aio_flush`, `sleep`, `close` or the
//! final drain at exit). As in qemu-io, a failed or mismatching asynchronous request is
//! reported but does not make the command, or the program, fail.

use std::time::Instant;

use block::backend::CompletionFn;
use block::{IoVector, RequestFlags, Result};

use super::cmd_rw::{
    create_iovec, report_vector_read, vector_read_opts, VectorReadOpts, READ_FILL, WRITE_FILL,
};
use super::commands::{find_command, usage};
use super::output::out;
use super::parse::{cvtnum_or_print, parse_pattern, Getopt};
use super::report::print_report;
use super::QemuIo;

fn aio_read_done(qiov: IoVector, offset: u64, o: VectorReadOpts, start: Instant, r: Result<()>) {
    let t = start.elapsed();
    match r {
        Err(e) => out!("readv failed: {}\n", block::error::strerror(e.errno())),
        // A mismatch is reported, but an asynchronous command has already succeeded.
        Ok(()) => {
            report_vector_read(&qiov, offset, &o, t);
        }
    }
}

/// What a write's completion needs to know to report it (struct aio_ctx).
struct AioWriteCtx {
    offset: u64,
    len: u64,
    machine: bool,
    quiet: bool,
    start: Instant,
}

fn aio_write_done(ctx: AioWriteCtx, result: Result<()>) {
    let t = ctx.start.elapsed();
    if let Err(e) = result {
        out!("aio_write failed: {}\n", block::error::strerror(e.errno()));
        return;
    }
    if !ctx.quiet {
        print_report("wrote", t, ctx.offset, ctx.len, ctx.len, ctx.machine);
    }
}

/// `aio_read [-Ciqrv] [-P pattern] off len [len..]`.
pub async fn aio_read_f(io: &QemuIo, argv: &[String]) -> i32 {
    aio_read(io, argv).unwrap_or_else(|e| e)
}

fn aio_read(io: &QemuIo, argv: &[String]) -> std::result::Result<i32, i32> {
    let (Some(o), operands) = vector_read_opts(argv, "aio_read")? else {
        return Ok(0);
    };
    let offset = cvtnum_or_print(&operands[0])?;
    let qiov = create_iovec(io, &operands[1..], READ_FILL).ok_or(-libc::EINVAL)?;
    let (buf, start) = (qiov.clone(), Instant::now());
    io.blk().aio_preadv(
        offset,
        qiov,
        RequestFlags::empty(),
        Box::new(move |r| aio_read_done(buf, offset, o, start, r)),
    );
    Ok(0)
}

/// `aio_write [-Cfiqruz] [-P pattern] off len [len..]`.
pub async fn aio_write_f(io: &QemuIo, argv: &[String]) -> i32 {
    aio_write(io, argv).unwrap_or_else(|e| e)
}

/// Options of `aio_write`; None when `-i` asked for no request at all.
struct AioWriteOpts {
    machine: bool,
    quiet: bool,
    zero: bool,
    pattern: u8,
    flags: RequestFlags,
}

fn aio_write_opts(
    argv: &[String],
) -> std::result::Result<(Option<AioWriteOpts>, Vec<String>), i32> {
    let ct = find_command("aio_write").unwrap();
    let mut o = AioWriteOpts {
        machine: false,
        quiet: false,
        zero: false,
        pattern: WRITE_FILL,
        flags: RequestFlags::empty(),
    };
    let mut g = Getopt::new(argv, "CfiqrP:uz");
    while let Some(opt) = g.next() {
        match opt {
            Ok(('C', _)) => o.machine = true,
            Ok(('f', _)) => o.flags |= RequestFlags::FUA,
            Ok(('q', _)) => o.quiet = true,
            Ok(('r', _)) => {}
            Ok(('u', _)) => o.flags |= RequestFlags::MAY_UNMAP,
            // qemu-io never records that -P was given, so -z silently wins over it.
            Ok(('P', Some(a))) => o.pattern = parse_pattern(&a)?,
            Ok(('i', _)) => {
                out!("injecting invalid write request\n");
                return Ok((None, Vec::new()));
            }
            Ok(('z', _)) => o.zero = true,
            _ => return Err(usage(ct)),
        }
    }
    let operands = g.operands();
    if operands.len() < 2 {
        return Err(usage(ct));
    }
    let conflict = if o.zero && operands.len() != 2 {
        Some("-z supports only a single length parameter")
    } else if o.flags.contains(RequestFlags::MAY_UNMAP) && !o.zero {
        Some("-u requires -z to be specified")
    } else {
        None
    };
    if let Some(msg) = conflict {
        out!("{msg}\n");
        return Err(-libc::EINVAL);
    }
    Ok((Some(o), operands))
}

fn aio_write(io: &QemuIo, argv: &[String]) -> std::result::Result<i32, i32> {
    let (Some(o), operands) = aio_write_opts(argv)? else {
        return Ok(0);
    };
    let offset = cvtnum_or_print(&operands[0])?;
    let blk = io.blk();
    let mut ctx = AioWriteCtx {
        offset,
        len: 0,
        machine: o.machine,
        quiet: o.quiet,
        start: Instant::now(),
    };
    let done: CompletionFn;
    if o.zero {
        ctx.len = cvtnum_or_print(&operands[1])?;
        let count = ctx.len;
        done = Box::new(move |r| aio_write_done(ctx, r));
        blk.aio_pwrite_zeroes(offset, count, o.flags, done);
    } else {
        let qiov = create_iovec(io, &operands[1..], o.pattern).ok_or(-libc::EINVAL)?;
        ctx.len = qiov.len() as u64;
        ctx.start = Instant::now();
        done = Box::new(move |r| aio_write_done(ctx, r));
        blk.aio_pwritev(offset, qiov, o.flags, done);
    }
    Ok(0)
}

/// `aio_flush`: waits for every request in flight, callbacks included (blk_drain_all).
pub async fn aio_flush_f(io: &QemuIo, _argv: &[String]) -> i32 {
    io.blk().drain().await;
    0
}
