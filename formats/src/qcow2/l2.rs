//! L1 and L2 entries: the bit layout of the two-level table that maps guest clusters to host
//! clusters, and the cluster and subcluster types an entry describes (qcow2.txt "Cluster
//! mapping", "Extended L2 Entries"; QEMU's qcow2.h: qcow2_get_cluster_type,
//! qcow2_get_subcluster_type).
//!
//! [`Geometry`] holds the sizes every other module derives addresses from, computed once from
//! the header so that no module recomputes shifts and masks by itself.

use super::header::Header;

/// L1 entry bits 9..55: offset of the L2 table.
pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1 entry reserved bits (must be zero).
pub const L1E_RESERVED_MASK: u64 = 0x7f00_0000_0000_01ff;
/// L2 entry bits 9..55: offset of a standard cluster.
pub const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Reserved bits of a standard L2 entry.
pub const L2E_STD_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;
/// The refcount of the cluster is exactly one: it may be written in place.
pub const OFLAG_COPIED: u64 = 1 << 63;
/// The cluster is compressed.
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// The cluster reads as zeroes (v3, without extended L2).
pub const OFLAG_ZERO: u64 = 1;
/// Subcluster bitmap with every subcluster reading as zero.
pub const BITMAP_ALL_ZEROES: u64 = 0xffff_ffff << 32;

/// What a whole L2 entry describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterType {
    /// Not allocated here: read from the backing file or as zeroes.
    Unallocated,
    /// Reads as zeroes, no host cluster.
    ZeroPlain,
    /// Reads as zeroes, but keeps a preallocated host cluster.
    ZeroAlloc,
    /// Data in a host cluster.
    Normal,
    /// Compressed data.
    Compressed,
}

/// What one subcluster of an entry describes (without extended L2 a cluster is one
/// subcluster).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubclusterType {
    /// Go to the backing file (or zeroes); the cluster has no host offset.
    Unallocated,
    /// Go to the backing file; the cluster has a host offset used by other subclusters.
    UnallocatedAlloc,
    /// Zero, no host offset.
    ZeroPlain,
    /// Zero, host offset present.
    ZeroAlloc,
    /// Data at the host offset.
    Normal,
    /// Compressed cluster.
    Compressed,
    /// The entry breaks the spec (both bitmap bits set, or bits on a compressed entry).
    Invalid,
}

/// Sizes and shifts of one image.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// log2 cluster size.
    pub cluster_bits: u32,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// log2 entries per L2 table.
    pub l2_bits: u32,
    /// Entries per L2 table.
    pub l2_size: u64,
    /// Whether entries are 128-bit with subclusters.
    pub extended: bool,
    /// log2 subcluster size (== cluster_bits without extended L2).
    pub subcluster_bits: u32,
    /// Subclusters per cluster (32 or 1).
    pub subclusters: u32,
    /// Shift of the compressed sector count.
    pub csize_shift: u32,
    /// Mask of the compressed sector count after shifting.
    pub csize_mask: u64,
    /// Mask of the compressed host offset.
    pub coffset_mask: u64,
    /// log2 refcount width.
    pub refcount_order: u32,
    /// log2 refcount entries per refcount block.
    pub refblock_bits: u32,
    /// Whether the image is version 3.
    pub v3: bool,
    /// Whether guest data lives in an external data file, where host offset 0 is valid.
    pub external_data: bool,
}

impl Geometry {
    /// The geometry a header describes.
    pub fn new(h: &Header) -> Geometry {
        let extended = h.extended_l2();
        let entry_bits = if extended { 4 } else { 3 };
        let l2_bits = h.cluster_bits - entry_bits;
        let subclusters = if extended { 32 } else { 1 };
        let csize_shift = 62 - (h.cluster_bits - 8);
        Geometry {
            cluster_bits: h.cluster_bits,
            cluster_size: 1 << h.cluster_bits,
            l2_bits,
            l2_size: 1 << l2_bits,
            extended,
            subcluster_bits: h.cluster_bits - if extended { 5 } else { 0 },
            subclusters,
            csize_shift,
            csize_mask: (1 << (h.cluster_bits - 8)) - 1,
            coffset_mask: (1 << csize_shift) - 1,
            refcount_order: h.refcount_order,
            refblock_bits: h.cluster_bits + 3 - h.refcount_order,
            v3: h.version >= 3,
            external_data: h.incompatible_features & super::header::INCOMPAT_DATA_FILE != 0,
        }
    }

    /// Subcluster size in bytes.
    pub fn subcluster_size(&self) -> u64 {
        1 << self.subcluster_bits
    }

    /// Bytes of one L2 entry.
    pub fn l2_entry_bytes(&self) -> usize {
        if self.extended {
            16
        } else {
            8
        }
    }

    /// Index into the L1 table of a guest offset.
    pub fn l1_index(&self, guest: u64) -> u64 {
        guest >> (self.cluster_bits + self.l2_bits)
    }

    /// Index into its L2 table of a guest offset.
    pub fn l2_index(&self, guest: u64) -> usize {
        ((guest >> self.cluster_bits) & (self.l2_size - 1)) as usize
    }

    /// Offset within its cluster.
    pub fn in_cluster(&self, offset: u64) -> u64 {
        offset & (self.cluster_size - 1)
    }

    /// Rounds down to a cluster boundary.
    pub fn cluster_start(&self, offset: u64) -> u64 {
        offset & !(self.cluster_size - 1)
    }

    /// Index of the subcluster containing `offset` within its cluster.
    pub fn sc_index(&self, offset: u64) -> u32 {
        (self.in_cluster(offset) >> self.subcluster_bits) as u32
    }

