//! Helpers shared by the qcow2 integration tests: the reference QEMU tools, opening images
//! through the block API, and whole-image reads.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::rc::Rc;

use block::{AioContext, BlockBackend, IoVector, OpenFlags, Options, RequestFlags};

/// Whether the reference qemu-img/qemu-io can be used; prints why not, and fails instead
/// when RQEMU_REQUIRE_QEMU=1.
pub fn have_qemu() -> bool {
    let ok = Path::new("/usr/bin/qemu-img").exists() && Path::new("/usr/bin/qemu-io").exists();
    if !ok {
        if std::env::var("RQEMU_REQUIRE_QEMU").as_deref() == Ok("1") {
            panic!("RQEMU_REQUIRE_QEMU=1 but /usr/bin/qemu-img or qemu-io is missing");
        }
        eprintln!("skipped: reference QEMU (/usr/bin/qemu-img, qemu-io) is not installed");
    }
    ok
}

/// Runs a command and returns (exit code, stdout, stderr).
pub fn run(prog: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(prog).args(args).output().expect("spawn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command and panics with its output unless it succeeds.
pub fn run_ok(prog: &str, args: &[&str]) -> String {
    let (rc, out, err) = run(prog, args);
    assert_eq!(rc, 0, "{prog} {args:?} failed:\n{out}\n{err}");
    out
}

/// qemu-io commands against a qcow2 image (each `-c`).
pub fn qemu_io(path: &str, cmds: &[&str]) {
    qemu_io_fmt(path, "qcow2", cmds)
}

/// qemu-io commands against an image of format `fmt` (each `-c`).
pub fn qemu_io_fmt(path: &str, fmt: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(path);
    let out = run_ok("/usr/bin/qemu-io", &args);
    assert!(
        !out.contains("failed"),
        "qemu-io {cmds:?} reported a failure: {out}"
    );
}

/// The guest contents of an image as the reference sees them.
pub fn reference_raw(path: &str, dir: &Path) -> Vec<u8> {
    convert_to_raw(&[path], dir)
}

/// The guest contents of an image of format `fmt` as the reference sees them (a fixed
/// VHD must be named: it probes as raw).
pub fn reference_raw_fmt(path: &str, fmt: &str, dir: &Path) -> Vec<u8> {
    convert_to_raw(&["-f", fmt, path], dir)
}

fn convert_to_raw(source: &[&str], dir: &Path) -> Vec<u8> {
    let raw = dir.join("reference.raw");
    let raw = raw.to_str().unwrap();
    let mut args = vec!["convert", "-O", "raw"];
    args.extend_from_slice(source);
    args.push(raw);
    run_ok("/usr/bin/qemu-img", &args);
    std::fs::read(raw).unwrap()
}

/// `qemu-img check` output and exit code.
pub fn qemu_check(path: &str) -> (i32, String) {
    let (rc, out, err) = run("/usr/bin/qemu-img", &["check", path]);
    (rc, format!("{out}{err}"))
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Registers the formats, and runs the tests of a binary one at a time: a child process
/// forked by a parallel test (qemu-img) can hold a copy of our image's descriptor, and
/// with it the image lock, until it execs, which on a loaded machine takes long enough to
/// make the reference tools see a stale lock.
pub fn setup() -> std::sync::MutexGuard<'static, ()> {
    formats::register_all();
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens an image with our qcow2 driver.
pub async fn open(path: &str, writable: bool) -> block::Result<Rc<BlockBackend>> {
    open_fmt(path, "qcow2", writable).await
}

/// Opens an image with our driver for `fmt`.
pub async fn open_fmt(path: &str, fmt: &str, writable: bool) -> block::Result<Rc<BlockBackend>> {
    let mut opts = Options::new();
    opts.set("driver", fmt);
    let flags = OpenFlags {
        read_only: !writable,
        ..OpenFlags::default()
    };
    BlockBackend::open(Some(path), opts, flags).await
}

/// Reads the whole virtual disk through our driver, in pieces of `chunk` bytes.
pub async fn read_all(blk: &BlockBackend, chunk: usize) -> Vec<u8> {
    let len = blk.getlength() as usize;
    let mut out = vec![0u8; len];
    let mut pos = 0;
    while pos < len {
        let n = chunk.min(len - pos);
        let buf = IoVector::alloc(n);
        blk.co_preadv(pos as u64, &buf, RequestFlags::empty())
            .await
            .expect("read");
        buf.copy_to_slice(0, &mut out[pos..pos + n]);
        pos += n;
    }
    out
}

/// Runs a future on this thread's AioContext.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    AioContext::current().run_until(f)
}

/// Index of the first differing byte.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// A tiny deterministic random generator (xorshift), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    /// Next value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Creates an image with our driver for `fmt`; `opts` is a `key=value,...` list.
pub fn create_fmt(path: &str, fmt: &str, size: u64, opts: &str) -> block::Result<()> {
    let mut options = if opts.is_empty() {
        Options::new()
    } else {
        Options::parse_keyval(opts, None).unwrap()
    };
    options.set("size", size.to_string());
    let create = block::registry::find_driver(fmt).unwrap().create.unwrap();
    block_on(create(path, &mut options))
}

/// Pattern writes `(byte, offset, len)` used by the differential tests: unaligned, across
/// block boundaries, and at the end of the disk.
pub fn patterns(size: u64) -> Vec<(u8, u64, u64)> {
    vec![
        (0x11, 0, 4096),
        (0x22, 1 << 20, 3 << 20),
        (0x33, (5 << 20) - 700, 1400),
        (0x44, size - 8192, 8192),
    ]
}

/// An image the reference qemu-img creates with `opts` and qemu-io fills with
/// [`patterns`] reads the same through our driver as through qemu-img.
pub fn reference_image_reads_identically(fmt: &str, opts: &str, size: u64) {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = dir.path().join(format!("ref.{fmt}"));
    let img = img.to_str().unwrap();
    let mut args = vec!["create", "-q", "-f", fmt];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    let size_arg = size.to_string();
    args.extend([img, size_arg.as_str()]);
    run_ok("/usr/bin/qemu-img", &args);
    let cmds: Vec<String> = patterns(size)
        .iter()
        .map(|(p, off, len)| format!("write -P {p} {off} {len}"))
        .collect();
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io_fmt(img, fmt, &cmds);
    let expected = reference_raw_fmt(img, fmt, dir.path());
    let ours = block_on(async {
        let blk = open_fmt(img, fmt, false).await.expect("open");
        read_all(&blk, 1 << 20).await
    });
    assert_eq!(first_diff(&ours, &expected), None, "{fmt} {opts}");
}

/// An image our driver creates with `opts` and fills with [`patterns`] reads the same in
/// the reference qemu-img; returns its path's directory and the guest contents written.
pub fn our_image(fmt: &str, opts: &str, size: u64) -> (tempfile::TempDir, String, Vec<u8>) {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = dir.path().join(format!("ours.{fmt}"));
    let img = img.to_str().unwrap().to_string();
    create_fmt(&img, fmt, size, opts).expect("create");
    let written = block_on(async {
        let blk = open_fmt(&img, fmt, true).await.expect("open");
        let len = blk.getlength();
        let mut expected = vec![0u8; len as usize];
        for (p, off, n) in patterns(len) {
            let data = vec![p; n as usize];
            blk.co_pwritev(off, &IoVector::from_slice(&data), RequestFlags::empty())
                .await
                .expect("write");
            expected[off as usize..(off + n) as usize].copy_from_slice(&data);
        }
        blk.co_flush().await.expect("flush");
        blk.close().await.expect("close");
        expected
    });
    if have_qemu() {
        let got = reference_raw_fmt(&img, fmt, dir.path());
        assert_eq!(first_diff(&got, &written), None, "{fmt} {opts}");
    }
    (dir, img, written)
}

/// Writes `bytes` at `offset` of a file (corrupting an image on purpose).
pub fn poke(path: &str, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Writes an image built by a test into `dir`, returning its path.
pub fn write_image(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

/// The message of a failed open through our driver.
pub fn open_error(path: &str, fmt: &str) -> String {
    match block_on(open_fmt(path, fmt, false)) {
        Ok(_) => panic!("{path} opened"),
        Err(e) => e.to_string(),
    }
}

/// Our driver's view of a whole image; when the reference QEMU is installed, it must match
/// what `qemu-img convert -f FMT -O raw` makes of the same file.
pub fn read_like_reference(img: &str, fmt: &str) -> Vec<u8> {
    let ours = block_on(async {
        let blk = open_fmt(img, fmt, false).await.expect("open");
        read_all(&blk, 300 << 10).await
    });
    if have_qemu() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let expected = reference_raw_fmt(img, fmt, dir.path());
        assert_eq!(first_diff(&ours, &expected), None, "{fmt} {img}");
    }
    ours
}

/// A sample image of qemu-iotests, decompressed into `dir`, if the suite's cache is here
/// (it is GPL test data: read at test time, never copied into the project).
pub fn iotests_sample(name: &str, dir: &Path) -> Option<String> {
    let src = Path::new("/var/tmp/qemu-iotests-src/qemu-10.0.2/tests/qemu-iotests/sample_images")
        .join(format!("{name}.bz2"));
    if !src.exists() {
        eprintln!("skipped: {} is absent", src.display());
        return None;
    }
    let out = dir.join(name);
    let (rc, _, err) = run(
        "sh",
        &[
            "-c",
            &format!("bzcat '{}' > '{}'", src.display(), out.display()),
        ],
    );
    assert_eq!(rc, 0, "bzcat: {err}");
    Some(out.to_str().unwrap().to_string())
}

/// The message `qemu-img info` fails with on an image, if the reference is installed.
pub fn reference_open_error(path: &str, fmt: &str) -> Option<String> {
    if !have_qemu() {
        return None;
    }
    let (rc, _, err) = run("/usr/bin/qemu-img", &["info", "-f", fmt, path]);
    assert_ne!(rc, 0, "qemu-img opened {path}");
    Some(err)
}
