//! The `nbd` protocol: a node whose bytes live in an NBD server's export (QEMU's
//! block/nbd.c).
//!
//! Opening connects to the server (`address` says where), runs the client's handshake
//! (`crate::nbd::client`) and starts the connection's reader (`connection`). Each request
//! then is one NBD command whose reply `reply` reads; the server's block-size constraints
//! become the node's limits, and its transmission flags decide which commands are sent.
//! With `reconnect-delay`, requests that find the connection lost wait that long for a new
//! one; with `open-timeout`, opening keeps trying that long.

pub mod address;
mod connection;
mod create;
mod reply;

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use self::address::{NbdLocation, ServerAddress};
use self::connection::Connection;
use self::reply::{receive, Expect};
use crate::aio::{co_sleep, AioContext};
use crate::coroutine::CoMutex;
use crate::driver::{
    BlockDriver, BlockLimits, BlockStatus, DriverClass, DriverInfo, PreallocMode, RequestFlags,
    StatusFlags,
};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::nbd::channel::Channel;
use crate::nbd::client::{ClientRequest, Handshake};
use crate::nbd::proto::*;
use crate::node::BlockDriverState;
use crate::objects::tls_creds::{lookup_tls_creds, Endpoint};
use crate::options::Options;

/// The `nbd` driver, found by `driver=nbd` and the `nbd:`/`nbd://` prefixes.
pub static NBD: DriverClass = nbd_class("nbd");
/// The same driver under the `nbd+tcp://` prefix.
pub static NBD_TCP: DriverClass = nbd_class("nbd+tcp");
/// The same driver under the `nbd+unix://` prefix.
pub static NBD_UNIX: DriverClass = nbd_class("nbd+unix");

const fn nbd_class(protocol: &'static str) -> DriverClass {
    DriverClass {
        format_name: "nbd",
        protocol_name: Some(protocol),
        is_format: false,
        probe: None,
        open: |bs, options| Box::pin(open(bs, options)),
        create: Some(|filename, options| Box::pin(create::create(filename, options))),
        create_options: create::CREATE_OPTIONS,
    }
}

/// An open NBD node (QEMU's BDRVNBDState).
pub struct NbdDriver {
    location: NbdLocation,
    request: ClientRequest,
    tls: Option<Arc<rustls::ClientConfig>>,
    conn: RefCell<Rc<Connection>>,
    /// Held while one request reconnects, so that the others wait for its connection.
    reconnecting: CoMutex<()>,
}

async fn open(bs: &BlockDriverState, options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let location = NbdLocation::from_options(options)?;
    let tls = match &location.tls_creds {
        Some(id) => Some(lookup_tls_creds(id, Endpoint::Client)?.client_config()?),
        None => None,
    };
    let context = location
        .x_dirty_bitmap
        .clone()
        .unwrap_or_else(|| "base:allocation".to_owned());
    let request = ClientRequest {
        export: location.export.clone().unwrap_or_default(),
        structured: true,
        extended: true,
        contexts: vec![context],
    };
    let deadline = Instant::now() + location.open_timeout;
    let conn = loop {
        match connect(&location, &request, tls.as_ref()).await {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => co_sleep(Duration::from_millis(200)).await,
        }
    };
    if location.x_dirty_bitmap.is_some() && conn.info.contexts.is_empty() {
        return Err(Error::invalid(format!(
            "requested x-dirty-bitmap {} not found",
            request.contexts[0]
        )));
    }
    if conn.info.flags & tflags::READ_ONLY != 0 && !bs.open_flags().read_only {
        conn.disconnect().await;
        return Err(Error::with_errno_message(
            libc::EACCES,
            "Could not open image",
        ));
    }
    bs.set_filename(location.filename());
    Ok(Box::new(NbdDriver {
        location,
        request,
        tls,
        conn: RefCell::new(conn),
        reconnecting: CoMutex::new(()),
    }))
}

/// Connects, negotiates and starts the connection's reader (nbd_co_do_establish_connection).
async fn connect(
    location: &NbdLocation,
    request: &ClientRequest,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Rc<Connection>> {
    let fd = connect_socket(&location.server).await?;
    let ch = Channel::new(fd)?;
    let handshake = Handshake::start(&ch).await?;
    if let Some(config) = tls {
        handshake
            .start_tls(config.clone(), &location.tls_name()?)
            .await?;
    }
    let info = handshake.go(request).await?;
    Ok(Connection::start(ch, info))
}

/// Opens the socket on the thread pool, so that a slow TCP connect does not stop the loop.
pub async fn connect_socket(server: &ServerAddress) -> Result<OwnedFd> {
    let target = server.clone();
    AioContext::current()
        .thread_pool()
        .submit(move || -> std::io::Result<OwnedFd> {
            match target {
                ServerAddress::Inet { host, port } => {
                    let port: u16 = port.parse().map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid port")
                    })?;
                    let s = std::net::TcpStream::connect((host.as_str(), port))?;
                    s.set_nodelay(true)?;
                    Ok(s.into())
                }
                ServerAddress::Unix { path } => {
                    Ok(std::os::unix::net::UnixStream::connect(path)?.into())
                }
            }
        })
        .await
        .map_err(|e| connect_error(server, &e))
}

