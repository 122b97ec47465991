//! docs/exercises/ never drift: every removal patch still applies to the tree, and each has
//! its text with a grading command. With RQEMU_EXERCISES_FULL=1 (CI runs it once; it builds
//! the grading tests of each exercise) every patch must also make its grading tests fail, so
//! each exercise keeps a solution: the code as it is.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn patches() -> Vec<PathBuf> {
    let mut list: Vec<PathBuf> = std::fs::read_dir(root().join("docs/exercises"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .collect();
    list.sort();
    list
}

#[test]
fn there_are_six_or_more_exercises_each_with_text_and_grading() {
    let list = patches();
    assert!(list.len() >= 6, "{list:?}");
    for p in &list {
        let text = std::fs::read_to_string(p.with_extension("md")).unwrap();
        let first = text.lines().next().unwrap_or("");
        assert!(
            first.starts_with("Grading: `cargo test ") && first.ends_with('`'),
            "{}: the first line must be the grading command",
            p.display()
        );
    }
}

#[test]
fn every_patch_applies_to_the_tree() {
    if !root().join(".git").exists() {
        eprintln!("skipped: not a git checkout");
        return;
    }
    for p in patches() {
        let out = Command::new("git")
            .current_dir(root())
            .args(["apply", "--check"])
            .arg(&p)
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "{} no longer applies (regenerate it, docs/exercises/README.md): {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_patch_makes_its_grading_tests_fail() {
    if std::env::var("RQEMU_EXERCISES_FULL").map_or(true, |v| v != "1") {
        eprintln!("skipped: set RQEMU_EXERCISES_FULL=1 to build and run each exercise's grading");
        return;
    }
    let out = Command::new(root().join("scripts/exercise.sh"))
        .arg("verify")
        .output()
        .expect("run scripts/exercise.sh");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
