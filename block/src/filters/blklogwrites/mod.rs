//! blklogwrites: a filter that passes requests through to its `file` child and records every
//! write, write-zeroes, discard and flush in a `log` child (QEMU's block/blklogwrites.c).
//!
//! The log is in dm-log-writes' format ([`log_format`]), so a log written here, by QEMU or by
//! the Linux target can be replayed by the same tools. Each request is done on the file first,
//! then logged; a flush entry (and every `log-super-update-interval` entries) rewrites the
//! super block and flushes the log, so that the super block never counts entries the log
//! might not hold after a crash. `log-append` continues an existing log.

pub mod log_format;

use std::cell::Cell;
use std::rc::Rc;

use async_trait::async_trait;

use crate::driver::{BlockDriver, BlockLimits, DriverClass, RequestFlags};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::BlockDriverState;
use crate::open::open_protocol_child;
use crate::options::Options;
use log_format::{LogEntry, LogSuper, LOG_DISCARD_FLAG, LOG_FLUSH_FLAG};

/// The blklogwrites driver class (`driver=blklogwrites,file=...,log=...`).
pub static BLKLOGWRITES: DriverClass = DriverClass {
    format_name: "blklogwrites",
    protocol_name: None,
    is_format: false,
    probe: None,
    open: |bs, options| Box::pin(open(bs, options)),
    create: None,
    create_options: &[],
};

/// An open blklogwrites node (BDRVBlkLogWritesState).
pub struct BlkLogWrites {
    sectorsize: u32,
    sectorbits: u32,
    /// The log sector the next entry goes to.
    cur_log_sector: Cell<u64>,
    nr_entries: Cell<u64>,
    update_interval: u64,
}

async fn open(bs: &BlockDriverState, options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let file_name = options.take("filename");
    let file = open_protocol_child("file", file_name, options, bs.open_flags()).await?;
    let log = open_protocol_child("log", None, options, bs.open_flags()).await?;
    let log_append = options.take_bool("log-append")?.unwrap_or(false);
    let sector_size_opt = options.take_size("log-sector-size")?;
    let update_interval = options
        .take_u64("log-super-update-interval")?
        .unwrap_or(4096);
    let (sectorsize, cur_log_sector, nr_entries) = if log_append {
        if sector_size_opt.is_some() {
            return Err(Error::invalid(
                "log-append and log-sector-size are mutually exclusive",
            ));
        }
        read_existing_log(&log).await?
    } else {
        (sector_size_opt.unwrap_or(512), 1, 0)
    };
    if !log_format::sector_size_valid(sectorsize) {
        return Err(Error::invalid(format!(
            "Invalid log sector size {sectorsize}"
        )));
    }
    if update_interval == 0 {
        return Err(Error::invalid("Invalid log superblock update interval 0"));
    }
    bs.set_filename(file.filename());
    bs.attach_child("file", file);
    bs.attach_child("log", log);
    Ok(Box::new(BlkLogWrites {
        sectorsize: sectorsize as u32,
        sectorbits: sectorsize.trailing_zeros(),
        cur_log_sector: Cell::new(cur_log_sector),
        nr_entries: Cell::new(nr_entries),
        update_interval,
    }))
}

/// Reads the super block of a log to append to and walks its entries to find the end
/// (blk_log_writes_find_cur_log_sector); an empty log counts as one with no entries.
/// Returns the sector size, the next entry's log sector and the entry count.
async fn read_existing_log(log: &BlockDriverState) -> Result<(u64, u64, u64)> {
    if log.getlength() == 0 {
        return Ok((512, 1, 0));
    }
    let mut buf = [0u8; log_format::SUPER_SIZE];
    read_bytes(log, 0, &mut buf)
        .await
        .map_err(|e| e.context("Could not read log superblock: "))?;
    let sb = LogSuper::decode(&buf)?;
    let sectorsize = u64::from(sb.sectorsize);
    // As QEMU, a bad sector size in the super block is reported by the caller's check,
    // before any entry is read with it.
    if !log_format::sector_size_valid(sectorsize) {
        return Ok((sectorsize, 1, 0));
    }
    let log_len = log.getlength();
    let mut cur_sector = 1u64;
    for index in 0..sb.nr_entries {
        // An entry count larger than the log is hostile input: stop at the end of the file
        // rather than reading past it nr_entries times.
        let offset = cur_sector
            .checked_mul(sectorsize)
            .filter(|o| o.saturating_add(sectorsize) <= log_len)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "Failed to read log entry {index}: beyond the end of the log"
                ))
            })?;
        let mut entry = [0u8; log_format::ENTRY_SIZE];
        read_bytes(log, offset, &mut entry)
            .await
            .map_err(|e| e.context(format!("Failed to read log entry {index}: ")))?;
        cur_sector = cur_sector.saturating_add(LogEntry::decode(&entry, index)?.log_sectors());
    }
    Ok((sectorsize, cur_sector, sb.nr_entries))
}

