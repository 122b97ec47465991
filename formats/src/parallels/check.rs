//! The Parallels consistency check and repair (QEMU's parallels_co_check and the
//! parallels_check_* helpers in block/parallels.c).
//!
//! The format has no journal: a writer sets the in-use flag while the image is open, and
//! an image found with the flag still set, or with a BAT that points outside the file,
//! at the same cluster twice, or a `data_off` that makes no sense, is checked and — when
//! opened for writing — repaired before use. Each finding is printed as QEMU prints it,
//! "Repairing ..." or "ERROR ...".

use block::driver::{CheckFix, CheckResult, PreallocMode};
use block::{BlockDriverState, RequestFlags, Result};

use super::state::State;
use crate::image_file::read_bytes;

/// QEMU's prefix for a finding, by whether it is being repaired.
fn verb(fixing: bool) -> &'static str {
    if fixing {
        "Repairing"
    } else {
        "ERROR"
    }
}

/// The BAT entries that point at a cluster another entry already uses, in BAT order
/// (the first user keeps it), and those below the data area.
pub fn duplicates(st: &State, file_len: u64) -> Vec<usize> {
    let cs = st.tracks() * 512;
    let start = st.data_start * 512;
    let mut used = vec![false; file_len.saturating_sub(start).div_ceil(cs) as usize];
    let mut dup = Vec::new();
    for i in 0..st.bat.len() {
        let Some(off) = st.host(i) else { continue };
        let Some(slot) = off
            .checked_sub(start)
            .and_then(|o| used.get_mut((o / cs) as usize))
        else {
            continue;
        };
        if *slot {
            dup.push(i);
        }
        *slot = true;
    }
    dup
}

/// Checks (and with `fix`, repairs) the image.
pub async fn check(st: &mut State, file: &BlockDriverState, fix: CheckFix) -> Result<CheckResult> {
    let mut res = CheckResult::default();
    let cs = st.tracks() * 512;
    if st.unclean {
        eprintln!("{} image was not closed correctly", verb(fix.errors));
        res.corruptions += 1;
        if fix.errors {
            // Closing clears the flag on disk.
            res.corruptions_fixed += 1;
            st.unclean = false;
        }
    }
    let (data_off, ok) = st.header.test_data_off(file.getlength() / 512);
    if !ok {
        res.corruptions += 1;
        if fix.errors {
            st.header.data_off = data_off as u32;
            st.data_start = data_off;
            res.corruptions_fixed += 1;
        }
        eprintln!("{} data_off field has incorrect value", verb(fix.errors));
    }
    check_outside_image(st, file.getlength(), fix, &mut res);
    check_leak(st, file, fix, &mut res).await?;
    st.find_free(file.getlength());
    for i in duplicates(st, file.getlength()) {
        eprintln!("{} duplicate offset in BAT entry {i}", verb(fix.errors));
        res.corruptions += 1;
        if fix.errors {
            // Give the entry its own copy of the cluster it shared.
            let shared = st.host(i).expect("duplicates are allocated");
            let data = read_bytes(file, shared, cs as usize).await?;
            st.set_entry(i, 0);
            let at = st.allocate(file, i).await?;
            file.co_pwritev(
                at,
                &block::IoVector::from_slice(&data),
                RequestFlags::empty(),
            )
            .await?;
            res.corruptions_fixed += 1;
        }
    }
    res.total_clusters = st.bat.len() as u64;
    let mut prev = None;
    for i in 0..st.bat.len() {
        let Some(off) = st.host(i) else {
            prev = None;
            continue;
        };
        res.allocated_clusters += 1;
        if prev.is_some_and(|p| p + cs != off) {
            res.fragmented_clusters += 1;
        }
        prev = Some(off);
    }
    if fix.errors || fix.leaks {
        st.write_bat(file).await?;
        st.write_header(file).await?;
    }
    Ok(res)
}

/// Clusters that start or end past the end of the file are corruptions; repair
/// forgets them (parallels_check_outside_image). Sets where the image ends.
fn check_outside_image(st: &mut State, file_len: u64, fix: CheckFix, res: &mut CheckResult) {
    let cs = st.tracks() * 512;
    let mut high = None;
    for i in 0..st.bat.len() {
        let Some(off) = st.host(i) else { continue };
        if off + cs > file_len {
            eprintln!("{} cluster {i} is outside image", verb(fix.errors));
            res.corruptions += 1;
            if fix.errors {
                st.set_entry(i, 0);
                res.corruptions_fixed += 1;
            }
            continue;
        }
        high = high.max(Some(off));
    }
    match high {
        Some(h) => {
            res.image_end_offset = h + cs;
            st.data_end = res.image_end_offset / 512;
        }
        None => res.image_end_offset = st.data_end * 512,
    }
}

/// Space past the last cluster is leaked; repair truncates it (parallels_check_leak).
async fn check_leak(
    st: &mut State,
    file: &BlockDriverState,
    fix: CheckFix,
    res: &mut CheckResult,
) -> Result<()> {
    let size = file.getlength();
    let end = res.image_end_offset;
    if size <= end {
        return Ok(());
    }
    let cs = st.tracks() * 512;
    let count = (size - end).div_ceil(cs);
    eprintln!(
        "{} space leaked at the end of the image {}",
        verb(fix.leaks),
        size - end
    );
    res.leaks += count;
    if fix.leaks {
        match file.co_truncate(end, true, PreallocMode::Off).await {
            Ok(()) => res.leaks_fixed += count,
            Err(e) => {
                block::error::error_report(&e.to_string());
                res.check_errors += 1;
            }
        }
    }
    Ok(())
}
