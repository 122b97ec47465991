//! The human monitor: `human-monitor-command` over QMP and `-monitor` readline sessions
//! (QEMU's monitor/hmp.c, monitor/hmp-cmds.c, block/monitor/block-hmp-cmds.c).
//!
//! Commands: `qemu-io [-d] DEVICE "COMMAND"` runs a qemu-io command line on a drive or node
//! with the same command set as rqemu-io (its reports go to stdout, as QEMU's printf, and its
//! errors are the command's reply), and `quit`. Others answer that they are unknown.

use std::io::{BufRead, BufReader, Write};

use block::aio::AioContextHandle;
use block::BlockBackend;
use serde_json::Value;

use super::channel::Connection;
use super::qmp::{Args, CmdResult};
use crate::tools::qemu_io::{commands, output, QemuIo};

/// Splits an HMP command line into words; a double-quoted word may contain spaces and the
/// escapes `\"`, `\\`, `\n`, `\r` (QEMU's get_str).
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            return Ok(words);
        };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated string".to_string()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => word.push('\n'),
                        Some('r') => word.push('\r'),
                        Some(c @ ('"' | '\\' | '\'')) => word.push(c),
                        Some(c) => return Err(format!("unsupported escape code: '\\{c}'")),
                        None => return Err("unterminated string".to_string()),
                    },
                    Some(c) => word.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        words.push(word);
    }
}

/// `qemu-io [-d] DEVICE COMMAND` (hmp_qemu_io): on a drive, or on a node through a
/// backend of its own.
async fn hmp_qemu_io(words: &[String]) -> String {
    let mut words = words.iter().skip(1);
    let mut device = words.next();
    if device.is_some_and(|d| d == "-d") {
        return "Error: qemu-io -d (by device id) is not supported by rqemu yet\n".to_string();
    }
    let (Some(name), Some(command)) = (device.take(), words.next()) else {
        return "Error: qemu-io: DEVICE and COMMAND are required\n".to_string();
    };
    let blk = match crate::drives::named_backends()
        .into_iter()
        .find(|(n, _)| n == name)
    {
        Some((_, blk)) => blk,
        None => match block::graph::find_node(name) {
            Some(bs) => BlockBackend::new(bs),
            None => {
                return format!("Error: Cannot find device='' nor node-name='{name}'\n");
            }
        },
    };
    let io = QemuIo::for_backend(blk);
    let ((), text) = output::capture(async {
        commands::run_line(&io, command).await;
    })
    .await;
    output::flush();
    text
}

/// Runs one HMP command line and returns what it prints (handle_hmp_command).
pub async fn run_command(line: &str) -> String {
    let words = match split_words(line) {
        Ok(w) => w,
        Err(e) => return format!("{e}\n"),
    };
    match words.first().map(String::as_str) {
        None => String::new(),
        Some("qemu-io") => hmp_qemu_io(&words).await,
        Some("quit" | "q") => {
            crate::runstate::request_stop();
            String::new()
        }
        Some(other) => format!("unknown command: '{other}'\n"),
    }
}

/// `human-monitor-command command-line [cpu-index]`: the HMP command's output as a string.
pub async fn human_monitor_command(mut args: Args) -> CmdResult {
    let line = args.str("command-line")?;
    args.opt_int("cpu-index")?;
    args.finish()?;
    Ok(Value::String(run_command(&line).await))
}

/// Serves a readline monitor (`-monitor stdio`): the banner, then a `(qemu) ` prompt before
/// every command line, echoed as a terminal would.
pub fn serve_readline(conn: Connection, main: &AioContextHandle) {
    let Connection { input, output } = conn;
    let output = std::sync::Arc::new(std::sync::Mutex::new(output));
    let write = |text: &str| {
        let mut out = crate::bus::lock(&output);
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    };
    write("QEMU 10.0.2 monitor - type 'help' for more information\n(qemu) ");
    for line in BufReader::new(input).lines() {
        let Ok(line) = line else { break };
        write(&format!("{line}\n"));
        let out = output.clone();
        super::run_on_main_loop(main, move || async move {
            let text = run_command(&line).await;
            let mut out = crate::bus::lock(&out);
            let _ = out.write_all(format!("{text}(qemu) ").as_bytes());
            let _ = out.flush();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_with_quotes_and_escapes() {
        assert_eq!(
            split_words(r#"qemu-io  drive0 "write -P 0x1 0 \"4k\"""#).unwrap(),
            ["qemu-io", "drive0", r#"write -P 0x1 0 "4k""#]
        );
        assert!(split_words(r#"qemu-io d "x"#).is_err());
    }
}
