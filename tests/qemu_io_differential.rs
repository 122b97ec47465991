//! rqemu-io against the reference qemu-io: the same command sequences, run on two copies of
//! the same raw image, must print the same text (stdout and stderr interleaved as a script
//! capturing `2>&1` sees them, timing figures normalised as qemu-iotests' _filter_qemu_io
//! does), exit with the same status, and leave the same bytes in the image.
//!
//! Skips with a printed reason when /usr/bin/qemu-io is absent; fails instead when
//! RQEMU_REQUIRE_QEMU=1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const QEMU_IO: &str = "/usr/bin/qemu-io";
const RQEMU_IO: &str = env!("CARGO_BIN_EXE_rqemu-io");
const IMAGE_SIZE: usize = 1 << 20;

fn reference_available() -> bool {
    if Path::new(QEMU_IO).exists() {
        return true;
    }
    if std::env::var("RQEMU_REQUIRE_QEMU").as_deref() == Ok("1") {
        panic!("{QEMU_IO} is required (RQEMU_REQUIRE_QEMU=1) but absent");
    }
    eprintln!("skipping: {QEMU_IO} not installed");
    false
}

/// The statistics line, reduced as `_filter_qemu_io` reduces it; `-C` lines keep only their
/// byte and op counts.
fn normalise_line(line: &str) -> String {
    if let (Some(ops), true) = (line.find(" ops; "), line.ends_with(" ops/sec)")) {
        let start = line[..ops]
            .rfind(|c: char| !c.is_ascii_digit())
            .map_or(0, |i| i + 1);
        return format!(
            "{}X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)",
            &line[..start]
        );
    }
    let fields: Vec<&str> = line.split(',').collect();
    if fields.len() == 5 && fields[2].contains(':') && fields[0].parse::<u64>().is_ok() {
        return format!("{},{},TIME", fields[0], fields[1]);
    }
    line.to_string()
}

