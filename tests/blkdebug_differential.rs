//! blkdebug through rqemu-io against the reference qemu-io: breakpoints (break, wait_break,
//! resume, remove_break) and injected errors on raw and qcow2 images must print the same
//! text. Skips with a printed reason when /usr/bin/qemu-io or qemu-img is absent; fails
//! instead when RQEMU_REQUIRE_QEMU=1.

use std::path::Path;
use std::process::Command;

const QEMU_IO: &str = "/usr/bin/qemu-io";
const QEMU_IMG: &str = "/usr/bin/qemu-img";
const RQEMU_IO: &str = env!("CARGO_BIN_EXE_rqemu-io");

fn reference_available() -> bool {
    if Path::new(QEMU_IO).exists() && Path::new(QEMU_IMG).exists() {
        return true;
    }
    if std::env::var("RQEMU_REQUIRE_QEMU").as_deref() == Ok("1") {
        panic!("{QEMU_IO} and {QEMU_IMG} are required (RQEMU_REQUIRE_QEMU=1)");
    }
    eprintln!("skipping: reference qemu-io/qemu-img not installed");
    false
}

/// Output with timing figures reduced and the scratch directory renamed.
fn normalise(text: &str, dir: &Path) -> String {
    text.replace(&dir.display().to_string(), "DIR")
        .lines()
        .map(|l| match l.find(" ops; ") {
            Some(i) => format!("{} ops; TIME", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `args` (with `IMG` replaced by a fresh image of `fmt`) under a program.
fn run(program: &str, fmt: &str, config: &str, args: &[&str], tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("rqemu-blkdebug-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("t.img");
    let created = Command::new(QEMU_IMG)
        .args(["create", "-q", "-f", fmt])
        .arg(&img)
        .arg("1M")
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    std::fs::write(dir.join("c.ini"), config).unwrap();
    let spec = format!("blkdebug:{}:{}", dir.join("c.ini").display(), img.display());
    let args: Vec<String> = args.iter().map(|a| a.replace("IMG", &spec)).collect();
    let out = Command::new(program).args(&args).output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.push_str(&format!("exit {:?}\n", out.status.code()));
    let text = normalise(&text, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    text
}

fn compare(fmt: &str, config: &str, commands: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push("IMG");
    let theirs = run(QEMU_IO, fmt, config, &args, "ref");
    let ours = run(RQEMU_IO, fmt, config, &args, "ours");
    let strip = |t: &str| t.replace(&format!("-{}", "ref"), "").replace("-ours", "");
    assert_eq!(strip(&ours), strip(&theirs), "{fmt} {commands:?}");
}

const BREAKPOINTS: &[&str] = &[
    "break bogus_event A",
    "resume A",
    "break write_aio A",
    "aio_write -P 0x11 0 512",
    "wait_break A",
    "resume A",
    "aio_flush",
    "read -P 0x11 0 512",
    "break write_aio B",
    "remove_break B",
    "remove_break B",
];

#[test]
fn breakpoints_on_raw_and_qcow2() {
    if !reference_available() {
        return;
    }
    compare("raw", "", BREAKPOINTS);
    compare("qcow2", "", BREAKPOINTS);
    compare(
        "qcow2",
        "",
        &[
            "break l2_update A",
            "aio_write 0 512",
            "wait_break A",
            "resume A",
            "aio_flush",
        ],
    );
}

#[test]
fn injected_errors_on_raw_and_qcow2() {
    if !reference_available() {
        return;
    }
    let once = "[inject-error]\nevent = \"read_aio\"\nerrno = \"28\"\nonce = \"on\"\n";
    let rw = ["write 0 4k", "read 0 512", "read 0 512", "write 0 512"];
    compare("raw", once, &rw);
    compare("qcow2", once, &rw);
    let states = "[set-state]\nevent = \"write_aio\"\nnew_state = \"2\"\n\
                  [inject-error]\nevent = \"read_aio\"\nstate = \"2\"\nsector = \"1\"\n";
    let reads = ["read 0 512", "write 0 512", "read 0 512", "read 512 512"];
    compare("raw", states, &reads);
    compare(
        "raw",
        "[inject-error]\nevent = \"bogus\"\n",
        &["read 0 512"],
    );
    compare("raw", "[inject-error]\nonce=\"on\"\n", &["read 0 512"]);
}
