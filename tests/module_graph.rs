//! Keeps the code's shape teachable: no import cycle between modules, no module over 600 lines.
//!
//! For every crate of the workspace this reads the non-test part of each module file (the lines
//! before its first `#[cfg(test)]`), collects the `crate::…`, `super::…` and `self::…` paths it
//! names (in `use` declarations or inline), and builds the dependency graph of the crate's
//! top-level modules, then again with each `src/devices/*` module as a node of its own (the
//! device families must not lean on each other in circles either). The crate root (`lib.rs`)
//! is not a node: it declares every module and assembles them (the block crate's built-in
//! driver list), and its re-exports are followed to the module that defines the item.
//! A cycle in that graph means two concepts cannot be read, tested or replaced apart; the
//! allowed groups are listed in [`ALLOWED_CYCLES`] with the reason for each (the block
//! layer's `node` ↔ `driver`, two halves of QEMU's BlockDriverState/BlockDriver, among them).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Largest non-test module, in lines (the project rule).
const MAX_LINES: usize = 600;

/// Groups of modules allowed to depend on each other, each exactly as the checker finds it:
/// (crate directory, the modules, why).
const ALLOWED_CYCLES: &[(&str, &[&str], &str)] = &[(
    "block",
    &["driver", "node"],
    "a BlockDriverState holds its BlockDriver and every driver callback takes the node it \
     serves: the two halves of QEMU's bs/bs->drv, one concept split for reading",
)];

/// Modules whose sub-modules are graph nodes of their own (the machine's device families).
const SPLIT_MODULES: &[&str] = &["devices"];

/// A module file and the module path it defines (`["devices", "ide", "ata"]`).
struct ModuleFile {
    path: PathBuf,
    module: Vec<String>,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace members, read from the root Cargo.toml (`members = [".", "block", ...]`).
fn crate_dirs() -> Vec<String> {
    let toml = fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    let start = toml.find("members").expect("workspace members");
    let list = &toml[start..];
    let list = &list[list.find('[').unwrap() + 1..list.find(']').unwrap()];
    list.split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether a source path is test code: a `tests` folder or a `tests.rs` file.
fn is_test_path(rel: &Path) -> bool {
    rel.components().any(|c| c.as_os_str() == "tests") || rel.file_name().unwrap() == "tests.rs"
}

/// All `.rs` files under `dir`, sorted.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The library's module files (binaries are crates of their own and are left out).
fn module_files(src: &Path) -> Vec<ModuleFile> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let rel = path.strip_prefix(src).unwrap().to_path_buf();
            if is_test_path(&rel) || rel.starts_with("bin") || rel == Path::new("main.rs") {
                return None;
            }
            let mut module: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            Some(ModuleFile { path, module })
        })
        .collect()
}

/// The non-test part of a module file: the lines before its first `#[cfg(test)]`.
fn non_test_lines(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .collect()
}

/// Rust tokens of the source, without comments, strings and character literals: identifiers,
/// `::` and single punctuation characters.
fn tokens(src: &str) -> Vec<String> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if src[i..].starts_with("//") {
            i += src[i..].find('\n').unwrap_or(src.len() - i);
        } else if src[i..].starts_with("/*") {
            i += src[i..].find("*/").map_or(src.len() - i, |e| e + 2);
        } else if c == b'"' || (c == b'r' && raw_string_start(&src[i..]).is_some()) {
            i = skip_string(src, i);
        } else if c == b'\'' {
            i = skip_char_or_lifetime(b, i);
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(src[start..i].to_string());
        } else if src[i..].starts_with("::") {
            out.push("::".into());
            i += 2;
        } else {
            if !c.is_ascii_whitespace() {
                out.push((c as char).to_string());
            }
            i += 1;
        }
    }
    out
}

/// Number of `#` of a raw string starting here (`r"`, `r#"`...).
fn raw_string_start(s: &str) -> Option<usize> {
    let hashes = s[1..].bytes().take_while(|&c| c == b'#').count();
    (s.as_bytes().get(1 + hashes) == Some(&b'"')).then_some(hashes)
}

/// Index just past the string literal starting at `i`.
fn skip_string(src: &str, i: usize) -> usize {
    let b = src.as_bytes();
    if b[i] == b'r' {
        let hashes = raw_string_start(&src[i..]).unwrap();
        let close = format!("\"{}", "#".repeat(hashes));
        let body = i + 2 + hashes;
        return src[body..]
            .find(&close)
            .map_or(src.len(), |e| body + e + close.len());
    }
    let mut j = i + 1;
    while j < b.len() && b[j] != b'"' {
        j += if b[j] == b'\\' { 2 } else { 1 };
    }
    j + 1
}

