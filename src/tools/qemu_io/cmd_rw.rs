//! The synchronous data commands: read, readv, write, writev (read_f, readv_f, write_f,
//! writev_f in qemu-io-cmds.c). Each waits for its request, verifies a `-P` pattern, and
//! prints the byte count and timing line unless `-q`.

use std::time::{Duration, Instant};

use block::io::MAX_REQUEST_BYTES;
use block::{Error, IoVector, RequestFlags};

use super::commands::{find_command, usage};
use super::output::{err, out};
use super::parse::{cvtnum_or_print, parse_pattern, Getopt};
use super::report::{hexdump, print_report};
use super::QemuIo;

/// Bytes `-m` shifts a buffer off its alignment (MISALIGN_OFFSET).
const MISALIGN_OFFSET: usize = 16;

/// The unit `-b` and `-c` requests must be aligned to (BDRV_SECTOR_SIZE).
const SECTOR_SIZE: u64 = 512;

/// Pattern qemu-io fills read buffers with before reading.
pub const READ_FILL: u8 = 0xab;

/// Pattern `write` uses without `-P`.
pub const WRITE_FILL: u8 = 0xcd;

/// An I/O buffer of `len` bytes filled with `pattern`, misaligned with `-m` (qemu_io_alloc).
pub fn io_alloc(io: &QemuIo, len: usize, pattern: u8) -> IoVector {
    let pad = if io.misalign { MISALIGN_OFFSET } else { 0 };
    let buf = IoVector::alloc(len + pad).slice(pad, len);
    buf.fill(0, len, pattern);
    buf
}

/// Parses a list of lengths into one buffer of consecutive segments (create_iovec).
pub fn create_iovec(io: &QemuIo, lens: &[String], pattern: u8) -> Option<IoVector> {
    let mut sizes = Vec::with_capacity(lens.len());
    let mut count: u64 = 0;
    for arg in lens {
        let len = cvtnum_or_print(arg).ok()?;
        if len > MAX_REQUEST_BYTES {
            out!("Argument '{arg}' exceeds maximum size {MAX_REQUEST_BYTES}\n");
            return None;
        }
        if count > MAX_REQUEST_BYTES - len {
            out!("The total number of bytes exceed the maximum size {MAX_REQUEST_BYTES}\n");
            return None;
        }
        sizes.push(len as usize);
        count += len;
    }
    let buf = io_alloc(io, count as usize, pattern);
    let mut qiov = IoVector::new();
    let mut at = 0;
    for size in sizes {
        qiov.push_slice(&buf, at, size);
        at += size;
    }
    Some(qiov)
}

/// Checks `len` bytes of `buf` from `start` against `pattern`; prints the mismatch line
/// (the -P check of read_f and readv_f).
pub fn verify_pattern(buf: &IoVector, start: usize, len: usize, pattern: u8, offset: u64) -> bool {
    let mut data = vec![0; len];
    buf.copy_to_slice(start, &mut data);
    if data.iter().all(|&b| b == pattern) {
        return true;
    }
    out!(
        "Pattern verification failed at offset {}, {len} bytes\n",
        offset + start as u64
    );
    false
}

/// The "length cannot exceed" check of read, write and discard.
pub fn check_length(count: u64, arg: &str) -> Result<(), i32> {
    if count > MAX_REQUEST_BYTES {
        out!("length cannot exceed {MAX_REQUEST_BYTES}, given {arg}\n");
        return Err(-libc::EINVAL);
    }
    Ok(())
}

/// Times a request.
async fn timed<T>(request: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let r = request.await;
    (r, start.elapsed())
}

fn sector_aligned(value: u64, what: &str) -> Result<(), i32> {
    if value & (SECTOR_SIZE - 1) != 0 {
        out!("{value} is not a sector-aligned value for '{what}'\n");
        return Err(-libc::EINVAL);
    }
    Ok(())
}

/// Options of `read`.
#[derive(Default)]
struct ReadOpts {
    machine: bool,
    quiet: bool,
    verbose: bool,
    vmstate: bool,
    pattern: Option<u8>,
    pattern_offset: Option<u64>,
    pattern_count: Option<u64>,
}

