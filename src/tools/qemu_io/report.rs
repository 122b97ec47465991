//! How qemu-io prints sizes, durations, per-request statistics and hex dumps
//! (QEMU's cvtstr/timestr/print_report/dump_buffer in qemu-io-cmds.c and cutils.c).
//!
//! The texts are compared byte for byte by qemu-iotests (after `_filter_qemu_io` hides the
//! timing figures), so the number formatting follows the C `printf` conversions exactly:
//! sizes of a KiB or more get three decimals, smaller ones six, and a ".000" fraction is cut.

use std::time::Duration;

use super::output::out;

const UNITS: [(&str, u32); 6] = [
    (" EiB", 60),
    (" PiB", 50),
    (" TiB", 40),
    (" GiB", 30),
    (" MiB", 20),
    (" KiB", 10),
];

/// C's `%.Nf` of a double, including its spelling of infinities and NaNs.
fn c_fixed(value: f64, decimals: usize) -> String {
    if value.is_nan() {
        // glibc prints the sign of the NaN that 0.0/0.0 produces on x86.
        return "-nan".to_string();
    }
    format!("{value:.decimals$}")
}

/// A byte count in binary units as qemu-io prints it: "512 bytes", "1 KiB", "1.500 MiB"
/// (cvtstr).
pub fn cvtstr(value: f64) -> String {
    let (mut text, suffix) = UNITS
        .iter()
        .find(|(_, shift)| value >= (1u64 << shift) as f64)
        .map(|(suffix, shift)| (c_fixed(value / (1u64 << shift) as f64, 3), *suffix))
        .unwrap_or_else(|| (c_fixed(value, 6), " bytes"));
    if let Some(cut) = text.find(".000") {
        text.truncate(cut);
    }
    text.push_str(suffix);
    text
}

/// A duration as qemu-io prints it (timestr): "00.12 sec" under a second, "H:MM:SS.ss" from
/// a second on, and always "H:MM:SS.ss" in the machine-parsable (`-C`) form.
pub fn timestr(t: Duration, verbose: bool) -> String {
    let secs = t.as_secs();
    let frac = f64::from(t.subsec_nanos()) / 1e9;
    if verbose || secs != 0 {
        format!(
            "{}:{:02}:{:05.2}",
            secs / 3600,
            (secs % 3600) / 60,
            (secs % 60) as f64 + frac
        )
    } else {
        format!("{frac:05.2} sec")
    }
}

fn per_second(value: f64, t: Duration) -> f64 {
    value / t.as_secs_f64()
}

/// One request's report: "read 512/512 bytes at offset 0" and the statistics line, or the
/// comma-separated `-C` form (print_report).
pub fn print_report(op: &str, t: Duration, offset: u64, count: u64, total: u64, machine: bool) {
    let ops = 1.0;
    let ts = timestr(t, machine);
    let rate = per_second(total as f64, t);
    if machine {
        out!(
            "{},1,{},{},{}\n",
            total,
            ts,
            c_fixed(rate, 3),
            c_fixed(per_second(ops, t), 3)
        );
    } else {
        out!("{op} {total}/{count} bytes at offset {offset}\n");
        out!(
            "{}, 1 ops; {} ({}/sec and {} ops/sec)\n",
            cvtstr(total as f64),
            ts,
            cvtstr(rate),
            c_fixed(per_second(ops, t), 4)
        );
    }
}

/// The `-v` hex dump: 16 bytes a line, offset, hex, then alphanumerics (dump_buffer).
pub fn hexdump(buf: &[u8], offset: u64) -> String {
    let mut text = String::new();
    for (i, line) in buf.chunks(16).enumerate() {
        text.push_str(&format!("{:08x}:  ", offset + 16 * i as u64));
        for b in line {
            text.push_str(&format!("{b:02x} "));
        }
        text.push(' ');
        text.extend(line.iter().map(|&b| {
            if b.is_ascii_alphanumeric() {
                b as char
            } else {
                '.'
            }
        }));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_trim_zero_fractions_like_cvtstr() {
        assert_eq!(cvtstr(512.0), "512 bytes");
        assert_eq!(cvtstr(0.0), "0 bytes");
        assert_eq!(cvtstr(606.971799), "606.971799 bytes");
        assert_eq!(cvtstr(1024.0), "1 KiB");
        assert_eq!(cvtstr(1536.0), "1.500 KiB");
        assert_eq!(cvtstr(1048576.0), "1 MiB");
        assert_eq!(cvtstr(5.0 * (1u64 << 40) as f64), "5 TiB");
        assert_eq!(cvtstr(f64::INFINITY), "inf EiB");
        // ".000" anywhere is cut, even before further digits (as strstr finds it).
        assert_eq!(cvtstr(1000.0004 * 1024.0), "1000 KiB");
    }

    #[test]
    fn durations_like_timestr() {
        assert_eq!(timestr(Duration::from_millis(0), false), "00.00 sec");
        assert_eq!(timestr(Duration::from_millis(120), false), "00.12 sec");
        assert_eq!(timestr(Duration::from_millis(0), true), "0:00:00.00");
        assert_eq!(
            timestr(Duration::from_millis(3_725_500), false),
            "1:02:05.50"
        );
        assert_eq!(timestr(Duration::from_millis(61_000), true), "0:01:01.00");
    }

    #[test]
    fn hexdump_pads_short_lines() {
        let data: Vec<u8> = (0..20u8).map(|i| b'a' + i).collect();
        let dump = hexdump(&data, 0x200);
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(
            lines[0],
            "00000200:  61 62 63 64 65 66 67 68 69 6a 6b 6c 6d 6e 6f 70  abcdefghijklmnop"
        );
        assert_eq!(lines[1], "00000210:  71 72 73 74  qrst");
        assert_eq!(hexdump(&[0, b' ', b'Z'], 0), "00000000:  00 20 5a  ..Z\n");
    }
}
