//! Writing guest data: in place, or through an allocation with copy-on-write (QEMU's
//! qcow2_co_pwritev_part and qcow2_co_pwritev_compressed_part in block/qcow2.c).
//!
//! The metadata lock is held only to plan and to link; the data itself is written without
//! it. Overlapping allocations are serialised through the in-flight list (see
//! [`super::cluster`]).

use std::collections::VecDeque;

use block::{AioContext, BlockDriverState, Error, IoVector, RequestFlags, Result};

use super::cluster::{InflightAlloc, L2Meta, WritePlan};
use super::compress;
use super::l2::{get_entry, L2E_OFFSET_MASK};
use super::Qcow2;

/// Clusters of one request compressed at once (QEMU's QCOW2_MAX_WORKERS).
const MAX_COMPRESS_WORKERS: usize = 8;

/// Removes an in-flight allocation from the list when its write ends, however it ends.
struct InflightGuard<'a> {
    q: &'a Qcow2,
    id: u64,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.q.allocs.borrow_mut().retain(|a| a.id != self.id);
        self.q.alloc_done.restart_all();
    }
}

impl Qcow2 {
    fn overlaps_inflight(&self, start: u64, end: u64) -> bool {
        self.allocs
            .borrow()
            .iter()
            .any(|a| a.start < end && start < a.end)
    }

