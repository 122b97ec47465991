//! The QED consistency check (QEMU's block/qed-check.c).
//!
//! With no reference counts, the check rebuilds the set of used clusters by walking the
//! tables: an entry pointing outside the file is a corruption, which repair clears; a
//! cluster referenced twice is a corruption repair cannot undo; a cluster of the file that
//! nothing references is a leak, harmless but reported. An image that passes, or whose
//! corruptions were all repaired, loses its need-check bit.

use block::driver::{CheckFix, CheckResult};
use block::Result;

use super::header::F_NEED_CHECK;
use super::table::{Tables, ZERO_CLUSTER};

/// Which clusters of the file the tables reference; its size follows the file's, never a
/// header field.
struct Used {
    bits: Vec<bool>,
    cluster_size: u64,
}

impl Used {
    /// Marks `n` clusters from `offset`; false when one was already marked
    /// (qed_set_used_clusters).
    fn mark(&mut self, offset: u64, n: u64, res: &mut CheckResult) -> bool {
        let first = offset / self.cluster_size;
        let mut twice = 0;
        for c in first..first + n {
            match self.bits.get_mut(c as usize) {
                Some(bit) if *bit => twice += 1,
                Some(bit) => *bit = true,
                None => {}
            }
        }
        res.corruptions += twice;
        twice == 0
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
    let mut used = Used {
        bits: vec![false; file_len.div_ceil(cs) as usize],
        cluster_size: cs,
    };
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
    res.leaks = used.bits.iter().filter(|b| !**b).count() as u64;
    if fix && res.corruptions == 0 && res.check_errors == 0 && t.header.features & F_NEED_CHECK != 0
    {
        t.file.co_flush().await?;
        t.header.features &= !F_NEED_CHECK;
        t.write_header().await?;
    }
    Ok(res)
}
