//! The VDI format driver: VirtualBox disk images, dynamic and static (QEMU's block/vdi.c).
//!
//! A VDI image is [`header`] (one sector), then a block map with one little-endian 32-bit
//! entry per 1 MiB block of the virtual disk, then the data area. An entry is the index of
//! the block's slot in the data area, or UNALLOCATED / DISCARDED for a block that reads as
//! zeroes. A write to an unallocated block appends a whole new block at index
//! `blocks_allocated` — data and the header's count first, then after a flush the map
//! entry — so a crash can leak a block but never map one that holds garbage or hand a
//! mapped block out twice. [`create`] writes new images and
//! [`check`] verifies the map.

pub mod check;
pub mod create;
pub mod header;

use std::cell::RefCell;
use std::rc::Rc;

use async_trait::async_trait;
use block::coroutine::CoMutex;
use block::driver::{
    BlockDriver, BlockStatus, CheckFix, CheckResult, DriverClass, DriverInfo, RequestFlags,
    StatusFlags,
};
use block::{BlockDriverState, Error, IoVector, Options, Result};

use crate::image_file::{read_bytes, write_bytes};
use header::{is_allocated, Header, HEADER_SIZE, SECTOR_SIZE};

/// The class registered as `vdi`.
pub static VDI: DriverClass = DriverClass {
    format_name: "vdi",
    protocol_name: None,
    is_format: true,
    probe: Some(probe),
    open: |bs, options| Box::pin(open(bs, options)),
    create: Some(|filename, options| Box::pin(create::create(filename, options))),
    create_options: &create::CREATE_OPTIONS,
};

/// Scores 100 for the VDI signature (vdi_probe).
fn probe(buf: &[u8], _filename: &str) -> u32 {
    if buf.len() >= HEADER_SIZE
        && u32::from_le_bytes(buf[0x40..0x44].try_into().unwrap()) == header::SIGNATURE
    {
        100
    } else {
        0
    }
}

/// An open VDI image.
pub struct Vdi {
    /// The header as last written (`blocks_allocated` grows with allocating writes).
    header: RefCell<Header>,
    /// The block map entries that lie inside the image file. A map running past the end
    /// of a (malformed) file is not allocated for: its missing entries read as 0, which is
    /// what reading past the end of the file gives QEMU.
    bmap: RefCell<Vec<u32>>,
    /// Serialises block allocation (QEMU's bmap_lock).
    alloc_lock: CoMutex<()>,
}

async fn open(bs: &BlockDriverState, _options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let file = bs.file().expect("format nodes have a file child");
    let file_len = file.getlength();
    if file_len < HEADER_SIZE as u64 {
        return Err(Error::invalid("Image not in VDI format (file too short)"));
    }
    let mut h = Header::parse(&read_bytes(&file, 0, HEADER_SIZE).await?)?;
    h.validate()?;
    let in_file = file_len.saturating_sub(h.offset_bmap as u64) / 4;
    let entries = (h.blocks_in_image as u64).min(in_file) as usize;
    let raw = read_bytes(&file, h.offset_bmap as u64, entries * 4).await?;
    let bmap = raw
        .chunks_exact(4)
        .map(|e| u32::from_le_bytes(e.try_into().unwrap()))
        .collect();
    Ok(Box::new(Vdi {
        header: RefCell::new(h),
        bmap: RefCell::new(bmap),
        alloc_lock: CoMutex::new(()),
    }))
}

impl Vdi {
    fn file(bs: &BlockDriverState) -> Rc<BlockDriverState> {
        bs.file().expect("format nodes have a file child")
    }

    /// The block map entry of a block.
    fn entry(&self, block: u64) -> u32 {
        self.bmap.borrow().get(block as usize).copied().unwrap_or(0)
    }

    /// Where a guest offset lies: its block, the offset in it, and the bytes left in it.
    fn locate(&self, offset: u64, bytes: u64) -> (u64, u64, u64) {
        let bs = self.header.borrow().block_size as u64;
        let in_block = offset % bs;
        (offset / bs, in_block, (bs - in_block).min(bytes))
    }

    /// Host offset of a byte of an allocated block.
    fn host_offset(&self, entry: u32, in_block: u64) -> u64 {
        let h = self.header.borrow();
        h.offset_data as u64 + entry as u64 * h.block_size as u64 + in_block
    }

