//! rqemu's monitor over a QMP unix socket, with no guest (`-accel qtest`): the greeting,
//! negotiation, QEMU's error classes, blockdev-add of a qcow2 image over its file node,
//! query-named-block-nodes, block_resize, blockdev-snapshot-sync, HMP `qemu-io`, and quit
//! with its SHUTDOWN event; then the same socket driven by QEMU's own python tools from the
//! qemu-iotests source cache (fetched by scripts/fetch-iotests.sh): the `qemu.qmp` library,
//! legacy and asynchronous clients (a mirror job to its end), and `qmp-shell` reading
//! commands on its stdin. Those skip when python3 or the source is missing, unless
//! RQEMU_REQUIRE_QEMU=1.

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
    assert_eq!(
        busy["error"]["desc"],
        "Node 'disk' is busy: node is used as backing hd of 'top'"
    );

    // QEMU raises SHUTDOWN before it replies to quit.
    let event = qmp.cmd("quit", json!({}));
    assert_eq!(event["event"], "SHUTDOWN");
    assert_eq!(qmp.recv(), json!({"return": {}}));
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

/// The python directory of QEMU's source in the qemu-iotests cache, fetched there by
/// scripts/fetch-iotests.sh (as tests/iotests.rs does) when it is not yet.
fn qemu_python() -> Option<PathBuf> {
    const WHAT: &str = "QEMU's python qemu.qmp library (scripts/fetch-iotests.sh) and python3";
    if !prereq::require(WHAT, prereq::tool("python3"), "RQEMU_REQUIRE_QEMU") {
        return None;
    }
    let cache =
        std::env::var("IOTESTS_CACHE").unwrap_or_else(|_| "/var/tmp/qemu-iotests-src".into());
    let dir = Path::new(&cache).join("qemu-10.0.2/python");
    if !dir.join("qemu/qmp/__init__.py").exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-iotests.sh");
        match Command::new("bash").arg(script).output() {
            Ok(out) if !out.status.success() => {
                eprintln!("{}", String::from_utf8_lossy(&out.stderr))
            }
            Ok(_) => {}
            Err(e) => eprintln!("cannot run fetch-iotests.sh: {e}"),
        }
    }
    let present = dir.join("qemu/qmp/qmp_shell.py").exists();
    prereq::require(WHAT, present, "RQEMU_REQUIRE_QEMU").then_some(dir)
}

/// Runs python3 with QEMU's python package on its path: `args`, `stdin` fed to it; its
/// stdout, after asserting it succeeded.
fn run_python(dir: &Path, args: &[&str], stdin: &str) -> String {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let input = temp(&format!("py-stdin-{run}"));
    std::fs::write(&input, stdin).unwrap();
    let out = Command::new("python3")
        .args(args)
        .env("PYTHONPATH", dir)
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .expect("run python3");
    let _ = std::fs::remove_file(&input);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
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
try:
    qmp.close()
except EOFError:
    pass  # the monitor closed first after quit (QEMU's machine.py tolerates this too)
"#;

#[test]
fn qemus_python_qmp_library_drives_rqemu() {
    let Some(python) = qemu_python() else {
        return;
    };
    let sock = temp("py.sock");
    let mut child = launch(&sock, &[]);
    drop(connect(&sock)); // wait until it listens; the first client going away is fine
    let stdout = run_python(&python, &["-c", CLIENT, sock.to_str().unwrap()], "");
    assert_eq!(
        stdout,
        "running\n{'return': {}}\n['n0']\n{'return': {}}\nSTOP\nSHUTDOWN\n"
    );
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_file(&sock);
}

/// A small image of `size` with `pattern` written at its start (qcow2, by our tools).
fn qcow2_image(path: &Path, size: &str, pattern: Option<&str>) {
    let _ = std::fs::remove_file(path);
    let created = Command::new(env!("CARGO_BIN_EXE_rqemu-img"))
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
        .status()
        .unwrap();
    assert!(created.success());
    if let Some(p) = pattern {
        let wrote = Command::new(env!("CARGO_BIN_EXE_rqemu-io"))
            .args(["-f", "qcow2", "-c", &format!("write -P {p} 0 256k")])
            .arg(path)
            .output()
            .unwrap();
        assert!(wrote.status.success());
    }
}

/// qmp-shell reads commands on its stdin, one a line (`name key=value ...`, JSON values
/// allowed), and prints each reply as JSON; an empty line prints the events received.
#[test]
fn qemus_qmp_shell_drives_rqemu() {
    let Some(python) = qemu_python() else {
        return;
    };
    let sock = temp("shell.sock");
    let img = temp("shell.qcow2");
    qcow2_image(&img, "1M", None);
    let drive = format!("file={},format=qcow2,if=none,id=d0", img.display());
    let mut child = launch(&sock, &["-drive", &drive]);
    drop(connect(&sock));
    let commands = [
        "query-status",
        "blockdev-add driver=null-co node-name=n0 size=4096",
        "query-block",
        "block_resize device=d0 size=2097152",
        "query-named-block-nodes flat=true",
        "query-block-jobs",
        "blockdev-add driver=null-co node-name=n0 size=4096",
        "no-such-command",
        "stop",
        "",
    ];
    let shell = python.join("qemu/qmp/qmp_shell.py");
    let out = run_python(
        &python,
        &[shell.to_str().unwrap(), sock.to_str().unwrap()],
        &(commands.join("\n") + "\n"),
    );
    assert!(
        out.starts_with("Welcome to the QMP low-level shell!\nConnected to QEMU 10.0.2\n"),
        "{out}"
    );
    // The replies, one a line after the prompt; events as python dicts.
    let replies: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("(QEMU) "))
        .filter(|l| !l.is_empty())
        .collect();
    let json = |i: usize| -> Value {
        serde_json::from_str(replies[i]).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    assert_eq!(json(0)["return"]["status"], "running", "{out}");
    assert_eq!(json(1), json!({"return": {}}), "{out}");
    let block = &json(2)["return"][0];
    assert_eq!(block["device"], "d0", "{out}");
    assert_eq!(block["inserted"]["drv"], "qcow2", "{out}");
    assert_eq!(block["inserted"]["image"]["virtual-size"], 1 << 20, "{out}");
    assert_eq!(json(3), json!({"return": {}}), "{out}");
    let nodes = json(4)["return"].clone();
    assert_eq!(node(&nodes, "n0")["drv"], "null-co", "{out}");
    let disk = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["drv"] == "qcow2");
    assert_eq!(disk.unwrap()["image"]["virtual-size"], 2 << 20, "{out}");
    assert_eq!(json(5), json!({"return": []}), "{out}");
    let dup = json(6);
    assert_eq!(dup["error"]["class"], "GenericError", "{out}");
    let missing = json(7);
    assert_eq!(missing["error"]["class"], "CommandNotFound", "{out}");
    assert_eq!(json(8), json!({"return": {}}), "{out}");
    assert!(replies[9].starts_with("{'timestamp': "), "{out}");
    assert!(replies[9].contains("'event': 'STOP'"), "{out}");
    // The shell leaves at the end of its input; a quit from it would race its own close
    // against the monitor's (an EOFError either way), so the test ends the emulator.
    child.kill().unwrap();
    child.wait().unwrap();
    for p in [&sock, &img] {
        let _ = std::fs::remove_file(p);
    }
}

