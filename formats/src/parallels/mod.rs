//! The Parallels format driver: Parallels Desktop and Virtuozzo (ploop) expanding images
//! (QEMU's block/parallels.c; docs/interop/parallels.txt).
//!
//! [`header`] describes the image; a flat BAT maps each guest cluster to a host cluster,
//! and [`state`] appends new clusters at the end of the data area and writes the BAT back
//! on flush. Consistency after a crash rests on the in-use flag, set while a writer has the
//! image open: an image opened for writing with the flag still set (or with other damage
//! the open notices) is [`check`]ed and repaired first. Read-only opens parse the
//! [`ext`]ension cluster with its dirty bitmaps. [`create`] writes new images.

pub mod check;
pub mod create;
pub mod ext;
pub mod header;
pub mod state;

use async_trait::async_trait;
use block::coroutine::CoMutex;
use block::driver::{
    BlockDriver, BlockStatus, CheckFix, CheckResult, DriverClass, DriverInfo, PreallocMode,
    RequestFlags, StatusFlags,
};
use block::error::error_report;
use block::{BlockDriverState, Error, IoVector, Options, Result};

use crate::image_file::{read_backing, read_bytes};
use ext::DirtyBitmap;
use header::{Header, HEADER_SIZE, INUSE_MAGIC, MAGIC_V1, MAGIC_V2, VERSION};
use state::{PreallocKind, State};

/// The class registered as `parallels`.
pub static PARALLELS: DriverClass = DriverClass {
    format_name: "parallels",
    protocol_name: None,
    is_format: true,
    probe: Some(probe),
    open: |bs, options| Box::pin(open(bs, options)),
    create: Some(|filename, options| Box::pin(create::create(filename, options))),
    create_options: &create::CREATE_OPTIONS,
};

/// Scores 100 for either magic with version 2 (parallels_probe).
fn probe(buf: &[u8], _filename: &str) -> u32 {
    let magic_ok = buf.len() >= HEADER_SIZE && (&buf[0..16] == MAGIC_V1 || &buf[0..16] == MAGIC_V2);
    if magic_ok && u32::from_le_bytes(buf[16..20].try_into().unwrap()) == VERSION {
        100
    } else {
        0
    }
}

/// An open Parallels image.
pub struct Parallels {
    state: CoMutex<State>,
    /// Cluster size in bytes.
    cluster_size: u64,
    /// Virtual size in bytes.
    size: u64,
    /// Dirty bitmaps of the format extension (read-only opens only).
    bitmaps: Vec<DirtyBitmap>,
}

/// The prealloc-mode and prealloc-size runtime options.
fn prealloc_options(options: &mut Options, tracks: u64) -> Result<(PreallocKind, u64)> {
    let size = options.take_size("prealloc-size")?.unwrap_or(128 << 20);
    let kind = match options.take("prealloc-mode").as_deref() {
        None | Some("falloc") => PreallocKind::Falloc,
        Some("truncate") => PreallocKind::Truncate,
        Some(other) => {
            return Err(Error::invalid(format!(
                "Parameter 'prealloc-mode' does not accept value '{other}'"
            )))
        }
    };
    Ok((kind, tracks.max(size / 512)))
}

