//! VHDX and Parallels against the reference QEMU: images qemu-img makes with each creation
//! option and qemu-io fills read the same through rqemu-img; images rqemu-img makes and
//! rqemu-io fills read the same through qemu-img and pass its check; a writer killed
//! mid-write leaves an image that opens (after the VHDX log replay, or the Parallels
//! repair) with every flushed write in place; malformed images fail with clear errors.

mod reference_tools;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use reference_tools::*;

const OURS_IO: &str = env!("CARGO_BIN_EXE_rqemu-io");

/// (format, creation options) of every variant.
const VARIANTS: &[(&str, &str)] = &[
    ("vhdx", ""),
    ("vhdx", "subformat=fixed"),
    ("vhdx", "subformat=fixed,block_state_zero=off"),
    ("vhdx", "block_size=1M,log_size=2M,block_state_zero=off"),
    ("parallels", ""),
    ("parallels", "cluster_size=64k"),
];

/// Patterned writes: data at the start, across a block boundary, and near the end.
const WRITES: &[(u8, u64, u64)] = &[
    (0x5a, 0, 65536),
    (0xa5, (1 << 20) - 512, 2 << 20),
    (0x3c, (11 << 20) + 4096, 8192),
];

fn create(tool: &str, dir: &Path, fmt: &str, opts: &str, name: &str) {
    let mut args = vec!["create", "-q", "-f", fmt];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([name, "12M"]);
    ok(tool, dir, &args);
}

fn fill(io: &str, dir: &Path, fmt: &str, name: &str) {
    for &(p, off, len) in WRITES {
        let cmd = format!("write -P {p} {off} {len}");
        ok(io, dir, &["-f", fmt, "-c", &cmd, name]);
    }
}

/// A raw image with the same writes, made by the reference tools.
fn expected(dir: &Path) {
    ok(
        QEMU_IMG,
        dir,
        &["create", "-q", "-f", "raw", "expected.raw", "12M"],
    );
    fill(QEMU_IO, dir, "raw", "expected.raw");
}

#[test]
fn qemu_made_images_read_identically() {
    if !reference_available() {
        return;
    }
    let dir = scratch("qemu-made");
    expected(&dir);
    let want = std::fs::read(dir.join("expected.raw")).unwrap();
    for (i, (fmt, opts)) in VARIANTS.iter().enumerate() {
        let img = format!("q{i}.{fmt}");
        create(QEMU_IMG, &dir, fmt, opts, &img);
        fill(QEMU_IO, &dir, fmt, &img);
        let out = format!("q{i}.raw");
        ok(OURS, &dir, &["convert", "-f", fmt, "-O", "raw", &img, &out]);
        let got = std::fs::read(dir.join(&out)).unwrap();
        assert!(got == want, "{fmt} {opts}: rqemu-img reads other data");
        ok(OURS, &dir, &["check", "-f", fmt, &img]);
    }
}

#[test]
fn our_images_read_identically_in_qemu_and_pass_its_check() {
    if !reference_available() {
        return;
    }
    let dir = scratch("ours");
    expected(&dir);
    for (i, (fmt, opts)) in VARIANTS.iter().enumerate() {
        let img = format!("o{i}.{fmt}");
        create(OURS, &dir, fmt, opts, &img);
        fill(OURS_IO, &dir, fmt, &img);
        assert_identical(
            &dir.join("expected.raw"),
            &dir.join(&img),
            &format!("{fmt} {opts}"),
        );
        ok(QEMU_IMG, &dir, &["check", "-f", fmt, &img]);
        let info = run(QEMU_IMG, &dir, &["info", "--output=json", &img]);
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(info.contains("\"virtual-size\": 12582912"), "{info}");
    }
}

/// Runs `rqemu-io` on `img` with `cmds`, kills it after `after`, and returns how many
/// writes it reported done.
fn kill_mid_write(dir: &Path, img: &str, cmds: &[String], after: Duration) -> usize {
    let mut args = vec![];
    for c in cmds {
        args.extend(["-c", c.as_str()]);
    }
    args.push(img);
    let mut child = Command::new(OURS_IO)
        .args(&args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
            .filter(|l| l.starts_with("wrote"))
            .count()
    });
    std::thread::sleep(after);
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap()
}

