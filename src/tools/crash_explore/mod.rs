//! rqemu-crash-explore: the crash-state explorer. It runs qcow2/qed/vdi/vpc workloads through
//! blklogwrites with rqemu's tools and QEMU's, replays each write log into the crash images a
//! power loss could leave (prefixes at flushes, reordered and torn writes since the last
//! flush) and judges every image with QEMU's qemu-img; or, given `--log`, explores any
//! dm-log-writes log. QEMU has no counterpart (its tests use blklogwrites only to record).
//!
//! ```text
//! rqemu-crash-explore [--tools rqemu,qemu] [--filter NAME] [--random N] [--torn N]
//!                     [--seed S] [--work DIR] [--qemu-img PATH]
//! rqemu-crash-explore --log LOG --base FILE --format FMT [--random N] [--torn N] [--seed S]
//! ```

pub mod check;
pub mod replay;
pub mod run;
pub mod states;
pub mod workloads;

use std::path::{Path, PathBuf};

use check::{Judge, Verdict};
use replay::{FileImage, WriteLog};
use run::{Tally, Tools};
use states::{explore, Budget};

/// The explorer's settings, from its command line.
struct Settings {
    tools: Vec<String>,
    filter: String,
    budget: Budget,
    seed: u64,
    work: PathBuf,
    qemu_img: PathBuf,
    log: Option<(PathBuf, PathBuf, String)>,
}

fn parse(args: &[String]) -> Result<Settings, String> {
    let mut s = Settings {
        tools: vec!["rqemu".into(), "qemu".into()],
        filter: String::new(),
        budget: Budget {
            random: 24,
            torn: 8,
        },
        seed: 1,
        work: std::env::temp_dir().join("rqemu-crash-explore"),
        qemu_img: PathBuf::from("/usr/bin/qemu-img"),
        log: None,
    };
    let (mut log, mut base, mut format) = (None, None, None);
    let mut it = args.iter().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("option '{flag}' needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--tools" => s.tools = value.split(',').map(String::from).collect(),
            "--filter" => s.filter = value.clone(),
            "--random" => s.budget.random = number()? as usize,
            "--torn" => s.budget.torn = number()? as usize,
            "--seed" => s.seed = number()?,
            "--work" => s.work = value.into(),
            "--qemu-img" => s.qemu_img = value.into(),
            "--log" => log = Some(PathBuf::from(value)),
            "--base" => base = Some(PathBuf::from(value)),
            "--format" => format = Some(value.clone()),
            _ => return Err(format!("unknown option '{flag}'")),
        }
    }
    s.log = match (log, base, format) {
        (Some(l), Some(b), Some(f)) => Some((l, b, f)),
        (None, None, None) => None,
        _ => return Err("--log needs --base and --format".into()),
    };
    Ok(s)
}

/// Entry point; returns the exit status (1 when any state failed or a workload could not run).
pub fn main(args: Vec<String>) -> i32 {
    let settings = match parse(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rqemu-crash-explore: {e}");
            return 2;
        }
    };
    let result = match &settings.log {
        Some((log, base, format)) => explore_log(&settings, log, base, format),
        None => explore_workloads(&settings),
    };
    match result {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("rqemu-crash-explore: {e}");
            1
        }
    }
}

/// The tools named `name`: rqemu's beside this binary, or QEMU's beside `--qemu-img`.
fn tools(name: &str, qemu_img: &Path) -> Result<Tools, String> {
    match name {
        "rqemu" => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            Ok(Tools {
                name: "rqemu",
                io: exe.with_file_name("rqemu-io"),
                img: exe.with_file_name("rqemu-img"),
            })
        }
        "qemu" => Ok(Tools {
            name: "qemu",
            io: qemu_img.with_file_name("qemu-io"),
            img: qemu_img.to_path_buf(),
        }),
        other => Err(format!("unknown tools '{other}' (rqemu, qemu)")),
    }
}

/// Runs every matching workload with every tool pair and prints the table.
fn explore_workloads(s: &Settings) -> Result<bool, String> {
    let list = workloads::matching(&s.filter);
    if list.is_empty() {
        return Err(format!("no workload matches '{}'", s.filter));
    }
    println!("| workload | variant | tools | entries | flushes | states | leaks | of which leak-caused errors | repaired | corrupt | lost | garbage |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut clean = true;
    let mut totals: Vec<(String, usize)> = Vec::new();
    for (body, variant) in &list {
        for name in &s.tools {
            let t = tools(name, &s.qemu_img)?;
            let dir = s
                .work
                .join(t.name)
                .join(format!("{}-{}", body.name, variant.0));
            match run::run(body, variant, &t, &s.qemu_img, &dir, s.budget, s.seed) {
                Ok(tally) => {
                    clean &= tally.corrupt == 0 && tally.lost == 0;
                    print_row(body.name, variant.0, t.name, &tally);
                    match totals.iter_mut().find(|(n, _)| n == t.name) {
                        Some((_, n)) => *n += tally.states,
                        None => totals.push((t.name.to_string(), tally.states)),
                    }
                }
                Err(e) => {
                    clean = false;
                    println!(
                        "| {} | {} | {} | workload failed: {} |",
                        body.name,
                        variant.0,
                        t.name,
                        e.replace('\n', " ")
                    );
                }
            }
        }
    }
    for (name, n) in totals {
        println!("\n{name}: {n} crash states");
    }
    Ok(clean)
}

fn print_row(workload: &str, variant: &str, tools: &str, t: &Tally) {
    println!(
        "| {workload} | {variant} | {tools} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        t.entries,
        t.flushes,
        t.states,
        t.leaks,
        t.leak_caused,
        t.repaired,
        t.corrupt,
        t.lost,
        t.garbage
    );
    for f in &t.failures {
        println!("|   | | | failure: {f} |");
    }
}

/// Explores one log over its base file: every state must pass `qemu-img check` and read.
fn explore_log(s: &Settings, log: &Path, base: &Path, format: &str) -> Result<bool, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let log = WriteLog::parse(read(log)?)?;
    let format: &'static str = match format {
        "qcow2" => "qcow2",
        "qed" => "qed",
        "vdi" => "vdi",
        "vpc" => "vpc",
        "raw" => "raw",
        other => return Err(format!("unsupported format '{other}'")),
    };
    std::fs::create_dir_all(&s.work).map_err(|e| e.to_string())?;
    let judge = Judge {
        qemu_img: s.qemu_img.clone(),
        format,
        dir: s.work.clone(),
        may_be_dirty: true,
    };
    let (mut states, mut bad) = (0, 0);
    explore(
        &log,
        FileImage(read(base)?),
        s.budget,
        s.seed,
        |state, img| {
            states += 1;
            if let Verdict::Corrupt(why) | Verdict::Lost(why) | Verdict::Garbage(why) =
                judge.judge(img, &[])
            {
                bad += 1;
                println!("{}: {why}", state.describe());
            }
        },
    );
    println!("{states} crash states, {bad} failed");
    Ok(bad == 0)
}