async fn open(bs: &BlockDriverState, options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let file = bs.file().expect("format nodes have a file child");
    let header = Header::parse(&read_bytes(&file, 0, HEADER_SIZE).await?)?;
    let file_len = file.getlength();
    let file_sectors = file_len / 512;
    // Only the entries inside the file are read: a hostile count allocates nothing.
    let in_file = (header.bat_entries as u64).min(file_len.saturating_sub(HEADER_SIZE as u64) / 4);
    let raw = read_bytes(&file, HEADER_SIZE as u64, in_file as usize * 4).await?;
    let bat: Vec<u32> = raw
        .chunks_exact(4)
        .map(|e| u32::from_le_bytes(e.try_into().unwrap()))
        .collect();
    let tracks = header.tracks as u64;
    let (prealloc, prealloc_sectors) = prealloc_options(options, tracks)?;
    let unclean = header.inuse == INUSE_MAGIC;
    let (data_start, data_off_ok) = header.test_data_off(file_sectors);
    let writable = !bs.is_read_only();
    let mut bitmaps = Vec::new();
    if header.ext_off != 0 {
        if writable {
            error_report("warning: Format Extension ignored in RW mode");
        } else {
            let size = header.nb_sectors;
            bitmaps = ext::read(&file, header.ext_off * 512, header.cluster_size(), size).await?;
            // As QEMU, they become the node's bitmaps (what `qemu-nbd -B UUID` exports).
            for bm in &bitmaps {
                bm.load(bs, &file, size * 512).await?;
            }
        }
    }
    // The format cannot name a backing file; one given in the options is opened.
    let backing_opts = options.extract_prefix("backing");
    let mut st = State {
        header,
        bat,
        dirty: None,
        data_start,
        data_end: data_start,
        free: Vec::new(),
        unclean,
        prealloc_sectors,
        prealloc,
    };
    if writable {
        st.header.inuse = INUSE_MAGIC;
        st.write_header(&file).await?;
    }
    for i in 0..st.bat.len() {
        if let Some(off) = st.host(i) {
            st.data_end = st.data_end.max(off / 512 + tracks);
        }
    }
    let need_check = unclean
        || !data_off_ok
        || st.data_end > file_sectors
        || !check::duplicates(&st, file_len).is_empty();
    if need_check && writable && !bs.open_flags().check {
        let fix = CheckFix {
            leaks: true,
            errors: true,
        };
        check::check(&mut st, &file, fix)
            .await
            .map_err(|e| e.context("Could not repair corrupted image: "))?;
    }
    st.find_free(file.getlength());
    if !backing_opts.is_empty() && !bs.open_flags().no_backing {
        let flags = block::OpenFlags {
            read_only: true,
            ..bs.open_flags()
        };
        bs.attach_child(
            "backing",
            block::bdrv_open(None, backing_opts, flags).await?,
        );
    }
    Ok(Box::new(Parallels {
        cluster_size: tracks * 512,
        size: st.header.nb_sectors * 512,
        state: CoMutex::new(st),
        bitmaps,
    }))
}

impl Parallels {
    /// Allocates the cluster of BAT entry `i`, filled from the backing file when there is
    /// one (allocate_clusters).
    async fn allocate(&self, bs: &BlockDriverState, st: &mut State, i: usize) -> Result<u64> {
        let file = bs.file().expect("format nodes have a file child");
        let at = st.allocate(&file, i).await?;
        if let Some(backing) = bs.backing() {
            let buf = IoVector::alloc(self.cluster_size as usize);
            read_backing(&backing, i as u64 * self.cluster_size, &buf).await?;
            file.co_pwritev(at, &buf, RequestFlags::empty()).await?;
        }
        Ok(at)
    }

    /// The dirty bitmaps the format extension holds.
    pub fn dirty_bitmaps(&self) -> &[DirtyBitmap] {
        &self.bitmaps
    }

    /// Where a guest offset lies: its BAT index, the offset in the cluster and the bytes
    /// of `bytes` that stay in the cluster.
    fn locate(&self, offset: u64, bytes: u64) -> (usize, u64, u64) {
        let cs = self.cluster_size;
        let in_cluster = offset % cs;
        (
            (offset / cs) as usize,
            in_cluster,
            (cs - in_cluster).min(bytes),
        )
    }

    /// Reads or writes cluster by cluster; writes allocate what is missing.
    async fn rw(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        write: bool,
    ) -> Result<()> {
        let file = bs.file().expect("format nodes have a file child");
        let len = qiov.len() as u64;
        let mut done = 0;
        while done < len {
            let (i, in_cluster, n) = self.locate(offset + done, len - done);
            let part = qiov.slice(done as usize, n as usize);
            let mut host = self.state.lock().await.host(i);
            if write && host.is_none() {
                let mut st = self.state.lock().await;
                host = match st.host(i) {
                    Some(h) => Some(h),
                    None => Some(self.allocate(bs, &mut st, i).await?),
                };
            }
            match (host, write, bs.backing()) {
                (Some(h), true, _) => {
                    file.co_pwritev(h + in_cluster, &part, RequestFlags::empty())
                        .await?
                }
                (Some(h), false, _) => {
                    file.co_preadv(h + in_cluster, &part, RequestFlags::empty())
                        .await?
                }
                (None, _, Some(backing)) => read_backing(&backing, offset + done, &part).await?,
                (None, _, None) => part.fill(0, n as usize, 0),
            }
            done += n;
        }
        Ok(())
    }
}

