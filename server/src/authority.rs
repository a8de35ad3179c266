//! Mends the `:authority` of incoming HTTP/2 requests that Rust's h2 would refuse.
//!
//! etcdctl 3.4 (clientv3 3.4) dials an endpoint given as a URL with that URL as the HTTP/2
//! authority: `etcdctl --endpoints=http://10.0.0.1:2379 endpoint status` (also `hashkv`,
//! `defrag`, `move-leader`) sends `:authority: http://10.0.0.1:2379`. Go's server accepts
//! it; h2 resets the stream with PROTOCOL_ERROR ("malformed authority"), so the command
//! fails against Cairn. This sits under h2 in the connection's read path
//! ([`crate::conn`]): it decodes the client's first header block and, when its authority is
//! fine (every client but those), steps aside for the rest of the connection at no cost.
//! Otherwise it decodes every header block of the connection with the client's HPACK
//! state, puts `host:port` in place of the URL, and encodes the block again with an HPACK
//! state of its own (which is what the server's decoder then follows), framing it as
//! HEADERS and CONTINUATION frames; every other frame passes as it came.

use loona_hpack::{Decoder, Encoder};
use std::io;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's minimum).
const MAX_FRAME: usize = 16_384;
/// The largest header block assembled (a client sending more is cut off).
const MAX_BLOCK: usize = 1 << 20;

#[derive(Debug)]
enum Scan {
    /// Matching the client preface (bytes matched).
    Preface(usize),
    /// Reading a frame header (bytes of it so far).
    Header([u8; FRAME_HEADER], usize),
    /// Passing a frame's payload on (bytes left).
    Pass(usize),
    /// Collecting a HEADERS or CONTINUATION payload (its header, bytes left).
    Collect([u8; FRAME_HEADER], usize),
}

/// A header block being assembled.
struct Block {
    stream: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as they came (passed on unchanged if the first block needs no mending).
    original: Vec<u8>,
}

/// The inbound byte stream of one connection, mended (see the module docs).
pub struct Mend {
    scan: Scan,
    payload: Vec<u8>,
    block: Option<Block>,
    decoder: Decoder<'static>,
    /// Set once a block needed mending: every later block is encoded again.
    encoder: Option<Encoder<'static>>,
    /// Nothing to mend on this connection: the caller may drop this.
    done: bool,
}

impl Default for Mend {
    fn default() -> Self {
        Mend {
            scan: Scan::Preface(0),
            payload: Vec::new(),
            block: None,
            decoder: Decoder::new(),
            encoder: None,
            done: false,
        }
    }
}

/// The authority to use instead of `value`, if `value` is not one h2 accepts: the
/// `host:port` of a URL, or nothing (the header is dropped) when even that is not valid.
fn mended(value: &[u8]) -> Option<Option<Vec<u8>>> {
    if axum::http::uri::Authority::try_from(value).is_ok() {
        return None;
    }
    let rest = value.windows(3).position(|w| w == b"://").map_or(value, |i| &value[i + 3..]);
    let host = rest.split(|b| *b == b'/').next().unwrap_or_default();
    Some(axum::http::uri::Authority::try_from(host).is_ok().then(|| host.to_vec()))
}

