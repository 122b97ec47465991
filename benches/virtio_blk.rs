//! Device benchmark without a vCPU: 4 KiB random reads at queue depth 32, through the
//! virtio-blk device (descriptor chains in guest memory, notify register, INTx + ISR, used
//! ring) against the bare block layer doing the same reads (BlockBackend::aio_preadv at depth
//! 32) and against `rqemu-img bench` (a child process, sequential 4 KiB reads at depth 32),
//! all on the same image, in the same run. Prints IOPS and CPU per request of each.
//!
//!     cargo bench --bench virtio_blk [-- SECONDS [IMAGE_MIB [AIO [PATH]]]]
//!
//! AIO is `threads` (default) or `io_uring`; PATH is `all` (default), or `bare`, `device` or
//! `img` to run one path alone (to profile it). The "guest" side of the device path (posting
//! chains, reading the ISR, popping used elements) runs on the main loop thread too; its
//! time is measured apart and taken out for the "device alone" figure.
//! Each path runs 9 rounds alternately; the best round of each is reported, since on a
//! shared machine other load only ever makes a round worse. The overheads are also given
//! as the median over rounds of each round's ratio (device / bare, measured back to back),
//! which host drift between rounds disturbs less than a ratio of two best rounds.

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
use rqemu::devices::virtio::testdriver::Buf;
use virtio_rig::{Rig, TempImage};
use vm_memory::{Bytes, GuestAddress};

/// The allocator the rqemu binaries use, so the paths cost here what they cost there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// What a device round measured: IOPS, and the seconds the simulated guest spent on the loop
/// thread (see [`device`]).
struct DeviceRound {
    iops: f64,
    driver_secs: f64,
    isr_kick_secs: f64,
    /// Used elements the driver found per interrupt, on average.
    per_interrupt: f64,
}

/// Where slot `slot` reads to: the guest's buffers are consecutive 4 KiB pages, laid out as
/// the bare path's buffers are. (The rig's own 64 KiB-strided slots would map every buffer to
/// the same few cache sets, a cost of the layout rather than of the device.)
fn data(slot: u64) -> u64 {
    virtio_rig::DATA + slot * BS
}

