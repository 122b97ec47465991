//! The trace and usage options of the four binaries, as a user discovers them: `-trace help`
//! lists the catalogue and exits, `rqemu -h` / `-version` print and exit, and `-trace
//! events=FILE,file=FILE,thread=on` writes tagged lines to the file. No KVM needed: each
//! of these ends before the machine starts.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use block::trace::catalogue::EVENTS;

/// Runs `cmd`, killing it after 20 seconds (before the fix `rqemu -trace help` booted a guest
/// and never returned), and returns its status and output.
fn run(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("{cmd:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut out.stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut out.stderr)
        .unwrap();
    out
}

fn bin(name: &str, args: &[&str]) -> Output {
    let path = match name {
        "rqemu" => env!("CARGO_BIN_EXE_rqemu"),
        "rqemu-io" => env!("CARGO_BIN_EXE_rqemu-io"),
        "rqemu-nbd" => env!("CARGO_BIN_EXE_rqemu-nbd"),
        _ => env!("CARGO_BIN_EXE_rqemu-img"),
    };
    let mut cmd = Command::new(path);
    cmd.args(args);
    run(cmd)
}

#[test]
fn trace_help_lists_the_catalogue_in_every_binary() {
    let cases: &[(&str, &[&str])] = &[
        ("rqemu", &["-trace", "help"]),
        ("rqemu", &["--trace", "help"]),
        ("rqemu", &["-trace", "enable=help"]),
        ("rqemu-io", &["-T", "help"]),
        ("rqemu-io", &["--trace", "help"]),
        ("rqemu-img", &["-T", "help"]),
        ("rqemu-img", &["--trace", "help"]),
        ("rqemu-nbd", &["-T", "help"]),
        ("rqemu-nbd", &["--trace", "help"]),
    ];
    for (name, args) in cases {
        let out = bin(name, args);
        assert!(out.status.success(), "{name} {args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        for e in EVENTS {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{}(", e.name))),
                "{name} {args:?} does not list {}",
                e.name
            );
        }
    }
}

#[test]
fn rqemu_prints_usage_and_version() {
    for flag in ["-h", "-help", "--help"] {
        let out = bin("rqemu", &[flag]);
        assert!(out.status.success(), "{flag}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("usage: rqemu [options] [disk_image]"),
            "{flag}"
        );
        assert!(
            text.lines().any(|l| l.starts_with("-drive file=")),
            "{flag}"
        );
        assert!(text.lines().any(|l| l.starts_with("-trace ")), "{flag}");
    }
    for flag in ["-version", "--version"] {
        let out = bin("rqemu", &[flag]);
        assert!(out.status.success(), "{flag}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.starts_with("rqemu emulator version "),
            "{flag}: {text}"
        );
        assert!(text.contains("QEMU emulator version 10.0.2"), "{flag}");
    }
}

/// Trace lines in `text` as (thread tag, event, arguments); panics on a malformed line.
fn lines(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(|l| {
            let (head, rest) = l.split_once(':').expect("PID@TIME:");
            let (pid_thread, time) = head.split_once('@').expect("PID@TIME");
            assert!(time.split_once('.').is_some(), "{l}");
            let thread = pid_thread.split_once('/').map_or("", |(_, t)| t);
            let (name, args) = rest.split_once(' ').unwrap_or((rest, ""));
            (thread.to_string(), name.to_string(), args.to_string())
        })
        .collect()
}

#[test]
fn events_file_and_thread_tag_follow_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let events = dir.path().join("events");
    std::fs::write(
        &events,
        "# the open and the write\nbdrv_open_common\nblk_co_pwritev\nthread_pool_*\n",
    )
    .unwrap();
    let trace = dir.path().join("trace.log");
    let arg = format!(
        "events={},file={},thread=on",
        events.display(),
        trace.display()
    );
    let out = bin(
        "rqemu-io",
        &["-f", "raw", "-T", &arg, "-c", "write 0 4k", path(&image)],
    );
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "trace lines went to stderr");
    let got = lines(&std::fs::read_to_string(&trace).unwrap());
    // bdrv_open_common maps the raw node's pointer to its format; the write names that node.
    let raw = got
        .iter()
        .find(|(_, n, a)| n == "bdrv_open_common" && a.ends_with("format_name \"raw\""))
        .expect("bdrv_open_common of the raw node");
    let bs = raw.2.split_whitespace().nth(1).unwrap();
    let write = got.iter().find(|(_, n, _)| n == "blk_co_pwritev").unwrap();
    assert!(
        write.2.contains(&format!("bs {bs} ")),
        "{write:?} vs {raw:?}"
    );
    assert!(write.0.starts_with("main#"), "{write:?}");
    let submit = got
        .iter()
        .find(|(_, n, _)| n == "thread_pool_submit_aio")
        .unwrap();
    assert!(submit.0.starts_with("main#"));
    let complete = got
        .iter()
        .find(|(_, n, _)| n == "thread_pool_complete_aio")
        .unwrap();
    assert!(complete.0.starts_with("worker#"), "{complete:?}");
    assert!(got.iter().all(|(_, n, _)| n != "bdrv_co_pwritev_part"));
}

