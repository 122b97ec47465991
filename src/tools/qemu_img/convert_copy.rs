//! The copy engine of `qemu-img convert` (qemu-img.c's convert_do_copy and the
//! convert_co_* coroutines).
//!
//! The sources are one concatenated disk counted in 512-byte sectors. Block status splits it
//! into runs of data, zeroes and (with a backing file on the target) ranges left to the
//! backing file. Several coroutines take the next run in turn under a lock, read it, and write
//! it; by default writes happen in disk order (`-W` lifts that). Data is scanned for zero
//! stretches of at least `min_sparse` sectors, which become holes (a new target already reads
//! as zeroes) or write-zeroes requests; `-S 0` writes every byte.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use block::coroutine::{CoMutex, CoQueue};
use block::driver::StatusFlags;
use block::{AioContext, BlockBackend, IoVector, RequestFlags};

use super::cli::{error_report, warn_report};
use super::human::Progress;

/// Bytes per sector, the unit convert counts in.
pub const SECTOR: u64 = 512;
/// Largest request the layer takes, in sectors (BDRV_REQUEST_MAX_SECTORS).
const REQUEST_MAX_SECTORS: u64 = (i32::MAX as u64) >> 9;

/// What a run of sectors holds (ImgConvertBlockStatus).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunStatus {
    Data,
    Zero,
    BackingFile,
}

/// Where the coroutines are in the disk (the part of ImgConvertState under s->lock).
struct Cursor {
    sector_num: u64,
    status: RunStatus,
    sector_next_status: u64,
}

/// The settings and shared state of one conversion (ImgConvertState).
pub struct ConvertState {
    /// Source backends, concatenated in order.
    pub src: Vec<Rc<BlockBackend>>,
    /// Their names, for messages.
    pub src_sectors: Vec<u64>,
    /// Per source, runs are aligned to this many sectors (request alignment, cluster size).
    pub src_alignment: Vec<u64>,
    /// The target.
    pub target: Rc<BlockBackend>,
    /// The target already reads as zeroes (new image, or `--target-is-zero`).
    pub has_zero_init: bool,
    /// The target has a backing file: unallocated source ranges are left alone.
    pub target_has_backing: bool,
    /// Length of the target's backing file in sectors, when known.
    pub target_backing_sectors: Option<u64>,
    /// Writes in disk order (no `-W`).
    pub wr_in_order: bool,
    /// `--salvage`: read errors become zeroes with a warning.
    pub salvage: bool,
    /// `-q`.
    pub quiet: bool,
    /// `-S` in sectors (0: no sparse detection).
    pub min_sparse: u64,
    /// Write alignment in sectors.
    pub alignment: u64,
    /// Largest data run per request, in sectors.
    pub buf_sectors: u64,
    /// `-m`.
    pub num_coroutines: usize,
    /// `-r` in bytes per second (0: unlimited).
    pub rate_limit: u64,
    /// `-c`: write whole clusters compressed.
    pub compressed: bool,
    /// The target's cluster size in sectors (for `-c`).
    pub cluster_sectors: u64,
    total_sectors: u64,
    allocated_sectors: Cell<u64>,
    allocated_done: Cell<u64>,
    cursor: CoMutex<Cursor>,
    ret: Cell<Option<i32>>,
    wr_offs: Cell<u64>,
    wr_turn: CoQueue,
    progress: RefCell<Progress>,
    written: Cell<u64>,
    started: Instant,
}

impl ConvertState {
    /// A conversion with default tuning; callers then adjust the public fields.
    pub fn new(src: Vec<Rc<BlockBackend>>, target: Rc<BlockBackend>, progress: Progress) -> Self {
        let src_sectors: Vec<u64> = src.iter().map(|b| b.getlength() / SECTOR).collect();
        let total_sectors = src_sectors.iter().sum();
        ConvertState {
            src_alignment: vec![1; src.len()],
            src,
            src_sectors,
            target,
            has_zero_init: false,
            target_has_backing: false,
            target_backing_sectors: None,
            wr_in_order: true,
            salvage: false,
            quiet: false,
            min_sparse: 8,
            alignment: 1,
            buf_sectors: 4096,
            num_coroutines: 8,
            rate_limit: 0,
            compressed: false,
            cluster_sectors: 0,
            total_sectors,
            allocated_sectors: Cell::new(0),
            allocated_done: Cell::new(0),
            cursor: CoMutex::new(Cursor {
                sector_num: 0,
                status: RunStatus::Data,
                sector_next_status: 0,
            }),
            ret: Cell::new(None),
            wr_offs: Cell::new(0),
            wr_turn: CoQueue::new(),
            progress: RefCell::new(progress),
            written: Cell::new(0),
            started: Instant::now(),
        }
    }

