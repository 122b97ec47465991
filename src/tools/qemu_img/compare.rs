//! `qemu-img compare`: do two images show the guest the same content? (qemu-img.c's
//! img_compare).
//!
//! Walks both images by block status: ranges zero in both are equal without reading, ranges
//! allocated in both are read and compared, a range allocated in only one must read as zeroes
//! there. The longer image's tail must read as zeroes. Exit status: 0 identical, 1 different,
//! 2 open error, 3 block-status error, 4 read error.

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

use block::driver::StatusFlags;
use block::{BlockBackend, IoVector, OpenFlags, RequestFlags};

use super::cli::{self, error_exit, error_report, long, OpenSpec};
use super::cli::{OPT_IMAGE_OPTS, OPT_OBJECT};
use super::human::Progress;

const LONG: &[crate::tools::getopt::LongOpt] = &[
    long("help", false, 'h'),
    long("object", true, OPT_OBJECT),
    long("image-opts", false, OPT_IMAGE_OPTS),
    long("force-share", false, 'U'),
];

/// Bytes compared per read (IO_BUF_SIZE).
const IO_BUF_SIZE: u64 = 2 << 20;

struct Side {
    blk: Rc<BlockBackend>,
    name: String,
}

struct Compare {
    a: Side,
    b: Side,
    quiet: bool,
    strict: bool,
    progress: Progress,
    /// What goes to stdout. QEMU's messages there sit in stdio's buffer (a pipe is fully
    /// buffered) until the progress bar flushes it or the program exits, so a read error on
    /// stderr shows before a size warning printed earlier; the suite's output records that.
    out: RefCell<String>,
}

/// Runs `qemu-img compare`.
pub fn run(args: &[String]) -> i32 {
    let parsed = match cli::getopt(args, ":hf:F:T:pqsU", LONG) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let (mut fmt1, mut fmt2, mut cache) = (None, None, "writeback".to_string());
    let (mut progress, mut quiet, mut strict) = (false, false, false);
    let (mut force_share, mut image_opts) = (false, false);
    for opt in parsed.opts {
        match opt.key {
            'h' => return super::help::print_help(),
            'f' => fmt1 = opt.arg,
            'F' => fmt2 = opt.arg,
            'T' => cache = opt.arg.unwrap_or_default(),
            'p' => progress = true,
            'q' => quiet = true,
            's' => strict = true,
            'U' => force_share = true,
            OPT_OBJECT => {
                if let Err(rc) = cli::object_add(opt.arg.as_deref().unwrap_or_default()) {
                    return rc;
                }
            }
            OPT_IMAGE_OPTS => image_opts = true,
            _ => {}
        }
    }
    if parsed.operands.len() != 2 {
        return error_exit("Expecting two image file names");
    }
    let mut progress = Progress::new(progress && !quiet, 2.0);
    let Some(cache_mode) = cli::parse_cache(&cache) else {
        error_report(&format!("Invalid source cache option: {cache}"));
        progress.end();
        return 2;
    };
    let spec = |filename: &str, fmt: Option<String>| OpenSpec {
        filename: filename.to_string(),
        fmt,
        image_opts,
        flags: OpenFlags {
            read_only: true,
            cache: cache_mode,
            force_share,
            ..OpenFlags::default()
        },
        writethrough: !cache_mode.writeback,
    };
    let (s1, s2) = (
        spec(&parsed.operands[0], fmt1),
        spec(&parsed.operands[1], fmt2),
    );
    cli::run_co(open_and_compare(&s1, &s2, quiet, strict, progress))
}

/// Opens both images and compares them; the progress bar ends however it goes.
async fn open_and_compare(
    s1: &OpenSpec,
    s2: &OpenSpec,
    quiet: bool,
    strict: bool,
    mut progress: Progress,
) -> i32 {
    let Some(a) = cli::img_open(s1).await else {
        progress.end();
        return 2;
    };
    let Some(b) = cli::img_open(s2).await else {
        progress.end();
        return 2;
    };
    let mut cmp = Compare {
        a: Side {
            blk: a,
            name: s1.filename.clone(),
        },
        b: Side {
            blk: b,
            name: s2.filename.clone(),
        },
        quiet,
        strict,
        progress,
        out: RefCell::new(String::new()),
    };
    let ret = cmp.compare().await;
    cmp.flush_out();
    cmp.progress.end();
    let _ = cmp.a.blk.close().await;
    let _ = cmp.b.blk.close().await;
    ret
}

impl Compare {
    fn say(&self, msg: &str) {
        if !self.quiet {
            let mut out = self.out.borrow_mut();
            out.push_str(msg);
            out.push('\n');
        }
    }

    /// Writes out what `say` kept back.
    fn flush_out(&self) {
        let text = std::mem::take(&mut *self.out.borrow_mut());
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    }

    /// Advances the progress bar, which flushes stdout as QEMU's does.
    fn advance(&mut self, done: u64, total: u64) {
        if self.progress.enabled() {
            self.flush_out();
        }
        self.progress.print(done as f32 / total as f32 * 100.0, 100);
    }