/// The asynchronous client of `qemu.qmp` runs a mirror job to its end: blockdev-add of two
/// images, blockdev-mirror, BLOCK_JOB_READY, block-job-complete, BLOCK_JOB_COMPLETED.
const MIRROR_CLIENT: &str = r#"
import asyncio, sys
from qemu.qmp import QMPClient, ExecuteError

async def main(sock, src, dst):
    qmp = QMPClient('rqemu-test')
    await qmp.connect(sock)
    print(qmp.greeting.QMP.version['qemu']['major'])
    for node, path in (('src', src), ('dst', dst)):
        await qmp.execute('blockdev-add', {'driver': 'qcow2', 'node-name': node,
                                           'file': {'driver': 'file', 'filename': path}})
    try:
        await qmp.execute('block-job-complete', {'device': 'm0'})
    except ExecuteError as e:
        print(e.error_class, e)
    with qmp.listener(('BLOCK_JOB_READY', 'BLOCK_JOB_COMPLETED')) as events:
        await qmp.execute('blockdev-mirror', {'job-id': 'm0', 'device': 'src',
                                              'target': 'dst', 'sync': 'full'})
        ev = await events.get()
        print(ev['event'], ev['data']['device'], ev['data']['len'])
        await qmp.execute('block-job-complete', {'device': 'm0'})
        ev = await events.get()
        print(ev['event'], ev['data']['offset'], ev['data'].get('error'))
    print(await qmp.execute('query-block-jobs'))
    await qmp.execute('quit')
    try:
        await qmp.disconnect()
    except EOFError:
        pass  # the monitor closed first after quit

asyncio.run(main(*sys.argv[1:]))
"#;

#[test]
fn qemus_async_qmp_client_runs_a_mirror_job_on_rqemu() {
    let Some(python) = qemu_python() else {
        return;
    };
    let sock = temp("mirror.sock");
    let src = temp("mirror-src.qcow2");
    let dst = temp("mirror-dst.qcow2");
    qcow2_image(&src, "1M", Some("0xa5"));
    qcow2_image(&dst, "1M", None);
    let mut child = launch(&sock, &[]);
    drop(connect(&sock));
    let args = [&sock, &src, &dst].map(|p| p.to_str().unwrap());
    let out = run_python(
        &python,
        &["-c", MIRROR_CLIENT, args[0], args[1], args[2]],
        "",
    );
    assert_eq!(
        out,
        // Only the 256 KiB written are copied (the target reads as zeroes elsewhere).
        "10\nDeviceNotActive Block job 'm0' not found\nBLOCK_JOB_READY m0 262144\n\
         BLOCK_JOB_COMPLETED 262144 None\n[]\n"
    );
    assert!(child.wait().unwrap().success());
    let same = Command::new(env!("CARGO_BIN_EXE_rqemu-img"))
        .args(["compare", "-f", "qcow2", "-F", "qcow2"])
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
    for p in [&sock, &src, &dst] {
        let _ = std::fs::remove_file(p);
    }
}
