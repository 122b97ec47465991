//! The NBD wire protocol, sans I/O: magics, option and command numbers, and the fixed-size
//! headers of the handshake and the transmission phase, encoded and decoded from byte
//! slices (QEMU's include/block/nbd.h and the encoding halves of nbd/common.c).
//!
//! Everything on the wire is big-endian. Nothing here reads a socket: the server (and the
//! client) read exactly the header sizes defined here, then hand the bytes to these parsers,
//! so every length a peer sends is checked before it sizes an allocation.

mod errors;
pub use errors::*;

/// "NBDMAGIC", the first eight bytes a server sends.
pub const NBD_INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle negotiation, and the prefix of every option the client sends.
pub const NBD_OPTS_MAGIC: u64 = 0x4948_4156_454f_5054;
/// The prefix of every option reply.
pub const NBD_REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Oldstyle negotiation: the server sends the export's size right away.
pub const NBD_CLIENT_MAGIC: u64 = 0x0000_4202_8186_1253;
/// A request with a 32-bit length.
pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
/// A request with a 64-bit length (extended headers).
pub const NBD_EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// A simple reply.
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// A structured reply chunk.
pub const NBD_STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// A structured reply chunk with extended headers.
pub const NBD_EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Handshake flag: the server speaks fixed newstyle.
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the 124 zero bytes after NBD_OPT_EXPORT_NAME may be left out.
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: leave out the 124 zero bytes.
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags (16 bits, sent with the export's size).
pub mod tflags {
    /// Always set: the other flags are meaningful.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// The export is read-only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// NBD_CMD_FLUSH is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// NBD_CMD_FLAG_FUA is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// The export is a rotational medium.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// NBD_CMD_TRIM is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// NBD_CMD_WRITE_ZEROES is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// NBD_CMD_FLAG_DF is supported.
    pub const SEND_DF: u16 = 1 << 7;
    /// A flush on one connection covers writes completed on every connection.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// NBD_CMD_RESIZE is supported.
    pub const SEND_RESIZE: u16 = 1 << 9;
    /// NBD_CMD_CACHE is supported.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// NBD_CMD_FLAG_FAST_ZERO is supported.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
    /// NBD_CMD_BLOCK_STATUS may carry a payload choosing its contexts (extended headers).
    pub const BLOCK_STAT_PAYLOAD: u16 = 1 << 12;
}

/// Option numbers (NBD_OPT_*).
pub mod opt {
    /// Choose an export and enter transmission, old style.
    pub const EXPORT_NAME: u32 = 1;
    /// End negotiation.
    pub const ABORT: u32 = 2;
    /// List the exports.
    pub const LIST: u32 = 3;
    /// Upgrade to TLS.
    pub const STARTTLS: u32 = 5;
    /// Describe an export.
    pub const INFO: u32 = 6;
    /// Describe an export and enter transmission.
    pub const GO: u32 = 7;
    /// Use structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts for NBD_CMD_BLOCK_STATUS.
    pub const SET_META_CONTEXT: u32 = 10;
    /// Use 64-bit request and reply headers.
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types (NBD_REP_*); errors have bit 31 set.
pub mod rep {
    /// The option succeeded (final reply).
    pub const ACK: u32 = 1;
    /// One export of a LIST.
    pub const SERVER: u32 = 2;
    /// One piece of information of an INFO/GO.
    pub const INFO: u32 = 3;
    /// One metadata context of a LIST/SET_META_CONTEXT.
    pub const META_CONTEXT: u32 = 4;
    /// The option is not known to the server.
    pub const ERR_UNSUP: u32 = (1 << 31) | 1;
    /// The server's policy forbids it.
    pub const ERR_POLICY: u32 = (1 << 31) | 2;
    /// The option was malformed.
    pub const ERR_INVALID: u32 = (1 << 31) | 3;
    /// Not supported on this platform.
    pub const ERR_PLATFORM: u32 = (1 << 31) | 4;
    /// TLS is required first.
    pub const ERR_TLS_REQD: u32 = (1 << 31) | 5;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = (1 << 31) | 6;
    /// The server is shutting down.
    pub const ERR_SHUTDOWN: u32 = (1 << 31) | 7;
    /// The client must ask for block sizes.
    pub const ERR_BLOCK_SIZE_REQD: u32 = (1 << 31) | 8;
    /// The request or reply would be too large.
    pub const ERR_TOO_BIG: u32 = (1 << 31) | 9;
    /// Extended headers must be negotiated first.
    pub const ERR_EXT_HEADER_REQD: u32 = (1 << 31) | 10;
}

/// NBD_INFO_* items of INFO/GO replies.
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// The export's canonical name.
    pub const NAME: u16 = 1;
    /// A human-readable description.
    pub const DESCRIPTION: u16 = 2;
    /// Minimum, preferred and maximum block sizes.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Commands (NBD_CMD_*).
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write (the payload follows the header).
    pub const WRITE: u16 = 1;
    /// Disconnect.
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Discard.
    pub const TRIM: u16 = 4;
    /// Prefetch.
    pub const CACHE: u16 = 5;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
    /// Query metadata contexts.
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags (NBD_CMD_FLAG_*).
pub mod cflags {
    /// Force unit access.
    pub const FUA: u16 = 1 << 0;
    /// WRITE_ZEROES must not leave a hole.
    pub const NO_HOLE: u16 = 1 << 1;
    /// READ must come back in one data chunk.
    pub const DF: u16 = 1 << 2;
    /// BLOCK_STATUS: one extent is enough.
    pub const REQ_ONE: u16 = 1 << 3;
    /// WRITE_ZEROES: fail rather than be slow.
    pub const FAST_ZERO: u16 = 1 << 4;
    /// Extended headers: the length field is a payload length.
    pub const PAYLOAD_LEN: u16 = 1 << 5;
}

/// Structured reply chunk types (NBD_REPLY_TYPE_*).
pub mod chunk {
    /// No payload (only sensible with DONE).
    pub const NONE: u16 = 0;
    /// Data at an offset.
    pub const OFFSET_DATA: u16 = 1;
    /// A range that reads as zeroes.
    pub const OFFSET_HOLE: u16 = 2;
    /// Block status extents with 32-bit fields.
    pub const BLOCK_STATUS: u16 = 5;
    /// Block status extents with 64-bit fields (extended headers).
    pub const BLOCK_STATUS_EXT: u16 = 6;
    /// An error for the whole request.
    pub const ERROR: u16 = (1 << 15) | 1;
    /// An error at an offset.
    pub const ERROR_OFFSET: u16 = (1 << 15) | 2;
}

/// Chunk flag: this is the request's last chunk.
pub const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;

/// base:allocation: the range is a hole (not data).
pub const NBD_STATE_HOLE: u32 = 1 << 0;
/// base:allocation: the range reads as zeroes.
pub const NBD_STATE_ZERO: u32 = 1 << 1;

/// The largest READ/WRITE payload a server accepts, as QEMU's NBD_MAX_BUFFER_SIZE.
pub const NBD_MAX_BUFFER_SIZE: u32 = 32 << 20;
/// The longest string (export name, context name, message) the protocol allows.
pub const NBD_MAX_STRING_SIZE: usize = 4096;

/// Wire sizes of the fixed headers.
pub const OPTION_HEADER_LEN: usize = 16;
/// A compact request header.
pub const REQUEST_LEN: usize = 28;
/// An extended request header.
pub const EXTENDED_REQUEST_LEN: usize = 32;

/// QEMU's name of an option, for traces and messages (nbd_opt_lookup).
pub fn opt_name(o: u32) -> &'static str {
    match o {
        opt::EXPORT_NAME => "export_name",
        opt::ABORT => "abort",
        opt::LIST => "list",
        4 => "peek_export",
        opt::STARTTLS => "starttls",
        opt::INFO => "info",
        opt::GO => "go",
        opt::STRUCTURED_REPLY => "structured_reply",
        opt::LIST_META_CONTEXT => "list_meta_context",
        opt::SET_META_CONTEXT => "set_meta_context",
        opt::EXTENDED_HEADERS => "extended_headers",
        _ => "<unknown>",
    }
}

/// QEMU's name of a command, for traces (nbd_cmd_lookup).
pub fn cmd_name(c: u16) -> &'static str {
    match c {
        cmd::READ => "read",
        cmd::WRITE => "write",
        cmd::DISC => "disconnect",
        cmd::FLUSH => "flush",
        cmd::TRIM => "trim",
        cmd::CACHE => "cache",
        cmd::WRITE_ZEROES => "write zeroes",
        cmd::BLOCK_STATUS => "block status",
        _ => "<unknown>",
    }
}