/// The writes of a crash test: one per block or cluster, each followed by a flush.
fn crash_writes(n: usize, stride: u64) -> Vec<String> {
    (0..n)
        .flat_map(|i| {
            [
                format!("write -P {} {} 4096", i % 250 + 1, i as u64 * stride),
                "flush".to_string(),
            ]
        })
        .collect()
}

/// Kills a writer 20 times, each time on a fresh image and a little later, and checks
/// that the image opens and keeps every write that was reported done before the next one
/// started (so that its flush had completed).
fn crash_test(fmt: &str, opts: &str, stride: u64) {
    let dir = scratch(&format!("crash-{fmt}"));
    let img = format!("c.{fmt}");
    let cmds = crash_writes(64, stride);
    for round in 0..20u64 {
        ok(
            OURS,
            &dir,
            &["create", "-q", "-f", fmt, "-o", opts, &img, "64M"],
        );
        let done = kill_mid_write(&dir, &img, &cmds, Duration::from_millis(5 + round * 7));
        // Opening for writing replays the log or repairs the image.
        ok(OURS_IO, &dir, &["-f", fmt, "-c", "flush", &img]);
        let reads: Vec<String> = (0..done.saturating_sub(1))
            .map(|i| format!("read -P {} {} 4096", i % 250 + 1, i as u64 * stride))
            .collect();
        let mut args = vec!["-f", fmt, "-r"];
        for r in &reads {
            args.extend(["-c", r.as_str()]);
        }
        args.push(&img);
        let out = run(OURS_IO, &dir, &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !stdout.contains("Pattern verification failed"),
            "{fmt} round {round}, {done} writes done: {stdout}"
        );
        if reference_available() {
            ok(QEMU_IMG, &dir, &["check", "-f", fmt, &img]);
        }
    }
}

#[test]
fn vhdx_survives_a_killed_writer() {
    crash_test("vhdx", "block_size=1M", 1 << 20);
}

#[test]
fn parallels_survives_a_killed_writer() {
    crash_test("parallels", "cluster_size=64k", 1 << 16);
}

