//! Makes the `:authority` of gRPC clients on the unix socket acceptable to
//! the HTTP/2 server. gRPC C-core clients (Python `grpcio` and friends) send
//! the socket path as `:authority`, percent-encoded (`%2Fcsi%2Fcsi.sock`) or
//! raw, and so does grpc-java (`/csi/csi.sock`); the `h2` crate under tonic
//! rejects such a value while decoding the request headers and resets the
//! stream with PROTOCOL_ERROR before any of our code runs (hyperium/h2#487,
//! hyperium/tonic#243, grpc/grpc#38142). [`AuthorityRewrite`] wraps each
//! accepted unix connection: its read side follows the client's HTTP/2
//! frames, HPACK-decodes every header block with a decoder that tracks the
//! client's dynamic table, and re-encodes a block whose `:authority` is not
//! a URI authority with `localhost` in its place, as literals that never
//! touch the server's HPACK table. Once one block has been re-encoded, the
//! server's table no longer mirrors the client's, so every later block of
//! that connection is re-encoded too. Every other frame, and the whole
//! write side, passes through untouched; a connection whose clients send
//! proper authorities (Go clients send `localhost`) stays byte-identical.
//!
//! Only a header block is ever held (at most [`MAX_BLOCK`] bytes, released
//! when it has been handed on); other bytes go straight from the socket to
//! the server's buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What an HTTP/2 client sends first.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of an HTTP/2 frame header.
pub const HEAD_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload we emit: the smallest SETTINGS_MAX_FRAME_SIZE
/// a peer may announce, so every server accepts it.
pub const MAX_FRAME: usize = 16_384;
/// The most bytes of one header block (its frames as received) we hold.
/// hyper's server refuses blocks of more than 16 KiB anyway.
pub const MAX_BLOCK: usize = 64 * 1024;
/// The largest decoded header list (RFC 7541 sizes: name + value + 32 per
/// field) we re-encode; hyper's server refuses more than 16 KiB anyway.
pub const MAX_HEADER_LIST: usize = 64 * 1024;
/// The HPACK dynamic table size the server allows (the HTTP/2 default; our
/// server announces no other).
const TABLE_SIZE: usize = 4096;
/// What replaces an authority the server would refuse.
pub const REPLACEMENT: &[u8] = b"localhost";

/// The header of an HTTP/2 frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHead {
    pub fn parse(b: &[u8; HEAD_LEN]) -> FrameHead {
        FrameHead {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// The wire form; `len` must be below 2^24 (ours are at most [`MAX_FRAME`]).
    pub fn encode(&self) -> [u8; HEAD_LEN] {
        let len = u32::try_from(self.len).unwrap_or(u32::MAX).to_be_bytes();
        let s = self.stream.to_be_bytes();
        [
            len[1], len[2], len[3], self.kind, self.flags, s[0], s[1], s[2], s[3],
        ]
    }
}

/// Why a header block was not rewritten.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BlockError {
    #[error("header block frames out of order: {0}")]
    Framing(&'static str),
    #[error("header block of more than {MAX_BLOCK} bytes")]
    TooLarge,
    #[error("HPACK: {0}")]
    Hpack(#[from] loona_hpack::decoder::DecoderError),
    #[error("header list of more than {MAX_HEADER_LIST} bytes")]
    ListTooLarge,
}

/// The header block fragment of a HEADERS frame's payload: without its
/// padding and priority fields.
pub fn headers_fragment<'p>(head: &FrameHead, payload: &'p [u8]) -> Result<&'p [u8], BlockError> {
    let mut rest = payload;
    let mut pad = 0;
    if head.flags & PADDED != 0 {
        let (&p, r) = rest
            .split_first()
            .ok_or(BlockError::Framing("padded HEADERS without a pad length"))?;
        pad = usize::from(p);
        rest = r;
    }
    if head.flags & PRIORITY != 0 {
        rest = rest
            .get(5..)
            .ok_or(BlockError::Framing("HEADERS too short for its priority"))?;
    }
    let end = rest
        .len()
        .checked_sub(pad)
        .ok_or(BlockError::Framing("HEADERS padding longer than the frame"))?;
    Ok(&rest[..end])
}

