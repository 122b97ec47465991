//! docs/WALKTHROUGH.md cannot drift from the code: every rqemu `file::function` its tables
//! name is a function of that file, and a real run of the hello guest, on IDE and on
//! virtio-blk, traces the events of each journey table in the order the table gives them
//! (through scripts/trace-request.sh, as the walkthrough shows). The run needs KVM, nasm and
//! SeaBIOS: without them it skips, or fails under RQEMU_REQUIRE_KVM=1 / RQEMU_REQUIRE_QEMU=1.
//! README.md's layout table cannot drift either: every path it names exists, and every
//! top-level module of the three crates is named.

mod prereq;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";
/// The events the walkthrough's command line enables.
const EVENTS: &str =
    "bdrv_open_common,ide_sector_*,ide_bus_set_irq,virtio_*,blk_*,bdrv_co_p*,thread_pool_*";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn walkthrough() -> String {
    std::fs::read_to_string(root().join("docs/WALKTHROUGH.md")).unwrap()
}

/// Every `path.rs::name` in backticks.
fn references(doc: &str) -> Vec<(String, String)> {
    doc.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|s| s.split_once(".rs::"))
        .map(|(file, name)| (format!("{file}.rs"), name.to_string()))
        .collect()
}

/// The trace events of the table after `<!-- journey: NAME -->`, in row order: a last
/// column that is exactly one backticked name.
fn journey(doc: &str, name: &str) -> Vec<String> {
    let marker = format!("<!-- journey: {name} -->");
    let table = doc.split(&marker).nth(1).expect("journey table");
    table
        .lines()
        .skip(3)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|row| {
            let last = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
            let event = last.strip_prefix('`')?.strip_suffix('`')?;
            (!event.contains('`')).then(|| event.to_string())
        })
        .collect()
}

#[test]
fn every_named_rqemu_function_exists_in_its_file() {
    let doc = walkthrough();
    let refs = references(&doc);
    assert!(refs.len() > 30, "too few references found: {refs:?}");
    let missing: Vec<String> = refs
        .iter()
        .filter(|(file, name)| {
            let text = std::fs::read_to_string(root().join(file)).unwrap_or_default();
            !text.contains(&format!("fn {name}(")) && !text.contains(&format!("fn {name}<"))
        })
        .map(|(file, name)| format!("{file}::{name}"))
        .collect();
    assert!(
        missing.is_empty(),
        "WALKTHROUGH.md names functions that are gone: {missing:?}"
    );
}

#[test]
fn the_journey_tables_are_found() {
    let doc = walkthrough();
    assert_eq!(journey(&doc, "ide")[0], "ide_sector_write");
    assert_eq!(journey(&doc, "virtio")[0], "virtio_blk_handle_read");
}

#[test]
fn qemu_functions_of_the_path_have_greppable_counterparts() {
    let grep = |file: &str, what: &str| {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        assert!(text.contains(what), "{file} does not mention {what}");
    };
    grep("src/devices/ide/commands.rs", "(ide_sector_write_cb)");
    grep("block/src/aio/thread_pool.rs", "thread_pool_submit_aio");
    grep(
        "src/devices/virtio/block/mod.rs",
        "virtio_blk_handle_output",
    );
    grep(
        "src/devices/virtio/block/mod.rs",
        "(virtio_blk_rw_complete)",
    );
    grep("src/devices/virtio/kvm_glue.rs", "virtio_pci_notify");
}

fn prerequisites() -> bool {
    use prereq::{kvm, require, tool};
    require("/dev/kvm", kvm(), "RQEMU_REQUIRE_KVM")
        && require(SEABIOS, Path::new(SEABIOS).exists(), "RQEMU_REQUIRE_QEMU")
        && require("nasm", tool("nasm"), "RQEMU_REQUIRE_QEMU")
}

