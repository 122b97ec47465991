//! Command lines from standard input, read without stopping the loop (qemu-io.c's stdin fd
//! handler and fetchline).
//!
//! qemu-io waits for its next command inside the main loop, so asynchronous requests keep
//! completing (and reporting) while the user types. Here a reader thread does the blocking
//! `read` and hands whole lines to the loop thread, whose coroutine awaits them like any other
//! event. Making stdin itself non-blocking is avoided: the descriptor is usually shared with
//! the shell or terminal that started us.

use std::collections::VecDeque;
use std::future::Future;
use std::io::BufRead;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct Shared {
    /// Lines read so far; `None` marks the end of input.
    lines: VecDeque<Option<String>>,
    waker: Option<Waker>,
}

/// A source of command lines fed by a reader thread.
pub struct LineReader {
    shared: Arc<Mutex<Shared>>,
}

/// Reads one line as `fgets` would, without its newline; None at end of input.
pub fn fetchline(input: &mut impl BufRead) -> Option<String> {
    let mut line = Vec::new();
    match input.read_until(b'\n', &mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => {
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            Some(String::from_utf8_lossy(&line).into_owned())
        }
    }
}

impl LineReader {
    /// Starts reading standard input on a thread of its own.
    pub fn stdin() -> LineReader {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let feed = shared.clone();
        std::thread::Builder::new()
            .name("qemu-io stdin".into())
            .spawn(move || {
                let mut input = std::io::stdin().lock();
                loop {
                    let line = fetchline(&mut input);
                    let end = line.is_none();
                    let mut s = feed.lock().unwrap();
                    s.lines.push_back(line);
                    if let Some(w) = s.waker.take() {
                        w.wake();
                    }
                    if end {
                        break;
                    }
                }
            })
            .expect("spawning the stdin reader thread");
        LineReader { shared }
    }

    /// Waits for the next line; None at end of input.
    pub fn next_line(&self) -> impl Future<Output = Option<String>> + '_ {
        NextLine { reader: self }
    }
}

struct NextLine<'a> {
    reader: &'a LineReader,
}

impl Future for NextLine<'_> {
    type Output = Option<String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        let mut s = self.reader.shared.lock().unwrap();
        match s.lines.front() {
            // The end of input stays queued, so every later call sees it too.
            Some(None) => Poll::Ready(None),
            Some(Some(_)) => Poll::Ready(s.lines.pop_front().flatten()),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetchline_strips_one_newline() {
        let mut input: &[u8] = b"read 0 1\n\nlast";
        assert_eq!(fetchline(&mut input).as_deref(), Some("read 0 1"));
        assert_eq!(fetchline(&mut input).as_deref(), Some(""));
        assert_eq!(fetchline(&mut input).as_deref(), Some("last"));
        assert_eq!(fetchline(&mut input), None);
    }
}