#[test]
fn lines_carry_no_thread_tag_unless_asked_and_bad_values_fail() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.log");
    let arg = format!("blk_co_pwritev,file={}", trace.display());
    let out = bin(
        "rqemu-img",
        &[
            "-T",
            &arg,
            "create",
            "-f",
            "raw",
            path(&dir.path().join("x")),
            "1M",
        ],
    );
    assert!(out.status.success());
    let out = bin(
        "rqemu-io",
        &[
            "-T",
            &arg,
            "-f",
            "raw",
            "-c",
            "write 0 512",
            path(&dir.path().join("x")),
        ],
    );
    assert!(out.status.success());
    let text = std::fs::read_to_string(&trace).unwrap();
    let got = lines(&text);
    assert_eq!(got.len(), 1, "{text}");
    assert_eq!(got[0].0, "");
    let out = bin("rqemu-io", &["-T", "blk_*,thread=maybe", "-c", "quit"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'thread' expects 'on' or 'off'"));
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// scripts/trace-request.sh on a real trace of rqemu-io: the write's journey, layer by
/// layer, each step on the thread it ran on, ended by the next request, with a time summary.
#[test]
fn trace_request_tells_one_requests_journey() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let trace = dir.path().join("trace.log");
    let arg = format!(
        "bdrv_open_common,blk_*,bdrv_*,thread_pool_*,file={},thread=on",
        trace.display()
    );
    let io = [
        "-f",
        "raw",
        "-T",
        &arg,
        "-c",
        "write 0 4k",
        "-c",
        "read 0 4k",
    ];
    assert!(bin("rqemu-io", &[&io[..], &[path(&image)]].concat())
        .status
        .success());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/trace-request.sh");
    let journey = |args: &[&str]| {
        let mut cmd = Command::new(script);
        cmd.args(args).arg(&trace);
        run(cmd)
    };
    let out = journey(&[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("request: blk_co_pwritev "), "{text}");
    assert!(text.contains("offset 0 bytes 4096"), "{text}");
    assert!(text.contains("(the next request begins)"), "{text}");
    // The steps in order, each with its layer and thread.
    let steps: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[2], *f.iter().rev().find(|w| w.contains('_')).unwrap())
        })
        .collect();
    let first: Vec<String> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .take(5)
        .map(|l| {
            l.split("  ")
                .filter(|s| !s.is_empty())
                .nth(3)
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(
        first,
        [
            "BlockBackend",
            "block/io [raw]",
            "block/io [file]",
            "worker thread (system call)",
            "worker -> main loop (completion BH)"
        ],
        "{text}"
    );
    assert!(
        steps.iter().any(|(t, _)| t.starts_with("worker#")),
        "{text}"
    );
    assert!(steps
        .iter()
        .all(|(t, _)| t.starts_with("main#") || t.starts_with("worker#")));
    // The per-layer times add up to the total.
    let summary: Vec<f64> = text
        .split("time per layer")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().last().unwrap().parse().unwrap())
        .collect();
    let (total, layers) = summary.split_last().unwrap();
    assert_eq!(layers.iter().sum::<f64>(), *total, "{text}");
    // The second request is the read; there is no third.
    let second = String::from_utf8(journey(&["-n", "2"]).stdout).unwrap();
    assert!(second.starts_with("request: blk_co_preadv "), "{second}");
    assert_eq!(journey(&["-n", "3"]).status.code(), Some(1));
}
