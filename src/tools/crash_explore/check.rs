//! Judging one crash image with QEMU's own qemu-img: `check` must find no corruption (leaks
//! are allowed; an image a lazy-refcount or QED crash left dirty must be repaired by
//! `check -r all`), and the guest view (`convert -O raw`) must hold, in every sector, what
//! the workload had made durable or what a pending step was writing there.
//!
//! QEMU's counterpart of the first half is qemu-img.c's img_check; the second is the
//! guarantee a flush gives a guest (block/io.c bdrv_co_flush).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::replay::FileImage;

/// Sector granularity of the guest-view comparison.
const SECTOR: usize = 512;

/// What the judge made of one state.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Consistent and every durable write reads back; `leaks` when check found leaks,
    /// `repaired` when `check -r all` had to repair a dirty image first.
    Good {
        /// Check reported leaked clusters.
        leaks: bool,
        /// The image was dirty and `check -r all` made it consistent.
        repaired: bool,
        /// Check reported errors that are the consequence of leaks only (see
        /// [`Judge::leak_caused`]): counted with the leaks, not as corruption.
        leak_caused: bool,
    },
    /// qemu-img check found corruption (or could not open or read the image).
    Corrupt(String),
    /// A durable write does not read back.
    Lost(String),
    /// A write not yet flushed left a sector with data the guest never wrote there.
    Garbage(String),
}

/// A judge for the crash images of one workload.
pub struct Judge {
    /// QEMU's qemu-img.
    pub qemu_img: PathBuf,
    /// Image format name (`qcow2`, `qed`, `vdi`, `vpc`, `vhdx`).
    pub format: &'static str,
    /// Where crash images are written (beside their backing files, so relative names resolve).
    pub dir: PathBuf,
    /// Whether a crash may leave images of this workload dirty on purpose (lazy refcounts, QED,
    /// a vhdx log to replay).
    pub may_be_dirty: bool,
}

impl Judge {
    /// Writes `img` to the crash image file and judges it against the guest views `views`,
    /// any of which a sector may hold (no views: the image need only check and read).
    pub fn judge(&self, img: &FileImage, views: &[Vec<u8>]) -> Verdict {
        let path = self.dir.join(format!("crash.{}", self.format));
        if let Err(e) = std::fs::write(&path, &img.0) {
            return Verdict::Corrupt(format!("cannot write {}: {e}", path.display()));
        }
        let (mut leaks, mut repaired, mut leak_caused) = (false, false, false);
        // QEMU's vpc and raw drivers have no check.
        if !matches!(self.format, "vpc" | "raw") {
            match self.check(&path, false) {
                Ok(l) => leaks = l,
                Err(why) if self.may_be_dirty => match self
                    .check(&path, true)
                    .and_then(|_| self.check(&path, false))
                {
                    Ok(l) => (leaks, repaired) = (l, true),
                    Err(after) => return Verdict::Corrupt(format!("{why}; after -r all: {after}")),
                },
                Err(_) if self.leak_caused(&path) => (leaks, leak_caused) = (true, true),
                Err(why) => return Verdict::Corrupt(why),
            }
        }
        let view = match self.guest_view(&path) {
            Ok(v) => v,
            Err(why) => return Verdict::Corrupt(why),
        };
        if views.is_empty() {
            return Verdict::Good {
                leaks,
                repaired,
                leak_caused,
            };
        }
        match foreign_sectors(&view, views) {
            (Some(s), _) => Verdict::Lost(format!(
                "guest sector {s} (offset {}) lost its durable contents",
                s * SECTOR
            )),
            (None, Some(s)) => Verdict::Garbage(format!(
                "guest sector {s} (offset {}), written by a pending step, holds neither its \
                 old nor its new contents",
                s * SECTOR
            )),
            (None, None) => Verdict::Good {
                leaks,
                repaired,
                leak_caused,
            },
        }
    }

