//! A virtio-blk device wired up without a vCPU: guest RAM, a raw image, the PCI transport, the
//! main-loop handler and a test driver. Shared by the virtio tests and the device benchmark.
#![allow(dead_code)]

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use block::{AioContext, BlockBackend, OpenFlags, Options};
use rqemu::bus::lock;
use rqemu::devices::virtio::block::{VirtioBlk, VirtioBlkConf, VirtioBlkHandler};
use rqemu::devices::virtio::pci::{VirtioPciConf, VirtioPciDevice};
use rqemu::devices::virtio::testdriver::{Buf, IrqCounter, TestDriver};
use rqemu::devices::virtio::SharedCore;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM size.
pub const RAM: usize = 16 << 20;
/// Where the ring lives (page aligned).
pub const RING: u64 = 0x10000;
/// Request headers (32 bytes per request slot: outhdr + discard/write-zeroes segment).
pub const HDRS: u64 = 0x100000;
/// Status bytes, one per request slot.
pub const STATUS: u64 = 0x180000;
/// Data buffers, 64 KiB per request slot.
pub const DATA: u64 = 0x200000;
/// Request slots.
pub const SLOTS: u64 = 128;

/// A temporary image file, removed on drop.
pub struct TempImage(pub PathBuf);

impl TempImage {
    /// A zero-filled image of `size` bytes.
    pub fn new(size: u64) -> TempImage {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("rqemu-virtio-{}-{n}.img", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        TempImage(path)
    }

    /// The image's bytes at `offset`.
    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; len];
        std::fs::File::open(&self.0)
            .unwrap()
            .read_exact_at(&mut buf, offset)
            .unwrap();
        buf
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Opens `path` as a raw image with discard passed down (discard=unmap).
pub fn open_raw(path: &std::path::Path) -> Rc<BlockBackend> {
    formats::register_all();
    let mut opts = Options::new();
    opts.set("driver", "raw");
    let flags = OpenFlags {
        unmap: true,
        ..OpenFlags::default()
    };
    let name = path.to_str().unwrap().to_string();
    AioContext::current()
        .run_until(BlockBackend::open(Some(&name), opts, flags))
        .expect("open image")
}

/// The wired-up device.
pub struct Rig {
    pub mem: Arc<GuestMemoryMmap>,
    pub dev: VirtioPciDevice,
    pub drv: TestDriver,
    pub irq: Arc<IrqCounter>,
    pub handler: Rc<VirtioBlkHandler>,
    pub blk: Rc<BlockBackend>,
    pub core: SharedCore,
    image: Option<TempImage>,
    _tasks: Vec<async_executor::Task<()>>,
}

impl Rig {
    /// A legacy-initialised device over a fresh `size`-byte image, accepting `features`.
    pub fn new(size: u64, features: u32) -> Rig {
        Rig::with(
            VirtioBlkConf::default(),
            VirtioPciConf::default(),
            size,
            Some(features),
        )
    }

    /// A device with the given properties; `features` = None leaves it uninitialised.
    pub fn with(conf: VirtioBlkConf, pci: VirtioPciConf, size: u64, features: Option<u32>) -> Rig {
        let image = TempImage::new(size);
        let blk = open_raw(&image.0);
        Rig::build(conf, pci, blk, Some(image), features)
    }

    /// A legacy-initialised device over an already opened backend.
    pub fn with_backend(blk: Rc<BlockBackend>, image: TempImage) -> Rig {
        Rig::build(
            VirtioBlkConf::default(),
            VirtioPciConf::default(),
            blk,
            Some(image),
            Some(u32::MAX),
        )
    }

    /// A device over a backend whose image the caller owns.
    pub fn with_backend_conf(
        conf: VirtioBlkConf,
        pci: VirtioPciConf,
        blk: Rc<BlockBackend>,
        features: u32,
    ) -> Rig {
        Rig::build(conf, pci, blk, None, Some(features))
    }

    /// The image file under the device.
    pub fn image(&self) -> &TempImage {
        self.image.as_ref().expect("rig owns its image")
    }

