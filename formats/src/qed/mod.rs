//! The QED format driver: QEMU Enhanced Disk images (QEMU's block/qed.c; the format is
//! specified in docs/interop/qed_spec.txt).
//!
//! [`header`] describes the image; [`table`] maps guest clusters through a two-level
//! table and appends new clusters at the end of the file. Since nothing counts references,
//! consistency after a crash rests on the need-check bit: it is set before the first
//! allocating write and cleared once the writes are flushed, and an image opened for
//! writing with the bit still set is [`check`]ed and repaired first. [`create`] writes new
//! images.

pub mod check;
pub mod create;
pub mod header;
pub mod table;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use async_trait::async_trait;
use block::coroutine::CoMutex;
use block::driver::{
    BlockDriver, BlockStatus, CheckFix, CheckResult, DriverClass, DriverInfo, PreallocMode,
    RequestFlags, StatusFlags,
};
use block::open::bdrv_open_backing;
use block::{BlockDriverState, Error, IoVector, Options, Result};

use crate::image_file::{read_backing, read_bytes, write_bytes};
use header::{Header, F_BACKING_FILE, F_BACKING_FORMAT_NO_PROBE, F_NEED_CHECK, HEADER_BYTES};
use table::{Mapping, Tables};

/// The class registered as `qed`.
pub static QED: DriverClass = DriverClass {
    format_name: "qed",
    protocol_name: None,
    is_format: true,
    probe: Some(probe),
    open: |bs, options| Box::pin(open(bs, options)),
    create: Some(|filename, options| Box::pin(create::create(filename, options))),
    create_options: &create::CREATE_OPTIONS,
};

/// Scores 100 for the QED magic (bdrv_qed_probe).
fn probe(buf: &[u8], _filename: &str) -> u32 {
    if buf.len() >= 4 && u32::from_le_bytes(buf[0..4].try_into().unwrap()) == header::MAGIC {
        100
    } else {
        0
    }
}

/// Longest backing file name read from an image (QEMU's buffer for it).
const MAX_BACKING_NAME: u32 = 1023;

/// An open QED image.
pub struct Qed {
    tables: CoMutex<Tables>,
    cluster_size: u64,
    /// Virtual size.
    size: Cell<u64>,
    /// The need-check bit, for the synchronous info calls.
    need_check: Cell<bool>,
    /// Backing file name and format, as the header records them.
    backing: RefCell<Option<(String, Option<String>)>>,
}

/// The backing file the header names, and its format when the image says not to probe.
async fn read_backing_name(
    file: &BlockDriverState,
    h: &Header,
) -> Result<Option<(String, Option<String>)>> {
    if h.features & F_BACKING_FILE == 0 {
        return Ok(None);
    }
    if h.backing_filename_size > MAX_BACKING_NAME {
        return Err(Error::invalid("QED backing file name is too long"));
    }
    let raw = read_bytes(
        file,
        h.backing_filename_offset as u64,
        h.backing_filename_size as usize,
    )
    .await?;
    let name = String::from_utf8_lossy(&raw).into_owned();
    let fmt = (h.features & F_BACKING_FORMAT_NO_PROBE != 0).then(|| "raw".to_string());
    Ok(Some((name, fmt)))
}

async fn open(bs: &BlockDriverState, options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let file = bs.file().expect("format nodes have a file child");
    let h = Header::parse(&read_bytes(&file, 0, HEADER_BYTES).await?)?;
    h.validate(file.getlength())?;
    let backing = read_backing_name(&file, &h).await?;
    let backing_opt = options.take("backing");
    let backing_opts = options.extract_prefix("backing");
    let qed = Qed {
        cluster_size: h.cluster_size as u64,
        size: Cell::new(h.image_size),
        need_check: Cell::new(h.features & F_NEED_CHECK != 0),
        backing: RefCell::new(backing.clone()),
        tables: CoMutex::new(Tables::load(file, h).await?),
    };
    if qed.need_check.get() && !bs.is_read_only() && !bs.open_flags().check {
        // Left unclean: repair before anything is written (qed_open's need-check path).
        let fix = CheckFix {
            leaks: true,
            errors: true,
        };
        qed.check(fix).await?;
    }
    if !bs.open_flags().no_backing
        && backing_opt.as_deref() != Some("")
        && backing_opt.as_deref() != Some("null")
    {
        let name = backing_opt.or(backing.as_ref().map(|(n, _)| n.clone()));
        if let Some(name) = name {
            let fmt = backing.as_ref().and_then(|(_, f)| f.as_deref());
            bs.attach_child(
                "backing",
                bdrv_open_backing(bs, &name, fmt, backing_opts).await?,
            );
        }
    }
    Ok(Box::new(qed))
}