/// The frames of a complete header block as received (a HEADERS frame and
/// its CONTINUATIONs): the first frame's header and the block's fragments
/// joined.
pub fn join_block(raw: &[u8]) -> Result<(FrameHead, Vec<u8>), BlockError> {
    let mut first = None;
    let mut fragment = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let (head, tail) = rest
            .split_first_chunk::<HEAD_LEN>()
            .ok_or(BlockError::Framing("truncated frame header"))?;
        let head = FrameHead::parse(head);
        let payload = tail
            .get(..head.len)
            .ok_or(BlockError::Framing("truncated frame"))?;
        rest = &tail[head.len..];
        match first {
            None => {
                if head.kind != HEADERS {
                    return Err(BlockError::Framing("a block starts with HEADERS"));
                }
                fragment.extend_from_slice(headers_fragment(&head, payload)?);
                first = Some(head);
            }
            Some(h) => {
                if head.kind != CONTINUATION || head.stream != h.stream {
                    return Err(BlockError::Framing("expected CONTINUATION of the stream"));
                }
                fragment.extend_from_slice(payload);
            }
        }
        if head.flags & END_HEADERS != 0 && !rest.is_empty() {
            return Err(BlockError::Framing("frames after END_HEADERS"));
        }
    }
    let head = first.ok_or(BlockError::Framing("empty block"))?;
    Ok((head, fragment))
}

/// Whether the server's HTTP/2 layer accepts `value` as `:authority` (the
/// check `h2` makes).
pub fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// A decoded header list.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Decode `fragment` (a whole header block) with `decoder`, which keeps the
/// client's dynamic table. Fails on HPACK errors and lists larger than
/// [`MAX_HEADER_LIST`]; the decoder's table is in step with the client's
/// whenever the HPACK itself decoded.
pub fn decode_block(
    decoder: &mut loona_hpack::Decoder<'static>,
    fragment: &[u8],
) -> Result<Fields, BlockError> {
    let mut fields = Vec::new();
    let mut size = 0usize;
    decoder.decode_with_cb(fragment, |name, value| {
        size = size.saturating_add(name.len() + value.len() + 32);
        if size <= MAX_HEADER_LIST {
            fields.push((name.into_owned(), value.into_owned()));
        }
    })?;
    if size > MAX_HEADER_LIST {
        return Err(BlockError::ListTooLarge);
    }
    Ok(fields)
}

/// Replace an `:authority` the server would refuse with [`REPLACEMENT`].
/// Returns whether anything changed.
pub fn fix_authority(fields: &mut Fields) -> bool {
    let mut changed = false;
    for (name, value) in fields.iter_mut() {
        if name == b":authority" && !is_valid_authority(value) {
            *value = REPLACEMENT.to_vec();
            changed = true;
        }
    }
    changed
}

/// HPACK integer with an `n`-bit prefix whose other bits are `first`.
fn encode_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        // Fits the prefix: value < 2^n <= 128.
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// `fields` as an HPACK block of literals without indexing, with literal
/// names and plain (not Huffman-coded) strings: decoding it leaves any
/// decoder's dynamic table as it was.
pub fn encode_literals(fields: &Fields) -> Vec<u8> {
    let len = fields.iter().map(|(n, v)| n.len() + v.len() + 11).sum();
    let mut out = Vec::with_capacity(len);
    for (name, value) in fields {
        out.push(0x00);
        encode_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        encode_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// Frame `block` as a HEADERS frame on `stream` and as many CONTINUATION
/// frames as [`MAX_FRAME`] needs, appended to `out`. END_STREAM as given;
/// no padding, no priority.
pub fn write_frames(out: &mut Vec<u8>, stream: u32, end_stream: bool, block: &[u8]) {
    let mut chunks = block.chunks(MAX_FRAME).peekable();
    let mut kind = HEADERS;
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        let head = FrameHead {
            len: 0,
            kind,
            flags: flags | END_HEADERS,
            stream,
        };
        out.extend_from_slice(&head.encode());
        return;
    }
    while let Some(chunk) = chunks.next() {
        if chunks.peek().is_none() {
            flags |= END_HEADERS;
        }
        let head = FrameHead {
            len: chunk.len(),
            kind,
            flags,
            stream,
        };
        out.extend_from_slice(&head.encode());
        out.extend_from_slice(chunk);
        kind = CONTINUATION;
        flags = 0;
    }
}

/// What became of a header block.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Pass it on as received.
    Unchanged,
    /// Pass on these frames instead.
    Rewritten(Vec<u8>),
}

