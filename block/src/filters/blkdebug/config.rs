//! blkdebug's rules and where they come from: the `inject-error.N.*` / `set-state.N.*`
//! options and the ini-style config file (QEMU's add_rule and read_config in
//! block/blkdebug.c, with the file syntax of util/qemu-config.c).

use crate::debug_event::BlkdbgEvent;
use crate::error::{Error, Result};
use crate::options::{parse_bool, Options};

/// Kinds of request an injected error may hit (QEMU's BlkdebugIOType), as mask bits.
pub mod iotype {
    /// Reads.
    pub const READ: u32 = 1 << 0;
    /// Writes.
    pub const WRITE: u32 = 1 << 1;
    /// Write-zeroes.
    pub const WRITE_ZEROES: u32 = 1 << 2;
    /// Discards.
    pub const DISCARD: u32 = 1 << 3;
    /// Flushes.
    pub const FLUSH: u32 = 1 << 4;
    /// Block-status queries.
    pub const BLOCK_STATUS: u32 = 1 << 5;
    /// What a rule without `iotype` hits: everything but block-status.
    pub const DEFAULT: u32 = READ | WRITE | WRITE_ZEROES | DISCARD | FLUSH;

    /// Parses QEMU's iotype names.
    pub fn parse(name: &str) -> Option<u32> {
        Some(match name {
            "read" => READ,
            "write" => WRITE,
            "write-zeroes" => WRITE_ZEROES,
            "discard" => DISCARD,
            "flush" => FLUSH,
            "block-status" => BLOCK_STATUS,
            _ => return None,
        })
    }
}

/// How an error is injected once its rule is active.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inject {
    /// Errno to fail with (0 means no error).
    pub errno: i32,
    /// Only requests covering this byte fail (`sector` * 512); None: every request.
    pub offset: Option<u64>,
    /// The rule goes away after failing one request.
    pub once: bool,
    /// Fail without first yielding to the main loop.
    pub immediately: bool,
    /// Which request kinds fail (`iotype` bits).
    pub iotypes: u32,
}

/// What a rule does when its event fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make following requests fail.
    InjectError(Inject),
    /// Move to another state.
    SetState(i64),
    /// Suspend the request that raised the event (a breakpoint).
    Suspend(String),
}

/// A rule: when `event` fires in `state` (0: any state), take `action`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Unique id, so that a rule can be found again after lists change.
    pub id: u64,
    /// The event that triggers the rule.
    pub event: BlkdbgEvent,
    /// The state the rule applies in; 0 for every state.
    pub state: i64,
    /// What the rule does.
    pub action: Action,
}

fn bad_value(v: &str) -> Error {
    Error::invalid(format!("invalid parameter value: {v}"))
}

fn take_num(opts: &mut Options, key: &str, default: i64) -> Result<i64> {
    match opts.take(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<i64>()
            .map_err(|_| Error::invalid(format!("Parameter '{key}' expects a number"))),
    }
}

fn take_flag(opts: &mut Options, key: &str) -> Result<bool> {
    match opts.take(key) {
        None => Ok(false),
        Some(v) => parse_bool(&v)
            .ok_or_else(|| Error::invalid(format!("Parameter '{key}' expects 'on' or 'off'"))),
    }
}

/// Builds one rule from a section's options (`kind` is "inject-error" or "set-state").
pub fn parse_rule(kind: &str, mut opts: Options, id: u64) -> Result<Rule> {
    let name = opts
        .take("event")
        .ok_or_else(|| Error::invalid("Missing event name for rule"))?;
    let event = BlkdbgEvent::parse(&name).ok_or_else(|| bad_value(&name))?;
    let state = take_num(&mut opts, "state", 0)?;
    let action = if kind == "inject-error" {
        let errno = take_num(&mut opts, "errno", libc::EIO as i64)?;
        let sector = take_num(&mut opts, "sector", -1)?;
        let iotypes = match opts.take("iotype") {
            None => iotype::DEFAULT,
            Some(v) => iotype::parse(&v).ok_or_else(|| bad_value(&v))?,
        };
        Action::InjectError(Inject {
            errno: i32::try_from(errno).map_err(|_| bad_value(&errno.to_string()))?,
            offset: u64::try_from(sector).ok().and_then(|s| s.checked_mul(512)),
            once: take_flag(&mut opts, "once")?,
            immediately: take_flag(&mut opts, "immediately")?,
            iotypes,
        })
    } else {
        Action::SetState(take_num(&mut opts, "new_state", 0)?)
    };
    if let Some(key) = opts.first_key() {
        return Err(Error::invalid(format!("Invalid parameter '{key}'")));
    }
    Ok(Rule {
        id,
        event,
        state,
        action,
    })
}

