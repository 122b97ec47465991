//! The VPC format driver: Microsoft's Virtual Hard Disk (VHD) images, fixed and dynamic
//! (QEMU's block/vpc.c).
//!
//! [`footer`] describes the disk and sizes it; a fixed image is its data followed by the
//! footer, a dynamic one is a footer copy, the [`dynamic`] header and block allocation
//! table, blocks appended as they are written, and the footer again at the very end.
//! Virtual PC sizes disks by their CHS geometry while Hyper-V and Disk2VHD use the byte
//! count; like QEMU, the creator field picks which, and `force_size_calc` overrides it.
//! [`create`] writes new images.

pub mod create;
pub mod dynamic;
pub mod footer;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use async_trait::async_trait;
use block::coroutine::CoMutex;
use block::driver::{BlockDriver, BlockStatus, DriverClass, DriverInfo, RequestFlags, StatusFlags};
use block::{BlockDriverState, Error, IoVector, Options, Result};

use crate::image_file::{read_bytes, write_bytes};
use dynamic::{DynHeader, DYN_HEADER_SIZE, UNALLOCATED};
use footer::{Footer, FOOTER_SIZE, MAX_GEOMETRY, MAX_SECTORS, TYPE_DIFFERENCING, TYPE_FIXED};

/// The class registered as `vpc`.
pub static VPC: DriverClass = DriverClass {
    format_name: "vpc",
    protocol_name: None,
    is_format: true,
    probe: Some(probe),
    open: |bs, options| Box::pin(open(bs, options)),
    create: Some(|filename, options| Box::pin(create::create(filename, options))),
    create_options: &create::CREATE_OPTIONS,
};

/// Scores 100 for a footer copy in the first sector (vpc_probe); a fixed image has none
/// there and probes as raw, as in QEMU.
fn probe(buf: &[u8], _filename: &str) -> u32 {
    if buf.len() >= 8 && &buf[0..8] == footer::COOKIE {
        100
    } else {
        0
    }
}

/// The block allocation state of a dynamic image.
struct Table {
    header: DynHeader,
    /// The entries that lie inside the file; those of a (malformed) table running past
    /// its end read as 0, as they do for QEMU, without being allocated for.
    entries: RefCell<Vec<u32>>,
    /// Where the next block goes, which is also where the footer is (free_data_block_offset).
    free_offset: Cell<u64>,
    /// Serialises block allocation.
    alloc_lock: CoMutex<()>,
}

/// An open VHD image.
pub struct Vpc {
    /// The footer as read, rewritten unchanged after each allocation.
    footer_raw: Vec<u8>,
    /// Virtual size in bytes.
    size: u64,
    /// Present for dynamic images.
    table: Option<Table>,
}

/// How the virtual size is computed (the `force_size_calc` runtime option).
fn uses_geometry(footer: &Footer, options: &mut Options) -> Result<bool> {
    match options.take("force_size_calc").as_deref() {
        None => Ok(footer.sized_by_geometry()),
        Some("chs") => Ok(true),
        Some("current_size") => Ok(false),
        Some(other) => Err(Error::invalid(format!(
            "Invalid size calculation mode: '{other}'"
        ))),
    }
}

/// Reads the footer: the copy in sector 0 of a dynamic image, else the last sector of a
/// fixed one.
async fn read_footer(file: &BlockDriverState) -> Result<Vec<u8>> {
    let first = read_bytes(file, 0, FOOTER_SIZE).await?;
    if Footer::is_footer(&first) {
        return Ok(first);
    }
    let len = file.getlength();
    if len < FOOTER_SIZE as u64 {
        return Err(Error::invalid("File too small for a VHD header"));
    }
    let last = read_bytes(file, len - FOOTER_SIZE as u64, FOOTER_SIZE).await?;
    if !Footer::is_footer(&last) || Footer::parse(&last).disk_type != TYPE_FIXED {
        return Err(Error::invalid("invalid VPC image"));
    }
    Ok(last)
}

