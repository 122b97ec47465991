//! Sizes with a binary unit suffix, "64k", "1.5M", "0x200" (QEMU's qemu_strtosz family in
//! util/cutils.c). Every tool argument and option that takes a byte count goes through
//! here, so that qemu-io, qemu-img and the block options all accept exactly what QEMU does.
//!
//! The grammar, as QEMU's implementation behaves: leading white space; then either a
//! decimal integer, optionally followed by a fraction (`1.5`, `1.`, `.5`), or `0x` and hex
//! digits; then an optional suffix B K M G T P E (any case, powers of 1024). Without a
//! suffix the caller's default unit applies. A fraction needs a unit bigger than a byte and
//! may not carry an exponent; hex takes neither a fraction nor a suffix. A negative number
//! is out of range, and so is anything that does not fit in 64 bits, unless more text
//! follows: trailing text of any kind makes the whole input invalid.

/// Why a size did not parse (qemu_strtosz's -EINVAL and -ERANGE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number, a suffix QEMU does not know, or text after it.
    Invalid,
    /// Negative, or too large for 64 bits.
    Range,
}

/// Parses a size whose default unit is bytes (qemu_strtosz).
pub fn strtosz(text: &str) -> Result<u64, SizeError> {
    strtosz_unit(text, 0)
}

/// Parses a size whose default unit, when no suffix is given, is `1 << default_shift`
/// bytes (qemu_strtosz_MiB passes 20).
pub fn strtosz_unit(text: &str, default_shift: u32) -> Result<u64, SizeError> {
    let s = text.trim_start_matches(is_c_space);
    let (value, rest) = match leading_uint(s) {
        Uint::Value(0, rest) if rest.starts_with(['x', 'X']) && is_plain_zero(s) => {
            return hex(&rest[1..], default_shift);
        }
        Uint::Value(int, rest) => match rest.strip_prefix('.') {
            Some(after_dot) => {
                let (frac, rest) = fraction(after_dot).ok_or(SizeError::Invalid)?;
                ((int, frac), rest)
            }
            None => ((int, 0), rest),
        },
        Uint::Range(rest) => {
            return Err(if rest.is_empty() {
                SizeError::Range
            } else {
                SizeError::Invalid
            });
        }
        // No integer part: only a fraction like ".5k" (or "+.5k") can still be a size.
        Uint::None => {
            let unsigned = s.strip_prefix('+').unwrap_or(s);
            let after_dot = unsigned.strip_prefix('.').ok_or(SizeError::Invalid)?;
            if !after_dot.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(SizeError::Invalid);
            }
            let (frac, rest) = fraction(after_dot).ok_or(SizeError::Invalid)?;
            ((0, frac), rest)
        }
    };
    let (shift, rest) = match rest.chars().next().and_then(suffix_shift) {
        Some(shift) => (shift, &rest[1..]),
        None => (default_shift, rest),
    };
    let scaled = scale(value.0, value.1, shift);
    if !rest.is_empty() {
        return Err(SizeError::Invalid);
    }
    scaled
}

/// C's isspace in the "C" locale.
fn is_c_space(c: char) -> bool {
    c == ' ' || ('\t'..='\r').contains(&c)
}

/// What strtoull-based parse_uint found at the start of a string.
enum Uint<'a> {
    /// A value and the text after its digits.
    Value(u64, &'a str),
    /// Digits that are negative or overflow, and the text after them.
    Range(&'a str),
    /// No digits at all.
    None,
}

/// An optional sign and decimal digits (parse_uint, base 10).
fn leading_uint(s: &str) -> Uint<'_> {
    let (negative, unsigned) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (digits, rest) = split_digits(unsigned, 10);
    if digits.is_empty() {
        return Uint::None;
    }
    match digits.parse::<u64>() {
        Ok(v) if !negative => Uint::Value(v, rest),
        _ => Uint::Range(rest),
    }
}

/// Whether the integer part is a single `0` followed by `x`, the only start of a hex number.
fn is_plain_zero(s: &str) -> bool {
    let unsigned = s.strip_prefix('+').unwrap_or(s);
    unsigned.starts_with("0x") || unsigned.starts_with("0X")
}

/// The digits after `0x`: no fraction and no suffix allowed (b and e are digits here).
fn hex(after_x: &str, default_shift: u32) -> Result<u64, SizeError> {
    let (digits, rest) = split_digits(after_x, 16);
    if digits.is_empty() || !rest.is_empty() {
        return Err(SizeError::Invalid);
    }
    let value = u64::from_str_radix(digits, 16).map_err(|_| SizeError::Range)?;
    value
        .checked_mul(1 << default_shift)
        .ok_or(SizeError::Range)
}