fn normalise(text: &str, image: &Path) -> String {
    text.replace(&image.display().to_string(), "TEST_IMG")
        .split('\n')
        .map(normalise_line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A scratch directory removed at the end of the test.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("rqemu-io-diff-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Initial image contents: a few distinct areas, the rest zero.
fn initial_image() -> Vec<u8> {
    let mut data = vec![0u8; IMAGE_SIZE];
    data[..4096].fill(0x5a);
    for (i, b) in data[65536..65536 + 512].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    data
}

/// Runs `prog` on `image` with `args` (the image path replaces "IMG"), feeding `stdin`;
/// returns the combined output and the exit status.
fn run(prog: &str, image: &Path, args: &[&str], stdin: &str) -> (String, Option<i32>) {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("IMG", &image.display().to_string()))
        .collect();
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg("exec \"$0\" \"$@\" 2>&1")
        .arg(prog)
        .args(&args)
        .current_dir(image.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (normalise(&text, image), out.status.code())
}

/// Runs one scenario through both programs on fresh copies of the image and compares.
fn check(name: &str, args: &[&str], stdin: &str) {
    let scratch = Scratch::new(name);
    let (a, b) = (scratch.0.join("ref.img"), scratch.0.join("rq.img"));
    std::fs::write(&a, initial_image()).unwrap();
    std::fs::write(&b, initial_image()).unwrap();
    let (want, want_rc) = run(QEMU_IO, &a, args, stdin);
    let (got, got_rc) = run(RQEMU_IO, &b, args, stdin);
    let want = want.replace("ref.img", "X.img").replace(QEMU_IO, "PROG");
    let got = got.replace("rq.img", "X.img").replace(RQEMU_IO, "PROG");
    if got != want {
        panic!(
            "scenario {name}: output differs\n{}",
            first_difference(&want, &got)
        );
    }
    assert_eq!(got_rc, want_rc, "scenario {name}: exit status differs");
    let (da, db) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(da == db, "scenario {name}: image contents differ");
}

/// The first line where the outputs part, with the lines just before it.
fn first_difference(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let at = w.iter().zip(&g).take_while(|(a, b)| a == b).count();
    let from = at.saturating_sub(3);
    format!(
        "context:\n{}\nqemu-io:  {:?}\nrqemu-io: {:?}",
        w[from..at].join("\n"),
        w.get(at),
        g.get(at)
    )
}

fn cmds(list: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec!["-f", "raw"];
    for c in list {
        args.push("-c");
        args.push(c);
    }
    args.push("IMG");
    args
}

#[test]
fn reads_and_writes_with_patterns() {
    if !reference_available() {
        return;
    }
    check(
        "rw",
        &cmds(&[
            "read -P 0x5a 0 4k",
            "read -P 0x5a 0 8k",
            "write -P 0xab 512 1k",
            "read -P 0xab -s 512 -l 1k 0 2k",
            "read -pP 0xab 512 1k",
            "write 70000 333",
            "read -v 65530 40",
            "write -z 4096 8192",
            "write -zu 0 512",
            "write -f -P 7 1M-512 512",
            "read -q -P 7 1040384 512",
            "read -C 0 512",
            "w 100 1",
            "r -P 0xcd 100 1",
            // An endless source file: only the request's length is read from it (308).
            "write -s /dev/zero 8k 4k",
            "read -P 0 8k 4k",
        ]),
        "",
    );
}

#[test]
fn vectored_and_asynchronous_requests() {
    if !reference_available() {
        return;
    }
    check(
        "vec",
        &cmds(&[
            "writev -P 0x11 1000 512 1k 100",
            "readv -P 0x11 1000 512 1k 100",
            "readv -v 1000 10 6",
            "aio_write -P 0x22 8k 4k 4k",
            "aio_flush",
            "aio_read -P 0x22 8k 8k",
            "aio_flush",
            "aio_write -z 20k 4k",
            "aio_flush",
            "aio_read -v -P 0 20k 32",
            "aio_flush",
            "aio_read -P 1 0 512",
            "aio_flush",
            "aio_write -P 0x33 1M 1",
            "aio_flush",
            "aio_read 2M 1",
            "aio_flush",
            "aio_write -z -P 0x44 0 3",
            "aio_flush",
            "aio_write -q 0 512",
        ]),
        "",
    );
}

#[test]
fn errors_and_argument_checks() {
    if !reference_available() {
        return;
    }
    check(
        "err",
        &cmds(&[
            "read 1M 1",
            "read 0 x",
            "read 0 512x",
            "read 0 99999999999999999999",
            "read 0 3G",
            "read -P 300 0 1",
            "read -P -1 0 1",
            "read -s 1 0 512",
            "read -P 1 -l 600 0 512",
            "read -z 0 1",
            "read 0",
            "write -u 0 1",
            "write -n 0 1",
            "write -b -z 0 1",
            "write -f -c 0 512",
            "write -z -P 1 0 1",
            "write -c 0 512",
            "write -b 0 100",
            "writev 2M 512",
            "writev -P 12m 0 512",
            "discard 0 2M",
            "aio_write -z 0 1 2",
            "aio_write -z -P 1 0 1",
            "aio_write -u 0 1",
            "foo",
            "length 5",
            "truncate -m foo 2M",
            "truncate -m off x",
            "alloc x",
            "sleep x",
            "sleep -1",
            "sigraise 99",
            "help foo",
            "help r",
            "help aio_write",
            "readv 0 3G",
            "write 0 3G",
            "w -z -c 1048575 4k",
            "write -c 1048576 512",
            "truncate -m full",
            "truncate -m full 512k",
        ]),
        "",
    );
}

#[test]
fn metadata_commands() {
    if !reference_available() {
        return;
    }
    check(
        "meta",
        &cmds(&[
            "length",
            "info",
            "map",
            "alloc 0",
            "alloc 0 2M",
            "alloc 1M 1",
            "discard 0 4k",
            "discard -q 8k 4k",
            "flush",
            "truncate 3M",
            "length",
            "write -P 9 2M 512",
            "truncate 1536k",
            "length",
            "help",
            "sleep 1",
        ]),
        "",
    );
}

#[test]
fn open_close_and_read_only() {
    if !reference_available() {
        return;
    }
    check(
        "ro",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "write 0 1",
            "-c",
            "discard 0 1",
            "-c",
            "read -P 0x5a 0 1",
            "IMG",
        ],
        "",
    );
    check(
        "openclose",
        &[
            "-c",
            "info",
            "-c",
            "open -o driver=raw IMG",
            "-c",
            "open IMG",
            "-c",
            "read 0 1",
            "-c",
            "close",
            "-c",
            "close",
            "-c",
            "open -r -o driver=raw IMG",
            "-c",
            "write 0 1",
            "-c",
            "open -f raw IMG",
        ],
        "",
    );
    check("probe", &["-c", "write -P 3 4096 512", "IMG"], "");
    check("nofile", &["-f", "raw", "-c", "read 0 1", "nosuch.img"], "");
    check("badopt", &["-x"], "");
    check("help", &["-h"], "");
    check("cache", &["-t", "bogus", "-f", "raw", "IMG"], "");
    check("discardopt", &["-d", "bogus", "-f", "raw", "IMG"], "");
    check("exclusive", &["--image-opts", "-f", "raw", "IMG"], "");
    check(
        "imageopts",
        &[
            "--image-opts",
            "-c",
            "read -P 0x5a 0 1k",
            "driver=raw,file.filename=IMG",
        ],
        "",
    );
    check(
        "json",
        &[
            "-c",
            "read -P 0x5a 0 1k",
            "-c",
            "write -P 1 0 1",
            "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"IMG\"}}",
        ],
        "",
    );
}

#[test]
fn buffered_stdout_meets_unbuffered_stderr_at_block_boundaries() {
    if !reference_available() {
        return;
    }
    // Only output of a fixed length, so that block boundaries fall at the same place.
    let mut lines: Vec<String> = Vec::new();
    for i in 0..120 {
        lines.push(format!("read -q -P 1 {} 48", i * 512));
        lines.push("help write".to_string());
        if i % 17 == 0 {
            lines.push("nosuchcommand".to_string());
        }
    }
    let mut args: Vec<&str> = vec!["-f", "raw"];
    for l in &lines {
        args.extend(["-c", l.as_str()]);
    }
    args.push("IMG");
    check("interleave", &args, "");
}

#[test]
fn every_help_text() {
    if !reference_available() {
        return;
    }
    let names = [
        "abort",
        "aio_flush",
        "aio_read",
        "aio_write",
        "alloc",
        "break",
        "close",
        "discard",
        "flush",
        "help",
        "info",
        "length",
        "map",
        "open",
        "quit",
        "read",
        "readv",
        "remove_break",
        "reopen",
        "resume",
        "sigraise",
        "sleep",
        "truncate",
        "wait_break",
        "write",
        "writev",
        "zone_append",
        "zone_close",
        "zone_finish",
        "zone_open",
        "zone_report",
        "zone_reset",
        "w",
        "q",
        "?",
    ];
    let lines: Vec<String> = names.iter().map(|n| format!("help {n}")).collect();
    let mut args: Vec<&str> = Vec::new();
    for l in &lines {
        args.extend(["-c", l.as_str()]);
    }
    check("helps", &args, "");
}

#[test]
fn program_options_and_signals() {
    if !reference_available() {
        return;
    }
    let rw = ["-c", "write -P 0x61 4k 4k", "-c", "read -P 0x61 4k 4k"];
    for (name, opts) in [
        ("misalign", &["-m"][..]),
        ("nocache", &["-n"][..]),
        ("writeback", &["-t", "writeback"][..]),
        ("unsafe", &["--cache=unsafe"][..]),
        ("discard-off", &["-d", "off"][..]),
        ("io_uring", &["-i", "io_uring"][..]),
    ] {
        let mut args = vec!["-f", "raw"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&rw);
        args.push("IMG");
        check(name, &args, "");
    }
    check(
        "share",
        &["-U", "-r", "-f", "raw", "-c", "read -P 0x5a 0 512", "IMG"],
        "",
    );
    check(
        "share-rw",
        &["-U", "-f", "raw", "-c", "read 0 512", "IMG"],
        "",
    );
    check(
        "sigraise",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 1 0 1",
            "-c",
            "sigraise 9",
            "-c",
            "read 0 1",
            "IMG",
        ],
        "",
    );
    check(
        "abort-loses-buffered-output",
        &["-f", "raw", "-c", "write -P 1 0 1", "-c", "abort", "IMG"],
        "",
    );
    check(
        "quit",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 1 0 1",
            "-c",
            "quit",
            "-c",
            "write -P 2 0 1",
            "IMG",
        ],
        "",
    );
    check(
        "reopen",
        &[
            "-f",
            "raw",
            "-c",
            "reopen -r",
            "-c",
            "write 0 1",
            "-c",
            "reopen -w -c none",
            "-c",
            "write -P 2 0 512",
            "-c",
            "reopen -r -w",
            "-c",
            "reopen -c bogus",
            "-c",
            "reopen x",
            "-c",
            "read -P 2 0 512",
            "IMG",
        ],
        "",
    );
}

