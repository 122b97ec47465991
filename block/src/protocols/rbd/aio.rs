//! librbd asynchronous requests as coroutine futures (QEMU's qemu_rbd_start_co,
//! qemu_rbd_completion_cb and qemu_rbd_finish_bh in block/rbd.c).
//!
//! librbd finishes a request on one of its own threads and calls back there. The callback
//! only records the result and schedules a bottom half on the request's AioContext; the
//! bottom half wakes the coroutine, which resumes on its home thread. So the main loop never
//! waits for librbd, and no coroutine ever runs on a librbd thread.

use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::cluster::Image;
use super::ffi::{CompletionT, RBD_WRITE_ZEROES_FLAG_THICK_PROVISION};
use crate::aio::{AioContext, AioContextHandle};
use crate::error::{error_report, strerror, Error, Result};
use crate::iov::IoVector;
use crate::trace;

/// Which librbd call a request is (QEMU's RBDAIOCmd, same numbers in its error reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RbdCmd {
    /// rbd_aio_readv.
    Read = 0,
    /// rbd_aio_writev.
    Write = 1,
    /// rbd_aio_discard.
    Discard = 2,
    /// rbd_aio_flush.
    Flush = 3,
    /// rbd_aio_write_zeroes.
    WriteZeroes = 4,
}

/// What the callback hands to the home thread.
struct Task {
    state: Mutex<TaskState>,
    ctx: AioContextHandle,
    /// The request's memory, kept alive until librbd is done with it even if the waiting
    /// coroutine went away.
    _qiov: Option<IoVector>,
}

#[derive(Default)]
struct TaskState {
    ret: Option<isize>,
    waker: Option<Waker>,
}

extern "C" fn completion_cb(c: CompletionT, arg: *mut c_void) {
    // SAFETY: `arg` is the Arc::into_raw of `submit`, given to exactly one completion that
    // calls back exactly once; the reference comes back here.
    let task = unsafe { Arc::from_raw(arg as *const Task) };
    let api = super::ffi::api().expect("a completion implies a loaded librbd");
    // SAFETY: `c` is the completion librbd is reporting; released once, here.
    let ret = unsafe {
        let ret = (api.rbd_aio_get_return_value)(c);
        (api.rbd_aio_release)(c);
        ret
    };
    task.state.lock().unwrap().ret = Some(ret);
    let ctx = task.ctx.clone();
    ctx.schedule_bh(move || {
        let waker = task.state.lock().unwrap().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    });
}

/// Waits for the task's result, registering the coroutine's waker.
struct Completion(Arc<Task>);

impl Future for Completion {
    type Output = isize;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<isize> {
        let mut state = self.0.state.lock().unwrap();
        match state.ret {
            Some(ret) => Poll::Ready(ret),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Starts one request and yields until librbd completes it (qemu_rbd_start_co). Short
/// reads are padded with zeroes; failures are reported as QEMU reports them.
pub async fn start_co(
    image: &Image,
    cmd: RbdCmd,
    offset: u64,
    bytes: u64,
    qiov: Option<&IoVector>,
    may_unmap: bool,
) -> Result<()> {
    let api = image.api();
    let task = Arc::new(Task {
        state: Mutex::new(TaskState::default()),
        ctx: AioContext::current().handle(),
        _qiov: qiov.cloned(),
    });
    let arg = Arc::into_raw(task.clone()) as *mut c_void;
    let mut c: CompletionT = std::ptr::null_mut();
    // SAFETY: the callback and its argument stay valid until it runs (it owns `arg`).
    let r = unsafe { (api.rbd_aio_create_completion)(arg, completion_cb, &mut c) };
    if r < 0 {
        // SAFETY: reclaims the reference the never-created completion would have owned.
        drop(unsafe { Arc::from_raw(arg as *const Task) });
        return Err(Error::from_errno(-r));
    }
    let iov = qiov.map(|q| q.iovecs()).unwrap_or_default();
    let img = image.raw();
    trace!(
        qemu_rbd_start_co,
        "cmd {} offset {offset} bytes {bytes}",
        cmd as i32
    );
    // SAFETY: live image and completion; the iovecs point into memory the task keeps alive
    // until the completion, and librbd copies the iovec array itself during the call.
    let r = unsafe {
        match cmd {
            RbdCmd::Read => (api.rbd_aio_readv)(img, iov.as_ptr(), iov.len() as i32, offset, c),
            RbdCmd::Write => (api.rbd_aio_writev)(img, iov.as_ptr(), iov.len() as i32, offset, c),
            RbdCmd::Discard => (api.rbd_aio_discard)(img, offset, bytes, c),
            RbdCmd::Flush => (api.rbd_aio_flush)(img, c),
            RbdCmd::WriteZeroes => {
                let zero_flags = if may_unmap {
                    0
                } else {
                    RBD_WRITE_ZEROES_FLAG_THICK_PROVISION
                };
                (api.rbd_aio_write_zeroes)(img, offset, bytes as usize, c, zero_flags, 0)
            }
        }
    };
    if r < 0 {
        error_report(&format!(
            "rbd request failed early: cmd {} offset {offset} bytes {bytes} flags 0 r {r} ({})",
            cmd as i32,
            strerror(-r)
        ));
        // SAFETY: the request was refused, so the callback will not run: release the
        // completion and the reference it held.
        unsafe {
            (api.rbd_aio_release)(c);
            drop(Arc::from_raw(arg as *const Task));
        }
        return Err(Error::from_errno(-r));
    }
    let ret = Completion(task).await;
    if ret < 0 {
        error_report(&format!(
            "rbd request failed: cmd {} offset {offset} bytes {bytes} flags 0 task.ret {ret} ({})",
            cmd as i32,
            strerror(-ret as i32)
        ));
        return Err(Error::from_errno(-ret as i32));
    }
    if let (RbdCmd::Read, Some(q)) = (cmd, qiov) {
        let done = ret as usize;
        if done < q.len() {
            q.fill(done, q.len() - done, 0);
        }
    }
    Ok(())
}
