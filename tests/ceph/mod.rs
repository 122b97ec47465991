//! A throw-away Ceph cluster per test binary, for the rbd tests: started on first use with
//! scripts/ceph-micro.sh, stopped when the test process exits (and by a watchdog if the
//! process dies without exiting).
//!
//! Where Ceph is not installed the tests skip with a printed reason; under
//! RQEMU_REQUIRE_CEPH=1 that is a failure instead.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A running cluster: its directory and configuration file.
pub struct Cluster {
    /// Where the cluster's data, logs and keyring live.
    pub dir: PathBuf,
    /// DIR/ceph.conf.
    pub conf: String,
}

/// The programs the cluster needs, looked for in /usr/bin, or in RQEMU_CEPH_BIN_DIR where set
/// (so that the skip-or-fail rule itself can be tested with a directory that lacks them).
const DAEMONS: &[&str] = &["ceph-mon", "ceph-osd", "rbd"];
const LIBRBD: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/librbd.so.1",
    "/usr/lib/aarch64-linux-gnu/librbd.so.1",
    "/usr/lib64/librbd.so.1",
];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-micro.sh")
}

/// Prints "skipping: why" and returns None, or panics when RQEMU_REQUIRE_CEPH=1.
fn skip(why: &str) -> Option<&'static Cluster> {
    if std::env::var("RQEMU_REQUIRE_CEPH").as_deref() == Ok("1") {
        panic!("RQEMU_REQUIRE_CEPH=1 but {why}");
    }
    eprintln!("skipping: {why}");
    None
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();

extern "C" fn stop_at_exit() {
    if let Some(Some(c)) = CLUSTER.get() {
        let _ = Command::new(script())
            .arg("stop")
            .arg(&c.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&c.dir);
    }
}

fn start() -> Option<Cluster> {
    let dir = std::env::temp_dir().join(format!("rqemu-ceph-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(script())
        .arg("start")
        .arg(&dir)
        .output()
        .expect("run scripts/ceph-micro.sh");
    // Stops the daemons if this process dies without running its exit handlers.
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; '{script}' stop '{dir}'; rm -rf '{dir}'",
        pid = std::process::id(),
        script = script().display(),
        dir = dir.display()
    );
    let _ = Command::new("sh")
        .args(["-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    assert!(
        out.status.success(),
        "ceph-micro.sh start failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(Cluster {
        conf: dir.join("ceph.conf").display().to_string(),
        dir,
    })
}

/// The cluster of this test binary, started on first call; None (after printing why) where
/// Ceph or librbd is not installed.
pub fn cluster() -> Option<&'static Cluster> {
    let bin_dir = std::env::var_os("RQEMU_CEPH_BIN_DIR").unwrap_or_else(|| "/usr/bin".into());
    let paths = DAEMONS.iter().map(|d| Path::new(&bin_dir).join(d));
    if let Some(missing) = paths.into_iter().find(|p| !p.exists()) {
        return skip(&format!(
            "{} is missing (install ceph-mon ceph-osd ceph-common)",
            missing.display()
        ));
    }
    if !LIBRBD.iter().any(|p| Path::new(p).exists()) {
        return skip("librbd.so.1 is missing (install librbd1)");
    }
    let c = CLUSTER.get_or_init(|| {
        let c = start();
        // SAFETY: registers a plain extern "C" function with the C library's atexit.
        unsafe { libc::atexit(stop_at_exit) };
        c
    });
    c.as_ref()
}

impl Cluster {
    /// The `rbd:` filename of image `name` in pool `rbd`.
    pub fn image(&self, name: &str) -> String {
        format!("rbd:rbd/{name}:conf={}", self.conf)
    }

    /// Runs the `rbd` command line tool against the cluster; panics on failure.
    pub fn rbd(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("rbd")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("run rbd");
        assert!(
            out.status.success(),
            "rbd {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The image copied into the sparse host file `path` through `rbd export-diff` (rbd's
    /// export of the extents that hold data, in its "rbd diff v1" stream): for images too big
    /// to `rbd export` whole, such as the IDE guest's 200 GiB disk.
    pub fn export_sparse(&self, name: &str, path: &Path) {
        let stream = self.rbd(&["export-diff", "--no-progress", name, "-"]);
        let file = std::fs::File::create(path).unwrap();
        apply_diff_v1(&stream, &file).unwrap_or_else(|e| panic!("rbd export-diff {name}: {e}"));
    }

    /// The image's bytes as `rbd export` reads them.
    pub fn export(&self, name: &str) -> Vec<u8> {
        let path = self.dir.join(format!("export-{name}"));
        let _ = std::fs::remove_file(&path);
        self.rbd(&["export", "--no-progress", name, path.to_str().unwrap()]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        bytes
    }
}

/// Writes the extents of an "rbd diff v1" stream (`rbd export-diff`) into `file`, sized as the
/// stream says. Records: a tag byte, then 'f'/'t' (from/to snapshot: u32 length + name),
/// 's' (image size: u64), 'w' (data: u64 offset, u64 length, bytes), 'z' (zeroes: u64
/// offset, u64 length), 'e' (end); integers little-endian.
fn apply_diff_v1(stream: &[u8], file: &std::fs::File) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let mut rest = stream
        .strip_prefix(b"rbd diff v1\n")
        .ok_or("no \"rbd diff v1\" header")?;
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if rest.len() < n {
            return Err("stream ends inside a record".into());
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }
    fn u64_le(rest: &mut &[u8]) -> Result<u64, String> {
        Ok(u64::from_le_bytes(take(rest, 8)?.try_into().unwrap()))
    }
    loop {
        let tag = take(&mut rest, 1)?[0];
        match tag {
            b'f' | b't' => {
                let len = u32::from_le_bytes(take(&mut rest, 4)?.try_into().unwrap());
                take(&mut rest, len as usize)?;
            }
            b's' => file
                .set_len(u64_le(&mut rest)?)
                .map_err(|e| e.to_string())?,
            b'w' => {
                let offset = u64_le(&mut rest)?;
                let len = u64_le(&mut rest)?;
                let data = take(&mut rest, usize::try_from(len).map_err(|e| e.to_string())?)?;
                file.write_all_at(data, offset).map_err(|e| e.to_string())?;
            }
            // The file starts sparse, so zeroed extents are holes already.
            b'z' => {
                u64_le(&mut rest)?;
                u64_le(&mut rest)?;
            }
            b'e' => return Ok(()),
            other => return Err(format!("unknown record tag {other:#x}")),
        }
    }
}
