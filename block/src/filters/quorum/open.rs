//! Opening a quorum node: its options, its children and the name it shows (quorum_open,
//! quorum_valid_threshold and quorum_gather_child_options in QEMU's block/quorum.c, with
//! bdrv_refresh_filename's `json:` description of a node no plain filename can name).

use std::rc::Rc;

use serde_json::{json, Map, Value};

use super::{Quorum, ReadPattern};
use crate::driver::BlockDriver;
use crate::error::{Error, Result};
use crate::node::BlockDriverState;
use crate::open::{full_open_options, json_name};
use crate::options::Options;

/// The options that change what the node does, and so belong in its `json:` name
/// (quorum_strong_runtime_opts).
const STRONG_OPTIONS: [&str; 4] = [
    "vote-threshold",
    "blkverify",
    "rewrite-corrupted",
    "read-pattern",
];

/// How many children the options describe, `children.0` to `children.N-1`, each either a
/// node name or options of its own (qdict_array_entries): a gap, an index that is not a
/// number or a child given both ways makes them no array.
fn count_children(options: &Options) -> Result<usize> {
    let not_array = || Error::invalid("Option children is not a valid array");
    let keys: Vec<&str> = options
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("children."))
        .collect();
    let mut count = 0;
    loop {
        let index = count.to_string();
        let as_name = keys.contains(&index.as_str());
        let nested = format!("{index}.");
        let as_options = keys.iter().any(|k| k.starts_with(&nested));
        match (as_name, as_options) {
            (false, false) => break,
            (true, true) => return Err(not_array()),
            _ => count += 1,
        }
    }
    let belongs = |k: &&str| {
        let index = k.split('.').next().unwrap_or_default();
        index
            .parse::<usize>()
            .is_ok_and(|i| i < count && i.to_string() == index)
    };
    if !keys.iter().all(belongs) || options.contains("children") {
        return Err(not_array());
    }
    Ok(count)
}

/// The vote threshold, checked against the number of children (quorum_valid_threshold).
fn take_threshold(options: &mut Options, children: usize) -> Result<usize> {
    let threshold = match options.take("vote-threshold") {
        None => 0,
        Some(v) => v
            .parse::<i64>()
            .or_else(|_| v.parse::<u64>().map(|n| n as i64))
            .map_err(|_| Error::invalid("Parameter 'vote-threshold' expects a number"))?,
    };
    if threshold < 1 {
        return Err(Error::invalid(
            "Parameter 'vote-threshold' expects a value >= 1",
        ));
    }
    if threshold as u64 > children as u64 {
        return Err(Error::invalid("threshold may not exceed children count"));
    }
    Ok(threshold as usize)
}

/// Opens child `index`: the node a name refers to, or a new node from its options, opened
/// with the quorum's flags like any child of a node (bdrv_open_child).
async fn open_child(
    bs: &BlockDriverState,
    options: &mut Options,
    index: usize,
) -> Result<Rc<BlockDriverState>> {
    let role = format!("children.{index}");
    let child_opts = options.extract_prefix(&role);
    if let Some(name) = options.take(&role) {
        return crate::graph::find_node(&name).ok_or_else(|| {
            Error::invalid(format!(
                "Cannot find device='{name}' nor node-name='{name}'"
            ))
        });
    }
    let child = crate::open::open_node(None, child_opts, bs.open_flags(), true).await?;
    child.opened_as_child.set(true);
    Ok(child)
}

