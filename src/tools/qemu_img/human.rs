//! Human-readable output shared by the subcommands: sizes as QEMU's size_to_str prints them
//! ("64 KiB", "1.5 MiB", util/cutils.c), C's `%g` formatting they rest on, and the progress
//! bar of `-p` (util/qemu-progress.c).

use std::io::Write;

/// Formats like C's `printf("%.{precision}g", value)`.
pub fn format_g(value: f64, precision: usize) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let p = precision.max(1);
    // The exponent after rounding to `p` significant digits decides the style.
    let sci = format!("{:.*e}", p - 1, value);
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is a number");
    if exp < -4 || exp >= p as i32 {
        let mantissa = strip_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        let decimals = (p as i32 - 1 - exp).max(0) as usize;
        strip_zeros(&format!("{value:.decimals$}")).to_string()
    }
}

fn strip_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// A byte count with a binary unit and three significant digits (size_to_str).
pub fn size_to_str(val: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    // The unit is chosen on val * 1.024 so that e.g. 1000..1023 KiB print as 0.98 MiB.
    let scaled = val as f64 / (1000.0 / 1024.0);
    let exp = if scaled == 0.0 {
        0
    } else {
        // frexp's exponent: scaled = m * 2^e with m in [0.5, 1).
        scaled.log2().floor() as i32 + 1
    };
    let i = ((exp - 1) / 10).clamp(0, 6) as usize;
    let div = (1u64 << (i * 10)) as f64;
    format!("{} {}B", format_g(val as f64 / div, 3), SUFFIXES[i])
}

/// The `-p` progress bar: prints "    (NN.NN/100%)\r" when progress moved by at least
/// `min_skip` percent, and a newline at the end. Disabled, it prints nothing.
pub struct Progress {
    enabled: bool,
    current: f32,
    last_print: f32,
    min_skip: f32,
}

impl Progress {
    /// A progress bar (qemu_progress_init).
    pub fn new(enabled: bool, min_skip: f32) -> Progress {
        Progress {
            enabled,
            current: 0.0,
            last_print: 0.0,
            min_skip,
        }
    }

    /// Whether the bar is shown.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Sets the progress to `delta` percent when `max` is 0, or advances it by `delta`% of
    /// `max` percent otherwise (qemu_progress_print).
    pub fn print(&mut self, delta: f32, max: u32) {
        let mut current = if max == 0 {
            delta
        } else {
            self.current + delta / 100.0 * max as f32
        };
        if current > 100.0 {
            current = 100.0;
        }
        self.current = current;
        if current > self.last_print + self.min_skip
            || current < self.last_print - self.min_skip
            || current == 100.0
            || current == 0.0
        {
            self.last_print = current;
            if self.enabled {
                print!("    ({current:3.2}/100%)\r");
                let _ = std::io::stdout().flush();
            }
        }
    }

    /// Ends the bar with a newline (qemu_progress_end).
    pub fn end(&mut self) {
        if self.enabled {
            println!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_g_matches_c() {
        assert_eq!(format_g(64.0, 3), "64");
        assert_eq!(format_g(1.5, 3), "1.5");
        assert_eq!(format_g(0.9765625, 3), "0.977");
        assert_eq!(format_g(999.9, 3), "1e+03");
        assert_eq!(format_g(4.8828125, 3), "4.88");
        assert_eq!(format_g(100.0, 3), "100");
    }

    #[test]
    fn sizes_like_qemu() {
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(512), "512 B");
        assert_eq!(size_to_str(65536), "64 KiB");
        assert_eq!(size_to_str(66048), "64.5 KiB");
        assert_eq!(size_to_str(1 << 20), "1 MiB");
        assert_eq!(size_to_str(1000), "0.977 KiB");
        assert_eq!(size_to_str(5000 << 30), "4.88 TiB");
    }
}
