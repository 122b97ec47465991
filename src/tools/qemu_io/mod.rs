//! qemu-io, the block layer exerciser: a command interpreter over one BlockBackend
//! (QEMU's qemu-io.c for the program and qemu-io-cmds.c for the commands).
//!
//! Commands come from `-c` arguments or, without any, from standard input with a
//! `qemu-io> ` prompt. Each command line is split into words, looked up in [`commands::COMMANDS`],
//! checked (an open file, the argument count, write permission) and run as a coroutine on the
//! thread's AioContext, so `aio_*` requests submitted by earlier commands keep progressing
//! while later ones run, as in QEMU's nested event loop. A command returns 0 or a negative
//! errno; the program exits with 1 if any command failed.
//!
//! Modules: [`invocation`] (the program's options and main loop), [`commands`] (the table and
//! dispatch), [`cmd_rw`], [`cmd_aio`], [`cmd_misc`], [`cmd_file`], [`cmd_reopen`],
//! [`cmd_break`] and [`cmd_absent`] (the commands), [`stdin`] (interactive input), and
//! [`parse`], [`report`], [`output`], [`help`] (their shared vocabulary).

pub mod cmd_absent;
pub mod cmd_aio;
pub mod cmd_break;
pub mod cmd_file;
pub mod cmd_misc;
pub mod cmd_reopen;
pub mod cmd_rw;
pub mod commands;
pub mod help;
pub mod invocation;
pub mod output;
pub mod parse;
pub mod report;
pub mod stdin;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use block::BlockBackend;

pub use invocation::main;

/// The interpreter's state: the open image, if any, and the program-wide settings.
#[derive(Default)]
pub struct QemuIo {
    blk: RefCell<Option<Rc<BlockBackend>>>,
    /// How the open image was opened, for `reopen`.
    request: RefCell<Option<cmd_file::OpenRequest>>,
    /// `--image-opts`: `open` takes its path operand as an option string.
    pub image_opts: bool,
    /// `-m`: offset I/O buffers from their natural alignment.
    pub misalign: bool,
    quit: Cell<bool>,
}

impl QemuIo {
    /// An interpreter over an image opened by someone else (a monitor's `qemu-io` command).
    pub fn for_backend(blk: Rc<BlockBackend>) -> QemuIo {
        let io = QemuIo::default();
        *io.blk.borrow_mut() = Some(blk);
        io
    }

    /// The open image. Dispatch has checked that one is open for commands that need it.
    pub fn blk(&self) -> Rc<BlockBackend> {
        self.blk
            .borrow()
            .clone()
            .expect("command needing an image ran without one")
    }

    /// Whether an image is open.
    pub fn has_blk(&self) -> bool {
        self.blk.borrow().is_some()
    }

    /// Installs a freshly opened image and the request it was opened with.
    pub fn set_blk(&self, blk: Rc<BlockBackend>, request: cmd_file::OpenRequest) {
        *self.blk.borrow_mut() = Some(blk);
        *self.request.borrow_mut() = Some(request);
    }

    /// The request the open image was opened with.
    pub fn request(&self) -> Option<cmd_file::OpenRequest> {
        self.request.borrow().clone()
    }

    /// Asks the command loop to stop after this command.
    pub fn request_quit(&self) {
        self.quit.set(true);
    }

    /// Whether `quit` was run.
    pub fn quitting(&self) -> bool {
        self.quit.get()
    }

    /// Drains and closes the open image, if any (blk_unref of qemu-io's reference).
    ///
    /// As in QEMU's bdrv_close, a failing final flush is not an error of the command or of
    /// the program (closing /dev/null fails fdatasync with EINVAL, for one); what a driver
    /// cannot write back it reports itself.
    pub async fn close_image(&self) {
        let blk = self.blk.borrow_mut().take();
        self.request.borrow_mut().take();
        if let Some(blk) = blk {
            let _ = blk.close().await;
        }
    }
}
