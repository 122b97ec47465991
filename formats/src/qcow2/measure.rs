//! Measuring how large a qcow2 file would be (QEMU's qcow2_measure and
//! qcow2_calc_prealloc_size in block/qcow2.c, qcow2_refcount_metadata_size in
//! block/qcow2-refcount.c).
//!
//! The answer is pure geometry: a fully allocated image holds the header cluster, one L2
//! entry per data cluster (whole L2 tables), one L1 entry per L2 table (whole clusters of
//! them), the data, and enough refcount blocks and refcount table clusters to count all of
//! that and themselves. The "required" size keeps all that metadata but only the data
//! clusters the input really has.

use block::driver::{PreallocMode, StatusFlags};
use block::{BlockDriverState, Error, Options, Result};

use super::bitmaps::persistent_dirty_bitmap_size;
use super::header::{MAX_CLUSTER_BITS, MAX_L1_BYTES, MIN_CLUSTER_BITS};

/// What a measurement answers (QEMU's BlockMeasureInfo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measurement {
    /// Bytes needed for the data the input has, plus all metadata.
    pub required: u64,
    /// Bytes a fully allocated image needs.
    pub fully_allocated: u64,
    /// Bytes for persistent bitmaps, when both input and output could hold them.
    pub bitmaps: Option<u64>,
}

/// The creation options that shape the metadata.
struct Shape {
    cluster_size: u64,
    refcount_order: u32,
    extended_l2: bool,
    version: u32,
}