/// Decide the fate of a complete header block `raw` (its frames as
/// received). `always` re-encodes it even when its authority is fine (the
/// server's table has stopped mirroring the client's).
pub fn rewrite_block(
    decoder: &mut loona_hpack::Decoder<'static>,
    raw: &[u8],
    always: bool,
) -> Result<Outcome, BlockError> {
    let (head, fragment) = join_block(raw)?;
    let mut fields = decode_block(decoder, &fragment)?;
    if !fix_authority(&mut fields) && !always {
        return Ok(Outcome::Unchanged);
    }
    let mut out = Vec::new();
    write_frames(
        &mut out,
        head.stream,
        head.flags & END_STREAM != 0,
        &encode_literals(&fields),
    );
    Ok(Outcome::Rewritten(out))
}

/// Where the reader stands in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Within the connection preface: this many bytes of it seen.
    Preface(usize),
    /// Within a frame header: these bytes of it seen.
    Head([u8; HEAD_LEN], usize),
    /// Within a frame's payload: this many bytes still to come.
    Payload(usize),
    /// Not HTTP/2 as we know it, or we gave up: everything passes.
    Transparent,
}

/// A header block being collected.
struct Block {
    /// Its frames as received so far.
    raw: Vec<u8>,
    /// Whether the frame being read ends the block.
    end_headers: bool,
    stream: u32,
}

/// The read side's state machine, apart from I/O: it decides which bytes
/// the server gets.
pub struct Rewriter {
    state: State,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    /// A block has been re-encoded: re-encode all that follow.
    rewriting: bool,
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Rewriter {
            state: State::Preface(0),
            block: None,
            decoder,
            rewriting: false,
        }
    }
}

impl Rewriter {
    /// Consume the longest prefix of `data` that passes to the server as
    /// is, and return its length. It stops where bytes must be held back:
    /// a frame header not complete in `data`, or a header block.
    pub fn pass(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            let rest = &data[i..];
            match self.state {
                State::Transparent => return data.len(),
                State::Preface(seen) => {
                    let n = rest.len().min(PREFACE.len() - seen);
                    if rest[..n] != PREFACE[seen..seen + n] {
                        self.state = State::Transparent;
                        return data.len();
                    }
                    i += n;
                    self.state = if seen + n == PREFACE.len() {
                        State::Head([0; HEAD_LEN], 0)
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::Payload(left) if self.block.is_none() => {
                    let n = rest.len().min(left);
                    i += n;
                    self.state = if n == left {
                        State::Head([0; HEAD_LEN], 0)
                    } else {
                        State::Payload(left - n)
                    };
                }
                State::Head(_, 0) if self.block.is_none() => {
                    let Some(head) = rest.first_chunk::<HEAD_LEN>() else {
                        return i;
                    };
                    let head = FrameHead::parse(head);
                    if head.kind == HEADERS {
                        return i;
                    }
                    i += HEAD_LEN;
                    self.state = if head.len == 0 {
                        State::Head([0; HEAD_LEN], 0)
                    } else {
                        State::Payload(head.len)
                    };
                }
                _ => return i,
            }
        }
        i
    }

    /// Consume all of `data`, appending what the server gets to `out`.
    /// Fails only when a block cannot be handed on faithfully (its HPACK
    /// does not decode after the server's table stopped mirroring the
    /// client's): the connection must end.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), BlockError> {
        loop {
            let n = self.pass(data);
            out.extend_from_slice(&data[..n]);
            data = &data[n..];
            if data.is_empty() {
                return Ok(());
            }
            let n = self.hold(data, out)?;
            data = &data[n..];
        }
    }

