//! Helpers of the NBD tests: starting an NBD server process (rqemu-nbd or the reference
//! qemu-nbd) on a unix socket and stopping it, and a small blocking NBD client that speaks
//! the protocol byte by byte, so that tests can send what no real client would.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use block::nbd::proto::*;

pub const RQEMU_NBD: &str = env!("CARGO_BIN_EXE_rqemu-nbd");
pub const QEMU_NBD: &str = "/usr/bin/qemu-nbd";

/// A running server process; stopped with SIGTERM when dropped.
pub struct Server {
    child: Child,
    /// The unix socket it listens on.
    pub socket: PathBuf,
}

impl Server {
    /// Starts `bin` with `args` plus `-k SOCKET`, and waits until the socket accepts.
    pub fn start(bin: &str, dir: &Path, name: &str, args: &[&str]) -> Server {
        Server::start_with(bin, dir, name, "-k", args)
    }

    /// Starts `bin` with `SOCKET_FLAG SOCKET` and then `args` (nbdkit wants its `-U`
    /// before the plugin), and waits until the socket accepts.
    pub fn start_with(
        bin: &str,
        dir: &Path,
        name: &str,
        socket_flag: &str,
        args: &[&str],
    ) -> Server {
        let socket = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(bin)
            .arg(socket_flag)
            .arg(&socket)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let server = Server { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&server.socket).is_err() {
            assert!(Instant::now() < deadline, "{bin} did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The server's URI for QEMU's tools and libnbd.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    /// The same as an `--image-opts`-free qemu-img filename.
    pub fn qemu_filename(&self) -> String {
        self.uri()
    }

    /// Stops the server with SIGTERM and returns whether it exited successfully.
    pub fn stop(mut self) -> bool {
        self.terminate()
    }

    fn terminate(&mut self) -> bool {
        // SAFETY: kill on the pid of a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            self.terminate();
        }
    }
}

/// A reply as the test client decodes it.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// A simple reply: error and, for a read, the data.
    Simple {
        cookie: u64,
        error: u32,
        data: Vec<u8>,
    },
    /// One structured chunk.
    Chunk {
        header: ChunkHeader,
        payload: Vec<u8>,
    },
}

/// A blocking NBD client for tests.
pub struct TestClient {
    pub stream: UnixStream,
    pub size: u64,
    pub flags: u16,
    pub structured: bool,
}

impl TestClient {
    /// Connects and runs the handshake: structured replies and base:allocation when
    /// `structured`, then NBD_OPT_GO on the default export.
    pub fn connect(socket: &Path, structured: bool) -> TestClient {
        let first: &[u32] = if structured {
            &[opt::STRUCTURED_REPLY]
        } else {
            &[]
        };
        let mut c = TestClient::connect_with(socket, first);
        c.structured = structured;
        if structured {
            let mut q = WireBuf::default();
            q.u32(0).u32(1).u32(15).bytes(b"base:allocation");
            c.option(opt::SET_META_CONTEXT, &q.0);
            let replies = c.option_replies();
            assert_eq!(replies.len(), 2, "{replies:?}");
        }
        c.go();
        c
    }

    /// Connects and sends `options` (without data), each of which must be acknowledged;
    /// the handshake is left open for more options and [`TestClient::go`].
    pub fn connect_with(socket: &Path, options: &[u32]) -> TestClient {
        let mut stream = UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut hello = [0u8; 18];
        stream.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], &NBD_INIT_MAGIC.to_be_bytes());
        stream
            .write_all(&(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes())
            .unwrap();
        let mut c = TestClient {
            stream,
            size: 0,
            flags: 0,
            structured: false,
        };
        for &option in options {
            c.option(option, &[]);
            assert_eq!(c.option_replies(), vec![(rep::ACK, vec![])]);
        }
        c
    }

    /// Ends the handshake with NBD_OPT_GO on the default export, keeping its size and flags.
    pub fn go(&mut self) {
        let mut go = WireBuf::default();
        go.u32(0).u16(0);
        self.option(opt::GO, &go.0);
        for (kind, data) in self.option_replies() {
            if kind == rep::INFO && data[..2] == info::EXPORT.to_be_bytes() {
                let mut r = WireReader::new(&data[2..]);
                self.size = r.u64().unwrap();
                self.flags = r.u16().unwrap();
            }
            assert!(kind == rep::INFO || kind == rep::ACK, "GO failed: {kind:x}");
        }
    }

    /// Sends an option.
    pub fn option(&mut self, option: u32, data: &[u8]) {
        self.stream
            .write_all(&OptionHeader::encode(option, data))
            .unwrap();
    }

