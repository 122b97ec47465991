//! The VMDK format driver: VMware's virtual disks (QEMU's block/vmdk.c; VMware's
//! "Virtual Disk Format 5.0" specification).
//!
//! A VMDK image is a text [`descriptor`] and one or more [`extent`]s that hold the guest
//! disk in order: flat ranges of files, or sparse files with their own [`header`] and
//! grain tables (hosted sparse, streamOptimized with compressed grains, ESX's vmfsSparse
//! and seSparse). [`open`] finds the extents; this module maps requests onto them, copies
//! from the parent disk (`parentFileNameHint`) into newly allocated grains when the
//! parent's content ID still matches, and changes the image's own content ID on the first
//! write, as VMware does. [`create`] writes new images; [`check`] validates the tables.

pub mod check;
pub mod create;
pub mod descriptor;
pub mod extent;
pub mod header;
pub mod open;

use std::rc::Rc;

use async_trait::async_trait;
use block::coroutine::CoMutex;
use block::driver::{
    BlockDriver, BlockLimits, BlockStatus, CheckFix, CheckResult, DriverClass, DriverInfo,
    RequestFlags, StatusFlags,
};
use block::error::error_report;
use block::open::bdrv_open_backing;
use block::{BlkdbgEvent, BlockDriverState, Error, IoVector, Options, Result};
use serde_json::json;

use crate::image_file::{read_backing, read_in_file, write_bytes};
use descriptor::DESC_SIZE;
use extent::{Extent, Lookup, GTE_ZEROED};

/// The class registered as `vmdk`.
pub static VMDK: DriverClass = DriverClass {
    format_name: "vmdk",
    protocol_name: None,
    is_format: true,
    probe: Some(probe),
    open: |bs, options| Box::pin(open(bs, options)),
    create: Some(|filename, options| Box::pin(create::create(filename, options))),
    create_options: &create::CREATE_OPTIONS,
};

/// Scores 100 for a sparse extent's magic, or for a descriptor whose first line that is
/// neither a comment nor blank is `version=1`, `2` or `3` (vmdk_probe).
fn probe(buf: &[u8], _filename: &str) -> u32 {
    if matches!(
        header::magic(buf),
        header::VMDK3_MAGIC | header::VMDK4_MAGIC
    ) {
        return 100;
    }
    let mut p = 0;
    while p < buf.len() {
        let rest = &buf[p..];
        if rest[0] == b'#' {
            p += rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len()) + 1;
            continue;
        }
        if rest[0] == b' ' {
            let mut q = rest.iter().take_while(|&&b| b == b' ').count();
            if rest.get(q) == Some(&b'\r') {
                q += 1;
            }
            // Only blank lines may come before the version line.
            if rest.get(q) != Some(&b'\n') {
                return 0;
            }
            p += q + 1;
            continue;
        }
        let version = [b"version=1", b"version=2", b"version=3"];
        let is_version = version.iter().any(|v| {
            rest.starts_with(*v) && (rest[9..].starts_with(b"\n") || rest[9..].starts_with(b"\r\n"))
        });
        return if is_version { 100 } else { 0 };
    }
    0
}

/// What requests change, under the driver's lock (BDRVVmdkState's mutable part).
struct State {
    extents: Vec<Extent>,
    /// The CID was rewritten since the image was opened.
    cid_updated: bool,
    /// The parent's CID was found to match.
    cid_checked: bool,
}

/// What `info` shows of an extent, fixed at open.
struct ExtentSummary {
    filename: String,
    kind: String,
    bytes: u64,
    compressed: bool,
    flat: bool,
    cluster_bytes: u64,
}

/// An open VMDK image.
pub struct Vmdk {
    state: CoMutex<State>,
    summary: Vec<ExtentSummary>,
    create_type: String,
    /// Where the descriptor with the CIDs is in the image file.
    desc_offset: u64,
    cid: u32,
    parent_cid: u32,
    /// The parent disk named by `parentFileNameHint`.
    parent: Option<String>,
    /// Virtual size in bytes.
    size: u64,
    /// New sparse grains read as zeroes; flat extents only when their files do
    /// (vmdk_has_zero_init).
    zero_init: bool,
}