/// Checks a cluster size the way creation does (validate_cluster_size).
pub fn validate_cluster_size(cluster_size: u64, extended_l2: bool) -> Result<()> {
    let bits = cluster_size.trailing_zeros();
    if !cluster_size.is_power_of_two() || !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
        return Err(Error::invalid(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    if extended_l2 && cluster_size < 16384 {
        return Err(Error::invalid(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ));
    }
    Ok(())
}

/// Reads the shaping options in QEMU's order, so the first bad one is the one reported.
fn take_shape(opts: &mut Options) -> Result<Shape> {
    let extended_l2 = opts.take_bool("extended_l2")?.unwrap_or(false);
    let cluster_size = opts.take_size("cluster_size")?.unwrap_or(65536);
    validate_cluster_size(cluster_size, extended_l2)?;
    let version = match opts.take("compat").as_deref() {
        None | Some("1.1") => 3,
        Some("0.10") => 2,
        Some(other) => {
            return Err(Error::invalid(format!(
                "Invalid compatibility level: '{other}'"
            )))
        }
    };
    let refcount_bits = opts.take_u64("refcount_bits")?.unwrap_or(16);
    if !refcount_bits.is_power_of_two() || refcount_bits > 64 {
        return Err(Error::invalid(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    if version < 3 && refcount_bits != 16 {
        return Err(Error::invalid(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
        ));
    }
    Ok(Shape {
        cluster_size,
        refcount_order: refcount_bits.trailing_zeros(),
        extended_l2,
        version,
    })
}

/// Bytes of refcount blocks and table needed to count `clusters` clusters and themselves:
/// the fixed point of "blocks for everything, table for the blocks".
pub fn refcount_metadata_size(clusters: u64, cluster_size: u64, refcount_order: u32) -> u64 {
    let blocks_per_table_cluster = cluster_size / 8;
    let refcounts_per_block = (cluster_size * 8) >> refcount_order;
    let (mut table, mut blocks, mut total) = (0u64, 0u64, 0u64);
    loop {
        let last = total;
        blocks = (clusters + table + blocks).div_ceil(refcounts_per_block);
        table = blocks.div_ceil(blocks_per_table_cluster);
        total = clusters + blocks + table;
        if total == last {
            return (blocks + table) * cluster_size;
        }
    }
}

/// Bytes of a fully allocated image of `size` bytes (qcow2_calc_prealloc_size).
fn prealloc_size(size: u64, s: &Shape) -> u64 {
    let cs = s.cluster_size;
    let entry_bytes = if s.extended_l2 { 16 } else { 8 };
    let data = size.div_ceil(cs) * cs;
    let mut meta = cs;
    let l2_entries = (data / cs).div_ceil(cs / entry_bytes) * (cs / entry_bytes);
    meta += l2_entries * entry_bytes;
    let l1_entries = (l2_entries * entry_bytes / cs).div_ceil(cs / 8) * (cs / 8);
    meta += l1_entries * 8;
    meta += refcount_metadata_size((meta + data) / cs, cs, s.refcount_order);
    meta + data
}

/// Bytes of whole clusters that hold data in `input`, through its backing chain; ranges
/// that read as zeroes need none.
async fn allocated_bytes(input: &BlockDriverState, cluster_size: u64) -> Result<u64> {
    let size = input.getlength();
    let (mut offset, mut required) = (0u64, 0u64);
    while offset < size {
        let (status, _) = input
            .co_block_status_above(None, true, offset, size - offset)
            .await
            .map_err(|e| e.context("Unable to get block status: "))?;
        let mut pnum = status.bytes.max(1);
        let data = StatusFlags::DATA | StatusFlags::ALLOCATED;
        if !status.flags.contains(StatusFlags::ZERO) && status.flags.contains(data) {
            // Count through the end of the cluster, and continue after it.
            pnum = (offset + pnum).div_ceil(cluster_size) * cluster_size - offset;
            required += offset % cluster_size + pnum;
        }
        offset += pnum;
    }
    Ok(required)
}

/// Measures an image of the options `opts` (creation options, `size` included), converted
/// from `input` when given (qcow2_measure).
pub async fn measure(opts: &mut Options, input: Option<&BlockDriverState>) -> Result<Measurement> {
    let shape = take_shape(opts)?;
    let prealloc = match opts.take("preallocation") {
        Some(p) => PreallocMode::parse(&p)
            .map_err(|_| Error::invalid(format!("invalid parameter value: {p}")))?,
        None => PreallocMode::Off,
    };
    let has_backing_file = opts.take("backing_file").is_some();
    let cs = shape.cluster_size;
    let mut virtual_size = opts.take_size("size")?.unwrap_or(0).div_ceil(cs) * cs;
    let l2_tables = (virtual_size / cs).div_ceil(cs / 8);
    if l2_tables * 8 > MAX_L1_BYTES {
        return Err(Error::invalid(
            "The image size is too large (try using a larger cluster size)",
        ));
    }
    let mut required = 0;
    if let Some(bs) = input {
        virtual_size = bs.getlength().div_ceil(cs) * cs;
        required = if has_backing_file {
            // The new backing file may share nothing with the input: count everything.
            virtual_size
        } else {
            allocated_bytes(bs, cs).await?
        };
    }
    if matches!(prealloc, PreallocMode::Full | PreallocMode::Falloc) {
        required = virtual_size;
    }
    let fully_allocated = prealloc_size(virtual_size, &shape);
    // Bitmaps count only when both sides could hold them.
    let bitmaps = match input {
        Some(bs) if shape.version >= 3 && bs.supports_persistent_dirty_bitmap() => {
            Some(persistent_dirty_bitmap_size(bs, cs))
        }
        _ => None,
    };
    Ok(Measurement {
        required: fully_allocated - virtual_size + required,
        fully_allocated,
        bitmaps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure_new(opts: &[(&str, &str)]) -> Result<Measurement> {
        let mut o = Options::new();
        for (k, v) in opts {
            o.set(k, *v);
        }
        futures_lite::future::block_on(measure(&mut o, None))
    }

    /// Figures `qemu-img measure -O qcow2 --size N` prints.
    #[test]
    fn new_images_match_qemu() {
        let m = measure_new(&[("size", "1073741824")]).unwrap();
        assert_eq!((m.required, m.fully_allocated), (393216, 1074135040));
        let m = measure_new(&[("size", "1")]).unwrap();
        assert_eq!((m.required, m.fully_allocated), (327680, 393216));
        let m = measure_new(&[("size", "0")]).unwrap();
        assert_eq!((m.required, m.fully_allocated), (196608, 196608));
        let m = measure_new(&[
            ("size", "1073741824"),
            ("refcount_bits", "64"),
            ("cluster_size", "512"),
        ])
        .unwrap();
        assert_eq!((m.required, m.fully_allocated), (34629120, 1108370944));
        let m = measure_new(&[("size", "1073741824"), ("preallocation", "full")]).unwrap();
        assert_eq!(m.required, m.fully_allocated);
        assert_eq!(m.bitmaps, None);
    }

    #[test]
    fn refusals_use_qemu_messages() {
        let err = |opts: &[(&str, &str)]| measure_new(opts).unwrap_err().to_string();
        assert!(err(&[("size", "1099511627776"), ("cluster_size", "512")])
            .contains("The image size is too large"));
        assert!(err(&[("compat", "0.10"), ("refcount_bits", "1")])
            .contains("use compat=1.1 or greater"));
        assert!(err(&[("extended_l2", "on"), ("cluster_size", "4096")])
            .contains("at least 16384 bytes"));
    }
}