    /// Reads option replies up to and including the final one (ACK or an error).
    pub fn option_replies(&mut self) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let mut head = [0u8; 20];
            self.stream.read_exact(&mut head).unwrap();
            let mut r = WireReader::new(&head);
            assert_eq!(r.u64(), Some(NBD_REP_MAGIC));
            let _opt = r.u32().unwrap();
            let kind = r.u32().unwrap();
            let len = r.u32().unwrap();
            let mut data = vec![0u8; len as usize];
            self.stream.read_exact(&mut data).unwrap();
            let last = kind == rep::ACK || kind & (1 << 31) != 0;
            out.push((kind, data));
            if last {
                return out;
            }
        }
    }

    /// Sends a request header and, for a write, its payload.
    pub fn request(
        &mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let req = Request {
            flags,
            kind,
            cookie,
            offset,
            length: length as u64,
        };
        // One write: a server that refuses the header may close before a separate payload
        // write, which would then fail with EPIPE instead of the test seeing the close.
        let mut message = req.encode(false);
        message.extend_from_slice(payload);
        self.stream.write_all(&message).unwrap();
    }

    /// Reads one reply; `read_len` is the data length a simple reply to a read carries.
    pub fn reply(&mut self, read_len: usize) -> std::io::Result<Reply> {
        let mut magic = [0u8; 4];
        self.stream.read_exact(&mut magic)?;
        match u32::from_be_bytes(magic) {
            NBD_SIMPLE_REPLY_MAGIC => {
                let mut rest = [0u8; 12];
                self.stream.read_exact(&mut rest)?;
                let mut r = WireReader::new(&rest);
                let error = r.u32().unwrap();
                let cookie = r.u64().unwrap();
                let mut data = vec![0u8; if error == 0 { read_len } else { 0 }];
                self.stream.read_exact(&mut data)?;
                Ok(Reply::Simple {
                    cookie,
                    error,
                    data,
                })
            }
            m => {
                let mut rest = [0u8; 16];
                self.stream.read_exact(&mut rest)?;
                let header =
                    ChunkHeader::parse(m, &rest).unwrap_or_else(|| panic!("bad reply magic {m:x}"));
                let mut payload = vec![0u8; header.length as usize];
                self.stream.read_exact(&mut payload)?;
                Ok(Reply::Chunk { header, payload })
            }
        }
    }

    /// A simple-reply read that must succeed.
    pub fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        self.request(cmd::READ, 0, cookie, offset, len, &[]);
        match self.reply(len as usize).unwrap() {
            Reply::Simple {
                cookie: c,
                error: 0,
                data,
            } if c == cookie => data,
            other => panic!("read failed: {other:?}"),
        }
    }

    /// A simple-reply write; returns the NBD error.
    pub fn write(&mut self, cookie: u64, offset: u64, data: &[u8]) -> u32 {
        self.request(cmd::WRITE, 0, cookie, offset, data.len() as u32, data);
        match self.reply(0).unwrap() {
            Reply::Simple {
                cookie: c, error, ..
            } if c == cookie => error,
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

/// Whether every tool is installed; without one the test is skipped, or fails under
/// RQEMU_REQUIRE_QEMU=1.
pub fn tools_available(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !Path::new(t).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("RQEMU_REQUIRE_QEMU").as_deref() == Ok("1") {
        panic!("{missing:?} missing and RQEMU_REQUIRE_QEMU=1");
    }
    eprintln!("skipping: {missing:?} not installed");
    false
}

/// A tool's success and its stdout then stderr, with qemu-io's timing lines dropped and
/// the socket path replaced by SOCKET.
pub fn transcript(bin: &str, dir: &Path, args: &[&str], socket: &Path) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = text
        .replace(&socket.display().to_string(), "SOCKET")
        .lines()
        .filter(|l| !l.contains("ops/sec"))
        .collect::<Vec<_>>()
        .join("\n");
    (out.status.success(), text)
}

/// Runs a tool that must succeed against `server` and returns its stdout, with the socket
/// path written as SOCKET and qemu-io's timing lines dropped.
pub fn output(bin: &str, dir: &Path, args: &[&str], server: &Server) -> String {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
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

/// Runs one command line through QEMU's program and ours; asserts the same result.
pub fn same(ours: &str, theirs: &str, dir: &Path, args: &[&str], socket: &Path) -> String {
    let a = transcript(theirs, dir, args, socket);
    let b = transcript(ours, dir, args, socket);
    assert_eq!(a, b, "{args:?}: QEMU's (left) and ours (right) differ");
    b.1
}