/// The device path: 32 chains in flight, the "driver" reposting on each interrupt.
///
/// The simulated guest shares the loop thread with the device, so its work is timed apart:
/// `driver_secs` is the test driver's own work (popping used elements, checking the data,
/// writing chains), `isr_kick_secs` the two register accesses a vCPU makes per interrupt
/// (the ISR read, and the notify write that KVM turns into an ioeventfd signal). Neither is
/// the device's work on the main loop; the CPU the device itself costs is what is left. The
/// guest takes the interrupt as a vCPU would (`IrqCounter::raised_after`): the device
/// still signals its irqfd, but nothing on the loop reads it, as KVM would in a VM.
/// Both are thread CPU time (four clock reads per interrupt, counted with the guest's work).
fn device(rig: &mut Rig, size: u64, secs: f64) -> DeviceRound {
    let mut offsets = Offsets::new(size);
    let mut slots = vec![(0u64, 0u64); 256];
    let post = |rig: &mut Rig, slots: &mut [(u64, u64)], slot: u64, offsets: &mut Offsets| {
        let offset = offsets.next();
        let head = rig.request_with(
            slot,
            VIRTIO_BLK_T_IN,
            offset >> 9,
            Buf::w(data(slot), BS as u32),
        );
        slots[usize::from(head)] = (slot, offset);
    };
    for slot in 0..DEPTH as u64 {
        post(rig, &mut slots, slot, &mut offsets);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut done = 0u64;
    let mut outstanding = DEPTH;
    let (mut driver, mut isr_kick) = (0f64, 0f64);
    let mut interrupts = 0u64;
    rig.drv.kick(&mut rig.dev);
    let irq = rig.irq.clone();
    let ctx = AioContext::current();
    ctx.run_until(async {
        let mut seen = irq.raised.load(std::sync::atomic::Ordering::SeqCst);
        while outstanding > 0 {
            // The interrupt as a vCPU takes it: the device's irqfd write is the device's
            // work, reading the eventfd would be KVM's.
            seen = irq.raised_after(seen).await;
            interrupts += 1;
            let t0 = thread_cpu_time();
            rig.dev.bar_read(0, 0x13, &mut [0]);
            let t1 = thread_cpu_time();
            let stop = Instant::now() >= deadline;
            while let Some((head, _len)) = rig.drv.pop_used() {
                let (slot, offset) = slots[head as usize];
                assert_eq!(rig.status(slot), VIRTIO_BLK_S_OK);
                let first: u64 = rig.mem.read_obj(GuestAddress(data(slot))).unwrap();
                assert_eq!(first, offset, "wrong data");
                done += 1;
                if stop {
                    outstanding -= 1;
                } else {
                    post(rig, &mut slots, slot, &mut offsets);
                }
            }
            // Like Linux's virtqueue_enable_cb: ask for an interrupt at the next used element.
            // (The driver still finds ~32 per interrupt: sharing the loop thread, it only runs
            // once the device has nothing left to do in this turn.)
            rig.drv.set_used_event(rig.drv.last_used());
            let t2 = thread_cpu_time();
            if !stop {
                rig.drv.kick(&mut rig.dev);
            }
            let t3 = thread_cpu_time();
            driver += t2 - t1;
            isr_kick += (t1 - t0) + (t3 - t2);
        }
    });
    DeviceRound {
        iops: done as f64 / start.elapsed().as_secs_f64(),
        driver_secs: driver,
        isr_kick_secs: isr_kick,
        per_interrupt: done as f64 / interrupts as f64,
    }
}

/// `rqemu-img bench` on the same image, as a child process: `count` reads of 4 KiB at depth
/// 32 (sequential, as qemu-img bench does). Returns IOPS from its own timing and the child's
/// CPU time in seconds (which includes opening the image, a fixed few milliseconds). `-U`,
/// because this process holds the image open for the other two paths.
fn img_bench(image: &str, aio: AioMode, count: u64) -> (f64, f64) {
    let before = children_cpu_time();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rqemu-img"))
        .args([
            "bench",
            "-f",
            "raw",
            "-c",
            &count.to_string(),
            "-d",
            &DEPTH.to_string(),
        ])
        .args(["-s", "4k", "-i", aio.name(), "-U", image])
        .output()
        .expect("run rqemu-img bench");
    let cpu = children_cpu_time() - before;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "rqemu-img bench failed: {stdout}{stderr}"
    );
    let secs: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Run completed in "))
        .and_then(|l| l.strip_suffix(" seconds."))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("unexpected rqemu-img bench output: {stdout}"));
    (count as f64 / secs, cpu)
}

/// CPU time of the whole process (loop thread and thread-pool workers), in seconds.
fn cpu_time() -> f64 {
    rusage(libc::RUSAGE_SELF)
}

/// CPU time of the children waited for, in seconds.
fn children_cpu_time() -> f64 {
    rusage(libc::RUSAGE_CHILDREN)
}

