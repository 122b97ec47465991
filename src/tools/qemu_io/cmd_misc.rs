//! The commands about the image rather than its data, and the process: discard, flush,
//! length, info, map, alloc, truncate, sleep, sigraise, abort (the matching *_f functions of
//! qemu-io-cmds.c).

use std::time::{Duration, Instant};

use block::driver::PreallocMode;
use serde_json::Value;

use super::cmd_rw::check_length;
use super::commands::{find_command, usage};
use super::output::{self, out, report};
use super::parse::{cvtnum, cvtnum_or_print, print_cvtnum_err, strtol, Getopt, NumError};
use super::report::{cvtstr, print_report};
use super::QemuIo;

/// `discard [-Cq] off len`.
pub async fn discard_f(io: &QemuIo, argv: &[String]) -> i32 {
    discard(io, argv).await.unwrap_or_else(|e| e)
}

async fn discard(io: &QemuIo, argv: &[String]) -> Result<i32, i32> {
    let ct = find_command("discard").unwrap();
    let (mut machine, mut quiet) = (false, false);
    let mut g = Getopt::new(argv, "Cq");
    while let Some(opt) = g.next() {
        match opt {
            Ok(('C', _)) => machine = true,
            Ok(('q', _)) => quiet = true,
            _ => return Err(usage(ct)),
        }
    }
    let operands = g.operands();
    if operands.len() != 2 {
        return Err(usage(ct));
    }
    let offset = cvtnum_or_print(&operands[0])?;
    let bytes = cvtnum_or_print(&operands[1])?;
    check_length(bytes, &operands[1])?;
    let start = Instant::now();
    let result = io.blk().co_pdiscard(offset, bytes).await;
    let t = start.elapsed();
    if let Err(e) = result {
        out!("discard failed: {}\n", block::error::strerror(e.errno()));
        return Err(-e.errno());
    }
    if !quiet {
        print_report("discard", t, offset, bytes, bytes, machine);
    }
    Ok(0)
}

/// `flush`: makes everything written stable (blk_flush); failure is only the exit status.
pub async fn flush_f(io: &QemuIo, _argv: &[String]) -> i32 {
    match io.blk().co_flush().await {
        Ok(()) => 0,
        Err(e) => -e.errno(),
    }
}

/// `length`: the image size in binary units.
pub async fn length_f(io: &QemuIo, _argv: &[String]) -> i32 {
    out!("{}\n", cvtstr(io.blk().getlength() as f64));
    0
}

/// `info`: format, cluster size, VM state offset and the format-specific facts.
pub async fn info_f(io: &QemuIo, _argv: &[String]) -> i32 {
    let blk = io.blk();
    let bs = &blk.bs();
    out!("format name: {}\n", bs.format_name());
    if let Some(proto) = bs.class().protocol_name {
        out!("format name: {proto}\n");
    }
    let bdi = match bs.drv().get_info(bs) {
        Ok(bdi) => bdi,
        Err(e) => return -e.errno(),
    };
    out!("cluster size: {}\n", cvtstr(bdi.cluster_size as f64));
    out!("vm state offset: {}\n", cvtstr(bdi.vm_state_offset as f64));
    if let Some(spec) = bs.drv().get_specific_info(bs) {
        let data = spec.get("data").filter(|_| spec.get("type").is_some());
        out!("Format specific information:\n");
        out!("{}", dump_specific(data.unwrap_or(&spec), 1));
    }
    0
}

/// The human-readable form of format-specific information: one `key: value` per line, dashes
/// in keys shown as spaces, nested objects indented four spaces a level (block/qapi.c's
/// dump_qobject, shared with `qemu-img info`).
pub fn dump_specific(value: &Value, indent: usize) -> String {
    let pad = " ".repeat(indent * 4);
    let entry = |label: String, v: &Value| {
        if v.is_object() || v.is_array() {
            format!("{pad}{label}:\n{}", dump_specific(v, indent + 1))
        } else {
            format!("{pad}{label}: {}", dump_specific(v, indent + 1))
        }
    };
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| entry(k.replace('-', " "), v))
            .collect(),
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| entry(format!("[{i}]"), v))
            .collect(),
        Value::String(s) => format!("{s}\n"),
        Value::Null => "\n".to_string(),
        other => format!("{other}\n"),
    }
}

/// Whether the range at `offset` is allocated and for how many bytes that holds, extended
/// over following ranges with the same answer (map_is_allocated).
async fn map_is_allocated(
    io: &QemuIo,
    mut offset: u64,
    mut bytes: u64,
) -> block::Result<(bool, u64)> {
    let blk = io.blk();
    let bs = &blk.bs();
    let (first, mut num) = bs.co_is_allocated(offset, bytes).await?;
    let mut total = num;
    while bytes > 0 {
        offset += num;
        bytes -= num;
        let (allocated, n) = bs.co_is_allocated(offset, bytes).await?;
        if allocated != first || n == 0 {
            break;
        }
        total += n;
        num = n;
    }
    Ok((first, total))
}

