//! JSON printed the way QEMU prints a QAPI object (qobject/qdict.c + qobject/json-writer.c).
//!
//! QEMU builds a QDict and pretty-prints it. A QDict is a hash table of 512 buckets keyed by
//! the tdb hash of the member name, each bucket a list with the newest entry first, and it is
//! printed bucket by bucket: so `qemu-img info --output=json` lists "children" before
//! "virtual-size" before "filename". Objects here are serde_json maps built in QAPI schema
//! order (the order QEMU inserts members); [`to_pretty`] (qemu-img's output, `-qmp-pretty`)
//! and [`to_compact`] (a monitor's one-line replies and events) reorder them as QEMU's table
//! would.

use serde_json::Value;

const QDICT_BUCKET_MAX: u32 = 512;

/// QEMU's tdb_hash of a QDict key.
fn tdb_hash(name: &str) -> u32 {
    let bytes = name.as_bytes();
    let mut value = 0x238F_13AFu32.wrapping_mul(bytes.len() as u32);
    for (i, &b) in bytes.iter().enumerate() {
        value = value.wrapping_add((b as u32) << (i * 5 % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345)
}

/// Members of an object in the order QEMU's QDict iterates them.
pub fn qdict_order(map: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<(usize, &String, &Value)> = map
        .iter()
        .enumerate()
        .map(|(i, (k, v))| (i, k, v))
        .collect();
    // Bucket ascending; within a bucket the later insertion comes first.
    entries.sort_by_key(|&(i, k, _)| (tdb_hash(k) % QDICT_BUCKET_MAX, usize::MAX - i));
    entries.into_iter().map(|(_, k, v)| (k, v)).collect()
}

/// Pretty-prints as qobject_to_json_pretty: four-space indent, `"key": value`, empty
/// containers as `{` / `[`, newline, closing bracket.
pub fn to_pretty(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, Some(0));
    out
}

/// Prints on one line as qobject_to_json: `", "` between members, `{}` for an empty object.
pub fn to_compact(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, None);
    out
}

/// Before a member: the comma after the previous one and, pretty, the new line.
fn separate(out: &mut String, first: bool, depth: Option<usize>) {
    if !first {
        out.push(',');
        if depth.is_none() {
            out.push(' ');
        }
    }
    if let Some(d) = depth {
        newline(out, d + 1);
    }
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    out.push_str(&" ".repeat(depth * 4));
}

/// `depth` is the indentation level when pretty-printing, None on one line.
fn write_value(out: &mut String, value: &Value, depth: Option<usize>) {
    let inner = depth.map(|d| d + 1);
    match value {
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in qdict_order(map).into_iter().enumerate() {
                separate(out, i == 0, depth);
                write_str(out, k);
                out.push_str(": ");
                write_value(out, v, inner);
            }
            if let Some(d) = depth {
                newline(out, d);
            }
            out.push('}');
        }
        Value::Array(list) => {
            out.push('[');
            for (i, v) in list.iter().enumerate() {
                separate(out, i == 0, depth);
                write_value(out, v, inner);
            }
            if let Some(d) = depth {
                newline(out, d);
            }
            out.push(']');
        }
        Value::String(s) => write_str(out, s),
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
    }
}

/// A JSON string as QEMU's quoted_str escapes it (non-ASCII as \uXXXX).
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) >= 0x7f => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{:04X}", u));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_follow_qemu_hash_order() {
        let v = json!({
            "filename": "x.img", "format": "raw", "dirty-flag": false,
            "actual-size": 4096, "virtual-size": 65536, "children": []
        });
        let keys: Vec<&str> = qdict_order(v.as_object().unwrap())
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "children",
                "virtual-size",
                "filename",
                "format",
                "actual-size",
                "dirty-flag"
            ]
        );
    }

    #[test]
    fn compact_separates_members_with_comma_space() {
        let v = json!({"return": {}, "list": [1, "é"]});
        assert_eq!(to_compact(&v), r#"{"return": {}, "list": [1, "\u00E9"]}"#);
    }

    #[test]
    fn empty_containers_and_nesting() {
        let v = json!({"type": "file", "data": {}});
        assert_eq!(
            to_pretty(&v),
            "{\n    \"type\": \"file\",\n    \"data\": {\n    }\n}"
        );
        assert_eq!(to_pretty(&json!([])), "[\n]");
    }
}