/// The digits after a decimal point, as a 0.64 fixed-point number, and the rest. No
/// digits at all is a fraction of zero ("1.k"); an exponent is refused (None).
fn fraction(after_dot: &str) -> Option<(u64, &str)> {
    let (digits, rest) = split_digits(after_dot, 10);
    if digits.is_empty() {
        return Some((0, after_dot));
    }
    if has_exponent(rest) {
        return None;
    }
    let value: f64 = format!("0.{digits}").parse().ok()?;
    // Like QEMU's (uint64_t)(fraction * 0x1p64); Rust's cast saturates near 1.0.
    Some(((value * 18_446_744_073_709_551_616.0) as u64, rest))
}

/// Whether strtod would take `rest` as an exponent: e or E, an optional sign, a digit.
fn has_exponent(rest: &str) -> bool {
    let Some(after_e) = rest.strip_prefix(['e', 'E']) else {
        return false;
    };
    let after_sign = after_e.strip_prefix(['+', '-']).unwrap_or(after_e);
    after_sign.starts_with(|c: char| c.is_ascii_digit())
}

/// Splits the leading digits of `s` in `radix` off the rest.
fn split_digits(s: &str, radix: u32) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_digit(radix)).unwrap_or(s.len());
    s.split_at(end)
}

/// The power of two a suffix letter stands for.
fn suffix_shift(c: char) -> Option<u32> {
    Some(match c.to_ascii_lowercase() {
        'b' => 0,
        'k' => 10,
        'm' => 20,
        'g' => 30,
        't' => 40,
        'p' => 50,
        'e' => 60,
        _ => return None,
    })
}

/// `int + frac / 2^64`, times `2^shift`, rounding half up as QEMU's 64.64 arithmetic does.
fn scale(int: u64, frac: u64, shift: u32) -> Result<u64, SizeError> {
    if shift == 0 {
        // A fraction needs a unit to scale it.
        return if frac == 0 {
            Ok(int)
        } else {
            Err(SizeError::Invalid)
        };
    }
    let frac_scaled = u128::from(frac) << shift;
    let value = (u128::from(int) << shift) + (frac_scaled >> 64) + ((frac_scaled >> 63) & 1);
    u64::try_from(value).map_err(|_| SizeError::Range)
}

#[cfg(test)]
mod tests {
    use super::*;
    use SizeError::{Invalid, Range};

    #[test]
    fn integers_suffixes_and_hex() {
        assert_eq!(strtosz("512"), Ok(512));
        assert_eq!(strtosz("4096b"), Ok(4096));
        assert_eq!(strtosz("1K"), Ok(1024));
        assert_eq!(strtosz(" +1k"), Ok(1024));
        assert_eq!(strtosz("010"), Ok(10));
        assert_eq!(strtosz("0x10b"), Ok(0x10b));
        assert_eq!(strtosz("+0X10"), Ok(16));
        assert_eq!(strtosz("15E"), Ok(15 << 60));
        assert_eq!(strtosz_unit("4", 20), Ok(4 << 20));
        assert_eq!(strtosz_unit("0x4", 20), Ok(4 << 20));
        assert_eq!(strtosz_unit("4k", 20), Ok(4096));
    }

    #[test]
    fn fractions() {
        assert_eq!(strtosz("1.5k"), Ok(1536));
        assert_eq!(strtosz(".5k"), Ok(512));
        assert_eq!(strtosz("+.5k"), Ok(512));
        assert_eq!(strtosz("1.k"), Ok(1024));
        assert_eq!(strtosz("1."), Ok(1));
        assert_eq!(strtosz("1.0"), Ok(1));
        assert_eq!(strtosz(".0"), Ok(0));
        assert_eq!(strtosz("0.5e"), Ok(1 << 59));
        assert_eq!(strtosz("1.9999999999999999999999k"), Ok(2048));
        assert_eq!(strtosz_unit("1.5", 20), Ok(3 << 19));
        for bad in [
            "1.5", ".5", "1.5b", "1.5e3k", "1.0e0", "1..5k", "1.-5k", ".k", ".",
        ] {
            assert_eq!(strtosz(bad), Err(Invalid), "{bad}");
        }
    }

    #[test]
    fn range_and_garbage() {
        assert_eq!(strtosz("16E"), Err(Range));
        assert_eq!(strtosz("-1"), Err(Range));
        assert_eq!(strtosz(" -0"), Err(Range));
        assert_eq!(strtosz("18446744073709551616"), Err(Range));
        assert_eq!(strtosz("0x10000000000000000"), Err(Range));
        for bad in [
            "",
            " ",
            "k",
            "1kb",
            "1k ",
            "1e3",
            "-1k",
            "-k",
            "+-1",
            "-.5k",
            "-0x10",
            "0x",
            "00x10",
            "0x1k",
            "0x1.5",
            "0x+10",
            "99999999999999999999k",
            "inf",
            "nan",
            "0b1",
        ] {
            assert_eq!(strtosz(bad), Err(Invalid), "{bad:?}");
        }
    }
}
