//! The qcow format driver: QEMU's original copy-on-write format, version 1 (QEMU's
//! block/qcow.c).
//!
//! A two-level table maps guest clusters: the L1 table, read whole at open, points at L2
//! tables, which point at clusters. Everything new is appended at the end of the file:
//! L2 tables as they are first needed, clusters as they are first written, compressed
//! clusters (raw deflate, `qemu-img convert -c`) packed back to back with their size in
//! the table entry. Nothing is ever freed; there are no refcounts and no check. Unallocated
//! clusters read from the backing file. [`header`] describes the image, [`create`] writes
//! new ones.

pub mod create;
pub mod crypt;
pub mod header;

use std::rc::Rc;

use async_trait::async_trait;
use block::coroutine::CoMutex;
use block::crypto::block::CryptoBlock;
use block::driver::{
    BlockDriver, BlockLimits, BlockStatus, DriverClass, DriverInfo, PreallocMode, RequestFlags,
    StatusFlags,
};
use block::open::bdrv_open_backing;
use block::{BlkdbgEvent, BlockDriverState, Error, IoVector, Options, Result};

use crate::image_file::{read_backing, read_in_file, write_bytes};
use crate::qcow2::compress::{compress, decompress};
use crate::qcow2::header::CompressionType;
use crate::table_cache::TableCache;
use header::{Header, CRYPT_AES, HEADER_BYTES, MAGIC, VERSION};

/// The class registered as `qcow`.
pub static QCOW: DriverClass = DriverClass {
    format_name: "qcow",
    protocol_name: None,
    is_format: true,
    probe: Some(probe),
    open: |bs, options| Box::pin(open(bs, options)),
    create: Some(|filename, options| Box::pin(create::create(filename, options))),
    create_options: &create::CREATE_OPTIONS,
};

/// Scores 100 for a whole header with the magic and version 1 (qcow_probe).
fn probe(buf: &[u8], _filename: &str) -> u32 {
    if buf.len() >= HEADER_BYTES {
        let h = Header::parse(buf);
        if h.magic == MAGIC && h.version == VERSION {
            return 100;
        }
    }
    0
}

/// Table entry flag of a compressed cluster (QCOW_OFLAG_COMPRESSED).
const OFLAG_COMPRESSED: u64 = 1 << 63;
/// Longest backing file name (QEMU's buffer).
const MAX_BACKING_NAME: u32 = 1023;

/// The tables, under the driver's lock.
struct Tables {
    file: Rc<BlockDriverState>,
    l1_table: Vec<u64>,
    l1_table_offset: u64,
    /// Recently used L2 tables.
    l2_cache: TableCache,
    /// The last decompressed cluster: (table entry, data).
    cluster_cache: Option<(u64, Vec<u8>)>,
}

/// An open qcow image.
pub struct Qcow {
    tables: CoMutex<Tables>,
    cluster_bits: u32,
    l2_bits: u32,
    size: u64,
    backing: Option<String>,
    /// The image is encrypted.
    encrypted: bool,
    /// Its payload cipher, unless only metadata is looked at.
    crypto: Option<CryptoBlock>,
}

async fn open(bs: &BlockDriverState, options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let file = bs.file().expect("format nodes have a file child");
    let mut raw = read_in_file(&file, 0, HEADER_BYTES as u64).await?;
    raw.resize(HEADER_BYTES, 0);
    let h = Header::parse(&raw);
    let l1_size = h.validate()?;
    // Entries past the end of the file read as 0 without being allocated for.
    let raw_l1 = read_in_file(&file, h.l1_table_offset, l1_size * 8).await?;
    let mut l1_table: Vec<u64> = raw_l1
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
        .collect();
    l1_table.resize(l1_size as usize, 0);
    let backing = if h.backing_file_offset != 0 {
        if h.backing_file_size > MAX_BACKING_NAME {
            return Err(Error::invalid("Backing file name too long"));
        }
        let name = read_in_file(&file, h.backing_file_offset, h.backing_file_size as u64).await?;
        Some(String::from_utf8_lossy(&name).into_owned())
    } else {
        None
    };
    let encrypted = h.crypt_method == CRYPT_AES;
    let crypto = if encrypted {
        crypt::open(options, bs.open_flags().no_io)?
    } else {
        None
    };
    let backing_opt = options.take("backing");
    let backing_opts = options.extract_prefix("backing");
    if !bs.open_flags().no_backing && !matches!(backing_opt.as_deref(), Some("" | "null")) {
        if let Some(name) = backing_opt.or(backing.clone()) {
            let node = bdrv_open_backing(bs, &name, None, backing_opts).await?;
            bs.attach_child("backing", node);
        }
    }
    Ok(Box::new(Qcow {
        tables: CoMutex::new(Tables {
            file,
            l1_table,
            l1_table_offset: h.l1_table_offset,
            l2_cache: TableCache::default(),
            cluster_cache: None,
        }),
        cluster_bits: h.cluster_bits as u32,
        l2_bits: h.l2_bits as u32,
        size: h.size,
        backing,
        encrypted,
        crypto,
    }))
}