    /// Writes into a block that has no data yet: a whole block, the new bytes padded with
    /// zeroes, is appended, then the map entry and the header point at it
    /// (vdi_co_pwritev's allocation path).
    async fn allocate_and_write(
        &self,
        file: &BlockDriverState,
        block: u64,
        in_block: u64,
        data: &IoVector,
    ) -> Result<()> {
        let _guard = self.alloc_lock.lock().await;
        let entry = self.entry(block);
        if is_allocated(entry) {
            // Another request allocated it while this one waited.
            let at = self.host_offset(entry, in_block);
            return file.co_pwritev(at, data, RequestFlags::empty()).await;
        }
        let (new_entry, block_size) = {
            let h = self.header.borrow();
            (h.blocks_allocated, h.block_size as usize)
        };
        if !is_allocated(new_entry) {
            // A (malformed) count that leaves no block index to hand out.
            return Err(Error::new(libc::ENOSPC, "vdi: no free block index left"));
        }
        let whole = IoVector::alloc(block_size);
        whole.copy_from(in_block as usize, data, 0, data.len());
        file.co_pwritev(
            self.host_offset(new_entry, 0),
            &whole,
            RequestFlags::empty(),
        )
        .await?;
        let (offset_bmap, header_bytes) = {
            let mut h = self.header.borrow_mut();
            h.blocks_allocated += 1;
            (h.offset_bmap as u64, h.serialise())
        };
        self.bmap.borrow_mut()[block as usize] = new_entry;
        // The header's count first, then (after a flush, so a crash cannot keep the map
        // entry without the count) the map sector. QEMU writes both unordered, and a map
        // entry whose count was lost makes the next allocation reuse its block; a count
        // whose entry was lost only leaks a block.
        write_bytes(file, 0, &header_bytes).await?;
        file.co_flush().await?;
        let sector = block * 4 / SECTOR_SIZE;
        let first = (sector * SECTOR_SIZE / 4) as usize;
        let sector_bytes: Vec<u8> = {
            let bmap = self.bmap.borrow();
            let last = (first + (SECTOR_SIZE / 4) as usize).min(bmap.len());
            bmap[first..last]
                .iter()
                .flat_map(|e| e.to_le_bytes())
                .collect()
        };
        write_bytes(file, offset_bmap + sector * SECTOR_SIZE, &sector_bytes).await
    }
}

impl Vdi {
    /// Reads or writes block by block (vdi_co_preadv, vdi_co_pwritev): a block without
    /// data reads as zeroes, and is allocated by the first write into it.
    async fn rw(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        write: bool,
    ) -> Result<()> {
        let file = Self::file(bs);
        let mut done = 0u64;
        let len = qiov.len() as u64;
        while done < len {
            let (block, in_block, n) = self.locate(offset + done, len - done);
            let part = qiov.slice(done as usize, n as usize);
            let entry = self.entry(block);
            let at = self.host_offset(entry, in_block);
            match (is_allocated(entry), write) {
                (true, false) => file.co_preadv(at, &part, RequestFlags::empty()).await?,
                (true, true) => file.co_pwritev(at, &part, RequestFlags::empty()).await?,
                (false, false) => part.fill(0, n as usize, 0),
                (false, true) => {
                    self.allocate_and_write(&file, block, in_block, &part)
                        .await?
                }
            }
            done += n;
        }
        Ok(())
    }
}

#[async_trait(?Send)]
impl BlockDriver for Vdi {
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        self.rw(bs, offset, qiov, false).await
    }

    async fn co_pwritev(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        self.rw(bs, offset, qiov, true).await
    }

    async fn co_block_status(
        &self,
        bs: &BlockDriverState,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        let (block, in_block, n) = self.locate(offset, bytes);
        let entry = self.entry(block);
        if !is_allocated(entry) {
            return Ok(BlockStatus::new(StatusFlags::ZERO, n));
        }
        // A static image's blocks may still be holes of its file: let the file say.
        let mut flags = StatusFlags::DATA | StatusFlags::OFFSET_VALID;
        if self.header.borrow().image_type == header::TYPE_STATIC {
            flags |= StatusFlags::ZERO_FROM_FILE;
        }
        let mut status = BlockStatus::new(flags, n);
        status.map = self.host_offset(entry, in_block);
        status.file = bs.file();
        Ok(status)
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        Ok(self.header.borrow().disk_size)
    }

    fn get_info(&self, _bs: &BlockDriverState) -> Result<DriverInfo> {
        Ok(DriverInfo {
            subcluster_size: 0,
            cluster_size: self.header.borrow().block_size as u64,
            ..DriverInfo::default()
        })
    }

    async fn co_check(&self, _bs: &BlockDriverState, fix: CheckFix) -> Result<CheckResult> {
        check::check(&self.header.borrow(), &self.bmap.borrow(), fix)
    }

    /// A dynamic image reads as zeroes until written; a static one is whatever its file
    /// held (vdi_has_zero_init).
    fn has_zero_init(&self, bs: &BlockDriverState) -> bool {
        if self.header.borrow().image_type == header::TYPE_STATIC {
            let file = Self::file(bs);
            file.drv().has_zero_init(&file)
        } else {
            true
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
