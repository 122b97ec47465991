//! QMP events: broadcast to every negotiated monitor with the time they happened (QEMU's
//! monitor_qapi_event_emit in monitor/monitor.c and the generated qapi_event_send_*).

use std::time::{SystemTime, UNIX_EPOCH};

use block::trace;
use serde_json::{json, Map, Value};

/// Sends event `name` with `data` (an object, or nothing) to every negotiated monitor.
pub fn emit(name: &str, data: Option<Value>) {
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
    let msg = Value::Object(msg);
    trace!(
        monitor_protocol_event_emit,
        "event {} data {}",
        name,
        msg.get("data").unwrap_or(&Value::Null)
    );
    for session in super::negotiated_sessions() {
        session.send(&msg);
    }
}
