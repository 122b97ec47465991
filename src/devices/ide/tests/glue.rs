//! The glue with a real AioContext loop thread and a raw image: PIO on the test thread (the
//! "vCPU"), requests and completions on the loop, interrupts through an IrqLine.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use block::aio::AioContextHandle;
use block::coroutine::CoQueue;
use block::{AioContext, BlockBackend, OpenFlags, Options};

use super::super::glue::{ChannelWiring, IdeBlockSubmitter, IrqLine};
use super::super::registry;
use super::*;

/// Records the line's level and counts rising edges.
#[derive(Default)]
struct TestIrq {
    state: Mutex<(bool, u32)>,
    changed: Condvar,
}

impl IrqLine for TestIrq {
    fn set_level(&self, level: bool) {
        let mut s = self.state.lock().unwrap();
        if level && !s.0 {
            s.1 += 1;
        }
        s.0 = level;
        self.changed.notify_all();
    }
}

impl TestIrq {
    /// Waits until `n` rising edges have been seen.
    fn wait_edges(&self, n: u32) {
        let s = self.state.lock().unwrap();
        let (s, timeout) = self
            .changed
            .wait_timeout_while(s, Duration::from_secs(10), |s| s.1 < n)
            .unwrap();
        assert!(!timeout.timed_out(), "IRQ {n} never came (seen {})", s.1);
    }
}

type StopSignal = (Rc<Cell<bool>>, Rc<CoQueue>);

thread_local! {
    static STOP: RefCell<Option<StopSignal>> = const { RefCell::new(None) };
}

/// A loop thread owning the image's BlockBackend as drive 1.
struct LoopThread {
    handle: AioContextHandle,
    join: std::thread::JoinHandle<()>,
}

impl LoopThread {
    fn start(path: String) -> LoopThread {
        let (tx, rx) = mpsc::channel();
        let join = std::thread::spawn(move || {
            formats::register_all();
            let ctx = AioContext::current();
            let opts = Options::parse_keyval(&format!("driver=raw,file.filename={path}"), None);
            let blk = ctx
                .run_until(BlockBackend::open(
                    None,
                    opts.unwrap(),
                    OpenFlags::default(),
                ))
                .unwrap();
            let config = DriveConfig::for_backend(&blk, 0);
            assert_eq!((config.info.sectors, config.read_only), (128, false));
            registry::register(1, blk);
            let (flag, queue) = (Rc::new(Cell::new(false)), Rc::new(CoQueue::new()));
            STOP.with(|s| *s.borrow_mut() = Some((flag.clone(), queue.clone())));
            tx.send(ctx.handle()).unwrap();
            ctx.run_until(async move { queue.wait_while(|| !flag.get()).await });
            let blk = registry::unregister(1).unwrap();
            ctx.run_until(blk.close()).unwrap();
        });
        LoopThread {
            handle: rx.recv().unwrap(),
            join,
        }
    }

    fn stop(self) {
        self.handle.schedule_bh(|| {
            STOP.with(|s| {
                let s = s.borrow();
                let (flag, queue) = s.as_ref().unwrap();
                flag.set(true);
                queue.restart_all();
            })
        });
        self.join.join().unwrap();
    }
}

#[test]
fn pio_requests_reach_a_raw_image_through_the_loop() {
    let file = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
    let image: Vec<u8> = (0..64 * 1024).map(|i| (i / 512) as u8).collect();
    std::fs::write(file.path(), &image).unwrap();
    let lt = LoopThread::start(file.path().to_str().unwrap().to_string());

    let mut slave = drive(128);
    slave.info.serial = "UNREGISTERED".into();
    let ch = AtaChannel::new(Some(drive(128)), Some(slave), 0x1F0, 0x3F6);
    let device = Arc::new(Mutex::new(ch));
    let irq = Arc::new(TestIrq::default());
    let wiring = ChannelWiring {
        drives: [Some(1), Some(2)],
        irq: irq.clone(),
    };
    let glue = IdeBlockSubmitter::new(lt.handle.clone(), device.clone(), vec![wiring]);
    // One port access as a vCPU thread makes it: under the lock, then the glue.
    let access = |f: &mut dyn FnMut(&mut AtaChannel) -> u8| -> u8 {
        let mut dev = device.lock().unwrap();
        let v = f(&mut dev);
        glue.after_access(&mut dev, 0);
        v
    };
    let taskfile = |lba: u8, count: u8, dev: u8| {
        for (reg, val) in [(2, count), (3, lba), (4, 0), (5, 0), (6, dev)] {
            access(&mut |c| {
                c.ioport_write(reg, val);
                0
            });
        }
    };
    let command = |c: u8| {
        access(&mut |ch| {
            ch.ioport_write(reg::STATUS_COMMAND, c);
            0
        })
    };
    let status = || access(&mut |ch| ch.ioport_read(reg::STATUS_COMMAND));
    let out = |data: &[u8]| {
        access(&mut |ch| {
            ch.data_write_buf(2, data);
            0
        })
    };

    // WRITE SECTORS x2 at LBA 3, FLUSH CACHE.
    taskfile(3, 2, 0xE0);
    command(cmd::WRITE);
    assert_eq!(status(), DRDY | DSC | DRQ);
    out(&[0xA1; 512]);
    irq.wait_edges(1);
    assert_eq!(status(), DRDY | DSC | DRQ);
    out(&[0xB2; 512]);
    irq.wait_edges(2);
    assert_eq!(status(), DRDY | DSC);
    command(cmd::FLUSH_CACHE);
    irq.wait_edges(3);
    assert_eq!(status(), DRDY | DSC);

    // READ MULTIPLE of LBA 2..6 in one block.
    taskfile(2, 4, 0xE0);
    command(cmd::READ_MULTIPLE);
    irq.wait_edges(4);
    assert_eq!(status(), DRDY | DSC | DRQ);
    let mut got = vec![0u8; 4 * 512];
    access(&mut |ch| {
        ch.data_read_buf(4, &mut got);
        0
    });
    assert_eq!(status(), DRDY | DSC);
    assert_eq!(got[..512], image[1024..1536]);
    assert!(got[512..1024].iter().all(|b| *b == 0xA1));
    assert!(got[1024..1536].iter().all(|b| *b == 0xB2));
    assert!(got[1536..].iter().all(|b| *b == 5));

    // A drive the loop does not know fails its request; the line still toggles.
    taskfile(0, 1, 0xF0);
    command(cmd::READ);
    irq.wait_edges(5);
    assert_eq!(status(), DRDY | ERR);
    assert_eq!(access(&mut |ch| ch.ioport_read(reg::ERROR_FEATURES)), UNC);
    assert!(!irq.state.lock().unwrap().0, "status read lowered the line");

    lt.stop();
    let on_disk = std::fs::read(file.path()).unwrap();
    assert!(on_disk[3 * 512..4 * 512].iter().all(|b| *b == 0xA1));
    assert!(on_disk[4 * 512..5 * 512].iter().all(|b| *b == 0xB2));
    assert_eq!(on_disk[5 * 512..], image[5 * 512..]);
}
