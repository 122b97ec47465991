//! The transmission phase of one server connection: a reader coroutine decodes requests
//! and starts one coroutine per request, which runs it on the BlockBackend and sends its
//! reply (QEMU's nbd_trip, nbd_co_receive_request, nbd_handle_request and the
//! nbd_co_send_* family in nbd/server.c).
//!
//! Requests run concurrently and replies go out in completion order, each reply sent whole
//! under the connection's send lock. A request is checked before anything is allocated for
//! it: a bad magic or a write payload over the size limit ends the connection, anything
//! else wrong gets an error reply and the connection carries on.

use std::cell::Cell;
use std::rc::Rc;

use super::channel::Channel;
use super::export::NbdExport;
use super::meta_context::{
    allocation_extents, bitmap_extents, status_payload, ExtentArray, MetaContexts,
    META_ID_ALLOCATION_DEPTH, META_ID_BASE_ALLOCATION, META_ID_DIRTY_BITMAP,
};
use super::proto::*;
use super::server_negotiate::Negotiated;
use crate::coroutine::{co_spawn, CoMutex, CoQueue};
use crate::driver::{RequestFlags, StatusFlags};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::trace;

/// Requests one connection may have in flight; the reader stops reading until one ends,
/// which bounds the memory a client can make the server hold (QEMU's MAX_NBD_REQUESTS).
const MAX_NBD_REQUESTS: usize = 16;

/// Extents one block status reply carries at most (QEMU's NBD_MAX_BLOCK_STATUS_EXTENTS).
const MAX_BLOCK_STATUS_EXTENTS: usize = (1 << 20) / 8;

/// A connection in the transmission phase (QEMU's NBDClient).
pub struct NbdClient {
    ch: Channel,
    export: Rc<NbdExport>,
    mode: Mode,
    negotiated: Negotiated,
    /// Replies are sent whole, one at a time.
    send_lock: CoMutex<()>,
    requests: Cell<usize>,
    request_done: CoQueue,
}

/// A request whose reply failed: the error to send and the message for structured replies.
struct ReplyError {
    errno: u32,
    message: String,
}

impl ReplyError {
    fn new(errno: u32, message: impl Into<String>) -> ReplyError {
        ReplyError {
            errno,
            message: message.into(),
        }
    }
}

impl From<Error> for ReplyError {
    fn from(e: Error) -> ReplyError {
        ReplyError::new(system_errno_to_nbd(e.errno()), e.to_string())
    }
}

type ReplyResult<T> = std::result::Result<T, ReplyError>;

impl NbdClient {
    /// A connection whose handshake settled `negotiated`.
    pub fn new(ch: Channel, export: Rc<NbdExport>, negotiated: Negotiated) -> Rc<NbdClient> {
        Rc::new(NbdClient {
            ch,
            export,
            mode: negotiated.mode,
            negotiated,
            send_lock: CoMutex::new(()),
            requests: Cell::new(0),
            request_done: CoQueue::new(),
        })
    }

    fn extended(&self) -> bool {
        self.mode == Mode::Extended
    }

    /// Serves requests until the client disconnects or breaks the protocol, then waits for
    /// the requests still running. The error says why a connection ended uncleanly.
    pub async fn run(self: &Rc<Self>) -> Result<()> {
        let result = self.receive_loop().await;
        self.request_done
            .wait_while(|| self.requests.get() > 0)
            .await;
        self.ch.shutdown();
        result
    }