    async fn compare(&mut self) -> i32 {
        let (len1, len2) = (self.a.blk.getlength(), self.b.blk.getlength());
        let total = len1.min(len2);
        let progress_base = len1.max(len2).max(1);
        self.progress.print(0.0, 100);
        if self.strict && len1 != len2 {
            self.say("Strict mode: Image size mismatch!");
            return 1;
        }
        let mut offset = 0;
        while offset < total {
            let chunk = match self.compare_chunk(offset, len1, len2).await {
                Ok(n) => n,
                Err(code) => return code,
            };
            offset += chunk;
            self.advance(chunk, progress_base);
        }
        if len1 != len2 {
            self.say("Warning: Image size mismatch!");
            while offset < progress_base {
                let over = if len1 > len2 { &self.a } else { &self.b };
                let status = match status_of(over, offset, progress_base - offset).await {
                    Ok(s) => s,
                    Err(code) => return code,
                };
                let mut chunk = status.1;
                if status.0.contains(StatusFlags::ALLOCATED)
                    && !status.0.contains(StatusFlags::ZERO)
                {
                    chunk = chunk.min(IO_BUF_SIZE);
                    let over = if len1 > len2 { &self.a } else { &self.b };
                    if let Err(r) = self.check_empty(over, offset, chunk).await {
                        return r;
                    }
                }
                offset += chunk;
                self.advance(chunk, progress_base);
            }
        }
        self.say("Images are identical.");
        0
    }

    /// Compares the range at `offset`; Ok(bytes handled) or Err(exit status).
    async fn compare_chunk(&self, offset: u64, len1: u64, len2: u64) -> Result<u64, i32> {
        let (f1, n1) = status_of(&self.a, offset, len1 - offset).await?;
        let (f2, n2) = status_of(&self.b, offset, len2 - offset).await?;
        let alloc1 = f1.contains(StatusFlags::ALLOCATED);
        let alloc2 = f2.contains(StatusFlags::ALLOCATED);
        let mut chunk = n1.min(n2);
        if self.strict && f1 != f2 {
            self.say(&format!(
                "Strict mode: Offset {offset} block status mismatch!"
            ));
            return Err(1);
        }
        if f1.contains(StatusFlags::ZERO) && f2.contains(StatusFlags::ZERO) {
            return Ok(chunk);
        }
        chunk = chunk.min(IO_BUF_SIZE);
        if alloc1 == alloc2 {
            if alloc1 {
                let b1 = read(&self.a, offset, chunk).await?;
                let b2 = read(&self.b, offset, chunk).await?;
                if let Some(pos) = first_mismatch_sector(&b1, &b2) {
                    self.say(&format!("Content mismatch at offset {}!", offset + pos));
                    return Err(1);
                }
            }
        } else {
            let side = if alloc1 { &self.a } else { &self.b };
            self.check_empty(side, offset, chunk).await?;
        }
        Ok(chunk)
    }

    /// Checks that a range reads as zeroes (check_empty_sectors): Err(1) if not, Err(4) on a
    /// read error.
    async fn check_empty(&self, side: &Side, offset: u64, bytes: u64) -> Result<(), i32> {
        let data = read(side, offset, bytes).await?;
        match data.iter().position(|&b| b != 0) {
            Some(idx) => {
                self.say(&format!(
                    "Content mismatch at offset {}!",
                    offset + idx as u64
                ));
                Err(1)
            }
            None => Ok(()),
        }
    }
}

/// Block status through the backing chain: (flags, bytes), or exit status 3 after reporting.
async fn status_of(side: &Side, offset: u64, bytes: u64) -> Result<(StatusFlags, u64), i32> {
    match side
        .blk
        .bs()
        .co_block_status_above(None, true, offset, bytes)
        .await
    {
        Ok((status, _)) if status.bytes > 0 => Ok((status.flags, status.bytes)),
        _ => {
            error_report(&format!("Sector allocation test failed for {}", side.name));
            Err(3)
        }
    }
}

async fn read(side: &Side, offset: u64, bytes: u64) -> Result<Vec<u8>, i32> {
    let buf = IoVector::alloc(bytes as usize);
    match side
        .blk
        .co_preadv(offset, &buf, RequestFlags::empty())
        .await
    {
        Ok(()) => Ok(buf.to_vec()),
        Err(e) => {
            error_report(&format!(
                "Error while reading offset {offset} of {}: {}",
                side.name,
                block::error::strerror(e.errno())
            ));
            Err(4)
        }
    }
}

/// Where two buffers first differ, reported at sector granularity as QEMU's compare_buffers:
/// the start of the first differing 512-byte sector.
fn first_mismatch_sector(a: &[u8], b: &[u8]) -> Option<u64> {
    a.chunks(512)
        .zip(b.chunks(512))
        .position(|(x, y)| x != y)
        .map(|i| i as u64 * 512)
}