/// Boots the hello guest with its disk on `interface`, tracing to a file, and returns the
/// trace's path.
fn traced_run(dir: &Path, interface: &str) -> PathBuf {
    let boot = dir.join("hello.bin");
    let status = Command::new("nasm")
        .args(["-f", "bin", "-o"])
        .arg(&boot)
        .arg(root().join("fixtures/guests/hello.asm"))
        .status()
        .unwrap();
    assert!(status.success(), "nasm");
    let mut image = std::fs::read(&boot).unwrap();
    image.resize(1 << 20, 0);
    let disk = dir.join(format!("{interface}.raw"));
    std::fs::write(&disk, image).unwrap();
    let trace = dir.join(format!("{interface}.log"));
    let out = Command::new("timeout")
        .args(["120", env!("CARGO_BIN_EXE_rqemu")])
        .args(["-m", "64", "-nographic", "-no-reboot", "-drive"])
        .arg(format!("file={},format=raw,if={interface}", disk.display()))
        .arg("-trace")
        .arg(format!("{EVENTS},file={},thread=on", trace.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "rqemu: {console}");
    assert!(console.contains("wrote it back as sector 2"), "{console}");
    trace
}

/// The events of trace-request.sh's journey, in order.
fn traced_journey(trace: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new(root().join("scripts/trace-request.sh"))
        .args(args)
        .arg(trace)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|l| l.split_whitespace().find(|w| w.contains('_')))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_run_of_the_hello_guest_traces_the_journeys_in_the_walkthroughs_order() {
    if !prerequisites() {
        return;
    }
    let doc = walkthrough();
    let dir = tempfile::tempdir().unwrap();
    let ide = traced_run(dir.path(), "ide");
    assert_eq!(
        traced_journey(&ide, &["-s", "ide_sector_write"]),
        journey(&doc, "ide"),
        "the IDE write's trace (left) differs from WALKTHROUGH.md's table (right)"
    );
    let virtio = traced_run(dir.path(), "virtio");
    assert_eq!(
        traced_journey(&virtio, &["-s", "virtio_blk_handle_read", "-n", "2"]),
        journey(&doc, "virtio"),
        "the virtio-blk read's trace (left) differs from WALKTHROUGH.md's table (right)"
    );
}

/// The rows of README.md's layout table: (paths of the first column, backticked names of the
/// second), each name in backticks.
fn layout_rows(readme: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let table = readme
        .split("| path | what it is | QEMU's counterpart |")
        .nth(1)
        .expect("README.md's layout table");
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').collect();
            (ticked(cells[1]), ticked(cells[2]))
        })
        .collect()
}

#[test]
fn the_readme_layout_table_matches_the_tree() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let rows = layout_rows(&readme);
    assert!(rows.len() > 20, "layout table not found: {rows:?}");
    let paths: Vec<&String> = rows.iter().flat_map(|(paths, _)| paths).collect();
    let gone: Vec<&&String> = paths
        .iter()
        .filter(|p| !root().join(p.as_str()).exists())
        .collect();
    assert!(
        gone.is_empty(),
        "README.md's layout names paths that are gone: {gone:?}"
    );
    // Every top-level module of each crate is named: by its own path in the first column, or
    // in the second column of its folder's row (`formats/src/`: `raw.rs`, `qcow2/`...).
    let mut unnamed = Vec::new();
    for dir in ["block/src", "formats/src", "src"] {
        let folder_row = rows
            .iter()
            .find(|(paths, _)| paths.iter().any(|p| *p == format!("{dir}/")));
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "lib.rs" {
                continue;
            }
            let name = if entry.path().is_dir() {
                format!("{name}/")
            } else {
                name
            };
            let full = format!("{dir}/{name}");
            let named = paths.iter().any(|p| **p == full)
                || folder_row.is_some_and(|(_, names)| names.contains(&name));
            if !named {
                unnamed.push(full);
            }
        }
    }
    unnamed.sort();
    assert!(
        unnamed.is_empty(),
        "README.md's layout table does not name: {unnamed:?}"
    );
}
