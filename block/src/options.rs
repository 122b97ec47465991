//! Options: the flat key/value dictionary a node is opened with (QEMU's QDict).
//!
//! QEMU accepts a node's options three ways, all of which end up here as dotted keys:
//! `--image-opts driver=raw,file.filename=a.img` (util/keyval.c), `json:{"driver": "raw",
//! "file": {"filename": "a.img"}}` filenames (nested objects are flattened to `file.filename`),
//! and options a tool builds itself (`-f raw` becomes `driver=raw`). Drivers `take` the keys
//! they understand; whatever is left over is an error naming the first unknown option.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{Error, Result};

mod size;
pub use size::{strtosz, strtosz_unit, SizeError};

/// A flattened option dictionary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Options {
    map: BTreeMap<String, String>,
}

impl Options {
    /// An empty dictionary.
    pub fn new() -> Options {
        Options::default()
    }

    /// Parses QEMU's keyval syntax `a=1,b.c=x,,y` (a doubled comma is a literal comma).
    /// A first item without `=` is stored under `implied_key` (as `-drive file` does).
    pub fn parse_keyval(text: &str, implied_key: Option<&str>) -> Result<Options> {
        let mut opts = Options::new();
        for (i, item) in split_unescaped(text).into_iter().enumerate() {
            if item.is_empty() {
                continue;
            }
            match item.split_once('=') {
                Some((k, v)) => {
                    if k.is_empty() {
                        return Err(Error::invalid(format!("Invalid parameter '{item}'")));
                    }
                    opts.map.insert(k.to_string(), v.to_string());
                }
                None => match (i, implied_key) {
                    (0, Some(key)) => {
                        opts.map.insert(key.to_string(), item);
                    }
                    _ => {
                        return Err(Error::invalid(format!(
                            "Expected '=' after parameter '{item}'"
                        )))
                    }
                },
            }
        }
        Ok(opts)
    }

    /// Parses a `json:{...}` pseudo-filename into flattened options.
    pub fn parse_json_filename(filename: &str) -> Result<Options> {
        let text = filename.strip_prefix("json:").unwrap_or(filename);
        let value: Value = serde_json::from_str(text)
            .or_else(|_| serde_json::from_str(&single_quotes_to_double(text)))
            .map_err(|e| Error::invalid(format!("Could not parse the JSON options: {e}")))?;
        let Value::Object(_) = value else {
            return Err(Error::invalid("Invalid JSON object given"));
        };
        let mut opts = Options::new();
        flatten("", &value, &mut opts.map);
        Ok(opts)
    }

    /// Sets a key (later sets overwrite).
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.map.insert(key.to_string(), value.into());
    }

    /// Sets a key only if absent (qdict_set_default_str).
    pub fn set_default(&mut self, key: &str, value: impl Into<String>) {
        self.map
            .entry(key.to_string())
            .or_insert_with(|| value.into());
    }

    /// Reads a key without consuming it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// Whether the key is present.
    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Removes and returns a key.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.map.remove(key)
    }

    /// Removes a boolean key: on/off, true/false, yes/no.
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => parse_bool(&v)
                .map(Some)
                .ok_or_else(|| Error::invalid(format!("Parameter '{key}' expects 'on' or 'off'"))),
        }
    }

    /// Removes an unsigned integer key (decimal or 0x hex).
    pub fn take_u64(&mut self, key: &str) -> Result<Option<u64>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => parse_u64(&v).map(Some).ok_or_else(|| {
                Error::invalid(format!(
                    "Parameter '{key}' expects a non-negative number below 2^64"
                ))
            }),
        }
    }

    /// Removes a size key that may carry a suffix (k, M, G, T, P, E; 1024-based).
    pub fn take_size(&mut self, key: &str) -> Result<Option<u64>> {
        match self.take(key) {
            None => Ok(None),
            // QEMU's parse_option_size messages.
            Some(v) => match strtosz(&v) {
                Ok(size) => Ok(Some(size)),
                Err(SizeError::Range) => Err(Error::invalid(format!(
                    "Value '{v}' is out of range for parameter '{key}'"
                ))),
                Err(SizeError::Invalid) => Err(Error::invalid(format!(
                    "Parameter '{key}' expects a non-negative number below 2^64\n\
                     Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
                     and exabytes, respectively."
                ))),
            },
        }
    }

    /// Moves every `prefix.key` entry into a new dictionary as `key` (qdict_extract_subqdict).
    pub fn extract_prefix(&mut self, prefix: &str) -> Options {
        let dotted = format!("{prefix}.");
        let keys: Vec<String> = self
            .map
            .keys()
            .filter(|k| k.starts_with(&dotted))
            .cloned()
            .collect();
        let mut sub = Options::new();
        for k in keys {
            let v = self.map.remove(&k).unwrap();
            sub.map.insert(k[dotted.len()..].to_string(), v);
        }
        sub
    }

    /// Adds every entry of `other` under `prefix.`.
    pub fn insert_prefixed(&mut self, prefix: &str, other: &Options) {
        for (k, v) in &other.map {
            self.map.insert(format!("{prefix}.{k}"), v.clone());
        }
    }

    /// Whether no key is left.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The first remaining key, for "does not support the option" errors.
    pub fn first_key(&self) -> Option<&str> {
        self.map.keys().next().map(String::as_str)
    }

    /// Iterates over entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The dictionary as a nested JSON object (the form `json:` filenames print).
    pub fn to_json(&self) -> Value {
        let mut root = serde_json::Map::new();
        for (k, v) in &self.map {
            let mut node = &mut root;
            let parts: Vec<&str> = k.split('.').collect();
            for p in &parts[..parts.len() - 1] {
                let entry = node
                    .entry(p.to_string())
                    .or_insert_with(|| Value::Object(Default::default()));
                if !entry.is_object() {
                    *entry = Value::Object(Default::default());
                }
                node = entry.as_object_mut().unwrap();
            }
            node.insert(parts[parts.len() - 1].to_string(), Value::String(v.clone()));
        }
        Value::Object(root)
    }
}