    /// Total sectors of all sources.
    pub fn total_sectors(&self) -> u64 {
        self.total_sectors
    }

    /// Ends the progress bar.
    pub fn progress_end(&self, success: bool) {
        let mut p = self.progress.borrow_mut();
        if success {
            p.print(100.0, 0);
        }
        p.end();
    }

    /// Which source holds `sector_num`, and where that source starts (convert_select_part).
    fn select_part(&self, sector_num: u64) -> (usize, u64) {
        let (mut cur, mut cur_offset) = (0, 0);
        while sector_num - cur_offset >= self.src_sectors[cur] {
            cur_offset += self.src_sectors[cur];
            cur += 1;
        }
        (cur, cur_offset)
    }

    /// How many sectors from `sector_num` share one status, updating the cursor's status
    /// (convert_iteration_sectors). Errors are reported; Err carries -errno.
    async fn iteration_sectors(&self, c: &mut Cursor, sector_num: u64) -> Result<u64, i32> {
        let (cur, cur_offset) = self.select_part(sector_num);
        let mut n = (self.total_sectors - sector_num).min(REQUEST_MAX_SECTORS);
        let mut post_backing_zero = false;
        if let Some(backing) = self.target_backing_sectors {
            if sector_num >= backing {
                post_backing_zero = true;
            } else if sector_num + n > backing {
                n = backing - sector_num;
            }
        }
        if c.sector_next_status <= sector_num {
            let offset = (sector_num - cur_offset) * SECTOR;
            let flags;
            (flags, n) = self.source_status(cur, offset, n).await?;
            let tail = (sector_num - cur_offset + n) % self.src_alignment[cur];
            if n > tail {
                n -= tail;
            }
            c.status = if flags.contains(StatusFlags::ZERO) {
                if post_backing_zero {
                    RunStatus::BackingFile
                } else {
                    RunStatus::Zero
                }
            } else if flags.contains(StatusFlags::DATA) || !self.target_has_backing {
                RunStatus::Data
            } else {
                RunStatus::BackingFile
            };
            c.sector_next_status = sector_num + n;
        }
        n = n.min(c.sector_next_status - sector_num);
        if c.status == RunStatus::Data {
            n = n.min(self.buf_sectors);
        }
        if self.compressed {
            // Compressed writes take whole clusters: a short run is read as a full cluster.
            if n < self.cluster_sectors {
                n = self.cluster_sectors.min(self.total_sectors - sector_num);
                c.status = RunStatus::Data;
            } else {
                n -= n % self.cluster_sectors;
            }
        }
        Ok(n)
    }

    /// Block status of `n` sectors at `offset` of source `cur` (down to the target's backing
    /// level); with `--salvage`, errors narrow the query down to one sector, which then counts
    /// as data. Returns the flags and how many sectors they hold for.
    async fn source_status(
        &self,
        cur: usize,
        offset: u64,
        mut n: u64,
    ) -> Result<(StatusFlags, u64), i32> {
        let src = self.src[cur].bs();
        let base = if self.target_has_backing {
            src.backing()
        } else {
            None
        };
        loop {
            match src
                .co_block_status_above(base.as_deref(), true, offset, n * SECTOR)
                .await
            {
                Ok((st, _)) => return Ok((st.flags, st.bytes.div_ceil(SECTOR).max(1))),
                Err(e) if self.salvage && n == 1 => {
                    if !self.quiet {
                        warn_report(&format!(
                            "error while reading block status at offset {offset}: {}",
                            block::error::strerror(e.errno())
                        ));
                    }
                    return Ok((StatusFlags::DATA, 1));
                }
                Err(_) if self.salvage => n = n.div_ceil(4),
                Err(e) => {
                    error_report(&format!(
                        "error while reading block status at offset {offset}: {}",
                        block::error::strerror(e.errno())
                    ));
                    return Err(-e.errno());
                }
            }
        }
    }

    /// Counts the sectors that will be copied, for the progress bar.
    async fn count_allocated(&self) -> Result<(), i32> {
        let mut c = self.cursor.lock().await;
        let mut sector = 0;
        while sector < self.total_sectors {
            let n = self.iteration_sectors(&mut c, sector).await?;
            if c.status == RunStatus::Data || (self.min_sparse == 0 && c.status == RunStatus::Zero)
            {
                self.allocated_sectors.set(self.allocated_sectors.get() + n);
            }
            sector += n;
        }
        c.sector_next_status = 0;
        Ok(())
    }