/// A big-endian byte builder for messages.
#[derive(Default)]
pub struct WireBuf(pub Vec<u8>);

impl WireBuf {
    /// An empty buffer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> WireBuf {
        WireBuf(Vec::with_capacity(n))
    }

    /// Appends a u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
}

/// A bounds-checked big-endian reader over a received message; every getter returns
/// `None` past the end instead of panicking, so a short message is an ordinary error.
pub struct WireReader<'a> {
    buf: &'a [u8],
}

impl<'a> WireReader<'a> {
    /// Reads from the start of `buf`.
    pub fn new(buf: &'a [u8]) -> WireReader<'a> {
        WireReader { buf }
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    /// Takes a u16.
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// Takes a u32.
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
    }

    /// Takes a u64.
    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
    }

    /// Takes a string preceded by its u32 length, refusing one over the protocol's limit.
    pub fn string(&mut self) -> Option<&'a str> {
        let len = self.u32()? as usize;
        if len > NBD_MAX_STRING_SIZE {
            return None;
        }
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
}

/// The header of an option the client sends (after the IHAVEOPT magic check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// NBD_OPT_*.
    pub option: u32,
    /// Length of the data that follows.
    pub length: u32,
}

impl OptionHeader {
    /// Parses the 16-byte header; `None` when the magic is wrong.
    pub fn parse(b: &[u8; OPTION_HEADER_LEN]) -> Option<OptionHeader> {
        let mut r = WireReader::new(b);
        if r.u64()? != NBD_OPTS_MAGIC {
            return None;
        }
        Some(OptionHeader {
            option: r.u32()?,
            length: r.u32()?,
        })
    }

