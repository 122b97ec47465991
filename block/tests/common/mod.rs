//! A memory-backed protocol driver for tests: configurable limits, a log of the requests it
//! receives, and a gate that holds writes in flight so tests can build overlapping requests
//! deterministically (the role QEMU's blkdebug breakpoints play in qemu-iotests).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use async_trait::async_trait;
use block::coroutine::CoQueue;
use block::driver::{BlockDriver, BlockLimits, DriverClass, RequestFlags};
use block::{BlockDriverState, IoVector, Options, Result};

/// What the driver saw: ("r" | "w" | "z", offset, bytes).
pub type Log = Rc<RefCell<Vec<(&'static str, u64, u64)>>>;

thread_local! {
    /// The state of the most recently opened memory node, for the test to inspect.
    pub static LAST: RefCell<Option<Rc<MemState>>> = const { RefCell::new(None) };
}

/// Shared state of one memory node.
pub struct MemState {
    pub data: RefCell<Vec<u8>>,
    pub log: Log,
    pub gate_closed: Cell<bool>,
    pub gate: CoQueue,
    pub limits: BlockLimits,
    pub zeroes_supported: bool,
}

impl MemState {
    /// Lets held writes proceed.
    #[allow(dead_code)] // each test file uses a different part of this module
    pub fn open_gate(&self) {
        self.gate_closed.set(false);
        self.gate.restart_all();
    }
}

struct MemDriver(Rc<MemState>);

/// The test driver class, `driver=test-mem,size=N,align=A,max-transfer=M,zeroes=on,gate=on`.
pub static MEM: DriverClass = DriverClass {
    format_name: "test-mem",
    protocol_name: Some("test-mem"),
    is_format: false,
    probe: None,
    open: |_bs, options| Box::pin(open(options)),
    create: None,
    create_options: &[],
};

async fn open(options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let size = options.take_size("size")?.unwrap_or(1 << 20);
    let limits = BlockLimits {
        request_alignment: options.take_u64("align")?.unwrap_or(1) as u32,
        max_transfer: options.take_u64("max-transfer")?.unwrap_or(0),
        ..BlockLimits::default()
    };
    let state = Rc::new(MemState {
        data: RefCell::new((0..size).map(|i| (i % 251) as u8).collect()),
        log: Rc::default(),
        gate_closed: Cell::new(options.take_bool("gate")?.unwrap_or(false)),
        gate: CoQueue::new(),
        limits,
        zeroes_supported: options.take_bool("zeroes")?.unwrap_or(false),
    });
    options.take("filename");
    LAST.with(|l| *l.borrow_mut() = Some(state.clone()));
    Ok(Box::new(MemDriver(state)))
}

#[async_trait(?Send)]
impl BlockDriver for MemDriver {
    async fn co_preadv(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        self.0
            .log
            .borrow_mut()
            .push(("r", offset, qiov.len() as u64));
        // Yield once so that reads, like real I/O, let other coroutines run.
        futures_lite::future::yield_now().await;
        let data = self.0.data.borrow();
        let start = offset as usize;
        qiov.copy_from_slice(0, &data[start..start + qiov.len()]);
        Ok(())
    }

    async fn co_pwritev(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        self.0
            .log
            .borrow_mut()
            .push(("w", offset, qiov.len() as u64));
        let state = self.0.clone();
        state.gate.wait_while(|| state.gate_closed.get()).await;
        let mut data = self.0.data.borrow_mut();
        let end = offset as usize + qiov.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        qiov.copy_to_slice(0, &mut data[offset as usize..end]);
        Ok(())
    }

    async fn co_pwrite_zeroes(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        _flags: RequestFlags,
    ) -> Result<()> {
        if !self.0.zeroes_supported {
            return Err(block::Error::from_errno(libc::ENOTSUP));
        }
        self.0.log.borrow_mut().push(("z", offset, bytes));
        self.0.data.borrow_mut()[offset as usize..(offset + bytes) as usize].fill(0);
        Ok(())
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        Ok(self.0.data.borrow().len() as u64)
    }

    fn refresh_limits(&self, _bs: &BlockDriverState) -> BlockLimits {
        self.0.limits
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Opens a memory node with keyval options (`size=...,align=...`) and returns it with its state.
pub fn open_mem(opts: &str) -> (Rc<BlockDriverState>, Rc<MemState>) {
    block::registry::register(&MEM);
    let ctx = block::AioContext::current();
    let mut options = Options::parse_keyval(opts, None).unwrap();
    options.set("driver", "test-mem");
    let bs = ctx
        .run_until(block::bdrv_open(None, options, Default::default()))
        .unwrap();
    let state = LAST.with(|l| l.borrow().clone()).unwrap();
    (bs, state)
}

/// The pattern byte the memory node starts with at `offset`.
#[allow(dead_code)] // each test file uses a different part of this module
pub fn initial(offset: u64) -> u8 {
    (offset % 251) as u8
}
