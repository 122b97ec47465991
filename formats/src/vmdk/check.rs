//! `qemu-img check` for VMDK: every grain the tables map must lie inside its extent file
//! (vmdk_co_check in QEMU's block/vmdk.c). Nothing is repaired.

use block::driver::CheckResult;
use block::Result;

use super::extent::{Extent, Lookup};
use super::find_extent;

/// Walks the guest disk grain by grain; the first problem is reported on stderr and
/// counted as a corruption, and the walk stops there, as QEMU's does.
pub async fn check(extents: &mut [Extent], total_sectors: u64) -> Result<CheckResult> {
    let mut result = CheckResult::default();
    let mut sector = 0;
    let mut i = 0;
    while sector < total_sectors {
        let Some(found) = find_extent(extents, sector, i) else {
            eprintln!("ERROR: could not find extent for sector {sector}");
            result.corruptions += 1;
            return Ok(result);
        };
        i = found;
        let e = &mut extents[i];
        match e.lookup(sector << 9).await.0 {
            Lookup::Error => {
                eprintln!("ERROR: could not get cluster_offset for sector {sector}");
                result.corruptions += 1;
                return Ok(result);
            }
            Lookup::Data(host) if host >= e.file.getlength() => {
                eprintln!("ERROR: cluster offset for sector {sector} points after EOF");
                result.corruptions += 1;
                return Ok(result);
            }
            _ => {}
        }
        sector += e.cluster_sectors;
    }
    Ok(result)
}
