//! rqemu's NBD client against real NBD servers, differential: rqemu-img/rqemu-io and
//! QEMU's qemu-img/qemu-io reach the same export of the reference qemu-nbd or of nbdkit
//! (memory and file plugins, error and delay filters) and must print the same thing and
//! leave the same data. Skips without the reference tools (fails under RQEMU_REQUIRE_QEMU=1).

mod nbd_rig;
mod reference_tools;

use std::path::Path;

use nbd_rig::{same, tools_available, transcript, Server, QEMU_NBD, RQEMU_NBD};
use reference_tools::{image, ok, scratch, OURS, QEMU_IMG, QEMU_IO};

const RQEMU_IO: &str = env!("CARGO_BIN_EXE_rqemu-io");
const NBDKIT: &str = "/usr/bin/nbdkit";

#[test]
fn a_qcow2_chain_served_by_qemu_nbd_reads_and_maps_the_same() {
    if !tools_available(&[QEMU_IMG, QEMU_IO, QEMU_NBD]) {
        return;
    }
    let dir = scratch("chain");
    image(&dir, "base.qcow2", "8M", None, &[(0x11, 0, 2 << 20)]);
    image(
        &dir,
        "top.qcow2",
        "8M",
        Some("base.qcow2"),
        &[(0x33, 1 << 20, 512 << 10)],
    );
    ok(QEMU_IO, &dir, &["-c", "write -z 4M 256k", "top.qcow2"]);
    let server = Server::start(
        QEMU_NBD,
        &dir,
        "s",
        &["-t", "-r", "-A", "-f", "qcow2", "top.qcow2"],
    );
    let uri = server.uri();
    let depth = format!(
        "driver=nbd,server.type=unix,server.path={},x-dirty-bitmap=qemu:allocation-depth",
        server.socket.display()
    );
    for args in [
        vec!["info", uri.as_str()],
        vec!["info", "--output=json", uri.as_str()],
        vec!["map", "--output=json", "-f", "raw", uri.as_str()],
        vec!["map", "-f", "raw", uri.as_str()],
        vec!["map", "--output=json", "--image-opts", depth.as_str()],
        vec![
            "compare",
            "-U",
            "-f",
            "raw",
            "-F",
            "qcow2",
            uri.as_str(),
            "top.qcow2",
        ],
    ] {
        same(OURS, QEMU_IMG, &dir, &args, &server.socket);
    }
    let out = same(
        RQEMU_IO,
        QEMU_IO,
        &dir,
        &[
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
            "read -P 0 6M 2M",
            &uri,
        ],
        &server.socket,
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");
    ok(
        OURS,
        &dir,
        &["convert", "-f", "raw", "-O", "raw", &uri, "ours.raw"],
    );
    ok(
        QEMU_IMG,
        &dir,
        &["convert", "-f", "raw", "-O", "raw", &uri, "theirs.raw"],
    );
    assert!(
        std::fs::read(dir.join("ours.raw")).unwrap()
            == std::fs::read(dir.join("theirs.raw")).unwrap()
    );
}

#[test]
fn writes_through_our_client_land_as_through_qemus() {
    if !tools_available(&[QEMU_IMG, QEMU_IO, QEMU_NBD]) {
        return;
    }
    let dir = scratch("writes");
    let mut finals = Vec::new();
    for (tool, name) in [(QEMU_IO, "theirs"), (RQEMU_IO, "ours")] {
        let img = format!("{name}.qcow2");
        image(&dir, &img, "4M", None, &[(0x5a, 0, 4 << 20)]);
        let server = Server::start(QEMU_NBD, &dir, name, &["-t", "-f", "qcow2", &img]);
        let (ok_, text) = transcript(
            tool,
            &dir,
            &[
                "-f",
                "raw",
                "-c",
                "write -P 0x44 64k 1M",
                "-c",
                "write -f -P 0x45 2M 4k",
                "-c",
                "write -z 3M 256k",
                "-c",
                "write -z -u 3584k 128k",
                "-c",
                "discard 1M 64k",
                "-c",
                "flush",
                "-c",
                "aio_write -P 0x46 0 4k",
                "-c",
                "aio_write -P 0x47 8k 4k",
                "-c",
                "aio_flush",
                &server.uri(),
            ],
            &server.socket,
        );
        assert!(ok_, "{text}");
        // The two aio_writes may complete in either order.
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        finals.push(lines.join("\n"));
        assert!(server.stop());
    }
    assert_eq!(finals[0], finals[1]);
    reference_tools::assert_identical(&dir.join("theirs.qcow2"), &dir.join("ours.qcow2"), "writes");
}

#[test]
fn nbdkit_memory_and_its_error_and_delay_filters_look_the_same() {
    if !tools_available(&[QEMU_IMG, QEMU_IO, QEMU_NBD, NBDKIT]) {
        return;
    }
    let dir = scratch("nbdkit");
    let server = Server::start_with(NBDKIT, &dir, "mem", "-U", &["-f", "memory", "8M"]);
    let uri = server.uri();
    ok(
        QEMU_IO,
        &dir,
        &["-f", "raw", "-c", "write -P 0x21 1M 1M", &uri],
    );
    same(
        RQEMU_IO,
        QEMU_IO,
        &dir,
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x22 4M 64k",
            "-c",
            "read -P 0x21 1M 1M",
            "-c",
            "write -z 5M 4k",
            &uri,
        ],
        &server.socket,
    );
    same(
        OURS,
        QEMU_IMG,
        &dir,
        &["map", "--output=json", "-f", "raw", &uri],
        &server.socket,
    );
    same(OURS, QEMU_IMG, &dir, &["info", &uri], &server.socket);
    same(
        RQEMU_NBD,
        QEMU_NBD,
        &dir,
        &["-L", "-k", server.socket.to_str().unwrap()],
        &server.socket,
    );
    drop(server);

    let failing = Server::start_with(
        NBDKIT,
        &dir,
        "err",
        "-U",
        &[
            "-f",
            "--filter=error",
            "memory",
            "1M",
            "error-pread=EIO",
            "error-pread-rate=1",
            "error-pwrite=ENOSPC",
            "error-pwrite-rate=1",
        ],
    );
    let out = same(
        RQEMU_IO,
        QEMU_IO,
        &dir,
        &[
            "-f",
            "raw",
            "-c",
            "read 0 4k",
            "-c",
            "write 0 4k",
            "-c",
            "write -z 8k 4k",
            &failing.uri(),
        ],
        &failing.socket,
    );
    assert!(out.contains("read failed: Input/output error"), "{out}");
    assert!(out.contains("No space left on device"), "{out}");
    drop(failing);

    // Many requests in flight on one connection, each answered late.
    let slow = Server::start_with(
        NBDKIT,
        &dir,
        "slow",
        "-U",
        &[
            "-f",
            "--filter=delay",
            "memory",
            "2M",
            "rdelay=50ms",
            "wdelay=50ms",
        ],
    );
    let mut cmds = Vec::new();
    for i in 0..32u64 {
        cmds.push(format!("aio_write -P {} {} 64k", i + 1, i * 65536));
    }
    cmds.push("aio_flush".into());
    for i in 0..32u64 {
        cmds.push(format!("aio_read -P {} {} 64k", i + 1, i * 65536));
    }
    cmds.push("aio_flush".into());
    let mut args = vec!["-f", "raw"];
    for c in &cmds {
        args.extend(["-c", c.as_str()]);
    }
    let slow_uri = slow.uri();
    args.push(&slow_uri);
    let (ok_, text) = transcript(RQEMU_IO, &dir, &args, &slow.socket);
    assert!(ok_ && !text.contains("fail"), "{text}");
    assert_eq!(text.matches("read 65536/65536").count(), 32, "{text}");
}