    /// Encodes the header followed by `data`.
    pub fn encode(option: u32, data: &[u8]) -> Vec<u8> {
        let mut w = WireBuf::with_capacity(OPTION_HEADER_LEN + data.len());
        w.u64(NBD_OPTS_MAGIC)
            .u32(option)
            .u32(data.len() as u32)
            .bytes(data);
        w.0
    }
}

/// An option reply header: magic, option, reply type, data length (20 bytes).
pub fn option_reply_header(option: u32, reply: u32, len: u32) -> [u8; 20] {
    let mut w = WireBuf::with_capacity(20);
    w.u64(NBD_REP_MAGIC).u32(option).u32(reply).u32(len);
    w.0.try_into().unwrap()
}

/// Parses an option reply header into (option, reply type, data length); `None` when the
/// magic is wrong.
pub fn parse_option_reply_header(b: &[u8; 20]) -> Option<(u32, u32, u32)> {
    let mut r = WireReader::new(b);
    if r.u64()? != NBD_REP_MAGIC {
        return None;
    }
    Some((r.u32()?, r.u32()?, r.u32()?))
}

/// Which reply format the transmission phase uses, as the handshake settled it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Simple replies only.
    #[default]
    Simple,
    /// Structured replies (NBD_OPT_STRUCTURED_REPLY).
    Structured,
    /// Structured replies with 64-bit headers (NBD_OPT_EXTENDED_HEADERS).
    Extended,
}

/// A transmission request (compact or extended: the length is widened to 64 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// NBD_CMD_FLAG_*.
    pub flags: u16,
    /// NBD_CMD_*.
    pub kind: u16,
    /// The client's cookie (handle), echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length (or payload length).
    pub length: u64,
}

impl Request {
    /// Parses a request header of `REQUEST_LEN` or `EXTENDED_REQUEST_LEN` bytes, as
    /// negotiated; `None` when the magic does not match the negotiated form.
    pub fn parse(b: &[u8], extended: bool) -> Option<Request> {
        let mut r = WireReader::new(b);
        let magic = r.u32()?;
        let want = if extended {
            NBD_EXTENDED_REQUEST_MAGIC
        } else {
            NBD_REQUEST_MAGIC
        };
        if magic != want {
            return None;
        }
        let flags = r.u16()?;
        let kind = r.u16()?;
        let cookie = r.u64()?;
        let offset = r.u64()?;
        let length = if extended { r.u64()? } else { r.u32()? as u64 };
        Some(Request {
            flags,
            kind,
            cookie,
            offset,
            length,
        })
    }

