//! QMP events: broadcast to every negotiated monitor with the time they happened (QEMU's
//! monitor_qapi_event_emit in monitor/monitor.c and the generated qapi_event_send_*), and
//! the rate limit of the events that have one (monitor_qapi_event_queue_no_reenter).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use block::trace;
use serde_json::{json, Map, Value};

/// How often a rate-limited event is sent per key (monitor_qapi_event_conf: BLOCK_IO_ERROR
/// once a second per device, so a guest retrying a failing disk cannot flood the monitors).
const RATE: Duration = Duration::from_secs(1);

thread_local! {
    /// Rate-limited events inside their period, by (event, key): the latest one held back
    /// (MonitorQAPIEventState).
    static THROTTLED: RefCell<HashMap<(String, String), Option<Value>>> = RefCell::new(HashMap::new());
}

/// Sends event `name` with `data` (an object, or nothing) to every negotiated monitor.
pub fn emit(name: &str, data: Option<Value>) {
    send(&message(name, data));
}

/// The event as it goes out, stamped now.
fn message(name: &str, data: Option<Value>) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut msg = Map::new();
    msg.insert(
        "timestamp".into(),
        json!({"seconds": now.as_secs(), "microseconds": now.subsec_micros()}),
    );
    msg.insert("event".into(), Value::String(name.to_string()));
    if let Some(data) = data {
        msg.insert("data".into(), data);
    }
    Value::Object(msg)
}

fn send(msg: &Value) {
    trace!(
        monitor_protocol_event_emit,
        "event {} data {}",
        msg["event"].as_str().unwrap_or_default(),
        msg.get("data").unwrap_or(&Value::Null)
    );
    for session in super::negotiated_sessions() {
        session.send(msg);
    }
}

/// Sends event `name` under its rate limit, on the main loop: the first of a period for
/// `key` goes at once, later ones replace each other and the last is sent when the period
/// ends (keeping its own timestamp), which starts the next period.
pub fn emit_rate_limited(name: &str, key: &str, data: Value) {
    let msg = message(name, Some(data));
    let slot = (name.to_string(), key.to_string());
    let held = THROTTLED.with(|t| {
        let mut t = t.borrow_mut();
        match t.get_mut(&slot) {
            Some(latest) => *latest = Some(msg.clone()),
            None => drop(t.insert(slot.clone(), None)),
        }
        t.get(&slot).is_some_and(Option::is_some)
    });
    if held {
        return;
    }
    send(&msg);
    let period = async move {
        loop {
            block::aio::co_sleep(RATE).await;
            let next = THROTTLED.with(|t| {
                let mut t = t.borrow_mut();
                let latest = t.get_mut(&slot).and_then(Option::take);
                if latest.is_none() {
                    t.remove(&slot); // a quiet period: the next event goes at once
                }
                latest
            });
            match next {
                Some(msg) => send(&msg),
                None => break,
            }
        }
    };
    block::AioContext::current().spawn(period).detach();
}

/// QUORUM_REPORT_BAD and QUORUM_FAILURE from quorum nodes, under QEMU's rate limit of each
/// (monitor_qapi_event_conf): a bad child's reports per node name, failures per event.
pub fn quorum_event(event: &block::filters::quorum::report::QuorumEvent) {
    use block::filters::quorum::report::QuorumEvent;
    match event {
        QuorumEvent::ReportBad {
            op,
            error,
            node_name,
            sector_num,
            sectors_count,
        } => {
            let mut data = Map::new();
            data.insert("type".into(), json!(op.name()));
            if let Some(error) = error {
                data.insert("error".into(), json!(error));
            }
            data.insert("node-name".into(), json!(node_name));
            data.insert("sector-num".into(), json!(sector_num));
            data.insert("sectors-count".into(), json!(sectors_count));
            emit_rate_limited("QUORUM_REPORT_BAD", node_name, Value::Object(data));
        }
        QuorumEvent::Failure {
            reference,
            sector_num,
            sectors_count,
        } => emit_rate_limited(
            "QUORUM_FAILURE",
            "",
            json!({"reference": reference, "sector-num": sector_num, "sectors-count": sectors_count}),
        ),
    }
}
