//! The client's side of the handshake: from the server's greeting to the transmission phase,
//! and the export listing of `qemu-nbd -L` (QEMU's nbd/client.c: nbd_receive_negotiate,
//! nbd_opt_info_or_go, nbd_negotiate_simple_meta_context, nbd_receive_export_list).
//!
//! QEMU's client asks for as much as the server may give, then takes what it gets:
//! extended headers, else structured replies; the metadata contexts it needs; the export
//! with its block-size constraints through NBD_OPT_GO, else the old NBD_OPT_EXPORT_NAME.
//! Every length the server sends is checked before it sizes an allocation.

use super::channel::Channel;
use super::proto::*;
use crate::error::{Error, Result};
use crate::trace;

/// Largest option reply the client reads into memory (names and descriptions are at most
/// 4 KiB each; an error message as long as a READ makes no sense).
const MAX_OPTION_REPLY: u32 = 64 << 10;

/// What the client asks of the server (QEMU's request half of NBDExportInfo).
#[derive(Clone, Debug, Default)]
pub struct ClientRequest {
    /// The export's name ("" is the default export).
    pub export: String,
    /// Ask for structured replies (holes in reads, block status).
    pub structured: bool,
    /// Ask for 64-bit headers too.
    pub extended: bool,
    /// Metadata contexts to select, in order (`base:allocation`, `qemu:dirty-bitmap:NAME`).
    pub contexts: Vec<String>,
}

/// What the server told about the export (QEMU's NBDExportInfo).
#[derive(Clone, Debug, Default)]
pub struct ExportInfo {
    /// The export's name as the server gave it (or as asked).
    pub name: String,
    /// Its description, if the server sent one.
    pub description: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// NBD_FLAG_* transmission flags.
    pub flags: u16,
    /// Minimum, preferred and maximum block sizes; zero when the server sent none.
    pub min_block: u32,
    /// Preferred block size.
    pub opt_block: u32,
    /// Maximum request size.
    pub max_block: u32,
    /// Reply format of the transmission phase.
    pub mode: Mode,
    /// The selected metadata contexts: (id the server assigned, name).
    pub contexts: Vec<(u32, String)>,
}

/// One option reply, its data read whole.
struct OptReply {
    kind: u32,
    data: Vec<u8>,
}

/// A connection during the handshake.
pub struct Handshake<'a> {
    ch: &'a Channel,
    fixed: bool,
    no_zeroes: bool,
    /// The server sent the export at once (oldstyle): no options, and the size and flags
    /// follow the greeting.
    oldstyle: bool,
}