fn read_opts(argv: &[String]) -> Result<(ReadOpts, Vec<String>), i32> {
    let mut o = ReadOpts::default();
    let mut g = Getopt::new(argv, "bCl:pP:qrs:v");
    while let Some(opt) = g.next() {
        match opt {
            Ok(('b', _)) => o.vmstate = true,
            Ok(('C', _)) => o.machine = true,
            Ok(('l', Some(a))) => o.pattern_count = Some(cvtnum_or_print(&a)?),
            Ok(('p', _)) | Ok(('r', _)) => {}
            Ok(('P', Some(a))) => o.pattern = Some(parse_pattern(&a)?),
            Ok(('q', _)) => o.quiet = true,
            Ok(('s', Some(a))) => o.pattern_offset = Some(cvtnum_or_print(&a)?),
            Ok(('v', _)) => o.verbose = true,
            _ => return Err(usage(find_command("read").unwrap())),
        }
    }
    Ok((o, g.operands()))
}

/// `read [-bCpqrv] [-P pattern [-s off] [-l len]] off len`.
pub async fn read_f(io: &QemuIo, argv: &[String]) -> i32 {
    read(io, argv).await.unwrap_or_else(|e| e)
}

async fn read(io: &QemuIo, argv: &[String]) -> Result<i32, i32> {
    let ct = find_command("read").unwrap();
    let (o, operands) = read_opts(argv)?;
    if operands.len() != 2 {
        return Err(usage(ct));
    }
    let offset = cvtnum_or_print(&operands[0])?;
    let count = cvtnum_or_print(&operands[1])?;
    check_length(count, &operands[1])?;
    if o.pattern.is_none() && (o.pattern_count.is_some() || o.pattern_offset.is_some()) {
        return Err(usage(ct));
    }
    let pattern_offset = o.pattern_offset.unwrap_or(0);
    let pattern_count = o
        .pattern_count
        .map_or(count as i128 - pattern_offset as i128, i128::from);
    if pattern_count < 0 || pattern_count + pattern_offset as i128 > count as i128 {
        out!("pattern verification range exceeds end of read data\n");
        return Err(-libc::EINVAL);
    }
    if o.vmstate {
        sector_aligned(offset, "offset")?;
        sector_aligned(count, "count")?;
    }
    let buf = io_alloc(io, count as usize, READ_FILL);
    let blk = io.blk();
    let (result, t) = timed(async {
        if o.vmstate {
            block::snapshot::bdrv_load_vmstate(&blk.bs(), &buf, offset).await
        } else {
            blk.co_preadv(offset, &buf, RequestFlags::empty()).await
        }
    })
    .await;
    if let Err(e) = result {
        out!("read failed: {}\n", block::error::strerror(e.errno()));
        return Err(-e.errno());
    }
    let mut ret = 0;
    if let Some(pattern) = o.pattern {
        let (start, len) = (pattern_offset as usize, pattern_count as usize);
        if !verify_pattern(&buf, start, len, pattern, offset) {
            ret = -libc::EINVAL;
        }
    }
    if !o.quiet {
        if o.verbose {
            out!("{}", hexdump(&buf.to_vec(), offset));
        }
        print_report("read", t, offset, count, count, o.machine);
    }
    Ok(ret)
}

/// Options `readv` and `aio_read` share.
pub struct VectorReadOpts {
    /// `-C`: machine-parsable statistics.
    pub machine: bool,
    /// `-q`: no statistics.
    pub quiet: bool,
    /// `-v`: hex dump of the data.
    pub verbose: bool,
    /// `-P`: the byte every byte read must equal.
    pub pattern: Option<u8>,
}

/// Parses the options of `readv` ("CP:qrv") or `aio_read` (which adds `-i`: no request,
/// returned as None) and checks for an offset and at least one length.
pub fn vector_read_opts(
    argv: &[String],
    name: &str,
) -> Result<(Option<VectorReadOpts>, Vec<String>), i32> {
    let ct = find_command(name).unwrap();
    let aio = name == "aio_read";
    let mut o = VectorReadOpts {
        machine: false,
        quiet: false,
        verbose: false,
        pattern: None,
    };
    let mut g = Getopt::new(argv, if aio { "CiP:qrv" } else { "CP:qrv" });
    while let Some(opt) = g.next() {
        match opt {
            Ok(('C', _)) => o.machine = true,
            Ok(('P', Some(a))) => o.pattern = Some(parse_pattern(&a)?),
            Ok(('q', _)) => o.quiet = true,
            Ok(('r', _)) => {}
            Ok(('v', _)) => o.verbose = true,
            Ok(('i', _)) => {
                // Only I/O accounting sees an "invalid" request, and rqemu keeps none.
                out!("injecting invalid read request\n");
                return Ok((None, Vec::new()));
            }
            _ => return Err(usage(ct)),
        }
    }
    let operands = g.operands();
    if operands.len() < 2 {
        return Err(usage(ct));
    }
    Ok((Some(o), operands))
}

