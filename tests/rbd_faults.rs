//! The rbd driver when the cluster stops answering mid-workload (issue 16's fault cases).
//!
//! The OSD of the throw-away cluster is frozen with SIGSTOP and thawed with SIGCONT: to a
//! client that is an OSD that went away and came back. (Killing it would not do: the
//! cluster's memstore OSD keeps its objects only while the daemon lives.) Requests then
//! either wait until the OSD is back, as librbd does by default, or fail once
//! `rados_osd_op_timeout` passes, as with QEMU's driver on the same cluster; either way the
//! main loop keeps running while they wait. The cluster is this binary's own, so that the
//! other rbd tests never see the freeze.
//!
//! Skips with a printed reason where Ceph or the reference QEMU with rbd is missing
//! (RQEMU_REQUIRE_CEPH=1 / RQEMU_REQUIRE_QEMU=1 make that a failure).

mod ceph;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use block::aio::co_sleep;
use block::{AioContext, BlockBackend, IoVector, OpenFlags, Options};

const QEMU_IO: &str = "/usr/bin/qemu-io";
const RQEMU_IMG: &str = env!("CARGO_BIN_EXE_rqemu-img");
const RQEMU_IO: &str = env!("CARGO_BIN_EXE_rqemu-io");

/// One freeze at a time: the tests of this binary share the cluster's one OSD.
static OSD: Mutex<()> = Mutex::new(());

/// The OSD stopped for as long as this lives (thawed on drop, even when an assert fails).
struct Frozen(libc::pid_t);

impl Frozen {
    fn osd(c: &ceph::Cluster) -> Frozen {
        let pidfile = c.dir.join("run/osd.0.pid");
        let pid = std::fs::read_to_string(&pidfile).expect("the OSD's pid file");
        let pid: libc::pid_t = pid.trim().parse().expect("a pid");
        // SAFETY: kill(2) on the pid of the cluster's own OSD daemon.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as in `osd`.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

fn cluster() -> Option<&'static ceph::Cluster> {
    ceph::cluster()
}

fn create(c: &ceph::Cluster, name: &str) -> String {
    let img = c.image(name);
    let out = Command::new(RQEMU_IMG)
        .args(["create", "-f", "raw", &img, "4M"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    img
}

fn pattern(byte: u8) -> IoVector {
    let v = IoVector::alloc(64 << 10);
    v.fill(0, 64 << 10, byte);
    v
}

#[test]
fn requests_wait_for_a_stopped_osd_without_blocking_the_loop_and_complete_after() {
    let Some(c) = cluster() else { return };
    let _one = OSD.lock().unwrap_or_else(|e| e.into_inner());
    let img = create(c, "wait");
    formats::register_all();
    let ctx = AioContext::current();
    let mut opts = Options::new();
    opts.set("driver", "raw");
    let blk = ctx
        .run_until(BlockBackend::open(Some(&img), opts, OpenFlags::default()))
        .expect("open rbd image");
    let frozen = Frozen::osd(c);
    let writer = blk.clone();
    let write = ctx.spawn(async move {
        writer
            .co_pwritev(0, &pattern(0x5a), Default::default())
            .await
    });
    // The loop keeps running timers while the write waits on the network.
    let ticks = ctx.run_until(async {
        let mut ticks = 0;
        for _ in 0..15 {
            co_sleep(Duration::from_millis(100)).await;
            ticks += 1;
        }
        ticks
    });
    assert_eq!(ticks, 15);
    assert!(
        !write.is_finished(),
        "the write cannot finish: no OSD answers"
    );
    drop(frozen);
    ctx.run_until(write)
        .expect("the write completes once the OSD is back");
    let back = IoVector::alloc(64 << 10);
    ctx.run_until(blk.co_preadv(0, &back, Default::default()))
        .unwrap();
    assert!(back.to_vec().iter().all(|&b| b == 0x5a), "the data landed");
}

/// A child's stdout or stderr, collected by a thread as it comes.
struct Collected(std::sync::Arc<Mutex<String>>, std::thread::JoinHandle<()>);

impl Collected {
    fn new(mut pipe: impl std::io::Read + Send + 'static) -> Collected {
        let text = std::sync::Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let chunk = String::from_utf8_lossy(&buf[..n]);
                sink.lock().unwrap().push_str(&chunk);
            }
        });
        Collected(text, thread)
    }

    fn contains(&self, what: &str) -> bool {
        self.0.lock().unwrap().contains(what)
    }

