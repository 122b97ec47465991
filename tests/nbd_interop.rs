//! rqemu-nbd against real NBD clients, differential: the same image is served by rqemu-nbd
//! and by the reference qemu-nbd, and QEMU's client (qemu-img info/map/compare/convert,
//! qemu-io) and libnbd's tools (nbdinfo --list/--map, nbdcopy) must see the same thing
//! from both. Skips without the reference tools (fails under RQEMU_REQUIRE_QEMU=1).

mod nbd_rig;
mod reference_tools;

use std::path::Path;

use nbd_rig::{output, Server, QEMU_NBD, RQEMU_NBD};
use reference_tools::{image, ok, run, scratch, QEMU_IMG, QEMU_IO};

const NBDINFO: &str = "/usr/bin/nbdinfo";
const NBDCOPY: &str = "/usr/bin/nbdcopy";

fn tools_available(extra: &[&str]) -> bool {
    let mut tools = vec![QEMU_IMG, QEMU_IO, QEMU_NBD];
    tools.extend_from_slice(extra);
    nbd_rig::tools_available(&tools)
}

/// A base with data and an overlay that overwrites part of it and zeroes another part.
fn chain(dir: &Path) {
    image(
        dir,
        "base.qcow2",
        "8M",
        None,
        &[(0x11, 0, 2 << 20), (0x22, 4 << 20, 1 << 20)],
    );
    image(
        dir,
        "top.qcow2",
        "8M",
        Some("base.qcow2"),
        &[(0x33, 1 << 20, 512 << 10)],
    );
    ok(QEMU_IO, dir, &["-c", "write -z 4M 256k", "top.qcow2"]);
}

/// `qemu-img compare` finds the raw file `raw` identical to top.qcow2.
fn assert_same_as_top(dir: &Path, raw: &str) {
    ok(
        QEMU_IMG,
        dir,
        &["compare", "-f", "raw", "-F", "qcow2", raw, "top.qcow2"],
    );
}

#[test]
fn read_only_chain_looks_the_same_through_both_servers() {
    if !tools_available(&[NBDINFO]) {
        return;
    }
    let dir = scratch("nbd-readonly");
    chain(&dir);
    let args = [
        "-f",
        "qcow2",
        "-r",
        "-A",
        "-t",
        "-x",
        "exp",
        "-D",
        "the top",
        "top.qcow2",
    ];
    let ours = Server::start(RQEMU_NBD, &dir, "ours", &args);
    let theirs = Server::start(QEMU_NBD, &dir, "theirs", &args);
    let uri = |s: &Server| format!("nbd+unix:///exp?socket={}", s.socket.display());
    let commands: &[&[&str]] = &[
        &[QEMU_IMG, "map", "--output=json", "-f", "raw", "URI"],
        &[QEMU_IMG, "map", "-f", "raw", "URI"],
        &[QEMU_IMG, "info", "-f", "raw", "URI"],
        &[NBDINFO, "--map", "URI"],
        &[NBDINFO, "--map=qemu:allocation-depth", "URI"],
        &[NBDINFO, "--list", "--json", "URI"],
        &[
            QEMU_IO,
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0x11 0 1M",
            "-c",
            "read -P 0x33 1M 512k",
            "-c",
            "read -P 0 4M 256k",
            "-c",
            "read -P 0x22 4352k 768k",
            "URI",
        ],
    ];
    for cmd in commands {
        let run_on = |s: &Server| {
            let u = uri(s);
            let args: Vec<&str> = cmd[1..]
                .iter()
                .map(|a| if *a == "URI" { u.as_str() } else { a })
                .collect();
            output(cmd[0], &dir, &args, s)
        };
        assert_eq!(run_on(&ours), run_on(&theirs), "{cmd:?}");
    }
    assert_same_as_top(&dir, &uri(&ours));
    ok(
        QEMU_IMG,
        &dir,
        &["convert", "-f", "raw", "-O", "raw", &uri(&ours), "copy.raw"],
    );
    assert_same_as_top(&dir, "copy.raw");
    if Path::new(NBDCOPY).exists() {
        ok(NBDCOPY, &dir, &[&uri(&ours), "nbdcopy.raw"]);
        assert_same_as_top(&dir, "nbdcopy.raw");
    }
}

#[test]
fn writes_through_both_servers_leave_the_same_image() {
    if !tools_available(&[]) {
        return;
    }
    let dir = scratch("nbd-write");
    chain(&dir);
    std::fs::copy(dir.join("top.qcow2"), dir.join("ours.qcow2")).unwrap();
    std::fs::copy(dir.join("top.qcow2"), dir.join("theirs.qcow2")).unwrap();
    let script = [
        "write -P 0x44 0 64k",
        "write -P 0x55 -F 100k 8k",
        "write -z 1M 128k",
        "write -z -u 2M 64k",
        "discard 5M 64k",
        "aio_write -P 0x66 6M 4k",
        "aio_write -P 0x67 6M 4k",
        "aio_flush",
        "flush",
        "read -P 0x44 0 64k",
        "read -P 0 1M 128k",
        "read -v 8388000 592",
        "read 8388600 1024",
        "write 8388600 1024",
    ];
    let mut outputs = Vec::new();
    for (bin, name) in [(RQEMU_NBD, "ours"), (QEMU_NBD, "theirs")] {
        let file = format!("{name}.qcow2");
        let server = Server::start(bin, &dir, name, &["-f", "qcow2", "--discard=unmap", &file]);
        let mut args = vec!["-f", "raw"];
        for c in script {
            args.extend(["-c", c]);
        }
        let uri = server.uri();
        args.push(&uri);
        let out = run(QEMU_IO, &dir, &args);
        outputs.push(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&out.stderr).lines())
                .filter(|l| !l.contains("ops/sec"))
                .map(|l| l.replace(&server.socket.display().to_string(), "SOCKET"))
                .collect::<Vec<_>>(),
        );
        // Without -t the server exits by itself once qemu-io has gone.
        let mut server = server;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while server.exited().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: server kept running"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    assert_eq!(outputs[0], outputs[1]);
    ok(QEMU_IMG, &dir, &["check", "ours.qcow2"]);
    ok(QEMU_IMG, &dir, &["compare", "ours.qcow2", "theirs.qcow2"]);
}

