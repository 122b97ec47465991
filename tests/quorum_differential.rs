//! The quorum driver against the reference: the same qemu-io and qemu-img command lines
//! (writes through a quorum, a corrupted child out-voted and rewritten, a broken quorum,
//! the fifo read pattern, blkverify mode, the option errors, the `json:` names `info`
//! shows), run by QEMU's tools and by ours on images made alike, must print the same and
//! leave the same data in every child.
//!
//! Skips with a printed reason when the reference tools are absent; fails instead under
//! RQEMU_REQUIRE_QEMU=1.

mod reference_tools;

use std::path::Path;

use reference_tools::{ok, reference_available, run, scratch};
use reference_tools::{QEMU_IMG, QEMU_IO};

const RQEMU_IMG: &str = env!("CARGO_BIN_EXE_rqemu-img");
const RQEMU_IO: &str = env!("CARGO_BIN_EXE_rqemu-io");

/// One step: which tool (qemu-img or qemu-io) and its arguments.
#[derive(Clone, Copy)]
enum Tool {
    Img,
    Io,
}

/// A quorum of the raw files `1.raw`.. `N.raw` in `--image-opts` form.
fn quorum(children: usize, extra: &str) -> String {
    let mut o = format!("driver=quorum{extra}");
    for i in 0..children {
        o += &format!(
            ",children.{i}.driver=raw,children.{i}.file.filename={}.raw",
            i + 1
        );
    }
    o
}

/// Output with the timing part of qemu-io's summary lines left out, and the exit status.
fn normalise(out: &std::process::Output) -> String {
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let text: Vec<&str> = text
        .lines()
        .map(|l| match l.find(", ") {
            Some(i) if l.ends_with(" ops/sec)") => &l[..i],
            _ => l,
        })
        .collect();
    format!("{}\n[exit {:?}]", text.join("\n"), out.status.code())
}

/// Runs `steps` with both tool sets, each in a directory of its own holding three raw
/// files of 1 MiB made by the reference, and compares every step's output, then the files.
fn check(case: &str, steps: &[(Tool, Vec<String>)]) {
    if !reference_available() {
        return;
    }
    let dirs = [
        scratch(&format!("{case}-qemu")),
        scratch(&format!("{case}-rqemu")),
    ];
    for dir in &dirs {
        for i in 1..=3 {
            ok(
                QEMU_IMG,
                dir,
                &["create", "-q", "-f", "raw", &format!("{i}.raw"), "1M"],
            );
        }
    }
    for (n, (tool, args)) in steps.iter().enumerate() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (theirs, ours) = match tool {
            Tool::Img => (QEMU_IMG, RQEMU_IMG),
            Tool::Io => (QEMU_IO, RQEMU_IO),
        };
        let want = normalise(&run(theirs, &dirs[0], &args));
        let got = normalise(&run(ours, &dirs[1], &args));
        assert_eq!(got, want, "{case}, step {n}: {args:?}");
    }
    for i in 1..=3 {
        let name = format!("{i}.raw");
        let read = |d: &Path| std::fs::read(d.join(&name)).unwrap();
        assert!(read(&dirs[0]) == read(&dirs[1]), "{case}: {name} differs");
    }
}

fn io(image_opts: &str, cmd: &str) -> (Tool, Vec<String>) {
    let args = ["--image-opts", "-c", cmd, image_opts];
    (Tool::Io, args.iter().map(|s| s.to_string()).collect())
}

fn io_file(file: &str, cmd: &str) -> (Tool, Vec<String>) {
    let args = ["-f", "raw", "-c", cmd, file];
    (Tool::Io, args.iter().map(|s| s.to_string()).collect())
}

#[test]
fn a_corrupted_child_is_out_voted_and_rewritten() {
    let q = quorum(3, ",vote-threshold=2");
    let rewrite = quorum(3, ",vote-threshold=2,rewrite-corrupted=on");
    check(
        "outvote",
        &[
            io(&q, "write -P 0x32 0 1M"),
            io_file("1.raw", "read -P 0x32 0 1M"),
            io_file("3.raw", "read -P 0x32 0 1M"),
            io_file("2.raw", "write -P 0x42 64k 128k"),
            io(&q, "read -P 0x32 0 1M"),
            io_file("2.raw", "read -P 0x32 0 1M"),
            io(&rewrite, "read -P 0x32 0 1M"),
            io_file("2.raw", "read -P 0x32 0 1M"),
            io(&q, "write -z 256k 256k"),
            io(&q, "read -P 0 256k 256k"),
        ],
    );
}

#[test]
fn without_a_quorum_reads_fail() {
    let q = quorum(3, ",vote-threshold=2");
    let fifo = quorum(3, ",vote-threshold=2,read-pattern=fifo");
    check(
        "broken",
        &[
            io(&q, "write -P 0x32 0 1M"),
            io_file("1.raw", "write -P 0x41 0 1M"),
            io_file("2.raw", "write -P 0x42 0 1M"),
            io(&q, "read -P 0x32 0 1M"),
            io(&quorum(3, ",vote-threshold=1"), "read -P 0x32 0 512"),
            io(&fifo, "read -P 0x41 0 1M"),
        ],
    );
}

#[test]
fn blkverify_stops_at_the_first_difference() {
    let verify = quorum(2, ",vote-threshold=2,blkverify=on");
    check(
        "blkverify",
        &[
            io_file("1.raw", "write -P 0x32 0 1M"),
            io_file("2.raw", "write -P 0x32 0 1M"),
            io(&verify, "read -P 0x32 0 1M"),
            io_file("2.raw", "write -P 0x42 4097 1"),
            io(&verify, "read 0 1M"),
            io(&quorum(3, ",vote-threshold=2,blkverify=on"), "read 0 512"),
        ],
    );
}

#[test]
fn bad_options_are_refused_as_qemu_refuses_them() {
    let two = |extra: &str| io(&quorum(2, extra), "read 0 512");
    check(
        "options",
        &[
            two(""),
            two(",vote-threshold=0"),
            two(",vote-threshold=3"),
            two(",vote-threshold=x"),
            two(",vote-threshold=2,read-pattern=lifo"),
            two(",vote-threshold=2,blkverify=maybe"),
            two(",vote-threshold=2,blkverify=on,rewrite-corrupted=on"),
            two(",vote-threshold=2,read-pattern=fifo,blkverify=on"),
            two(",vote-threshold=2,children.3.driver=file"),
            two(",vote-threshold=2,bogus=1"),
            io("driver=quorum,vote-threshold=1", "read 0 512"),
            io(
                "driver=quorum,vote-threshold=1,children.0=nosuchnode",
                "read 0 512",
            ),
        ],
    );
}

#[test]
fn info_names_a_quorum_by_its_json_description() {
    let over = |extra: &str| {
        format!(
            "json:{{\"driver\": \"raw\", \"file\": {{\"driver\": \"quorum\", \"children\": \
             [{{\"driver\": \"file\", \"filename\": \"1.raw\"}}, {{\"driver\": \"file\", \
             \"filename\": \"2.raw\"}}]{extra}}}}}"
        )
    };
    let info = |name: String| (Tool::Img, vec!["info".to_string(), name]);
    check(
        "info",
        &[
            info(over(", \"vote-threshold\": 1")),
            info(over(", \"vote-threshold\": 2, \"read-pattern\": \"fifo\"")),
            (
                Tool::Img,
                [
                    "map",
                    "--output=json",
                    "--image-opts",
                    &quorum(3, ",vote-threshold=3"),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ),
        ],
    );
}