    async fn receive_loop(self: &Rc<Self>) -> Result<()> {
        let header_len = if self.extended() {
            EXTENDED_REQUEST_LEN
        } else {
            REQUEST_LEN
        };
        let mut head = [0u8; EXTENDED_REQUEST_LEN];
        loop {
            self.request_done
                .wait_while(|| self.requests.get() >= MAX_NBD_REQUESTS)
                .await;
            match self.ch.read_exact(&mut head[..header_len]).await {
                Err(e) if e.errno() == libc::ECONNRESET => return Ok(()),
                r => r?,
            }
            let mut req = Request::parse(&head[..header_len], self.extended())
                .ok_or_else(|| Error::invalid("invalid request magic"))?;
            trace!(
                nbd_co_receive_request_decode_type,
                "Decoding type: cookie = {}, type = {} ({})",
                req.cookie,
                req.kind,
                cmd_name(req.kind)
            );
            if req.kind == cmd::DISC {
                return Ok(());
            }
            let contexts = self.receive_status_payload(&mut req).await?;
            let payload = self.receive_payload(&req).await?;
            self.requests.set(self.requests.get() + 1);
            let client = self.clone();
            co_spawn(async move {
                let result = match payload {
                    Ok(data) => client.handle(&req, data, contexts).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    client.send_error(&req, e).await;
                }
                client.requests.set(client.requests.get() - 1);
                client.request_done.restart_all();
            });
        }
    }

    /// The contexts a block-status request asks for: those negotiated, or, when it carries
    /// a payload, those the payload names; the request then takes the payload's length, or
    /// length 0 (refused by the checks) when the payload is malformed.
    async fn receive_status_payload(&self, req: &mut Request) -> Result<MetaContexts> {
        let negotiated = self.negotiated.contexts;
        if req.kind != cmd::BLOCK_STATUS || req.flags & cflags::PAYLOAD_LEN == 0 {
            return Ok(negotiated);
        }
        if !self.extended() || req.length > NBD_MAX_BUFFER_SIZE as u64 {
            return Err(Error::invalid(format!(
                "invalid block status payload length {}",
                req.length
            )));
        }
        let mut data = vec![0u8; req.length as usize];
        self.ch.read_exact(&mut data).await?;
        req.flags &= !cflags::PAYLOAD_LEN;
        let (length, contexts) = status_payload(&data, negotiated).unwrap_or_default();
        req.length = if contexts == MetaContexts::default() {
            0
        } else {
            length
        };
        Ok(contexts)
    }

    /// Reads a write's payload, or discards it when the request is refused anyway. The
    /// outer error closes the connection; the inner one is the request's reply.
    async fn receive_payload(&self, req: &Request) -> Result<ReplyResult<Vec<u8>>> {
        let checked = self.check_request(req);
        if req.kind != cmd::WRITE {
            return Ok(checked.map(|()| Vec::new()));
        }
        if req.length > NBD_MAX_BUFFER_SIZE as u64 {
            // Skipping gigabytes to stay in sync is not worth it; the spec lets us hang up.
            return Err(Error::invalid(format!(
                "len ({}) is larger than max len ({NBD_MAX_BUFFER_SIZE})",
                req.length
            )));
        }
        if let Err(e) = checked {
            self.ch.discard(req.length).await?;
            return Ok(Err(e));
        }
        let mut data = vec![0u8; req.length as usize];
        self.ch.read_exact(&mut data).await?;
        trace!(
            nbd_co_receive_request_payload_received,
            "Payload received: cookie = {}, len = {}",
            req.cookie,
            req.length
        );
        Ok(Ok(data))
    }

