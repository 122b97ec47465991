//! Device benchmark without a vCPU: 4 KiB random reads at queue depth 32, through the
//! virtio-blk device (descriptor chains in guest memory, notify register, INTx + ISR, used
//! ring) against the bare block layer doing the same reads (BlockBackend::aio_preadv at depth
//! 32) on the same image, in the same run. Prints IOPS of both and the device's overhead.
//!
//!     cargo bench --bench virtio_blk [-- SECONDS [IMAGE_MIB [AIO]]]
//!
//! AIO is `threads` (default) or `io_uring`. The "guest" side of the device path (posting
//! chains, reading the ISR, popping used elements) runs on the main loop thread too, so the
//! figure for the device includes the driver's work: an upper bound on the device's cost.
//! Each path runs 7 rounds alternately; the best round of each is reported, since on a
//! shared machine other load only ever makes a round worse.

#[path = "../tests/virtio_rig/mod.rs"]
mod virtio_rig;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use block::iov::IoVector;
use block::node::AioMode;
use block::{AioContext, BlockBackend, OpenFlags, Options, RequestFlags};
use rqemu::devices::virtio::block::{VirtioBlkConf, VirtioBlkHandler};
use rqemu::devices::virtio::pci::VirtioPciConf;
use rqemu::devices::virtio::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use virtio_rig::{Rig, TempImage};
use vm_memory::{Bytes, GuestAddress};

const DEPTH: usize = 32;
const BS: u64 = 4096;

/// A reproducible sequence of 4 KiB-aligned offsets.
struct Offsets {
    state: u64,
    blocks: u64,
}

impl Offsets {
    fn new(image_size: u64) -> Offsets {
        Offsets {
            state: 0x9e37_79b9_7f4a_7c15,
            blocks: image_size / BS,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % self.blocks) * BS
    }
}

/// The first 8 bytes the image holds at each 4 KiB block: its own offset.
fn fill_image(img: &TempImage, size: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&img.0)
        .unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    for base in (0..size).step_by(chunk.len()) {
        for (i, block) in chunk.chunks_mut(BS as usize).enumerate() {
            block[..8].copy_from_slice(&(base + i as u64 * BS).to_le_bytes());
        }
        f.write_all_at(&chunk, base).unwrap();
    }
}

fn open(img: &TempImage, aio: AioMode) -> Rc<BlockBackend> {
    formats::register_all();
    let mut opts = Options::new();
    opts.set("driver", "raw");
    let flags = OpenFlags {
        aio,
        ..OpenFlags::default()
    };
    let name = img.0.to_str().unwrap().to_string();
    AioContext::current()
        .run_until(BlockBackend::open(Some(&name), opts, flags))
        .unwrap()
}

/// The bare block layer: aio_preadv at depth 32, each completion submitting the next read.
fn bare(blk: &Rc<BlockBackend>, size: u64, secs: f64) -> f64 {
    struct State {
        blk: Rc<BlockBackend>,
        offsets: Cell<Offsets>,
        done: Cell<u64>,
        stop: Cell<bool>,
        outstanding: Cell<usize>,
    }
    fn submit(st: &Rc<State>, buf: IoVector) {
        let mut offs = st.offsets.replace(Offsets::new(BS));
        let offset = offs.next();
        st.offsets.set(offs);
        let me = st.clone();
        let b = buf.clone();
        st.blk.aio_preadv(
            offset,
            buf,
            RequestFlags::empty(),
            Box::new(move |r| {
                r.expect("read");
                let mut first = [0u8; 8];
                b.copy_to_slice(0, &mut first);
                assert_eq!(u64::from_le_bytes(first), offset, "wrong data");
                me.done.set(me.done.get() + 1);
                if me.stop.get() {
                    me.outstanding.set(me.outstanding.get() - 1);
                } else {
                    submit(&me, b);
                }
            }),
        );
    }
    let st = Rc::new(State {
        blk: blk.clone(),
        offsets: Cell::new(Offsets::new(size)),
        done: Cell::new(0),
        stop: Cell::new(false),
        outstanding: Cell::new(DEPTH),
    });
    let start = Instant::now();
    for _ in 0..DEPTH {
        submit(&st, IoVector::alloc(BS as usize));
    }
    AioContext::current().run_until(async {
        block::aio::co_sleep(Duration::from_secs_f64(secs)).await;
        st.stop.set(true);
        while st.outstanding.get() > 0 {
            block::aio::co_sleep(Duration::from_micros(100)).await;
        }
    });
    st.done.get() as f64 / start.elapsed().as_secs_f64()
}