impl Mend {
    /// Nothing more to mend: the rest of the connection may bypass this.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Mend `input`, appending what the server should read to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        while !input.is_empty() {
            if self.done {
                out.extend_from_slice(input);
                return Ok(());
            }
            match &mut self.scan {
                Scan::Preface(matched) => {
                    let n = (PREFACE.len() - *matched).min(input.len());
                    if input[..n] != PREFACE[*matched..*matched + n] {
                        // Not HTTP/2 (the JSON gateway over HTTP/1.1): nothing to do.
                        self.done = true;
                        continue;
                    }
                    out.extend_from_slice(&input[..n]);
                    *matched += n;
                    input = &input[n..];
                    if *matched == PREFACE.len() {
                        self.scan = Scan::Header([0; FRAME_HEADER], 0);
                    }
                }
                Scan::Header(head, have) => {
                    let n = (FRAME_HEADER - *have).min(input.len());
                    head[*have..*have + n].copy_from_slice(&input[..n]);
                    *have += n;
                    input = &input[n..];
                    if *have < FRAME_HEADER {
                        continue;
                    }
                    let head = *head;
                    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                    if head[3] == HEADERS || head[3] == CONTINUATION {
                        self.payload.clear();
                        self.scan = Scan::Collect(head, len);
                        if len == 0 {
                            self.frame_collected(head, out)?;
                        }
                    } else {
                        if self.block.is_some() {
                            return Err(io::Error::other("a header block interrupted by another frame"));
                        }
                        out.extend_from_slice(&head);
                        self.scan = if len == 0 { Scan::Header([0; FRAME_HEADER], 0) } else { Scan::Pass(len) };
                    }
                }
                Scan::Pass(left) => {
                    let n = (*left).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    *left -= n;
                    input = &input[n..];
                    if *left == 0 {
                        self.scan = Scan::Header([0; FRAME_HEADER], 0);
                    }
                }
                Scan::Collect(head, left) => {
                    let n = (*left).min(input.len());
                    self.payload.extend_from_slice(&input[..n]);
                    *left -= n;
                    input = &input[n..];
                    if *left == 0 {
                        let head = *head;
                        self.frame_collected(head, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A whole HEADERS or CONTINUATION frame is in `self.payload`.
    fn frame_collected(&mut self, head: [u8; FRAME_HEADER], out: &mut Vec<u8>) -> io::Result<()> {
        self.scan = Scan::Header([0; FRAME_HEADER], 0);
        let (kind, flags) = (head[3], head[4]);
        let stream = [head[5], head[6], head[7], head[8]];
        let mut p = &self.payload[..];
        let malformed = || io::Error::other("a malformed HEADERS frame");
        if kind == HEADERS {
            if self.block.is_some() {
                return Err(io::Error::other("HEADERS before the previous header block ended"));
            }
            let pad = if flags & PADDED != 0 {
                let (&pad, rest) = p.split_first().ok_or_else(malformed)?;
                p = rest;
                usize::from(pad)
            } else {
                0
            };
            let priority = if flags & PRIORITY != 0 {
                let (prio, rest) = p.split_at_checked(5).ok_or_else(malformed)?;
                p = rest;
                let mut b = [0; 5];
                b.copy_from_slice(prio);
                Some(b)
            } else {
                None
            };
            let fragment = p.get(..p.len().checked_sub(pad).ok_or_else(malformed)?).ok_or_else(malformed)?;
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
                original: Vec::new(),
            });
        } else {
            let Some(block) = self.block.as_mut().filter(|b| b.stream == stream) else {
                return Err(io::Error::other("CONTINUATION without its HEADERS"));
            };
            block.fragment.extend_from_slice(p);
        }
        let Some(block) = self.block.as_mut() else { return Ok(()) };
        block.original.extend_from_slice(&head);
        block.original.extend_from_slice(&self.payload);
        if block.fragment.len() > MAX_BLOCK {
            return Err(io::Error::other("a header block larger than 1 MiB"));
        }
        if flags & END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.block_done(block, out)?;
            }
        }
        Ok(())
    }

    /// A whole header block: passed on as it came, or encoded again with its authority
    /// mended.
    fn block_done(&mut self, block: Block, out: &mut Vec<u8>) -> io::Result<()> {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut bad = false;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                if &*name == b":authority" {
                    match mended(&value) {
                        None => headers.push((name.into_owned(), value.into_owned())),
                        Some(fixed) => {
                            bad = true;
                            if let Some(v) = fixed {
                                headers.push((name.into_owned(), v));
                            }
                        }
                    }
                } else {
                    headers.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| io::Error::other(format!("an undecodable header block: {e:?}")))?;
        if self.encoder.is_none() {
            if !bad {
                // The first block needs nothing: neither will the rest of this connection.
                out.extend_from_slice(&block.original);
                self.done = true;
                return Ok(());
            }
            tracing::debug!("mending the :authority of a client that sends a URL there (etcdctl 3.4)");
            self.encoder = Some(Encoder::new());
        }
        let Some(encoder) = self.encoder.as_mut() else { return Ok(()) };
        let fragment = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        write_block(&block, &fragment, out);
        Ok(())
    }
}

