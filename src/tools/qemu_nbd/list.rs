//! `qemu-nbd -L`: list the exports of another NBD server, each with its size, flags,
//! block sizes and metadata contexts (qemu-nbd.c's qemu_nbd_client_list).

use block::nbd::channel::Channel;
use block::nbd::client::{ExportInfo, Handshake};
use block::nbd::proto::{tflags, Mode};
use block::objects::tls_creds::TlsCredsX509;
use block::protocols::nbd::address::{tls_hostname, ServerAddress};
use block::protocols::nbd::connect_socket;
use block::Result;

use super::cli::{Listen, NbdOptions};

/// qemu-nbd's names of the transmission flags, by bit (bit 0, HAS_FLAGS, has none).
const FLAG_NAMES: [&str; 13] = [
    "",
    "readonly",
    "flush",
    "fua",
    "rotational",
    "trim",
    "zeroes",
    "df",
    "multi",
    "resize",
    "cache",
    "fast-zero",
    "block-status-payload",
];

/// Connects to the server the options name (over TLS with `tls`) and prints its exports.
pub async fn list(o: &NbdOptions, tls: Option<&TlsCredsX509>) -> Result<()> {
    let server = match o.listen() {
        Listen::Unix(path) => ServerAddress::Unix { path },
        Listen::Tcp { host, port } => ServerAddress::Inet {
            host: o.bind.clone().map_or_else(|| "localhost".into(), |_| host),
            port,
        },
    };
    let ch = Channel::new(connect_socket(&server).await?)?;
    let handshake = Handshake::start(&ch).await?;
    if let Some(creds) = tls {
        let hostname = tls_hostname(o.tls_option("--tls-hostname"), &server)?;
        handshake
            .start_tls(creds.client_config()?, &hostname)
            .await?;
    }
    let exports = handshake.list().await?;
    print!("{}", describe(&exports));
    Ok(())
}

/// The listing as qemu-nbd prints it.
fn describe(exports: &[ExportInfo]) -> String {
    let mut out = format!("exports available: {}\n", exports.len());
    for e in exports {
        out += &format!(" export: '{}'\n", e.name);
        if let Some(d) = e.description.as_deref().filter(|d| !d.is_empty()) {
            out += &format!("  description: {d}\n");
        }
        if e.flags & tflags::HAS_FLAGS != 0 {
            out += &format!("  size:  {}\n  flags: 0x{:x} (", e.size, e.flags);
            for (bit, name) in FLAG_NAMES.iter().enumerate().skip(1) {
                if e.flags & (1 << bit) != 0 {
                    out += &format!(" {name}");
                }
            }
            out += " )\n";
        }
        if e.min_block != 0 {
            out += &format!(
                "  min block: {}\n  opt block: {}\n  max block: {}\n",
                e.min_block, e.opt_block, e.max_block
            );
        }
        let size = if e.mode >= Mode::Extended {
            "64-bit"
        } else {
            "32-bit"
        };
        out += &format!("  transaction size: {size}\n");
        if !e.contexts.is_empty() {
            out += &format!("  available meta contexts: {}\n", e.contexts.len());
            for (_, name) in &e.contexts {
                out += &format!("   {name}\n");
            }
        }
    }
    out
}
