//! The VHDX format driver: Hyper-V's virtual hard disks, fixed and dynamic (QEMU's
//! block/vhdx.c; Microsoft's VHDX Format Specification v1.00).
//!
//! [`header`] holds the file identifier, the two alternating headers and the region
//! table; [`metadata`] sizes the disk; [`bat`] maps each payload block to the file; every
//! change to the BAT goes through the [`log`], which is also replayed when an image left
//! by a crash (or by Hyper-V) is opened. [`create`] writes new images. New blocks are
//! appended at the end of the file on their first write. Like QEMU, differencing images
//! are refused.

pub mod bat;
pub mod create;
pub mod header;
pub mod log;
pub mod metadata;

use std::rc::Rc;

use async_trait::async_trait;
use block::coroutine::CoMutex;
use block::driver::{
    BlockDriver, BlockStatus, CheckFix, CheckResult, DriverClass, DriverInfo, PreallocMode,
    RequestFlags, StatusFlags,
};
use block::{BlockDriverState, Error, IoVector, Options, Result};

use crate::image_file::read_bytes;
use bat::{Layout, FILE_OFFSET_MASK, PAYLOAD_BLOCK_FULLY_PRESENT, STATE_MASK};
use header::{read_region_table, Headers, Regions, FILE_SIGNATURE, MIB};
use log::Log;
use metadata::read_metadata;

/// The class registered as `vhdx`.
pub static VHDX: DriverClass = DriverClass {
    format_name: "vhdx",
    protocol_name: None,
    is_format: true,
    probe: Some(probe),
    open: |bs, options| Box::pin(open(bs, options)),
    create: Some(|filename, options| Box::pin(create::create(filename, options))),
    create_options: &create::CREATE_OPTIONS,
};

/// Scores 100 for the file identifier's signature (vhdx_probe).
fn probe(buf: &[u8], _filename: &str) -> u32 {
    if buf.len() >= 8 && &buf[0..8] == FILE_SIGNATURE {
        100
    } else {
        0
    }
}

/// What changes as the image is written, under one lock (QEMU's s->lock).
struct State {
    headers: Headers,
    log: Log,
    /// The table entries that lie inside the file; those of a table running past its end
    /// read as not present, without being allocated for.
    bat: Vec<u64>,
    /// The data write GUID still has to change before the guest's first write.
    first_visible_write: bool,
}

/// An open VHDX image.
pub struct Vhdx {
    state: CoMutex<State>,
    layout: Layout,
    /// Where the BAT starts in the file.
    bat_offset: u64,
    /// The structures' ranges, which no payload block may overlap.
    regions: Regions,
    /// The first block was fully present at open: a fixed image, which reads as its file.
    fixed: bool,
    /// A log was replayed at open, which `check` reports as a repaired corruption.
    log_replayed: bool,
}

async fn open(bs: &BlockDriverState, _options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let file = bs.file().expect("format nodes have a file child");
    if &read_bytes(&file, 0, 8).await?[..] != FILE_SIGNATURE {
        return Err(Error::from_errno(libc::EINVAL));
    }
    let mut headers = Headers::read(&file).await?;
    let mut regions = Regions::default();
    let h = headers.current();
    regions.register(h.log_offset, h.log_length as u64);
    let mut log = Log::default();
    let log_replayed = log
        .replay(&file, &mut headers, bs.is_read_only(), &bs.filename())
        .await?;
    let rt = read_region_table(&file, &mut regions).await?;
    let md = read_metadata(&file, &rt.metadata).await?;
    let layout = Layout::new(&md);
    let entries = layout.bat_entries();
    if entries > rt.bat.length as u64 / 8 {
        return Err(Error::from_errno(libc::EINVAL));
    }
    let file_len = file.getlength();
    let in_file = entries.min(file_len.saturating_sub(rt.bat.file_offset) / 8);
    let raw = read_bytes(&file, rt.bat.file_offset, in_file as usize * 8).await?;
    let bat: Vec<u64> = raw
        .chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().unwrap()))
        .collect();
    if !bs.open_flags().check {
        bat::check_entries(&bat, &layout, file_len, &regions, None)?;
    }
    if !bs.is_read_only() {
        headers.update(&file, false, None).await?;
    }
    let fixed = bat.first().map(|e| e & STATE_MASK) == Some(PAYLOAD_BLOCK_FULLY_PRESENT);
    Ok(Box::new(Vhdx {
        state: CoMutex::new(State {
            headers,
            log,
            bat,
            first_visible_write: true,
        }),
        layout,
        bat_offset: rt.bat.file_offset,
        regions,
        fixed,
        log_replayed,
    }))
}

impl Vhdx {
    fn file(bs: &BlockDriverState) -> Rc<BlockDriverState> {
        bs.file().expect("format nodes have a file child")
    }

