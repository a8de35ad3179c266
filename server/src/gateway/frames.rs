//! Splits a streaming request body (concatenated JSON objects, as grpc-gateway's streaming
//! calls take them) into messages as bytes arrive. Each byte is looked at once, however the
//! body is chunked, and a message longer than the cap is refused as soon as it is. Knows
//! nothing of what the messages mean: callers parse each one.

/// Why the body cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A message grew past the cap.
    TooLarge,
    /// Not a JSON object where one must start.
    Malformed(String),
}

/// The framer's state between chunks.
#[derive(Debug)]
pub struct JsonFrames {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    /// Where the current message starts in `buf`, once its `{` was seen.
    start: Option<usize>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    cap: usize,
}

impl JsonFrames {
    /// A framer refusing messages longer than `cap` bytes.
    pub fn new(cap: usize) -> Self {
        JsonFrames { buf: Vec::new(), scanned: 0, start: None, depth: 0, in_string: false, escaped: false, cap }
    }

    /// Add the next chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete message, `None` until more bytes arrive.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        while self.scanned < self.buf.len() {
            let i = self.scanned;
            let b = self.buf[i];
            self.scanned += 1;
            let Some(start) = self.start else {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => continue,
                    b'{' => {
                        self.start = Some(i);
                        self.depth = 1;
                        continue;
                    }
                    other => {
                        return Err(FrameError::Malformed(format!(
                            "invalid character {:?} looking for beginning of object",
                            other as char
                        )))
                    }
                }
            };
            if i - start + 1 > self.cap {
                return Err(FrameError::TooLarge);
            }
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        // The buffer is compacted once per chunk (below), not per message.
                        self.start = None;
                        return Ok(Some(self.buf[start..=i].to_vec()));
                    }
                }
                _ => {}
            }
        }
        // Everything scanned: keep only the pending message's bytes.
        let keep = self.start.unwrap_or(self.buf.len());
        self.buf.drain(..keep);
        self.scanned -= keep;
        self.start = self.start.map(|_| 0);
        Ok(None)
    }

    /// Whether part of a message is still waiting for its end (at the end of the body,
    /// an unexpected EOF).
    pub fn pending(&self) -> bool {
        self.start.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(body: &[u8], chunk: usize, cap: usize) -> (Vec<String>, Result<bool, FrameError>) {
        let mut f = JsonFrames::new(cap);
        let mut out = Vec::new();
        for c in body.chunks(chunk.max(1)) {
            f.push(c);
            loop {
                match f.next_message() {
                    Ok(Some(m)) => out.push(String::from_utf8_lossy(&m).into_owned()),
                    Ok(None) => break,
                    Err(e) => return (out, Err(e)),
                }
            }
        }
        (out, Ok(f.pending()))
    }

    #[test]
    fn messages_come_out_whole_however_the_body_is_cut() {
        let body = br#" {"a":"}{\"\\"} {"b":[1,{"c":"]"}]}
{"d":{}}"#;
        let want = vec![r#"{"a":"}{\"\\"}"#.to_string(), r#"{"b":[1,{"c":"]"}]}"#.into(), r#"{"d":{}}"#.into()];
        for chunk in 1..body.len() + 1 {
            assert_eq!(all(body, chunk, 1 << 20), (want.clone(), Ok(false)), "chunks of {chunk}");
        }
        assert_eq!(all(br#"{"a":1} {"b""#, 3, 100).1, Ok(true), "a message cut by the end of the body");
        assert!(matches!(all(b"{} 7", 1, 100).1, Err(FrameError::Malformed(_))));
    }

    #[test]
    fn a_message_over_the_cap_is_refused_as_it_grows() {
        let long = format!("{{\"k\":\"{}\"}}", "x".repeat(100));
        assert_eq!(all(long.as_bytes(), 7, 50).1, Err(FrameError::TooLarge));
        assert_eq!(all(long.as_bytes(), 7, long.len()).0.len(), 1);
        // Whitespace between messages does not count.
        let spaced = format!("{}{long}", " ".repeat(500));
        assert_eq!(all(spaced.as_bytes(), 64, long.len()).0.len(), 1);
    }

    /// A 1 MiB message fed a byte at a time is scanned once (it was re-parsed from its start
    /// on every chunk: ~10^12 byte visits), and 100,000 small messages in one chunk are not
    /// moved once per message.
    #[test]
    fn byte_by_byte_input_and_many_messages_are_linear() {
        let big = format!("{{\"k\":\"{}\"}}", "y".repeat(1 << 20));
        let (out, end) = all(big.as_bytes(), 1, 2 << 20);
        assert_eq!((out.len(), end), (1, Ok(false)));
        let many = "{\"a\":1} ".repeat(100_000);
        let (out, end) = all(many.as_bytes(), many.len(), 64);
        assert_eq!((out.len(), end), (100_000, Ok(false)));
    }
}
