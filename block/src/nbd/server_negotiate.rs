//! The server's side of the fixed-newstyle handshake: option haggling until the client
//! picks the export (the negotiation half of QEMU's nbd/server.c: nbd_negotiate,
//! nbd_negotiate_options, nbd_negotiate_handle_info, nbd_negotiate_meta_queries).

use std::rc::Rc;
use std::sync::Arc;

use super::channel::Channel;
use super::export::NbdExport;
use super::meta_context::MetaContexts;
use super::proto::*;
use crate::error::{Error, Result};
use crate::trace;

/// Option data the server reads into memory; larger options are skipped and refused.
const MAX_OPTION_DATA: u32 = 64 << 10;

/// What a successful handshake settled.
#[derive(Clone, Copy, Debug)]
pub struct Negotiated {
    /// Reply format.
    pub mode: Mode,
    /// Contexts selected with NBD_OPT_SET_META_CONTEXT.
    pub contexts: MetaContexts,
}

/// Negotiation state of one connection.
struct Haggle<'a> {
    ch: &'a Channel,
    /// Server TLS configuration; until the channel runs TLS, only STARTTLS is served.
    tls: Option<&'a Arc<rustls::ServerConfig>>,
    exports: &'a [Rc<NbdExport>],
    mode: Mode,
    contexts: MetaContexts,
    /// The export `contexts` were selected on: they hold only if the client picks it.
    contexts_export: Option<Rc<NbdExport>>,
    no_zeroes: bool,
}

/// What a handshake ends with: the export the client picked and the settings, or `None`
/// when the client ended it with NBD_OPT_ABORT.
pub type Picked = Option<(Rc<NbdExport>, Negotiated)>;

