//! I/O accounting of a BlockBackend: operations, bytes, failures and time per request type,
//! as `query-blockstats` reports them (QEMU's block/accounting.c, BlockAcctStats).
//!
//! As in QEMU, the requests devices submit are accounted (the `aio_*` calls); tools and
//! jobs calling the `co_*` functions directly are not.

use std::cell::Cell;
use std::time::Instant;

/// The request types accounted (BlockAcctType).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcctType {
    /// Reads.
    Read = 0,
    /// Writes, zero writes included.
    Write = 1,
    /// Flushes.
    Flush = 2,
    /// Discards.
    Unmap = 3,
}

/// The counters of one request type.
#[derive(Default)]
struct Counters {
    bytes: Cell<u64>,
    ops: Cell<u64>,
    failed: Cell<u64>,
    total_time_ns: Cell<u64>,
}

/// A snapshot of one request type's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcctCounts {
    /// Bytes of the successful requests.
    pub bytes: u64,
    /// Successful requests.
    pub ops: u64,
    /// Failed requests.
    pub failed: u64,
    /// Time the successful requests took, in nanoseconds.
    pub total_time_ns: u64,
}

/// A backend's accounting (BlockAcctStats).
#[derive(Default)]
pub struct BlockAcctStats {
    by_type: [Counters; 4],
    /// When the last request finished, for idle_time_ns.
    last_done: Cell<Option<Instant>>,
}

/// One request being accounted (BlockAcctCookie).
pub struct AcctCookie {
    kind: AcctType,
    bytes: u64,
    start: Instant,
}

impl BlockAcctStats {
    /// Starts accounting a request of `bytes` (block_acct_start).
    pub fn start(kind: AcctType, bytes: u64) -> AcctCookie {
        AcctCookie {
            kind,
            bytes,
            start: Instant::now(),
        }
    }

    /// Ends it, successful or failed (block_acct_done / block_acct_failed).
    pub fn done(&self, cookie: AcctCookie, ok: bool) {
        let now = Instant::now();
        let c = &self.by_type[cookie.kind as usize];
        if ok {
            c.bytes.set(c.bytes.get() + cookie.bytes);
            c.ops.set(c.ops.get() + 1);
            let ns = now.duration_since(cookie.start).as_nanos() as u64;
            c.total_time_ns.set(c.total_time_ns.get() + ns);
        } else {
            c.failed.set(c.failed.get() + 1);
        }
        self.last_done.set(Some(now));
    }

    /// The counters of `kind`.
    pub fn counts(&self, kind: AcctType) -> AcctCounts {
        let c = &self.by_type[kind as usize];
        AcctCounts {
            bytes: c.bytes.get(),
            ops: c.ops.get(),
            failed: c.failed.get(),
            total_time_ns: c.total_time_ns.get(),
        }
    }

    /// Nanoseconds since the last request finished; None before the first.
    pub fn idle_time_ns(&self) -> Option<u64> {
        self.last_done.get().map(|t| t.elapsed().as_nanos() as u64)
    }
}