async fn open(bs: &BlockDriverState, options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let o = open::open_extents(bs, options).await?;
    let file = bs.file().expect("format nodes have a file child");
    let desc = read_in_file(&file, o.desc_offset, DESC_SIZE as u64).await?;
    let parent = descriptor::parent_file_name(&desc)?;
    let cid = descriptor::read_cid(&desc, false)?;
    let parent_cid = descriptor::read_cid(&desc, true)?;
    let summary = o
        .extents
        .iter()
        .map(|e| ExtentSummary {
            filename: e.file.filename(),
            kind: e.kind.clone().unwrap_or_default(),
            bytes: e.sectors * 512,
            compressed: e.compressed,
            flat: e.flat,
            cluster_bytes: e.cluster_bytes(),
        })
        .collect();
    let zero_init = o
        .extents
        .iter()
        .all(|e| !e.flat || e.file.drv().has_zero_init(&e.file));
    let size = o.extents.last().map_or(0, |e| e.end_sector * 512);
    let backing_opt = options.take("backing");
    let backing_opts = options.extract_prefix("backing");
    if !bs.open_flags().no_backing && !matches!(backing_opt.as_deref(), Some("" | "null")) {
        if let Some(name) = backing_opt.or(parent.clone()) {
            let backing = bdrv_open_backing(bs, &name, Some("vmdk"), backing_opts).await?;
            bs.attach_child("backing", backing);
        }
    }
    Ok(Box::new(Vmdk {
        state: CoMutex::new(State {
            extents: o.extents,
            cid_updated: false,
            cid_checked: false,
        }),
        summary,
        create_type: o.create_type,
        desc_offset: o.desc_offset,
        cid,
        parent_cid,
        parent,
        size,
        zero_init,
    }))
}

/// The extent holding guest sector `sector`, searching from `hint` (find_extent).
fn find_extent(extents: &[Extent], sector: u64, hint: usize) -> Option<usize> {
    (hint..extents.len()).find(|&i| sector < extents[i].end_sector)
}

/// Bytes copied at once when a new grain is filled.
const COW_CHUNK: u64 = 1 << 20;

impl Vmdk {
    /// The VMDK driver of a node known to be one.
    pub fn of(bs: &BlockDriverState) -> &Vmdk {
        bs.drv()
            .as_any()
            .downcast_ref::<Vmdk>()
            .expect("a vmdk node")
    }

    /// Reads the CID (or the parent's) from the image's descriptor (vmdk_read_cid).
    pub async fn read_cid(&self, bs: &BlockDriverState, parent: bool) -> Result<u32> {
        let file = bs.file().expect("format nodes have a file child");
        let desc = read_in_file(&file, self.desc_offset, DESC_SIZE as u64).await?;
        descriptor::read_cid(&desc, parent)
    }

    /// Gives the image a new CID, so that children made from it see it changed
    /// (vmdk_write_cid).
    async fn write_cid(&self, bs: &BlockDriverState, cid: u32) -> Result<()> {
        let file = bs.file().expect("format nodes have a file child");
        // An embedded descriptor has its fixed area; a descriptor file is rewritten whole
        // (in sectors), however many extent lines it has.
        let len = if self.desc_offset == 0 {
            file.getlength().min(open::MAX_DESC_BYTES + 1)
        } else {
            DESC_SIZE as u64
        };
        let mut desc = read_in_file(&file, self.desc_offset, len).await?;
        // One byte more than is written back, so that the text keeps its last byte.
        desc.resize(len as usize + 1, 0);
        descriptor::write_cid(&mut desc, cid)?;
        write_bytes(&file, self.desc_offset, &desc[..len as usize]).await?;
        file.co_flush().await
    }