/// QEMU's message for a failed connect (inet_connect_saddr, unix_connect_saddr).
fn connect_error(server: &ServerAddress, e: &std::io::Error) -> Error {
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    let what = match server {
        ServerAddress::Inet { host, port } => format!("{host}:{port}"),
        ServerAddress::Unix { path } => path.clone(),
    };
    let why = crate::error::strerror(errno);
    Error::new(errno, format!("Failed to connect to '{what}': {why}"))
}

impl NbdDriver {
    fn info_flags(&self) -> u16 {
        self.conn.borrow().info.flags
    }

    /// The live connection; a broken one is replaced when `reconnect-delay` allows.
    async fn connection(&self) -> Result<Rc<Connection>> {
        let conn = self.conn.borrow().clone();
        if !conn.is_broken() || self.location.reconnect_delay.is_zero() {
            return Ok(conn);
        }
        let _guard = self.reconnecting.lock().await;
        let deadline = Instant::now() + self.location.reconnect_delay;
        loop {
            let conn = self.conn.borrow().clone();
            if !conn.is_broken() {
                return Ok(conn);
            }
            match connect(&self.location, &self.request, self.tls.as_ref()).await {
                Ok(new) => {
                    *self.conn.borrow_mut() = new;
                }
                Err(_) if Instant::now() < deadline => co_sleep(Duration::from_millis(200)).await,
                Err(_) => return Err(Error::from_errno(libc::EIO)),
            }
        }
    }

    /// Sends one command and reads its reply (nbd_co_request); a request that lost its
    /// connection is sent once more on a new one when reconnecting is allowed.
    async fn request(&self, req: Request, payload: &[&[u8]], mut expect: Expect<'_>) -> Result<()> {
        let mut retried = false;
        loop {
            let conn = self.connection().await?;
            let r = match conn.send(req, payload).await {
                Ok(cookie) => receive(&conn, cookie, expect_again(&mut expect)).await,
                Err(e) => Err(e),
            };
            match r {
                Err(_)
                    if conn.is_broken() && !retried && !self.location.reconnect_delay.is_zero() =>
                {
                    retried = true;
                }
                r => return r,
            }
        }
    }

    /// Runs a command on `bytes` from `offset` in pieces the header's length field holds.
    async fn ranged(&self, kind: u16, flags: u16, offset: u64, bytes: u64) -> Result<()> {
        let max = self.max_command_len();
        let mut done = 0;
        while done < bytes {
            let len = (bytes - done).min(max);
            let req = command(kind, flags, offset + done, len);
            self.request(req, &[], Expect::Nothing).await?;
            done += len;
        }
        Ok(())
    }

    /// The longest length one command may carry: 32 bits, kept a multiple of the
    /// server's minimum block size, unless extended headers widened it.
    fn max_command_len(&self) -> u64 {
        let conn = self.conn.borrow();
        if conn.info.mode == Mode::Extended {
            return u64::MAX;
        }
        let min = conn.info.min_block.max(1) as u64;
        u32::MAX as u64 / min * min
    }
}

/// Lets a retried request hand the same expectation to its second reply.
fn expect_again<'a>(e: &'a mut Expect<'_>) -> Expect<'a> {
    match e {
        Expect::Nothing => Expect::Nothing,
        Expect::Read { offset, qiov } => Expect::Read {
            offset: *offset,
            qiov,
        },
        Expect::Status { id, len, out } => Expect::Status {
            id: *id,
            len: *len,
            out,
        },
    }
}

fn command(kind: u16, flags: u16, offset: u64, length: u64) -> Request {
    Request {
        flags,
        kind,
        cookie: 0,
        offset,
        length,
    }
}

#[async_trait(?Send)]
impl BlockDriver for NbdDriver {
    async fn co_preadv(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        _flags: RequestFlags,
    ) -> Result<()> {
        if qiov.is_empty() {
            return Ok(());
        }
        let req = command(cmd::READ, 0, offset, qiov.len() as u64);
        self.request(req, &[], Expect::Read { offset, qiov }).await
    }

    async fn co_pwritev(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        let mut f = 0;
        if flags.contains(RequestFlags::FUA) {
            f |= cflags::FUA;
        }
        // The payload goes out of the caller's buffer itself, with no copy.
        let req = command(cmd::WRITE, f, offset, qiov.len() as u64);
        self.request(req, &qiov.slices(), Expect::Nothing).await
    }