    /// The checks every request passes before it runs (the validation part of
    /// nbd_co_receive_request).
    fn check_request(&self, req: &Request) -> ReplyResult<()> {
        let structured = self.mode >= Mode::Structured;
        let allowed = cflags::FUA
            | match req.kind {
                cmd::READ if structured => cflags::DF,
                cmd::WRITE_ZEROES => cflags::NO_HOLE | cflags::FAST_ZERO,
                cmd::BLOCK_STATUS => cflags::REQ_ONE,
                _ => 0,
            };
        let writes = matches!(req.kind, cmd::WRITE | cmd::WRITE_ZEROES | cmd::TRIM);
        match req.kind {
            cmd::READ | cmd::WRITE | cmd::FLUSH | cmd::TRIM | cmd::CACHE | cmd::WRITE_ZEROES => {}
            cmd::BLOCK_STATUS if structured => {}
            cmd::BLOCK_STATUS => {
                return Err(ReplyError::new(errno::EINVAL, "need structured replies"));
            }
            k => {
                return Err(ReplyError::new(
                    errno::EINVAL,
                    format!("unsupported command {k}"),
                ))
            }
        }
        if req.flags & !allowed != 0 {
            return Err(ReplyError::new(
                errno::EINVAL,
                format!(
                    "unsupported flags 0x{:x} (got 0x{:x})",
                    req.flags & !allowed,
                    req.flags
                ),
            ));
        }
        if writes && self.export.read_only() {
            return Err(ReplyError::new(errno::EPERM, "export is read-only"));
        }
        if req.kind == cmd::READ && req.length > NBD_MAX_BUFFER_SIZE as u64 {
            return Err(ReplyError::new(
                errno::EINVAL,
                format!(
                    "len ({}) is larger than max len ({NBD_MAX_BUFFER_SIZE})",
                    req.length
                ),
            ));
        }
        let size = self.export.size();
        if req.kind != cmd::FLUSH && (req.offset > size || req.length > size - req.offset) {
            let e = if matches!(req.kind, cmd::WRITE | cmd::WRITE_ZEROES) {
                errno::ENOSPC
            } else {
                errno::EINVAL
            };
            return Err(ReplyError::new(
                e,
                format!(
                    "operation past EOF; From: {}, Len: {}, Size: {size}",
                    req.offset, req.length
                ),
            ));
        }
        if req.kind == cmd::BLOCK_STATUS
            && (req.length == 0 || self.negotiated.contexts == Default::default())
        {
            return Err(ReplyError::new(
                errno::EINVAL,
                "no metadata context selected",
            ));
        }
        Ok(())
    }

    /// Runs a checked request and sends its successful reply (nbd_handle_request).
    async fn handle(
        &self,
        req: &Request,
        payload: Vec<u8>,
        contexts: MetaContexts,
    ) -> ReplyResult<()> {
        let blk = self.export.blk();
        let fua = if req.flags & cflags::FUA != 0 {
            RequestFlags::FUA
        } else {
            RequestFlags::empty()
        };
        match req.kind {
            cmd::READ => return self.read(req).await,
            cmd::BLOCK_STATUS => return self.block_status(req, contexts).await,
            cmd::WRITE => {
                let qiov = IoVector::from_vec(payload);
                blk.co_pwritev(req.offset, &qiov, fua).await?;
            }
            cmd::WRITE_ZEROES => {
                let mut flags = fua;
                if req.flags & cflags::NO_HOLE == 0 {
                    flags |= RequestFlags::MAY_UNMAP;
                }
                if req.flags & cflags::FAST_ZERO != 0 {
                    flags |= RequestFlags::NO_FALLBACK;
                }
                blk.co_pwrite_zeroes(req.offset, req.length, flags).await?;
            }
            cmd::TRIM => {
                blk.co_pdiscard(req.offset, req.length).await?;
                if !fua.is_empty() {
                    blk.co_flush().await?;
                }
            }
            cmd::FLUSH => blk.co_flush().await?,
            cmd::CACHE => self.cache(req).await?,
            _ => unreachable!("check_request refused command {}", req.kind),
        }
        self.send_done(req).await;
        Ok(())
    }

    /// NBD_CMD_CACHE: reads the range through the graph so that caches below hold it,
    /// in bounded pieces (QEMU reads with BDRV_REQ_PREFETCH).
    async fn cache(&self, req: &Request) -> Result<()> {
        let mut offset = req.offset;
        let end = req.offset + req.length;
        while offset < end {
            let n = (end - offset).min(NBD_MAX_BUFFER_SIZE as u64);
            let qiov = IoVector::alloc_for_read(n as usize);
            self.export
                .blk()
                .co_preadv(offset, &qiov, RequestFlags::empty())
                .await?;
            offset += n;
        }
        Ok(())
    }

