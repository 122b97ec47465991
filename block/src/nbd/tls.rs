//! TLS on a [`Channel`]: after NBD_OPT_STARTTLS both sides run a TLS handshake over the
//! socket, and every later byte goes through the session (QEMU's io/channel-tls.c over
//! crypto/tlssession.c; the TLS itself is rustls).
//!
//! rustls is sans-I/O: it takes ciphertext in (`read_tls`) and hands ciphertext out
//! (`write_tls`); this module moves those bytes over the non-blocking socket with the
//! channel's own waiting. Ciphertext goes out under one lock, so that records written by
//! a request coroutine and by the reader (alerts, session tickets) never interleave.

use std::io::{Read, Write};

use super::channel::Channel;
use crate::error::{Error, Result};

/// The message of a certificate issued for another host (QEMU appends the host name).
pub const NAME_MISMATCH: &str = "Certificate does not match the hostname";

/// Ciphertext read from the socket at once: one maximal TLS record.
const RECORD: usize = 16 * 1024 + 256;

/// Runs the TLS handshake to its end (qio_channel_tls_handshake).
pub async fn handshake(ch: &Channel) -> Result<()> {
    loop {
        flush(ch).await?;
        let (handshaking, wants_read) = ch.with_tls(|t| (t.is_handshaking(), t.wants_read()));
        if !handshaking {
            return Ok(());
        }
        if wants_read && !receive(ch).await? {
            return Err(Error::new(
                libc::ECONNRESET,
                "TLS handshake failed: the peer closed the connection",
            ));
        }
    }
}

/// Reads decrypted bytes; 0 at the end of the stream.
pub async fn read(ch: &Channel, buf: &mut [u8]) -> Result<usize> {
    loop {
        let r = ch.with_tls(|t| t.reader().read(buf));
        match r {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(Error::from_errno(libc::ECONNRESET)),
        }
        if !receive(ch).await? {
            return Ok(0);
        }
        flush(ch).await?;
    }
}

/// Encrypts and sends every byte of every slice.
pub async fn write_all(ch: &Channel, parts: &[&[u8]]) -> Result<()> {
    for part in parts {
        let mut rest = *part;
        while !rest.is_empty() {
            let n = ch
                .with_tls(|t| t.writer().write(rest))
                .map_err(Error::from)?;
            rest = &rest[n..];
            // rustls buffers a bounded amount: send what it holds before giving it more.
            flush(ch).await?;
        }
    }
    Ok(())
}

/// Reads one batch of ciphertext and processes it; false at the end of the stream.
async fn receive(ch: &Channel) -> Result<bool> {
    let mut raw = vec![0u8; RECORD];
    let n = ch.raw_read(&mut raw).await?;
    if n == 0 {
        return Ok(false);
    }
    let mut input = &raw[..n];
    while !input.is_empty() {
        ch.with_tls(|t| {
            t.read_tls(&mut input).map_err(Error::from)?;
            t.process_new_packets().map(|_| ()).map_err(tls_error)
        })?;
    }
    Ok(true)
}

/// Sends whatever ciphertext the session has ready.
async fn flush(ch: &Channel) -> Result<()> {
    let _guard = ch.tls_write_lock().lock().await;
    loop {
        let mut out = Vec::new();
        ch.with_tls(|t| {
            while t.wants_write() {
                t.write_tls(&mut out)?;
            }
            Ok::<(), std::io::Error>(())
        })
        .map_err(Error::from)?;
        if out.is_empty() {
            return Ok(());
        }
        ch.raw_write_all(&[&out]).await?;
    }
}

/// A TLS failure in the words QEMU's GnuTLS layer uses where there is one.
fn tls_error(e: rustls::Error) -> Error {
    use rustls::CertificateError as C;
    let text = match &e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "The certificate hasn't got a known issuer".to_owned()
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "The certificate has expired".to_owned()
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => NAME_MISMATCH.to_owned(),
        _ => format!("TLS handshake failed: {e}"),
    };
    Error::new(libc::EPROTO, text)
}
