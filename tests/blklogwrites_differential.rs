//! blklogwrites against QEMU's: the same qemu-io workload through the reference qemu-io and
//! rqemu-io must leave byte-identical logs (dm-log-writes format) and images, and each tool
//! must append (log-append=on) to a log the other wrote. Skips with a printed reason when the
//! reference tools are absent; fails instead when RQEMU_REQUIRE_QEMU=1.

mod reference_tools;

use std::path::Path;

use reference_tools::{ok, reference_available, run, scratch, QEMU_IMG, QEMU_IO};

const RQEMU_IO: &str = env!("CARGO_BIN_EXE_rqemu-io");

/// The `--image-opts` string for a raw image `d.img` logged into `log`.
fn spec(extra: &str) -> String {
    format!("driver=blklogwrites,file.filename=d.img,log.filename=log{extra}")
}

/// Runs a qemu-io workload through `bin` in `dir`; returns its combined output.
fn io(bin: &str, dir: &Path, extra: &str, commands: &[&str]) -> String {
    let spec = spec(extra);
    let mut args = vec!["--image-opts", spec.as_str()];
    for c in commands {
        args.extend(["-c", c]);
    }
    let out = run(bin, dir, &args);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

/// A fresh raw image and empty log in a scratch directory.
fn fresh(case: &str) -> std::path::PathBuf {
    let dir = scratch(case);
    ok(
        QEMU_IMG,
        &dir,
        &["create", "-q", "-f", "raw", "d.img", "1M"],
    );
    std::fs::write(dir.join("log"), b"").unwrap();
    dir
}

/// The entries of a log as (sector, nr_sectors, flags), after checking its super block.
fn entries(log: &[u8]) -> Vec<(u64, u64, u64)> {
    let u64_at = |o: usize| u64::from_le_bytes(log[o..o + 8].try_into().unwrap());
    assert_eq!(&log[0..8], b"rhswfsj\0", "magic");
    assert_eq!(u64_at(8), 1, "version");
    let sectorsize = u32::from_le_bytes(log[24..28].try_into().unwrap()) as usize;
    let mut offset = sectorsize;
    (0..u64_at(16))
        .map(|_| {
            let e = (u64_at(offset), u64_at(offset + 8), u64_at(offset + 16));
            let data = if e.2 & 4 != 0 { 0 } else { e.1 as usize };
            offset += sectorsize * (1 + data);
            e
        })
        .collect()
}

const WORKLOAD: &[&str] = &[
    "write -P 0x11 0 4k",
    "write -P 0x22 -f 16k 1k",
    "flush",
    "write -z 8k 4k",
    "writev -P 0x33 64k 512 1536",
    "flush",
    "write -P 0x44 128k 64k",
];

fn compare(case: &str, extra: &str, commands: &[&str]) {
    let theirs = fresh(&format!("{case}-ref"));
    let ours = fresh(&format!("{case}-ours"));
    let out_theirs = io(QEMU_IO, &theirs, extra, commands);
    let out_ours = io(RQEMU_IO, &ours, extra, commands);
    let strip = |t: &str| {
        t.lines()
            .map(|l| l.split(" ops; ").next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&out_ours), strip(&out_theirs), "{case}: output");
    for file in ["d.img", "log"] {
        let a = std::fs::read(theirs.join(file)).unwrap();
        let b = std::fs::read(ours.join(file)).unwrap();
        assert!(
            a == b,
            "{case}: {file} differs ({} vs {} bytes); entries theirs {:?} ours {:?}",
            a.len(),
            b.len(),
            entries(&std::fs::read(theirs.join("log")).unwrap()),
            entries(&std::fs::read(ours.join("log")).unwrap())
        );
    }
}

#[test]
fn logs_match_qemu_byte_for_byte() {
    if !reference_available() {
        return;
    }
    compare("plain", "", WORKLOAD);
    compare(
        "sector4k",
        ",log-sector-size=4096",
        &["write -P 0x55 0 8k", "flush", "write -z 64k 4k"],
    );
    compare(
        "interval",
        ",log-super-update-interval=2",
        &[
            "write -P 1 0 512",
            "write -P 2 512 512",
            "write -P 3 1k 512",
        ],
    );
}

#[test]
fn each_tool_appends_to_the_others_log() {
    if !reference_available() {
        return;
    }
    let dir = fresh("append");
    io(QEMU_IO, &dir, "", &["write -P 0x11 0 4k", "flush"]);
    io(
        RQEMU_IO,
        &dir,
        ",log-append=on",
        &["write -P 0x22 4k 4k", "flush"],
    );
    io(
        QEMU_IO,
        &dir,
        ",log-append=on",
        &["write -P 0x33 8k 512", "flush"],
    );
    io(RQEMU_IO, &dir, ",log-append=on", &["write -P 0x44 12k 512"]);
    let log = std::fs::read(dir.join("log")).unwrap();
    assert_eq!(
        entries(&log),
        [
            (0, 8, 0),
            (0, 0, 1),
            (8, 8, 0),
            (0, 0, 1),
            (16, 1, 0),
            (0, 0, 1),
            (24, 1, 0),
            (0, 0, 1)
        ]
    );
    // The data of the fourth write sits behind its entry, after the three before it.
    let fourth = 512 * (1 + 9 + 1 + 9 + 1 + 2 + 1 + 1);
    assert_eq!(&log[fourth..fourth + 512], &[0x44; 512][..]);
}

#[test]
fn bad_options_and_logs_are_refused() {
    if !reference_available() {
        return;
    }
    let dir = fresh("bad");
    let both = io(
        RQEMU_IO,
        &dir,
        ",log-append=on,log-sector-size=512",
        &["read 0 512"],
    );
    assert!(
        both.contains("log-append and log-sector-size are mutually exclusive"),
        "{both}"
    );
    let size = io(RQEMU_IO, &dir, ",log-sector-size=1000", &["read 0 512"]);
    assert!(size.contains("Invalid log sector size 1000"), "{size}");
    std::fs::write(dir.join("log"), vec![0xaa; 1024]).unwrap();
    let magic = io(RQEMU_IO, &dir, ",log-append=on", &["read 0 512"]);
    assert!(magic.contains("Invalid log superblock magic"), "{magic}");
    // A super block claiming more entries than the log holds is refused, not followed.
    let mut log = vec![0u8; 512];
    log[0..8].copy_from_slice(b"rhswfsj\0");
    log[8] = 1;
    log[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    log[24..28].copy_from_slice(&512u32.to_le_bytes());
    std::fs::write(dir.join("log"), &log).unwrap();
    let huge = io(RQEMU_IO, &dir, ",log-append=on", &["read 0 512"]);
    assert!(huge.contains("Failed to read log entry 0"), "{huge}");
}
