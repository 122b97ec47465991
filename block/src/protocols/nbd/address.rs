//! Where an NBD export is and how to reach it: the filename forms and the structured
//! options of the `nbd` driver (QEMU's nbd_parse_uri, nbd_parse_filename,
//! nbd_process_options and nbd_refresh_filename in block/nbd.c).
//!
//! `nbd://host[:port]/export`, `nbd+tcp://...` and `nbd+unix:///export?socket=PATH` are
//! URIs; `nbd:host:port[:exportname=X]` and `nbd:unix:PATH[:exportname=X]` the older
//! form. Both become the options `server.type`, `server.host`, `server.port`,
//! `server.path` and `export`, which json:/--image-opts give directly.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::nbd::server::NBD_DEFAULT_PORT;
use crate::options::Options;

/// The server's socket address (QEMU's SocketAddress, inet or unix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAddress {
    /// A TCP host and port.
    Inet {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// Port number or service name.
        port: String,
    },
    /// A unix socket path.
    Unix {
        /// The socket's path.
        path: String,
    },
}

/// Everything the driver needs to connect (QEMU's BDRVNBDState option fields).
#[derive(Clone, Debug)]
pub struct NbdLocation {
    /// The server.
    pub server: ServerAddress,
    /// The export's name; `None` when not given (the default export, "").
    pub export: Option<String>,
    /// Id of a tls-creds object to secure the connection with.
    pub tls_creds: Option<String>,
    /// The name the server's certificate must carry, if not the host's.
    pub tls_hostname: Option<String>,
    /// A metadata context to read block status from instead of base:allocation.
    pub x_dirty_bitmap: Option<String>,
    /// How long requests wait for a lost connection to come back.
    pub reconnect_delay: Duration,
    /// How long the first connection may keep failing before open gives up.
    pub open_timeout: Duration,
}

impl NbdLocation {
    /// Builds the location from the filename, if any, and the structured options.
    pub fn from_options(options: &mut Options) -> Result<NbdLocation> {
        if let Some(f) = options.take("filename") {
            if options.contains("server.type") || options.contains("export") {
                return Err(Error::invalid(
                    "Cannot use 'filename' together with 'server' or 'export'",
                ));
            }
            parse_filename(&f, options)?;
        }
        legacy_socket_options(options)?;
        let server = match options.take("server.type").as_deref() {
            Some("inet") => ServerAddress::Inet {
                host: options
                    .take("server.host")
                    .ok_or_else(|| Error::invalid("Parameter 'server.host' is missing"))?,
                port: options
                    .take("server.port")
                    .unwrap_or_else(|| NBD_DEFAULT_PORT.to_string()),
            },
            Some("unix") => ServerAddress::Unix {
                path: options
                    .take("server.path")
                    .ok_or_else(|| Error::invalid("Parameter 'server.path' is missing"))?,
            },
            Some(t) => {
                return Err(Error::invalid(format!(
                    "Parameter 'server.type' does not accept value '{t}'"
                )))
            }
            None => return Err(Error::invalid("NBD server address missing")),
        };
        let secs = |options: &mut Options, key: &str| -> Result<Duration> {
            Ok(Duration::from_secs(options.take_u64(key)?.unwrap_or(0)))
        };
        Ok(NbdLocation {
            server,
            export: options.take("export"),
            tls_creds: options.take("tls-creds"),
            tls_hostname: options.take("tls-hostname"),
            x_dirty_bitmap: options.take("x-dirty-bitmap"),
            reconnect_delay: secs(options, "reconnect-delay")?,
            open_timeout: secs(options, "open-timeout")?,
        })
    }

    /// The name the server's TLS certificate must carry: `tls-hostname`, else the TCP
    /// host; a unix socket has none, so there it must be given.
    pub fn tls_name(&self) -> Result<String> {
        tls_hostname(self.tls_hostname.as_deref(), &self.server)
    }

    /// The node's filename as QEMU shows it (nbd_refresh_filename).
    pub fn filename(&self) -> String {
        match (&self.server, &self.export) {
            (ServerAddress::Inet { host, port }, None) => format!("nbd://{host}:{port}"),
            (ServerAddress::Inet { host, port }, Some(e)) => format!("nbd://{host}:{port}/{e}"),
            (ServerAddress::Unix { path }, None) => format!("nbd+unix://?socket={path}"),
            (ServerAddress::Unix { path }, Some(e)) => format!("nbd+unix:///{e}?socket={path}"),
        }
    }
}

/// The name a server's certificate is checked against: the one given, else the TCP host.
pub fn tls_hostname(given: Option<&str>, server: &ServerAddress) -> Result<String> {
    match (given, server) {
        (Some(h), _) => Ok(h.to_owned()),
        (None, ServerAddress::Inet { host, .. }) => Ok(host.clone()),
        (None, ServerAddress::Unix { .. }) => {
            Err(Error::invalid("No hostname for certificate validation"))
        }
    }
}

/// The older flat options `host`, `port` and `path` become `server.*`
/// (nbd_process_legacy_socket_options).
fn legacy_socket_options(options: &mut Options) -> Result<()> {
    let (host, port, path) = (
        options.take("host"),
        options.take("port"),
        options.take("path"),
    );
    if host.is_none() && port.is_none() && path.is_none() {
        return Ok(());
    }
    if options.contains("server.type") {
        return Err(Error::invalid(
            "Cannot use 'server' and path/host/port at the same time",
        ));
    }
    match (host, path) {
        (Some(_), Some(_)) => Err(Error::invalid(
            "path and host may not be used at the same time",
        )),
        (None, Some(_)) if port.is_some() => {
            Err(Error::invalid("port may not be used without host"))
        }
        (None, Some(path)) => {
            options.set("server.type", "unix");
            options.set("server.path", path);
            Ok(())
        }
        (host, None) => {
            options.set("server.type", "inet");
            options.set("server.host", host.unwrap_or_else(|| "localhost".into()));
            if let Some(port) = port {
                options.set("server.port", port);
            }
            Ok(())
        }
    }
}