/// How a cluster is allocated when it has no entry yet (get_cluster_offset's `allocate`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Allocate {
    /// Only look.
    No,
    /// A whole new cluster.
    Cluster,
    /// Room for this many compressed bytes.
    Compressed(u64),
}

impl Qcow {
    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Where an L2 table starts for a guest offset, allocating an empty one at the end of
    /// the file when asked.
    async fn l2_offset(&self, t: &mut Tables, offset: u64, alloc: Allocate) -> Result<u64> {
        let l1_index = (offset >> (self.l2_bits + self.cluster_bits)) as usize;
        let l2_offset = *t
            .l1_table
            .get(l1_index)
            .ok_or(Error::from_errno(libc::EIO))?;
        if l2_offset != 0 || alloc == Allocate::No {
            return Ok(l2_offset);
        }
        let l2_offset = t.file.getlength().next_multiple_of(self.cluster_size());
        t.l1_table[l1_index] = l2_offset;
        write_bytes(
            &t.file,
            t.l1_table_offset + l1_index as u64 * 8,
            &l2_offset.to_be_bytes(),
        )
        .await?;
        t.file.co_flush().await?;
        let entries = 1usize << self.l2_bits;
        write_bytes(&t.file, l2_offset, &vec![0; entries * 8]).await?;
        t.file.co_flush().await?;
        t.l2_cache.insert(l2_offset, vec![0; entries]);
        Ok(l2_offset)
    }