impl Qed {
    fn file(bs: &BlockDriverState) -> Rc<BlockDriverState> {
        bs.file().expect("format nodes have a file child")
    }

    /// Sets the need-check bit before the first allocating write (qed_start_need_check).
    async fn mark_need_check(&self, t: &mut Tables) -> Result<()> {
        if t.header.features & F_NEED_CHECK == 0 {
            t.header.features |= F_NEED_CHECK;
            t.write_header().await?;
            t.file.co_flush().await?;
            self.need_check.set(true);
        }
        Ok(())
    }

    /// Clears the need-check bit once everything written so far is stable
    /// (qed_need_check_timer_entry).
    async fn mark_clean(&self) -> Result<()> {
        let mut t = self.tables.lock().await;
        if t.header.features & F_NEED_CHECK != 0 {
            t.file.co_flush().await?;
            t.header.features &= !F_NEED_CHECK;
            t.write_header().await?;
            self.need_check.set(false);
        }
        Ok(())
    }

    /// Fills `len` bytes of `buf` at `at` with what guest offset `guest` reads when its
    /// cluster is not stored: the backing file for an unallocated entry, else zeroes
    /// (qed_copy_from_backing_file).
    async fn fill_unstored(
        &self,
        bs: &BlockDriverState,
        entry: u64,
        guest: u64,
        buf: &IoVector,
        at: usize,
        len: usize,
    ) -> Result<()> {
        match bs.backing() {
            Some(backing) if entry == 0 => read_backing(&backing, guest, &buf.slice(at, len)).await,
            _ => Ok(()),
        }
    }

    /// Writes into clusters that are not stored: whole new clusters are appended with
    /// the rest of their contents copied from the backing file, then mapped
    /// (qed_aio_write_alloc). Returns the bytes written.
    async fn write_allocating(
        &self,
        bs: &BlockDriverState,
        t: &mut Tables,
        offset: u64,
        data: &IoVector,
    ) -> Result<u64> {
        let cs = self.cluster_size;
        let (count, first_entry, last_entry) = t.unallocated_run(offset, data.len() as u64).await?;
        self.mark_need_check(t).await?;
        let run_start = offset - offset % cs;
        let run_end = run_start + count * cs;
        let n = (data.len() as u64).min(run_end - offset);
        let end = offset + n;
        let buf = IoVector::alloc((count * cs) as usize);
        let head = (offset - run_start) as usize;
        self.fill_unstored(bs, first_entry, run_start, &buf, 0, head)
            .await?;
        let tail_at = (end - run_start) as usize;
        let tail = (run_end - end) as usize;
        self.fill_unstored(bs, last_entry, end, &buf, tail_at, tail)
            .await?;
        buf.copy_from(head, data, 0, n as usize);
        let host = t.allocate(count);
        t.file.co_pwritev(host, &buf, RequestFlags::empty()).await?;
        if bs.backing().is_some() {
            // The new clusters hold backing data the guest never wrote: they must be stable
            // before the L2 table maps them, or a crash leaves that region empty
            // (qed_aio_write_main's flush; found by rqemu-crash-explore).
            t.file.co_flush().await?;
        }
        t.map_clusters(run_start, count, host).await?;
        Ok(n)
    }

    /// Runs the consistency check under the metadata lock.
    async fn check(&self, fix: CheckFix) -> Result<CheckResult> {
        let mut t = self.tables.lock().await;
        let result = check::check(&mut t, fix).await;
        self.need_check.set(t.header.features & F_NEED_CHECK != 0);
        result
    }

    /// Rewrites the header with a new backing file name (qed_co_change_backing_file).
    async fn change_backing(&self, name: Option<&str>, fmt: Option<&str>) -> Result<()> {
        let mut t = self.tables.lock().await;
        let mut h = t.header.clone();
        h.features &= !(F_BACKING_FILE | F_BACKING_FORMAT_NO_PROBE);
        h.backing_filename_offset = 0;
        h.backing_filename_size = 0;
        let mut bytes = Vec::new();
        if let Some(name) = name {
            let room = h.header_size as u64 * h.cluster_size as u64 - HEADER_BYTES as u64;
            if name.len() as u64 > room.min(MAX_BACKING_NAME as u64) {
                return Err(Error::from_errno(libc::ENOSPC));
            }
            h.features |= F_BACKING_FILE;
            if fmt == Some("raw") {
                h.features |= F_BACKING_FORMAT_NO_PROBE;
            }
            h.backing_filename_offset = HEADER_BYTES as u32;
            h.backing_filename_size = name.len() as u32;
            bytes.extend_from_slice(name.as_bytes());
        }
        let mut all = h.serialise();
        all.extend(bytes);
        write_bytes(&t.file, 0, &all).await?;
        t.file.co_flush().await?;
        t.header = h;
        let raw = fmt == Some("raw");
        *self.backing.borrow_mut() = name.map(|n| (n.to_string(), raw.then(|| "raw".to_string())));
        Ok(())
    }
}