    /// The slow path of [`feed`](Self::feed): bytes `pass` refused (a frame
    /// header in parts, a header block). Returns how many it consumed: at
    /// least one, or none when it gave up (and `pass` takes everything).
    fn hold(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<usize, BlockError> {
        match self.state {
            State::Head(mut buf, seen) => {
                let n = data.len().min(HEAD_LEN - seen);
                buf[seen..seen + n].copy_from_slice(&data[..n]);
                if seen + n < HEAD_LEN {
                    self.state = State::Head(buf, seen + n);
                    return Ok(n);
                }
                let head = FrameHead::parse(&buf);
                self.state = State::Payload(head.len);
                match &mut self.block {
                    Some(block) => {
                        block.raw.extend_from_slice(&buf);
                        block.end_headers = head.flags & END_HEADERS != 0;
                        if head.kind != CONTINUATION || head.stream != block.stream {
                            // h2 ends the connection for this; let it see it.
                            self.give_up(out);
                            return Ok(n);
                        }
                    }
                    None if head.kind == HEADERS => {
                        let mut raw = Vec::with_capacity(HEAD_LEN + head.len.min(MAX_BLOCK));
                        raw.extend_from_slice(&buf);
                        self.block = Some(Block {
                            raw,
                            end_headers: head.flags & END_HEADERS != 0,
                            stream: head.stream,
                        });
                    }
                    None => out.extend_from_slice(&buf),
                }
                if head.len == 0 {
                    self.frame_done(out)?;
                }
                Ok(n)
            }
            State::Payload(left) => {
                let n = data.len().min(left);
                let Some(block) = &mut self.block else {
                    // Not reached: pass() forwards payloads outside blocks.
                    out.extend_from_slice(&data[..n]);
                    self.state = State::Payload(left - n);
                    if n == left {
                        self.state = State::Head([0; HEAD_LEN], 0);
                    }
                    return Ok(n);
                };
                if block.raw.len() + n > MAX_BLOCK {
                    if self.rewriting {
                        return Err(BlockError::TooLarge);
                    }
                    self.give_up(out);
                    return Ok(0);
                }
                block.raw.extend_from_slice(&data[..n]);
                self.state = State::Payload(left - n);
                if n == left {
                    self.frame_done(out)?;
                }
                Ok(n)
            }
            State::Preface(_) | State::Transparent => {
                // Not reached: pass() consumes these.
                out.extend_from_slice(data);
                Ok(data.len())
            }
        }
    }

    /// A frame inside a block has been read completely.
    fn frame_done(&mut self, out: &mut Vec<u8>) -> Result<(), BlockError> {
        self.state = State::Head([0; HEAD_LEN], 0);
        let Some(block) = self.block.take_if(|b| b.end_headers) else {
            return Ok(());
        };
        match rewrite_block(&mut self.decoder, &block.raw, self.rewriting) {
            Ok(Outcome::Unchanged) => out.extend_from_slice(&block.raw),
            Ok(Outcome::Rewritten(frames)) => {
                self.rewriting = true;
                out.extend_from_slice(&frames);
            }
            // Framing errors end the connection in h2 too: let it see them.
            Err(BlockError::Framing(what)) => {
                tracing::debug!(error = what, "HTTP/2 header block malformed");
                out.extend_from_slice(&block.raw);
                self.state = State::Transparent;
            }
            // Our table is still in step; h2 judges the list itself.
            Err(BlockError::ListTooLarge) if !self.rewriting => out.extend_from_slice(&block.raw),
            Err(e) if !self.rewriting => {
                tracing::debug!(error = %e, "HTTP/2 header block not decoded; passing the connection through");
                out.extend_from_slice(&block.raw);
                self.state = State::Transparent;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Hand on what is held as received and pass everything from now on.
    fn give_up(&mut self, out: &mut Vec<u8>) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        if let State::Head(buf, seen) = self.state {
            out.extend_from_slice(&buf[..seen]);
        }
        self.state = State::Transparent;
    }

    /// The client closed its side: hand on whatever is held.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.give_up(out);
    }
}

/// A connection whose read side goes through a [`Rewriter`].
pub struct AuthorityRewrite<S> {
    inner: S,
    rewriter: Rewriter,
    /// Bytes for the server that did not come straight from the socket.
    out: Vec<u8>,
    out_pos: usize,
}

impl<S> AuthorityRewrite<S> {
    pub fn new(inner: S) -> Self {
        AuthorityRewrite {
            inner,
            rewriter: Rewriter::default(),
            out: Vec::new(),
            out_pos: 0,
        }
    }
}

impl<S: Connected> Connected for AuthorityRewrite<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRewrite<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out_pos = 0;
                    if this.out.capacity() > 4096 {
                        this.out = Vec::new();
                    } else {
                        this.out.clear();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            // Read straight into the server's buffer; take back what must
            // be held or rewritten.
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let end = buf.filled().len();
            if end == start {
                this.rewriter.finish(&mut this.out);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let data = &buf.filled()[start..end];
            let kept = this.rewriter.pass(data);
            if kept < data.len() {
                this.rewriter
                    .feed(&data[kept..], &mut this.out)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                buf.set_filled(start + kept);
            }
            if kept > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// An HPACK string literal, not Huffman-coded (short strings only).
    fn string(s: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(s.len()).expect("short")];
        out.extend_from_slice(s);
        out
    }

    /// What gRPC C-core sends first on a unix socket: :method POST and
    /// :scheme http indexed, :path and the percent-encoded socket path as
    /// :authority as literals with incremental indexing, then te: trailers
    /// the same way (the newest entry has the lowest index: te is 62,
    /// :authority 63, :path 64).
    fn grpc_block(authority: &[u8]) -> Vec<u8> {
        let mut b = vec![0x83, 0x86];
        b.push(0x44); // :path, incremental indexing
        b.extend(string(b"/csi.v1.Identity/Probe"));
        b.push(0x41); // :authority, incremental indexing
        b.extend(string(authority));
        b.push(0x40); // literal name, incremental indexing
        b.extend(string(b"te"));
        b.extend(string(b"trailers"));
        b
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let head = FrameHead {
            len: payload.len(),
            kind,
            flags,
            stream,
        };
        let mut out = head.encode().to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn decoder() -> loona_hpack::Decoder<'static> {
        let mut d = loona_hpack::Decoder::new();
        d.set_max_allowed_table_size(TABLE_SIZE);
        d
    }

    fn field<'f>(fields: &'f Fields, name: &str) -> Option<&'f [u8]> {
        fields
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// Decode frames as the server would, with `server`'s table.
    fn server_view(
        server: &mut loona_hpack::Decoder<'static>,
        frames: &[u8],
    ) -> (FrameHead, Fields) {
        let (head, fragment) = join_block(frames).expect("well-formed frames");
        (head, server.decode(&fragment).expect("HPACK decodes"))
    }

    #[test]
    fn validity_is_what_h2_checks() {
        assert!(is_valid_authority(b"localhost"));
        assert!(is_valid_authority(b"127.0.0.1:10000"));
        assert!(is_valid_authority(b"[::1]:80"));
        assert!(!is_valid_authority(b"%2Ftmp%2Fcsi.sock"));
        assert!(!is_valid_authority(b"tmp%2Fcsi.sock"));
        assert!(!is_valid_authority(b"/var/run/csi.sock"));
        assert!(!is_valid_authority(b""));
    }

    #[test]
    fn a_percent_encoded_path_authority_becomes_localhost() {
        let raw = frame(HEADERS, END_HEADERS, 1, &grpc_block(b"%2Ftmp%2Fcsi.sock"));
        let Outcome::Rewritten(frames) = rewrite_block(&mut decoder(), &raw, false).expect("ok")
        else {
            panic!("not rewritten");
        };
        let mut server = decoder();
        let (head, fields) = server_view(&mut server, &frames);
        assert_eq!(head.stream, 1);
        assert_eq!(head.flags, END_HEADERS);
        assert_eq!(
            fields,
            [
                (b":method".to_vec(), b"POST".to_vec()),
                (b":scheme".to_vec(), b"http".to_vec()),
                (b":path".to_vec(), b"/csi.v1.Identity/Probe".to_vec()),
                (b":authority".to_vec(), b"localhost".to_vec()),
                (b"te".to_vec(), b"trailers".to_vec()),
            ]
        );
        // Literals without indexing: the server's table stays empty.
        assert_eq!(
            server.decode(&[0xbe]),
            Err(loona_hpack::decoder::DecoderError::HeaderIndexOutOfBounds)
        );
    }

    #[test]
    fn the_clients_dynamic_table_is_followed() {
        let mut client = decoder();
        let first = frame(HEADERS, END_HEADERS, 1, &grpc_block(b"/var/run/csi.sock"));
        assert!(matches!(
            rewrite_block(&mut client, &first, false),
            Ok(Outcome::Rewritten(_))
        ));
        // The next request names :path, :authority and te by their dynamic
        // indices (64, 63, 62).
        let second = frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &[0x83, 0x86, 0xc0, 0xbf, 0xbe],
        );
        let Ok(Outcome::Rewritten(frames)) = rewrite_block(&mut client, &second, true) else {
            panic!("not rewritten");
        };
        let (head, fields) = server_view(&mut decoder(), &frames);
        assert_eq!((head.stream, head.flags), (3, END_HEADERS | END_STREAM));
        assert_eq!(
            field(&fields, ":path"),
            Some(&b"/csi.v1.Identity/Probe"[..])
        );
        assert_eq!(field(&fields, ":authority"), Some(&b"localhost"[..]));
        assert_eq!(field(&fields, "te"), Some(&b"trailers"[..]));
    }

