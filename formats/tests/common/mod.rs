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

/// qemu-io commands against an image (each `-c`).
pub fn qemu_io(path: &str, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
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
    let raw = dir.join("reference.raw");
    let raw = raw.to_str().unwrap();
    run_ok("/usr/bin/qemu-img", &["convert", "-O", "raw", path, raw]);
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
    let mut opts = Options::new();
    opts.set("driver", "qcow2");
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