/// A BAT update whose in-place write fails (blkdebug fails writes to the BAT's sector)
/// leaves its entry in the log: read-only opens refuse the image as QEMU does, and a
/// read-write open replays the log, ours and QEMU's alike, after which the data is there.
#[test]
fn vhdx_log_left_by_a_failed_bat_update_replays() {
    let dir = scratch("dirty-log");
    ok(OURS, &dir, &["create", "-q", "-f", "vhdx", "d.vhdx", "64M"]);
    // The BAT of a new 64 MiB image is at 2 MiB, sector 4096.
    let rule = "[inject-error]\nevent = \"pwritev\"\nsector = \"4096\"\niotype = \"write\"\n";
    std::fs::write(dir.join("bat.ini"), rule).unwrap();
    let out = run(
        OURS_IO,
        &dir,
        &["-c", "write -P 5 0 4k", "blkdebug:bat.ini:d.vhdx"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("write failed: Input/output error"),
        "{stdout}"
    );
    std::fs::copy(dir.join("d.vhdx"), dir.join("q.vhdx")).unwrap();
    let ro = run(OURS_IO, &dir, &["-r", "-c", "read 0 4k", "d.vhdx"]);
    let err = String::from_utf8_lossy(&ro.stderr);
    assert!(
        err.contains("contains a log that needs to be replayed"),
        "{err}"
    );
    ok(OURS_IO, &dir, &["-c", "read -P 5 0 4k", "d.vhdx"]);
    ok(OURS_IO, &dir, &["-r", "-c", "read -P 5 0 4k", "d.vhdx"]);
    if reference_available() {
        ok(QEMU_IMG, &dir, &["check", "d.vhdx"]);
        let out = run(QEMU_IMG, &dir, &["check", "-r", "all", "q.vhdx"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ok(QEMU_IO, &dir, &["-r", "-c", "read -P 5 0 4k", "q.vhdx"]);
    }
}

/// Overwrites bytes of a file.
fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// `rqemu-img info` on a damaged image fails with a message containing `want`.
fn refused(dir: &Path, fmt: &str, img: &str, want: &str) {
    let out = run(OURS, dir, &["info", "-f", fmt, img]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{img} opened");
    assert!(err.contains(want), "{img}: {err}");
    assert!(!err.contains("panicked"), "{img}: {err}");
}

#[test]
fn malformed_vhdx_images_are_refused() {
    const FMT: &str = "vhdx";
    let dir = scratch("bad-vhdx");
    let fresh = |name: &str| {
        ok(OURS, &dir, &["create", "-q", "-f", "vhdx", name, "64M"]);
        dir.join(name)
    };
    let p = fresh("headers.vhdx");
    poke(&p, 64 << 10, b"XXXX");
    poke(&p, 128 << 10, b"XXXX");
    refused(&dir, FMT, "headers.vhdx", "No valid VHDX header found");
    let p = fresh("region.vhdx");
    poke(&p, (192 << 10) + 40, &[0xff]);
    refused(&dir, FMT, "region.vhdx", "Invalid argument");
    // BAT entry 0 fully present at 1 TiB: past the end of the file.
    let p = fresh("bat.vhdx");
    poke(&p, 2 << 20, &((1u64 << 40) | 6).to_le_bytes());
    refused(&dir, FMT, "bat.vhdx", "points after end of file");
    // A virtual size of 2^62 needs a BAT far larger than its region.
    let p = fresh("size.vhdx");
    poke(&p, (3 << 20) + (64 << 10) + 8, &(1u64 << 62).to_le_bytes());
    refused(&dir, FMT, "size.vhdx", "Invalid argument");
    // A block size that is no power of two.
    let p = fresh("block.vhdx");
    poke(&p, (3 << 20) + (64 << 10), &3_000_000u32.to_le_bytes());
    refused(&dir, FMT, "block.vhdx", "Invalid argument");
}

#[test]
fn malformed_parallels_images_are_refused_or_repaired() {
    const FMT: &str = "parallels";
    let dir = scratch("bad-parallels");
    let fresh = |name: &str| {
        ok(OURS, &dir, &["create", "-q", "-f", "parallels", name, "4M"]);
        dir.join(name)
    };
    let p = fresh("tracks.img");
    poke(&p, 28, &0u32.to_le_bytes());
    refused(
        &dir,
        FMT,
        "tracks.img",
        "Invalid image: Zero sectors per track",
    );
    let p = fresh("catalog.img");
    poke(&p, 32, &0x7fff_ffffu32.to_le_bytes());
    refused(&dir, FMT, "catalog.img", "Catalog too large");
    let p = fresh("magic.img");
    poke(&p, 0, b"WithoutFreeSpacX");
    refused(&dir, FMT, "magic.img", "Image not in Parallels format");
    // A cluster far past the end of the file: reading it fails cleanly, opening for
    // writing repairs the entry.
    let p = fresh("outside.img");
    poke(&p, 64, &0x00ff_ffffu32.to_le_bytes());
    let out = run(OURS_IO, &dir, &["-r", "-c", "read 0 4k", "outside.img"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let out = run(OURS_IO, &dir, &["-c", "read -P 0 0 4k", "outside.img"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Repairing cluster 0 is outside image"),
        "{err}"
    );
    ok(OURS, &dir, &["check", "outside.img"]);
}

/// The suite's Parallels sample with a dirty bitmap extension (made by Virtuozzo's ploop)
/// opens read-only, which parses and checks the extension, as it does for QEMU.
#[test]
fn the_parallels_bitmap_sample_opens_read_only() {
    let sample = Path::new(
        "/var/tmp/qemu-iotests-src/qemu-10.0.2/tests/qemu-iotests/sample_images/parallels-with-bitmap.bz2",
    );
    if !sample.exists() {
        eprintln!("skipping: {} is not fetched", sample.display());
        return;
    }
    let dir = scratch("bitmap-sample");
    let out = Command::new("bzip2")
        .arg("-dc")
        .arg(sample)
        .output()
        .unwrap();
    assert!(out.status.success(), "bzip2 -dc failed");
    std::fs::write(dir.join("bm.img"), out.stdout).unwrap();
    let info = run(OURS, &dir, &["info", "-f", "parallels", "bm.img"]);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    // A damaged extension cluster is refused on a read-only open.
    let image = std::fs::read(dir.join("bm.img")).unwrap();
    let ext_off = u64::from_le_bytes(image[56..64].try_into().unwrap()) * 512;
    let at = ext_off as usize + 100;
    poke(&dir.join("bm.img"), at as u64, &[image[at] ^ 0xff]);
    refused(
        &dir,
        "parallels",
        "bm.img",
        "Wrong checksum in Format Extension header",
    );
}
