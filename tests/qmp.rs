//! rqemu's monitor over a QMP unix socket, with no guest (`-accel qtest`): the greeting,
//! negotiation, QEMU's error classes, blockdev-add of a qcow2 image over its file node,
//! query-named-block-nodes, block_resize, blockdev-snapshot-sync, HMP `qemu-io`, and quit
//! with its SHUTDOWN event; then the same socket driven by QEMU's own python library
//! (`qemu.qmp` from the qemu-iotests source cache; skipped when absent unless
//! RQEMU_REQUIRE_QEMU=1).

mod prereq;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rqemu-qmp-{}-{name}", std::process::id()))
}

/// rqemu under qtest with a QMP server socket at `sock`.
fn launch(sock: &Path, extra: &[&str]) -> Child {
    let _ = std::fs::remove_file(sock);
    Command::new(env!("CARGO_BIN_EXE_rqemu"))
        .args(["-nodefaults", "-display", "none", "-accel", "qtest"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .expect("start rqemu")
}

fn connect(sock: &Path) -> UnixStream {
    let start = Instant::now();
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                return s;
            }
            Err(_) if start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
        }
    }
}

struct Qmp {
    out: UnixStream,
    input: BufReader<UnixStream>,
}

impl Qmp {
    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.input.read_line(&mut line).expect("read a QMP message");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn send_raw(&mut self, text: &str) -> Value {
        self.out.write_all(text.as_bytes()).unwrap();
        self.recv()
    }

    fn cmd(&mut self, execute: &str, arguments: Value) -> Value {
        self.send_raw(&json!({"execute": execute, "arguments": arguments}).to_string())
    }

    fn ok(&mut self, execute: &str, arguments: Value) -> Value {
        let reply = self.cmd(execute, arguments);
        reply
            .get("return")
            .cloned()
            .unwrap_or_else(|| panic!("{execute} failed: {reply}"))
    }
}

fn node<'a>(nodes: &'a Value, name: &str) -> &'a Value {
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {nodes}"))
}

