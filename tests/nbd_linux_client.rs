//! A real Linux guest's ext4 on an rqemu-nbd export: scripts/linux-client/ builds a Debian
//! cloud kernel and a small initramfs, and boots it under qemu-system-x86_64 (TCG) on a disk
//! that `rqemu-nbd -f qcow2 -t` serves from a qcow2 image made by rqemu-img. The guest makes
//! ext4, writes 2,000 files, checks them with e2fsck and sha256 sums, and reports one line.
//! Covered: QEMU's NBD client over TCP and over a unix socket, presenting the disk as
//! virtio-blk and as IDE; the guest kernel's own NBD client; and data written, the server
//! restarted, then verified. After each, `qemu-img check` must find the image clean.
//!
//! Each boot takes about 20-40 s of one CPU. Skips with a printed reason when QEMU, the guest's
//! tools (busybox-static, e2fsprogs, nbd-client) or the kernel package are unavailable, and
//! fails instead under RQEMU_REQUIRE_QEMU=1.

mod nbd_rig;
mod reference_tools;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nbd_rig::RQEMU_NBD;
use reference_tools::{ok, scratch, OURS, QEMU_IMG};

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/linux-client");

/// Prints why the test is skipped and returns false, or panics under RQEMU_REQUIRE_QEMU=1.
fn skip(why: &str) -> bool {
    if std::env::var("RQEMU_REQUIRE_QEMU").as_deref() == Ok("1") {
        panic!("RQEMU_REQUIRE_QEMU=1 but {why}");
    }
    eprintln!("skipping: {why}");
    false
}

/// The built guest (vmlinuz, initrd.gz), shared by the tests of this process; None (after
/// printing why) when it cannot be built here.
fn guest() -> Option<PathBuf> {
    static BUILD: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);
    let tools = [
        "/usr/bin/qemu-system-x86_64",
        QEMU_IMG,
        "/bin/busybox",
        "/usr/sbin/mke2fs",
        "/usr/sbin/e2fsck",
        "/usr/sbin/nbd-client",
        "/usr/bin/apt-get",
    ];
    if !nbd_rig::tools_available(&tools) {
        return None;
    }
    let mut built = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let result = built.get_or_insert_with(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("linux-client");
        let out = Command::new(format!("{SCRIPTS}/build.sh"))
            .arg(&dir)
            .output()
            .expect("run scripts/linux-client/build.sh");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        match out.status.code() {
            Some(0) => Ok(dir),
            Some(2) => Err(format!("the guest kernel cannot be fetched: {stderr}")),
            _ => panic!("scripts/linux-client/build.sh failed: {stderr}"),
        }
    });
    match result {
        Ok(dir) => Some(dir.clone()),
        Err(why) => {
            skip(why);
            None
        }
    }
}

/// Where rqemu-nbd listens.
#[derive(Clone)]
enum Listen {
    Tcp(u16),
    Unix(PathBuf),
}

impl Listen {
    /// A free loopback port (found by binding port 0).
    fn tcp() -> Listen {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Listen::Tcp(port)
    }

    /// The -drive file= spec of QEMU's NBD client for this address.
    fn drive(&self) -> String {
        match self {
            Listen::Tcp(port) => format!("file=nbd://127.0.0.1:{port},format=raw"),
            Listen::Unix(path) => format!("file=nbd+unix:///?socket={},format=raw", path.display()),
        }
    }
}

/// `rqemu-nbd -f qcow2 -t` serving one image; stopped (SIGTERM) when dropped.
struct Export {
    child: Child,
}

