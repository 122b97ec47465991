//! The monitors: QMP (and the human monitor) served over chardevs, with the commands run on
//! the main loop (QEMU's monitor/monitor.c, monitor/qmp.c, monitor/hmp.c).
//!
//! Each monitor's connections are read on a thread of their own (QEMU reads them in its
//! I/O thread); every request is handed to the main-loop thread as a bottom half and runs
//! there as a coroutine, because commands touch the block graph, which belongs to that
//! thread's AioContext. The reader waits for the reply before it reads the next request,
//! so a monitor's commands run one at a time, in order, as QEMU's in-band commands do.
//! Replies and events are written from the main loop, in the order they happen.
//!
//! Modules: [`channel`] (the chardev connections), [`json_stream`] (cutting the input into
//! messages), [`events`] (broadcast with timestamps),
//! [`qmp`] (the protocol and the commands), [`hmp`] (the human monitor).

pub mod channel;
pub mod events;
pub mod hmp;
mod json_stream;
pub mod qmp;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use block::aio::AioContextHandle;
use block::trace;
use serde_json::Value;

use crate::bus::lock;
use crate::vm_config::{MonitorMode, VmConfig};
use channel::Connection;
use json_stream::{JsonStream, Piece};

/// One QMP client connection (QEMU's MonitorQMP while a client is connected).
pub struct Session {
    out: Mutex<Box<dyn Write + Send>>,
    /// `qmp_capabilities` has been run: commands are accepted and events are sent.
    negotiated: AtomicBool,
    pretty: bool,
}

impl Session {
    /// Writes one message and a newline (monitor_qmp_respond); a vanished client loses it.
    pub fn send(&self, msg: &Value) {
        let mut text = if self.pretty {
            crate::qjson::to_pretty(msg)
        } else {
            crate::qjson::to_compact(msg)
        };
        trace!(monitor_qmp_respond, "mon {:p} resp: {}", self, text);
        text.push('\n');
        let mut out = lock(&self.out);
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// Whether capabilities negotiation is complete.
    pub fn negotiated(&self) -> bool {
        self.negotiated.load(Ordering::SeqCst)
    }

    /// Completes capabilities negotiation (qmp_capabilities).
    pub fn set_negotiated(&self) {
        self.negotiated.store(true, Ordering::SeqCst);
    }
}

/// The connected QMP clients, which events go to.
static SESSIONS: Mutex<Vec<Arc<Session>>> = Mutex::new(Vec::new());

/// The sessions that have completed negotiation.
pub(crate) fn negotiated_sessions() -> Vec<Arc<Session>> {
    lock(&SESSIONS)
        .iter()
        .filter(|s| s.negotiated())
        .cloned()
        .collect()
}

/// Starts every monitor of the command line; commands will run on `main`.
pub fn start_all(cfg: &VmConfig, main: &AioContextHandle) -> Result<(), String> {
    crate::block_error::set_event_sender(crate::block_error::EventSender {
        emit: events::emit,
        emit_rate_limited: events::emit_rate_limited,
    });
    block::filters::quorum::report::set_event_sink(events::quorum_event);
    for (i, mon) in cfg.monitors.iter().enumerate() {
        let main = main.clone();
        match mon.mode {
            MonitorMode::Control { pretty } => {
                channel::start(&mon.backend, &format!("qmp{i}"), move |conn| {
                    serve_qmp(conn, pretty, &main)
                })?
            }
            MonitorMode::Readline => {
                channel::start(&mon.backend, &format!("hmp{i}"), move |conn| {
                    hmp::serve_readline(conn, &main)
                })?
            }
        }
    }
    Ok(())
}

/// Runs `job` on the main loop as a coroutine and waits until it has finished.
pub(crate) fn run_on_main_loop<F>(main: &AioContextHandle, job: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()> + 'static,
{
    let (done, finished) = mpsc::channel::<()>();
    main.schedule_bh(move || {
        block::AioContext::current()
            .spawn(async move {
                job().await;
                let _ = done.send(());
            })
            .detach();
    });
    // The loop ends without running it only at exit; then there is nothing to wait for.
    let _ = finished.recv();
}

/// Parses one message; QEMU's parser also takes 'single-quoted' strings.
fn parse_message(bytes: &[u8]) -> Result<Value, String> {
    let text = String::from_utf8_lossy(bytes);
    serde_json::from_str::<Value>(&text)
        .or_else(|_| serde_json::from_str(&block::options::single_quotes_to_double(&text)))
        .map_err(|e| format!("JSON parse error, {}", e.to_string().to_lowercase()))
}

/// Serves one QMP client: the greeting, then requests until the client goes away.
fn serve_qmp(mut conn: Connection, pretty: bool, main: &AioContextHandle) {
    let session = Arc::new(Session {
        out: Mutex::new(conn.output),
        negotiated: AtomicBool::new(false),
        pretty,
    });
    session.send(&qmp::greeting());
    lock(&SESSIONS).push(session.clone());
    let mut stream = JsonStream::default();
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.input.read(&mut buf) {
        if n == 0 {
            break;
        }
        for piece in stream.feed(&buf[..n]) {
            let request = match piece {
                Piece::Message(bytes) => {
                    trace!(
                        handle_qmp_command,
                        "mon {:p} req: {}",
                        Arc::as_ptr(&session),
                        String::from_utf8_lossy(&bytes)
                    );
                    parse_message(&bytes)
                }
                Piece::Garbage(desc) => Err(desc),
            };
            match request {
                Ok(request) => {
                    let session = session.clone();
                    run_on_main_loop(main, move || async move {
                        let reply = qmp::dispatch(&session, request).await;
                        session.send(&reply);
                    });
                }
                Err(desc) => {
                    trace!(monitor_qmp_err_in_band, "{}", desc);
                    session.send(&qmp::QmpError::generic(desc).to_response(None));
                }
            }
        }
    }
    lock(&SESSIONS).retain(|s| !Arc::ptr_eq(s, &session));
}
