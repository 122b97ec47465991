//! The `tls-creds-x509` object: X.509 certificates for a TLS client or server, read from a
//! directory with QEMU's file names (QEMU's crypto/tlscredsx509.c).
//!
//! `dir` holds ca-cert.pem (the authority that signs the peer), server-cert.pem and
//! server-key.pem (a server's identity), client-cert.pem and client-key.pem (a client's,
//! optional). `endpoint=server|client` says which side this is, `verify-peer` whether the
//! peer must present a certificate the authority signed. TLS itself is rustls's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::{Error, Result};
use crate::options::Options;

/// Which end of a connection the credentials are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A client: verifies the server, may present client-cert.pem.
    Client,
    /// A server: presents server-cert.pem, may verify clients.
    Server,
}

/// A `tls-creds-x509` object (QCryptoTLSCredsX509).
#[derive(Clone, Debug)]
pub struct TlsCredsX509 {
    dir: PathBuf,
    endpoint: Endpoint,
    verify_peer: bool,
}

impl TlsCredsX509 {
    /// Builds the object from `dir=`, `endpoint=` and `verify-peer=`; the files are read
    /// (and checked) when a connection needs them, as QEMU loads them on first use.
    pub fn create(opts: &mut Options) -> Result<super::UserObject> {
        let dir = opts
            .take("dir")
            .ok_or_else(|| Error::invalid("Missing 'dir' property value"))?;
        let endpoint = match opts.take("endpoint").as_deref() {
            None | Some("client") => Endpoint::Client,
            Some("server") => Endpoint::Server,
            Some(e) => {
                return Err(Error::invalid(format!(
                    "Parameter 'endpoint' does not accept value '{e}'"
                )))
            }
        };
        let verify_peer = opts.take_bool("verify-peer")?.unwrap_or(true);
        for key in ["priority", "sanity-check", "passwordid"] {
            if let Some(v) = opts.take(key) {
                return Err(Error::not_supported(format!(
                    "tls-creds-x509 {key}={v} is not supported yet"
                )));
            }
        }
        super::check_unused(opts)?;
        Ok(super::UserObject::TlsCredsX509(TlsCredsX509 {
            dir: PathBuf::from(dir),
            endpoint,
            verify_peer,
        }))
    }

    /// Which end these credentials are for.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// The rustls configuration of a client (verifies the server against ca-cert.pem).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        if !self.verify_peer {
            return Err(Error::not_supported(
                "tls-creds-x509 endpoint=client,verify-peer=off is not supported yet",
            ));
        }
        let builder = ClientConfig::builder().with_root_certificates(self.ca_roots()?);
        let cert = self.dir.join("client-cert.pem");
        let config = if cert.exists() {
            let key = self.dir.join("client-key.pem");
            builder
                .with_client_auth_cert(read_certs(&cert)?, read_key(&key)?)
                .map_err(|e| tls_error("Cannot load client certificate", e))?
        } else {
            builder.with_no_client_auth()
        };
        Ok(Arc::new(config))
    }

    /// The rustls configuration of a server (presents server-cert.pem, and with
    /// verify-peer requires a client certificate signed by ca-cert.pem).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let builder = ServerConfig::builder();
        let builder = if self.verify_peer {
            let roots = Arc::new(self.ca_roots()?);
            let verifier = WebPkiClientVerifier::builder(roots)
                .build()
                .map_err(|e| tls_error("Cannot load CA certificate", e))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let certs = read_certs(&self.dir.join("server-cert.pem"))?;
        let key = read_key(&self.dir.join("server-key.pem"))?;
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| tls_error("Cannot load server certificate", e))?;
        Ok(Arc::new(config))
    }

    fn ca_roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&self.dir.join("ca-cert.pem"))? {
            roots
                .add(cert)
                .map_err(|e| tls_error("Cannot load CA certificate", e))?;
        }
        Ok(roots)
    }
}

/// The tls-creds object `id`, which must be for `endpoint` (nbd_get_tls_creds).
pub fn lookup_tls_creds(id: &str, endpoint: Endpoint) -> Result<TlsCredsX509> {
    let object = super::lookup(id)
        .ok_or_else(|| Error::invalid(format!("No TLS credentials with id '{id}'")))?;
    let super::UserObject::TlsCredsX509(creds) = &*object else {
        return Err(Error::invalid(format!(
            "Object with id '{id}' is not TLS credentials"
        )));
    };
    if creds.endpoint != endpoint {
        let want = match endpoint {
            Endpoint::Client => "client",
            Endpoint::Server => "server",
        };
        return Err(Error::invalid(format!(
            "Expecting TLS credentials with a {want} endpoint"
        )));
    }
    Ok(creds.clone())
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{what}: {e}"))
}

fn read_pem(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!(
                "Unable to read {}: {}",
                path.display(),
                crate::error::strerror(e.raw_os_error().unwrap_or(libc::EIO))
            ),
        )
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path)?;
    let certs: std::result::Result<Vec<_>, _> =
        rustls_pemfile::certs(&mut pem.as_slice()).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        _ => Err(Error::invalid(format!(
            "Unable to import certificate {}",
            path.display()
        ))),
    }
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read_pem(path)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(key)) => Ok(key),
        _ => Err(Error::invalid(format!(
            "Unable to import private key {}",
            path.display()
        ))),
    }
}
