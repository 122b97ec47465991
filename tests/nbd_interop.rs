//! rqemu-nbd against real NBD clients, differential: the same image is served by rqemu-nbd
//! and by the reference qemu-nbd, and QEMU's client (qemu-img info/map/compare/convert,
//! qemu-io) and libnbd's tools (nbdinfo --list/--map, nbdcopy) must see the same thing
//! from both. Skips without the reference tools (fails under RQEMU_REQUIRE_QEMU=1).

mod nbd_rig;
mod reference_tools;

use std::path::Path;

use nbd_rig::{Server, QEMU_NBD, RQEMU_NBD};
use reference_tools::{image, ok, run, scratch, QEMU_IMG, QEMU_IO};

const NBDINFO: &str = "/usr/bin/nbdinfo";
const NBDCOPY: &str = "/usr/bin/nbdcopy";

fn tools_available(extra: &[&str]) -> bool {
    let mut missing: Vec<&str> = [QEMU_IMG, QEMU_IO, QEMU_NBD]
        .iter()
        .chain(extra)
        .copied()
        .filter(|t| !Path::new(t).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    missing.sort();
    if std::env::var("RQEMU_REQUIRE_QEMU").as_deref() == Ok("1") {
        panic!("{missing:?} missing and RQEMU_REQUIRE_QEMU=1");
    }
    eprintln!("skipping: {missing:?} not installed");
    false
}

/// Runs a tool and returns its stdout with the socket path and timing figures taken out.
fn output(bin: &str, dir: &Path, args: &[&str], server: &Server) -> String {
    let out = run(bin, dir, args);
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .replace(&server.socket.display().to_string(), "SOCKET")
        .lines()
        .filter(|l| !l.contains("ops/sec"))
        .collect::<Vec<_>>()
        .join("\n")
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