    fn finish(self) -> Vec<u8> {
        self.1.join().unwrap();
        let text = self.0.lock().unwrap().clone();
        text.into_bytes()
    }
}

/// Runs `bin` (qemu-io or rqemu-io) on `img`: a write that succeeds, a pause during which the
/// OSD is stopped, a second write and a read that must fail once `rados_osd_op_timeout`
/// passes; returns the output once the tool exits.
///
/// The OSD is thawed as soon as the read has failed, before the tool exits: closing the image
/// needs the OSD too (librbd releases the object-map lock and the exclusive lock there, each
/// failing only after the op timeout, then removes its watch), so an exit with the OSD still
/// frozen took from 16 s to more than a minute, with either tool, and the test with it.
fn write_across_a_stop(c: &ceph::Cluster, bin: &str, img: &str) -> Output {
    // stdbuf: qemu-io's stdio would hold the first line back until exit in a pipe.
    let mut child: Child = Command::new("stdbuf")
        .args(["-oL", "-eL", bin, "-t", "none", "-f", "raw"])
        .args(["-c", "write -P 0x11 0 64k", "-c", "sleep 1000"])
        .args(["-c", "write -P 0x22 64k 64k", "-c", "read -P 0x11 0 64k"])
        .arg(img)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = Collected::new(child.stdout.take().unwrap());
    let stderr = Collected::new(child.stderr.take().unwrap());
    let start = Instant::now();
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{bin}: no {what} within a minute although rados_osd_op_timeout is set"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("first write", &|| stdout.contains("wrote 65536/65536"));
    let frozen = Frozen::osd(c);
    // Both tools print a request's failure on stdout, librbd's log lines go to stderr.
    wait_for("failed read", &|| {
        stdout.contains("read failed") || stderr.contains("read failed")
    });
    drop(frozen);
    let exited = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            exited.elapsed() < Duration::from_secs(60),
            "{bin} does not exit with the OSD back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Output {
        status: child.wait().unwrap(),
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    }
}

/// Where a librbd log line's timestamp ("2026-12-07T05:26:30.152+0000") starts in `line`.
fn librbd_stamp(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    (0..b.len().saturating_sub(10)).find(|&i| {
        digits(i..i + 4)
            && b[i + 4] == b'-'
            && digits(i + 5..i + 7)
            && b[i + 7] == b'-'
            && digits(i + 8..i + 10)
            && b[i + 10] == b'T'
    })
}

/// The output without timings and without librbd's own (timestamped) log lines.
fn text(out: &Output) -> String {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // librbd's own log lines (timestamped) may land in the middle of a tool's stderr line:
    // the part before the stamp joins the next line again.
    let mut text = String::new();
    let mut pending = String::new();
    for line in all.lines() {
        match librbd_stamp(line) {
            Some(at) => pending.push_str(&line[..at]),
            None => {
                let whole = std::mem::take(&mut pending) + line;
                if !whole.is_empty() && !whole.contains("ops/sec") {
                    text += &whole;
                    text.push('\n');
                }
            }
        }
    }
    text
}

#[test]
fn an_osd_op_timeout_fails_the_waiting_request_as_qemu_does() {
    let Some(c) = cluster() else { return };
    if !Path::new(QEMU_IO).exists() {
        assert!(
            std::env::var("RQEMU_REQUIRE_QEMU").as_deref() != Ok("1"),
            "{QEMU_IO} is missing and RQEMU_REQUIRE_QEMU=1"
        );
        eprintln!("skipping: {QEMU_IO} is missing");
        return;
    }
    let _one = OSD.lock().unwrap_or_else(|e| e.into_inner());
    // One image each: a client that timed out leaves its exclusive lock behind, and the
    // next writer would first wait out the watch timeout to break it.
    let img = |name| format!("{}:rados_osd_op_timeout=3", create(c, name));
    let theirs = write_across_a_stop(c, QEMU_IO, &img("timeout-qemu"));
    let img = img("timeout-ours");
    let ours = write_across_a_stop(c, RQEMU_IO, &img);
    let (theirs, ours_text) = (text(&theirs), text(&ours));
    assert_eq!(ours_text, theirs, "rqemu-io and qemu-io disagree");
    assert!(ours_text.contains("write failed"), "{ours_text}");
    // The thawed cluster serves the image again, the first write intact.
    let after = Command::new(RQEMU_IO)
        .args(["-f", "raw", "-c", "read -P 0x11 0 64k", &img])
        .output()
        .unwrap();
    assert!(
        after.status.success() && !text(&after).contains("fail"),
        "{}",
        text(&after)
    );
}
