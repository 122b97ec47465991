//! Character backends: where a guest's byte streams (serial console, debug console) meet
//! the host's stdin, stdout and files (QEMU's chardev/char-stdio.c, char-file.c).
//!
//! Outputs are opened once per run and shared by every machine a guest reset builds, so a
//! `file:` log keeps growing across reboots; the one stdin reader thread is re-pointed at the
//! new machine's device.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::bus::{lock, Bql};

/// Where a character stream (serial port, debug console) goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CharBackend {
    /// The process's stdout (and stdin for input).
    Stdio,
    /// Appended to a file created or truncated at start.
    File(PathBuf),
    /// Discarded.
    Null,
    /// Not connected at all (`none`).
    None,
}

/// `stdio`, `file:PATH`, `null`, `none` (QEMU's -serial / -debugcon character backends).
pub fn parse_chardev(arg: &str) -> Result<CharBackend, String> {
    match arg {
        "stdio" => Ok(CharBackend::Stdio),
        "null" => Ok(CharBackend::Null),
        "none" => Ok(CharBackend::None),
        _ => match arg.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(CharBackend::File(PathBuf::from(path))),
            _ => Err(format!("'{arg}' is not a valid char driver")),
        },
    }
}

/// Where output bytes of a character device go; every write is flushed, so the host sees
/// a guest's line as soon as the guest sent it.
#[derive(Clone)]
pub enum CharOut {
    /// The process's stdout.
    Stdout,
    /// A file, shared so that it outlives a machine reset.
    File(Arc<File>),
    /// Nowhere.
    Null,
}

impl CharOut {
    /// Opens the output side of a backend (`file:` paths are created or truncated).
    pub fn open(backend: &CharBackend) -> io::Result<CharOut> {
        Ok(match backend {
            CharBackend::Stdio => CharOut::Stdout,
            CharBackend::File(path) => CharOut::File(Arc::new(File::create(path)?)),
            CharBackend::Null | CharBackend::None => CharOut::Null,
        })
    }
}

impl Write for CharOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            CharOut::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf)?;
                out.flush()?;
            }
            CharOut::File(f) => (&**f).write_all(buf)?,
            CharOut::Null => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            CharOut::Stdout => io::stdout().flush(),
            _ => Ok(()),
        }
    }
}

/// A device that takes input bytes (QEMU's chardev "frontend"), e.g. a UART's receive FIFO.
pub trait CharReceiver: Send {
    /// Queues received bytes; returns how many fit.
    fn receive(&mut self, bytes: &[u8]) -> usize;
}

/// Where stdin's bytes go: the frontend of the machine currently running. A guest reset
/// builds a new machine; [`CharInput::connect`] points the one stdin reader at its device.
#[derive(Clone, Default)]
pub struct CharInput(Arc<Mutex<Option<InputTarget>>>);

/// A machine's device lock and the receiving device.
type InputTarget = (Bql, Arc<Mutex<dyn CharReceiver>>);

impl CharInput {
    /// Sends further input to `port`, delivered under `bql`.
    pub fn connect(&self, bql: Bql, port: Arc<Mutex<dyn CharReceiver>>) {
        *lock(&self.0) = Some((bql, port));
    }

    /// Hands as much of `bytes` to the device as it takes; 0 when none is connected.
    fn deliver(&self, bytes: &[u8]) -> usize {
        let Some((bql, port)) = lock(&self.0).clone() else {
            return 0;
        };
        let _bql = bql.lock();
        let taken = lock(&port).receive(bytes);
        taken
    }
}

/// Starts the thread that copies stdin to the connected device (QEMU's stdio chardev);
/// while the device is full, or no machine is connected, the thread waits.
pub fn spawn_stdin_reader(input: CharInput) {
    let spawned = std::thread::Builder::new()
        .name("serial-stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            let stdin = io::stdin();
            while let Ok(n @ 1..) = stdin.lock().read(&mut buf) {
                let mut pending = &buf[..n];
                while !pending.is_empty() {
                    let taken = input.deliver(pending);
                    pending = &pending[taken..];
                    if taken == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("rqemu: warning: no serial input: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fifo(Vec<u8>, usize);
    impl CharReceiver for Fifo {
        fn receive(&mut self, bytes: &[u8]) -> usize {
            let n = bytes.len().min(self.1 - self.0.len());
            self.0.extend_from_slice(&bytes[..n]);
            n
        }
    }

    #[test]
    fn input_goes_to_the_connected_device_as_far_as_it_takes() {
        let input = CharInput::default();
        assert_eq!(input.deliver(b"lost"), 0, "nothing connected yet");
        let fifo = Arc::new(Mutex::new(Fifo(Vec::new(), 3)));
        input.connect(Bql::default(), fifo.clone());
        assert_eq!(input.deliver(b"abcd"), 3);
        assert_eq!(fifo.lock().unwrap().0, b"abc");
    }

    #[test]
    fn file_outputs_are_shared_by_clones() {
        let path = std::env::temp_dir().join(format!("rqemu-chardev-{}", std::process::id()));
        let mut a = CharOut::open(&CharBackend::File(path.clone())).unwrap();
        let mut b = a.clone();
        a.write_all(b"one ").unwrap();
        b.write_all(b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one two");
        std::fs::remove_file(&path).unwrap();
    }
}