    #[test]
    fn a_fine_authority_passes_unchanged() {
        let raw = frame(HEADERS, END_HEADERS, 1, &grpc_block(b"localhost"));
        assert_eq!(
            rewrite_block(&mut decoder(), &raw, false),
            Ok(Outcome::Unchanged)
        );
    }

    #[test]
    fn padding_priority_and_continuations_are_read_and_dropped() {
        let block = grpc_block(b"%2Fcsi.sock");
        let (a, b) = block.split_at(10);
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 0, 16]); // priority
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut raw = frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &payload);
        raw.extend(frame(CONTINUATION, END_HEADERS, 5, b));
        let Ok(Outcome::Rewritten(frames)) = rewrite_block(&mut decoder(), &raw, false) else {
            panic!("not rewritten");
        };
        let (head, fields) = server_view(&mut decoder(), &frames);
        assert_eq!(head.flags, END_STREAM | END_HEADERS);
        assert_eq!(head.len + HEAD_LEN, frames.len(), "one frame");
        assert_eq!(field(&fields, ":authority"), Some(&b"localhost"[..]));
    }

    #[test]
    fn bad_framing_is_refused() {
        let block = grpc_block(b"x");
        let mut raw = frame(HEADERS, 0, 1, &block);
        raw.extend(frame(CONTINUATION, END_HEADERS, 3, b""));
        assert!(matches!(join_block(&raw), Err(BlockError::Framing(_))));
        let raw = frame(HEADERS, PADDED | END_HEADERS, 1, &[200, 0x83]);
        assert!(matches!(join_block(&raw), Err(BlockError::Framing(_))));
    }

    #[test]
    fn large_blocks_are_split_at_the_frame_size() {
        let value = vec![b'v'; 2 * MAX_FRAME];
        let fields = vec![
            (b":authority".to_vec(), b"localhost".to_vec()),
            (b"x-big".to_vec(), value.clone()),
        ];
        let block = encode_literals(&fields);
        let mut frames = Vec::new();
        write_frames(&mut frames, 7, false, &block);
        let mut rest = &frames[..];
        let mut heads = Vec::new();
        while let Some((head, tail)) = rest.split_first_chunk::<HEAD_LEN>() {
            let head = FrameHead::parse(head);
            assert!(head.len <= MAX_FRAME);
            rest = &tail[head.len..];
            heads.push((head.kind, head.flags));
        }
        assert_eq!(
            heads,
            [(HEADERS, 0), (CONTINUATION, 0), (CONTINUATION, END_HEADERS)]
        );
        let (_, decoded) = server_view(&mut decoder(), &frames);
        assert_eq!(decoded, fields);
    }

    #[test]
    fn oversized_header_lists_are_refused() {
        // A 4 KiB entry in the table, then 20 indexed references to it: a
        // small block, an 80 KiB list.
        let mut block = vec![0x40];
        block.extend(string(b"x"));
        encode_int(&mut block, 0, 7, 4000);
        block.extend(std::iter::repeat_n(b'v', 4000));
        let mut d = decoder();
        assert_eq!(decode_block(&mut d, &block).expect("decodes").len(), 1);
        let refs = vec![0xbe; 20];
        assert_eq!(decode_block(&mut d, &refs), Err(BlockError::ListTooLarge));
    }

    /// The client's side of a connection: preface, SETTINGS, a request on
    /// stream 1 (HEADERS + DATA), a second request on stream 3.
    fn client_bytes(authority: &[u8]) -> Vec<u8> {
        let mut c = PREFACE.to_vec();
        c.extend(frame(0x4, 0, 0, &[0, 2, 0, 0, 0, 0]));
        c.extend(frame(HEADERS, END_HEADERS, 1, &grpc_block(authority)));
        c.extend(frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]));
        c.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &[0x83, 0x86, 0xc0, 0xbf, 0xbe],
        ));
        c
    }

    /// The requests the server sees in `bytes`: each block decoded.
    fn requests(bytes: &[u8]) -> Vec<Fields> {
        let mut rest = bytes.strip_prefix(&PREFACE[..]).expect("preface first");
        let mut server = decoder();
        let mut out = Vec::new();
        while let Some((head, tail)) = rest.split_first_chunk::<HEAD_LEN>() {
            let head = FrameHead::parse(head);
            let end = HEAD_LEN + head.len;
            if head.kind == HEADERS {
                out.push(server_view(&mut server, &rest[..end]).1);
            }
            rest = &tail[head.len..];
        }
        assert!(rest.is_empty(), "whole frames");
        out
    }

    #[test]
    fn a_connection_is_rewritten_in_any_chunking() {
        let input = client_bytes(b"%2Ftmp%2Fcsi.sock");
        for chunk in [1, 2, 5, 9, 10, 33, 1000] {
            let mut rw = Rewriter::default();
            let mut out = Vec::new();
            for piece in input.chunks(chunk) {
                // What poll_read does: keep what passes, feed the rest.
                let kept = rw.pass(piece);
                out.extend_from_slice(&piece[..kept]);
                rw.feed(&piece[kept..], &mut out).expect("feeds");
            }
            let reqs = requests(&out);
            assert_eq!(reqs.len(), 2, "chunk {chunk}");
            for r in &reqs {
                assert_eq!(
                    field(r, ":authority"),
                    Some(&b"localhost"[..]),
                    "chunk {chunk}"
                );
                assert_eq!(field(r, ":path"), Some(&b"/csi.v1.Identity/Probe"[..]));
            }
        }
    }

    #[test]
    fn a_connection_with_fine_authorities_is_untouched() {
        let input = client_bytes(b"localhost");
        for chunk in [1, 7, 4096] {
            let mut rw = Rewriter::default();
            let mut out = Vec::new();
            for piece in input.chunks(chunk) {
                rw.feed(piece, &mut out).expect("feeds");
            }
            assert_eq!(out, input, "chunk {chunk}");
        }
    }

    #[test]
    fn not_http2_passes_through() {
        let input = b"GET / HTTP/1.1\r\nHost: /x.sock\r\n\r\n".to_vec();
        let mut rw = Rewriter::default();
        let mut out = Vec::new();
        rw.feed(&input, &mut out).expect("feeds");
        assert_eq!(out, input);
    }

    #[tokio::test]
    async fn the_stream_adapter_rewrites_what_it_reads() {
        let input = client_bytes(b"/var/run/csi.sock");
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for piece in input.chunks(13) {
                client.write_all(piece).await.expect("write");
            }
        });
        let mut adapted = AuthorityRewrite::new(server);
        let mut seen = Vec::new();
        let mut buf = [0u8; 17];
        loop {
            let n = adapted.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        writer.await.expect("writer");
        let reqs = requests(&seen);
        assert_eq!(reqs.len(), 2);
        for r in &reqs {
            assert_eq!(field(r, ":authority"), Some(&b"localhost"[..]));
        }
    }
}
