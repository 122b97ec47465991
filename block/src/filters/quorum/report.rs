//! What a quorum node reports: a child that failed or was out-voted (QUORUM_REPORT_BAD) and
//! a read no version won (QUORUM_FAILURE), the QMP events QEMU's quorum_report_bad and
//! quorum_report_failure send.
//!
//! The block layer knows no monitor: the events go to the sink the program installs (the
//! system emulator sends them to its QMP monitors); without one they are dropped, as QEMU's
//! tools drop events no monitor listens to.

use std::sync::Mutex;

use crate::error::Error;
use crate::node::BlockDriverState;

/// The kind of request an event is about (QuorumOpType).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpType {
    /// A read.
    Read,
    /// A write or write-zeroes.
    Write,
    /// A flush.
    Flush,
}

impl OpType {
    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            OpType::Read => "read",
            OpType::Write => "write",
            OpType::Flush => "flush",
        }
    }
}

/// One event, with the fields QEMU's QAPI schema gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuorumEvent {
    /// QUORUM_REPORT_BAD: a child failed a request, or returned data the vote rejected.
    ReportBad {
        /// The request.
        op: OpType,
        /// strerror of the failure; None when the child was out-voted.
        error: Option<String>,
        /// The child's node name.
        node_name: String,
        /// The first 512-byte sector of the request.
        sector_num: u64,
        /// How many sectors it covers.
        sectors_count: u64,
    },
    /// QUORUM_FAILURE: no version of a read reached the threshold.
    Failure {
        /// The quorum node's name.
        reference: String,
        /// The first 512-byte sector of the read.
        sector_num: u64,
        /// How many sectors it covers.
        sectors_count: u64,
    },
}

/// Where events go; a quorum node may run its requests on any thread's loop.
static SINK: Mutex<Option<fn(&QuorumEvent)>> = Mutex::new(None);

/// Sends every quorum event to `sink` from now on.
pub fn set_event_sink(sink: fn(&QuorumEvent)) {
    *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
}

fn send(event: &QuorumEvent) {
    let sink = *SINK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(sink) = sink {
        sink(event);
    }
}

/// The sectors a byte range touches, as (first, count).
fn sectors(offset: u64, bytes: u64) -> (u64, u64) {
    let start = offset / 512;
    let end = offset.saturating_add(bytes).div_ceil(512);
    (start, end - start)
}

/// Reports `child` as bad for a request (quorum_report_bad): `error` when it failed, None
/// when it was out-voted.
pub(super) fn bad(
    op: OpType,
    offset: u64,
    bytes: u64,
    child: &BlockDriverState,
    error: Option<&Error>,
) {
    let (sector_num, sectors_count) = sectors(offset, bytes);
    let event = QuorumEvent::ReportBad {
        op,
        error: error.map(|e| crate::error::strerror(e.errno())),
        node_name: child.node_name().to_string(),
        sector_num,
        sectors_count,
    };
    send(&event);
}

/// Reports a read without a quorum on node `bs` (quorum_report_failure), named by its
/// device when it has one.
pub(super) fn failure(bs: &BlockDriverState, offset: u64, bytes: u64) {
    let (sector_num, sectors_count) = sectors(offset, bytes);
    let reference = crate::graph::find_node(bs.node_name()).map_or_else(
        || bs.node_name().to_string(),
        |node| crate::graph::device_or_node_name(&node),
    );
    let event = QuorumEvent::Failure {
        reference,
        sector_num,
        sectors_count,
    };
    send(&event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_sector_they_touch() {
        assert_eq!(sectors(0, 10 << 20), (0, 20480));
        assert_eq!(sectors(512, 1), (1, 1));
        assert_eq!(sectors(511, 2), (0, 2));
        assert_eq!(sectors(0, 0), (0, 0));
    }
}