/// Splits the `inject-error.N.*` / `set-state.N.*` options into one dictionary per rule.
pub fn take_option_rules(options: &mut Options) -> Vec<(&'static str, Options)> {
    let mut sections = Vec::new();
    for kind in ["inject-error", "set-state"] {
        let mut all = options.extract_prefix(kind);
        for n in 0.. {
            let one = all.extract_prefix(&n.to_string());
            if one.is_empty() {
                break;
            }
            sections.push((kind, one));
        }
    }
    sections
}

/// Parses the config file's text: `[inject-error]` / `[set-state]` sections of
/// `key = "value"` lines; `#` starts a comment line.
pub fn parse_config(text: &str) -> Result<Vec<(&'static str, Options)>> {
    let mut sections: Vec<(&'static str, Options)> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line
            .strip_prefix('[')
            .and_then(|l| l.trim_end().strip_suffix(']'))
        {
            let kind = match name {
                "inject-error" => "inject-error",
                "set-state" => "set-state",
                _ => return Err(Error::invalid(format!("There is no option group '{name}'"))),
            };
            sections.push((kind, Options::new()));
            continue;
        }
        // sscanf(" %63s = \"%[^\"]\""): a key token, '=' with any blanks around it, and
        // a quoted value; a malformed line is reported by its first token.
        let key_end = line.find(char::is_whitespace).unwrap_or(line.len());
        let (key, rest) = line.split_at(key_end);
        let invalid = || Error::invalid(format!("Invalid parameter '{key}'"));
        let value = rest
            .trim_start()
            .strip_prefix('=')
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('"'))
            .and_then(|r| r.split_once('"'))
            .map(|(v, _)| v)
            .ok_or_else(invalid)?;
        match sections.last_mut() {
            Some((_, opts)) => opts.set(key, value),
            None => return Err(Error::invalid("no group defined")),
        }
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_sections_become_rules() {
        let text = "# c\n[inject-error]\nevent = \"read_aio\"\nerrno = \"28\"\nsector = \"1\"\n\
                    once = \"on\"\n[set-state]\nevent = \"write_aio\"\nnew_state = \"2\"\n";
        let sections = parse_config(text).unwrap();
        assert_eq!(sections.len(), 2);
        let mut rules = sections
            .into_iter()
            .enumerate()
            .map(|(i, (k, o))| parse_rule(k, o, i as u64));
        let inject = rules.next().unwrap().unwrap();
        assert_eq!(inject.event, BlkdbgEvent::ReadAio);
        assert_eq!(
            inject.action,
            Action::InjectError(Inject {
                errno: 28,
                offset: Some(512),
                once: true,
                immediately: false,
                iotypes: iotype::DEFAULT
            })
        );
        assert_eq!(rules.next().unwrap().unwrap().action, Action::SetState(2));
    }

    #[test]
    fn bad_config_is_refused_with_qemus_messages() {
        let err = |t: &str| parse_config(t).err().unwrap().to_string();
        assert!(err("[foo]\n").contains("There is no option group 'foo'"));
        assert!(err("[inject-error]\nonce=\"on\"\n").contains("Invalid parameter 'once=\"on\"'"));
        let no_event = parse_config("[inject-error]\nerrno = \"5\"\n").unwrap();
        let (k, o) = no_event.into_iter().next().unwrap();
        assert!(parse_rule(k, o, 0)
            .unwrap_err()
            .to_string()
            .contains("Missing event name"));
        let mut o = Options::new();
        o.set("event", "bogus");
        assert!(parse_rule("set-state", o, 0)
            .unwrap_err()
            .to_string()
            .contains("bogus"));
    }
}
