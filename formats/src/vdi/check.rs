//! Checking a VDI block map (QEMU's vdi_co_check in block/vdi.c).
//!
//! Every allocated entry must point inside the data area, no two entries may share a
//! block, and the header's allocated-block count must match the entries. QEMU repairs
//! nothing here, so neither does rqemu: `-r` is refused.

use std::collections::HashMap;

use block::driver::{CheckFix, CheckResult};
use block::{Error, Result};

use super::header::{is_allocated, Header};

/// Checks the map, reporting problems on stderr as QEMU does.
pub fn check(h: &Header, bmap: &[u32], fix: CheckFix) -> Result<CheckResult> {
    if fix != CheckFix::default() {
        return Err(Error::from_errno(libc::ENOTSUP));
    }
    let mut res = CheckResult::default();
    // Owner of each data block, keyed by block so the memory follows the map, not a
    // header field.
    let mut owner: HashMap<u32, u32> = HashMap::new();
    let mut allocated: u32 = 0;
    for (block, &entry) in bmap.iter().enumerate() {
        if !is_allocated(entry) {
            continue;
        }
        if entry >= h.blocks_in_image {
            eprintln!("ERROR: block index {block} too large, is {entry}");
            res.corruptions += 1;
            continue;
        }
        allocated += 1;
        if let Some(first) = owner.insert(entry, block as u32) {
            eprintln!("ERROR: block index {first} also used by {block}");
            res.corruptions += 1;
        }
    }
    let missing = h.blocks_in_image as usize - bmap.len().min(h.blocks_in_image as usize);
    if missing > 0 {
        eprintln!("ERROR: block map has {missing} entries past the end of the image file");
        res.corruptions += 1;
    }
    if allocated != h.blocks_allocated {
        eprintln!(
            "ERROR: allocated blocks mismatch, is {allocated}, should be {}",
            h.blocks_allocated
        );
        res.corruptions += 1;
    }
    Ok(res)
}