#[test]
fn a_qmp_client_manages_the_block_graph() {
    let sock = temp("sock");
    let img = temp("base.qcow2");
    let snap = temp("snap.qcow2");
    let _ = std::fs::remove_file(&snap);
    let created = Command::new(env!("CARGO_BIN_EXE_rqemu-img"))
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("1M")
        .status()
        .unwrap();
    assert!(created.success());
    let mut child = launch(&sock, &[]);
    let stream = connect(&sock);
    let mut qmp = Qmp {
        out: stream.try_clone().unwrap(),
        input: BufReader::new(stream),
    };
    let greeting = qmp.recv();
    assert_eq!(greeting["QMP"]["version"]["qemu"]["major"], 10);

    let early = qmp.cmd("query-status", json!({}));
    assert_eq!(early["error"]["class"], "CommandNotFound", "{early}");
    qmp.ok("qmp_capabilities", json!({}));
    let again = qmp.cmd("qmp_capabilities", json!({}));
    assert_eq!(again["error"]["class"], "CommandNotFound");

    // QEMU's parser takes single quotes; the id comes back as given.
    let status = qmp.send_raw("{'execute': 'query-status', 'id': [1, 'x']}");
    assert_eq!(status["return"]["status"], "running");
    assert_eq!(status["id"], json!([1, "x"]));
    let missing = qmp.send_raw(r#"{"execute": "nope"}"#);
    assert_eq!(
        missing["error"]["desc"],
        "The command nope has not been found"
    );
    let bad = qmp.send_raw(r#"{"arguments": {}}"#);
    assert_eq!(bad["error"]["desc"], "QMP input lacks member 'execute'");
    let garbage = qmp.send_raw("[1]");
    assert_eq!(garbage["error"]["desc"], "QMP input must be a JSON object");
    let no_size = qmp.cmd("block_resize", json!({"node-name": "disk"}));
    assert_eq!(no_size["error"]["desc"], "Parameter 'size' is missing");

    qmp.ok(
        "blockdev-add",
        json!({"driver": "file", "node-name": "proto", "filename": img}),
    );
    qmp.ok(
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "disk", "file": "proto"}),
    );
    let dup = qmp.cmd(
        "blockdev-add",
        json!({"driver": "null-co", "node-name": "disk"}),
    );
    assert!(
        dup["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("already in use"),
        "{dup}"
    );
    let nodes = qmp.ok("query-named-block-nodes", json!({"flat": true}));
    assert_eq!(node(&nodes, "disk")["drv"], "qcow2");
    assert_eq!(node(&nodes, "proto")["drv"], "file");

    qmp.ok(
        "block_resize",
        json!({"node-name": "disk", "size": 2 << 20}),
    );
    let nodes = qmp.ok("query-named-block-nodes", json!({}));
    assert_eq!(node(&nodes, "disk")["image"]["virtual-size"], 2 << 20);

    // qemu-io reports on stdout, as QEMU's does; only its errors are the reply.
    let wrote = qmp.ok(
        "human-monitor-command",
        json!({"command-line": "qemu-io disk \"write -P 0x5a 0 64k\""}),
    );
    assert_eq!(wrote, "");
    let failed = qmp.ok(
        "human-monitor-command",
        json!({"command-line": "qemu-io disk \"open /x\""}),
    );
    assert_eq!(failed, "file open already, try 'help close'\n");
    let unknown = qmp.ok(
        "human-monitor-command",
        json!({"command-line": "qemu-io nodisk \"read 0 512\""}),
    );
    assert_eq!(
        unknown,
        "Error: Cannot find device='' nor node-name='nodisk'\n"
    );

    qmp.ok(
        "blockdev-snapshot-sync",
        json!({"node-name": "disk", "snapshot-file": snap, "snapshot-node-name": "top"}),
    );
    let nodes = qmp.ok("query-named-block-nodes", json!({}));
    let top = node(&nodes, "top");
    assert_eq!(top["backing_file_depth"], 1);
    assert_eq!(top["image"]["backing-image"]["filename"], json!(img));
    let wrote = qmp.ok(
        "human-monitor-command",
        json!({"command-line": "qemu-io top \"write -P 0xa5 64k 64k\""}),
    );
    assert_eq!(wrote, "");
    let busy = qmp.cmd("blockdev-del", json!({"node-name": "disk"}));
    assert_eq!(busy["error"]["desc"], "Block device disk is in use");

    assert_eq!(qmp.ok("quit", json!({})), json!({}));
    let event = qmp.recv();
    assert_eq!(event["event"], "SHUTDOWN");
    assert_eq!(event["data"]["reason"], "host-qmp-quit");
    assert!(event["timestamp"]["seconds"].as_u64().unwrap() > 0);
    assert!(child.wait().unwrap().success());
    // The overlay holds the new write and reads the old one through its backing file.
    let check = Command::new(env!("CARGO_BIN_EXE_rqemu-io"))
        .args([
            "-f",
            "qcow2",
            "-c",
            "read -P 0x5a 0 64k",
            "-c",
            "read -P 0xa5 64k 64k",
        ])
        .arg(&snap)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{text}");
    assert_eq!(text.matches("read 65536/65536").count(), 2, "{text}");
    let base = Command::new(env!("CARGO_BIN_EXE_rqemu-io"))
        .args(["-f", "qcow2", "-c", "read -P 0 64k 64k"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&base.stdout).contains("read 65536/65536"));
    for p in [&sock, &img, &snap] {
        let _ = std::fs::remove_file(p);
    }
}

/// The python directory of QEMU's source in the qemu-iotests cache.
fn qemu_python() -> Option<PathBuf> {
    let cache =
        std::env::var("IOTESTS_CACHE").unwrap_or_else(|_| "/var/tmp/qemu-iotests-src".into());
    let dir = Path::new(&cache).join("qemu-10.0.2/python");
    let present = dir.join("qemu/qmp/__init__.py").exists() && prereq::tool("python3");
    prereq::require(
        "QEMU's python qemu.qmp library (scripts/fetch-iotests.sh) and python3",
        present,
        "RQEMU_REQUIRE_QEMU",
    )
    .then_some(dir)
}

const CLIENT: &str = r#"
import sys
from qemu.qmp.legacy import QEMUMonitorProtocol
qmp = QEMUMonitorProtocol(sys.argv[1])
qmp.connect(negotiate=True)
print(qmp.cmd_obj({"execute": "query-status"})["return"]["status"])
print(qmp.cmd_obj({"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "n0", "size": 4096}}))
print([n["node-name"] for n in qmp.cmd_obj({"execute": "query-named-block-nodes"})["return"]])
print(qmp.cmd_obj({"execute": "stop"}))
print(qmp.pull_event(wait=True)["event"])
qmp.cmd_obj({"execute": "quit"})
print(qmp.pull_event(wait=True)["event"])
qmp.close()
"#;

#[test]
fn qemus_python_qmp_library_drives_rqemu() {
    let Some(python) = qemu_python() else {
        return;
    };
    let sock = temp("py.sock");
    let mut child = launch(&sock, &[]);
    drop(connect(&sock)); // wait until it listens; the first client going away is fine
    let out = Command::new("python3")
        .args(["-c", CLIENT])
        .arg(&sock)
        .env("PYTHONPATH", python)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "running\n{'return': {}}\n['n0']\n{'return': {}}\nSTOP\nSHUTDOWN\n"
    );
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_file(&sock);
}