#[test]
fn interactive_mode_prints_prompts() {
    if !reference_available() {
        return;
    }
    check(
        "stdin",
        &["-f", "raw", "IMG"],
        "read 0 1\nfoo\n\n  \nwrite -P 0x42 0 512\nread -P 0x42 0 512\nread\t0 1\nq\nread 0 1\n",
    );
    check("stdin-eof", &["-f", "raw", "IMG"], "read -P 0 0 1");
}

#[test]
fn filter_matches_iotests() {
    assert_eq!(
        normalise_line("512 bytes, 1 ops; 00.00 sec (2.710 MiB/sec and 5550.1596 ops/sec)"),
        "512 bytes, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)"
    );
    assert_eq!(
        normalise_line("1,1,0:00:00.00,11396.141,11396.141"),
        "1,1,TIME"
    );
    assert_eq!(
        normalise_line("read 1/1 bytes at offset 0"),
        "read 1/1 bytes at offset 0"
    );
}

/// Every spelling of a byte count that qemu_strtosz treats specially: suffixes, fractions,
/// hex, exponents, signs, overflow and trailing text. A zero-length read at the parsed
/// offset prints the value (or why it was refused), so the parsers can be compared exactly.
#[test]
fn size_arguments_parse_like_qemu_strtosz() {
    if !reference_available() {
        return;
    }
    const SIZES: &[&str] = &[
        "1.5k",
        "0x1000",
        "0X10",
        "0x10b",
        "0xB",
        "+0x10",
        "010",
        "00",
        "4096b",
        "4.5B",
        "1K",
        "+1k",
        "+.5k",
        ".5k",
        ".0",
        "1.",
        "1.k",
        "1.0",
        "1.0b",
        "12.5m",
        "0.75G",
        "3.999T",
        "1P",
        "1.5E",
        "0.5e",
        "1e",
        "1E",
        "7.5E",
        "15E",
        "16E",
        "8E",
        "8191.99P",
        "0.0000000001k",
        "1.9999999999999999999999k",
        "1.0000000000000000001k",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "18446744073709551616k",
        "99999999999999999999k",
        "0x7fffffffffffffff",
        "0xffffffffffffffff",
        "0x10000000000000000",
        "0x10000000000000000k",
        "1e3",
        "1.5e3k",
        "1.5e+3k",
        "1.5E3",
        "0.5e1k",
        "1.0e0",
        "1.5ek",
        "1e-3k",
        "1.5",
        ".5",
        "1.5b",
        "0.1b",
        "k",
        ".",
        ".k",
        "..5k",
        ".5.5k",
        "1.5.5k",
        ".e5k",
        "1..5k",
        "1.-5k",
        "1kb",
        "1.5kk",
        "1k5",
        "1.5x",
        "0b1",
        "inf",
        "nan",
        "0x",
        "0x1k",
        "0x1.",
        "0x1.5",
        "0x+10",
        "00x10",
        "1,5k",
        "-1",
        "-0",
        "-1k",
        "-k",
        "-.5k",
        "+-1",
        "++1",
        "-0x10",
    ];
    let commands: Vec<String> = SIZES.iter().map(|s| format!("read -- {s} 0")).collect();
    let mut args = vec!["-f", "raw"];
    for c in &commands {
        args.push("-c");
        args.push(c);
    }
    args.push("IMG");
    check("sizes", &args, "");
}
