//! Running one workload through one pair of tools (rqemu's or QEMU's qemu-io/qemu-img) with
//! the logged file behind blklogwrites, recording after every step the log's length and the
//! guest view, then judging every crash state the log allows.
//!
//! QEMU has no counterpart; xfstests' generic/482 drives dm-log-writes the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::check::{Judge, Verdict};
use super::replay::{FileImage, WriteLog};
use super::states::{explore, Budget};
use super::workloads::{Body, Step, Variant};

/// A qemu-io and a qemu-img to run a workload with.
#[derive(Clone, Debug)]
pub struct Tools {
    /// Name in the report ("rqemu", "qemu").
    pub name: &'static str,
    /// The qemu-io compatible binary.
    pub io: PathBuf,
    /// The qemu-img compatible binary.
    pub img: PathBuf,
}

/// The counts of one workload's exploration.
#[derive(Debug, Default)]
pub struct Tally {
    /// Distinct crash images judged.
    pub states: usize,
    /// Of which `qemu-img check` found leaks only.
    pub leaks: usize,
    /// Of which needed (and got) `check -r all`.
    pub repaired: usize,
    /// Of which (counted in `leaks` too) check reported errors that only leaks caused.
    pub leak_caused: usize,
    /// Corrupt images.
    pub corrupt: usize,
    /// Images where a durable write did not read back.
    pub lost: usize,
    /// Images where an unflushed write left data the guest never wrote.
    pub garbage: usize,
    /// Log entries and flushes.
    pub entries: usize,
    /// Flush entries in the log.
    pub flushes: usize,
    /// The first few failures, described.
    pub failures: Vec<String>,
}

/// The file names of a workload's directory.
const DISK: &str = "disk.img";
const LOG: &str = "log";