impl Export {
    fn start(image: &Path, listen: &Listen) -> Export {
        let mut cmd = Command::new(RQEMU_NBD);
        cmd.args(["-f", "qcow2", "-t", "-e", "4", "-x", ""]);
        match listen {
            Listen::Tcp(port) => cmd.args(["-b", "127.0.0.1", "-p", &port.to_string()]),
            Listen::Unix(path) => cmd.arg("-k").arg(path),
        };
        let child = cmd
            .arg(image)
            .stdin(Stdio::null())
            .spawn()
            .expect("start rqemu-nbd");
        let export = Export { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = match listen {
                Listen::Tcp(port) => TcpStream::connect(("127.0.0.1", *port)).is_ok(),
                Listen::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            };
            if up {
                return export;
            }
            assert!(
                Instant::now() < deadline,
                "rqemu-nbd did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server and asserts that it exited cleanly.
    fn stop(mut self) {
        assert!(
            self.terminate(),
            "rqemu-nbd did not exit cleanly on SIGTERM"
        );
    }

    fn terminate(&mut self) -> bool {
        // SAFETY: kill on the pid of a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            self.terminate();
        }
    }
}

/// Boots the guest once (run.sh) and returns its token, panicking with the serial log's tail
/// when it does not pass.
fn boot(guest: &Path, dir: &Path, kind: &str, disk: &str, step: &str, expect: &str) -> String {
    let log = dir.join(format!("{kind}-{step}.log"));
    let out = Command::new(format!("{SCRIPTS}/run.sh"))
        .args([guest.to_str().unwrap(), kind, disk, step, expect])
        .env("LOG", &log)
        .output()
        .expect("run scripts/linux-client/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprint!("{stdout}");
    assert!(
        out.status.success(),
        "the guest did not pass ({kind} {step}): {stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RQEMU-LINUX: PASS"))
        .expect("a PASS line");
    let token = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("token="))
        .expect("a token on the PASS line");
    assert_eq!(token.len(), 16, "{line}");
    token.to_string()
}

/// A fresh 1 GiB qcow2 image made by rqemu-img.
fn new_image(dir: &Path) -> PathBuf {
    ok(
        OURS,
        dir,
        &["create", "-q", "-f", "qcow2", "disk.qcow2", "1G"],
    );
    dir.join("disk.qcow2")
}

/// QEMU's own check of the image must find nothing wrong.
fn check_clean(dir: &Path, image: &Path) {
    let out = Command::new(QEMU_IMG)
        .args(["check", "-f", "qcow2"])
        .arg(image)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No errors were found"),
        "qemu-img check: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One full boot (write, remount, verify) against a fresh export, then the image check.
fn full_run(case: &str, kind: &str, listen: impl FnOnce(&Path) -> Listen) {
    let Some(guest) = guest() else { return };
    let dir = scratch(case);
    let image = new_image(&dir);
    let listen = listen(&dir);
    let export = Export::start(&image, &listen);
    let disk = match (kind, &listen) {
        ("nbd", Listen::Tcp(port)) => format!("127.0.0.1:{port}"),
        _ => listen.drive(),
    };
    boot(&guest, &dir, kind, &disk, "full", "");
    export.stop();
    check_clean(&dir, &image);
}

#[test]
fn virtio_disk_over_tcp() {
    full_run("virtio-tcp", "virtio", |_| Listen::tcp());
}

#[test]
fn ide_disk_over_a_unix_socket() {
    full_run("ide-unix", "ide", |dir| Listen::Unix(dir.join("nbd.sock")));
}

#[test]
fn guest_kernel_nbd_client() {
    full_run("kernel-nbd", "nbd", |_| Listen::tcp());
}

#[test]
fn data_survives_a_server_restart() {
    let Some(guest) = guest() else { return };
    let dir = scratch("restart");
    let image = new_image(&dir);
    let socket = Listen::Unix(dir.join("nbd.sock"));
    let export = Export::start(&image, &socket);
    let token = boot(&guest, &dir, "virtio", &socket.drive(), "write", "");
    export.stop();
    check_clean(&dir, &image);
    // A new server process, reached another way, must serve what the first one stored.
    let tcp = Listen::tcp();
    let export = Export::start(&image, &tcp);
    let again = boot(&guest, &dir, "ide", &tcp.drive(), "verify", &token);
    assert_eq!(token, again);
    export.stop();
    check_clean(&dir, &image);
}