    fn build(
        conf: VirtioBlkConf,
        pci: VirtioPciConf,
        blk: Rc<BlockBackend>,
        image: Option<TempImage>,
        features: Option<u32>,
    ) -> Rig {
        let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).unwrap());
        let model = VirtioBlk::new(conf, blk.getlength() >> 9, blk.is_read_only());
        let shared = model.shared();
        let irq = Arc::new(IrqCounter::with_event().unwrap());
        let mut dev = VirtioPciDevice::new(Box::new(model), pci, irq.clone()).unwrap();
        let core = dev.core();
        let handler = VirtioBlkHandler::new(
            shared,
            core.clone(),
            mem.clone(),
            blk.clone(),
            dev.notifiers(),
        );
        let tasks = handler.start();
        let drv = TestDriver::new(mem.clone(), RING, 256);
        if let Some(f) = features {
            drv.legacy_init(&mut dev, f);
        }
        Rig {
            mem,
            dev,
            drv,
            irq,
            handler,
            blk,
            core,
            image,
            _tasks: tasks,
        }
    }

    /// Writes a request header in slot `i` and returns its address.
    pub fn header(&self, i: u64, req_type: u32, sector: u64) -> u64 {
        let at = HDRS + 32 * i;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&req_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(at)).unwrap();
        self.mem
            .write_obj(0xffu8, GuestAddress(STATUS + i))
            .unwrap();
        at
    }

    /// Writes a discard/write-zeroes segment after slot `i`'s header.
    pub fn segment(&self, i: u64, sector: u64, num: u32, flags: u32) -> u64 {
        let at = HDRS + 32 * i + 16;
        let mut s = [0u8; 16];
        s[0..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&num.to_le_bytes());
        s[12..16].copy_from_slice(&flags.to_le_bytes());
        self.mem.write_slice(&s, GuestAddress(at)).unwrap();
        at
    }

    /// Data buffer address of slot `i`.
    pub fn data(i: u64) -> u64 {
        DATA + 0x10000 * i
    }

    /// Posts the usual 3-part chain: header, data (`len` bytes, readable for writes),
    /// status. `len` 0 leaves out the data descriptor.
    pub fn request(
        &mut self,
        i: u64,
        req_type: u32,
        sector: u64,
        len: u32,
        data_writable: bool,
    ) -> u16 {
        let data = Buf {
            addr: Rig::data(i),
            len,
            writable: data_writable,
        };
        self.request_with(i, req_type, sector, data)
    }

    /// Posts a 3-part chain with slot `i`'s header and status around the given data buffer
    /// (length 0: no data descriptor).
    pub fn request_with(&mut self, i: u64, req_type: u32, sector: u64, data: Buf) -> u16 {
        let hdr = self.header(i, req_type, sector);
        let len = data.len;
        let status = Buf::w(STATUS + i, 1);
        let bufs = [Buf::r(hdr, 16), data, status];
        let chain = if len > 0 {
            &bufs[..]
        } else {
            &[bufs[0], status][..]
        };
        self.drv.add_chain(chain).expect("ring has room")
    }

    /// The status byte of slot `i` (0xff: not written).
    pub fn status(&self, i: u64) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS + i)).unwrap()
    }

    /// Fills slot `i`'s data buffer.
    pub fn fill(&self, i: u64, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, GuestAddress(Rig::data(i)))
            .unwrap();
    }

    /// Slot `i`'s data buffer.
    pub fn read_data(&self, i: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem
            .read_slice(&mut v, GuestAddress(Rig::data(i)))
            .unwrap();
        v
    }

    /// Kicks the queue and runs the loop until `n` used elements came back.
    pub fn run(&mut self, n: usize) -> Vec<(u32, u32)> {
        self.drv.kick(&mut self.dev);
        let drv = &mut self.drv;
        AioContext::current().run_until(async move {
            let start = Instant::now();
            let mut used = Vec::new();
            while used.len() < n {
                while let Some(u) = drv.pop_used() {
                    used.push(u);
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "timed out, {} of {n} used",
                    used.len()
                );
                block::aio::co_sleep(Duration::from_micros(200)).await;
            }
            used
        })
    }

    /// Kicks and lets the loop run for a while; returns what came back.
    pub fn run_idle(&mut self) -> Vec<(u32, u32)> {
        self.drv.kick(&mut self.dev);
        AioContext::current().run_until(block::aio::co_sleep(Duration::from_millis(30)));
        let mut used = Vec::new();
        while let Some(u) = self.drv.pop_used() {
            used.push(u);
        }
        used
    }

    /// Writes bytes into guest memory.
    pub fn mem_write(&self, at: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
    }

    /// The device features as the legacy register shows them.
    pub fn features(&mut self) -> u32 {
        let mut f = [0u8; 4];
        self.dev.bar_read(0, 0, &mut f);
        u32::from_le_bytes(f)
    }

    /// Runs the loop until no request is in flight in the handler.
    pub fn drain(&mut self) {
        let handler = self.handler.clone();
        AioContext::current().run_until(async move {
            let start = Instant::now();
            while handler.in_flight() > 0 {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "requests never finished"
                );
                block::aio::co_sleep(Duration::from_micros(200)).await;
            }
        });
    }

    /// Whether the device marked itself broken.
    pub fn broken(&self) -> bool {
        lock(&self.core).broken
    }

    /// The device status register.
    pub fn device_status(&self) -> u8 {
        lock(&self.core).status
    }
}
