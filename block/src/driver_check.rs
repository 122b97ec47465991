//! The outcome of a consistency check, what `BlockDriver::co_check` returns (QEMU's
//! BdrvCheckResult and BlockFragInfo in include/block/block-common.h).

/// The outcome of a consistency check (QEMU's BdrvCheckResult + BlockFragInfo).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckResult {
    /// Errors that make the image unsafe to use.
    pub corruptions: u64,
    /// Clusters allocated but not referenced.
    pub leaks: u64,
    /// Errors that prevented checking parts of the image.
    pub check_errors: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// Offset of the end of the image's used data, 0 if unknown.
    pub image_end_offset: u64,
    /// Clusters in the virtual disk.
    pub total_clusters: u64,
    /// Clusters allocated.
    pub allocated_clusters: u64,
    /// Allocated clusters not contiguous with their predecessor.
    pub fragmented_clusters: u64,
    /// Compressed clusters.
    pub compressed_clusters: u64,
}