/// CPU time of the calling thread, in seconds: unlike wall time, not inflated when another
/// process preempts the thread in the middle of what is timed.
fn thread_cpu_time() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we pass; the clock id is always valid.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn rusage(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF/CHILDREN are always valid.
    let ru = unsafe {
        let mut ru = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(who, &mut ru);
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

/// The best round of one path: highest IOPS, least CPU per request (each on its own).
#[derive(Clone, Copy)]
struct Best {
    iops: f64,
    cpu: f64,
}

impl Best {
    fn new() -> Best {
        Best {
            iops: 0.0,
            cpu: f64::MAX,
        }
    }

    fn add(&mut self, iops: f64, cpu: f64) {
        self.iops = self.iops.max(iops);
        self.cpu = self.cpu.min(cpu);
    }
}

/// The paths a run measures: all three, or one alone (for profiling it with perf).
fn wanted(only: &str, path: &str) -> bool {
    only == "all" || only == path
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let mib: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let aio = AioMode::parse(args.get(2).map_or("threads", String::as_str)).unwrap();
    let only = args.get(3).map_or("all", String::as_str);
    assert!(
        ["all", "bare", "device", "img"].contains(&only),
        "the 4th argument is all, bare, device or img"
    );
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
    let image = img.0.to_str().unwrap().to_string();
    // Warm the page cache and both paths, then alternate rounds so drift hits all equally.
    let warm = bare(&blk, size, 0.3);
    device(&mut rig, size, 0.3);
    // rqemu-img bench runs a fixed count: about `secs` worth at the bare path's rate.
    let img_count = ((warm * secs) as u64).max(10_000);
    // Best of N: on a shared machine other load only ever slows a round down.
    let rounds = 9;
    let (mut b, mut d, mut i) = (Best::new(), Best::new(), Best::new());
    // Per round: (bare CPU, device CPU, device-alone CPU) per request.
    let mut paired = Vec::new();
    let mut bare_cpu = f64::NAN;
    let (mut dev_only, mut driver, mut isr_kick) = (Best::new(), f64::MAX, f64::MAX);
    let mut per_interrupt = 0f64;
    for _ in 0..rounds {
        if wanted(only, "bare") {
            let (iops, cpu) = measure(secs, || bare(&blk, size, secs));
            b.add(iops, cpu);
            bare_cpu = cpu;
        }
        if wanted(only, "device") {
            let mut round = None;
            let (iops, cpu) = measure(secs, || {
                let r = device(&mut rig, size, secs);
                let iops = r.iops;
                round = Some(r);
                iops
            });
            let r = round.unwrap();
            let per_req = |s: f64| s * 1e6 / (iops * secs);
            let guest = per_req(r.driver_secs) + per_req(r.isr_kick_secs);
            d.add(iops, cpu);
            dev_only.add(iops, cpu - guest);
            paired.push((bare_cpu, cpu, cpu - guest));
            driver = driver.min(per_req(r.driver_secs));
            isr_kick = isr_kick.min(per_req(r.isr_kick_secs));
            per_interrupt = per_interrupt.max(r.per_interrupt);
        }
        if wanted(only, "img") {
            let (iops, cpu) = img_bench(&image, aio, img_count);
            i.add(iops, cpu * 1e6 / img_count as f64);
        }
    }
    let guest = (driver, isr_kick, per_interrupt);
    let title = format!(
        "virtio-blk device benchmark: 4 KiB random reads, depth {DEPTH}, {mib} MiB raw image, \
         aio={}, best of {rounds} x {secs} s",
        aio.name()
    );
    report(&title, only, img_count, [b, i, d, dev_only], guest);
    if wanted(only, "all") {
        report_paired(&paired);
    }
    drop(img);
}

/// Prints the median and range over rounds of each round's CPU ratio, device / bare.
fn report_paired(paired: &[(f64, f64, f64)]) {
    let spread = |f: fn(&(f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = paired.iter().map(|r| (f(r) / r.0 - 1.0) * 100.0).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (with, with_lo, with_hi) = spread(|r| r.1);
    let (alone, alone_lo, alone_hi) = spread(|r| r.2);
    println!(
        "per-round CPU vs bare, median of {} rounds: device path {with:+.1}% \
         ({with_lo:+.1}% to {with_hi:+.1}%), device alone {alone:+.1}% \
         ({alone_lo:+.1}% to {alone_hi:+.1}%)",
        paired.len()
    );
}

/// Prints the best rounds of the bare block layer, rqemu-img bench, the device path and the
/// device alone, the simulated guest's share (driver, ISR + notify, completions per
/// interrupt), and the device's overheads.
fn report(title: &str, only: &str, img_count: u64, best: [Best; 4], guest: (f64, f64, f64)) {
    let [b, i, d, dev_only] = best;
    let (driver, isr_kick, per_interrupt) = guest;
    println!("{title}");
    let row = |name: &str, r: Best| {
        println!(
            "{name:<44}{:>9.0} IOPS  {:>6.2} us CPU/request",
            r.iops, r.cpu
        );
    };
    row("bare block layer (aio_preadv):", b);
    row(&format!("rqemu-img bench -c {img_count} (sequential):"), i);
    row("virtio-blk device path (with guest driver):", d);
    row("virtio-blk device alone (guest work removed):", dev_only);
    println!(
        "  simulated guest on the loop thread: driver {driver:.2} us/request, \
         ISR read + notify write {isr_kick:.2} us/request, \
         {per_interrupt:.1} completions per interrupt"
    );
    let pct = |x: f64, y: f64| (x / y - 1.0) * 100.0;
    if wanted(only, "all") {
        println!(
            "device path vs bare block layer: {:+.1}% time per request, {:+.1}% CPU per request \
             ({:+.1}% CPU for the device alone)",
            pct(b.iops, d.iops),
            pct(d.cpu, b.cpu),
            pct(dev_only.cpu, b.cpu)
        );
        println!(
            "device path vs rqemu-img bench:  {:+.1}% time per request, {:+.1}% CPU per request \
             ({:+.1}% CPU for the device alone)",
            pct(i.iops, d.iops),
            pct(d.cpu, i.cpu),
            pct(dev_only.cpu, i.cpu)
        );
    }
}
