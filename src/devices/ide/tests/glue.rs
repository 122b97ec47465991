//! The glue with a real AioContext loop thread and a raw image: PIO on the test thread (the
//! "vCPU"), requests and completions on the loop, interrupts through an IrqLine.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::super::glue::{ChannelWiring, IdeBlockSubmitter};
use super::*;
use crate::devices::IrqLine;
use crate::main_loop::MainLoop;
use crate::vm_config::{parse_args, Command};

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

/// The main loop with the image open as drive `d1` (`-drive if=none,id=d1`).
fn start_loop(path: &std::path::Path) -> MainLoop {
    let arg = format!("file={},format=raw,if=none,id=d1", path.display());
    let cfg = match parse_args(&["-drive".to_string(), arg]) {
        Ok(Command::Run(cfg)) => cfg,
        other => panic!("{other:?}"),
    };
    MainLoop::start(cfg.drives).unwrap()
}

#[test]
fn pio_requests_reach_a_raw_image_through_the_loop() {
    let file = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
    let image: Vec<u8> = (0..64 * 1024).map(|i| (i / 512) as u8).collect();
    std::fs::write(file.path(), &image).unwrap();
    let main = start_loop(file.path());
    let config = DriveConfig::query(&main.handle(), "d1", 0, DriveKind::Disk).unwrap();
    assert_eq!((config.info.sectors, config.read_only), (128, false));
    assert!(DriveConfig::query(&main.handle(), "d2", 1, DriveKind::Disk).is_err());

    let mut slave = drive(128);
    slave.info.serial = "UNREGISTERED".into();
    let ch = AtaChannel::new(Some(drive(128)), Some(slave), 0x1F0, 0x3F6);
    let device = Arc::new(Mutex::new(ch));
    let irq = Arc::new(TestIrq::default());
    let wiring = ChannelWiring {
        drives: [Some("d1".into()), Some("d2".into())],
        irq: irq.clone(),
    };
    let glue = IdeBlockSubmitter::new(&main.handle(), device.clone(), vec![wiring]).unwrap();
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

    main.shutdown();
    let on_disk = std::fs::read(file.path()).unwrap();
    assert!(on_disk[3 * 512..4 * 512].iter().all(|b| *b == 0xA1));
    assert!(on_disk[4 * 512..5 * 512].iter().all(|b| *b == 0xB2));
    assert_eq!(on_disk[5 * 512..], image[5 * 512..]);
}