/// QEMU's JSON parser also takes 'single-quoted' strings (iotests write `json:{'driver':
/// 'null-co'}`); rewrites them as standard double-quoted strings.
pub fn single_quotes_to_double(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'') | (None, '"') => {
                quote = Some(c);
                out.push('"');
            }
            (Some(q), c) if c == q => {
                quote = None;
                out.push('"');
            }
            (Some(_), '\\') => match chars.next() {
                Some('\'') => out.push('\''),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            },
            (Some('\''), '"') => out.push_str("\\\""),
            (_, c) => out.push(c),
        }
    }
    out
}

/// Splits a keyval list at single commas; a doubled comma is a literal comma (`a=1,b=x,,y`).
pub fn split_unescaped(text: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                items.last_mut().unwrap().push(',');
            } else {
                items.push(String::new());
            }
        } else {
            items.last_mut().unwrap().push(c);
        }
    }
    items
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        // Lists flatten to numbered keys (qdict_flatten): `inject-error.0.event`.
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}.{i}"), v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        Value::Bool(b) => {
            out.insert(
                prefix.to_string(),
                if *b { "on" } else { "off" }.to_string(),
            );
        }
        Value::Null => {
            out.insert(prefix.to_string(), String::new());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Parses on/off, true/false, yes/no.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "on" | "true" | "yes" => Some(true),
        "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// Parses a decimal or `0x` hexadecimal unsigned integer.
pub fn parse_u64(v: &str) -> Option<u64> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Parses a size with an optional binary suffix: `512`, `64k`, `1.5M`, `0x200`; None when
/// [`strtosz`] refuses it.
pub fn parse_size(v: &str) -> Option<u64> {
    strtosz(v).ok()
}

/// Adds a space after the ':' and ',' that separate JSON members (outside strings).
pub fn spaced_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_str, mut escaped) = (false, false);
    for c in text.chars() {
        out.push(c);
        match c {
            _ if escaped => escaped = false,
            '\\' if in_str => escaped = true,
            '"' => in_str = !in_str,
            ':' | ',' if !in_str => out.push(' '),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyval_with_escaped_commas_and_prefixes() {
        let mut o =
            Options::parse_keyval("driver=raw,file.filename=a,,b.img,file.driver=file", None)
                .unwrap();
        assert_eq!(o.take("driver").as_deref(), Some("raw"));
        let mut file = o.extract_prefix("file");
        assert!(o.is_empty());
        assert_eq!(file.take("filename").as_deref(), Some("a,b.img"));
        assert_eq!(file.take("driver").as_deref(), Some("file"));
    }

    #[test]
    fn json_filenames_flatten() {
        let o = Options::parse_json_filename(
            r#"json:{"driver":"raw","file":{"driver":"file","filename":"x.img"},"read-only":true,"size":4096}"#,
        )
        .unwrap();
        assert_eq!(o.get("file.filename"), Some("x.img"));
        assert_eq!(o.get("read-only"), Some("on"));
        assert_eq!(o.get("size"), Some("4096"));
        assert_eq!(o.to_json()["file"]["driver"], "file");
    }

    #[test]
    fn json_filenames_take_single_quotes() {
        let o = Options::parse_json_filename(
            "json:{ 'driver': 'null-co', 'size': 1048576, 'read-zeroes': true, 'x': 'a\\'b\"c' }",
        )
        .unwrap();
        assert_eq!(o.get("driver"), Some("null-co"));
        assert_eq!(o.get("read-zeroes"), Some("on"));
        assert_eq!(o.get("x"), Some("a'b\"c"));
    }

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("1.5M"), Some(3 << 19));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("16E"), None);
        assert_eq!(parse_size("12x"), None);
    }
}