/// Turns a filename into the structured options.
fn parse_filename(filename: &str, options: &mut Options) -> Result<()> {
    if filename.contains("://") {
        return parse_uri(filename, options);
    }
    let rest = filename
        .strip_prefix("nbd:")
        .ok_or_else(|| Error::invalid(format!("Unknown NBD filename '{filename}'")))?;
    let (address, export) = match rest.split_once(":exportname=") {
        Some((a, e)) => (a, Some(e)),
        None => (rest, None),
    };
    if let Some(path) = address.strip_prefix("unix:") {
        options.set("server.type", "unix");
        options.set("server.path", path);
    } else {
        let (host, port) =
            split_host_port(address).ok_or_else(|| Error::invalid("No valid URL specified"))?;
        options.set("server.type", "inet");
        options.set("server.host", host);
        options.set("server.port", port);
    }
    if let Some(e) = export {
        options.set("export", e);
    }
    Ok(())
}

/// `nbd[+tcp|+unix]://[host[:port]]/[export][?socket=PATH]` (nbd_parse_uri).
fn parse_uri(uri: &str, options: &mut Options) -> Result<()> {
    let bad = || Error::invalid("No valid URL specified");
    let (scheme, rest) = uri.split_once("://").ok_or_else(bad)?;
    let unix = match scheme {
        "nbd" | "nbd+tcp" => false,
        "nbd+unix" => true,
        _ => return Err(bad()),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    if !path.is_empty() {
        options.set("export", percent_decode(path)?);
    }
    if unix {
        let socket = query
            .and_then(|q| q.strip_prefix("socket="))
            .filter(|s| !s.contains('&') && authority.is_empty())
            .ok_or_else(bad)?;
        options.set("server.type", "unix");
        options.set("server.path", percent_decode(socket)?);
    } else {
        if query.is_some() || authority.is_empty() {
            return Err(bad());
        }
        let (host, port) = match split_host_port(authority) {
            Some((h, p)) => (h, p),
            None => (authority.trim_start_matches('[').trim_end_matches(']'), ""),
        };
        options.set("server.type", "inet");
        options.set("server.host", host);
        if !port.is_empty() {
            options.set("server.port", port);
        }
    }
    Ok(())
}

/// Splits "host:port" or "[v6]:port"; `None` without a port.
fn split_host_port(address: &str) -> Option<(&str, &str)> {
    if let Some(v6) = address.strip_prefix('[') {
        let (host, rest) = v6.split_once(']')?;
        return Some((host, rest.strip_prefix(':')?));
    }
    address.rsplit_once(':')
}

/// Decodes %XX escapes of a URI component.
fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| Error::invalid("No valid URL specified"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::invalid("No valid URL specified"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(f: &str) -> Result<NbdLocation> {
        let mut o = Options::new();
        o.set("filename", f);
        NbdLocation::from_options(&mut o)
    }

    #[test]
    fn every_filename_form_names_its_server_and_export() {
        let l = parse("nbd://example.org:1234/disk%20one").unwrap();
        assert_eq!(
            l.server,
            ServerAddress::Inet {
                host: "example.org".into(),
                port: "1234".into()
            }
        );
        assert_eq!(l.export.as_deref(), Some("disk one"));
        assert_eq!(l.filename(), "nbd://example.org:1234/disk one");
        let l = parse("nbd://[::1]/").unwrap();
        assert_eq!(l.filename(), "nbd://::1:10809");
        let l = parse("nbd+unix:///?socket=/run/s.sock").unwrap();
        assert_eq!(l.filename(), "nbd+unix://?socket=/run/s.sock");
        let l = parse("nbd+unix:///e?socket=/s").unwrap();
        assert_eq!(l.filename(), "nbd+unix:///e?socket=/s");
        let l = parse("nbd:localhost:10810:exportname=x").unwrap();
        assert_eq!(l.filename(), "nbd://localhost:10810/x");
        let l = parse("nbd:unix:/tmp/s").unwrap();
        assert_eq!(l.filename(), "nbd+unix://?socket=/tmp/s");
    }

    #[test]
    fn the_flat_socket_options_still_work() {
        let mut o = Options::new();
        o.set("host", "127.0.0.1");
        o.set("port", "1234");
        assert_eq!(
            NbdLocation::from_options(&mut o).unwrap().filename(),
            "nbd://127.0.0.1:1234"
        );
        let mut o = Options::new();
        o.set("path", "/s");
        o.set("host", "h");
        assert!(NbdLocation::from_options(&mut o).is_err());
    }

    #[test]
    fn malformed_filenames_are_refused() {
        for f in [
            "nbd+unix:///e",
            "nbd+unix://host/e?socket=/s",
            "nbd://h/e?socket=/s",
            "nbd:///e",
            "nbd+ssh://h/e",
            "nbd:hostonly",
            "nbd://h/%zz",
        ] {
            assert!(parse(f).is_err(), "{f}");
        }
    }
}