    /// NBD_CMD_READ: with structured replies the zero ranges go as holes and only data is
    /// read (nbd_co_send_sparse_read); otherwise one buffer.
    async fn read(&self, req: &Request) -> ReplyResult<()> {
        let blk = self.export.blk();
        let sparse = self.mode >= Mode::Structured && req.flags & cflags::DF == 0;
        if !sparse || req.length == 0 {
            let qiov = IoVector::alloc_for_read(req.length as usize);
            blk.co_preadv(req.offset, &qiov, RequestFlags::empty())
                .await?;
            // The reply goes out of the read's own buffer, with no copy.
            let data = qiov.slices();
            if self.mode == Mode::Simple {
                let head = simple_reply(0, req.cookie);
                let mut parts: Vec<&[u8]> = vec![&head];
                parts.extend_from_slice(&data);
                self.send(&parts).await;
            } else {
                let offset = req.offset.to_be_bytes();
                let mut parts: Vec<&[u8]> = vec![&offset];
                parts.extend_from_slice(&data);
                self.send_chunk(req, NBD_REPLY_FLAG_DONE, chunk::OFFSET_DATA, &parts)
                    .await;
            }
            return Ok(());
        }
        let end = req.offset + req.length;
        let mut offset = req.offset;
        while offset < end {
            let (status, _) = blk
                .bs()
                .co_block_status_above(None, true, offset, end - offset)
                .await?;
            let n = if status.bytes == 0 {
                end - offset
            } else {
                status.bytes.min(end - offset)
            };
            let done = if offset + n == end {
                NBD_REPLY_FLAG_DONE
            } else {
                0
            };
            if status.flags.contains(StatusFlags::ZERO) && status.bytes != 0 {
                let mut w = WireBuf::with_capacity(12);
                w.u64(offset).u32(n as u32);
                trace!(
                    nbd_co_send_chunk_read_hole,
                    "Send structured read hole reply: cookie = {}, offset = {}, len = {}",
                    req.cookie,
                    offset,
                    n
                );
                self.send_chunk(req, done, chunk::OFFSET_HOLE, &[&w.0])
                    .await;
            } else {
                let qiov = IoVector::alloc_for_read(n as usize);
                blk.co_preadv(offset, &qiov, RequestFlags::empty())
                    .await
                    .map_err(|e| {
                        ReplyError::new(
                            system_errno_to_nbd(e.errno()),
                            format!("read at offset {offset} failed: {e}"),
                        )
                    })?;
                trace!(
                    nbd_co_send_chunk_read,
                    "Send structured read data reply: cookie = {}, offset = {}, len = {}",
                    req.cookie,
                    offset,
                    n
                );
                let start = offset.to_be_bytes();
                let mut parts: Vec<&[u8]> = vec![&start];
                parts.extend_from_slice(&qiov.slices());
                self.send_chunk(req, done, chunk::OFFSET_DATA, &parts).await;
            }
            offset += n;
        }
        Ok(())
    }

