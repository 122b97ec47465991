//! Rate limiting of a job's copying (QEMU's include/qemu/ratelimit.h, used by blockjob.c).
//!
//! Time is cut into slices (100 ms for block jobs); each slice may dispatch `speed × slice`
//! bytes. A job reports what it copied; once a slice's quota is spent, the job sleeps until
//! the slice, stretched in proportion to the excess, has passed. A speed of 0 is unlimited.

use std::time::{Duration, Instant};

/// The slice block jobs account in (BLOCK_JOB_SLICE_TIME).
pub const SLICE: Duration = Duration::from_millis(100);

/// One rate limiter (QEMU's RateLimit).
#[derive(Clone, Debug)]
pub struct RateLimit {
    slice_start: Instant,
    slice_end: Instant,
    slice_quota: u64,
    slice: Duration,
    dispatched: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        let now = Instant::now();
        RateLimit {
            slice_start: now,
            slice_end: now,
            slice_quota: 0,
            slice: SLICE,
            dispatched: 0,
        }
    }
}

impl RateLimit {
    /// Sets the speed in bytes per second; 0 removes the limit (ratelimit_set_speed).
    pub fn set_speed(&mut self, bytes_per_sec: u64, slice: Duration) {
        self.slice = slice;
        self.slice_quota = if bytes_per_sec == 0 {
            0
        } else {
            ((bytes_per_sec as f64 * slice.as_secs_f64()) as u64).max(1)
        };
    }

    /// Accounts `n` more bytes and says how long to wait before the next request
    /// (ratelimit_calculate_delay); `n = 0` only asks.
    pub fn calculate_delay(&mut self, n: u64, now: Instant) -> Duration {
        if self.slice_quota == 0 {
            return Duration::ZERO;
        }
        if self.slice_end < now {
            // The previous (perhaps stretched) slice is over: start a fresh one.
            self.slice_start = now;
            self.slice_end = now + self.slice;
            self.dispatched = 0;
        }
        self.dispatched += n;
        if self.dispatched < self.slice_quota {
            return Duration::ZERO;
        }
        // Over quota: the slice lasts as many slices as were dispatched, then a new one starts.
        let slices = self.dispatched as f64 / self.slice_quota as f64;
        self.slice_end = self.slice_start + self.slice.mul_f64(slices);
        self.slice_end.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let mut r = RateLimit::default();
        assert_eq!(r.calculate_delay(1 << 30, Instant::now()), Duration::ZERO);
    }

    #[test]
    fn over_quota_waits_in_proportion() {
        let mut r = RateLimit::default();
        r.set_speed(1 << 20, SLICE); // 1 MiB/s: ~104857 bytes per 100 ms slice
        let now = Instant::now();
        assert_eq!(r.calculate_delay(50_000, now), Duration::ZERO);
        // 2 MiB in total is 20 slices' worth: about 2 s from the slice start.
        let d = r.calculate_delay((2 << 20) - 50_000, now);
        assert!(
            d > Duration::from_millis(1900) && d <= Duration::from_millis(2001),
            "{d:?}"
        );
        // Asking again within the stretched slice waits for the rest of it.
        assert!(r.calculate_delay(0, now + Duration::from_secs(1)) > Duration::from_millis(900));
    }
}