/// The device path: 32 chains in flight, the "driver" reposting on each interrupt.
fn device(rig: &mut Rig, size: u64, secs: f64) -> f64 {
    let mut offsets = Offsets::new(size);
    let mut slots = vec![(0u64, 0u64); 256];
    let post = |rig: &mut Rig, slots: &mut [(u64, u64)], slot: u64, offsets: &mut Offsets| {
        let offset = offsets.next();
        let head = rig.request(slot, VIRTIO_BLK_T_IN, offset >> 9, BS as u32, true);
        slots[usize::from(head)] = (slot, offset);
    };
    for slot in 0..DEPTH as u64 {
        post(rig, &mut slots, slot, &mut offsets);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut done = 0u64;
    let mut outstanding = DEPTH;
    rig.drv.kick(&mut rig.dev);
    let irq = rig.irq.clone();
    let ctx = AioContext::current();
    ctx.run_until(async {
        let event = irq.event.as_ref().unwrap();
        while outstanding > 0 {
            event.wait().await.unwrap();
            rig.dev.bar_read(0, 0x13, &mut [0]);
            let stop = Instant::now() >= deadline;
            while let Some((head, _len)) = rig.drv.pop_used() {
                let (slot, offset) = slots[head as usize];
                assert_eq!(rig.status(slot), VIRTIO_BLK_S_OK);
                let first: u64 = rig.mem.read_obj(GuestAddress(Rig::data(slot))).unwrap();
                assert_eq!(first, offset, "wrong data");
                done += 1;
                if stop {
                    outstanding -= 1;
                } else {
                    post(rig, &mut slots, slot, &mut offsets);
                }
            }
            if !stop {
                rig.drv.kick(&mut rig.dev);
            }
        }
    });
    done as f64 / start.elapsed().as_secs_f64()
}

/// CPU time of the whole process (loop thread and thread-pool workers), in seconds.
fn cpu_time() -> f64 {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is always valid.
    let ru = unsafe {
        let mut ru = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Runs `f` (which returns IOPS and ran for `secs`), returning (IOPS, CPU us per request).
fn measure(secs: f64, f: impl FnOnce() -> f64) -> (f64, f64) {
    let cpu = cpu_time();
    let iops = f();
    (iops, (cpu_time() - cpu) * 1e6 / (iops * secs))
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let mib: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let aio = AioMode::parse(args.get(2).map_or("threads", String::as_str)).unwrap();
    let size = mib << 20;
    let img = TempImage::new(size);
    fill_image(&img, size);
    let blk = open(&img, aio);
    let mut rig = Rig::with_backend_conf(
        VirtioBlkConf::default(),
        VirtioPciConf::default(),
        blk.clone(),
        u32::MAX,
    );
    let _: &Rc<VirtioBlkHandler> = &rig.handler;
    // Warm the page cache and both paths, then alternate rounds so drift hits both equally.
    bare(&blk, size, 0.3);
    device(&mut rig, size, 0.3);
    // Best of N: on a shared machine other load only ever slows a round down.
    let rounds = 7;
    let (mut b, mut bc, mut d, mut dc) = (0f64, f64::MAX, 0f64, f64::MAX);
    for _ in 0..rounds {
        let (iops, cpu) = measure(secs, || bare(&blk, size, secs));
        (b, bc) = (b.max(iops), bc.min(cpu));
        let (iops, cpu) = measure(secs, || device(&mut rig, size, secs));
        (d, dc) = (d.max(iops), dc.min(cpu));
    }
    println!(
        "virtio-blk device benchmark: 4 KiB random reads, depth {DEPTH}, {mib} MiB raw image, \
         aio={}, best of {rounds} x {secs} s",
        aio.name()
    );
    println!("bare block layer (aio_preadv): {b:>9.0} IOPS  {bc:>6.2} us CPU/request");
    println!("virtio-blk device path:        {d:>9.0} IOPS  {dc:>6.2} us CPU/request");
    let pct = |x: f64, y: f64| (x / y - 1.0) * 100.0;
    println!(
        "device overhead: {:+.1}% time per request, {:+.1}% CPU per request",
        pct(b, d),
        pct(dc, bc)
    );
    drop(img);
}
