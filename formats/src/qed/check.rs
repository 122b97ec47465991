//! The QED consistency check (QEMU's block/qed-check.c).
//!
//! With no reference counts, the check rebuilds the set of used clusters by walking the
//! tables: an entry pointing outside the file is a corruption, which repair clears; a
//! cluster referenced twice is a corruption repair cannot undo; a cluster of the file that
//! nothing references is a leak, harmless but reported. An image that passes, or whose
//! corruptions were all repaired, loses its need-check bit.

use std::collections::BTreeMap;

use block::driver::{CheckFix, CheckResult};
use block::Result;

use super::header::F_NEED_CHECK;
use super::table::{Tables, ZERO_CLUSTER};

/// Clusters per chunk of the [`Used`] bitmap.
const CHUNK_CLUSTERS: u64 = 512;

/// Which clusters of the file the tables reference: a bitmap kept in chunks of 512
/// clusters, made only where a table points, so that its memory follows the tables read,
/// never the file's length (a sparse file may claim any).
struct Used {
    chunks: BTreeMap<u64, [u64; (CHUNK_CLUSTERS / 64) as usize]>,
    marked: u64,
    nclusters: u64,
    cluster_size: u64,
}

impl Used {
    fn new(file_len: u64, cluster_size: u64) -> Self {
        // QEMU's count of the file's clusters (qed_bytes_to_clusters on the length rounded
        // down to a cluster) divides by cluster_size - 1: one cluster too many per 4095 of
        // 4 KiB, which its leak count includes, and so does ours.
        let whole = file_len - file_len % cluster_size;
        Used {
            chunks: BTreeMap::new(),
            marked: 0,
            nclusters: whole / (cluster_size - 1),
            cluster_size,
        }
    }

    /// Marks `n` clusters from `offset`; false when one was already marked
    /// (qed_set_used_clusters). Clusters past the end of the file are not counted.
    fn mark(&mut self, offset: u64, n: u64, res: &mut CheckResult) -> bool {
        let first = offset / self.cluster_size;
        let end = first.saturating_add(n).min(self.nclusters);
        let mut twice = 0;
        for c in first..end {
            let chunk = self.chunks.entry(c / CHUNK_CLUSTERS).or_default();
            let word = &mut chunk[(c % CHUNK_CLUSTERS / 64) as usize];
            let bit = 1u64 << (c % 64);
            if *word & bit != 0 {
                twice += 1;
            } else {
                *word |= bit;
                self.marked += 1;
            }
        }
        res.corruptions += twice;
        twice == 0
    }

    /// Clusters of the file nothing references.
    fn unused(&self) -> u64 {
        self.nclusters - self.marked
    }
}

/// Counts an invalid entry: cleared when repairing, else a corruption.
fn invalid(entry: &mut u64, fix: bool, res: &mut CheckResult) {
    if fix {
        *entry = 0;
        res.corruptions_fixed += 1;
    } else {
        res.corruptions += 1;
    }
}

/// Checks one L2 table's entries, returning how many were invalid (qed_check_l2_table).
fn check_l2(
    t: &Tables,
    table: &mut [u64],
    used: &mut Used,
    fix: bool,
    res: &mut CheckResult,
) -> u64 {
    let file_len = t.file.getlength();
    let cs = t.header.cluster_size as u64;
    let mut last: u64 = 0;
    let mut bad = 0;
    for entry in table.iter_mut().filter(|e| **e > ZERO_CLUSTER) {
        res.allocated_clusters += 1;
        // Entries come from the file: QEMU compares them in wrapping u64 arithmetic.
        if last != 0 && last.wrapping_add(cs) != *entry {
            res.fragmented_clusters += 1;
        }
        last = *entry;
        if !t.header.cluster_offset_valid(*entry, file_len) {
            invalid(entry, fix, res);
            bad += 1;
            continue;
        }
        used.mark(*entry, 1, res);
    }
    bad
}

/// Checks (and with `fix`, repairs) the image (qed_check).
pub async fn check(t: &mut Tables, fix: CheckFix) -> Result<CheckResult> {
    let fix = fix.errors;
    let file_len = t.file.getlength();
    let cs = t.header.cluster_size as u64;
    let mut res = CheckResult {
        total_clusters: t.header.image_size.div_ceil(cs),
        ..CheckResult::default()
    };
    let mut used = Used::new(file_len, cs);
    let table_size = t.header.table_size as u64;
    used.mark(0, t.header.header_size as u64, &mut res);
    used.mark(t.header.l1_table_offset, table_size, &mut res);
    let mut l1 = t.l1.clone();
    let mut l1_bad = 0;
    for entry in l1.iter_mut().filter(|e| **e != 0) {
        if !t.header.table_offset_valid(*entry, file_len) {
            invalid(entry, fix, &mut res);
            l1_bad += 1;
            continue;
        }
        if !used.mark(*entry, table_size, &mut res) {
            continue;
        }
        let mut table = match t.read_table(*entry).await {
            Ok(table) => table,
            Err(_) => {
                res.check_errors += 1;
                continue;
            }
        };
        if check_l2(t, &mut table, &mut used, fix, &mut res) > 0 && fix {
            t.write_table(*entry, &table).await?;
        }
    }
    if l1_bad > 0 && fix {
        let at = t.header.l1_table_offset;
        t.write_table(at, &l1).await?;
        t.l1 = l1;
    }
    res.leaks = used.unused();
    if fix && res.corruptions == 0 && res.check_errors == 0 && t.header.features & F_NEED_CHECK != 0
    {
        t.file.co_flush().await?;
        t.header.features &= !F_NEED_CHECK;
        t.write_header().await?;
    }
    Ok(res)
}
