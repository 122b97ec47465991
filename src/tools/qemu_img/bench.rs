//! `qemu-img bench`: a simple I/O benchmark through the BlockBackend's asynchronous
//! interface (qemu-img.c's img_bench).
//!
//! It keeps `depth` requests of `buffer_size` bytes in flight until `count` have completed,
//! advancing by `step` bytes and wrapping at the end of the image. Each completion callback
//! (run from a bottom half, like a device's) submits the next request, optionally flushing
//! every `flush_interval` requests with or without draining the queue first.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use block::coroutine::CoQueue;
use block::node::AioMode;
use block::{BlockBackend, IoVector, RequestFlags};

use super::cli::{self, error_exit, error_report, long, OpenSpec};
use super::cli::{OPT_FLUSH_INTERVAL, OPT_IMAGE_OPTS, OPT_NO_DRAIN, OPT_PATTERN};

const LONG: &[crate::tools::getopt::LongOpt] = &[
    long("help", false, 'h'),
    long("flush-interval", true, OPT_FLUSH_INTERVAL),
    long("image-opts", false, OPT_IMAGE_OPTS),
    long("pattern", true, OPT_PATTERN),
    long("no-drain", false, OPT_NO_DRAIN),
    long("force-share", false, 'U'),
];

/// The benchmark's parameters.
#[derive(Clone, Debug)]
pub struct BenchParams {
    /// Requests to complete (`-c`).
    pub count: u64,
    /// Requests in flight (`-d`).
    pub depth: u64,
    /// First offset (`-o`).
    pub offset: u64,
    /// Bytes per request (`-s`).
    pub bufsize: u64,
    /// Offset advance per request (`-S`; 0 means bufsize).
    pub step: u64,
    /// Write instead of read (`-w`).
    pub write: bool,
    /// Byte the buffer is filled with (`--pattern`).
    pub pattern: u8,
    /// Flush every N requests (`--flush-interval`, 0: never).
    pub flush_interval: u64,
    /// Drain the queue before each flush (default; `--no-drain` turns it off).
    pub drain_on_flush: bool,
}

/// The state shared by the completion callbacks (BenchData).
struct BenchData {
    blk: Rc<BlockBackend>,
    image_size: u64,
    p: BenchParams,
    step: u64,
    n: u64,
    in_flight: u64,
    in_flush: bool,
    offset: u64,
    qiov: IoVector,
    done: Rc<CoQueue>,
}

fn parse_uint(arg: &str, max: u64, what: &str) -> Option<u64> {
    match cli::strtoul(arg).filter(|&v| v <= max) {
        Some(v) => Some(v),
        None => {
            error_report(&format!("Invalid {what} specified"));
            None
        }
    }
}

/// Applies one option; false after reporting a bad value.
fn apply(p: &mut BenchParams, spec: &mut OpenSpec, key: char, arg: String) -> bool {
    let int_max = i32::MAX as u64;
    let set = |slot: &mut u64, v: Option<u64>| v.map(|v| *slot = v).is_some();
    match key {
        'c' => return set(&mut p.count, parse_uint(&arg, int_max, "request count")),
        'd' => return set(&mut p.depth, parse_uint(&arg, int_max, "queue depth")),
        'o' => return set(&mut p.offset, cli::cvtnum("offset", &arg).map(|v| v as u64)),
        's' => {
            let v = cli::cvtnum_full("buffer size", &arg, 0, i32::MAX as i64);
            return set(&mut p.bufsize, v.map(|v| v as u64));
        }
        'S' => {
            let v = cli::cvtnum_full("step_size", &arg, 0, i32::MAX as i64);
            return set(&mut p.step, v.map(|v| v as u64));
        }
        OPT_FLUSH_INTERVAL => {
            let v = parse_uint(&arg, int_max, "flush interval");
            return set(&mut p.flush_interval, v);
        }
        OPT_PATTERN => match parse_uint(&arg, 0xff, "pattern byte") {
            Some(v) => p.pattern = v as u8,
            None => return false,
        },
        'f' => spec.fmt = Some(arg),
        'n' => {
            error_report(
                "aio=native (linux-aio) is not supported by rqemu; use -i threads or -i io_uring",
            );
            return false;
        }
        'i' => match AioMode::parse(&arg) {
            Ok(mode) => spec.flags.aio = mode,
            Err(e) => {
                match arg.as_str() {
                    "native" => error_report(&e.to_string()),
                    _ => error_report(&format!("Invalid aio option: {arg}")),
                }
                return false;
            }
        },
        't' => match cli::parse_cache(&arg) {
            Some(c) => {
                spec.flags.cache = c;
                spec.writethrough = !c.writeback;
            }
            None => {
                error_report("Invalid cache mode");
                return false;
            }
        },
        'w' => p.write = true,
        'U' => spec.flags.force_share = true,
        OPT_NO_DRAIN => p.drain_on_flush = false,
        OPT_IMAGE_OPTS => spec.image_opts = true,
        _ => {}
    }
    true
}