/// `map`: the runs of allocated and unallocated bytes of the top layer.
pub async fn map_f(io: &QemuIo, _argv: &[String]) -> i32 {
    let mut offset = 0;
    let mut bytes = io.blk().getlength();
    while bytes > 0 {
        let (allocated, num) = match map_is_allocated(io, offset, bytes).await {
            Ok(r) => r,
            Err(e) => {
                report!(
                    "Failed to get allocation status: {}",
                    block::error::strerror(e.errno())
                );
                return -e.errno();
            }
        };
        if num == 0 {
            report!("Unexpected end of image");
            return -libc::EIO;
        }
        out!(
            "{} (0x{num:x}) bytes {} at offset {} (0x{offset:x})\n",
            cvtstr(num as f64),
            if allocated {
                "    allocated"
            } else {
                "not allocated"
            },
            cvtstr(offset as f64)
        );
        offset += num;
        bytes -= num;
    }
    0
}

/// `alloc offset [count]`: how many of `count` bytes (default 512) are allocated.
pub async fn alloc_f(io: &QemuIo, argv: &[String]) -> i32 {
    alloc(io, argv).await.unwrap_or_else(|e| e)
}

async fn alloc(io: &QemuIo, argv: &[String]) -> Result<i32, i32> {
    let start = cvtnum_or_print(&argv[1])?;
    let mut count = match argv.get(2) {
        Some(arg) => cvtnum_or_print(arg)?,
        None => 512,
    };
    let blk = io.blk();
    let (mut offset, mut remaining, mut sum_alloc) = (start, count, 0);
    while remaining > 0 {
        let (allocated, num) = blk
            .bs()
            .co_is_allocated(offset, remaining)
            .await
            .map_err(|e| {
                out!(
                    "is_allocated failed: {}\n",
                    block::error::strerror(e.errno())
                );
                -e.errno()
            })?;
        offset += num;
        remaining -= num;
        if allocated {
            sum_alloc += num;
        }
        if num == 0 {
            count -= remaining;
            remaining = 0;
        }
    }
    out!(
        "{sum_alloc}/{count} bytes allocated at offset {}\n",
        cvtstr(start as f64)
    );
    Ok(0)
}

/// `truncate [-m prealloc_mode] off`.
pub async fn truncate_f(io: &QemuIo, argv: &[String]) -> i32 {
    truncate(io, argv).await.unwrap_or_else(|e| e)
}

async fn truncate(io: &QemuIo, argv: &[String]) -> Result<i32, i32> {
    let ct = find_command("truncate").unwrap();
    let mut prealloc = PreallocMode::Off;
    let mut g = Getopt::new(argv, "m:");
    while let Some(opt) = g.next() {
        match opt {
            Ok(('m', Some(mode))) => {
                prealloc = PreallocMode::parse(&mode).map_err(|_| {
                    report!("Invalid preallocation mode '{mode}'");
                    -libc::EINVAL
                })?;
            }
            _ => return Err(usage(ct)),
        }
    }
    // qemu-io parses the first operand (a missing one fails to parse) and names argv[1] in
    // the error, even when that is the -m option.
    let operands = g.operands();
    let parsed = operands
        .first()
        .map_or(Err(NumError::Invalid), |arg| cvtnum(arg));
    let offset = parsed.map_err(|e| {
        print_cvtnum_err(e, &argv[1]);
        e.errno()
    })?;
    io.blk()
        .co_truncate(offset, false, prealloc)
        .await
        .map_err(|e| {
            report!("{e}");
            -e.errno()
        })?;
    Ok(0)
}

/// `sleep ms`: runs the loop for a while, so that asynchronous requests progress.
pub async fn sleep_f(_io: &QemuIo, argv: &[String]) -> i32 {
    match strtol(&argv[1]) {
        (ms, "") if ms >= 0 => {
            block::aio::co_sleep(Duration::from_millis(ms as u64)).await;
            0
        }
        _ => {
            out!("{} is not a valid number\n", argv[1]);
            -libc::EINVAL
        }
    }
}

/// One more than the highest signal number (glibc's NSIG on Linux).
const NSIG: u64 = 65;

/// `sigraise signal`: flushes output, then raises the signal (simulating a crash).
pub async fn sigraise_f(_io: &QemuIo, argv: &[String]) -> i32 {
    let sig = match cvtnum_or_print(&argv[1]) {
        Ok(sig) => sig,
        Err(e) => return e,
    };
    if sig > NSIG {
        out!(
            "signal argument '{}' is too large to be a valid signal\n",
            argv[1]
        );
        return -libc::EINVAL;
    }
    output::flush();
    // SAFETY: raise only delivers a signal to this thread; an invalid number fails with EINVAL.
    unsafe { libc::raise(sig as libc::c_int) };
    0
}

/// `abort`: dies with SIGABRT at once; output still buffered is lost, as with abort(3).
pub async fn abort_f(_io: &QemuIo, _argv: &[String]) -> i32 {
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specific_info_dumps_like_qemu() {
        let v: Value = serde_json::from_str(
            r#"{"compat":"1.1","lazy-refcounts":false,"refcount-bits":16,
                "bitmaps":[{"name":"b0","flags":["auto"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            dump_specific(&v, 1),
            "    compat: 1.1\n    lazy refcounts: false\n    refcount bits: 16\n    bitmaps:\n        [0]:\n            name: b0\n            flags:\n                [0]: auto\n"
        );
    }
}