#[async_trait(?Send)]
impl BlockDriver for Qed {
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        let len = qiov.len() as u64;
        let mut done = 0;
        while done < len {
            let (mapping, n) = self
                .tables
                .lock()
                .await
                .find(offset + done, len - done)
                .await?;
            let part = qiov.slice(done as usize, n as usize);
            match (mapping, bs.backing()) {
                (Mapping::Data(host), _) => {
                    Self::file(bs)
                        .co_preadv(host, &part, RequestFlags::empty())
                        .await?
                }
                (Mapping::Unallocated, Some(backing)) => {
                    read_backing(&backing, offset + done, &part).await?
                }
                _ => part.fill(0, n as usize, 0),
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
        let len = qiov.len() as u64;
        let mut done = 0;
        while done < len {
            let mut t = self.tables.lock().await;
            let (mapping, n) = t.find(offset + done, len - done).await?;
            if let Mapping::Data(host) = mapping {
                drop(t);
                let part = qiov.slice(done as usize, n as usize);
                Self::file(bs)
                    .co_pwritev(host, &part, RequestFlags::empty())
                    .await?;
                done += n;
                continue;
            }
            let rest = qiov.slice(done as usize, (len - done) as usize);
            done += self
                .write_allocating(bs, &mut t, offset + done, &rest)
                .await?;
        }
        Ok(())
    }

    async fn co_flush_to_os(&self, _bs: &BlockDriverState) -> Result<()> {
        self.mark_clean().await
    }

    async fn co_block_status(
        &self,
        bs: &BlockDriverState,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        let (mapping, n) = self.tables.lock().await.find(offset, bytes).await?;
        Ok(match mapping {
            Mapping::Data(host) => {
                let mut s = BlockStatus::new(StatusFlags::DATA | StatusFlags::OFFSET_VALID, n);
                s.map = host;
                s.file = bs.file();
                s
            }
            Mapping::Zero => BlockStatus::new(StatusFlags::ZERO, n),
            Mapping::Unallocated => BlockStatus::new(StatusFlags::empty(), n),
        })
    }

    /// Grows the image within what its tables address (bdrv_qed_co_truncate).
    async fn co_truncate(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        _exact: bool,
        prealloc: PreallocMode,
    ) -> Result<()> {
        if prealloc != PreallocMode::Off {
            return Err(Error::not_supported(format!(
                "Unsupported preallocation mode '{}'",
                prealloc.name()
            )));
        }
        let mut t = self.tables.lock().await;
        if !t.header.image_size_valid(offset) {
            return Err(Error::invalid("Invalid image size specified"));
        }
        if offset < t.header.image_size {
            return Err(Error::not_supported(
                "Shrinking images is currently not supported",
            ));
        }
        t.header.image_size = offset;
        t.write_header().await?;
        self.size.set(offset);
        Ok(())
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        Ok(self.size.get())
    }

    fn get_info(&self, _bs: &BlockDriverState) -> Result<DriverInfo> {
        Ok(DriverInfo {
            subcluster_size: 0,
            cluster_size: self.cluster_size,
            is_dirty: self.need_check.get(),
            ..DriverInfo::default()
        })
    }

    fn backing_file_name(&self, _bs: &BlockDriverState) -> Option<(String, Option<String>)> {
        self.backing.borrow().clone()
    }

    async fn co_change_backing_file(
        &self,
        _bs: &BlockDriverState,
        backing_file: Option<&str>,
        backing_fmt: Option<&str>,
    ) -> Result<()> {
        self.change_backing(backing_file, backing_fmt).await
    }

    async fn co_check(&self, _bs: &BlockDriverState, fix: CheckFix) -> Result<CheckResult> {
        self.check(fix).await
    }

    fn has_zero_init(&self, _bs: &BlockDriverState) -> bool {
        true
    }

    async fn close(&self, bs: &BlockDriverState) -> Result<()> {
        if bs.is_read_only() {
            return Ok(());
        }
        self.mark_clean().await
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
