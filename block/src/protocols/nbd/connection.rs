//! One NBD connection in the transmission phase, shared by every request in flight on it
//! (the request/reply half of QEMU's block/nbd.c: nbd_co_send_request,
//! nbd_receive_replies, nbd_co_receive_one_chunk, nbd_co_request).
//!
//! A request takes one of `MAX_NBD_REQUESTS` slots (its cookie is the slot's index + 1),
//! sends its header and payload whole under the send lock, then waits. One reader
//! coroutine per connection reads reply headers; it hands each to the request whose
//! cookie it carries and then waits while that request reads the payload straight off the
//! socket into its own buffer, so that data is never copied through the reader. When the
//! request is done with the chunk, the reader goes on with the next header. A reply for
//! no request, or a socket error, breaks the connection: every waiting request fails.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::coroutine::{co_spawn, CoMutex, CoQueue};
use crate::error::{Error, Result};
use crate::nbd::channel::Channel;
use crate::nbd::client::ExportInfo;
use crate::nbd::proto::*;
use crate::trace;

/// Requests in flight on one connection (QEMU's MAX_NBD_REQUESTS).
pub const MAX_NBD_REQUESTS: usize = 16;

/// The header of one reply (or reply chunk) as the reader decoded it.
#[derive(Clone, Copy, Debug)]
pub enum ReplyHeader {
    /// A simple reply: an error number, and for a successful READ the data follows.
    Simple {
        /// NBD error, 0 on success.
        error: u32,
    },
    /// One chunk of a structured reply.
    Chunk(ChunkHeader),
}

#[derive(Default)]
struct Slot {
    in_use: bool,
    header: Option<ReplyHeader>,
}

/// A connected export and the requests in flight on it.
pub struct Connection {
    ch: Channel,
    /// What the handshake settled.
    pub info: ExportInfo,
    send_lock: CoMutex<()>,
    slots: RefCell<Vec<Slot>>,
    /// Requests waiting for a free slot: one is woken per slot freed.
    slot_free: CoQueue,
    /// Per slot, the request waiting for its reply header: the reader wakes just that one
    /// (QEMU wakes the request's own coroutine), not every request in flight.
    replies: Vec<CoQueue>,
    /// The reader, waiting for a request to finish with the chunk it was handed.
    reader_wake: CoQueue,
    /// Set once the connection is unusable; every request then fails with this errno.
    broken: Cell<Option<i32>>,
}

impl Connection {
    /// Takes over a channel that finished its handshake and starts its reader coroutine.
    pub fn start(ch: Channel, info: ExportInfo) -> Rc<Connection> {
        let conn = Rc::new(Connection {
            ch,
            info,
            send_lock: CoMutex::new(()),
            slots: RefCell::new((0..MAX_NBD_REQUESTS).map(|_| Slot::default()).collect()),
            slot_free: CoQueue::new(),
            replies: (0..MAX_NBD_REQUESTS).map(|_| CoQueue::new()).collect(),
            reader_wake: CoQueue::new(),
            broken: Cell::new(None),
        });
        let reader = conn.clone();
        co_spawn(async move { reader.reader().await });
        conn
    }

    /// Whether the connection broke (the server went away or misbehaved).
    pub fn is_broken(&self) -> bool {
        self.broken.get().is_some()
    }

    /// Sends a request with its payload (for WRITE) and returns its cookie; the caller then
    /// reads its reply with [`Connection::next_header`] and must end with [`Connection::finish`].
    pub async fn send(&self, mut req: Request, payload: &[&[u8]]) -> Result<u64> {
        self.slot_free
            .wait_while(|| !self.is_broken() && self.slots.borrow().iter().all(|s| s.in_use))
            .await;
        self.check()?;
        let index = {
            let mut slots = self.slots.borrow_mut();
            let i = slots.iter().position(|s| !s.in_use).unwrap();
            slots[i].in_use = true;
            i
        };
        req.cookie = index as u64 + 1;
        trace!(
            nbd_send_request,
            "Sending request to server: {{ .from = {}, .len = {}, .cookie = {}, .flags = 0x{:x}, .type = {} ({}) }}",
            req.offset,
            req.length,
            req.cookie,
            req.flags,
            req.kind,
            cmd_name(req.kind)
        );
        let extended = self.info.mode == Mode::Extended;
        let head = req.encode(extended);
        let mut parts = vec![head.as_slice()];
        parts.extend_from_slice(payload);
        let _guard = self.send_lock.lock().await;
        if let Err(e) = self.ch.write_all(&parts).await {
            self.break_connection(e.errno());
            self.finish(req.cookie);
            return Err(Error::from_errno(libc::EIO));
        }
        Ok(req.cookie)
    }

    /// Waits for the next reply header of request `cookie`. The socket then belongs to the
    /// caller, which must read the chunk's payload (or [`Connection::skip`] it) and then
    /// call [`Connection::chunk_done`].
    pub async fn next_header(&self, cookie: u64) -> Result<ReplyHeader> {
        let index = cookie as usize - 1;
        self.replies[index]
            .wait_while(|| !self.is_broken() && self.slots.borrow()[index].header.is_none())
            .await;
        if let Some(h) = self.slots.borrow()[index].header {
            return Ok(h);
        }
        Err(self.broken_error())
    }

    /// Reads a chunk's payload into `buf`.
    pub async fn read_payload(&self, buf: &mut [u8]) -> Result<()> {
        self.ch.read_exact(buf).await.map_err(|e| self.fail(e))
    }