async fn open(bs: &BlockDriverState, options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let file = bs.file().expect("format nodes have a file child");
    let footer_raw = read_footer(&file).await?;
    Footer::verify(&footer_raw)?;
    let footer = Footer::parse(&footer_raw);
    let mut sectors = footer.geometry.sectors();
    if !uses_geometry(&footer, options)? || sectors == MAX_GEOMETRY {
        sectors = footer.current_size / 512;
    }
    if sectors > MAX_SECTORS {
        return Err(Error::new(
            libc::EFBIG,
            "Disk size is too large, max size is 2040 GiB",
        ));
    }
    let size = sectors * 512;
    let table = match footer.disk_type {
        TYPE_FIXED => None,
        TYPE_DIFFERENCING => {
            return Err(Error::not_supported(
                "vpc: differencing images are not supported",
            ))
        }
        _ => Some(open_table(&file, &footer, size, bs.is_read_only()).await?),
    };
    Ok(Box::new(Vpc {
        footer_raw,
        size,
        table,
    }))
}

/// Reads and checks the dynamic header and the table (vpc_open's dynamic part).
async fn open_table(
    file: &BlockDriverState,
    footer: &Footer,
    size: u64,
    read_only: bool,
) -> Result<Table> {
    let raw = read_bytes(file, footer.data_offset, DYN_HEADER_SIZE).await?;
    let header = DynHeader::parse(&raw)?;
    let block_size = header.block_size as u64;
    if size / block_size > u32::MAX as u64 {
        return Err(Error::invalid("Too many blocks"));
    }
    if (header.max_table_entries as u64) * block_size < size {
        return Err(Error::invalid("Page table too small"));
    }
    if header.max_table_entries > i32::MAX as u32 / 4 {
        return Err(Error::invalid(format!(
            "Max Table Entries too large ({})",
            header.max_table_entries as i32
        )));
    }
    let file_len = file.getlength();
    let in_file =
        (file_len.saturating_sub(header.table_offset) / 4).min(header.max_table_entries as u64);
    if in_file < header.max_table_entries as u64 && !read_only {
        return Err(Error::invalid(
            "vpc: the block allocation table runs past the end of the file",
        ));
    }
    let entries =
        dynamic::decode_table(&read_bytes(file, header.table_offset, in_file as usize * 4).await?);
    let block_end = |e: u32| e as u64 * 512 + header.bitmap_size() + block_size;
    let mut free = (header.table_offset + header.table_bytes()).div_ceil(512) * 512;
    for &e in entries.iter().filter(|&&e| e != UNALLOCATED) {
        free = free.max(block_end(e));
    }
    if in_file < header.max_table_entries as u64 {
        free = free.max(block_end(0));
    }
    if free > file_len {
        return Err(Error::invalid("block-vpc: free_data_block_offset points after the end of file. The image has been truncated."));
    }
    Ok(Table {
        header,
        entries: RefCell::new(entries),
        free_offset: Cell::new(free),
        alloc_lock: CoMutex::new(()),
    })
}

