//! `-chardev`, `-mon`, `-qmp`, `-monitor` and `-qtest`: the character devices a monitor or the
//! qtest protocol talks over (QEMU's chardev option parsing in chardev/char.c and
//! char-socket.c, monitor_parse and the `-qmp` shorthands of system/vl.c).

use block::Options;

use super::VmConfig;

use crate::error::MachineError;

/// Where a monitor or the qtest protocol reads and writes (a chardev backend).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChardevBackend {
    /// The process's stdin and stdout.
    Stdio,
    /// A connected stream socket inherited as a file descriptor (`fd=N`).
    SocketFd(i32),
    /// A unix socket at a path: listened on (`server=on`) or connected to.
    SocketPath {
        /// The socket's path.
        path: String,
        /// Listen and accept rather than connect.
        server: bool,
    },
    /// Discards output and never reads (`null`).
    Null,
}

/// One `-chardev` (its id and backend).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chardev {
    /// `id=`.
    pub id: String,
    /// What it connects to.
    pub backend: ChardevBackend,
}

/// The protocol a monitor speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MonitorMode {
    /// QMP (`mode=control`), optionally pretty-printed.
    Control {
        /// `-qmp-pretty` / `pretty=on`: indented responses.
        pretty: bool,
    },
    /// The human monitor (`mode=readline`, `-monitor`).
    Readline,
}

/// One monitor: its chardev and protocol (QEMU's MonitorOptions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Where it talks.
    pub backend: ChardevBackend,
    /// What it speaks.
    pub mode: MonitorMode,
}

/// `-chardev socket,id=,path=|fd=,server=on,wait=off`, `stdio,id=`, `null,id=`.
pub(super) fn parse_chardev_option(cfg: &mut VmConfig, arg: &str) -> Result<(), MachineError> {
    let mut opts = Options::parse_keyval(arg, Some("backend"))
        .map_err(|e| MachineError::Config(e.to_string()))?;
    let kind = opts.take("backend").unwrap_or_default();
    let Some(id) = opts.take("id") else {
        return Err(MachineError::Config("chardev: no id specified".to_string()));
    };
    if cfg.chardevs.iter().any(|c| c.id == id) {
        return Err(MachineError::Config(format!(
            "attempt to add duplicate property '{id}' to object (type 'container')"
        )));
    }
    let backend = match kind.as_str() {
        "stdio" => ChardevBackend::Stdio,
        "null" => ChardevBackend::Null,
        "socket" => parse_socket(&mut opts)?,
        other => {
            return Err(MachineError::Config(format!(
                "'{other}' is not a valid char driver name"
            )))
        }
    };
    opts.take("signal"); // stdio's signal=off: rqemu never turns ^C into a signal there
    if let Some(key) = opts.first_key() {
        return Err(MachineError::Config(format!("Invalid parameter '{key}'")));
    }
    cfg.chardevs.push(Chardev { id, backend });
    Ok(())
}

fn parse_socket(opts: &mut Options) -> Result<ChardevBackend, MachineError> {
    let err = |e: block::Error| MachineError::Config(e.to_string());
    let server = opts.take_bool("server").map_err(err)?.unwrap_or(false);
    // wait=on would block start-up until a client connects; rqemu accepts in the background,
    // which is what wait=off asks for.
    if opts.take_bool("wait").map_err(err)? == Some(true) && server {
        return Err(MachineError::Config(
            "wait=on is not supported by rqemu (use wait=off)".to_string(),
        ));
    }
    match (opts.take("fd"), opts.take("path")) {
        (Some(fd), None) => fd
            .parse::<i32>()
            .ok()
            .filter(|&fd| fd >= 0)
            .map(ChardevBackend::SocketFd)
            .ok_or_else(|| {
                MachineError::Config(format!(
                    "Parameter 'fd' expects a file descriptor, got '{fd}'"
                ))
            }),
        (None, Some(path)) => Ok(ChardevBackend::SocketPath { path, server }),
        (Some(_), Some(_)) => Err(MachineError::Config(
            "'path' and 'fd' are mutually exclusive".to_string(),
        )),
        (None, None) if opts.contains("host") => Err(MachineError::Config(
            "TCP sockets are not supported by rqemu (use path= or fd=)".to_string(),
        )),
        (None, None) => Err(MachineError::Config(
            "chardev: socket: no address specified".to_string(),
        )),
    }
}

