//! blkdebug over a file: error injection, states, and breakpoints that suspend a request.

use std::cell::Cell;
use std::rc::Rc;

use block::driver::PreallocMode;
use block::filters::blkdebug;
use block::{bdrv_open, AioContext, BlkdbgEvent, BlockDriverState, IoVector, OpenFlags, Options};

fn scratch() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(1 << 20).unwrap();
    f
}

fn open(filename: &str, mut options: Options) -> Rc<BlockDriverState> {
    options.set("driver", "blkdebug");
    AioContext::current()
        .run_until(bdrv_open(Some(filename), options, OpenFlags::default()))
        .unwrap()
}

fn read(bs: &BlockDriverState, offset: u64) -> Result<(), i32> {
    let buf = IoVector::alloc(512);
    AioContext::current()
        .run_until(bs.co_preadv(offset, &buf, Default::default()))
        .map_err(|e| e.errno())
}

#[test]
fn an_error_rule_fails_requests_after_its_event_and_once_only_once() {
    let img = scratch();
    let mut opts = Options::new();
    opts.set("inject-error.0.event", "read_aio");
    opts.set("inject-error.0.errno", "28");
    opts.set("inject-error.0.once", "on");
    opts.set("inject-error.0.sector", "1");
    let name = format!("blkdebug::{}", img.path().display());
    let bs = open(&name, opts);
    assert_eq!(bs.format_name(), "blkdebug");
    assert_eq!(read(&bs, 0), Ok(()), "no event raised yet");
    AioContext::current().run_until(bs.debug_event(BlkdbgEvent::ReadAio));
    assert_eq!(read(&bs, 0), Ok(()), "sector 1 is not in 0..512");
    assert_eq!(read(&bs, 512), Err(28));
    assert_eq!(read(&bs, 512), Ok(()), "once: the rule is gone");
}

#[test]
fn set_state_gates_rules_by_state() {
    let img = scratch();
    let mut opts = Options::new();
    opts.set("set-state.0.event", "write_aio");
    opts.set("set-state.0.new_state", "2");
    opts.set("inject-error.0.event", "read_aio");
    opts.set("inject-error.0.state", "2");
    let bs = open(&format!("blkdebug::{}", img.path().display()), opts);
    let ctx = AioContext::current();
    ctx.run_until(bs.debug_event(BlkdbgEvent::ReadAio));
    assert_eq!(
        read(&bs, 0),
        Ok(()),
        "state 1: the error rule does not apply"
    );
    ctx.run_until(bs.debug_event(BlkdbgEvent::WriteAio));
    ctx.run_until(bs.debug_event(BlkdbgEvent::ReadAio));
    assert_eq!(read(&bs, 0), Err(libc::EIO));
}

#[test]
fn a_breakpoint_suspends_the_request_until_resumed() {
    let img = scratch();
    let bs = open(
        &format!("blkdebug::{}", img.path().display()),
        Options::new(),
    );
    let ctx = AioContext::current();
    assert_eq!(
        blkdebug::debug_breakpoint(&bs, "bogus", "A")
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
    blkdebug::debug_breakpoint(&bs, "l2_load", "A").unwrap();
    let done = Rc::new(Cell::new(false));
    let (bs2, done2) = (bs.clone(), done.clone());
    block::coroutine::co_spawn(async move {
        bs2.debug_event(BlkdbgEvent::L2Load).await;
        done2.set(true);
    });
    ctx.run_until(async {
        blkdebug::debug_wait_suspended(&bs, "A").await.unwrap();
    });
    assert!(blkdebug::debug_is_suspended(&bs, "A"));
    assert!(!done.get());
    blkdebug::debug_resume(&bs, "A").unwrap();
    ctx.run_until(async {
        while !done.get() {
            futures_lite_yield().await;
        }
    });
    assert!(done.get());
    assert_eq!(
        blkdebug::debug_resume(&bs, "A").unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(
        blkdebug::debug_remove_breakpoint(&bs, "A")
            .unwrap_err()
            .errno(),
        libc::ENOENT,
        "a breakpoint fires once"
    );
}

/// Lets the main loop run other coroutines once.
async fn futures_lite_yield() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

#[test]
fn bad_filenames_and_config_files_are_refused() {
    let img = scratch();
    let ctx = AioContext::current();
    let err = ctx
        .run_until(bdrv_open(
            Some(&format!("blkdebug:{}", img.path().display())),
            Options::new(),
            OpenFlags::default(),
        ))
        .unwrap_err();
    assert!(err
        .to_string()
        .contains("requires both config file and image path"));
    let err = ctx
        .run_until(bdrv_open(
            Some(&format!(
                "blkdebug:/nonexistent.conf:{}",
                img.path().display()
            )),
            Options::new(),
            OpenFlags::default(),
        ))
        .unwrap_err();
    assert!(err
        .to_string()
        .contains("Could not read blkdebug config file"));
}

#[test]
fn a_filter_passes_length_resize_status_and_zero_init_to_its_child() {
    let img = scratch();
    let bs = open(
        &format!("blkdebug::{}", img.path().display()),
        Options::new(),
    );
    assert!(bs.drv().is_filter());
    let ctx = AioContext::current();
    assert_eq!(bs.getlength(), 1 << 20);
    ctx.run_until(bs.co_truncate(2 << 20, false, PreallocMode::Off))
        .unwrap();
    assert_eq!(
        img.as_file().metadata().unwrap().len(),
        2 << 20,
        "the file grew"
    );
    assert_eq!(ctx.run_until(bs.drv().co_getlength(&bs)).unwrap(), 2 << 20);
    let file = bs.file().unwrap();
    assert_eq!(bs.drv().has_zero_init(&bs), file.drv().has_zero_init(&file));
    let status = ctx
        .run_until(bs.drv().co_block_status(&bs, true, 4096, 512))
        .unwrap();
    assert_eq!((status.map, status.bytes), (4096, 512));
    assert!(
        Rc::ptr_eq(status.file.as_ref().unwrap(), &file),
        "asks the child"
    );
}
