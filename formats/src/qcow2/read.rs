//! Reading guest data and answering block-status queries (QEMU's qcow2_co_preadv_part,
//! qcow2_co_preadv_compressed and qcow2_co_block_status in block/qcow2.c).
//!
//! A read translates a piece of its range under the metadata lock, drops the lock, and
//! fetches the piece from wherever it lives: the data file (the image file itself unless an
//! external one is used), the backing file, a compressed cluster or nowhere (zeroes).

use block::driver::{BlockStatus, StatusFlags};
use block::{BlockDriverState, Error, IoVector, RequestFlags, Result};

use super::compress;
use super::mapping::Mapping;
use super::state::Meta;
use super::Qcow2;

impl Qcow2 {
    /// Reads `qiov.len()` guest bytes at `offset`.
    pub(super) async fn read(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
    ) -> Result<()> {
        let len = qiov.len() as u64;
        let mut done = 0;
        while done < len {
            let (mapping, n) = {
                let mut meta = self.meta.lock().await;
                meta.get_host_offset(offset + done, len - done).await?
            };
            let part = qiov.slice(done as usize, n as usize);
            block::trace!(
                qcow2_co_preadv_part,
                "offset 0x{:x} bytes {} {:?}",
                offset + done,
                n,
                mapping
            );
            match mapping {
                Mapping::Unallocated => match bs.backing() {
                    Some(backing) => {
                        self.file(bs)
                            .debug_event(block::BlkdbgEvent::ReadBackingAio)
                            .await;
                        backing
                            .co_preadv(offset + done, &part, RequestFlags::empty())
                            .await?
                    }
                    None => part.fill(0, n as usize, 0),
                },
                Mapping::Zero | Mapping::ZeroAlloc(_) => part.fill(0, n as usize, 0),
                Mapping::Data(host) => {
                    let data = self.data_child(bs)?;
                    data.debug_event(block::BlkdbgEvent::ReadAio).await;
                    data.co_preadv(host, &part, RequestFlags::empty()).await?;
                    if let Some(crypto) = &self.crypto {
                        let plain = crypto.decrypt(host, offset + done, part.to_vec()).await?;
                        part.copy_from_slice(0, &plain);
                    }
                }
                Mapping::Compressed(entry) => {
                    let cluster = self.read_compressed(bs, entry).await?;
                    let at = self.g.in_cluster(offset + done) as usize;
                    part.copy_from_slice(0, &cluster[at..at + n as usize]);
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Reads and decompresses the cluster a compressed L2 entry describes.
    pub(super) async fn read_compressed(
        &self,
        bs: &BlockDriverState,
        entry: u64,
    ) -> Result<Vec<u8>> {
        let (host, len) = self.g.compressed_range(entry);
        let buf = IoVector::alloc(len as usize);
        let file = self.file(bs);
        file.debug_event(block::BlkdbgEvent::ReadCompressed).await;
        file.co_preadv(host, &buf, RequestFlags::empty()).await?;
        compress::decompress(
            self.compression_type,
            buf.to_vec(),
            self.g.cluster_size as usize,
        )
        .await
        .map_err(|e| Error::new(libc::EIO, e.to_string()))
    }

    /// Describes the guest range at `offset` (qcow2_co_block_status).
    pub(super) async fn block_status(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        let (mapping, n, prealloc) = {
            let mut meta = self.meta.lock().await;
            if self.metadata_preallocation.get().is_none() {
                let found = detect_metadata_preallocation(&mut meta).await?;
                self.metadata_preallocation.set(Some(found));
            }
            let (mapping, n) = meta.get_host_offset(offset, bytes).await?;
            (mapping, n, self.metadata_preallocation.get() == Some(true))
        };
        let status = match mapping {
            Mapping::Unallocated => BlockStatus::new(StatusFlags::empty(), n),
            Mapping::Zero => BlockStatus::new(StatusFlags::ZERO, n),
            Mapping::ZeroAlloc(host) => {
                let mut s = BlockStatus::new(StatusFlags::ZERO | StatusFlags::OFFSET_VALID, n);
                s.map = host;
                s.file = Some(self.data_child(bs)?);
                s
            }
            Mapping::Compressed(_) => {
                BlockStatus::new(StatusFlags::DATA | StatusFlags::COMPRESSED, n)
            }
            Mapping::Data(host) => {
                let mut s = BlockStatus::new(StatusFlags::DATA | StatusFlags::OFFSET_VALID, n);
                if prealloc {
                    // Preallocated clusters may never have been written: holes read as zero.
                    s.flags |= StatusFlags::ZERO_FROM_FILE;
                }
                s.map = host;
                s.file = Some(self.data_child(bs)?);
                s
            }
        };
        Ok(status)
    }
}

/// Whether the image looks metadata-preallocated: clearly more clusters have a refcount
/// than the file really has allocated (qcow2_detect_metadata_preallocation). Only then is a
/// data cluster's host range worth asking about holes.
async fn detect_metadata_preallocation(meta: &mut Meta) -> Result<bool> {
    let file_length = meta.file.getlength();
    let Some(allocated) = meta.file.co_get_allocated_file_size().await? else {
        return Ok(false);
    };
    let real_clusters = allocated / meta.g.cluster_size;
    let threshold = (real_clusters * 10 / 9).max(real_clusters + 2);
    let end = file_length.div_ceil(meta.g.cluster_size);
    let mut counted = 0;
    let mut cluster = 0;
    while cluster < end && counted < threshold {
        if meta.get_refcount(cluster).await? != 0 {
            counted += 1;
        }
        cluster += 1;
    }
    Ok(counted >= threshold)
}
