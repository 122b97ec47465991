//! Image creation options: the `-o` lists of create, convert, dd and measure (QEMU's
//! QemuOptsList of a driver's create_opts, util/qemu-option.c).
//!
//! A format's options come first, then its protocol's (`file`: size, nocow, preallocation,
//! extent_size_hint), names appearing once. `-o help` lists them sorted; the "Formatting"
//! line of `create` walks them in order, printing what was set or has a default.

use block::driver::{CreateOption, DriverClass};
use block::Options;

use super::cli::{qemu_strtosz, SizeError};

/// One option's value as given (`text`) and, for sizes and numbers, as parsed.
#[derive(Clone, Debug)]
struct OptValue {
    text: String,
    number: Option<u64>,
}

/// The option descriptions of a format (and its protocol) with the values set so far.
pub struct CreateOpts {
    descs: Vec<CreateOption>,
    values: Vec<Option<OptValue>>,
}

/// Whether a `-o` argument is well-formed: not empty, not starting with a comma, and not
/// ending in an odd number of commas (is_valid_option_list).
pub fn is_valid_option_list(list: &str) -> bool {
    if list.is_empty() || list.starts_with(',') {
        return false;
    }
    let trailing = list.len() - list.trim_end_matches(',').len();
    trailing.is_multiple_of(2)
}

/// Splits `a=1,b=x,,y` into items (a doubled comma is a literal comma), dropping empty ones.
fn split_items(list: &str) -> Vec<String> {
    let mut items = block::options::split_unescaped(list);
    items.retain(|i| !i.is_empty());
    items
}

/// Whether the list asks for help (`help` or `?` among its items).
pub fn has_help_option(list: &str) -> bool {
    split_items(list).iter().any(|i| i == "help" || i == "?")
}

/// How `-o help` and the "Formatting" line name an option's type.
fn kind_name(kind: &str) -> &str {
    match kind {
        "bool" => "bool (on/off)",
        other => other,
    }
}

/// Parses a number option as qemu_strtou64 with base 0 does: leading blanks, a sign (a
/// minus wraps like C's strtoull), then decimal, 0x hex or 0 octal.
fn parse_number(text: &str) -> Option<u64> {
    let t = text.trim_start();
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let value = super::cli::strtoul(digits)?;
    Some(if negative {
        value.wrapping_neg()
    } else {
        value
    })
}

const SIZE_HELP: &str = "expects a non-negative number below 2^64\n\
     Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
     and exabytes, respectively.";

impl CreateOpts {
    /// The merged option list of a format and (optionally) its protocol.
    pub fn new(format: &DriverClass, protocol: Option<&DriverClass>) -> CreateOpts {
        let mut descs: Vec<CreateOption> = format.create_options.to_vec();
        for opt in protocol.map_or(&[][..], |p| p.create_options) {
            if !descs.iter().any(|d| d.name == opt.name) {
                descs.push(*opt);
            }
        }
        let values = vec![None; descs.len()];
        CreateOpts { descs, values }
    }

    /// An option list from descriptions alone (amend's lists).
    pub fn from_descs(descs: &[CreateOption]) -> CreateOpts {
        CreateOpts {
            descs: descs.to_vec(),
            values: vec![None; descs.len()],
        }
    }

    /// Whether the driver knows an option.
    pub fn has(&self, name: &str) -> bool {
        self.descs.iter().any(|d| d.name == name)
    }

    /// Sets an option from text, checking its type (qemu_opt_set).
    pub fn set(&mut self, name: &str, text: &str) -> Result<(), String> {
        let Some(i) = self.descs.iter().position(|d| d.name == name) else {
            return Err(format!("Invalid parameter '{name}'"));
        };
        let number = match self.descs[i].kind {
            "size" => match qemu_strtosz(text) {
                Ok(v) => Some(v),
                Err(SizeError::Range) => {
                    return Err(format!(
                        "Value '{text}' is out of range for parameter '{name}'"
                    ))
                }
                Err(SizeError::Invalid) => return Err(format!("Parameter '{name}' {SIZE_HELP}")),
            },
            "num" => Some(
                parse_number(text).ok_or_else(|| format!("Parameter '{name}' expects a number"))?,
            ),
            "bool" => {
                if block::options::parse_bool(text).is_none() {
                    return Err(format!("Parameter '{name}' expects 'on' or 'off'"));
                }
                None
            }
            _ => None,
        };
        self.values[i] = Some(OptValue {
            text: text.to_string(),
            number,
        });
        Ok(())
    }

    /// Sets a number option (qemu_opt_set_number).
    pub fn set_number(&mut self, name: &str, value: u64) {
        if let Some(i) = self.descs.iter().position(|d| d.name == name) {
            self.values[i] = Some(OptValue {
                text: value.to_string(),
                number: Some(value),
            });
        }
    }