/// Opens a quorum node (quorum_open).
pub(super) async fn open(
    bs: &BlockDriverState,
    options: &mut Options,
) -> Result<Box<dyn BlockDriver>> {
    let count = count_children(options)?;
    if count < 1 {
        return Err(Error::invalid(
            "Number of provided children must be 1 or more",
        ));
    }
    let strong: Vec<(&str, String)> = STRONG_OPTIONS
        .iter()
        .filter_map(|&k| options.get(k).map(|v| (k, v.to_string())))
        .collect();
    // Every option is parsed before any is checked, as QEMU absorbs them into QemuOpts
    // first: a malformed boolean is reported before a bad threshold.
    let blkverify = options.take_bool("blkverify")?.unwrap_or(false);
    let rewrite_corrupted = options.take_bool("rewrite-corrupted")?.unwrap_or(false);
    let pattern = options.take("read-pattern");
    let threshold = take_threshold(options, count)?;
    let read_pattern = match pattern.as_deref() {
        None | Some("quorum") => ReadPattern::Quorum,
        Some("fifo") => ReadPattern::Fifo,
        Some(_) => return Err(Error::invalid("Please set read-pattern as fifo or quorum")),
    };
    // The fifo pattern never compares children: both options are accepted and unused.
    let voting = read_pattern == ReadPattern::Quorum;
    let blkverify = voting && blkverify;
    let rewrite_corrupted = voting && rewrite_corrupted;
    if blkverify && (count != 2 || threshold != 2) {
        return Err(Error::invalid(
            "blkverify=on can only be set if there are exactly two files and vote-threshold is 2",
        ));
    }
    if blkverify && rewrite_corrupted {
        return Err(Error::invalid(
            "rewrite-corrupted=on cannot be used with blkverify=on",
        ));
    }
    let mut children = Vec::with_capacity(count);
    for index in 0..count {
        children.push(open_child(bs, options, index).await?);
    }
    // QEMU lists a node's children newest first, so `info` shows the last one first.
    for (index, child) in children.iter().enumerate().rev() {
        bs.attach_child(&format!("children.{index}"), child.clone());
    }
    bs.set_filename(json_filename(&children, &strong));
    Ok(Box::new(Quorum {
        children,
        threshold,
        blkverify,
        rewrite_corrupted,
        read_pattern,
    }))
}

/// The quorum's name: a `json:` description of its driver, its strong options and its
/// children, in the order QEMU's QDict prints them (quorum_gather_child_options). A
/// threshold is printed as a number, the other options as they were given.
fn json_filename(children: &[Rc<BlockDriverState>], strong: &[(&str, String)]) -> String {
    let mut o = Map::new();
    o.insert("driver".into(), json!("quorum"));
    o.insert(
        "children".into(),
        Value::Array(children.iter().map(|c| full_open_options(c)).collect()),
    );
    for (key, value) in strong {
        let value = match value.parse::<i64>() {
            Ok(n) if *key == "vote-threshold" => json!(n),
            _ => json!(value),
        };
        o.insert((*key).into(), value);
    }
    json_name(&Value::Object(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(text: &str) -> Options {
        Options::parse_keyval(text, None).unwrap()
    }

    #[test]
    fn children_must_form_an_array() {
        assert_eq!(count_children(&opts("a=1")).unwrap(), 0);
        let two = "children.0.driver=file,children.0.filename=a,children.1=node";
        assert_eq!(count_children(&opts(two)).unwrap(), 2);
        for bad in [
            "children.0.driver=file,children.2.driver=file",
            "children.0=a,children.0.driver=file",
            "children.x.driver=file",
            "children.0=a,children.+1=b",
            "children.0=a,children.01=b",
        ] {
            let e = count_children(&opts(bad)).unwrap_err();
            assert_eq!(
                e.to_string(),
                "Option children is not a valid array",
                "{bad}"
            );
        }
    }

    #[test]
    fn thresholds_are_checked_as_qemu_does() {
        let check = |v: &str| take_threshold(&mut opts(&format!("vote-threshold={v}")), 2);
        assert_eq!(check("2").unwrap(), 2);
        for (v, msg) in [
            ("0", "Parameter 'vote-threshold' expects a value >= 1"),
            ("-1", "Parameter 'vote-threshold' expects a value >= 1"),
            ("3", "threshold may not exceed children count"),
            ("x", "Parameter 'vote-threshold' expects a number"),
        ] {
            assert_eq!(check(v).unwrap_err().to_string(), msg, "{v}");
        }
        let missing = take_threshold(&mut Options::new(), 2).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "Parameter 'vote-threshold' expects a value >= 1"
        );
    }
}