/// `fragment` as a HEADERS frame and as many CONTINUATION frames as it needs.
fn write_block(block: &Block, fragment: &[u8], out: &mut Vec<u8>) {
    let prio = block.priority.map_or(0, |_| 5);
    let first = fragment.len().min(MAX_FRAME - prio);
    let mut flags = if block.end_stream { END_STREAM } else { 0 };
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if first == fragment.len() {
        flags |= END_HEADERS;
    }
    frame_header(out, first + prio, HEADERS, flags, block.stream);
    if let Some(p) = block.priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(&fragment[..first]);
    let mut rest = &fragment[first..];
    while !rest.is_empty() {
        let n = rest.len().min(MAX_FRAME);
        let flags = if n == rest.len() { END_HEADERS } else { 0 };
        frame_header(out, n, CONTINUATION, flags, block.stream);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: [u8; 4]) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client connection's bytes: the preface, a SETTINGS frame, then one HEADERS frame
    /// per block (encoded with one HPACK state, as a client's encoder does) and a DATA
    /// frame after each.
    fn client_bytes(blocks: &[Vec<(&str, &str)>]) -> Vec<u8> {
        let mut enc = Encoder::new();
        let mut out = PREFACE.to_vec();
        frame_header(&mut out, 0, 0x4, 0, [0; 4]);
        for (i, headers) in blocks.iter().enumerate() {
            let stream = [0, 0, 0, (2 * i + 1) as u8];
            let frag = enc.encode(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
            frame_header(&mut out, frag.len(), HEADERS, END_HEADERS, stream);
            out.extend_from_slice(&frag);
            frame_header(&mut out, 3, 0x0, END_STREAM, stream);
            out.extend_from_slice(b"abc");
        }
        out
    }

    /// The header blocks the server would decode from `bytes`.
    fn server_reads(bytes: &[u8]) -> Vec<Vec<(String, String)>> {
        let mut dec = Decoder::new();
        let mut p = &bytes[PREFACE.len()..];
        let mut blocks = Vec::new();
        let mut fragment = Vec::new();
        while !p.is_empty() {
            let len = usize::from(p[0]) << 16 | usize::from(p[1]) << 8 | usize::from(p[2]);
            let (kind, flags) = (p[3], p[4]);
            let payload = &p[FRAME_HEADER..FRAME_HEADER + len];
            if kind == HEADERS || kind == CONTINUATION {
                fragment.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    let mut hs = Vec::new();
                    dec.decode_with_cb(&fragment, |n, v| {
                        hs.push((String::from_utf8_lossy(&n).into_owned(), String::from_utf8_lossy(&v).into_owned()))
                    })
                    .expect("the server decodes what it reads");
                    blocks.push(hs);
                    fragment.clear();
                }
            } else {
                assert!(kind != 0x0 || payload == b"abc", "DATA passes unchanged");
            }
            p = &p[FRAME_HEADER + len..];
        }
        blocks
    }

    /// Feed `bytes` in chunks of `chunk`.
    fn mend(bytes: &[u8], chunk: usize) -> (Vec<u8>, bool) {
        let mut m = Mend::default();
        let mut out = Vec::new();
        for c in bytes.chunks(chunk) {
            m.feed(c, &mut out).expect("mends");
        }
        (out, m.done())
    }

    fn request(authority: &str) -> Vec<(&str, &str)> {
        vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.Maintenance/Status"),
            (":authority", authority),
            ("te", "trailers"),
        ]
    }

    #[test]
    fn a_good_authority_passes_byte_for_byte_and_the_mender_steps_aside() {
        let bytes = client_bytes(&[request("127.0.0.1:2379"), request("127.0.0.1:2379")]);
        for chunk in [1, 7, 4096] {
            let (out, done) = mend(&bytes, chunk);
            assert_eq!(out, bytes, "chunk {chunk}");
            assert!(done);
        }
    }

    #[test]
    fn a_url_authority_becomes_host_and_port_in_every_block() {
        let blocks = [request("http://127.0.0.1:2379"), request("http://127.0.0.1:2379"), request("10.0.0.1:2379")];
        let bytes = client_bytes(&blocks);
        for chunk in [1, 5, 4096] {
            let (out, done) = mend(&bytes, chunk);
            assert!(!done);
            let read = server_reads(&out);
            assert_eq!(read.len(), 3);
            let authorities: Vec<&str> = read
                .iter()
                .map(|b| b.iter().find(|(n, _)| n == ":authority").map_or("", |(_, v)| v.as_str()))
                .collect();
            assert_eq!(authorities, ["127.0.0.1:2379", "127.0.0.1:2379", "10.0.0.1:2379"], "chunk {chunk}");
            assert_eq!(read[1].len(), 5, "the other headers are kept");
            assert_eq!(read[1][2], (":path".to_string(), "/etcdserverpb.Maintenance/Status".to_string()));
        }
    }

    #[test]
    fn large_blocks_are_split_into_continuations_and_odd_authorities_dropped() {
        let big = "x".repeat(40_000);
        let mut first = request("https://[::1]:2379/path");
        first.push(("big", &big));
        let bytes = client_bytes(&[first, request("not a host://")]);
        let (out, _) = mend(&bytes, 1000);
        let read = server_reads(&out);
        assert_eq!(read[0][3], (":authority".to_string(), "[::1]:2379".to_string()));
        assert_eq!(read[0][5].1.len(), 40_000);
        assert!(!read[1].iter().any(|(n, _)| n == ":authority"), "an authority that cannot be mended is dropped");
    }

    #[test]
    fn http1_and_garbage_pass_untouched() {
        for bytes in [&b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0xff; 100][..]] {
            let (out, done) = mend(bytes, 3);
            assert_eq!(out, bytes);
            assert!(done);
        }
    }
}