impl<'a> Handshake<'a> {
    /// Reads the server's greeting and answers it with the client's flags. An oldstyle
    /// server sends its only export at once; QEMU's client still accepts one (without TLS).
    pub async fn start(ch: &'a Channel) -> Result<Handshake<'a>> {
        let mut magic = [0u8; 8];
        ch.read_exact(&mut magic)
            .await
            .map_err(|e| e.context("Failed to read initial magic: "))?;
        if u64::from_be_bytes(magic) != NBD_INIT_MAGIC {
            return Err(Error::invalid("Invalid magic received"));
        }
        ch.read_exact(&mut magic)
            .await
            .map_err(|e| e.context("Failed to read server magic: "))?;
        let magic = u64::from_be_bytes(magic);
        trace!(nbd_receive_negotiate_magic, "magic 0x{:x}", magic);
        if magic == NBD_CLIENT_MAGIC {
            return Ok(Handshake {
                ch,
                fixed: false,
                no_zeroes: false,
                oldstyle: true,
            });
        }
        if magic != NBD_OPTS_MAGIC {
            return Err(Error::invalid("Bad server magic received"));
        }
        let mut flags = [0u8; 2];
        ch.read_exact(&mut flags)
            .await
            .map_err(|e| e.context("Failed to read server flags: "))?;
        let flags = u16::from_be_bytes(flags);
        trace!(
            nbd_receive_negotiate_server_flags,
            "server flags 0x{:x}",
            flags
        );
        let fixed = flags & NBD_FLAG_FIXED_NEWSTYLE != 0;
        let no_zeroes = flags & NBD_FLAG_NO_ZEROES != 0;
        let mut client_flags = 0;
        if fixed {
            client_flags |= NBD_FLAG_C_FIXED_NEWSTYLE;
        }
        if no_zeroes {
            client_flags |= NBD_FLAG_C_NO_ZEROES;
        }
        ch.write_all(&[&client_flags.to_be_bytes()])
            .await
            .map_err(|e| e.context("Failed to send clientflags field: "))?;
        Ok(Handshake {
            ch,
            fixed,
            no_zeroes,
            oldstyle: false,
        })
    }

    /// Whether the server speaks fixed newstyle (only then are options answered).
    pub fn fixed(&self) -> bool {
        self.fixed
    }

    /// The channel the handshake runs on.
    pub fn channel(&self) -> &Channel {
        self.ch
    }

    /// Upgrades the connection to TLS (NBD_OPT_STARTTLS, then the TLS handshake), checking
    /// the server's certificate against `hostname` (nbd_receive_starttls).
    pub async fn start_tls(
        &self,
        config: std::sync::Arc<rustls::ClientConfig>,
        hostname: &str,
    ) -> Result<()> {
        if !self.fixed {
            return Err(Error::not_supported("Server does not support STARTTLS"));
        }
        trace!(nbd_receive_starttls_request, "");
        let r = self.option(opt::STARTTLS, &[]).await?;
        if r.kind != rep::ACK {
            return Err(Error::invalid(format!(
                "Server rejected request to start TLS {}",
                r.kind
            )));
        }
        let name = rustls::pki_types::ServerName::try_from(hostname.to_owned())
            .map_err(|_| Error::invalid(format!("Invalid TLS hostname '{hostname}'")))?;
        let session = rustls::ClientConnection::new(config, name)
            .map_err(|e| Error::invalid(format!("TLS setup failed: {e}")))?;
        self.ch.start_tls(session.into()).await.map_err(|e| {
            // QEMU names the host the certificate was checked against.
            match e.message() {
                Some(m) if m == super::tls::NAME_MISMATCH => {
                    Error::new(e.errno(), format!("{m} {hostname}"))
                }
                _ => e,
            }
        })
    }

    /// Negotiates everything `want` asks for and enters the transmission phase.
    pub async fn go(self, want: &ClientRequest) -> Result<ExportInfo> {
        let mut info = ExportInfo {
            name: want.export.clone(),
            ..ExportInfo::default()
        };
        if self.oldstyle {
            return self.oldstyle_export(info).await;
        }
        if !self.fixed {
            return self.export_name(info).await;
        }
        if want.extended && self.simple_option(opt::EXTENDED_HEADERS).await? {
            info.mode = Mode::Extended;
        } else if want.structured && self.simple_option(opt::STRUCTURED_REPLY).await? {
            info.mode = Mode::Structured;
        }
        if info.mode >= Mode::Structured && !want.contexts.is_empty() {
            info.contexts = self
                .meta_context(opt::SET_META_CONTEXT, &want.export, &want.contexts)
                .await?;
        }
        if self.info_or_go(opt::GO, &mut info).await? {
            return Ok(info);
        }
        // A server too old for NBD_OPT_GO.
        self.export_name(info).await
    }

    /// The exports of a server, each described by NBD_OPT_INFO with its metadata contexts
    /// (nbd_receive_export_list, for `qemu-nbd -L`).
    pub async fn list(self) -> Result<Vec<ExportInfo>> {
        if !self.fixed {
            return Err(Error::not_supported("Server does not support export lists"));
        }
        let mode = if self.simple_option(opt::EXTENDED_HEADERS).await? {
            Mode::Extended
        } else if self.simple_option(opt::STRUCTURED_REPLY).await? {
            Mode::Structured
        } else {
            Mode::Simple
        };
        self.send_option(opt::LIST, &[]).await?;
        let mut names = Vec::new();
        loop {
            let r = self.reply(opt::LIST).await?;
            match r.kind {
                rep::ACK => break,
                rep::SERVER => {
                    let mut rd = WireReader::new(&r.data);
                    let name = rd
                        .string()
                        .ok_or_else(|| Error::invalid("incorrect option name length"))?;
                    let rest = rd.take(rd.remaining()).unwrap_or_default();
                    let desc = String::from_utf8_lossy(rest).into_owned();
                    names.push((name.to_owned(), desc));
                }
                k if k & (1 << 31) != 0 => return Err(reply_error(opt::LIST, k, &r.data)),
                k => return Err(unexpected(opt::LIST, k, rep::SERVER)),
            }
        }
        let mut exports = Vec::new();
        for (name, desc) in names {
            let mut info = ExportInfo {
                name: name.clone(),
                description: (!desc.is_empty()).then_some(desc),
                mode,
                ..ExportInfo::default()
            };
            if !self.info_or_go(opt::INFO, &mut info).await? {
                return Err(Error::not_supported("Server does not support NBD_OPT_INFO"));
            }
            if mode >= Mode::Structured {
                info.contexts = self
                    .meta_context(opt::LIST_META_CONTEXT, &name, &[])
                    .await?;
            }
            exports.push(info);
        }
        let _ = self.send_option(opt::ABORT, &[]).await;
        Ok(exports)
    }

    /// NBD_OPT_INFO or NBD_OPT_GO; false when the server does not know the option.
    async fn info_or_go(&self, option: u32, info: &mut ExportInfo) -> Result<bool> {
        let mut w = WireBuf::default();
        w.u32(info.name.len() as u32)
            .bytes(info.name.as_bytes())
            .u16(1)
            .u16(info::BLOCK_SIZE);
        self.send_option(option, &w.0).await?;
        let mut have_export = false;
        loop {
            let r = self.reply(option).await?;
            match r.kind {
                rep::ACK if have_export => return Ok(true),
                rep::ACK => return Err(Error::invalid("server did not send export info")),
                rep::ERR_UNSUP => return Ok(false),
                rep::INFO => have_export |= read_info(&r.data, info)?,
                k if k & (1 << 31) != 0 => return Err(reply_error(option, k, &r.data)),
                k => return Err(unexpected(option, k, rep::INFO)),
            }
        }
    }

    /// The old way into transmission: no error reply is possible, the server just hangs up.
    async fn export_name(self, mut info: ExportInfo) -> Result<ExportInfo> {
        self.send_option(opt::EXPORT_NAME, info.name.as_bytes())
            .await?;
        let mut buf = [0u8; 10 + 124];
        let len = if self.no_zeroes { 10 } else { buf.len() };
        self.ch
            .read_exact(&mut buf[..len])
            .await
            .map_err(|e| e.context("Failed to read export length: "))?;
        let mut r = WireReader::new(&buf);
        info.size = r.u64().unwrap_or_default();
        info.flags = r.u16().unwrap_or_default();
        info.mode = Mode::Simple;
        trace!(
            nbd_receive_negotiate_size_flags,
            "size {} flags 0x{:x}",
            info.size,
            info.flags
        );
        Ok(info)
    }

    /// The oldstyle greeting's rest: size, 32 bits of flags (the high 16 must be clear) and
    /// 124 zero bytes; an export name cannot be asked for.
    async fn oldstyle_export(self, mut info: ExportInfo) -> Result<ExportInfo> {
        if !info.name.is_empty() {
            return Err(Error::not_supported(
                "Server does not support non-empty export names",
            ));
        }
        let mut size = [0u8; 8];
        self.ch
            .read_exact(&mut size)
            .await
            .map_err(|e| e.context("Failed to read export length: "))?;
        let mut flags = [0u8; 4];
        self.ch
            .read_exact(&mut flags)
            .await
            .map_err(|e| e.context("Failed to read export flags: "))?;
        let flags = u32::from_be_bytes(flags);
        if flags >> 16 != 0 {
            return Err(Error::invalid(format!(
                "Unexpected export flags {flags:#x}"
            )));
        }
        let mut zeroes = [0u8; 124];
        self.ch
            .read_exact(&mut zeroes)
            .await
            .map_err(|e| e.context("Failed to read reserved block: "))?;
        info.size = u64::from_be_bytes(size);
        info.flags = flags as u16;
        info.mode = Mode::Simple;
        trace!(
            nbd_receive_negotiate_size_flags,
            "size {} flags 0x{:x}",
            info.size,
            info.flags
        );
        Ok(info)
    }

    /// NBD_OPT_SET_META_CONTEXT or NBD_OPT_LIST_META_CONTEXT: the contexts the server has
    /// of those asked for.
    async fn meta_context(
        &self,
        option: u32,
        export: &str,
        queries: &[String],
    ) -> Result<Vec<(u32, String)>> {
        let mut w = WireBuf::default();
        w.u32(export.len() as u32)
            .bytes(export.as_bytes())
            .u32(queries.len() as u32);
        for q in queries {
            w.u32(q.len() as u32).bytes(q.as_bytes());
        }
        self.send_option(option, &w.0).await?;
        let mut found = Vec::new();
        loop {
            let r = self.reply(option).await?;
            match r.kind {
                rep::ACK => return Ok(found),
                rep::META_CONTEXT => {
                    let mut rd = WireReader::new(&r.data);
                    let id = rd
                        .u32()
                        .ok_or_else(|| Error::invalid("meta context reply too short"))?;
                    let name = String::from_utf8_lossy(rd.take(rd.remaining()).unwrap());
                    trace!(nbd_opt_meta_reply, "context {} id {}", name, id);
                    let asked = queries.is_empty() || queries.iter().any(|q| *q == name);
                    if option == opt::SET_META_CONTEXT && !asked {
                        return Err(Error::invalid(format!(
                            "server replied with unexpected meta context '{name}'"
                        )));
                    }
                    found.push((id, name.into_owned()));
                }
                // A server without metadata contexts: block status reports everything as data.
                rep::ERR_UNSUP => return Ok(found),
                k if k & (1 << 31) != 0 => return Err(reply_error(option, k, &r.data)),
                k => return Err(unexpected(option, k, rep::META_CONTEXT)),
            }
        }
    }

    /// An option without data that the client can do without: true when ACKed, false
    /// for any error reply (QEMU's nbd_request_simple_option, not strict).
    async fn simple_option(&self, option: u32) -> Result<bool> {
        self.send_option(option, &[]).await?;
        let r = self.reply(option).await?;
        match r.kind {
            rep::ACK => Ok(true),
            k if k & (1 << 31) != 0 => Ok(false),
            k => Err(unexpected(option, k, rep::ACK)),
        }
    }

    /// Sends an option and reads its one reply; ERR_UNSUP is returned as a reply, every
    /// other error fails.
    async fn option(&self, option: u32, data: &[u8]) -> Result<OptReply> {
        self.send_option(option, data).await?;
        let r = self.reply(option).await?;
        match r.kind {
            rep::ACK | rep::ERR_UNSUP => Ok(r),
            k if k & (1 << 31) != 0 => Err(reply_error(option, k, &r.data)),
            k => Err(unexpected(option, k, rep::ACK)),
        }
    }

    async fn send_option(&self, option: u32, data: &[u8]) -> Result<()> {
        trace!(
            nbd_send_option_request,
            "Sending option request {} ({}), len {}",
            option,
            opt_name(option),
            data.len()
        );
        self.ch
            .write_all(&[&OptionHeader::encode(option, data)])
            .await
            .map_err(|e| e.context("Failed to send option request: "))
    }

    async fn reply(&self, option: u32) -> Result<OptReply> {
        let mut head = [0u8; 20];
        self.ch
            .read_exact(&mut head)
            .await
            .map_err(|e| e.context("failed to read option reply: "))?;
        let (got, kind, len) = parse_option_reply_header(&head)
            .ok_or_else(|| Error::invalid("Unexpected option reply magic"))?;
        trace!(
            nbd_receive_option_reply,
            "Received option reply {} ({}), type {}, len {}",
            got,
            opt_name(got),
            kind,
            len
        );
        if got != option {
            return Err(Error::invalid(format!(
                "Unexpected option type {got} ({}), expected {option} ({})",
                opt_name(got),
                opt_name(option)
            )));
        }
        if len > MAX_OPTION_REPLY {
            return Err(Error::invalid(format!(
                "server's reply to option {option} ({}) is too long",
                opt_name(option)
            )));
        }
        let mut data = vec![0u8; len as usize];
        self.ch
            .read_exact(&mut data)
            .await
            .map_err(|e| e.context("failed to read option reply data: "))?;
        Ok(OptReply { kind, data })
    }
}

/// Applies one NBD_REP_INFO item; returns whether it was the mandatory NBD_INFO_EXPORT.
fn read_info(data: &[u8], info: &mut ExportInfo) -> Result<bool> {
    let mut r = WireReader::new(data);
    let short = || Error::invalid("server sent an incomplete info reply");
    match r.u16().ok_or_else(short)? {
        info::EXPORT => {
            info.size = r.u64().ok_or_else(short)?;
            info.flags = r.u16().ok_or_else(short)?;
            trace!(
                nbd_receive_negotiate_size_flags,
                "size {} flags 0x{:x}",
                info.size,
                info.flags
            );
            return Ok(true);
        }
        info::BLOCK_SIZE => {
            let (min, opt, max) = (
                r.u32().ok_or_else(short)?,
                r.u32().ok_or_else(short)?,
                r.u32().ok_or_else(short)?,
            );
            if !min.is_power_of_two() {
                return Err(Error::invalid(format!(
                    "server minimum block size {min} is not a power of two"
                )));
            }
            if !opt.is_power_of_two() || opt < min {
                return Err(Error::invalid(format!(
                    "server preferred block size {opt} is not valid"
                )));
            }
            if max < min {
                return Err(Error::invalid(format!(
                    "server maximum block size {max} is not valid"
                )));
            }
            (info.min_block, info.opt_block, info.max_block) = (min, opt, max);
        }
        info::NAME => {
            let rest = r.take(r.remaining()).unwrap_or_default();
            info.name = String::from_utf8_lossy(rest).into_owned();
        }
        info::DESCRIPTION => {
            let rest = r.take(r.remaining()).unwrap_or_default();
            info.description = Some(String::from_utf8_lossy(rest).into_owned());
        }
        // Information the client did not ask for is ignored.
        _ => {}
    }
    Ok(false)
}

/// The error an option's error reply stands for (nbd_handle_reply_err).
fn reply_error(option: u32, kind: u32, msg: &[u8]) -> Error {
    let name = opt_name(option);
    let mut text = match kind {
        rep::ERR_POLICY => format!("Denied by server for option {option} ({name})"),
        rep::ERR_INVALID => format!("Invalid parameters for option {option} ({name})"),
        rep::ERR_PLATFORM => format!("Server lacks support for option {option} ({name})"),
        rep::ERR_TLS_REQD => format!(
            "TLS negotiation required before option {option} ({name})\n\
             Did you forget a valid tls-creds?"
        ),
        rep::ERR_UNKNOWN => "Requested export not available".to_owned(),
        rep::ERR_SHUTDOWN => format!("Server shutting down before option {option} ({name})"),
        rep::ERR_BLOCK_SIZE_REQD => {
            format!("Server requires INFO_BLOCK_SIZE for option {option} ({name})")
        }
        _ => format!("Unknown error code when asking for option {option} ({name})"),
    };
    if !msg.is_empty() {
        text.push_str("\nserver reported: ");
        text.push_str(&String::from_utf8_lossy(msg));
    }
    Error::new(libc::EINVAL, text)
}

fn unexpected(option: u32, kind: u32, want: u32) -> Error {
    Error::invalid(format!(
        "Unexpected reply type {kind} for option {option} ({}), expected {want}",
        opt_name(option)
    ))
}