    /// Parses a whole `-o` list into the options (qemu_opts_do_parse).
    pub fn parse(&mut self, list: &str) -> Result<(), String> {
        for item in split_items(list) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => match item.strip_prefix("no") {
                    Some(k) if self.has(k) => (k.to_string(), "off".to_string()),
                    _ => (item.clone(), "on".to_string()),
                },
            };
            self.set(&key, &value)?;
        }
        Ok(())
    }

    /// The text of a set option.
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.descs.iter().position(|d| d.name == name)?;
        self.values[i].as_ref().map(|v| v.text.as_str())
    }

    /// The value of a set size or number option.
    pub fn get_number(&self, name: &str) -> Option<u64> {
        let i = self.descs.iter().position(|d| d.name == name)?;
        self.values[i].as_ref().and_then(|v| v.number)
    }

    /// A size or number option's value, else its default, else 0 (qemu_opt_get_size).
    pub fn get_size(&self, name: &str) -> u64 {
        let Some(i) = self.descs.iter().position(|d| d.name == name) else {
            return 0;
        };
        match &self.values[i] {
            Some(v) => v.number.unwrap_or(0),
            None => self.descs[i]
                .default
                .and_then(block::options::parse_size)
                .unwrap_or(0),
        }
    }

    /// Whether a boolean option is set to on.
    pub fn get_bool(&self, name: &str) -> bool {
        self.get(name)
            .and_then(block::options::parse_bool)
            .unwrap_or(false)
    }

    /// The options as printed after "Formatting 'x', fmt=F " (qemu_opts_print with " ").
    pub fn print_line(&self) -> String {
        let mut parts = Vec::new();
        for (desc, value) in self.descs.iter().zip(&self.values) {
            let text = match (value, desc.default) {
                (Some(v), _) => match (desc.kind, v.number) {
                    ("size", Some(n)) => n.to_string(),
                    // QEMU prints number options signed (PRId64).
                    ("num", Some(n)) => (n as i64).to_string(),
                    _ => v.text.clone(),
                },
                (None, Some(d)) => d.to_string(),
                (None, None) => continue,
            };
            let text = if desc.kind == "str" {
                text.replace(',', ",,")
            } else {
                text
            };
            parts.push(format!("{}={}", desc.name, text));
        }
        parts.join(" ")
    }

    /// The options that were set, for the driver's create function (sizes as byte counts).
    pub fn to_options(&self) -> Options {
        let mut opts = Options::new();
        for (desc, value) in self.descs.iter().zip(&self.values) {
            if let Some(v) = value {
                let text = v.number.map_or(v.text.clone(), |n| n.to_string());
                opts.set(desc.name, text);
            }
        }
        opts
    }

    /// The `-o help` listing: one line per option, sorted (qemu_opts_print_help).
    pub fn help_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .descs
            .iter()
            .map(|d| {
                let mut s = format!("  {}=<{}>", d.name, kind_name(d.kind));
                if s.len() < 24 {
                    s.push_str(&" ".repeat(24 - s.len()));
                }
                s.push_str(" - ");
                s.push_str(d.help);
                s
            })
            .collect();
        lines.sort();
        lines
    }
}

/// Prints `-o help` for a format, adding the protocol's options when a filename is known
/// (print_block_option_help); returns the exit status.
pub fn print_block_option_help(filename: Option<&str>, fmt: &str) -> i32 {
    use super::cli::error_report;
    let Some(drv) = block::registry::find_driver(fmt) else {
        error_report(&format!("Unknown file format '{fmt}'"));
        return 1;
    };
    if drv.create.is_none() {
        error_report(&format!(
            "Format driver '{fmt}' does not support image creation"
        ));
        return 1;
    }
    let proto = match filename.map(block::registry::find_protocol) {
        None => None,
        Some(Ok(p)) => {
            if p.create.is_none() {
                error_report(&format!(
                    "Protocol driver '{}' does not support image creation",
                    p.format_name
                ));
                return 1;
            }
            Some(p)
        }
        Some(Err(e)) => {
            error_report(&e.to_string());
            return 1;
        }
    };
    let opts = CreateOpts::new(drv, proto);
    match filename {
        Some(_) => println!("Supported options:"),
        None => println!("Supported {fmt} options:"),
    }
    for line in opts.help_lines() {
        println!("{line}");
    }
    if filename.is_none() {
        println!("\nThe protocol level may support further options.");
        println!("Specify the target filename to include those options.");
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_lists() {
        assert!(is_valid_option_list("a=1,b=2"));
        assert!(!is_valid_option_list(",a=1"));
        assert!(!is_valid_option_list("a=1,"));
        assert!(is_valid_option_list("a=x,,"));
        assert!(has_help_option("size=1M,help"));
        assert!(!has_help_option("backing_file=help,,x"));
    }

    #[test]
    fn raw_formatting_line_and_types() {
        formats::register_all();
        let raw = block::registry::find_driver("raw").unwrap();
        let file = block::registry::find_driver("file").unwrap();
        let mut o = CreateOpts::new(raw, Some(file));
        o.parse("preallocation=falloc,nocow=on").unwrap();
        o.set_number("size", 1 << 20);
        assert_eq!(o.print_line(), "size=1048576 nocow=on preallocation=falloc");
        assert_eq!(o.parse("foo=bar").unwrap_err(), "Invalid parameter 'foo'");
        assert!(o.parse("nocow=maybe").is_err());
        assert_eq!(parse_number(" 0x10"), Some(16));
        assert_eq!(parse_number("-1"), Some(u64::MAX));
        assert_eq!(parse_number("16k"), None);
        assert_eq!(o.to_options().get("size"), Some("1048576"));
    }
}
