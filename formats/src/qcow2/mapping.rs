//! Address translation: where the bytes of a guest range live (QEMU's
//! qcow2_get_host_offset in block/qcow2-cluster.c).
//!
//! A lookup walks L1 -> L2 for the first subcluster of a range, then extends the answer over
//! the following subclusters of the same L2 table as long as they have the same type and, for
//! data, the next host offset. Callers loop until their range is covered.

use block::Result;

use super::cache::Which;
use super::l2::{get_entry, subcluster_type, SubclusterType, L2E_OFFSET_MASK};
use super::state::{c_hex, Meta};

/// Where a guest range lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Not in this image: the backing file, or zeroes without one.
    Unallocated,
    /// Reads as zeroes.
    Zero,
    /// Reads as zeroes, with a preallocated host cluster at this offset (including the
    /// offset within the cluster).
    ZeroAlloc(u64),
    /// Data at this host offset (already including the offset within the cluster).
    Data(u64),
    /// A compressed cluster with this L2 entry.
    Compressed(u64),
}

impl Meta {
    /// Translates the start of `offset..offset+bytes` and says for how many bytes the answer
    /// holds (at least one subcluster's remainder, at most `bytes`).
    pub async fn get_host_offset(&mut self, offset: u64, bytes: u64) -> Result<(Mapping, u64)> {
        let g = self.g;
        let sc_size = g.subcluster_size();
        // The rest of the range covered by this L2 table.
        let table_span = g.l2_size << g.cluster_bits;
        let table_end = (offset / table_span + 1) * table_span;
        let limit = bytes.min(table_end - offset);
        let l2_offset = self.l2_offset_for(offset).await?;
        if l2_offset == 0 {
            return Ok((Mapping::Unallocated, limit));
        }
        self.caches.load(Which::L2, l2_offset).await?;
        let first_index = g.l2_index(offset);
        let (entry, bitmap) = get_entry(&g, self.caches.table(Which::L2, l2_offset), first_index);
        let first_type = subcluster_type(&g, entry, bitmap, g.sc_index(offset));
        let host = entry & L2E_OFFSET_MASK;
        let mapping = match first_type {
            SubclusterType::Invalid => {
                return Err(self
                    .signal_corruption(format!(
                        "Invalid cluster entry found (L2 offset: {}, L2 index: {})",
                        c_hex(l2_offset),
                        c_hex(first_index as u64)
                    ))
                    .await)
            }
            SubclusterType::Unallocated | SubclusterType::UnallocatedAlloc => Mapping::Unallocated,
            SubclusterType::ZeroPlain => Mapping::Zero,
            SubclusterType::ZeroAlloc if host & (g.cluster_size - 1) != 0 => {
                return Err(self
                    .signal_corruption(format!(
                        "Preallocated zero cluster offset {} unaligned (guest offset: {})",
                        c_hex(host),
                        c_hex(g.cluster_start(offset)),
                    ))
                    .await)
            }
            SubclusterType::ZeroAlloc => Mapping::ZeroAlloc(host + g.in_cluster(offset)),
            SubclusterType::Compressed if self.data.is_external() => {
                return Err(self
                    .signal_corruption(format!(
                        "Compressed cluster entry found in image with external data file (L2 offset: {}, L2 index: {})",
                        c_hex(l2_offset),
                        c_hex(first_index as u64)
                    ))
                    .await)
            }
            SubclusterType::Compressed => {
                let end = (g.cluster_start(offset) + g.cluster_size - offset).min(limit);
                return Ok((Mapping::Compressed(entry), end));
            }
            SubclusterType::Normal => {
                if host & (g.cluster_size - 1) != 0 {
                    return Err(self
                        .signal_corruption(format!(
                            "Cluster allocation offset {} unaligned (L2 offset: {}, L2 index: {})",
                            c_hex(host),
                            c_hex(l2_offset),
                            c_hex(first_index as u64)
                        ))
                        .await);
                }
                Mapping::Data(host + g.in_cluster(offset))
            }
        };
        // Extend over following subclusters of the same kind.
        let mut covered = (offset | (sc_size - 1)) + 1 - offset;
        let table = self.caches.table(Which::L2, l2_offset);
        while covered < limit {
            let next = offset + covered;
            let (e, b) = get_entry(&g, table, g.l2_index(next));
            let t = subcluster_type(&g, e, b, g.sc_index(next));
            let same = match mapping {
                Mapping::Unallocated => matches!(
                    t,
                    SubclusterType::Unallocated | SubclusterType::UnallocatedAlloc
                ),
                Mapping::Zero => t == SubclusterType::ZeroPlain,
                Mapping::ZeroAlloc(h) => {
                    t == SubclusterType::ZeroAlloc
                        && (e & L2E_OFFSET_MASK) + g.in_cluster(next) == h + covered
                }
                Mapping::Data(h) => {
                    t == SubclusterType::Normal
                        && (e & L2E_OFFSET_MASK) + g.in_cluster(next) == h + covered
                }
                Mapping::Compressed(_) => false,
            };
            if !same {
                break;
            }
            covered += sc_size;
        }
        Ok((mapping, covered.min(limit)))
    }
}
