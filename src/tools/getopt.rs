//! GNU getopt_long, as qemu-img and qemu-io parse their command lines.
//!
//! The behaviours scripts rely on: short options cluster (`-rU`), a short option's argument
//! may be attached (`-fraw`) or separate (`-f raw`), long options take `--opt=value` or
//! `--opt value`, options and operands may be mixed (operands are collected in order), `--`
//! ends option parsing, and errors use glibc's wording. A leading `+` in the short-option
//! string stops at the first operand (POSIX mode), as qemu-img's subcommand parsers do.

/// Whether an option takes an argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HasArg {
    /// `--flag`
    No,
    /// `--opt value` or `--opt=value`
    Required,
    /// `--opt=value` only
    Optional,
}

/// A long option: its name, whether it takes an argument, and the key reported for it
/// (usually the equivalent short option's character, or a distinct code).
#[derive(Clone, Copy, Debug)]
pub struct LongOpt {
    /// Name without the leading `--`.
    pub name: &'static str,
    /// Argument rule.
    pub has_arg: HasArg,
    /// Key reported in [`Opt::key`].
    pub key: char,
}

/// One parsed option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opt {
    /// The short option character or the long option's key.
    pub key: char,
    /// Its argument, if any.
    pub arg: Option<String>,
}

/// The result of parsing: options in order, then the operands.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    /// Options in command-line order.
    pub opts: Vec<Opt>,
    /// Non-option arguments in order.
    pub operands: Vec<String>,
}

/// Parses `args` (without the program name). Errors are glibc's messages without the
/// `prog: ` prefix, e.g. "invalid option -- 'z'".
pub fn getopt_long(args: &[String], short: &str, long: &[LongOpt]) -> Result<Parsed, String> {
    let (posix, short) = match short.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, short),
    };
    let mut parsed = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            parsed.operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let exact = long.iter().find(|o| o.name == name);
            let candidates: Vec<&LongOpt> =
                long.iter().filter(|o| o.name.starts_with(name)).collect();
            let opt = match (exact, candidates.len()) {
                (Some(o), _) => o,
                (None, 1) => candidates[0],
                (None, 0) => return Err(format!("unrecognized option '--{name}'")),
                (None, _) => return Err(format!("option '--{name}' is ambiguous")),
            };
            let value = match (opt.has_arg, inline) {
                (HasArg::No, Some(_)) => {
                    return Err(format!("option '--{}' doesn't allow an argument", opt.name))
                }
                (HasArg::No, None) => None,
                (_, Some(v)) => Some(v),
                (HasArg::Optional, None) => None,
                (HasArg::Required, None) => {
                    if i < args.len() {
                        i += 1;
                        Some(args[i - 1].clone())
                    } else {
                        return Err(format!("option '--{}' requires an argument", opt.name));
                    }
                }
            };
            parsed.opts.push(Opt {
                key: opt.key,
                arg: value,
            });
            continue;
        }
        if arg.len() > 1 && arg.starts_with('-') {
            let chars: Vec<char> = arg[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                j += 1;
                let Some(pos) = short.find(c).filter(|_| c != ':') else {
                    return Err(format!("invalid option -- '{c}'"));
                };
                let takes_arg = short[pos + c.len_utf8()..].starts_with(':');
                if !takes_arg {
                    parsed.opts.push(Opt { key: c, arg: None });
                    continue;
                }
                let rest: String = chars[j..].iter().collect();
                let value = if !rest.is_empty() {
                    rest
                } else if i < args.len() {
                    i += 1;
                    args[i - 1].clone()
                } else {
                    return Err(format!("option requires an argument -- '{c}'"));
                };
                parsed.opts.push(Opt {
                    key: c,
                    arg: Some(value),
                });
                break;
            }
            continue;
        }
        parsed.operands.push(arg.clone());
        if posix {
            parsed.operands.extend(args[i..].iter().cloned());
            break;
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    const LONG: &[LongOpt] = &[
        LongOpt {
            name: "format",
            has_arg: HasArg::Required,
            key: 'f',
        },
        LongOpt {
            name: "image-opts",
            has_arg: HasArg::No,
            key: '\u{100}',
        },
    ];

    #[test]
    fn clusters_attached_arguments_and_permutation() {
        let p = getopt_long(
            &args(&["-rfraw", "img", "-c", "read 0 512", "--image-opts"]),
            "rf:c:",
            LONG,
        )
        .unwrap();
        assert_eq!(
            p.opts[0],
            Opt {
                key: 'r',
                arg: None
            }
        );
        assert_eq!(
            p.opts[1],
            Opt {
                key: 'f',
                arg: Some("raw".into())
            }
        );
        assert_eq!(
            p.opts[2],
            Opt {
                key: 'c',
                arg: Some("read 0 512".into())
            }
        );
        assert_eq!(p.opts[3].key, '\u{100}');
        assert_eq!(p.operands, vec!["img"]);
    }

    #[test]
    fn long_options_with_values_and_prefixes() {
        let p = getopt_long(
            &args(&["--form=qcow2", "--format", "raw", "--", "-x"]),
            "f:",
            LONG,
        )
        .unwrap();
        assert_eq!(p.opts[0].arg.as_deref(), Some("qcow2"));
        assert_eq!(p.opts[1].arg.as_deref(), Some("raw"));
        assert_eq!(p.operands, vec!["-x"]);
    }

    #[test]
    fn glibc_error_messages() {
        assert_eq!(
            getopt_long(&args(&["-z"]), "f:", LONG).unwrap_err(),
            "invalid option -- 'z'"
        );
        assert_eq!(
            getopt_long(&args(&["-f"]), "f:", LONG).unwrap_err(),
            "option requires an argument -- 'f'"
        );
        assert_eq!(
            getopt_long(&args(&["--nope"]), "f:", LONG).unwrap_err(),
            "unrecognized option '--nope'"
        );
    }

    #[test]
    fn posix_mode_stops_at_the_first_operand() {
        let p = getopt_long(&args(&["-f", "raw", "img", "-q"]), "+f:q", LONG).unwrap();
        assert_eq!(p.operands, vec!["img", "-q"]);
    }
}