/// Runs `qemu-img bench`.
pub fn run(args: &[String]) -> i32 {
    let parsed = match cli::getopt(args, ":hc:d:f:ni:o:qs:S:t:wU", LONG) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut p = BenchParams {
        count: 75000,
        depth: 64,
        offset: 0,
        bufsize: 4096,
        step: 0,
        write: false,
        pattern: 0,
        flush_interval: 0,
        drain_on_flush: true,
    };
    let mut spec = OpenSpec::default();
    for opt in parsed.opts {
        if opt.key == 'h' {
            return super::help::print_help();
        }
        if !apply(&mut p, &mut spec, opt.key, opt.arg.unwrap_or_default()) {
            return 1;
        }
    }
    if parsed.operands.len() != 1 {
        return error_exit("Expecting one image file name");
    }
    spec.filename = parsed.operands[0].clone();
    if !p.write && p.flush_interval != 0 {
        error_report("--flush-interval is only available in write tests");
        return 1;
    }
    if p.flush_interval != 0 && p.flush_interval < p.depth {
        error_report("Flush interval can't be smaller than depth");
        return 1;
    }
    spec.flags.read_only = !p.write;
    cli::run_co(async {
        let Some(blk) = cli::img_open(&spec).await else {
            return 1;
        };
        bench(blk.clone(), p).await;
        i32::from(!cli::close(&blk).await)
    })
}

/// Runs the benchmark on an open backend and prints its report.
pub async fn bench(blk: Rc<BlockBackend>, p: BenchParams) {
    let step = if p.step == 0 { p.bufsize } else { p.step };
    println!(
        "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
        p.count,
        if p.write { "write" } else { "read" },
        p.bufsize,
        p.depth,
        p.offset,
        step
    );
    if p.flush_interval != 0 {
        println!("Sending flush every {} requests", p.flush_interval);
    }
    let qiov = IoVector::alloc(p.bufsize as usize);
    qiov.fill(0, p.bufsize as usize, p.pattern);
    let done = Rc::new(CoQueue::new());
    let data = Rc::new(RefCell::new(BenchData {
        image_size: blk.getlength(),
        blk,
        step,
        n: p.count,
        offset: p.offset,
        p,
        in_flight: 0,
        in_flush: false,
        qiov,
        done: done.clone(),
    }));
    let start = Instant::now();
    bench_cb(&data, Ok(()));
    done.wait_while(|| data.borrow().n > 0).await;
    println!(
        "Run completed in {:3.3} seconds.",
        start.elapsed().as_secs_f64()
    );
}

fn fail(what: &str, e: &block::Error) -> ! {
    error_report(&format!("{what}: {}", block::error::strerror(e.errno())));
    std::process::exit(1);
}

/// One completion: account for it, flush when due, and keep the queue full (bench_cb).
fn bench_cb(data: &Rc<RefCell<BenchData>>, ret: block::Result<()>) {
    if let Err(e) = ret {
        fail("Failed request", &e);
    }
    let mut b = data.borrow_mut();
    if b.in_flush {
        b.in_flush = false;
    } else if b.in_flight > 0 {
        let remaining = b.n - b.in_flight;
        b.n -= 1;
        b.in_flight -= 1;
        if b.n == 0 {
            b.done.restart_all();
        }
        if b.p.flush_interval != 0 && remaining.is_multiple_of(b.p.flush_interval) {
            if b.in_flight == 0 || !b.p.drain_on_flush {
                let d = data.clone();
                let cb: block::backend::CompletionFn = if b.p.drain_on_flush {
                    b.in_flush = true;
                    Box::new(move |r| bench_cb(&d, r))
                } else {
                    Box::new(|r| {
                        if let Err(e) = r {
                            fail("Failed flush request", &e);
                        }
                    })
                };
                b.blk.aio_flush(cb);
            }
            if b.p.drain_on_flush {
                return;
            }
        }
    }
    while b.n > b.in_flight && b.in_flight < b.p.depth {
        let offset = b.offset;
        b.in_flight += 1;
        b.offset += b.step;
        b.offset = if b.image_size == 0 {
            0
        } else {
            b.offset % b.image_size
        };
        let d = data.clone();
        let cb: block::backend::CompletionFn = Box::new(move |r| bench_cb(&d, r));
        if b.p.write {
            b.blk
                .aio_pwritev(offset, b.qiov.clone(), RequestFlags::empty(), cb);
        } else {
            b.blk
                .aio_preadv(offset, b.qiov.clone(), RequestFlags::empty(), cb);
        }
    }
}
