//! rqemu-nbd against clients that break the protocol: bad magics, unknown commands and
//! flags, out-of-range and oversized requests, a disconnect in the middle of a write
//! payload, an option that claims gigabytes, and a flood of connections that never
//! negotiate, and block-status payloads (extended headers) with bogus lengths and context
//! ids. Throughout, a well-behaved client keeps reading and writing, the image holds exactly
//! what the well-behaved writes put there, and the server's memory stays bounded. Needs
//! nothing but rqemu-nbd (and rqemu-img for a qcow2 image with a bitmap).

mod nbd_rig;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use block::nbd::proto::*;
use nbd_rig::{Reply, Server, TestClient, RQEMU_NBD};

const SIZE: u64 = 4 << 20;

fn scratch(case: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rqemu-nbd-hostile-{}-{case}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A sparse raw image in a fresh directory, served by rqemu-nbd with `args` before it.
fn serve_raw(case: &str, args: &[&str]) -> (std::path::PathBuf, Server) {
    let dir = scratch(case);
    let image = raw_image(&dir);
    let mut all = vec!["-f", "raw"];
    all.extend_from_slice(args);
    all.push(image.to_str().unwrap());
    let server = Server::start(RQEMU_NBD, &dir, "srv", &all);
    (image, server)
}

fn raw_image(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("disk.raw");
    // Sparse: 64 KiB of data, then a hole to the end.
    std::fs::write(&path, [0x11; 65536]).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(SIZE).unwrap();
    path
}

/// The well-behaved client: a write and a read-back at a fresh spot each time.
fn good_round(good: &mut TestClient, round: u64) {
    let data = vec![round as u8 ^ 0x5a; 4096];
    let offset = (1 << 20) + round * 4096;
    assert_eq!(good.write(1000 + round, offset, &data), 0);
    assert_eq!(good.read(2000 + round, offset, 4096), data);
    assert_eq!(good.read(3000 + round, 0, 512), vec![0x11; 512]);
}

fn expect_error(c: &mut TestClient, cookie: u64, errno: u32) {
    match c.reply(0).unwrap() {
        Reply::Simple {
            cookie: got, error, ..
        } => {
            assert_eq!((got, error), (cookie, errno));
        }
        other => panic!("expected a simple error reply, got {other:?}"),
    }
}

fn expect_closed(stream: &mut UnixStream) {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("connection should have been closed, got {other:?}"),
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The end of a hostile session: the server's memory stayed bounded, and once the good
/// client has gone it exits cleanly on SIGTERM.
fn bounded_then_stopped(good: TestClient, server: Server) {
    let pid = server.pid();
    let rss = rss_kib(pid);
    assert!(rss < 256 << 10, "server memory grew to {rss} KiB");
    drop(good);
    assert!(server.stop(), "rqemu-nbd did not exit cleanly on SIGTERM");
}

#[test]
fn hostile_requests_get_errors_and_good_client_keeps_working() {
    let (image, server) = serve_raw("requests", &["-e", "0", "-t"]);
    let mut good = TestClient::connect(&server.socket, false);
    assert_eq!(good.size, SIZE);
    good_round(&mut good, 0);

    let mut bad = TestClient::connect(&server.socket, false);
    // Unknown command and unknown flags: EINVAL, connection stays.
    bad.request(42, 0, 1, 0, 512, &[]);
    expect_error(&mut bad, 1, errno::EINVAL);
    bad.request(cmd::READ, 0x8000, 2, 0, 512, &[]);
    expect_error(&mut bad, 2, errno::EINVAL);
    // Out of range: a read is EINVAL, a write ENOSPC after its payload is consumed.
    bad.request(cmd::READ, 0, 3, SIZE - 512, 1024, &[]);
    expect_error(&mut bad, 3, errno::EINVAL);
    bad.request(cmd::WRITE, 0, 4, u64::MAX - 10, 4096, &[0xee; 4096]);
    expect_error(&mut bad, 4, errno::ENOSPC);
    // A read larger than the server's buffer limit: EINVAL, nothing allocated.
    bad.request(cmd::READ, 0, 5, 0, 64 << 20, &[]);
    expect_error(&mut bad, 5, errno::EINVAL);
    // Block status without structured replies is refused.
    bad.request(cmd::BLOCK_STATUS, 0, 6, 0, 4096, &[]);
    expect_error(&mut bad, 6, errno::EINVAL);
    // The connection still works after all of that.
    assert_eq!(bad.read(7, 0, 16), vec![0x11; 16]);
    good_round(&mut good, 1);

    // A write header claiming 4 GiB - 1: the server hangs up instead of buffering it.
    let huge = Request {
        flags: 0,
        kind: cmd::WRITE,
        cookie: 8,
        offset: 0,
        length: u32::MAX as u64,
    };
    // The server may hang up before the payload is sent: that write may fail.
    bad.stream.write_all(&huge.encode(false)).unwrap();
    let _ = bad.stream.write_all(&[0xee; 100]);
    expect_closed(&mut bad.stream);
    good_round(&mut good, 2);

    // A bad request magic: the connection is closed.
    let mut bad = TestClient::connect(&server.socket, false);
    bad.stream.write_all(&[0xde; REQUEST_LEN]).unwrap();
    expect_closed(&mut bad.stream);
    good_round(&mut good, 3);

    // A disconnect in the middle of a write payload: nothing of it reaches the image.
    let mut bad = TestClient::connect(&server.socket, false);
    bad.request(cmd::WRITE, 0, 9, 2 << 20, 65536, &[0xee; 30000]);
    drop(bad);
    good_round(&mut good, 4);
    assert_eq!(good.read(10, 2 << 20, 65536), vec![0; 65536]);

    // Handshake abuse: an option claiming 2 GiB of data, and a bad option magic.
    for garbage in [
        OptionHeader::encode(opt::GO, &[])[..12]
            .iter()
            .copied()
            .chain(0x7fff_ffffu32.to_be_bytes())
            .collect::<Vec<u8>>(),
        vec![0x42; 16],
    ] {
        let mut s = UnixStream::connect(&server.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        s.write_all(&NBD_FLAG_C_FIXED_NEWSTYLE.to_be_bytes())
            .unwrap();
        s.write_all(&garbage).unwrap();
        expect_closed(&mut s);
    }
    good_round(&mut good, 5);
    bounded_then_stopped(good, server);
    let data = std::fs::read(&image).unwrap();
    assert_eq!(&data[..65536], &[0x11; 65536][..]);
    assert_eq!(&data[2 << 20..(2 << 20) + 65536], &[0; 65536][..]);
    assert_eq!(&data[1 << 20..(1 << 20) + 4096], &[0x5a; 4096][..]);
}

#[test]
fn structured_reads_have_holes_and_block_status_maps_them() {
    let (_, server) = serve_raw("structured", &[]);
    let mut c = TestClient::connect(&server.socket, true);
    // 64 KiB of data then zeroes: one data chunk, then a hole chunk that ends the reply.
    c.request(cmd::READ, 0, 1, 0, 128 << 10, &[]);
    let mut data_bytes = 0;
    let mut hole_bytes = 0;
    loop {
        let Reply::Chunk { header, payload } = c.reply(0).unwrap() else {
            panic!("structured replies were negotiated");
        };
        assert_eq!(header.cookie, 1);
        let mut r = WireReader::new(&payload);
        let offset = r.u64().unwrap();
        match header.kind {
            chunk::OFFSET_DATA => {
                assert!(payload[8..].iter().all(|&b| b == 0x11));
                data_bytes += payload.len() - 8;
            }
            chunk::OFFSET_HOLE => {
                assert!(offset >= 65536);
                hole_bytes += r.u32().unwrap() as usize;
            }
            k => panic!("unexpected chunk type {k}"),
        }
        if header.flags & NBD_REPLY_FLAG_DONE != 0 {
            break;
        }
    }
    assert_eq!((data_bytes, hole_bytes), (65536, 65536));
    // base:allocation over the same range (a raw file: data, then a hole that reads as zero).
    c.request(cmd::BLOCK_STATUS, 0, 2, 0, 1 << 20, &[]);
    let Reply::Chunk { header, payload } = c.reply(0).unwrap() else {
        panic!("structured replies were negotiated");
    };
    assert_eq!(
        (header.kind, header.flags),
        (chunk::BLOCK_STATUS, NBD_REPLY_FLAG_DONE)
    );
    let mut r = WireReader::new(&payload);
    assert_eq!(r.u32(), Some(0));
    let mut covered = 0;
    while r.remaining() > 0 {
        let len = r.u32().unwrap();
        let flags = r.u32().unwrap();
        if covered == 0 {
            assert_eq!(flags & NBD_STATE_ZERO, 0, "the first 64 KiB hold data");
        }
        covered += len as u64;
    }
    assert_eq!(covered, 1 << 20);
    // Errors come back as error chunks in structured mode.
    c.request(cmd::READ, 0, 3, SIZE, 512, &[]);
    match c.reply(0).unwrap() {
        Reply::Chunk { header, payload } => {
            assert_eq!(header.kind, chunk::ERROR);
            assert_eq!(&payload[..4], &errno::EINVAL.to_be_bytes());
        }
        other => panic!("expected an error chunk, got {other:?}"),
    }
    // Without --persistent the server exits once the last client has gone.
    c.request(cmd::DISC, 0, 4, 0, 0, &[]);
    drop(c);
    let mut server = server;
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.exited().is_none() {
        assert!(
            Instant::now() < deadline,
            "rqemu-nbd kept running after its last client"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn connection_flood_is_cut_off_by_the_handshake_limit() {
    let (_, server) = serve_raw("flood", &["-t", "-e", "4", "--handshake-limit", "1"]);
    // Eight connections that never negotiate; the server serves four at a time and cuts
    // each off after a second, so a real client gets its turn.
    let idle: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(&server.socket).unwrap())
        .collect();
    let start = Instant::now();
    let mut good = TestClient::connect(&server.socket, false);
    assert!(start.elapsed() < Duration::from_secs(9));
    good_round(&mut good, 0);
    drop(idle);
}

/// A client with extended headers and the given metadata contexts selected, for
/// block-status payloads (NBD_CMD_FLAG_PAYLOAD_LEN).
struct ExtendedClient {
    stream: UnixStream,
    /// The context ids the server gave, in query order.
    ids: Vec<u32>,
}

impl ExtendedClient {
    fn connect(socket: &std::path::Path, queries: &[&str]) -> ExtendedClient {
        // The handshake's first options are the plain client's, with extended headers.
        let mut plain = TestClient::connect_with(socket, &[opt::EXTENDED_HEADERS]);
        let mut q = WireBuf::default();
        q.u32(0).u32(queries.len() as u32);
        for name in queries {
            q.u32(name.len() as u32).bytes(name.as_bytes());
        }
        plain.option(opt::SET_META_CONTEXT, &q.0);
        let mut ids = Vec::new();
        for (kind, data) in plain.option_replies() {
            if kind == rep::META_CONTEXT {
                ids.push(u32::from_be_bytes(data[..4].try_into().unwrap()));
            }
        }
        assert_eq!(ids.len(), queries.len(), "contexts not all offered");
        plain.go();
        ExtendedClient {
            stream: plain.stream,
            ids,
        }
    }

    /// A block-status request whose payload is `payload` (its length in the header).
    fn status_with_payload(&mut self, cookie: u64, offset: u64, length: u64, payload: &[u8]) {
        let req = Request {
            flags: cflags::PAYLOAD_LEN,
            kind: cmd::BLOCK_STATUS,
            cookie,
            offset,
            length,
        };
        self.stream.write_all(&req.encode(true)).unwrap();
        let _ = self.stream.write_all(payload);
    }

    /// Reads one extended chunk: its header and payload.
    fn chunk(&mut self) -> std::io::Result<(ChunkHeader, Vec<u8>)> {
        let mut head = [0u8; 32];
        self.stream.read_exact(&mut head)?;
        let magic = u32::from_be_bytes(head[..4].try_into().unwrap());
        let header = ChunkHeader::parse(magic, &head[4..]).expect("an extended reply");
        assert!(header.length <= 8 << 20, "reply of {} bytes", header.length);
        let mut payload = vec![0u8; header.length as usize];
        self.stream.read_exact(&mut payload)?;
        Ok((header, payload))
    }

    /// The contexts a successful reply reports, in order, with the bytes each covers.
    fn status_reply(&mut self, cookie: u64) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        loop {
            let (header, payload) = self.chunk().unwrap();
            assert_eq!(header.cookie, cookie);
            assert_eq!(header.kind, chunk::BLOCK_STATUS_EXT, "{payload:?}");
            let mut r = WireReader::new(&payload);
            let id = r.u32().unwrap();
            let count = r.u32().unwrap();
            let mut covered = 0;
            for _ in 0..count {
                covered += r.u64().unwrap();
                r.u64().unwrap();
            }
            out.push((id, covered));
            if header.flags & NBD_REPLY_FLAG_DONE != 0 {
                return out;
            }
        }
    }

    /// The error a reply carries, which must be the request's only chunk.
    fn error_reply(&mut self, cookie: u64) -> u32 {
        let (header, payload) = self.chunk().unwrap();
        assert_eq!(header.cookie, cookie);
        assert_eq!(header.kind, chunk::ERROR, "{payload:?}");
        assert_ne!(header.flags & NBD_REPLY_FLAG_DONE, 0);
        u32::from_be_bytes(payload[..4].try_into().unwrap())
    }
}

/// A block-status payload: the effect length, then context ids.
fn status_payload(length: u64, ids: &[u32]) -> Vec<u8> {
    let mut w = WireBuf::default();
    w.u64(length);
    for id in ids {
        w.u32(*id);
    }
    w.0
}

#[test]
fn block_status_payloads_with_bogus_lengths_and_ids_are_refused() {
    let dir = scratch("status-payload");
    let image = dir.join("disk.qcow2");
    let img = env!("CARGO_BIN_EXE_rqemu-img");
    for args in [
        &["create", "-q", "-f", "qcow2", image.to_str().unwrap(), "4M"][..],
        &["bitmap", "--add", image.to_str().unwrap(), "b0"][..],
    ] {
        let out = std::process::Command::new(img).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let args = ["-t", "-e", "0", "-f", "qcow2", "-A", "-B", "b0"];
    let mut all = args.to_vec();
    all.push(image.to_str().unwrap());
    let server = Server::start(RQEMU_NBD, &dir, "srv", &all);
    let mut good = TestClient::connect(&server.socket, false);
    assert_eq!(good.write(1, 0, &[0x11; 4096]), 0);
    let contexts = [
        "base:allocation",
        "qemu:allocation-depth",
        "qemu:dirty-bitmap:b0",
    ];
    let mut bad = ExtendedClient::connect(&server.socket, &contexts);
    let [base, depth, bitmap] = bad.ids[..] else {
        unreachable!()
    };
    // Well formed: the payload picks the contexts, its length is the effect length.
    bad.status_with_payload(1, 0, 16, &status_payload(SIZE, &[bitmap, depth]));
    assert_eq!(bad.status_reply(1), [(depth, SIZE), (bitmap, SIZE)]);
    let unknown = bitmap + 1;
    let many_ids: Vec<u8> = std::iter::repeat_n(unknown.to_be_bytes(), 16 << 10)
        .flatten()
        .collect();
    let cases: &[(&str, Vec<u8>)] = &[
        ("an unknown id", status_payload(SIZE, &[unknown])),
        ("the largest id", status_payload(SIZE, &[u32::MAX])),
        ("an id twice", status_payload(SIZE, &[base, base])),
        ("no id", status_payload(SIZE, &[])),
        (
            "a ragged payload",
            status_payload(SIZE, &[base])[..10].to_vec(),
        ),
        ("a short payload", vec![0; 4]),
        ("an effect length of 0", status_payload(0, &[base])),
        ("past the end", status_payload(SIZE + 1, &[depth])),
        ("the largest length", status_payload(u64::MAX, &[bitmap])),
        (
            "64 KiB of unknown ids",
            [&SIZE.to_be_bytes()[..], &many_ids].concat(),
        ),
    ];
    for (i, (what, payload)) in cases.iter().enumerate() {
        let cookie = 100 + i as u64;
        bad.status_with_payload(cookie, 0, payload.len() as u64, payload);
        assert_eq!(bad.error_reply(cookie), errno::EINVAL, "{what}");
        good_round(&mut good, i as u64);
    }
    // Still in sync: a well-formed query after the refused ones.
    bad.status_with_payload(200, 4096, 12, &status_payload(4096, &[base]));
    assert_eq!(bad.status_reply(200), [(base, 4096)]);
    // A payload length over the buffer limit: the server hangs up instead of reading it.
    bad.status_with_payload(201, 0, 1 << 40, &status_payload(SIZE, &[base]));
    expect_closed(&mut bad.stream);
    // A block-status payload without extended headers: the connection ends, as the
    // compact header has no room for it.
    let mut compact = TestClient::connect(&server.socket, true);
    compact.request(cmd::BLOCK_STATUS, cflags::PAYLOAD_LEN, 1, 0, 12, &[0; 12]);
    expect_closed(&mut compact.stream);
    // A flood of whole-image queries on every context, never read, then a disconnect.
    let mut flood = ExtendedClient::connect(&server.socket, &contexts);
    for cookie in 0..200 {
        flood.status_with_payload(cookie, 0, 20, &status_payload(SIZE, &[base, depth, bitmap]));
    }
    drop(flood);
    for round in 20..24 {
        good_round(&mut good, round);
    }
    bounded_then_stopped(good, server);
}