/// Runs the handshake on a fresh connection, offering `exports`; an error means the
/// connection must be closed.
pub async fn negotiate(
    ch: &Channel,
    exports: &[Rc<NbdExport>],
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> Result<Picked> {
    trace!(nbd_negotiate_begin, "");
    let mut hello = WireBuf::with_capacity(18);
    hello
        .u64(NBD_INIT_MAGIC)
        .u64(NBD_OPTS_MAGIC)
        .u16(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    ch.write_all(&[&hello.0]).await?;
    let mut flags = [0u8; 4];
    ch.read_exact(&mut flags).await?;
    let flags = u32::from_be_bytes(flags);
    if flags & !(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) != 0 {
        return Err(Error::invalid(format!(
            "Unknown client flags 0x{flags:x} received"
        )));
    }
    let mut h = Haggle {
        ch,
        tls,
        exports,
        mode: Mode::Simple,
        contexts: MetaContexts::default(),
        contexts_export: None,
        no_zeroes: flags & NBD_FLAG_C_NO_ZEROES != 0,
    };
    let result = h.options().await;
    if let Ok(Some(_)) = result {
        trace!(nbd_negotiate_success, "");
    }
    result
}

impl Haggle<'_> {
    /// The offered export named `name`.
    fn find(&self, name: &str) -> Option<Rc<NbdExport>> {
        self.exports.iter().find(|e| e.name() == name).cloned()
    }

    async fn options(&mut self) -> Result<Picked> {
        loop {
            let mut head = [0u8; OPTION_HEADER_LEN];
            self.ch.read_exact(&mut head).await?;
            let h = OptionHeader::parse(&head)
                .ok_or_else(|| Error::invalid("Bad magic received in option negotiation"))?;
            trace!(
                nbd_negotiate_options_check_option,
                "Checking option {} ({})",
                h.option,
                opt_name(h.option)
            );
            if h.length > MAX_OPTION_DATA {
                if h.length > NBD_MAX_BUFFER_SIZE {
                    return Err(Error::invalid(format!(
                        "option length {} too large",
                        h.length
                    )));
                }
                self.ch.discard(h.length as u64).await?;
                self.error(h.option, rep::ERR_TOO_BIG, "option too large")
                    .await?;
                continue;
            }
            let mut data = vec![0u8; h.length as usize];
            self.ch.read_exact(&mut data).await?;
            if let Some(done) = self.option(h.option, &data).await? {
                return Ok(done);
            }
        }
    }

    /// Handles one option; `Some` ends the handshake (`Some(None)`: aborted).
    async fn option(&mut self, option: u32, data: &[u8]) -> Result<Option<Picked>> {
        if let (Some(config), false) = (self.tls, self.ch.is_tls()) {
            return self.before_tls(option, config).await;
        }
        match option {
            opt::EXPORT_NAME => {
                let name = std::str::from_utf8(data).unwrap_or("\u{fffd}");
                let found = self
                    .find(name)
                    .filter(|_| data.len() <= NBD_MAX_STRING_SIZE);
                let Some(exp) = found else {
                    return Err(Error::invalid(format!("export '{name}' not present")));
                };
                let mut w = WireBuf::with_capacity(134);
                w.u64(exp.size())
                    .u16(exp.transmission_flags(self.mode == Mode::Extended));
                if !self.no_zeroes {
                    w.bytes(&[0; 124]);
                }
                self.ch.write_all(&[&w.0]).await?;
                return Ok(Some(Some(self.negotiated(exp))));
            }
            opt::ABORT => {
                // The client may already have closed; a failed ACK changes nothing.
                let _ = self.reply(option, rep::ACK, &[]).await;
                return Ok(Some(None));
            }
            opt::LIST => {
                if !data.is_empty() {
                    return self.invalid(option, "no payload expected").await;
                }
                for exp in self.exports {
                    let mut w = WireBuf::default();
                    w.u32(exp.name().len() as u32)
                        .bytes(exp.name().as_bytes())
                        .bytes(exp.description().unwrap_or("").as_bytes());
                    self.reply(option, rep::SERVER, &w.0).await?;
                }
                self.reply(option, rep::ACK, &[]).await?;
            }
            opt::INFO | opt::GO => {
                if let (Some(exp), opt::GO) = (self.info(option, data).await?, option) {
                    return Ok(Some(Some(self.negotiated(exp))));
                }
            }
            opt::STRUCTURED_REPLY | opt::EXTENDED_HEADERS => {
                if !data.is_empty() {
                    return self.invalid(option, "no payload expected").await;
                }
                let want = if option == opt::STRUCTURED_REPLY {
                    Mode::Structured
                } else {
                    Mode::Extended
                };
                if self.mode >= want {
                    return self.invalid(option, "already negotiated").await;
                }
                self.mode = want;
                self.reply(option, rep::ACK, &[]).await?;
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                self.meta_context(option, data).await?;
            }
            opt::STARTTLS if self.tls.is_some() => {
                self.error(option, rep::ERR_INVALID, "TLS already enabled")
                    .await?
            }
            opt::STARTTLS => {
                self.error(option, rep::ERR_POLICY, "TLS not configured")
                    .await?
            }
            _ => {
                let msg = format!("Unsupported option {option} ({})", opt_name(option));
                self.error(option, rep::ERR_UNSUP, &msg).await?
            }
        }
        Ok(None)
    }

    /// An option on a connection that must upgrade to TLS first: only STARTTLS and ABORT
    /// are served (nbd_negotiate_options with tlscreds).
    async fn before_tls(
        &mut self,
        option: u32,
        config: &Arc<rustls::ServerConfig>,
    ) -> Result<Option<Picked>> {
        match option {
            opt::STARTTLS => {
                self.reply(option, rep::ACK, &[]).await?;
                let session = rustls::ServerConnection::new(config.clone())
                    .map_err(|e| Error::invalid(format!("TLS setup failed: {e}")))?;
                self.ch.start_tls(session.into()).await?;
                Ok(None)
            }
            opt::ABORT => {
                let _ = self.reply(option, rep::ACK, &[]).await;
                Ok(Some(None))
            }
            // NBD_OPT_EXPORT_NAME has no error reply: the connection just ends.
            opt::EXPORT_NAME => Err(Error::invalid(format!(
                "Option 0x{option:x} not permitted before TLS"
            ))),
            _ => {
                let msg = format!("Option 0x{option:x} not permitted before TLS");
                self.error(option, rep::ERR_TLS_REQD, &msg).await?;
                Ok(None)
            }
        }
    }

    /// The end of the handshake on `exp`: contexts selected on another export do not
    /// carry over (nbd_negotiate_handle_info resetting client->contexts).
    fn negotiated(&self, exp: Rc<NbdExport>) -> (Rc<NbdExport>, Negotiated) {
        let same = self
            .contexts_export
            .as_ref()
            .is_some_and(|c| Rc::ptr_eq(c, &exp));
        let contexts = if same {
            self.contexts
        } else {
            MetaContexts::default()
        };
        let mode = self.mode;
        (exp, Negotiated { mode, contexts })
    }

    async fn reply(&self, option: u32, kind: u32, data: &[u8]) -> Result<()> {
        let head = option_reply_header(option, kind, data.len() as u32);
        self.ch.write_all(&[&head, data]).await
    }

    async fn error(&self, option: u32, kind: u32, msg: &str) -> Result<()> {
        self.reply(option, kind, msg.as_bytes()).await
    }

    async fn invalid(&self, option: u32, msg: &str) -> Result<Option<Picked>> {
        self.error(option, rep::ERR_INVALID, msg).await?;
        Ok(None)
    }

    async fn unknown_export(&self, option: u32, name: &str) -> Result<()> {
        let msg = format!("export '{name}' not present");
        self.error(option, rep::ERR_UNKNOWN, &msg).await
    }

    /// NBD_OPT_INFO / NBD_OPT_GO; returns the export, if it was found and described.
    async fn info(&self, option: u32, data: &[u8]) -> Result<Option<Rc<NbdExport>>> {
        let parsed = parse_name_and_list(data, |r| r.u16().map(u32::from), WireReader::u16);
        let Some((name, wanted)) = parsed else {
            self.error(option, rep::ERR_INVALID, "request data length mismatch")
                .await?;
            return Ok(None);
        };
        let Some(exp) = self.find(name) else {
            self.unknown_export(option, name).await?;
            return Ok(None);
        };
        if wanted.contains(&info::NAME) {
            let mut w = WireBuf::default();
            w.u16(info::NAME).bytes(exp.name().as_bytes());
            self.reply(option, rep::INFO, &w.0).await?;
        }
        if let (true, Some(desc)) = (wanted.contains(&info::DESCRIPTION), exp.description()) {
            let mut w = WireBuf::default();
            w.u16(info::DESCRIPTION).bytes(desc.as_bytes());
            self.reply(option, rep::INFO, &w.0).await?;
        }
        let honoured = option == opt::INFO || wanted.contains(&info::BLOCK_SIZE);
        let [min, preferred, max] = exp.block_sizes(honoured);
        let mut w = WireBuf::default();
        w.u16(info::BLOCK_SIZE).u32(min).u32(preferred).u32(max);
        self.reply(option, rep::INFO, &w.0).await?;
        let mut w = WireBuf::default();
        w.u16(info::EXPORT)
            .u64(exp.size())
            .u16(exp.transmission_flags(self.mode == Mode::Extended));
        self.reply(option, rep::INFO, &w.0).await?;
        self.reply(option, rep::ACK, &[]).await?;
        Ok(Some(exp))
    }

    /// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.
    async fn meta_context(&mut self, option: u32, data: &[u8]) -> Result<()> {
        let set = option == opt::SET_META_CONTEXT;
        if set && self.mode == Mode::Simple {
            return self
                .error(option, rep::ERR_INVALID, "request structured replies first")
                .await;
        }
        let parsed = parse_name_and_list(data, WireReader::u32, WireReader::string);
        let Some((name, queries)) = parsed else {
            return self
                .error(option, rep::ERR_INVALID, "request data length mismatch")
                .await;
        };
        let Some(exp) = self.find(name) else {
            return self.unknown_export(option, name).await;
        };
        let list = !set;
        let mut found = MetaContexts::default();
        if queries.is_empty() && list {
            found = MetaContexts::all(&exp);
        }
        for q in &queries {
            found.add_query(q, &exp, list);
        }
        for (id, name) in found.named(&exp) {
            let mut w = WireBuf::default();
            w.u32(id).bytes(name.as_bytes());
            self.reply(option, rep::META_CONTEXT, &w.0).await?;
        }
        if set {
            self.contexts = found;
            self.contexts_export = Some(exp);
        }
        self.reply(option, rep::ACK, &[]).await
    }
}

/// Parses the shape INFO/GO and the META_CONTEXT options share: an export name, a count,
/// and that many items, filling the data exactly. `None` when anything is missing or left
/// over; the count only bounds a loop that stops at the end of the data.
fn parse_name_and_list<'a, T>(
    data: &'a [u8],
    count: impl Fn(&mut WireReader<'a>) -> Option<u32>,
    item: impl Fn(&mut WireReader<'a>) -> Option<T>,
) -> Option<(&'a str, Vec<T>)> {
    let mut r = WireReader::new(data);
    let name = r.string()?;
    let n = count(&mut r)?;
    let mut items = Vec::new();
    for _ in 0..n {
        items.push(item(&mut r)?);
    }
    (r.remaining() == 0).then_some((name, items))
}