/// Verifies and reports a finished vectored read; false on a pattern mismatch.
pub fn report_vector_read(qiov: &IoVector, offset: u64, o: &VectorReadOpts, t: Duration) -> bool {
    let matched = o
        .pattern
        .is_none_or(|p| verify_pattern(qiov, 0, qiov.len(), p, offset));
    if !o.quiet {
        if o.verbose {
            out!("{}", hexdump(&qiov.to_vec(), offset));
        }
        let len = qiov.len() as u64;
        print_report("read", t, offset, len, len, o.machine);
    }
    matched
}

/// `readv [-Cqrv] [-P pattern] off len [len..]`.
pub async fn readv_f(io: &QemuIo, argv: &[String]) -> i32 {
    readv(io, argv).await.unwrap_or_else(|e| e)
}

async fn readv(io: &QemuIo, argv: &[String]) -> Result<i32, i32> {
    let (Some(o), operands) = vector_read_opts(argv, "readv")? else {
        return Ok(0);
    };
    let offset = cvtnum_or_print(&operands[0])?;
    let qiov = create_iovec(io, &operands[1..], READ_FILL).ok_or(-libc::EINVAL)?;
    let blk = io.blk();
    let (result, t) = timed(blk.co_preadv(offset, &qiov, RequestFlags::empty())).await;
    if let Err(e) = result {
        out!("readv failed: {}\n", block::error::strerror(e.errno()));
        return Err(-e.errno());
    }
    if report_vector_read(&qiov, offset, &o, t) {
        Ok(0)
    } else {
        Err(-libc::EINVAL)
    }
}

/// How `write` produces its data.
enum WriteKind {
    Buffer,
    Zeroes,
    Compressed,
    VmState,
}

/// Options of `write`.
struct WriteOpts {
    kind: WriteKind,
    /// `-b` or `-c`: offset and length must be whole sectors.
    sector_requests: bool,
    flags: RequestFlags,
    machine: bool,
    quiet: bool,
    pattern: Option<u8>,
    source: Option<String>,
}

fn write_opts(argv: &[String]) -> Result<(WriteOpts, Vec<String>), i32> {
    let ct = find_command("write").unwrap();
    let (mut b, mut c, mut z) = (false, false, false);
    let mut o = WriteOpts {
        kind: WriteKind::Buffer,
        sector_requests: false,
        flags: RequestFlags::empty(),
        machine: false,
        quiet: false,
        pattern: None,
        source: None,
    };
    let mut g = Getopt::new(argv, "bcCfnpP:qrs:uz");
    while let Some(opt) = g.next() {
        match opt {
            Ok(('b', _)) => b = true,
            Ok(('c', _)) => c = true,
            Ok(('C', _)) => o.machine = true,
            Ok(('f', _)) => o.flags |= RequestFlags::FUA,
            Ok(('n', _)) => o.flags |= RequestFlags::NO_FALLBACK,
            Ok(('p', _)) | Ok(('r', _)) => {}
            Ok(('P', Some(a))) => o.pattern = Some(parse_pattern(&a)?),
            Ok(('q', _)) => o.quiet = true,
            Ok(('s', Some(a))) => o.source = Some(a),
            Ok(('u', _)) => o.flags |= RequestFlags::MAY_UNMAP,
            Ok(('z', _)) => z = true,
            _ => return Err(usage(ct)),
        }
    }
    let operands = g.operands();
    if operands.len() != 2 {
        return Err(usage(ct));
    }
    let conflict = if b && z {
        Some("-b and -z cannot be specified at the same time")
    } else if o.flags.contains(RequestFlags::FUA) && (b || c) {
        Some("-f and -b or -c cannot be specified at the same time")
    } else if o.flags.contains(RequestFlags::NO_FALLBACK) && !z {
        Some("-n requires -z to be specified")
    } else if o.flags.contains(RequestFlags::MAY_UNMAP) && !z {
        Some("-u requires -z to be specified")
    } else if usize::from(z) + usize::from(o.pattern.is_some()) + usize::from(o.source.is_some())
        > 1
    {
        Some("Only one of -z, -P, and -s can be specified at the same time")
    } else {
        None
    };
    if let Some(msg) = conflict {
        out!("{msg}\n");
        return Err(-libc::EINVAL);
    }
    o.sector_requests = b || c;
    o.kind = match (b, z, c) {
        (true, _, _) => WriteKind::VmState,
        (_, true, _) => WriteKind::Zeroes,
        (_, _, true) => WriteKind::Compressed,
        _ => WriteKind::Buffer,
    };
    Ok((o, operands))
}