impl Table {
    /// The table entry of a block.
    fn entry(&self, block: u64) -> u32 {
        self.entries
            .borrow()
            .get(block as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Where a guest offset lies: its block, the offset in it, the bytes left in it.
    fn locate(&self, offset: u64, bytes: u64) -> (u64, u64, u64) {
        let bs = self.header.block_size as u64;
        (offset / bs, offset % bs, (bs - offset % bs).min(bytes))
    }

    /// Host offset of a guest byte, None when its block is not stored (get_image_offset).
    fn host(&self, offset: u64) -> Option<u64> {
        let (block, in_block, _) = self.locate(offset, 1);
        match self.entry(block) {
            UNALLOCATED => None,
            e => Some(e as u64 * 512 + self.header.bitmap_size() + in_block),
        }
    }

    /// Stores a new block at the end of the file and maps `block` to it (alloc_block):
    /// its bitmap first, then the footer behind it, then the table entry, so a crash
    /// leaves at worst an unreferenced block.
    async fn alloc_block(&self, file: &BlockDriverState, block: u64, footer: &[u8]) -> Result<()> {
        let at = self.free_offset.get();
        let entry = u32::try_from(at / 512)
            .ok()
            .filter(|&e| e != UNALLOCATED)
            .ok_or_else(|| Error::new(libc::ENOSPC, "vpc: the image file is full"))?;
        let bitmap = vec![0xff; self.header.bitmap_size() as usize];
        write_bytes(file, at, &bitmap).await?;
        let end = at + self.header.bitmap_size() + self.header.block_size as u64;
        write_bytes(file, end, footer).await?;
        self.free_offset.set(end);
        // The entry's whole sector of the table: a 4-byte write would make the layer below
        // read the sector back first.
        let first = block as usize / 128 * 128;
        let sector: Vec<u8> = {
            let entries = self.entries.borrow();
            let end = (first + 128).min(entries.len());
            (first..end)
                .flat_map(|i| {
                    if i == block as usize {
                        entry
                    } else {
                        entries[i]
                    }
                    .to_be_bytes()
                })
                .collect()
        };
        let sector_at = self.header.table_offset + first as u64 * 4;
        write_bytes(file, sector_at, &sector).await?;
        file.co_flush().await?;
        self.entries.borrow_mut()[block as usize] = entry;
        Ok(())
    }
}

impl Vpc {
    fn file(bs: &BlockDriverState) -> Rc<BlockDriverState> {
        bs.file().expect("format nodes have a file child")
    }

    /// Reads or writes a dynamic image block by block.
    async fn dynamic_rw(
        &self,
        t: &Table,
        file: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        write: bool,
    ) -> Result<()> {
        let len = qiov.len() as u64;
        let mut done = 0;
        while done < len {
            let (block, _, n) = t.locate(offset + done, len - done);
            let part = qiov.slice(done as usize, n as usize);
            let mut host = t.host(offset + done);
            if write && host.is_none() {
                let _guard = t.alloc_lock.lock().await;
                if t.host(offset + done).is_none() {
                    t.alloc_block(file, block, &self.footer_raw).await?;
                }
                host = t.host(offset + done);
            }
            match (host, write) {
                (Some(at), true) => file.co_pwritev(at, &part, RequestFlags::empty()).await?,
                (Some(at), false) => file.co_preadv(at, &part, RequestFlags::empty()).await?,
                (None, _) => part.fill(0, n as usize, 0),
            }
            done += n;
        }
        Ok(())
    }
}

#[async_trait(?Send)]
impl BlockDriver for Vpc {
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        let file = Self::file(bs);
        match &self.table {
            Some(t) => self.dynamic_rw(t, &file, offset, qiov, false).await,
            None => file.co_preadv(offset, qiov, RequestFlags::empty()).await,
        }
    }

    async fn co_pwritev(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        let file = Self::file(bs);
        match &self.table {
            Some(t) => self.dynamic_rw(t, &file, offset, qiov, true).await,
            None => file.co_pwritev(offset, qiov, RequestFlags::empty()).await,
        }
    }

    /// A fixed image is data the file may hold as holes; a dynamic one is stored blocks,
    /// as long as they follow each other in the file, or blocks that read as zeroes
    /// (vpc_co_block_status).
    async fn co_block_status(
        &self,
        bs: &BlockDriverState,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        let data = StatusFlags::DATA | StatusFlags::OFFSET_VALID;
        let Some(t) = &self.table else {
            let mut status = BlockStatus::new(data | StatusFlags::ZERO_FROM_FILE, bytes);
            status.map = offset;
            status.file = bs.file();
            return Ok(status);
        };
        let first = t.host(offset);
        let mut n = 0;
        while n < bytes {
            let host = t.host(offset + n);
            let same = match (first, host) {
                (Some(f), Some(h)) => h == f + n,
                (None, None) => true,
                _ => false,
            };
            if !same {
                break;
            }
            n += t.locate(offset + n, bytes - n).2;
        }
        let Some(map) = first else {
            return Ok(BlockStatus::new(StatusFlags::ZERO, n));
        };
        let mut status = BlockStatus::new(data, n);
        status.map = map;
        status.file = bs.file();
        Ok(status)
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        Ok(self.size)
    }

    fn get_info(&self, _bs: &BlockDriverState) -> Result<DriverInfo> {
        Ok(DriverInfo {
            subcluster_size: 0,
            cluster_size: self
                .table
                .as_ref()
                .map_or(0, |t| t.header.block_size as u64),
            ..DriverInfo::default()
        })
    }

    /// A dynamic image reads as zeroes until written; a fixed one is its file
    /// (vpc_has_zero_init).
    fn has_zero_init(&self, bs: &BlockDriverState) -> bool {
        if self.table.is_some() {
            return true;
        }
        let file = Self::file(bs);
        file.drv().has_zero_init(&file)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