    /// Encodes the header (a client's side; the test clients use it too).
    pub fn encode(&self, extended: bool) -> Vec<u8> {
        let mut w = WireBuf::with_capacity(EXTENDED_REQUEST_LEN);
        if extended {
            w.u32(NBD_EXTENDED_REQUEST_MAGIC);
        } else {
            w.u32(NBD_REQUEST_MAGIC);
        }
        w.u16(self.flags)
            .u16(self.kind)
            .u64(self.cookie)
            .u64(self.offset);
        if extended {
            w.u64(self.length);
        } else {
            w.u32(self.length as u32);
        }
        w.0
    }
}

/// A simple reply header: magic, error, cookie (16 bytes).
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut w = WireBuf::with_capacity(16);
    w.u32(NBD_SIMPLE_REPLY_MAGIC).u32(error).u64(cookie);
    w.0.try_into().unwrap()
}

/// The header of one structured reply chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// NBD_REPLY_FLAG_*.
    pub flags: u16,
    /// NBD_REPLY_TYPE_*.
    pub kind: u16,
    /// The request's cookie.
    pub cookie: u64,
    /// Extended headers only: the request's offset.
    pub offset: u64,
    /// Payload length.
    pub length: u64,
}

impl ChunkHeader {
    /// Encodes the header, 20 bytes compact or 32 extended.
    pub fn encode(&self, extended: bool) -> Vec<u8> {
        let mut w = WireBuf::with_capacity(32);
        if extended {
            w.u32(NBD_EXTENDED_REPLY_MAGIC)
                .u16(self.flags)
                .u16(self.kind)
                .u64(self.cookie)
                .u64(self.offset)
                .u64(self.length);
        } else {
            w.u32(NBD_STRUCTURED_REPLY_MAGIC)
                .u16(self.flags)
                .u16(self.kind)
                .u64(self.cookie)
                .u32(self.length as u32);
        }
        w.0
    }

    /// Parses a chunk header whose magic was already read as `magic` from the remaining
    /// bytes (16 compact, 28 extended); `None` for another magic.
    pub fn parse(magic: u32, rest: &[u8]) -> Option<ChunkHeader> {
        let mut r = WireReader::new(rest);
        let extended = match magic {
            NBD_STRUCTURED_REPLY_MAGIC => false,
            NBD_EXTENDED_REPLY_MAGIC => true,
            _ => return None,
        };
        let flags = r.u16()?;
        let kind = r.u16()?;
        let cookie = r.u64()?;
        let (offset, length) = if extended {
            (r.u64()?, r.u64()?)
        } else {
            (0, r.u32()? as u64)
        };
        Some(ChunkHeader {
            flags,
            kind,
            cookie,
            offset,
            length,
        })
    }
}

/// The payload of an NBD_REPLY_TYPE_ERROR chunk: error, message length, message.
pub fn error_chunk_payload(error: u32, message: &str) -> Vec<u8> {
    let msg = &message.as_bytes()[..message.len().min(NBD_MAX_STRING_SIZE)];
    let mut w = WireBuf::with_capacity(6 + msg.len());
    w.u32(error).u16(msg.len() as u16).bytes(msg);
    w.0
}

/// One extent of a block status reply: `length` bytes with context-defined `flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Bytes the extent covers.
    pub length: u64,
    /// NBD_STATE_* for base:allocation; the depth for qemu:allocation-depth.
    pub flags: u32,
}

/// The payload of a block status chunk for context `id`: 32-bit descriptors, or 64-bit
/// ones with a count in the extended form.
pub fn block_status_payload(id: u32, extents: &[Extent], extended: bool) -> Vec<u8> {
    let mut w = WireBuf::with_capacity(8 + extents.len() * 16);
    w.u32(id);
    if extended {
        w.u32(extents.len() as u32);
        for e in extents {
            w.u64(e.length).u64(e.flags as u64);
        }
    } else {
        for e in extents {
            w.u32(e.length as u32).u32(e.flags);
        }
    }
    w.0
}

#[cfg(test)]
mod tests;