    /// NBD_CMD_BLOCK_STATUS: one chunk per selected context, in id order, the last one
    /// DONE (nbd_co_send_block_status, nbd_co_send_bitmap).
    async fn block_status(&self, req: &Request, contexts: MetaContexts) -> ReplyResult<()> {
        let bs = self.export.blk().bs();
        let mut chunks = Vec::new();
        for depth in [false, true] {
            let (id, wanted) = if depth {
                (META_ID_ALLOCATION_DEPTH, contexts.allocation_depth)
            } else {
                (META_ID_BASE_ALLOCATION, contexts.base_allocation)
            };
            if wanted {
                let mut ea = self.extent_array(req);
                allocation_extents(&bs, req.offset, req.length, depth, &mut ea).await?;
                chunks.push((id, ea.into_vec()));
            }
        }
        for (i, (_, bitmap)) in self.export.bitmaps().iter().enumerate() {
            if contexts.bitmaps & (1 << i) != 0 {
                let mut ea = self.extent_array(req);
                bitmap_extents(bitmap, req.offset, req.length, &mut ea);
                chunks.push((META_ID_DIRTY_BITMAP + i as u32, ea.into_vec()));
            }
        }
        let kind = if self.extended() {
            chunk::BLOCK_STATUS_EXT
        } else {
            chunk::BLOCK_STATUS
        };
        let last = chunks.len() - 1;
        for (i, (id, extents)) in chunks.into_iter().enumerate() {
            trace!(
                nbd_co_send_extents,
                "Send block status reply: cookie = {}, extents = {}, context = {}",
                req.cookie,
                extents.len(),
                id
            );
            let payload = block_status_payload(id, &extents, self.extended());
            let flags = if i == last { NBD_REPLY_FLAG_DONE } else { 0 };
            self.send_chunk(req, flags, kind, &[&payload]).await;
        }
        Ok(())
    }

    /// Where one context's extents collect: one with NBD_CMD_FLAG_REQ_ONE, else up to
    /// QEMU's limit; compact replies carry 32-bit lengths.
    fn extent_array(&self, req: &Request) -> ExtentArray {
        let max = if req.flags & cflags::REQ_ONE != 0 {
            1
        } else {
            MAX_BLOCK_STATUS_EXTENTS
        };
        let max_len = if self.extended() {
            u64::MAX
        } else {
            u32::MAX as u64
        };
        ExtentArray::new(max, max_len)
    }

    /// Sends a message whole; a failure closes the connection, which ends the reader.
    async fn send(&self, parts: &[&[u8]]) {
        let _guard = self.send_lock.lock().await;
        if self.ch.write_all(parts).await.is_err() {
            self.ch.shutdown();
        }
    }

    async fn send_chunk(&self, req: &Request, flags: u16, kind: u16, payload: &[&[u8]]) {
        let length = payload.iter().map(|p| p.len() as u64).sum();
        let head = ChunkHeader {
            flags,
            kind,
            cookie: req.cookie,
            offset: req.offset,
            length,
        }
        .encode(self.extended());
        let mut parts = vec![head.as_slice()];
        parts.extend_from_slice(payload);
        self.send(&parts).await;
    }

    /// The reply of a request that succeeded without data.
    async fn send_done(&self, req: &Request) {
        if self.mode == Mode::Simple {
            trace!(
                nbd_co_send_simple_reply,
                "Send simple reply: cookie = {}, error = 0 (success), len = 0",
                req.cookie
            );
            self.send(&[&simple_reply(0, req.cookie)]).await;
        } else {
            trace!(
                nbd_co_send_chunk_done,
                "Send structured reply done: cookie = {}",
                req.cookie
            );
            self.send_chunk(req, NBD_REPLY_FLAG_DONE, chunk::NONE, &[])
                .await;
        }
    }

    async fn send_error(&self, req: &Request, e: ReplyError) {
        if self.mode == Mode::Simple {
            trace!(
                nbd_co_send_simple_reply,
                "Send simple reply: cookie = {}, error = {} ({}), len = 0",
                req.cookie,
                e.errno,
                e.message
            );
            self.send(&[&simple_reply(e.errno, req.cookie)]).await;
        } else {
            trace!(
                nbd_co_send_chunk_error,
                "Send structured error reply: cookie = {}, error = {}, msg = '{}'",
                req.cookie,
                e.errno,
                e.message
            );
            let payload = error_chunk_payload(e.errno, &e.message);
            self.send_chunk(req, NBD_REPLY_FLAG_DONE, chunk::ERROR, &[&payload])
                .await;
        }
    }
}