/// The backend a `-chardev` id names.
fn chardev_by_id(cfg: &VmConfig, id: &str) -> Result<ChardevBackend, MachineError> {
    cfg.chardevs
        .iter()
        .find(|c| c.id == id)
        .map(|c| c.backend.clone())
        .ok_or_else(|| MachineError::Config(format!("chardev \"{id}\" not found")))
}

/// A `-qmp`/`-monitor`/`-qtest` shorthand: `stdio`, `unix:PATH[,server=on,wait=off]`,
/// `chardev:ID`, `null`; `None` for `none`.
fn parse_shorthand(cfg: &VmConfig, arg: &str) -> Result<Option<ChardevBackend>, MachineError> {
    if arg == "none" {
        return Ok(None);
    }
    if let Some(id) = arg.strip_prefix("chardev:") {
        return chardev_by_id(cfg, id).map(Some);
    }
    if let Some(rest) = arg.strip_prefix("unix:") {
        let mut opts = Options::parse_keyval(rest, Some("path"))
            .map_err(|e| MachineError::Config(e.to_string()))?;
        return parse_socket(&mut opts).map(Some);
    }
    match arg {
        "stdio" => Ok(Some(ChardevBackend::Stdio)),
        "null" => Ok(Some(ChardevBackend::Null)),
        _ => Err(MachineError::Config(format!(
            "'{arg}' is not a valid char driver"
        ))),
    }
}

/// `-mon chardev=ID,mode=control|readline[,pretty=on]`.
pub(super) fn parse_mon(cfg: &mut VmConfig, arg: &str) -> Result<(), MachineError> {
    let mut opts = Options::parse_keyval(arg, Some("chardev"))
        .map_err(|e| MachineError::Config(e.to_string()))?;
    let Some(id) = opts.take("chardev") else {
        return Err(MachineError::Config(
            "Parameter 'chardev' is missing".to_string(),
        ));
    };
    let pretty = opts
        .take_bool("pretty")
        .map_err(|e| MachineError::Config(e.to_string()))?
        .unwrap_or(false);
    let mode = match opts.take("mode").as_deref() {
        Some("control") => MonitorMode::Control { pretty },
        None | Some("readline") => MonitorMode::Readline,
        Some(other) => {
            return Err(MachineError::Config(format!(
                "unknown monitor mode '{other}'"
            )))
        }
    };
    if let Some(key) = opts.first_key() {
        return Err(MachineError::Config(format!("Invalid parameter '{key}'")));
    }
    let backend = chardev_by_id(cfg, &id)?;
    cfg.monitors.push(MonitorConfig { backend, mode });
    Ok(())
}

/// `-qmp ADDR`, `-qmp-pretty ADDR` and `-monitor ADDR`.
pub(super) fn parse_monitor_shorthand(
    cfg: &mut VmConfig,
    arg: &str,
    mode: MonitorMode,
) -> Result<(), MachineError> {
    if let Some(backend) = parse_shorthand(cfg, arg)? {
        cfg.monitors.push(MonitorConfig { backend, mode });
    }
    Ok(())
}

/// `-qtest chardev:ID` or `-qtest unix:PATH`: where the qtest protocol is spoken.
pub(super) fn parse_qtest(cfg: &mut VmConfig, arg: &str) -> Result<(), MachineError> {
    cfg.qtest = parse_shorthand(cfg, arg)?;
    Ok(())
}
