//! The trace catalogue and the code agree: every `trace!` call site in the workspace names
//! an event of block/src/trace/catalogue.rs (the macro also refuses others when compiled),
//! and every catalogue entry still has a call site, so `-trace help` lists no dead event.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use block::trace::catalogue::EVENTS;

/// The `.rs` files of the workspace's crates (block, formats, the root crate).
fn sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    let mut dirs: Vec<PathBuf> = ["block/src", "formats/src", "src"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 50, "workspace sources not found");
    files
}

/// The event names of the `trace!(name, ...)` calls in `text`, comments left out.
fn call_sites(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("trace!(") {
        let line_start = rest[..at].rfind('\n').map_or(0, |i| i + 1);
        let is_comment = rest[line_start..at].contains("//");
        let after = rest[at + "trace!(".len()..].trim_start();
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !is_comment && !name.is_empty() {
            names.push(name);
        }
        rest = &rest[at + 1..];
    }
    names
}

#[test]
fn every_call_site_is_catalogued_and_every_entry_is_used() {
    let mut used = BTreeSet::new();
    for file in sources() {
        let text = std::fs::read_to_string(&file).unwrap();
        for name in call_sites(&text) {
            assert!(
                EVENTS.iter().any(|e| e.name == name),
                "{}: trace event {name} is not in the catalogue",
                file.display()
            );
            used.insert(name);
        }
    }
    let unused: Vec<&str> = EVENTS
        .iter()
        .map(|e| e.name)
        .filter(|n| !used.contains(*n))
        .collect();
    assert!(
        unused.is_empty(),
        "catalogued events without a call site: {unused:?}"
    );
}

#[test]
fn the_scanner_sees_multi_line_calls_and_skips_comments() {
    let text = "// trace!(in_comment, \"x\")\n    trace!(\n        multi_line,\n        \"{}\", 1);\n    block::trace!(one_line, \"\");\n";
    assert_eq!(call_sites(text), ["multi_line", "one_line"]);
}

#[test]
fn thread_pool_events_carry_qemu_10_names() {
    for name in ["thread_pool_submit_aio", "thread_pool_complete_aio"] {
        let e = EVENTS.iter().find(|e| e.name == name).unwrap();
        assert_eq!(e.qemu, name);
    }
}
