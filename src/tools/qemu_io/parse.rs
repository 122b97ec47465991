//! Parsing a qemu-io command line: splitting it into words, the options of one command, and
//! the numbers it takes (QEMU's breakline/cvtnum/parse_pattern in qemu-io*.c, qemu_strtosz and
//! parse_uint in util/cutils.c, and glibc's getopt for the per-command options).

use super::output::{err, out};

/// Splits a command line at single spaces, dropping empty words (breakline). Tabs are part
/// of words, as in qemu-io.
pub fn breakline(line: &str) -> Vec<String> {
    line.split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Why a number did not parse (the errno cvtnum returns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumError {
    /// -EINVAL: not a number, or junk after it.
    Invalid,
    /// -ERANGE: negative or too large.
    Range,
}

impl NumError {
    /// The negative errno a command returns for it.
    pub fn errno(self) -> i32 {
        match self {
            NumError::Invalid => -libc::EINVAL,
            NumError::Range => -libc::ERANGE,
        }
    }
}

/// A byte count with an optional binary suffix and fraction: "512", "4k", "1.5M", "0x200"
/// (qemu_strtosz, shared with the rest of rqemu in block::options).
pub fn strtosz(s: &str) -> Result<u64, NumError> {
    block::options::strtosz(s).map_err(|e| match e {
        block::options::SizeError::Invalid => NumError::Invalid,
        block::options::SizeError::Range => NumError::Range,
    })
}

/// A byte count or offset argument (cvtnum): at most INT64_MAX.
pub fn cvtnum(s: &str) -> Result<u64, NumError> {
    strtosz(s).and_then(|v| {
        if v > i64::MAX as u64 {
            Err(NumError::Range)
        } else {
            Ok(v)
        }
    })
}

/// Prints why `arg` is not a number (print_cvtnum_err).
pub fn print_cvtnum_err(e: NumError, arg: &str) {
    match e {
        NumError::Invalid => out!(
            "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {arg}\n"
        ),
        NumError::Range => out!("Parsing error: argument too large -- {arg}\n"),
    }
}

/// [`cvtnum`] that prints the error and turns it into the command's return value.
pub fn cvtnum_or_print(arg: &str) -> Result<u64, i32> {
    cvtnum(arg).map_err(|e| {
        print_cvtnum_err(e, arg);
        e.errno()
    })
}

/// Splits leading ASCII digits of `s` in `radix` off the rest.
fn split_digits(s: &str, radix: u32) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_digit(radix)).unwrap_or(s.len());
    s.split_at(end)
}

/// C's `strtol(s, &end, 0)`: a signed number in decimal, octal (leading 0) or hex (0x),
/// clamped on overflow, and the unparsed rest.
pub fn strtol(s: &str) -> (i64, &str) {
    let t = s.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits_from) = match t.as_bytes() {
        [b'0', b'x' | b'X', c, ..] if (*c as char).is_ascii_hexdigit() => (16, &t[2..]),
        [b'0', ..] => (8, t),
        _ => (10, t),
    };
    let (digits, rest) = split_digits(digits_from, radix);
    if digits.is_empty() {
        return (0, s);
    }
    let magnitude = i128::from_str_radix(digits, radix).unwrap_or(i128::MAX);
    let value = if negative { -magnitude } else { magnitude };
    (value.clamp(i64::MIN as i128, i64::MAX as i128) as i64, rest)
}

/// A `-P` pattern byte, 0..=255 in any strtol base (parse_pattern).
pub fn parse_pattern(arg: &str) -> Result<u8, i32> {
    match strtol(arg) {
        (v @ 0..=255, "") => Ok(v as u8),
        _ => {
            out!("{arg} is not a valid pattern byte\n");
            Err(-libc::EINVAL)
        }
    }
}

/// glibc's `getopt` over one command's words, with GNU argument permutation: options may
/// follow operands; `--` ends the options. Errors are printed as glibc prints them, prefixed
/// with the command name as typed.
pub struct Getopt<'a> {
    args: &'a [String],
    spec: &'static str,
    next: usize,
    cluster: Option<(usize, usize)>,
    operands: Vec<String>,
}