    /// Whether the parent still has the content this image was made from
    /// (vmdk_is_cid_valid); a parent that is not VMDK has no CID and never matches.
    async fn cid_valid(&self, bs: &BlockDriverState, s: &mut State) -> bool {
        if s.cid_checked {
            return true;
        }
        if let Some(backing) = bs.backing() {
            if backing.format_name() != "vmdk" {
                return false;
            }
            match Vmdk::of(&backing).read_cid(&backing, false).await {
                Ok(cid) if cid == self.parent_cid => {}
                _ => return false,
            }
        }
        s.cid_checked = true;
        true
    }

    /// Fills a newly allocated grain at `host` outside `[skip_start, skip_end)`: from the
    /// parent unless the grain was zeroed, else with zeroes (get_whole_cluster).
    #[allow(clippy::too_many_arguments)]
    async fn fill_new_grain(
        &self,
        bs: &BlockDriverState,
        s: &mut State,
        i: usize,
        host: u64,
        offset: u64,
        skip: (u64, u64),
        zeroed: bool,
    ) -> Result<()> {
        let backing = bs.backing();
        if backing.is_some() && !self.cid_valid(bs, s).await {
            return Err(Error::from_errno(libc::EINVAL));
        }
        let cluster_bytes = s.extents[i].cluster_bytes();
        let guest = offset - offset % cluster_bytes;
        let file = s.extents[i].file.clone();
        for (from, to) in [(0, skip.0), (skip.1, cluster_bytes)] {
            let mut at = from;
            while at < to {
                let n = (to - at).min(COW_CHUNK);
                let buf = IoVector::alloc(n as usize);
                match &backing {
                    Some(b) if !zeroed => {
                        file.debug_event(BlkdbgEvent::CowRead).await;
                        read_backing(b, guest + at, &buf).await?
                    }
                    _ => buf.fill(0, n as usize, 0),
                }
                file.debug_event(BlkdbgEvent::CowWrite).await;
                file.co_pwritev(host + at, &buf, RequestFlags::empty())
                    .await?;
                at += n;
            }
        }
        Ok(())
    }

    /// Writes data, or with `qiov` None zeroes through zeroed grains (vmdk_pwritev);
    /// `dry_run` only checks that a zero write needs no data.
    async fn pwritev(
        &self,
        bs: &BlockDriverState,
        s: &mut State,
        mut offset: u64,
        bytes: u64,
        qiov: Option<&IoVector>,
        dry_run: bool,
    ) -> Result<()> {
        let zeroed = qiov.is_none();
        let mut done = 0;
        let mut i = 0;
        while done < bytes {
            i = find_extent(&s.extents, offset >> 9, i).ok_or(Error::from_errno(libc::EIO))?;
            if s.extents[i].sesparse.is_some() {
                return Err(Error::from_errno(libc::ENOTSUP));
            }
            let e = &mut s.extents[i];
            let cluster_bytes = e.cluster_bytes();
            let oic = e.offset_in_cluster(offset);
            let mut n = (bytes - done).min(cluster_bytes - oic);
            let (found, slot) = e.lookup(offset).await;
            let allocate = match found {
                Lookup::Data(_) if e.compressed => {
                    error_report("Could not write to allocated cluster for streamOptimized");
                    return Err(Error::from_errno(libc::EIO));
                }
                Lookup::Error => return Err(Error::from_errno(libc::EINVAL)),
                Lookup::Data(_) => false,
                Lookup::Unallocated | Lookup::Zeroed => !zeroed,
            };
            if zeroed {
                if !(e.has_zero_grain && oic == 0 && n >= cluster_bytes) {
                    return Err(Error::from_errno(libc::ENOTSUP));
                }
                n = cluster_bytes;
                if !dry_run && found != Lookup::Zeroed {
                    let slot = slot.ok_or(Error::from_errno(libc::ENOTSUP))?;
                    e.update_l2(&slot, GTE_ZEROED).await?;
                }
            } else {
                let host = match found {
                    Lookup::Data(host) => host,
                    _ => {
                        let (Some(_), Some(host)) = (slot, e.allocate()) else {
                            return Err(Error::from_errno(libc::EINVAL));
                        };
                        // A compressed grain is written whole; others keep the guest's range.
                        let skip = if e.compressed { (0, 0) } else { (oic, oic + n) };
                        let was_zeroed = found == Lookup::Zeroed;
                        self.fill_new_grain(bs, s, i, host, offset, skip, was_zeroed)
                            .await?;
                        host
                    }
                };
                let part = qiov
                    .expect("data writes have a vector")
                    .slice(done as usize, n as usize);
                let e = &mut s.extents[i];
                e.write(host, oic, &part, offset).await?;
                if allocate {
                    let slot = slot.expect("allocation needs a table");
                    e.update_l2(&slot, (host >> 9) as u32).await?;
                }
            }
            done += n;
            offset += n;
            if !s.cid_updated {
                self.write_cid(bs, fastrand::u32(..)).await?;
                s.cid_updated = true;
            }
        }
        Ok(())
    }
}

