//! A test guest running under an emulator (rqemu or the reference QEMU) with a QMP socket:
//! its COM1 lines as they come, and a QMP client that keeps the events it reads while
//! waiting for replies. Shared by the tests that act on a running guest over QMP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A QMP client that keeps the events it reads while waiting for replies.
pub struct Qmp {
    out: UnixStream,
    input: BufReader<UnixStream>,
    /// Events read and not yet taken, oldest first.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects (retrying while the emulator starts), reads the greeting and negotiates;
    /// every later read gives up after `timeout`.
    pub fn connect(sock: &Path, timeout: Duration) -> Qmp {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
            }
        };
        stream.set_read_timeout(Some(timeout)).unwrap();
        let mut qmp = Qmp {
            out: stream.try_clone().unwrap(),
            input: BufReader::new(stream),
            events: Vec::new(),
        };
        assert!(qmp.recv().get("QMP").is_some(), "no greeting");
        qmp.ok("qmp_capabilities", json!({}));
        qmp
    }

    /// The next message.
    pub fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.input.read_line(&mut line).expect("read a QMP message");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Runs a command; its reply, the events before it kept in [`Qmp::events`].
    pub fn cmd(&mut self, execute: &str, arguments: Value) -> Value {
        let text = json!({"execute": execute, "arguments": arguments}).to_string();
        self.out.write_all(text.as_bytes()).unwrap();
        loop {
            let msg = self.recv();
            if msg.get("event").is_some() {
                self.events.push(msg);
            } else {
                return msg;
            }
        }
    }

    /// Runs a command that must succeed; its `return`.
    pub fn ok(&mut self, execute: &str, arguments: Value) -> Value {
        match self.cmd(execute, arguments) {
            Value::Object(mut reply) if reply.contains_key("return") => {
                reply.remove("return").unwrap()
            }
            reply => panic!("{execute} failed: {reply}"),
        }
    }

    /// Takes the oldest event `name`, reading until one comes; `check` sees every event
    /// read meanwhile and may fail the test.
    pub fn event_where(&mut self, name: &str, check: impl Fn(&Value)) -> Value {
        loop {
            self.events.iter().for_each(&check);
            if let Some(at) = self.events.iter().position(|e| e["event"] == name) {
                return self.events.remove(at);
            }
            let msg = self.recv();
            self.events.push(msg);
        }
    }

    /// Takes the oldest event `name`, reading until one comes.
    pub fn event(&mut self, name: &str) -> Value {
        self.event_where(name, |_| {})
    }
}

/// A running emulator: its COM1 lines as they come, its stdin.
pub struct Guest {
    child: Child,
    /// The emulator's standard input (COM1's input under -nographic).
    pub stdin: ChildStdin,
    lines: Receiver<String>,
    /// Every COM1 line read so far.
    pub log: Vec<String>,
    /// Where the emulator's stderr goes, shown when a check fails.
    stderr: PathBuf,
    timeout: Duration,
}

impl Guest {
    /// Starts `cmd`; waits for a line give up after `timeout`.
    pub fn start(cmd: &[String], stderr: PathBuf, timeout: Duration) -> Guest {
        let mut child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", cmd[0]));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take().unwrap();
        Guest {
            child,
            stdin,
            lines,
            log: Vec::new(),
            stderr,
            timeout,
        }
    }

    /// The next COM1 line within `limit`, if one comes.
    pub fn line_within(&mut self, limit: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(limit).ok()?;
        let line = line.trim_end().to_string();
        self.log.push(line.clone());
        Some(line)
    }

    /// Reads COM1 until a line `done` accepts and returns it; fails on a FAIL line or when
    /// none comes in time.
    pub fn until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.line_within(left) else {
                panic!("waiting for {what}\nguest output:\n{:#?}", self.log);
            };
            assert!(!line.contains("FAIL"), "guest output:\n{:#?}", self.log);
            if done(&line) {
                return line;
            }
        }
    }

    /// Waits for the emulator to exit; it must succeed.
    pub fn wait_exit(&mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "emulator exited with {status}");
    }
}

impl Drop for Guest {
    /// A failed check leaves no emulator behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            eprintln!("emulator stderr:\n{text}");
        }
        let _ = std::fs::remove_file(&self.stderr);
    }
}