    /// Runs the copy (convert_do_copy); returns 0 or -errno.
    pub async fn do_copy(self: &Rc<Self>) -> i32 {
        if let Err(e) = self.count_allocated().await {
            return e;
        }
        let ctx = AioContext::current();
        let tasks: Vec<_> = (0..self.num_coroutines)
            .map(|_| {
                let me = self.clone();
                ctx.spawn(async move { me.co_do_copy().await })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        self.ret.get().unwrap_or(0)
    }

    fn failed(&self) -> bool {
        self.ret.get().is_some()
    }

    /// Takes the next run to copy under the cursor lock: (first sector, sectors, status), or
    /// None when done or failed.
    async fn next_run(&self) -> Option<(u64, u64, RunStatus)> {
        let mut c = self.cursor.lock().await;
        if self.failed() || c.sector_num >= self.total_sectors {
            return None;
        }
        let sector = c.sector_num;
        let mut n = match self.iteration_sectors(&mut c, sector).await {
            Ok(n) => n,
            Err(e) => {
                self.ret.set(Some(e));
                return None;
            }
        };
        if self.min_sparse == 0 && c.status == RunStatus::Zero {
            n = n.min(self.buf_sectors);
        }
        c.sector_num += n;
        Some((sector, n, c.status))
    }

    /// One copying coroutine (convert_co_do_copy).
    async fn co_do_copy(&self) {
        let buf = IoVector::alloc((self.buf_sectors * SECTOR) as usize);
        loop {
            let Some((sector_num, n, mut status)) = self.next_run().await else {
                return;
            };
            if status == RunStatus::Data || (self.min_sparse == 0 && status == RunStatus::Zero) {
                self.allocated_done.set(self.allocated_done.get() + n);
                let pct = 100.0 * self.allocated_done.get() as f32
                    / self.allocated_sectors.get().max(1) as f32;
                self.progress.borrow_mut().print(pct, 0);
            }
            let data = match status {
                RunStatus::Data => buf.slice(0, (n * SECTOR) as usize),
                _ if self.min_sparse == 0 => buf.slice(0, (n * SECTOR) as usize),
                _ => IoVector::new(),
            };
            if status == RunStatus::Data {
                if let Err(e) = self.co_read(sector_num, &data).await {
                    error_report(&format!(
                        "error while reading at byte {}: {}",
                        sector_num * SECTOR,
                        block::error::strerror(e.errno())
                    ));
                    self.ret.set(Some(-e.errno()));
                }
            } else if self.min_sparse == 0 && status == RunStatus::Zero {
                status = RunStatus::Data;
                data.fill(0, data.len(), 0);
            }
            if self.wr_in_order {
                self.wr_turn
                    .wait_while(|| self.wr_offs.get() != sector_num && !self.failed())
                    .await;
            }
            if !self.failed() {
                if let Err(e) = self.co_write(sector_num, n, &data, status).await {
                    error_report(&format!(
                        "error while writing at byte {}: {}",
                        sector_num * SECTOR,
                        block::error::strerror(e.errno())
                    ));
                    self.ret.set(Some(-e.errno()));
                }
            }
            if self.wr_in_order {
                self.wr_offs.set(sector_num + n);
                self.wr_turn.restart_all();
                // Let the next writer issue its write before this coroutine maps and reads
                // its next run: QEMU enters that coroutine directly here, and with a target
                // as slow per request as rbd the writes are what the copy waits on.
                futures_lite::future::yield_now().await;
            }
        }
    }

    /// Reads sectors from the concatenated sources (convert_co_read).
    async fn co_read(&self, mut sector_num: u64, buf: &IoVector) -> block::Result<()> {
        let mut nb = buf.len() as u64 / SECTOR;
        let mut pos = 0u64;
        let mut single_read_until = 0;
        while nb > 0 {
            let (cur, cur_offset) = self.select_part(sector_num);
            let offset = (sector_num - cur_offset) * SECTOR;
            let mut n = nb.min(self.src_sectors[cur] - (sector_num - cur_offset));
            if single_read_until > offset {
                n = 1;
            }
            let part = buf.slice((pos * SECTOR) as usize, (n * SECTOR) as usize);
            if let Err(e) = self.src[cur]
                .co_preadv(offset, &part, RequestFlags::empty())
                .await
            {
                if !self.salvage {
                    return Err(e);
                }
                if n > 1 {
                    single_read_until = offset + n * SECTOR;
                    continue;
                }
                if !self.quiet {
                    warn_report(&format!(
                        "error while reading offset {offset}: {}",
                        block::error::strerror(e.errno())
                    ));
                }
                part.fill(0, part.len(), 0);
            }
            sector_num += n;
            nb -= n;
            pos += n;
        }
        Ok(())
    }

    /// Writes a run to the target, turning zero stretches into holes (convert_co_write).
    /// `buf` holds the run's data for a Data run and is empty otherwise.
    async fn co_write(
        &self,
        sector_num: u64,
        total: u64,
        buf: &IoVector,
        status: RunStatus,
    ) -> block::Result<()> {
        let mut done = 0;
        while done < total {
            let mut n = total - done;
            let at = (sector_num + done) * SECTOR;
            let part = match status {
                RunStatus::Data => buf.slice((done * SECTOR) as usize, (n * SECTOR) as usize),
                _ => IoVector::new(),
            };
            let write_data = match status {
                RunStatus::BackingFile | RunStatus::Zero => false,
                RunStatus::Data if self.min_sparse == 0 => true,
                RunStatus::Data if self.compressed => !part.is_zero(),
                RunStatus::Data => {
                    let (allocated, pnum) = is_allocated_sectors_min(
                        &part,
                        self.min_sparse,
                        sector_num + done,
                        self.alignment,
                    );
                    n = pnum;
                    allocated
                }
            };
            if status != RunStatus::BackingFile {
                if write_data {
                    self.throttle(n * SECTOR).await;
                    let data = part.slice(0, (n * SECTOR) as usize);
                    let flags = if self.compressed {
                        RequestFlags::WRITE_COMPRESSED
                    } else {
                        RequestFlags::empty()
                    };
                    self.target.co_pwritev(at, &data, flags).await?;
                } else if !self.has_zero_init {
                    self.target
                        .co_pwrite_zeroes(at, n * SECTOR, RequestFlags::MAY_UNMAP)
                        .await?;
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Waits so that data written stays within `-r` bytes per second.
    async fn throttle(&self, bytes: u64) {
        if self.rate_limit == 0 {
            return;
        }
        let written = self.written.get() + bytes;
        self.written.set(written);
        let due = Duration::from_secs_f64(written as f64 / self.rate_limit as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            block::aio::co_sleep(due - elapsed).await;
        }
    }
}

/// Whether the first sector holds data, and for how many sectors that holds, ending on the
/// write alignment where possible (is_allocated_sectors).
fn is_allocated_sectors(
    buf: &IoVector,
    first: u64,
    n: u64,
    sector_num: u64,
    alignment: u64,
) -> (bool, u64) {
    if n == 0 {
        return (false, 0);
    }
    let zero_at = |i: u64| buf.is_zero_range(((first + i) * SECTOR) as usize, SECTOR as usize);
    let is_zero = zero_at(0);
    let mut i = 1;
    while i < n && zero_at(i) == is_zero {
        i += 1;
    }
    if i == n {
        return (!is_zero, i);
    }
    let tail = (sector_num + i) & (alignment - 1);
    let mut is_zero = is_zero;
    if tail != 0 {
        if is_zero && i <= tail {
            // The next sector is data and its read-modify-write covers this tail anyway.
            is_zero = false;
        }
        if !is_zero {
            i = (i + alignment - tail).min(n);
        } else {
            i -= tail;
        }
    }
    (!is_zero, i)
}

/// Like [`is_allocated_sectors`], but a data run absorbs zero stretches shorter than `min`
/// sectors, so small holes do not split writes (is_allocated_sectors_min).
fn is_allocated_sectors_min(
    buf: &IoVector,
    min: u64,
    sector_num: u64,
    alignment: u64,
) -> (bool, u64) {
    let mut n = buf.len() as u64 / SECTOR;
    let min = min.min(n);
    let (allocated, pnum) = is_allocated_sectors(buf, 0, n, sector_num, alignment);
    if !allocated {
        return (false, pnum);
    }
    let mut num_used = pnum;
    let mut pos = pnum;
    n -= pnum;
    let mut num_checked = num_used;
    while n > 0 {
        let (alloc, p) = is_allocated_sectors(buf, pos, n, sector_num + pos, alignment);
        pos += p;
        n -= p;
        num_checked += p;
        if alloc {
            num_used = num_checked;
        } else if p >= min {
            break;
        }
    }
    (true, num_used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_detection_absorbs_short_holes() {
        let buf = IoVector::alloc(32 * 512);
        buf.fill(0, 512, 1);
        buf.fill(4 * 512, 512, 1);
        // Data, 3 zero sectors (< min 8), data, then 27 zero sectors: one write of 5 sectors.
        assert_eq!(is_allocated_sectors_min(&buf, 8, 0, 1), (true, 5));
        // A leading hole is reported as such.
        let holes = IoVector::alloc(16 * 512);
        holes.fill(12 * 512, 512, 7);
        assert_eq!(is_allocated_sectors_min(&holes, 8, 0, 1), (false, 12));
        // Alignment rounds the data run up to the boundary.
        assert_eq!(is_allocated_sectors(&holes, 12, 4, 12, 8), (true, 4));
    }
}