    /// The L2 table at `l2_offset`, through the cache.
    async fn l2_table<'a>(&self, t: &'a mut Tables, l2_offset: u64) -> Result<&'a mut Vec<u64>> {
        if t.l2_cache.contains(l2_offset) {
            return Ok(t.l2_cache.get_mut(l2_offset).expect("cached"));
        }
        let entries = 1u64 << self.l2_bits;
        let raw = read_in_file(&t.file, l2_offset, entries * 8).await?;
        if raw.len() as u64 != entries * 8 {
            return Err(Error::from_errno(libc::EIO));
        }
        let table = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(t.l2_cache.insert(l2_offset, table))
    }

    /// The table entry of the cluster holding `offset`, allocating per `alloc`
    /// (get_cluster_offset): 0 when unallocated.
    async fn cluster_entry(&self, t: &mut Tables, offset: u64, alloc: Allocate) -> Result<u64> {
        let l2_offset = self.l2_offset(t, offset, alloc).await?;
        if l2_offset == 0 {
            return Ok(0);
        }
        let l2_index = ((offset >> self.cluster_bits) & ((1 << self.l2_bits) - 1)) as usize;
        let entry = self.l2_table(t, l2_offset).await?[l2_index];
        let replace = entry == 0 || (entry & OFLAG_COMPRESSED != 0 && alloc == Allocate::Cluster);
        if !replace || alloc == Allocate::No {
            return Ok(entry);
        }
        let end = t.file.getlength();
        let new = match alloc {
            Allocate::Cluster => {
                let at = end.next_multiple_of(self.cluster_size());
                // A compressed cluster being partly overwritten keeps the rest of its data.
                let mut data = if entry & OFLAG_COMPRESSED != 0 {
                    self.decompress_cluster(t, entry).await?
                } else {
                    vec![0; self.cluster_size() as usize]
                };
                // What the guest does not write must decrypt to zeroes.
                let start = (offset & !(self.cluster_size() - 1)) >> 9;
                self.encrypt(start, &mut data)?;
                write_bytes(&t.file, at, &data).await?;
                at
            }
            Allocate::Compressed(n) => end | OFLAG_COMPRESSED | n << (63 - self.cluster_bits),
            Allocate::No => unreachable!("returned above"),
        };
        write_bytes(&t.file, l2_offset + l2_index as u64 * 8, &new.to_be_bytes()).await?;
        t.file.co_flush().await?;
        self.l2_table(t, l2_offset).await?[l2_index] = new;
        Ok(new)
    }

    /// Encrypts data of an encrypted image in place, starting at guest sector `sector`.
    fn encrypt(&self, sector: u64, data: &mut [u8]) -> Result<()> {
        match (&self.crypto, self.encrypted) {
            (Some(crypto), _) => crypto.encrypt(sector, data),
            (None, true) => Err(Error::from_errno(libc::EACCES)),
            (None, false) => Ok(()),
        }
    }

    /// Inflates a compressed cluster, keeping the last one (decompress_cluster).
    async fn decompress_cluster(&self, t: &mut Tables, entry: u64) -> Result<Vec<u8>> {
        if let Some((cached, data)) = &t.cluster_cache {
            if *cached == entry {
                return Ok(data.clone());
            }
        }
        let mask = (1u64 << (63 - self.cluster_bits)) - 1;
        let size = (entry >> (63 - self.cluster_bits)) & (self.cluster_size() - 1);
        t.file.debug_event(BlkdbgEvent::ReadCompressed).await;
        let input = read_in_file(&t.file, entry & mask, size).await?;
        let data = decompress(CompressionType::Zlib, input, self.cluster_size() as usize)
            .await
            .map_err(|_| Error::from_errno(libc::EIO))?;
        t.cluster_cache = Some((entry, data.clone()));
        Ok(data)
    }

    /// Writes one cluster's worth compressed, or plainly when it does not shrink
    /// (qcow_co_pwritev_compressed).
    async fn write_compressed(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
    ) -> Result<()> {
        let cs = self.cluster_size();
        let n = qiov.len() as u64;
        if n != cs && (n > cs || offset + n != self.size.div_ceil(512) * 512) {
            return Err(Error::from_errno(libc::EINVAL));
        }
        let mut data = qiov.to_vec();
        data.resize(cs as usize, 0);
        let Some(deflated) = compress(CompressionType::Zlib, data).await else {
            return self.write(bs, offset, qiov).await;
        };
        let mut t = self.tables.lock().await;
        let entry = self
            .cluster_entry(&mut t, offset, Allocate::Compressed(deflated.len() as u64))
            .await?;
        if entry & OFLAG_COMPRESSED == 0 {
            return Err(Error::from_errno(libc::EIO));
        }
        let mask = (1u64 << (63 - self.cluster_bits)) - 1;
        t.file.debug_event(BlkdbgEvent::WriteCompressed).await;
        write_bytes(&t.file, entry & mask, &deflated).await
    }

    /// Plain writes, cluster by cluster (qcow_co_pwritev).
    async fn write(&self, _bs: &BlockDriverState, mut offset: u64, qiov: &IoVector) -> Result<()> {
        let cs = self.cluster_size();
        let mut t = self.tables.lock().await;
        let mut done = 0;
        while done < qiov.len() as u64 {
            let oic = offset % cs;
            let n = (qiov.len() as u64 - done).min(cs - oic);
            let entry = self
                .cluster_entry(&mut t, offset, Allocate::Cluster)
                .await?;
            if entry == 0 || entry & 511 != 0 {
                return Err(Error::from_errno(libc::EIO));
            }
            let part = qiov.slice(done as usize, n as usize);
            t.file.debug_event(BlkdbgEvent::WriteAio).await;
            if self.crypto.is_some() {
                let mut data = part.to_vec();
                self.encrypt(offset >> 9, &mut data)?;
                write_bytes(&t.file, entry + oic, &data).await?;
            } else {
                t.file
                    .co_pwritev(entry + oic, &part, RequestFlags::empty())
                    .await?;
            }
            done += n;
            offset += n;
        }
        Ok(())
    }
}

