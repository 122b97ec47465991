//! Reading one request's reply: a simple reply, or the chunks of a structured one (QEMU's
//! nbd_co_receive_return_code, nbd_co_receive_cmdread_reply, nbd_co_receive_blockstatus_reply
//! and the chunk parsers in block/nbd.c).
//!
//! The chunks a request may get depend on the command: READ takes data and holes, which
//! land in the caller's buffer; BLOCK_STATUS takes extents of the context asked for; every
//! command takes errors, of which the first is what the request returns once the last
//! chunk (flag DONE) arrived. Anything else, or a chunk that does not fit its request, is
//! a protocol error that breaks the connection, because the reply stream can no longer be
//! trusted.

use super::connection::{Connection, ReplyHeader};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::nbd::proto::*;
use crate::trace;

/// What the request wants from its reply chunks.
pub enum Expect<'a> {
    /// Only success or an error (WRITE, FLUSH, TRIM, WRITE_ZEROES, CACHE).
    Nothing,
    /// Data for `qiov`, which starts at the request's `offset`.
    Read {
        /// The request's offset.
        offset: u64,
        /// Where the data goes.
        qiov: &'a IoVector,
    },
    /// The first extent of context `id`, clamped to `len` bytes.
    Status {
        /// The context's id.
        id: u32,
        /// The request's length.
        len: u64,
        /// Where the extent goes.
        out: &'a mut Option<Extent>,
    },
}

/// Largest payload of an error chunk: error, message length, message, offset.
const MAX_ERROR_CHUNK: u64 = 4 + 2 + NBD_MAX_STRING_SIZE as u64 + 8;

/// Receives the whole reply of request `cookie` and frees its slot.
pub async fn receive(conn: &Connection, cookie: u64, mut expect: Expect<'_>) -> Result<()> {
    let r = receive_chunks(conn, cookie, &mut expect).await;
    conn.finish(cookie);
    r
}

async fn receive_chunks(conn: &Connection, cookie: u64, expect: &mut Expect<'_>) -> Result<()> {
    let mut first_error = 0u32;
    loop {
        match conn.next_header(cookie).await? {
            ReplyHeader::Simple { error } => {
                if error == 0 {
                    match expect {
                        Expect::Read { qiov, .. } => read_into(conn, qiov, 0, qiov.len()).await?,
                        Expect::Status { .. } => {
                            return Err(conn.protocol_error("simple reply to block status"))
                        }
                        Expect::Nothing => {}
                    }
                }
                return status(error);
            }
            ReplyHeader::Chunk(c) => {
                chunk(conn, &c, expect, &mut first_error).await?;
                conn.chunk_done(cookie);
                if c.flags & NBD_REPLY_FLAG_DONE != 0 {
                    if let Expect::Status { out: None, .. } = expect {
                        if first_error == 0 {
                            return Err(conn.protocol_error("no block status extent"));
                        }
                    }
                    return status(first_error);
                }
            }
        }
    }
}

fn status(error: u32) -> Result<()> {
    match error {
        0 => Ok(()),
        e => Err(Error::from_errno(nbd_errno_to_system(e))),
    }
}