#[test]
fn connection_and_export_errors_read_as_qemus() {
    if !tools_available(&[QEMU_IMG, QEMU_IO, QEMU_NBD]) {
        return;
    }
    let dir = scratch("errors");
    image(&dir, "a.qcow2", "1M", None, &[]);
    let server = Server::start(
        QEMU_NBD,
        &dir,
        "s",
        &["-t", "-r", "-x", "exp", "-f", "qcow2", "a.qcow2"],
    );
    let sock = server.socket.display().to_string();
    for name in ["nope", "exp"] {
        let uri = format!("nbd+unix:///{name}?socket={sock}");
        same(OURS, QEMU_IMG, &dir, &["info", &uri], &server.socket);
    }
    let legacy = format!("nbd:unix:{sock}:exportname=exp");
    same(OURS, QEMU_IMG, &dir, &["info", &legacy], &server.socket);
    let missing = format!("nbd+unix:///?socket={}/none.sock", dir.display());
    same(OURS, QEMU_IMG, &dir, &["info", &missing], &server.socket);
    same(OURS, QEMU_IMG, &dir, &["info", "nbd://"], &server.socket);
    same(
        RQEMU_NBD,
        QEMU_NBD,
        &dir,
        &["-L", "-k", &sock],
        &server.socket,
    );
    // A read-only export refuses a writer.
    let uri = format!("nbd+unix:///exp?socket={sock}");
    same(
        RQEMU_IO,
        QEMU_IO,
        &dir,
        &["-f", "raw", "-c", "write 0 512", &uri],
        &server.socket,
    );
}