#[async_trait(?Send)]
impl BlockDriver for Qcow {
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        mut offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        let cs = self.cluster_size();
        let mut t = self.tables.lock().await;
        let mut done = 0;
        while done < qiov.len() as u64 {
            let oic = offset % cs;
            let n = (qiov.len() as u64 - done).min(cs - oic);
            let part = qiov.slice(done as usize, n as usize);
            let entry = self.cluster_entry(&mut t, offset, Allocate::No).await?;
            if entry == 0 {
                match bs.backing() {
                    Some(backing) => {
                        t.file.debug_event(BlkdbgEvent::ReadBackingAio).await;
                        read_backing(&backing, offset, &part).await?
                    }
                    None => part.fill(0, n as usize, 0),
                }
            } else if entry & OFLAG_COMPRESSED != 0 {
                let data = self.decompress_cluster(&mut t, entry).await?;
                part.copy_from_slice(0, &data[oic as usize..(oic + n) as usize]);
            } else if entry & 511 != 0 {
                return Err(Error::from_errno(libc::EIO));
            } else {
                t.file.debug_event(BlkdbgEvent::ReadAio).await;
                t.file
                    .co_preadv(entry + oic, &part, RequestFlags::empty())
                    .await?;
                if let Some(crypto) = &self.crypto {
                    let mut data = part.to_vec();
                    crypto.decrypt(offset >> 9, &mut data)?;
                    part.copy_from_slice(0, &data);
                }
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
        flags: RequestFlags,
    ) -> Result<()> {
        if flags.contains(RequestFlags::WRITE_COMPRESSED) {
            return self.write_compressed(bs, offset, qiov).await;
        }
        self.write(bs, offset, qiov).await
    }

    async fn co_block_status(
        &self,
        bs: &BlockDriverState,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        let cs = self.cluster_size();
        let entry = self
            .cluster_entry(&mut *self.tables.lock().await, offset, Allocate::No)
            .await?;
        let n = (cs - offset % cs).min(bytes);
        Ok(if entry == 0 {
            BlockStatus::new(StatusFlags::empty(), n)
        } else if entry & OFLAG_COMPRESSED != 0 {
            BlockStatus::new(StatusFlags::DATA | StatusFlags::COMPRESSED, n)
        } else if self.encrypted {
            // Encrypted data cannot be read from the file as it is: no mapping.
            BlockStatus::new(StatusFlags::DATA, n)
        } else {
            let mut st = BlockStatus::new(StatusFlags::DATA | StatusFlags::OFFSET_VALID, n);
            st.map = entry + offset % cs;
            st.file = bs.file();
            st
        })
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        Ok(self.size)
    }

    /// Guest requests are whole sectors (qcow_refresh_limits).
    fn refresh_limits(&self, bs: &BlockDriverState) -> BlockLimits {
        let mut limits = bs.file().map(|f| f.limits()).unwrap_or_default();
        limits.request_alignment = limits.request_alignment.max(512);
        limits
    }

    fn supported_write_flags(&self) -> RequestFlags {
        RequestFlags::WRITE_COMPRESSED
    }

    fn get_info(&self, _bs: &BlockDriverState) -> Result<DriverInfo> {
        Ok(DriverInfo {
            cluster_size: self.cluster_size(),
            ..DriverInfo::default()
        })
    }

    fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    fn backing_file_name(&self, _bs: &BlockDriverState) -> Option<(String, Option<String>)> {
        self.backing.clone().map(|b| (b, None))
    }

    /// Forgets every cluster: the L1 table is zeroed and the file cut after it
    /// (qcow_make_empty).
    async fn co_make_empty(&self, _bs: &BlockDriverState) -> Result<()> {
        let mut t = self.tables.lock().await;
        let l1_bytes = t.l1_table.len() as u64 * 8;
        t.l1_table.fill(0);
        write_bytes(&t.file, t.l1_table_offset, &vec![0; l1_bytes as usize]).await?;
        t.file.co_flush().await?;
        let end = t.l1_table_offset + l1_bytes;
        t.file.co_truncate(end, false, PreallocMode::Off).await?;
        t.l2_cache.clear();
        t.cluster_cache = None;
        Ok(())
    }

    fn has_zero_init(&self, _bs: &BlockDriverState) -> bool {
        true
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