    /// Host offset and byte length of a compressed cluster's data.
    pub fn compressed_range(&self, entry: u64) -> (u64, u64) {
        let offset = entry & self.coffset_mask;
        let sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1;
        (offset, sectors * 512 - (offset & 511))
    }

    /// Builds a compressed descriptor for `len` bytes at host `offset`.
    pub fn compressed_entry(&self, offset: u64, len: u64) -> u64 {
        let last_sector = (offset + len - 1) / 512;
        let sectors = last_sector - offset / 512;
        OFLAG_COMPRESSED | (sectors << self.csize_shift) | offset
    }
}

/// The type of an L2 entry (qcow2_get_cluster_type).
pub fn cluster_type(g: &Geometry, entry: u64) -> ClusterType {
    if entry & OFLAG_COMPRESSED != 0 {
        ClusterType::Compressed
    } else if entry & OFLAG_ZERO != 0 && !g.extended {
        if entry & L2E_OFFSET_MASK != 0 {
            ClusterType::ZeroAlloc
        } else {
            ClusterType::ZeroPlain
        }
    } else if entry & L2E_OFFSET_MASK == 0 {
        // In a data file offset 0 is a cluster like any other; its entry, like every data
        // file cluster's, has the "copied" flag, which an unallocated entry never has.
        if g.external_data && entry & OFLAG_COPIED != 0 {
            ClusterType::Normal
        } else {
            ClusterType::Unallocated
        }
    } else {
        ClusterType::Normal
    }
}

/// The type of subcluster `sc` of an entry with its bitmap (qcow2_get_subcluster_type).
pub fn subcluster_type(g: &Geometry, entry: u64, bitmap: u64, sc: u32) -> SubclusterType {
    let ctype = cluster_type(g, entry);
    if !g.extended {
        return match ctype {
            ClusterType::Unallocated => SubclusterType::Unallocated,
            ClusterType::ZeroPlain => SubclusterType::ZeroPlain,
            ClusterType::ZeroAlloc => SubclusterType::ZeroAlloc,
            ClusterType::Normal => SubclusterType::Normal,
            ClusterType::Compressed => SubclusterType::Compressed,
        };
    }
    let alloc = bitmap & (1 << sc) != 0;
    let zero = bitmap & (1 << (sc + 32)) != 0;
    match ctype {
        ClusterType::Compressed if bitmap != 0 => SubclusterType::Invalid,
        ClusterType::Compressed => SubclusterType::Compressed,
        _ if alloc && zero => SubclusterType::Invalid,
        ClusterType::Normal if zero => SubclusterType::ZeroAlloc,
        ClusterType::Normal if alloc => SubclusterType::Normal,
        ClusterType::Normal => SubclusterType::UnallocatedAlloc,
        _ if alloc => SubclusterType::Invalid,
        _ if zero => SubclusterType::ZeroPlain,
        _ => SubclusterType::Unallocated,
    }
}

/// Reads entry `i` (and its bitmap with extended L2) from an L2 table.
pub fn get_entry(g: &Geometry, table: &[u8], i: usize) -> (u64, u64) {
    let at = i * g.l2_entry_bytes();
    let entry = u64::from_be_bytes(table[at..at + 8].try_into().unwrap());
    let bitmap = if g.extended {
        u64::from_be_bytes(table[at + 8..at + 16].try_into().unwrap())
    } else {
        0
    };
    (entry, bitmap)
}

/// Stores entry `i` (and its bitmap with extended L2) into an L2 table.
pub fn set_entry(g: &Geometry, table: &mut [u8], i: usize, entry: u64, bitmap: u64) {
    let at = i * g.l2_entry_bytes();
    table[at..at + 8].copy_from_slice(&entry.to_be_bytes());
    if g.extended {
        table[at + 8..at + 16].copy_from_slice(&bitmap.to_be_bytes());
    }
}

/// Mask of subclusters `first..first+count` in the allocation half of a bitmap.
pub fn sc_mask(first: u32, count: u32) -> u64 {
    if count == 0 {
        return 0;
    }
    let ones = if count >= 32 {
        0xffff_ffff
    } else {
        (1u64 << count) - 1
    };
    ones << first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(bits: u32, extended: bool) -> Geometry {
        let mut h = Header::new(3, bits, 1 << 30);
        if extended {
            h.incompatible_features |= super::super::header::INCOMPAT_EXTL2;
        }
        Geometry::new(&h)
    }

    #[test]
    fn compressed_descriptor_round_trips() {
        let g = geometry(16, false);
        let e = g.compressed_entry(0x12345, 1000);
        assert_eq!(cluster_type(&g, e), ClusterType::Compressed);
        let (off, len) = g.compressed_range(e);
        assert_eq!(off, 0x12345);
        assert!((1000..1000 + 512).contains(&len));
    }

    #[test]
    fn subcluster_types_follow_the_bitmap() {
        let g = geometry(16, true);
        let e = 0x50000;
        assert_eq!(subcluster_type(&g, e, 1, 0), SubclusterType::Normal);
        assert_eq!(
            subcluster_type(&g, e, 1, 1),
            SubclusterType::UnallocatedAlloc
        );
        assert_eq!(
            subcluster_type(&g, e, 1 << 33, 1),
            SubclusterType::ZeroAlloc
        );
        assert_eq!(
            subcluster_type(&g, 0, 1 << 33, 1),
            SubclusterType::ZeroPlain
        );
        assert_eq!(subcluster_type(&g, 0, 1, 0), SubclusterType::Invalid);
        assert_eq!(sc_mask(30, 2), 0xc000_0000);
        assert_eq!(sc_mask(0, 32), 0xffff_ffff);
    }
}