#[async_trait(?Send)]
impl BlockDriver for Vmdk {
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        mut offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        let mut s = self.state.lock().await;
        let len = qiov.len() as u64;
        let mut done = 0;
        let mut i = 0;
        while done < len {
            i = find_extent(&s.extents, offset >> 9, i).ok_or(Error::from_errno(libc::EIO))?;
            let e = &mut s.extents[i];
            let (found, _) = e.lookup(offset).await;
            let oic = e.offset_in_cluster(offset);
            let n = (len - done).min(e.cluster_bytes() - oic);
            let part = qiov.slice(done as usize, n as usize);
            match (found, bs.backing()) {
                (Lookup::Data(host), _) => e.read(host, oic, &part).await?,
                // Unreadable tables read as unallocated, as in QEMU.
                (Lookup::Unallocated | Lookup::Error, Some(backing)) => {
                    if !self.cid_valid(bs, &mut s).await {
                        return Err(Error::from_errno(libc::EINVAL));
                    }
                    if let Some(file) = bs.file() {
                        file.debug_event(BlkdbgEvent::ReadBackingAio).await;
                    }
                    read_backing(&backing, offset, &part).await?;
                }
                _ => part.fill(0, n as usize, 0),
            }
            done += n;
            offset += n;
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
        let mut s = self.state.lock().await;
        self.pwritev(bs, &mut s, offset, qiov.len() as u64, Some(qiov), false)
            .await
    }

    /// Zeroes whole grains through zeroed-grain entries, when the image has them; the
    /// dry run first makes sure no part would need data written (vmdk_co_pwrite_zeroes).
    async fn co_pwrite_zeroes(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        _flags: RequestFlags,
    ) -> Result<()> {
        let mut s = self.state.lock().await;
        self.pwritev(bs, &mut s, offset, bytes, None, true).await?;
        self.pwritev(bs, &mut s, offset, bytes, None, false).await
    }

    async fn co_block_status(
        &self,
        _bs: &BlockDriverState,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        let mut s = self.state.lock().await;
        let i = find_extent(&s.extents, offset >> 9, 0).ok_or(Error::from_errno(libc::EIO))?;
        let e = &mut s.extents[i];
        let (found, _) = e.lookup(offset).await;
        let oic = e.offset_in_cluster(offset);
        let n = (e.cluster_bytes() - oic).min(bytes);
        Ok(match found {
            Lookup::Error => return Err(Error::from_errno(libc::EIO)),
            Lookup::Unallocated => BlockStatus::new(StatusFlags::empty(), n),
            Lookup::Zeroed => BlockStatus::new(StatusFlags::ZERO, n),
            Lookup::Data(_) if e.compressed => {
                let mut st = BlockStatus::new(StatusFlags::DATA | StatusFlags::COMPRESSED, n);
                st.file = Some(e.file.clone());
                st
            }
            Lookup::Data(host) => {
                let mut flags = StatusFlags::DATA | StatusFlags::OFFSET_VALID;
                if e.flat {
                    flags |= StatusFlags::RECURSE;
                }
                let mut st = BlockStatus::new(flags, n);
                st.map = host + oic;
                st.file = Some(e.file.clone());
                st
            }
        })
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        Ok(self.size)
    }

