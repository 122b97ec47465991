//! I/O throttling: leaky buckets that limit bytes and operations per second, shared by the
//! members of a throttle group (QEMU's util/throttle.c and block/throttle-groups.c).
//!
//! Each limit is a bucket with an average rate (`avg`, units per second), an optional
//! burst rate (`max`) that may be kept up for `burst_length` seconds, and a fill level. A
//! request may start when no bucket of its direction is fuller than its size; it then adds
//! its bytes (or one operation, or `size / iops-size` for large ones) to the buckets, which
//! leak at their average rate as time passes. Under qtest the buckets leak on the virtual
//! clock the test steps ([`clock`]), so a test controls exactly when requests pass.

pub mod clock;
pub mod group;

use crate::error::{Error, Result};
use crate::options::Options;

const NANOSECONDS_PER_SECOND: f64 = 1e9;
/// The largest limit QEMU accepts (THROTTLE_VALUE_MAX).
const THROTTLE_VALUE_MAX: u64 = 1_000_000_000_000_000;

/// The buckets, in QEMU's BucketType order.
const BUCKETS: [&str; 6] = [
    "bps-total",
    "bps-read",
    "bps-write",
    "iops-total",
    "iops-read",
    "iops-write",
];

/// One limit (LeakyBucket).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LeakyBucket {
    /// Average rate, units per second (0: no limit).
    pub avg: f64,
    /// Burst rate, units per second (0: bursts of a tenth of a second at `avg`).
    pub max: f64,
    /// Seconds a burst at `max` may last.
    pub burst_length: u64,
    level: f64,
    burst_level: f64,
}

impl LeakyBucket {
    fn leak(&mut self, delta_ns: i64) {
        let delta = delta_ns.max(0) as f64;
        self.level = (self.level - self.avg * delta / NANOSECONDS_PER_SECOND).max(0.0);
        if self.burst_length > 1 {
            self.burst_level =
                (self.burst_level - self.max * delta / NANOSECONDS_PER_SECOND).max(0.0);
        }
    }

    /// Nanoseconds to wait before the bucket lets a request through (throttle_compute_wait).
    fn compute_wait(&self) -> i64 {
        if self.avg == 0.0 {
            return 0;
        }
        let (bucket_size, burst_bucket_size) = if self.max == 0.0 {
            (self.avg / 10.0, 0.0)
        } else {
            (self.max * self.burst_length as f64, self.max / 10.0)
        };
        let extra = self.level - bucket_size;
        if extra > 0.0 {
            return (extra * NANOSECONDS_PER_SECOND / self.avg) as i64;
        }
        if self.burst_length > 1 {
            let extra = self.burst_level - burst_bucket_size;
            if extra > 0.0 {
                return (extra * NANOSECONDS_PER_SECOND / self.max) as i64;
            }
        }
        0
    }
}

/// A throttle group's limits and state (ThrottleConfig with its ThrottleState).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ThrottleConfig {
    /// The buckets: bps total/read/write, iops total/read/write.
    pub buckets: [LeakyBucket; 6],
    /// Bytes one operation counts for at most (iops-size; 0: every request is one).
    pub op_size: u64,
    /// When the buckets last leaked, in nanoseconds of the group's clock.
    previous_leak: i64,
}