/// Index just past a character literal, or past the quote of a lifetime.
fn skip_char_or_lifetime(b: &[u8], i: usize) -> usize {
    if b.get(i + 1) == Some(&b'\\') {
        let mut j = i + 2;
        while j < b.len() && b[j] != b'\'' {
            j += 1;
        }
        return j + 1;
    }
    if b.get(i + 2) == Some(&b'\'') {
        return i + 3;
    }
    // A multi-byte character literal, or a lifetime (`'a`): skip only what is a literal.
    let rest = std::str::from_utf8(&b[i + 1..]).unwrap_or("");
    match rest.chars().next() {
        Some(ch) if rest[ch.len_utf8()..].starts_with('\'') => i + 1 + ch.len_utf8() + 1,
        _ => i + 1,
    }
}

/// Parses the use-tree (or plain path) after a `crate::`/`super::` prefix, up to two segments
/// deep, appending every path it names to `out`.
fn parse_tree(toks: &[String], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    if toks.get(i).map(String::as_str) == Some("{") {
        i += 1;
        let mut depth = 0;
        let mut item_start = i;
        while i < toks.len() {
            match toks[i].as_str() {
                "{" => depth += 1,
                "}" if depth == 0 => {
                    parse_tree(toks, item_start, prefix.clone(), out);
                    return;
                }
                "}" => depth -= 1,
                "," if depth == 0 => {
                    parse_tree(toks, item_start, prefix.clone(), out);
                    item_start = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        return;
    }
    let Some(tok) = toks.get(i) else { return };
    if !tok.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        return;
    }
    let mut path = prefix;
    path.push(tok.clone());
    if path.len() < 3 && toks.get(i + 1).map(String::as_str) == Some("::") {
        parse_tree(toks, i + 2, path, out);
    } else {
        out.push(path);
    }
}

/// Every intra-crate path a module names, resolved to an absolute module path.
fn crate_paths(module: &[String], src: &str) -> Vec<Vec<String>> {
    let toks = tokens(src);
    let mut out = Vec::new();
    for i in 0..toks.len() {
        let start_of_path = i == 0 || toks[i - 1] != "::";
        if !start_of_path || toks.get(i + 1).map(String::as_str) != Some("::") {
            continue;
        }
        let (base, j) = match toks[i].as_str() {
            "crate" => (Vec::new(), i + 2),
            "self" => (module.to_vec(), i + 2),
            "super" => {
                let mut base = module.to_vec();
                base.pop();
                let mut j = i + 2;
                while toks.get(j).map(String::as_str) == Some("super")
                    && toks.get(j + 1).map(String::as_str) == Some("::")
                {
                    base.pop();
                    j += 2;
                }
                (base, j)
            }
            _ => continue,
        };
        if toks[i] == "self" && i > 0 && toks[i - 1] == "$" {
            continue;
        }
        let mut paths = Vec::new();
        parse_tree(&toks, j, Vec::new(), &mut paths);
        for p in paths {
            let mut full = base.clone();
            full.extend(p.into_iter().filter(|s| s != "self"));
            out.push(full);
        }
    }
    out
}

/// The graph node a module path belongs to: its top-level module, or `devices::ide` for the
/// split ones. `None` for items of the crate root (`lib.rs`), resolved through its re-exports.
fn node_of(path: &[String], modules: &BTreeSet<Vec<String>>, split: bool) -> Option<String> {
    let first = path.first()?;
    if !modules.contains(&vec![first.clone()]) {
        return None;
    }
    if split && SPLIT_MODULES.contains(&first.as_str()) {
        if let Some(second) = path.get(1) {
            if modules.contains(&vec![first.clone(), second.clone()]) {
                return Some(format!("{first}::{second}"));
            }
        }
    }
    Some(first.clone())
}

/// The dependency graph of one crate: node -> (node it uses -> a file that uses it). With
/// `split`, the sub-modules of `SPLIT_MODULES` are nodes of their own.
fn graph(src: &Path, split: bool) -> BTreeMap<String, BTreeMap<String, String>> {
    let files = module_files(src);
    let mut modules: BTreeSet<Vec<String>> = BTreeSet::new();
    for f in &files {
        for n in 1..=f.module.len() {
            modules.insert(f.module[..n].to_vec());
        }
    }
    // The crate root's re-exports (`pub use backend::BlockBackend`) name their module of origin.
    let mut reexports: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(root) = files.iter().find(|f| f.module.is_empty()) {
        let text = fs::read_to_string(&root.path).unwrap();
        let toks = tokens(&non_test_lines(&text).join("\n"));
        for i in 0..toks.len() {
            if toks[i] == "use" && i > 0 && toks[i - 1] == "pub" {
                let mut paths = Vec::new();
                parse_tree(&toks, i + 1, Vec::new(), &mut paths);
                for p in paths {
                    let name = p.last().unwrap().clone();
                    reexports.insert(name, p);
                }
            }
        }
    }
    let mut g: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in files.iter().filter(|f| !f.module.is_empty()) {
        let from = node_of(&f.module, &modules, split).unwrap();
        let text = fs::read_to_string(&f.path).unwrap();
        let src_text = non_test_lines(&text).join("\n");
        g.entry(from.clone()).or_default();
        for mut p in crate_paths(&f.module, &src_text) {
            if p.len() == 1 {
                if let Some(origin) = reexports.get(&p[0]) {
                    p = origin.clone();
                }
            }
            if let Some(to) = node_of(&p, &modules, split) {
                if to != from {
                    let rel = f.path.strip_prefix(workspace_root()).unwrap();
                    g.get_mut(&from)
                        .unwrap()
                        .entry(to)
                        .or_insert_with(|| rel.display().to_string());
                }
            }
        }
    }
    g
}

/// Strongly connected components of more than one node (Tarjan's algorithm).
fn cycles(g: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        let g = s.g;
        for w in g.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_import_cycle_between_modules() {
    let mut failures = Vec::new();
    for dir in crate_dirs() {
        let src = workspace_root().join(&dir).join("src");
        for split in [false, true] {
            failures.extend(cycle_failures(&dir, &graph(&src, split)));
        }
    }
    failures.dedup();
    assert!(
        failures.is_empty(),
        "import cycles:\n{}",
        failures.join("\n")
    );
}

/// One message per disallowed cycle of `g`, with the edges that close it.
fn cycle_failures(dir: &str, g: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<String> {
    if std::env::var_os("MODULE_GRAPH_DUMP").is_some() {
        for (from, to) in g {
            eprintln!("{dir}: {from} -> {:?}", to.keys().collect::<Vec<_>>());
        }
    }
    let mut failures = Vec::new();
    for scc in cycles(g) {
        let allowed = ALLOWED_CYCLES
            .iter()
            .any(|&(d, modules, _why)| d == dir && scc.iter().eq(modules.iter()));
        if allowed {
            continue;
        }
        let mut why = format!(
            "crate `{dir}`: modules {} depend on each other:",
            scc.join(", ")
        );
        for from in &scc {
            for (to, file) in &g[from] {
                if scc.contains(to) {
                    why += &format!("\n    {from} -> {to} (in {file})");
                }
            }
        }
        failures.push(why);
    }
    failures
}

#[test]
fn no_module_over_600_lines() {
    let mut failures = Vec::new();
    for dir in crate_dirs() {
        let src = workspace_root().join(&dir).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for path in files {
            let rel = path.strip_prefix(&src).unwrap();
            if is_test_path(rel) {
                continue;
            }
            let n = non_test_lines(&fs::read_to_string(&path).unwrap()).len();
            if n > MAX_LINES {
                let rel = path.strip_prefix(workspace_root()).unwrap();
                failures.push(format!("{} has {n} non-test lines", rel.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "modules over {MAX_LINES} lines (split them by concept):\n{}",
        failures.join("\n")
    );
}

/// The checker itself: the paths it extracts from a sample module, and a cycle it finds.
#[test]
fn the_checker_sees_paths_and_cycles() {
    let module = vec!["devices".to_string(), "ide".to_string(), "glue".to_string()];
    let src = r#"
        use crate::{drives::lookup, devices::{pci::Bus, virtio}};
        use super::ata::Ata; // crate::ignored::in_comment
        const S: &str = "crate::ignored::in_string";
        fn f<'a>(x: &'a u8) -> char { let _ = super::super::super::kvm::f(); 'c' }
        use self::inner::Thing;
    "#;
    let mut got: Vec<String> = crate_paths(&module, src)
        .iter()
        .map(|p| p.join("::"))
        .collect();
    got.sort();
    let want = [
        "devices::ide::ata::Ata",
        "devices::ide::glue::inner::Thing",
        "devices::pci::Bus",
        "devices::virtio",
        "drives::lookup",
        "kvm::f",
    ];
    assert_eq!(got, want);

    let mut g: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        g.entry(a.into())
            .or_default()
            .insert(b.into(), String::new());
    }
    assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
}