    /// Throws away `len` bytes of payload the request does not want.
    pub async fn skip(&self, len: u64) -> Result<()> {
        self.ch.discard(len).await.map_err(|e| self.fail(e))
    }

    /// The request has consumed its chunk: the reader may read the next header.
    pub fn chunk_done(&self, cookie: u64) {
        self.slots.borrow_mut()[cookie as usize - 1].header = None;
        self.reader_wake.restart_all();
    }

    /// The request is over; its slot is free again.
    pub fn finish(&self, cookie: u64) {
        let mut slots = self.slots.borrow_mut();
        slots[cookie as usize - 1] = Slot::default();
        drop(slots);
        self.reader_wake.restart_all();
        self.slot_free.restart_one();
    }

    /// Marks the connection broken because the server broke the protocol; the request
    /// that noticed fails with EIO, as every later one.
    pub fn protocol_error(&self, what: &str) -> Error {
        trace!(nbd_protocol_error, "server broke the protocol: {}", what);
        self.break_connection(libc::EIO);
        Error::new(libc::EIO, format!("Protocol error: {what}"))
    }

    /// Sends NBD_CMD_DISC and closes the socket (nbd_client_close).
    pub async fn disconnect(&self) {
        if !self.is_broken() {
            let req = Request {
                flags: 0,
                kind: cmd::DISC,
                cookie: 0,
                offset: 0,
                length: 0,
            };
            let extended = self.info.mode == Mode::Extended;
            let _guard = self.send_lock.lock().await;
            let _ = self.ch.write_all(&[&req.encode(extended)]).await;
        }
        self.break_connection(libc::ESHUTDOWN);
        self.ch.shutdown();
    }

    fn check(&self) -> Result<()> {
        match self.broken.get() {
            Some(_) => Err(self.broken_error()),
            None => Ok(()),
        }
    }

    fn broken_error(&self) -> Error {
        Error::from_errno(libc::EIO)
    }

    fn fail(&self, e: Error) -> Error {
        self.break_connection(e.errno());
        Error::from_errno(libc::EIO)
    }

    fn break_connection(&self, errno: i32) {
        if self.broken.get().is_none() {
            self.broken.set(Some(errno));
            self.ch.shutdown();
        }
        self.slot_free.restart_all();
        self.reader_wake.restart_all();
        for q in &self.replies {
            q.restart_all();
        }
    }

    /// The reader coroutine: hands every reply header to its request until the connection
    /// ends (nbd_receive_replies).
    async fn reader(self: Rc<Self>) {
        while !self.is_broken() {
            let header = match self.read_header().await {
                Ok(h) => h,
                Err(e) => {
                    self.break_connection(e.errno());
                    break;
                }
            };
            let (cookie, h) = header;
            let index = cookie.wrapping_sub(1) as usize;
            let valid = index < MAX_NBD_REQUESTS && self.slots.borrow()[index].in_use;
            if !valid {
                self.protocol_error(&format!("reply for unknown cookie {cookie}"));
                break;
            }
            self.slots.borrow_mut()[index].header = Some(h);
            self.replies[index].restart_all();
            self.reader_wake
                .wait_while(|| !self.is_broken() && self.slots.borrow()[index].header.is_some())
                .await;
        }
    }

    /// Reads one reply header: the magic says which of the three forms it is.
    async fn read_header(&self) -> Result<(u64, ReplyHeader)> {
        let mut magic = [0u8; 4];
        self.ch.read_exact(&mut magic).await?;
        let magic = u32::from_be_bytes(magic);
        match magic {
            NBD_SIMPLE_REPLY_MAGIC => {
                let mut rest = [0u8; 12];
                self.ch.read_exact(&mut rest).await?;
                let mut r = WireReader::new(&rest);
                let error = r.u32().unwrap_or_default();
                let cookie = r.u64().unwrap_or_default();
                trace!(
                    nbd_receive_simple_reply,
                    "Got simple reply: {{ .error = {}, .cookie = {} }}",
                    error,
                    cookie
                );
                Ok((cookie, ReplyHeader::Simple { error }))
            }
            NBD_STRUCTURED_REPLY_MAGIC | NBD_EXTENDED_REPLY_MAGIC
                if (magic == NBD_EXTENDED_REPLY_MAGIC) != (self.info.mode == Mode::Extended)
                    || self.info.mode == Mode::Simple =>
            {
                Err(self.protocol_error("reply chunk of a kind not negotiated"))
            }
            NBD_STRUCTURED_REPLY_MAGIC | NBD_EXTENDED_REPLY_MAGIC => {
                let mut rest = [0u8; 28];
                let len = if magic == NBD_STRUCTURED_REPLY_MAGIC {
                    16
                } else {
                    28
                };
                self.ch.read_exact(&mut rest[..len]).await?;
                let h = ChunkHeader::parse(magic, &rest[..len]).unwrap();
                trace!(
                    nbd_receive_reply_chunk_header,
                    "Got reply chunk header: {{ .flags = 0x{:x}, .type = {}, .cookie = {}, .length = {} }}",
                    h.flags,
                    h.kind,
                    h.cookie,
                    h.length
                );
                Ok((h.cookie, ReplyHeader::Chunk(h)))
            }
            m => Err(self.protocol_error(&format!("invalid reply magic 0x{m:x}"))),
        }
    }
}