    /// The image file and every extent file that is not it
    /// (vmdk_co_get_allocated_file_size).
    async fn co_get_allocated_file_size(&self, bs: &BlockDriverState) -> Result<Option<u64>> {
        let file = bs.file().expect("format nodes have a file child");
        let mut total = file.co_get_allocated_file_size().await?.unwrap_or(0);
        for child in bs.children() {
            if child.name.starts_with("extents.") && !Rc::ptr_eq(&child.bs, &file) {
                total += child.bs.co_get_allocated_file_size().await?.unwrap_or(0);
            }
        }
        Ok(Some(total))
    }

    /// Zero writes are only cheap in whole grains (vmdk_refresh_limits).
    fn refresh_limits(&self, bs: &BlockDriverState) -> BlockLimits {
        let mut limits = bs.file().map(|f| f.limits()).unwrap_or_default();
        for e in self.summary.iter().filter(|e| !e.flat) {
            limits.pwrite_zeroes_alignment =
                limits.pwrite_zeroes_alignment.max(e.cluster_bytes as u32);
        }
        limits
    }

    fn supported_write_flags(&self) -> RequestFlags {
        RequestFlags::WRITE_COMPRESSED
    }

    /// The grain size when every extent has the same layout (vmdk_co_get_info).
    fn get_info(&self, _bs: &BlockDriverState) -> Result<DriverInfo> {
        let first = &self.summary[0];
        let same = |e: &ExtentSummary| {
            e.flat == first.flat
                && e.compressed == first.compressed
                && (e.flat || e.cluster_bytes == first.cluster_bytes)
        };
        if !self.summary.iter().all(same) {
            return Err(Error::from_errno(libc::ENOTSUP));
        }
        Ok(DriverInfo {
            cluster_size: if first.flat { 0 } else { first.cluster_bytes },
            needs_compressed_writes: first.compressed,
            ..DriverInfo::default()
        })
    }

    /// ImageInfoSpecificVmdk: create type, CIDs and the extents.
    fn get_specific_info(&self, _bs: &BlockDriverState) -> Option<serde_json::Value> {
        let extents: Vec<serde_json::Value> = self
            .summary
            .iter()
            .map(|e| {
                let mut m = serde_json::Map::new();
                m.insert("filename".into(), json!(e.filename));
                m.insert("format".into(), json!(e.kind));
                m.insert("virtual-size".into(), json!(e.bytes));
                if !e.flat {
                    m.insert("cluster-size".into(), json!(e.cluster_bytes));
                }
                if e.compressed {
                    m.insert("compressed".into(), json!(true));
                }
                serde_json::Value::Object(m)
            })
            .collect();
        Some(json!({
            "type": "vmdk",
            "data": {
                "create-type": self.create_type,
                "cid": self.cid,
                "parent-cid": self.parent_cid,
                "extents": extents,
            }
        }))
    }

    fn backing_file_name(&self, _bs: &BlockDriverState) -> Option<(String, Option<String>)> {
        self.parent.clone().map(|p| (p, Some("vmdk".to_string())))
    }

    async fn co_check(&self, bs: &BlockDriverState, fix: CheckFix) -> Result<CheckResult> {
        if fix.leaks || fix.errors {
            return Err(Error::from_errno(libc::ENOTSUP));
        }
        let mut s = self.state.lock().await;
        check::check(&mut s.extents, bs.getlength() / 512).await
    }

    fn has_zero_init(&self, _bs: &BlockDriverState) -> bool {
        self.zero_init
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