/// A write buffer repeating the contents of a pattern file (qemu_io_alloc_from_file).
/// At most `len` bytes are read: the file may be endless (`-s /dev/urandom`).
fn alloc_from_file(io: &QemuIo, len: usize, path: &str) -> Result<IoVector, i32> {
    use std::io::Read;
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(len as u64).read_to_end(&mut data))
        .map_err(|e| {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            err!("{path}: {}\n", block::error::strerror(errno));
            -errno
        })?;
    if data.is_empty() {
        err!("{path}: file is empty\n");
        return Err(-libc::EINVAL);
    }
    let buf = io_alloc(io, len, 0);
    let mut at = 0;
    while at < len {
        let n = data.len().min(len - at);
        buf.copy_from_slice(at, &data[..n]);
        at += n;
    }
    Ok(buf)
}

/// `write [-bcCfnqruz] [-P pattern | -s source_file] off len`.
pub async fn write_f(io: &QemuIo, argv: &[String]) -> i32 {
    write(io, argv).await.unwrap_or_else(|e| e)
}

async fn write(io: &QemuIo, argv: &[String]) -> Result<i32, i32> {
    let (o, operands) = write_opts(argv)?;
    let offset = cvtnum_or_print(&operands[0])?;
    let count = cvtnum_or_print(&operands[1])?;
    if count > MAX_REQUEST_BYTES && !o.flags.contains(RequestFlags::NO_FALLBACK) {
        out!(
            "length cannot exceed {MAX_REQUEST_BYTES} without -n, given {}\n",
            operands[1]
        );
        return Err(-libc::EINVAL);
    }
    if o.sector_requests {
        sector_aligned(offset, "offset")?;
        sector_aligned(count, "count")?;
    }
    let buf = match (&o.kind, &o.source) {
        (WriteKind::Zeroes, _) => None,
        (_, Some(path)) => Some(alloc_from_file(io, count as usize, path)?),
        _ => Some(io_alloc(
            io,
            count as usize,
            o.pattern.unwrap_or(WRITE_FILL),
        )),
    };
    let blk = io.blk();
    let (result, t) = timed(async {
        match (&o.kind, &buf) {
            (WriteKind::Zeroes, _) => blk.co_pwrite_zeroes(offset, count, o.flags).await,
            (WriteKind::Buffer, Some(buf)) => blk.co_pwritev(offset, buf, o.flags).await,
            (WriteKind::Compressed, Some(buf)) => {
                let flags = o.flags | RequestFlags::WRITE_COMPRESSED;
                blk.co_pwritev(offset, buf, flags).await
            }
            (WriteKind::VmState, Some(buf)) => {
                block::snapshot::bdrv_save_vmstate(&blk.bs(), buf, offset).await
            }
            (_, None) => Err(Error::from_errno(libc::EINVAL)),
        }
    })
    .await;
    if let Err(e) = result {
        out!("write failed: {}\n", block::error::strerror(e.errno()));
        return Err(-e.errno());
    }
    if !o.quiet {
        print_report("wrote", t, offset, count, count, o.machine);
    }
    Ok(0)
}

/// `writev [-Cfqr] [-P pattern] off len [len..]`.
pub async fn writev_f(io: &QemuIo, argv: &[String]) -> i32 {
    writev(io, argv).await.unwrap_or_else(|e| e)
}

async fn writev(io: &QemuIo, argv: &[String]) -> Result<i32, i32> {
    let ct = find_command("writev").unwrap();
    let (mut machine, mut quiet, mut pattern) = (false, false, WRITE_FILL);
    let mut flags = RequestFlags::empty();
    let mut g = Getopt::new(argv, "CfqrP:");
    while let Some(opt) = g.next() {
        match opt {
            Ok(('C', _)) => machine = true,
            Ok(('f', _)) => flags |= RequestFlags::FUA,
            Ok(('q', _)) => quiet = true,
            Ok(('r', _)) => {}
            Ok(('P', Some(a))) => pattern = parse_pattern(&a)?,
            _ => return Err(usage(ct)),
        }
    }
    let operands = g.operands();
    if operands.len() < 2 {
        return Err(usage(ct));
    }
    let offset = cvtnum_or_print(&operands[0])?;
    let qiov = create_iovec(io, &operands[1..], pattern).ok_or(-libc::EINVAL)?;
    let blk = io.blk();
    let (result, t) = timed(blk.co_pwritev(offset, &qiov, flags)).await;
    if let Err(e) = result {
        out!("writev failed: {}\n", block::error::strerror(e.errno()));
        return Err(-e.errno());
    }
    if !quiet {
        let len = qiov.len() as u64;
        print_report("wrote", t, offset, len, len, machine);
    }
    Ok(0)
}
