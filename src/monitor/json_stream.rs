//! Splitting a monitor's byte stream into JSON texts (QEMU's qobject/json-streamer.c and
//! json-lexer.c).
//!
//! A client may send several messages in one write or one message in many, with or without
//! newlines between them, so the stream is cut where the brackets opened by a message
//! close again, counting only brackets outside strings. Each piece is then parsed on its
//! own: a malformed message costs an error reply, not the connection.

/// The most bytes one message may have (QEMU's MAX_TOKEN_SIZE): a larger one is dropped.
const MAX_MESSAGE: usize = 64 << 20;
/// The deepest bracket nesting accepted (QEMU's MAX_NESTING).
const MAX_NESTING: usize = 1024;

/// One cut out of the stream.
#[derive(Debug, PartialEq)]
pub enum Piece {
    /// A complete JSON text.
    Message(Vec<u8>),
    /// Bytes that cannot start or continue a message (too big, too deep, a stray closer).
    Garbage(String),
}

/// The splitter's state between reads.
#[derive(Default)]
pub struct JsonStream {
    buf: Vec<u8>,
    depth: usize,
    /// The quote that opened the string being read (QEMU also takes 'single quotes').
    in_string: Option<u8>,
    escaped: bool,
}

impl JsonStream {
    /// Feeds bytes; returns the pieces they complete.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Piece> {
        let mut pieces = Vec::new();
        for &b in data {
            if self.buf.is_empty() && self.depth == 0 && b.is_ascii_whitespace() {
                continue;
            }
            self.buf.push(b);
            if let Some(piece) = self.step(b) {
                pieces.push(piece);
            }
        }
        pieces
    }

    fn reset(&mut self) -> Vec<u8> {
        self.depth = 0;
        self.in_string = None;
        self.escaped = false;
        std::mem::take(&mut self.buf)
    }

    fn step(&mut self, b: u8) -> Option<Piece> {
        if self.buf.len() > MAX_MESSAGE {
            self.reset();
            return Some(Piece::Garbage("JSON token size limit exceeded".into()));
        }
        if let Some(quote) = self.in_string {
            match (self.escaped, b) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b) if b == quote => self.in_string = None,
                _ => {}
            }
            return None;
        }
        match b {
            b'"' | b'\'' => self.in_string = Some(b),
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth > MAX_NESTING {
                    self.reset();
                    return Some(Piece::Garbage("JSON nesting depth limit exceeded".into()));
                }
            }
            b'}' | b']' if self.depth == 0 => {
                self.reset();
                return Some(Piece::Garbage("JSON parse error, expecting value".into()));
            }
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == 0 {
                    return Some(Piece::Message(self.reset()));
                }
            }
            // A scalar at the top level (`1`, `true`) ends at whitespace.
            _ if self.depth == 0 && b.is_ascii_whitespace() => {
                return Some(Piece::Message(self.reset()));
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(pieces: Vec<Piece>) -> Vec<String> {
        pieces
            .into_iter()
            .map(|p| match p {
                Piece::Message(m) => String::from_utf8(m).unwrap(),
                Piece::Garbage(e) => format!("!{e}"),
            })
            .collect()
    }

    #[test]
    fn messages_split_at_closing_brackets_across_reads() {
        let mut s = JsonStream::default();
        assert!(s
            .feed(br#"{"execute": "a", 'y': '"}', "x": "}{"#)
            .is_empty());
        let out = messages(s.feed(b"\"}\n{\"execute\":\"b\"}{\"c\":[1]}"));
        assert_eq!(
            out,
            [
                r#"{"execute": "a", "x": "}{"}"#,
                r#"{"execute":"b"}"#,
                r#"{"c":[1]}"#
            ]
        );
    }

    #[test]
    fn stray_closers_and_deep_nesting_are_garbage() {
        let mut s = JsonStream::default();
        assert_eq!(
            messages(s.feed(b"}")),
            ["!JSON parse error, expecting value"]
        );
        let deep = vec![b'['; MAX_NESTING + 1];
        assert_eq!(
            messages(s.feed(&deep)),
            ["!JSON nesting depth limit exceeded"]
        );
        assert_eq!(messages(s.feed(b"{}")), ["{}"]);
    }
}