impl ThrottleConfig {
    /// Reads the limits from `opts`: each bucket's `NAME`, `NAME-max`, `NAME-max-length`
    /// under `prefix` (`x-` on `-object`, `limits.` in object-add), and `iops-size`.
    pub fn from_options(opts: &mut Options, prefix: &str) -> Result<ThrottleConfig> {
        let mut cfg = ThrottleConfig::default();
        for (i, name) in BUCKETS.iter().enumerate() {
            let b = &mut cfg.buckets[i];
            b.avg = take_limit(opts, &format!("{prefix}{name}"))? as f64;
            b.max = take_limit(opts, &format!("{prefix}{name}-max"))? as f64;
            b.burst_length = opts
                .take_u64(&format!("{prefix}{name}-max-length"))?
                .unwrap_or(1);
        }
        cfg.op_size = take_limit(opts, &format!("{prefix}iops-size"))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Refuses the combinations QEMU refuses (throttle_is_valid).
    fn check(&self) -> Result<()> {
        let (total, rw) = (&self.buckets[..], [0, 3]);
        for t in rw {
            let total_set = total[t].avg > 0.0;
            if total_set && (total[t + 1].avg > 0.0 || total[t + 2].avg > 0.0) {
                return Err(Error::invalid(
                    "bps/iops/max total values and read/write values cannot be used at the \
                     same time",
                ));
            }
        }
        for b in &self.buckets {
            if b.max > 0.0 && b.avg == 0.0 {
                return Err(Error::invalid(
                    "bps_max/iops_max require corresponding bps/iops values",
                ));
            }
            if b.max > 0.0 && b.max < b.avg {
                return Err(Error::invalid(
                    "bps_max/iops_max cannot be lower than bps/iops",
                ));
            }
            if b.burst_length == 0 {
                return Err(Error::invalid("the burst length cannot be 0"));
            }
            if b.burst_length > 1 && b.max == 0.0 {
                return Err(Error::invalid("burst length set without burst rate"));
            }
        }
        Ok(())
    }

    /// Whether any limit is set.
    pub fn enabled(&self) -> bool {
        self.buckets.iter().any(|b| b.avg > 0.0)
    }

    /// The buckets a request in direction `is_write` fills: total, and read or write.
    fn directions(is_write: bool) -> [usize; 4] {
        if is_write {
            [0, 2, 3, 5]
        } else {
            [0, 1, 3, 4]
        }
    }

    /// Leaks the buckets up to `now` and says how long a request must still wait, in
    /// nanoseconds (throttle_schedule_timer without the timer).
    pub fn wait_ns(&mut self, now: i64, is_write: bool) -> i64 {
        let delta = now - self.previous_leak;
        self.previous_leak = now;
        for b in &mut self.buckets {
            b.leak(delta);
        }
        Self::directions(is_write)
            .iter()
            .map(|&i| self.buckets[i].compute_wait())
            .max()
            .unwrap_or(0)
    }

    /// Adds a request of `bytes` to its buckets (throttle_account).
    pub fn account(&mut self, is_write: bool, bytes: u64) {
        let units = if self.op_size > 0 && bytes > self.op_size {
            bytes as f64 / self.op_size as f64
        } else {
            1.0
        };
        for i in Self::directions(is_write) {
            let amount = if i < 3 { bytes as f64 } else { units };
            let b = &mut self.buckets[i];
            b.level += amount;
            if b.burst_length > 1 {
                b.burst_level += amount;
            }
        }
    }
}

fn take_limit(opts: &mut Options, key: &str) -> Result<u64> {
    let v = opts.take_u64(key)?.unwrap_or(0);
    if v > THROTTLE_VALUE_MAX {
        return Err(Error::invalid(format!(
            "{key} must be in the range [0, {THROTTLE_VALUE_MAX}]"
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_a_tenth_of_a_second_through_then_makes_requests_wait() {
        let mut cfg = ThrottleConfig::default();
        cfg.buckets[0].avg = 1024.0;
        cfg.buckets[0].burst_length = 1;
        assert_eq!(cfg.wait_ns(0, false), 0);
        cfg.account(false, 4096);
        // 4096 bytes in a 102.4-byte bucket: (4096 - 102.4) / 1024 seconds.
        let wait = cfg.wait_ns(0, true);
        assert!((3_899_000_000..3_901_000_000).contains(&wait), "{wait}");
        assert_eq!(cfg.wait_ns(wait, true), 0);
    }

    #[test]
    fn totals_and_directions_cannot_both_be_set() {
        let mut opts = Options::parse_keyval("x-bps-total=1,x-bps-read=2", None).unwrap();
        assert!(ThrottleConfig::from_options(&mut opts, "x-").is_err());
    }
}