#[test]
fn our_client_and_our_server_agree() {
    if !tools_available(&[QEMU_IMG, QEMU_IO, QEMU_NBD]) {
        return;
    }
    let dir = scratch("ours");
    image(&dir, "a.qcow2", "2M", None, &[(0x61, 4096, 8192)]);
    let server = Server::start(
        RQEMU_NBD,
        &dir,
        "s",
        &["-t", "-f", "qcow2", "-A", "a.qcow2"],
    );
    let uri = server.uri();
    same(
        OURS,
        QEMU_IMG,
        &dir,
        &["map", "--output=json", "-f", "raw", &uri],
        &server.socket,
    );
    same(
        RQEMU_IO,
        QEMU_IO,
        &dir,
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x61 4k 8k",
            "-c",
            "write -P 0x62 1M 4k",
            &uri,
        ],
        &server.socket,
    );
    same(
        RQEMU_NBD,
        QEMU_NBD,
        &dir,
        &["-L", "-k", server.socket.to_str().unwrap()],
        &server.socket,
    );
}

/// Makes a server's reply from the request's header bytes.
type BadReply = fn(&[u8; 28]) -> Vec<u8>;

/// A server that negotiates simple replies and then answers every request with a reply
/// `bad` makes.
fn misbehaving_server(socket: &Path, bad: BadReply) -> std::thread::JoinHandle<()> {
    use block::nbd::proto::*;
    use std::io::{Read, Write};
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut hello = WireBuf::default();
        hello
            .u64(NBD_INIT_MAGIC)
            .u64(NBD_OPTS_MAGIC)
            .u16(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        s.write_all(&hello.0).unwrap();
        let mut flags = [0u8; 4];
        s.read_exact(&mut flags).unwrap();
        loop {
            let mut head = [0u8; OPTION_HEADER_LEN];
            s.read_exact(&mut head).unwrap();
            let h = OptionHeader::parse(&head).unwrap();
            let mut data = vec![0u8; h.length as usize];
            s.read_exact(&mut data).unwrap();
            if h.option != opt::GO {
                s.write_all(&option_reply_header(h.option, rep::ERR_UNSUP, 0))
                    .unwrap();
                continue;
            }
            let mut info = WireBuf::default();
            info.u16(info::EXPORT).u64(1 << 20).u16(tflags::HAS_FLAGS);
            s.write_all(&option_reply_header(h.option, rep::INFO, 12))
                .unwrap();
            s.write_all(&info.0).unwrap();
            s.write_all(&option_reply_header(h.option, rep::ACK, 0))
                .unwrap();
            break;
        }
        let mut req = [0u8; 28];
        while s.read_exact(&mut req).is_ok() {
            if s.write_all(&bad(&req)).is_err() {
                break;
            }
        }
    })
}

#[test]
fn a_misbehaving_server_is_an_io_error_not_a_hang() {
    let dir = scratch("hostile");
    let cases: [(&str, BadReply); 3] = [
        ("unknown cookie", |_| {
            block::nbd::proto::simple_reply(0, 999).to_vec()
        }),
        ("bad magic", |_| vec![0xff; 16]),
        ("structured chunk never negotiated, oversized", |r| {
            let cookie = u64::from_be_bytes(r[8..16].try_into().unwrap());
            let h = block::nbd::proto::ChunkHeader {
                flags: 1,
                kind: 1,
                cookie,
                offset: 0,
                length: u32::MAX as u64,
            };
            h.encode(false)
        }),
    ];
    for (i, (what, bad)) in cases.into_iter().enumerate() {
        let socket = dir.join(format!("{i}.sock"));
        let server = misbehaving_server(&socket, bad);
        let uri = format!("nbd+unix:///?socket={}", socket.display());
        let out = std::process::Command::new(RQEMU_IO)
            .args([
                "-r",
                "-f",
                "raw",
                "-c",
                "read 0 4k",
                "-c",
                "read 4k 4k",
                &uri,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.matches("read failed: Input/output error").count(),
            2,
            "{what}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.join().unwrap();
    }
}