    /// Runs `qemu-img check` (with `-r all` when `repair`); Ok(leaks) when no corruption.
    fn check(&self, path: &Path, repair: bool) -> Result<bool, String> {
        let mut cmd = Command::new(&self.qemu_img);
        cmd.args(["check", "-f", self.format]);
        if repair {
            cmd.args(["-r", "all"]);
        }
        let out = cmd
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.qemu_img.display()))?;
        // qemu-img check: 0 clean, 3 leaks only, 2 corruption, 1 check not completed.
        match out.status.code() {
            Some(0) => Ok(false),
            Some(3) => Ok(true),
            code => Err(format!(
                "check{} exit {code:?}: {}{}",
                if repair { " -r all" } else { "" },
                first_lines(&out.stdout),
                first_lines(&out.stderr)
            )),
        }
    }

    /// Whether every error `check` reports on the image at `path` follows from refcounts
    /// (or a block count) higher than the references, i.e. from leaks, which a crash in
    /// the middle of an operation that counts references before it makes them may leave
    /// (qcow2 snapshot create and goto raise refcounts, then commit the snapshot table or
    /// L1; VDI raises the header's block count, then maps the block).
    ///
    /// qcow2: a cluster whose refcount is 2 while only one L2 entry (with "copied" set)
    /// points at it is reported as an OFLAG_COPIED error besides the leak, yet writing it
    /// in place is right: nothing else references it. QEMU's own `check -r leaks` repairs
    /// "copied" flags only when, the leaks fixed, no other error is left (the repair it
    /// deems safe), so: the image is leak-caused when `check -r leaks` makes it clean.
    /// A refcount lower than its references, or a "copied" flag on a cluster referenced
    /// twice, survives that repair and stays corruption. VDI: QEMU's check cannot repair;
    /// a header count above the blocks the map uses (`is X, should be Y`, X < Y) with no
    /// other error only leaks blocks (the next allocation goes past them), while a count
    /// below them (X > Y) would hand a mapped block out again, and stays corruption.
    fn leak_caused(&self, path: &Path) -> bool {
        match self.format {
            "qcow2" => {
                let repaired = Command::new(&self.qemu_img)
                    .args(["check", "-q", "-r", "leaks", "-f", "qcow2"])
                    .arg(path)
                    .output()
                    .is_ok();
                repaired && self.check(path, false).is_ok()
            }
            "vdi" => {
                let Ok(out) = Command::new(&self.qemu_img)
                    .args(["check", "-f", "vdi"])
                    .arg(path)
                    .output()
                else {
                    return false;
                };
                let text = String::from_utf8_lossy(&out.stderr).to_string()
                    + &String::from_utf8_lossy(&out.stdout);
                let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("ERROR")).collect();
                !errors.is_empty() && errors.iter().all(|l| vdi_count_above_map(l))
            }
            _ => false,
        }
    }

    /// The guest's view of an image, read by QEMU's `qemu-img convert -O raw`.
    pub fn guest_view(&self, path: &Path) -> Result<Vec<u8>, String> {
        let raw = self.dir.join("view.raw");
        let out = Command::new(&self.qemu_img)
            .args(["convert", "-U", "-f", self.format, "-O", "raw"])
            .arg(path)
            .arg(&raw)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.qemu_img.display()))?;
        if !out.status.success() {
            return Err(format!("unreadable: {}", first_lines(&out.stderr)));
        }
        std::fs::read(&raw).map_err(|e| e.to_string())
    }
}

/// Sectors of a crash view that hold none of the allowed versions: `(lost, garbage)`, the
/// first where all versions agree (durable data the crash destroyed) and the first where
/// a pending step was changing the sector (an unflushed write that left data nobody wrote).
/// A view of another size than all versions is lost at sector 0.
fn foreign_sectors(view: &[u8], allowed: &[Vec<u8>]) -> (Option<usize>, Option<usize>) {
    let same_size: Vec<&Vec<u8>> = allowed.iter().filter(|v| v.len() == view.len()).collect();
    if same_size.is_empty() {
        return (Some(0), None);
    }
    let (mut lost, mut garbage) = (None, None);
    for (s, data) in view.chunks(SECTOR).enumerate() {
        let r = s * SECTOR..s * SECTOR + data.len();
        if same_size.iter().any(|v| v[r.clone()] == *data) {
            continue;
        }
        if same_size
            .iter()
            .all(|v| v[r.clone()] == same_size[0][r.clone()])
        {
            lost.get_or_insert(s);
            break;
        }
        garbage.get_or_insert(s);
    }
    (lost, garbage)
}

/// Whether a VDI check error line says the header counts more blocks than the map uses.
fn vdi_count_above_map(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("ERROR: allocated blocks mismatch, is ") else {
        return false;
    };
    let mut numbers = rest.split(", should be ").map(|n| n.trim().parse::<u64>());
    matches!(
        (numbers.next(), numbers.next()),
        (Some(Ok(used)), Some(Ok(counted))) if used < counted
    )
}

/// The first two lines of a tool's output, for a report.
fn first_lines(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    text.lines().take(2).collect::<Vec<_>>().join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sector_may_come_from_any_allowed_version() {
        let old = vec![1u8; 2048];
        let mut new = old.clone();
        new[512..1536].fill(2);
        let mut mixed = old.clone();
        mixed[1024..1536].fill(2);
        let both = [old.clone(), new.clone()];
        assert_eq!(foreign_sectors(&mixed, &both), (None, None));
        assert_eq!(
            foreign_sectors(&mixed, std::slice::from_ref(&old)),
            (Some(2), None)
        );
        let mut garbage = mixed.clone();
        garbage[1100] = 0;
        assert_eq!(foreign_sectors(&garbage, &both), (None, Some(2)));
        garbage[1600] = 0;
        assert_eq!(foreign_sectors(&garbage, &both), (Some(3), Some(2)));
        assert_eq!(foreign_sectors(&old[..1024], &both), (Some(0), None));
    }

    #[test]
    fn a_vdi_count_above_the_map_is_a_leak() {
        assert!(vdi_count_above_map(
            "ERROR: allocated blocks mismatch, is 0, should be 1"
        ));
        assert!(!vdi_count_above_map(
            "ERROR: allocated blocks mismatch, is 1, should be 0"
        ));
        assert!(!vdi_count_above_map("ERROR: block index 0 too large, is 0"));
    }
}