impl<'a> Getopt<'a> {
    /// Parses `args` (`args[0]` is the command name) against a getopt spec like "CP:qv".
    pub fn new(args: &'a [String], spec: &'static str) -> Getopt<'a> {
        Getopt {
            args,
            spec,
            next: 1,
            cluster: None,
            operands: Vec::new(),
        }
    }

    /// The next option and its argument; `Err` after printing glibc's message.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<(char, Option<String>), ()>> {
        let (arg_i, pos) = match self.cluster.take() {
            Some(c) => c,
            None => self.next_cluster()?,
        };
        let word = &self.args[arg_i];
        let c = word[pos..]
            .chars()
            .next()
            .expect("cluster position inside word");
        let after = pos + c.len_utf8();
        let Some(spec_at) = self.spec.find(c).filter(|_| c != ':') else {
            err!("{}: invalid option -- '{c}'\n", self.args[0]);
            return Some(Err(()));
        };
        if !self.spec[spec_at + c.len_utf8()..].starts_with(':') {
            if after < word.len() {
                self.cluster = Some((arg_i, after));
            }
            return Some(Ok((c, None)));
        }
        if after < word.len() {
            return Some(Ok((c, Some(word[after..].to_string()))));
        }
        match self.args.get(self.next) {
            Some(value) => {
                self.next += 1;
                Some(Ok((c, Some(value.clone()))))
            }
            None => {
                err!("{}: option requires an argument -- '{c}'\n", self.args[0]);
                Some(Err(()))
            }
        }
    }

    /// Finds the next word that holds options, setting operands aside.
    fn next_cluster(&mut self) -> Option<(usize, usize)> {
        while let Some(word) = self.args.get(self.next) {
            self.next += 1;
            if word == "--" {
                self.operands.extend(self.args[self.next..].iter().cloned());
                self.next = self.args.len();
                return None;
            }
            if word.len() > 1 && word.starts_with('-') {
                return Some((self.next - 1, 1));
            }
            self.operands.push(word.clone());
        }
        None
    }

    /// The operands, in order, once all options have been read.
    pub fn operands(mut self) -> Vec<String> {
        while self.next_cluster().is_some() {}
        self.operands
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakline_splits_on_spaces_only() {
        assert_eq!(breakline("  read  0\t1 "), vec!["read", "0\t1"]);
        assert!(breakline("").is_empty());
    }

    #[test]
    fn strtosz_matches_qemu() {
        assert_eq!(cvtnum("512"), Ok(512));
        assert_eq!(cvtnum("1k"), Ok(1024));
        assert_eq!(cvtnum("1.5k"), Ok(1536));
        assert_eq!(cvtnum(".5k"), Ok(512));
        assert_eq!(cvtnum("1.k"), Ok(1024));
        assert_eq!(cvtnum("0x200"), Ok(512));
        assert_eq!(cvtnum("4G"), Ok(4 << 30));
        assert_eq!(cvtnum("1.0"), Ok(1));
        assert_eq!(cvtnum("1.5"), Err(NumError::Invalid));
        assert_eq!(cvtnum("x"), Err(NumError::Invalid));
        assert_eq!(cvtnum("512x"), Err(NumError::Invalid));
        assert_eq!(cvtnum("1kk"), Err(NumError::Invalid));
        assert_eq!(cvtnum("0x10k"), Err(NumError::Invalid));
        assert_eq!(cvtnum("-1"), Err(NumError::Range));
        assert_eq!(cvtnum("99999999999999999999"), Err(NumError::Range));
        assert_eq!(cvtnum("8E"), Err(NumError::Range));
        assert_eq!(strtosz("15E"), Ok(15 << 60));
    }

    #[test]
    fn patterns_take_any_strtol_base() {
        assert_eq!(parse_pattern("0xcd"), Ok(0xcd));
        assert_eq!(parse_pattern("010"), Ok(8));
        assert_eq!(parse_pattern("255"), Ok(255));
        assert!(parse_pattern("-1").is_err());
        assert!(parse_pattern("300").is_err());
        assert!(parse_pattern("12m").is_err());
        assert_eq!(strtol("0x"), (0, "x"));
        assert_eq!(strtol("-12ab"), (-12, "ab"));
    }

    fn words(s: &str) -> Vec<String> {
        breakline(s)
    }

    #[test]
    fn getopt_permutes_and_clusters() {
        let args = words("read 0 -pP 0xa 512 -q");
        let mut g = Getopt::new(&args, "bCl:pP:qrs:v");
        assert_eq!(g.next(), Some(Ok(('p', None))));
        assert_eq!(g.next(), Some(Ok(('P', Some("0xa".into())))));
        assert_eq!(g.next(), Some(Ok(('q', None))));
        assert_eq!(g.next(), None);
        assert_eq!(g.operands(), vec!["0", "512"]);

        let args = words("write -P5 -- -1 2");
        let mut g = Getopt::new(&args, "P:");
        assert_eq!(g.next(), Some(Ok(('P', Some("5".into())))));
        assert_eq!(g.next(), None);
        assert_eq!(g.operands(), vec!["-1", "2"]);
    }

    #[test]
    fn getopt_reports_errors() {
        let args = words("read -1 512");
        assert_eq!(Getopt::new(&args, "P:").next(), Some(Err(())));
        let args = words("read 0 1 -P");
        assert_eq!(Getopt::new(&args, "P:").next(), Some(Err(())));
    }
}
