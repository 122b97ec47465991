//! The main-loop thread: the block layer's AioContext, running beside the vCPU thread.
//!
//! QEMU's main loop (util/main-loop.c) runs in the main thread while vCPUs run in their own;
//! here the AioContext gets a thread of its own and the process's main thread only starts and
//! joins the others. Everything that touches the block graph (opening drives, request
//! coroutines, completions) runs on this thread. Other threads reach it only through its
//! [`AioContextHandle`]: `schedule_bh` with a `Send` closure, which runs here on the next
//! loop iteration. Disk devices (IDE, see `devices::ide::glue`) submit requests that way and
//! get their completion back as a bottom half that takes the device lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use block::aio::AioContextHandle;
use block::AioContext;
use event_listener::Event;

use crate::drives;
use crate::drives::DriveOptions;

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
    pub fn start(drives: Vec<DriveOptions>) -> Result<MainLoop, String> {
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

fn loop_thread(drives: Vec<DriveOptions>, stop: Arc<Stop>, started: mpsc::Sender<Started>) {
    formats::register_all();
    let ctx = AioContext::current();
    if let Err(e) = ctx.run_until(drives::open_all(&drives)) {
        let _ = started.send(Err(e));
        return;
    }
    let _ = started.send(Ok(ctx.handle()));
    ctx.run_until(async {
        stop.wait().await;
        crate::block_export::close_all();
        drives::close_all().await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_config::{parse_args, Command};

    fn drive_config(path: &std::path::Path) -> DriveOptions {
        let arg = format!("file={},format=raw,if=none,id=disk0", path.display());
        match parse_args(&["-drive".to_string(), arg]) {
            Ok(Command::Run(cfg)) => cfg.drives[0].clone(),
            other => panic!("{other:?}"),
        }
    }

    /// The path a disk device takes: from another thread, schedule a bottom half on the
    /// loop that finds the drive by id and submits an aio request; the completion runs on
    /// the loop as a bottom half and hands the data back.
    #[test]
    fn a_drive_opened_on_the_loop_serves_requests_submitted_from_another_thread() {
        let path = std::env::temp_dir().join(format!("rqemu-mainloop-{}.raw", std::process::id()));
        let mut data = vec![0u8; 65536];
        data[512..516].copy_from_slice(b"rqmu");
        std::fs::write(&path, &data).unwrap();
        let main = MainLoop::start(vec![drive_config(&path)]).unwrap();
        let (tx, rx) = mpsc::channel();
        main.handle().schedule_bh(move || {
            let blk = drives::lookup("disk0").expect("drive registered by id");
            let qiov = block::IoVector::alloc(512);
            let result = qiov.clone();
            blk.aio_preadv(
                512,
                qiov,
                block::RequestFlags::empty(),
                Box::new(move |r| tx.send(r.map(|()| result.to_vec())).unwrap()),
            );
        });
        let sector = rx.recv().unwrap().unwrap();
        assert_eq!(&sector[..4], b"rqmu");
        main.shutdown();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn open_errors_are_reported_and_the_thread_ends() {
        let err = MainLoop::start(vec![drive_config(std::path::Path::new("/nonexistent/x"))])
            .err()
            .unwrap();
        assert!(err.contains("Could not open '/nonexistent/x'"), "{err}");
    }
}