#[async_trait(?Send)]
impl BlockDriver for Parallels {
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

    /// Forgets whole clusters, which then read as zeroes; anything else is left to the
    /// generic fallback (parallels_co_pdiscard).
    async fn co_pdiscard(&self, bs: &BlockDriverState, offset: u64, bytes: u64) -> Result<()> {
        let cs = self.cluster_size;
        if bs.backing().is_some() || !offset.is_multiple_of(cs) || !bytes.is_multiple_of(cs) {
            return Err(Error::from_errno(libc::ENOTSUP));
        }
        let file = bs.file().expect("format nodes have a file child");
        let mut st = self.state.lock().await;
        for i in (offset / cs) as usize..((offset + bytes) / cs) as usize {
            let Some(host) = st.host(i) else { continue };
            file.co_pdiscard(host, cs).await?;
            st.set_entry(i, 0);
            st.release(host / 512);
        }
        Ok(())
    }

    /// Without a backing file a discarded cluster reads as zeroes, so whole clusters are
    /// discarded (parallels_co_pwrite_zeroes).
    async fn co_pwrite_zeroes(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        _flags: RequestFlags,
    ) -> Result<()> {
        self.co_pdiscard(bs, offset, bytes).await
    }

    async fn co_flush_to_os(&self, bs: &BlockDriverState) -> Result<()> {
        let file = bs.file().expect("format nodes have a file child");
        self.state.lock().await.write_bat(&file).await
    }

    /// Stored clusters as long as they follow each other in the file; unallocated ones
    /// report nothing, so that they read from a backing file (parallels_co_block_status).
    async fn co_block_status(
        &self,
        bs: &BlockDriverState,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        let st = self.state.lock().await;
        let (first, _, _) = self.locate(offset, bytes);
        let start = st.host(first);
        let mut n = 0;
        while n < bytes {
            let (i, in_cluster, len) = self.locate(offset + n, bytes - n);
            let same = match (start, st.host(i)) {
                (Some(s), Some(h)) => h + in_cluster == s + offset % self.cluster_size + n,
                (None, None) => true,
                _ => false,
            };
            if !same {
                break;
            }
            n += len;
        }
        let Some(host) = start else {
            return Ok(BlockStatus::new(StatusFlags::empty(), n));
        };
        let mut status = BlockStatus::new(StatusFlags::DATA | StatusFlags::OFFSET_VALID, n);
        status.map = host + offset % self.cluster_size;
        status.file = bs.file();
        Ok(status)
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        Ok(self.size)
    }

    fn get_info(&self, _bs: &BlockDriverState) -> Result<DriverInfo> {
        Ok(DriverInfo {
            cluster_size: self.cluster_size,
            ..DriverInfo::default()
        })
    }

    async fn co_check(&self, bs: &BlockDriverState, fix: CheckFix) -> Result<CheckResult> {
        let file = bs.file().expect("format nodes have a file child");
        check::check(&mut *self.state.lock().await, &file, fix).await
    }

    fn has_zero_init(&self, _bs: &BlockDriverState) -> bool {
        true
    }

    /// Writes the BAT back, clears the in-use flag and drops the preallocated tail
    /// (parallels_close).
    async fn close(&self, bs: &BlockDriverState) -> Result<()> {
        if bs.is_read_only() {
            return Ok(());
        }
        let file = bs.file().expect("format nodes have a file child");
        let mut st = self.state.lock().await;
        st.write_bat(&file).await?;
        st.header.inuse = 0;
        st.write_header(&file).await?;
        // As in QEMU, a failure to drop the tail only leaves space to reclaim.
        let _ = file
            .co_truncate(st.data_end * 512, true, PreallocMode::Off)
            .await;
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