    async fn co_pwrite_zeroes(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        let server = self.info_flags();
        if server & tflags::SEND_WRITE_ZEROES == 0 {
            return Err(Error::from_errno(libc::ENOTSUP));
        }
        let mut f = 0;
        if flags.contains(RequestFlags::FUA) {
            f |= cflags::FUA;
        }
        if !flags.contains(RequestFlags::MAY_UNMAP) {
            f |= cflags::NO_HOLE;
        }
        if flags.contains(RequestFlags::NO_FALLBACK) {
            if server & tflags::SEND_FAST_ZERO == 0 {
                return Err(Error::from_errno(libc::ENOTSUP));
            }
            f |= cflags::FAST_ZERO;
        }
        self.ranged(cmd::WRITE_ZEROES, f, offset, bytes).await
    }

    async fn co_pdiscard(&self, _bs: &BlockDriverState, offset: u64, bytes: u64) -> Result<()> {
        if self.info_flags() & tflags::SEND_TRIM == 0 {
            return Ok(());
        }
        self.ranged(cmd::TRIM, 0, offset, bytes).await
    }

    async fn co_flush_to_disk(&self, _bs: &BlockDriverState) -> Result<()> {
        if self.info_flags() & tflags::SEND_FLUSH == 0 {
            return Ok(());
        }
        self.request(command(cmd::FLUSH, 0, 0, 0), &[], Expect::Nothing)
            .await
    }

    async fn co_block_status(
        &self,
        _bs: &BlockDriverState,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> Result<BlockStatus> {
        let id = self.conn.borrow().info.contexts.first().map(|c| c.0);
        let Some(id) = id else {
            // No metadata context: everything reads as data, as QEMU assumes.
            let mut s = BlockStatus::new(StatusFlags::DATA | StatusFlags::OFFSET_VALID, bytes);
            s.map = offset;
            return Ok(s);
        };
        let len = bytes.min(self.max_command_len());
        let req = command(cmd::BLOCK_STATUS, cflags::REQ_ONE, offset, len);
        let mut out = None;
        let expect = Expect::Status {
            id,
            len,
            out: &mut out,
        };
        self.request(req, &[], expect).await?;
        let mut extent = out.ok_or_else(|| Error::from_errno(libc::EIO))?;
        // An extent not a multiple of the server's own minimum block size breaks the
        // protocol, but qemu-nbd sends one for the tail of a file not a multiple of 512:
        // as QEMU, keep the aligned part, or report a lone partial block as all data.
        let min = self.conn.borrow().info.min_block as u64;
        if min > 1 && extent.length % min != 0 {
            if extent.length > min {
                extent.length -= extent.length % min;
            } else {
                extent.length = min;
                extent.flags = 0;
            }
        }
        let mut flags = StatusFlags::empty();
        if extent.flags & NBD_STATE_HOLE == 0 {
            flags |= StatusFlags::DATA;
        }
        if extent.flags & NBD_STATE_ZERO != 0 {
            flags |= StatusFlags::ZERO;
        }
        // A range that is neither data nor zero is not allocated here: it has no offset,
        // as `qemu-img map` shows a backing file's hole seen through qemu-nbd.
        if !flags.is_empty() {
            flags |= StatusFlags::OFFSET_VALID;
        }
        let mut s = BlockStatus::new(flags, extent.length);
        s.map = offset;
        Ok(s)
    }

    async fn co_truncate(
        &self,
        _bs: &BlockDriverState,
        offset: u64,
        exact: bool,
        _prealloc: PreallocMode,
    ) -> Result<()> {
        let size = self.conn.borrow().info.size;
        if offset == size || (!exact && offset < size) {
            return Ok(());
        }
        let msg = if offset > size {
            "Cannot grow NBD nodes"
        } else {
            "Cannot resize NBD nodes"
        };
        Err(Error::not_supported(msg))
    }

    async fn co_getlength(&self, _bs: &BlockDriverState) -> Result<u64> {
        Ok(self.conn.borrow().info.size)
    }

    async fn co_get_allocated_file_size(&self, _bs: &BlockDriverState) -> Result<Option<u64>> {
        Ok(None)
    }

    fn refresh_limits(&self, _bs: &BlockDriverState) -> BlockLimits {
        let info = &self.conn.borrow().info;
        let min = info.min_block.max(1);
        let max = match info.max_block {
            0 => NBD_MAX_BUFFER_SIZE,
            m => m.min(NBD_MAX_BUFFER_SIZE),
        };
        BlockLimits {
            request_alignment: min,
            max_transfer: (max / min * min) as u64,
            pwrite_zeroes_alignment: min,
            pdiscard_alignment: min,
            ..BlockLimits::default()
        }
    }

    /// NBD has no driver info, so `qemu-img info` shows no dirty flag (no bdrv_get_info).
    fn get_info(&self, _bs: &BlockDriverState) -> Result<DriverInfo> {
        Err(Error::from_errno(libc::ENOTSUP))
    }

    fn supported_write_flags(&self) -> RequestFlags {
        if self.info_flags() & tflags::SEND_FUA != 0 {
            RequestFlags::FUA
        } else {
            RequestFlags::empty()
        }
    }

    async fn close(&self, _bs: &BlockDriverState) -> Result<()> {
        let conn = self.conn.borrow().clone();
        conn.disconnect().await;
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