    /// Stores a new block at the end of the file, writes `data` into it at `in_block`,
    /// and maps it through the log (vhdx_allocate_block and the BAT update of
    /// vhdx_co_writev): the data is stable before the entry that points to it.
    async fn allocate(
        &self,
        st: &mut State,
        file: &BlockDriverState,
        index: usize,
        in_block: u64,
        data: &IoVector,
    ) -> Result<()> {
        if index >= st.bat.len() {
            return Err(Error::new(
                libc::EIO,
                "vhdx: the block allocation table runs past the end of the file",
            ));
        }
        let at = file.getlength().div_ceil(MIB) * MIB;
        // Growing the file makes the block read as zeroes around what is written.
        file.co_truncate(at + self.layout.block_size, false, PreallocMode::Off)
            .await?;
        file.co_pwritev(at + in_block, data, RequestFlags::empty())
            .await?;
        let entry = bat::entry(PAYLOAD_BLOCK_FULLY_PRESENT, at);
        let State { headers, log, .. } = st;
        log.write_and_flush(
            file,
            headers,
            self.bat_offset + index as u64 * 8,
            &entry.to_le_bytes(),
        )
        .await?;
        st.bat[index] = entry;
        Ok(())
    }
}

/// Whether a block in this state reads as zeroes; None for states this driver cannot
/// read (partially present blocks of differencing images, undefined values).
fn reads_as_zero(state: u64) -> Option<bool> {
    match state {
        bat::PAYLOAD_BLOCK_NOT_PRESENT
        | bat::PAYLOAD_BLOCK_UNDEFINED
        | bat::PAYLOAD_BLOCK_ZERO
        | bat::PAYLOAD_BLOCK_UNMAPPED
        | bat::PAYLOAD_BLOCK_UNMAPPED_V095 => Some(true),
        PAYLOAD_BLOCK_FULLY_PRESENT => Some(false),
        _ => None,
    }
}

#[async_trait(?Send)]
impl BlockDriver for Vhdx {
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        let file = Self::file(bs);
        let len = qiov.len() as u64;
        let mut done = 0;
        while done < len {
            let (index, in_block, n) = self.layout.locate(offset + done, len - done);
            let entry = self.state.lock().await.bat.get(index).copied().unwrap_or(0);
            let part = qiov.slice(done as usize, n as usize);
            match reads_as_zero(entry & STATE_MASK) {
                Some(true) => part.fill(0, n as usize, 0),
                Some(false) => {
                    let at = (entry & FILE_OFFSET_MASK) + in_block;
                    file.co_preadv(at, &part, RequestFlags::empty()).await?
                }
                None => return Err(Error::from_errno(libc::EIO)),
            }
            done += n;
        }
        Ok(())
    }

    async fn co_pwritev(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        let file = Self::file(bs);
        let mut st = self.state.lock().await;
        if st.first_visible_write {
            st.first_visible_write = false;
            st.headers.update(&file, true, None).await?;
        }
        let len = qiov.len() as u64;
        let mut done = 0;
        while done < len {
            let (index, in_block, n) = self.layout.locate(offset + done, len - done);
            let entry = st.bat.get(index).copied().unwrap_or(0);
            let part = qiov.slice(done as usize, n as usize);
            match reads_as_zero(entry & STATE_MASK) {
                Some(true) => {
                    self.allocate(&mut st, &file, index, in_block, &part)
                        .await?
                }
                Some(false) if entry & FILE_OFFSET_MASK < MIB => {
                    // A block inside the header section: never overwrite the headers.
                    return Err(Error::from_errno(libc::EFAULT));
                }
                Some(false) => {
                    let at = (entry & FILE_OFFSET_MASK) + in_block;
                    file.co_pwritev(at, &part, RequestFlags::empty()).await?
                }
                None => return Err(Error::from_errno(libc::EIO)),
            }
            done += n;
        }
        Ok(())
    }

    /// QEMU's driver reports no block status, so the generic answer applies: all data,
    /// at no offset a caller could use.
    async fn co_block_status(
        &self,
        _bs: &BlockDriverState,
        _want_zero: bool,
        _offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        Ok(BlockStatus::new(StatusFlags::DATA, bytes))
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        Ok(self.layout.size / 512 * 512)
    }

    fn get_info(&self, _bs: &BlockDriverState) -> Result<DriverInfo> {
        Ok(DriverInfo {
            cluster_size: self.layout.block_size,
            ..DriverInfo::default()
        })
    }

    /// A replayed log counts as a repaired corruption; payload blocks outside the file
    /// or over other structures are corruptions (vhdx_co_check). Opening for `-r` has
    /// already replayed the log, so there is nothing else to repair.
    async fn co_check(&self, bs: &BlockDriverState, _fix: CheckFix) -> Result<CheckResult> {
        let mut res = CheckResult::default();
        if self.log_replayed {
            res.corruptions_fixed += 1;
        }
        let st = self.state.lock().await;
        let file_len = Self::file(bs).getlength();
        // The entries found bad are counted in `res`; the error itself says nothing more.
        let _ = bat::check_entries(
            &st.bat,
            &self.layout,
            file_len,
            &self.regions,
            Some(&mut res.corruptions),
        );
        Ok(res)
    }

    /// A dynamic image reads as zeroes when new; a fixed one reads as its file
    /// (vhdx_has_zero_init).
    fn has_zero_init(&self, bs: &BlockDriverState) -> bool {
        if !self.fixed {
            return true;
        }
        let file = Self::file(bs);
        file.drv().has_zero_init(&file)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