/// Consumes one chunk's payload.
async fn chunk(
    conn: &Connection,
    c: &ChunkHeader,
    expect: &mut Expect<'_>,
    first_error: &mut u32,
) -> Result<()> {
    let extended = conn.info.mode == Mode::Extended;
    match (c.kind, expect) {
        (chunk::NONE, _) => {
            if c.flags & NBD_REPLY_FLAG_DONE == 0 || c.length != 0 {
                return Err(conn.protocol_error("invalid NBD_REPLY_TYPE_NONE chunk"));
            }
        }
        (chunk::OFFSET_DATA, Expect::Read { offset, qiov }) => {
            let mut head = [0u8; 8];
            if c.length <= 8 {
                return Err(conn.protocol_error("data chunk too short"));
            }
            conn.read_payload(&mut head).await?;
            let at = u64::from_be_bytes(head);
            let len = c.length - 8;
            let start = in_request(conn, at, len, *offset, qiov.len())?;
            trace!(
                nbd_structured_read_compliance,
                "data chunk at {} len {}",
                at,
                len
            );
            read_into(conn, qiov, start, len as usize).await?;
        }
        (chunk::OFFSET_HOLE, Expect::Read { offset, qiov }) => {
            let mut p = [0u8; 12];
            if c.length != 12 {
                return Err(conn.protocol_error("invalid hole chunk length"));
            }
            conn.read_payload(&mut p).await?;
            let mut r = WireReader::new(&p);
            let (at, len) = (r.u64().unwrap(), r.u32().unwrap() as u64);
            let start = in_request(conn, at, len, *offset, qiov.len())?;
            qiov.fill(start, len as usize, 0);
        }
        (chunk::BLOCK_STATUS | chunk::BLOCK_STATUS_EXT, Expect::Status { id, len, out }) => {
            let wide = c.kind == chunk::BLOCK_STATUS_EXT;
            if wide != extended {
                return Err(conn.protocol_error("block status chunk of the wrong width"));
            }
            let head_len = if wide { 8 + 16 } else { 4 + 8 };
            if c.length < head_len as u64 || out.is_some() {
                return Err(conn.protocol_error("invalid block status chunk"));
            }
            let mut p = [0u8; 24];
            conn.read_payload(&mut p[..head_len]).await?;
            let mut r = WireReader::new(&p[..head_len]);
            let got = r.u32().unwrap();
            let (length, flags) = if wide {
                r.u32();
                (r.u64().unwrap(), r.u64().unwrap() as u32)
            } else {
                (r.u32().unwrap() as u64, r.u32().unwrap())
            };
            if got != *id || length == 0 {
                return Err(conn.protocol_error("unexpected block status extent"));
            }
            // Only the first extent is used, as QEMU's client does.
            conn.skip(c.length - head_len as u64).await?;
            **out = Some(Extent {
                length: length.min(*len),
                flags,
            });
        }
        (kind, _) if kind & (1 << 15) != 0 => {
            if c.length < 6 || c.length > MAX_ERROR_CHUNK {
                return Err(conn.protocol_error("invalid error chunk length"));
            }
            let mut p = vec![0u8; c.length as usize];
            conn.read_payload(&mut p).await?;
            let mut r = WireReader::new(&p);
            let error = r.u32().unwrap();
            let msg_len = r.u16().unwrap() as usize;
            let msg = r.take(msg_len).map(String::from_utf8_lossy);
            if error == 0 || msg.is_none() {
                return Err(conn.protocol_error("invalid error chunk"));
            }
            trace!(
                nbd_server_error_msg,
                "server reported error 0x{:x} with additional message: {}",
                error,
                msg.unwrap_or_default()
            );
            if *first_error == 0 {
                *first_error = error;
            }
        }
        (kind, _) => {
            return Err(conn.protocol_error(&format!("unexpected reply chunk type {kind}")));
        }
    }
    Ok(())
}

/// Checks that a chunk's range lies inside its request; returns its offset in the buffer.
fn in_request(conn: &Connection, at: u64, len: u64, offset: u64, size: usize) -> Result<usize> {
    let end = offset + size as u64;
    if at < offset || at.checked_add(len).is_none_or(|e| e > end) {
        return Err(conn.protocol_error("chunk outside of its request"));
    }
    Ok((at - offset) as usize)
}

/// Reads `len` bytes of payload into `qiov` at `start` through a bounded bounce buffer.
async fn read_into(conn: &Connection, qiov: &IoVector, start: usize, len: usize) -> Result<()> {
    let mut buf = vec![0u8; len.min(1 << 20)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len());
        conn.read_payload(&mut buf[..n]).await?;
        qiov.copy_from_slice(start + done, &buf[..n]);
        done += n;
    }
    Ok(())
}
