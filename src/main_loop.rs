//! The main-loop thread: the block layer's AioContext, running beside the vCPU thread.
//!
//! QEMU's main loop (util/main-loop.c) runs in the main thread while vCPUs run in their own;
//! here the AioContext gets a thread of its own and the process's main thread only starts and
//! joins the others. Everything that touches the block graph (opening drives, request
//! coroutines, completions) runs on this thread. Other threads reach it only through its
//! [`AioContextHandle`]: `schedule_bh` with a `Send` closure, which runs here on the next
//! loop iteration. Disk devices will submit requests that way and get their completion back
//! as a bottom half that takes the device lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use block::aio::AioContextHandle;
use block::AioContext;
use event_listener::Event;

use crate::drives;
use crate::vm_config::DriveConfig;

/// A one-shot "stop now" signal the loop waits on.
#[derive(Default)]
struct Stop {
    requested: AtomicBool,
    event: Event,
}

impl Stop {
    async fn wait(&self) {
        loop {
            if self.requested.load(Ordering::SeqCst) {
                return;
            }
            let listener = self.event.listen();
            if self.requested.load(Ordering::SeqCst) {
                return;
            }
            listener.await;
        }
    }
}

/// The running main-loop thread.
pub struct MainLoop {
    handle: AioContextHandle,
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

impl MainLoop {
    /// Starts the thread, registers the image formats and opens every drive there; returns
    /// the first open error (QEMU's drive_new/blockdev_add at start-up).
    pub fn start(drives: Vec<DriveConfig>) -> Result<MainLoop, String> {
        let stop = Arc::new(Stop::default());
        let (tx, rx) = mpsc::channel();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("main-loop".into())
            .spawn(move || loop_thread(drives, thread_stop, tx))
            .map_err(|e| format!("cannot start the main loop thread: {e}"))?;
        let started = rx
            .recv()
            .map_err(|_| "the main loop thread died while starting".to_string())?;
        match started {
            Ok(handle) => Ok(MainLoop {
                handle,
                stop,
                thread: Some(thread),
            }),
            Err(e) => {
                let _ = thread.join();
                Err(e)
            }
        }
    }

    /// The handle other threads schedule bottom halves with.
    pub fn handle(&self) -> AioContextHandle {
        self.handle.clone()
    }

    /// Drains and closes every drive, then ends the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.requested.store(true, Ordering::SeqCst);
        self.stop.event.notify(usize::MAX);
        // Wake the loop in case it sleeps in epoll rather than on the stop event.
        self.handle.schedule_bh(|| {});
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MainLoop {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

type Started = Result<AioContextHandle, String>;

fn loop_thread(drives: Vec<DriveConfig>, stop: Arc<Stop>, started: mpsc::Sender<Started>) {
    formats::register_all();
    let ctx = AioContext::current();
    if let Err(e) = ctx.run_until(drives::open_all(&drives)) {
        let _ = started.send(Err(e));
        return;
    }
    let _ = started.send(Ok(ctx.handle()));
    ctx.run_until(async {
        stop.wait().await;
        drives::close_all().await;
    });
}