#[test]
fn copies_into_an_export() {
    if !tools_available(&[NBDCOPY]) {
        return;
    }
    let dir = scratch("nbd-copy-in");
    chain(&dir);
    ok(
        QEMU_IMG,
        &dir,
        &["create", "-q", "-f", "qcow2", "target.qcow2", "8M"],
    );
    ok(
        QEMU_IMG,
        &dir,
        &["create", "-q", "-f", "raw", "target2.raw", "8M"],
    );
    let server = Server::start(RQEMU_NBD, &dir, "t", &["-f", "qcow2", "-t", "target.qcow2"]);
    ok(
        QEMU_IMG,
        &dir,
        &[
            "convert",
            "-n",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "top.qcow2",
            &server.uri(),
        ],
    );
    assert!(server.stop());
    ok(QEMU_IMG, &dir, &["compare", "target.qcow2", "top.qcow2"]);
    ok(QEMU_IMG, &dir, &["check", "target.qcow2"]);
    ok(
        QEMU_IMG,
        &dir,
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "top.qcow2",
            "top.raw",
        ],
    );
    let server = Server::start(RQEMU_NBD, &dir, "t2", &["-f", "raw", "-t", "target2.raw"]);
    ok(NBDCOPY, &dir, &["top.raw", &server.uri()]);
    assert!(server.stop());
    assert_same_as_top(&dir, "target2.raw");
}

/// Runs qemu-io `checks` on an export (read-only with `-r` in `opts`); all must succeed.
fn qemu_io_sees(dir: &Path, uri: &str, opts: &[&str], checks: &[&str]) {
    let mut args = vec!["-f", "raw"];
    args.extend_from_slice(opts);
    for c in checks {
        args.extend(["-c", c]);
    }
    args.push(uri);
    let out = run(QEMU_IO, dir, &args);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("fail"),
        "{checks:?}: {text}"
    );
}

#[test]
fn offset_snapshots_and_fork() {
    if !tools_available(&[]) {
        return;
    }
    let dir = scratch("nbd-options");
    ok(
        QEMU_IMG,
        &dir,
        &["create", "-q", "-f", "raw", "o.raw", "4M"],
    );
    ok(
        QEMU_IO,
        &dir,
        &["-f", "raw", "-c", "write -P 0x99 1M 64k", "o.raw"],
    );
    // -o: the export starts 1 MiB into the image.
    let server = Server::start(
        RQEMU_NBD,
        &dir,
        "o",
        &["-f", "raw", "-o", "1048576", "o.raw"],
    );
    qemu_io_sees(
        &dir,
        &server.uri(),
        &[],
        &["read -P 0x99 0 64k", "read -P 0 64k 64k"],
    );
    drop(server);
    image(&dir, "l.qcow2", "4M", None, &[(1, 0, 65536)]);
    ok(QEMU_IMG, &dir, &["snapshot", "-c", "snap1", "l.qcow2"]);
    ok(QEMU_IO, &dir, &["-c", "write -P 2 0 64k", "l.qcow2"]);
    // -l: an internal snapshot, read-only.
    let server = Server::start(
        RQEMU_NBD,
        &dir,
        "l",
        &["-f", "qcow2", "-l", "snap1", "l.qcow2"],
    );
    qemu_io_sees(&dir, &server.uri(), &["-r"], &["read -P 1 0 64k"]);
    drop(server);
    // -s: writes go to a temporary overlay and never reach the image.
    let server = Server::start(RQEMU_NBD, &dir, "s", &["-f", "qcow2", "-s", "l.qcow2"]);
    qemu_io_sees(
        &dir,
        &server.uri(),
        &[],
        &["write -P 3 0 64k", "read -P 3 0 64k"],
    );
    drop(server);
    ok(QEMU_IO, &dir, &["-c", "read -P 2 0 64k", "l.qcow2"]);
    // --fork: the parent returns once the server listens; a failing child fails the parent.
    let sock = dir.join("f.sock");
    let pid_file = dir.join("f.pid");
    let fork_args = [
        "-f",
        "qcow2",
        "-t",
        "--fork",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "-k",
        sock.to_str().unwrap(),
    ];
    let out = run(RQEMU_NBD, &dir, &[&fork_args[..], &["l.qcow2"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    qemu_io_sees(&dir, &uri, &[], &["read -P 2 0 64k"]);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill on the pid the daemon wrote; it is our grandchild.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = run(
        RQEMU_NBD,
        &dir,
        &[&fork_args[..], &["missing.qcow2"]].concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Failed to blk_new_open 'missing.qcow2'"));
}