    fn register(&self, start: u64, end: u64) -> InflightGuard<'_> {
        let id = self.next_alloc_id.get();
        self.next_alloc_id.set(id + 1);
        self.allocs
            .borrow_mut()
            .push(InflightAlloc { id, start, end });
        InflightGuard { q: self, id }
    }

    /// Waits until no allocation in flight touches the guest clusters of a range
    /// (handle_dependencies).
    pub(super) async fn wait_for_allocs(&self, offset: u64, bytes: u64) {
        let start = self.g.cluster_start(offset);
        let end = (offset + bytes).next_multiple_of(self.g.cluster_size);
        if self.overlaps_inflight(start, end) {
            block::trace!(qcow2_wait_dependency, "offset 0x{:x}", offset);
        }
        self.alloc_done
            .wait_while(|| self.overlaps_inflight(start, end))
            .await;
    }

    /// Writes `qiov` at guest `offset`.
    pub(super) async fn write(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        if flags.contains(RequestFlags::WRITE_COMPRESSED) {
            return self.write_compressed(bs, offset, qiov).await;
        }
        let len = qiov.len() as u64;
        let mut done = 0;
        while done < len {
            let at = offset + done;
            self.wait_for_allocs(at, len - done).await;
            let mut meta = self.meta.lock().await;
            if self.overlaps_inflight(
                self.g.cluster_start(at),
                (offset + len).next_multiple_of(self.g.cluster_size),
            ) {
                // Someone started an allocation while we waited for the lock.
                continue;
            }
            meta.check_writable()?;
            match meta.plan_write(at, len - done).await? {
                WritePlan::InPlace { host, bytes } => {
                    meta.check_data_write(host, bytes).await?;
                    let first = self.g.cluster_start(at);
                    let _guard =
                        self.register(first, (at + bytes).next_multiple_of(self.g.cluster_size));
                    drop(meta);
                    let part = self.encrypted(host, at, qiov.slice(done as usize, bytes as usize));
                    let part = part.await?;
                    let data = self.data_child(bs)?;
                    data.debug_event(block::BlkdbgEvent::WriteAio).await;
                    data.co_pwritev(host, &part, RequestFlags::empty()).await?;
                    done += bytes;
                }
                WritePlan::Alloc(m) => {
                    // The whole write (data and copy-on-write parts) is checked now, while
                    // the lock is held anyway.
                    let (from, to) = (m.cow_head.0, m.cow_tail.1);
                    if let Err(e) = meta.check_data_write(m.host_start + from, to - from).await {
                        meta.abort_alloc(&m).await;
                        return Err(e);
                    }
                    let end = m.guest_start + m.nb_clusters * self.g.cluster_size;
                    let _guard = self.register(m.guest_start, end);
                    drop(meta);
                    let written = m.data.1 - m.data.0;
                    let part = qiov.slice(done as usize, written as usize);
                    let result = self.write_with_cow(bs, &m, &part).await;
                    let mut meta = self.meta.lock().await;
                    // With lazy refcounts the dirty bit goes on only now, between the
                    // data write and the L2 update (qcow2_alloc_cluster_link_l2): its flush
                    // makes the data stable before any L2 entry can point at it.
                    let result = match result {
                        Ok(()) => self.mark_dirty(&mut meta).await,
                        Err(e) => Err(e),
                    };
                    if m.cow_head.0 < m.cow_head.1 || m.cow_tail.0 < m.cow_tail.1 {
                        // Copied data too must be stable before an L2 entry names it
                        // (perform_cow), whatever the refcount mode.
                        meta.caches.l2_depends_on_flush();
                    }
                    if let Err(e) = result {
                        meta.abort_alloc(&m).await;
                        return Err(e);
                    }
                    meta.link_l2(&m).await?;
                    done += written;
                }
            }
        }
        Ok(())
    }

    /// `data` as it is to be stored at `host` for guest offset `guest`: encrypted when the
    /// image is (qcow2_co_encrypt), else unchanged.
    async fn encrypted(&self, host: u64, guest: u64, data: IoVector) -> Result<IoVector> {
        match &self.crypto {
            Some(crypto) => {
                let sealed = crypto.encrypt(host, guest, data.to_vec()).await?;
                Ok(IoVector::from_vec(sealed))
            }
            None => Ok(data),
        }
    }

    /// Writes the guest data of an allocation together with its copy-on-write head and
    /// tail, read from what the guest currently sees there (perform_cow).
    async fn write_with_cow(
        &self,
        bs: &BlockDriverState,
        m: &L2Meta,
        data: &IoVector,
    ) -> Result<()> {
        let (head_from, head_to) = m.cow_head;
        let (tail_from, tail_to) = m.cow_tail;
        let head = IoVector::alloc((head_to - head_from) as usize);
        let tail = IoVector::alloc((tail_to - tail_from) as usize);
        if !head.is_empty() || !tail.is_empty() {
            // QEMU zero-fills fresh clusters that have nothing to copy (handle_alloc_space)
            // instead of reading them; its debug events tell the two apart.
            let zero_cow = bs.backing().is_none() && m.old.iter().all(|&(e, _)| e == 0);
            let event = if zero_cow {
                block::BlkdbgEvent::ClusterAllocSpace
            } else {
                block::BlkdbgEvent::CowRead
            };
            self.file(bs).debug_event(event).await;
        }
        if !head.is_empty() {
            self.read(bs, m.guest_start + head_from, &head).await?;
        }
        if !tail.is_empty() {
            self.read(bs, m.guest_start + tail_from, &tail).await?;
        }
        let mut all = IoVector::new();
        all.push_vector(&head);
        all.push_vector(data);
        all.push_vector(&tail);
        let host = m.host_start + head_from;
        let all = self.encrypted(host, m.guest_start + head_from, all).await?;
        block::trace!(
            qcow2_writev_data,
            "host 0x{:x} bytes {} cow {}+{}",
            host,
            all.len(),
            head.len(),
            tail.len()
        );
        // QEMU merges the guest data into the COW write and then reports it as write_aio.
        let data = self.data_child(bs)?;
        data.debug_event(block::BlkdbgEvent::WriteAio).await;
        // One allocation may span more than a request can carry: write it in pieces.
        let total = all.len();
        let mut done = 0;
        while done < total {
            let n = (total - done).min(block::io::MAX_REQUEST_BYTES as usize);
            let part = all.slice(done, n);
            data.co_pwritev(host + done as u64, &part, RequestFlags::empty())
                .await?;
            done += n;
        }
        Ok(())
    }

    /// Writes whole clusters compressed (qcow2_co_pwritev_compressed_part); a cluster that
    /// does not shrink is written normally, as QEMU does. Only the image's last cluster may
    /// be partial.
    ///
    /// Compression is CPU work: up to [`MAX_COMPRESS_WORKERS`] clusters are compressed at
    /// once on the thread pool (QEMU's task pool does the same), and the results are written
    /// in guest order as they arrive.
    async fn write_compressed(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
    ) -> Result<()> {
        let cs = self.g.cluster_size;
        let len = qiov.len() as u64;
        if self.data.is_external() {
            // A compressed cluster has no place in a data file mapped one to one.
            return Err(Error::from_errno(libc::ENOTSUP));
        }
        if self.crypto.is_some() {
            // QEMU would store such a cluster unencrypted; qemu-img refuses to convert
            // that way, and so does this driver for every writer.
            return Err(Error::new(
                libc::ENOTSUP,
                "Compression and encryption not supported at the same time",
            ));
        }
        if self.g.in_cluster(offset) != 0
            || (!len.is_multiple_of(cs) && offset + len != self.size.get())
        {
            return Err(Error::from_errno(libc::EINVAL));
        }
        let ctx = AioContext::current();
        let mut compressing = VecDeque::new();
        let mut started = 0;
        let mut done = 0;
        while done < len {
            while compressing.len() < MAX_COMPRESS_WORKERS && started < len {
                let n = (len - started).min(cs);
                let mut input = qiov.slice(started as usize, n as usize).to_vec();
                input.resize(cs as usize, 0);
                compressing.push_back(ctx.spawn(compress::compress(self.compression_type, input)));
                started += n;
            }
            let compressed = compressing
                .pop_front()
                .expect("one started per cluster")
                .await;
            let n = (len - done).min(cs);
            let at = offset + done;
            match compressed {
                Some(c) => self.write_one_compressed(bs, at, c).await?,
                None => {
                    let part = qiov.slice(done as usize, n as usize);
                    let plain: block::coroutine::LocalBoxFuture<'_, Result<()>> =
                        Box::pin(self.write(bs, at, &part, RequestFlags::empty()));
                    plain.await?
                }
            }
            done += n;
        }
        Ok(())
    }

    async fn write_one_compressed(
        &self,
        bs: &BlockDriverState,
        at: u64,
        data: Vec<u8>,
    ) -> Result<()> {
        let cs = self.g.cluster_size;
        self.wait_for_allocs(at, cs).await;
        let mut meta = self.meta.lock().await;
        meta.check_writable()?;
        let l2 = meta.l2_for_write(at).await?;
        meta.caches.load(super::cache::Which::L2, l2).await?;
        let idx = self.g.l2_index(at);
        let (old, _) = get_entry(&self.g, meta.caches.table(super::cache::Which::L2, l2), idx);
        if old & L2E_OFFSET_MASK != 0 {
            // Compression never overwrites a cluster in place (QEMU refuses the same way).
            return Err(Error::from_errno(libc::EIO));
        }
        let len = data.len() as u64;
        let host = meta.alloc_bytes(len).await?;
        meta.check_metadata_alloc(host, len, "compressed cluster")
            .await?;
        let _guard = self.register(at, at + cs);
        drop(meta);
        meta_write_data(self, bs, host, &data).await?;
        // No dirty bit for compressed clusters (QEMU sets it only when linking an
        // allocating write). An L2 entry naming compressed data that never landed makes the
        // cluster unreadable, not just stale: the data must be stable first, even when lazy
        // refcounts leave the L2 table otherwise unordered.
        let mut meta = self.meta.lock().await;
        meta.caches.l2_depends_on_flush();
        let l2 = meta.l2_for_write(at).await?;
        meta.caches.load(super::cache::Which::L2, l2).await?;
        let entry = self.g.compressed_entry(host, len);
        let table = meta.caches.table(super::cache::Which::L2, l2);
        super::l2::set_entry(&self.g, table, idx, entry, 0);
        meta.caches.mark_dirty(super::cache::Which::L2, l2);
        Ok(())
    }
}

async fn meta_write_data(q: &Qcow2, bs: &BlockDriverState, host: u64, data: &[u8]) -> Result<()> {
    let buf = IoVector::from_slice(data);
    let file = q.file(bs);
    file.debug_event(block::BlkdbgEvent::WriteCompressed).await;
    file.co_pwritev(host, &buf, RequestFlags::empty()).await
}