/// Reads `out.len()` bytes at `offset` of a node whose alignment may be larger.
async fn read_bytes(node: &BlockDriverState, offset: u64, out: &mut [u8]) -> Result<()> {
    let qiov = IoVector::alloc(out.len());
    node.co_preadv(offset, &qiov, RequestFlags::empty()).await?;
    qiov.copy_to_slice(0, out);
    Ok(())
}

impl BlkLogWrites {
    fn log(bs: &BlockDriverState) -> Rc<BlockDriverState> {
        bs.child("log")
            .expect("blklogwrites nodes have a log child")
    }

    /// Appends one entry for a request at `offset` of `bytes` (blk_log_writes_co_do_log):
    /// its data when `data` is given, zeroes written to the log for a write-zeroes, and the
    /// super block, flushed, on a flush or every update interval.
    async fn co_log(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        data: Option<&IoVector>,
        entry_flags: u64,
        zero_write: bool,
    ) -> Result<()> {
        let log = Self::log(bs);
        let entry = LogEntry {
            sector: offset >> self.sectorbits,
            nr_sectors: bytes >> self.sectorbits,
            flags: entry_flags,
            data_len: 0,
        };
        let mut qiov = IoVector::from_slice(&entry.encode(self.sectorsize));
        if let Some(data) = data {
            qiov.push_vector(data);
        }
        let entry_offset = self.cur_log_sector.get() << self.sectorbits;
        self.nr_entries.set(self.nr_entries.get() + 1);
        self.advance(qiov.len() as u64);
        log.co_pwritev(entry_offset, &qiov, RequestFlags::empty())
            .await?;
        if zero_write && bytes != 0 {
            let zero_offset = self.cur_log_sector.get() << self.sectorbits;
            self.advance(bytes);
            log.co_pwrite_zeroes(zero_offset, bytes, RequestFlags::empty())
                .await?;
        }
        if entry_flags & LOG_FLUSH_FLAG != 0
            || self.nr_entries.get().is_multiple_of(self.update_interval)
        {
            let sb = LogSuper {
                nr_entries: self.nr_entries.get(),
                sectorsize: self.sectorsize,
            };
            log.co_pwritev(
                0,
                &IoVector::from_slice(&sb.encode()),
                RequestFlags::empty(),
            )
            .await?;
            log.co_flush().await?;
        }
        Ok(())
    }

    /// Moves the log's end past `bytes`, rounded up to whole log sectors.
    fn advance(&self, bytes: u64) {
        let sectors = bytes.div_ceil(u64::from(self.sectorsize));
        self.cur_log_sector.set(self.cur_log_sector.get() + sectors);
    }

    /// The file's result first, as QEMU: a request is logged even when the file failed it,
    /// and a log failure wins over the file's.
    fn both(file: Result<()>, log: Result<()>) -> Result<()> {
        log.and(file)
    }
}

#[async_trait(?Send)]
impl BlockDriver for BlkLogWrites {
    async fn co_pwritev(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        let bytes = qiov.len() as u64;
        let file = super::filtered(bs).co_pwritev(offset, qiov, flags).await;
        let log = self.co_log(bs, offset, bytes, Some(qiov), 0, false).await;
        Self::both(file, log)
    }

    async fn co_pwrite_zeroes(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        let file = super::filtered(bs)
            .co_pwrite_zeroes(offset, bytes, flags)
            .await;
        let log = self.co_log(bs, offset, bytes, None, 0, true).await;
        Self::both(file, log)
    }

    async fn co_pdiscard(&self, bs: &BlockDriverState, offset: u64, bytes: u64) -> Result<()> {
        let file = super::filtered(bs).co_pdiscard(offset, bytes).await;
        let log = self
            .co_log(bs, offset, bytes, None, LOG_DISCARD_FLAG, false)
            .await;
        Self::both(file, log)
    }

    async fn co_flush_to_disk(&self, bs: &BlockDriverState) -> Result<()> {
        // The file is flushed before the flush entry is logged, so that the entry never
        // claims a flush that did not happen.
        let file = super::filtered(bs).co_flush().await;
        let log = self.co_log(bs, 0, 0, None, LOG_FLUSH_FLAG, false).await;
        Self::both(file, log)
    }

    fn refresh_limits(&self, bs: &BlockDriverState) -> BlockLimits {
        // Entries count whole log sectors, so requests must be aligned to them.
        let mut limits = super::filtered(bs).limits();
        limits.request_alignment = self.sectorsize;
        limits
    }

    fn is_filter(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