/// Runs `body` in `variant` with `tools` in `dir` (emptied first) and judges its crash
/// states; `qemu_img` is QEMU's, used to set up and judge.
pub fn run(
    body: &Body,
    variant: &Variant,
    tools: &Tools,
    qemu_img: &Path,
    dir: &Path,
    budget: Budget,
    seed: u64,
) -> Result<Tally, String> {
    let (_, format, options) = *variant;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let qemu_io = qemu_img.with_file_name("qemu-io");
    let opts = [options, body.options]
        .iter()
        .filter(|o| !o.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    let mut backing: Option<&str> = None;
    for (file, commands) in body.backing {
        create(qemu_img, dir, format, &opts, file, body.size, None)?;
        io(&qemu_io, dir, &["-f", format, file], commands)?;
        backing = Some(file);
    }
    create(qemu_img, dir, format, &opts, DISK, body.size, backing)?;
    let logged = match (body.log_backing, backing) {
        (true, Some(b)) => b,
        _ => DISK,
    };
    std::fs::write(dir.join(LOG), b"").map_err(|e| e.to_string())?;
    let judge = Judge {
        qemu_img: qemu_img.to_path_buf(),
        format,
        dir: dir.to_path_buf(),
        // A vhdx crash may leave a log to replay, which QEMU's check -r all does.
        may_be_dirty: matches!(format, "qed" | "vhdx")
            || opts.contains("lazy_refcounts=on")
            || body.name == "amend",
    };
    let base = FileImage(read(&dir.join(logged))?);
    let mut views = vec![judge.guest_view(&dir.join(logged))?];
    let mut boundaries = vec![0];
    let spec = image_opts(format, logged, body.log_backing);
    for step in body.steps {
        match step {
            Step::Io(commands) => io(&tools.io, dir, &["--image-opts", &spec], commands)?,
            Step::Img(args) => {
                let args: Vec<String> = args
                    .iter()
                    .map(|a| match *a {
                        "{}" => spec.clone(),
                        "FMT" => format.to_string(),
                        a => a.replace("DIR", &dir.to_string_lossy()),
                    })
                    .collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                tool(&tools.img, dir, &args)?;
            }
            Step::Other(file, commands) => io(&qemu_io, dir, &["-f", format, file], commands)?,
        }
        boundaries.push(WriteLog::parse(read(&dir.join(LOG))?).map_or(0, |l| l.entries.len()));
        views.push(judge.guest_view(&dir.join(logged))?);
    }
    let log = WriteLog::parse(read(&dir.join(LOG))?)?;
    let mut tally = Tally {
        entries: log.entries.len(),
        flushes: log.flushes().len(),
        ..Tally::default()
    };
    let last_file = read(&dir.join(logged))?;
    check_replay(&log, &base, &last_file)?;
    // The logged file behaves as a block device of its final size (as under dm-log-writes):
    // a crash loses writes, never the file's length.
    let mut base = base;
    base.0.resize(base.0.len().max(last_file.len()), 0);
    explore(&log, base, budget, seed, |state, img| {
        let last = state.pending.iter().map(|(i, _)| i + 1).max();
        let allowed = allowed_steps(&boundaries, state.durable, last.unwrap_or(state.durable));
        tally.states += 1;
        match judge.judge(img, &views[allowed]) {
            Verdict::Good {
                leaks,
                repaired,
                leak_caused,
            } => {
                tally.leaks += leaks as usize;
                tally.repaired += repaired as usize;
                tally.leak_caused += leak_caused as usize;
            }
            Verdict::Corrupt(why) => {
                tally.corrupt += 1;
                note(&mut tally, dir, img, &state.describe(), &why);
            }
            Verdict::Lost(why) => {
                tally.lost += 1;
                note(&mut tally, dir, img, &state.describe(), &why);
            }
            Verdict::Garbage(why) => {
                tally.garbage += 1;
                note(&mut tally, dir, img, &state.describe(), &why);
            }
        }
    });
    Ok(tally)
}

/// The steps whose guest views a state may show: from the last step all of whose entries
/// are durable to the step that logged the last entry the state holds.
fn allowed_steps(boundaries: &[usize], durable: usize, last: usize) -> std::ops::Range<usize> {
    let from = boundaries.iter().rposition(|&b| b <= durable).unwrap_or(0);
    let to = boundaries
        .iter()
        .position(|&b| b >= last.max(durable))
        .unwrap_or(boundaries.len() - 1);
    from..to.max(from) + 1
}

/// Keeps the first few failures for the report, each with its image (`failure-N`).
fn note(tally: &mut Tally, dir: &Path, img: &FileImage, state: &str, why: &str) {
    if tally.failures.len() < 3 {
        let file = dir.join(format!("failure-{}", tally.failures.len()));
        let _ = std::fs::write(&file, &img.0);
        tally
            .failures
            .push(format!("{state} ({}): {why}", file.display()));
    }
}

/// The log replayed in full must rebuild the file the tools left (else the log or the
/// replay is wrong, and no verdict would mean anything).
fn check_replay(log: &WriteLog, base: &FileImage, file: &[u8]) -> Result<(), String> {
    let mut img = base.clone();
    for e in &log.entries {
        img.apply(log, e, super::replay::DiscardAs::Zeroes);
    }
    if img.same_as(file) {
        Ok(())
    } else {
        Err("replaying the whole log does not rebuild the image the workload left".into())
    }
}

/// The `--image-opts` spec that puts blklogwrites under the logged file.
fn image_opts(format: &str, logged: &str, log_backing: bool) -> String {
    let blk = |prefix: &str| {
        format!(
            "{prefix}driver=blklogwrites,{prefix}file.filename={logged},\
             {prefix}log.filename={LOG},{prefix}log-append=on"
        )
    };
    if log_backing {
        format!(
            "driver={format},file.filename={DISK},backing.driver={format},{}",
            blk("backing.file.")
        )
    } else {
        format!("driver={format},{}", blk("file."))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// `qemu-img create` with QEMU's tool (setting up is not under test).
fn create(
    qemu_img: &Path,
    dir: &Path,
    format: &str,
    opts: &str,
    file: &str,
    size: &str,
    backing: Option<&str>,
) -> Result<(), String> {
    let mut args = vec!["create", "-q", "-f", format];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    if let Some(b) = backing {
        args.extend(["-b", b, "-F", format]);
    }
    args.extend([file, size]);
    tool(qemu_img, dir, &args)
}

/// Runs a qemu-io with `args` and one `-c` per command.
fn io(bin: &Path, dir: &Path, args: &[&str], commands: &[&str]) -> Result<(), String> {
    let mut all: Vec<&str> = args.to_vec();
    for c in commands {
        all.extend(["-c", c]);
    }
    tool(bin, dir, &all)
}

/// Runs a tool in `dir`; an exit status other than 0, or a qemu-io error line, fails.
fn tool(bin: &Path, dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || text.contains("failed:") || text.contains("error") {
        return Err(format!("{} {args:?}: {text}", bin.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_steps_span_the_pending_step() {
        // Steps end at entries 4, 4 (wrote nothing), 9 and 12.
        let b = [0, 4, 4, 9, 12];
        assert_eq!(allowed_steps(&b, 0, 0), 0..1);
        assert_eq!(allowed_steps(&b, 4, 4), 2..3);
        assert_eq!(allowed_steps(&b, 4, 7), 2..4);
        assert_eq!(allowed_steps(&b, 6, 6), 2..4, "a flush inside step 3");
        assert_eq!(allowed_steps(&b, 9, 12), 3..5);
    }
}
