//! A minimal WebSocket client over a plain `TcpStream`, made for load generation.
//!
//! It does just what the load generator needs and nothing per message that it need not: the handshake, masked text
//! frames out (several per write), and unmasked frames in, parsed in place from one reusable read buffer with no
//! allocation per message. Pings are answered with pongs. Fragmented and compressed messages are not supported (no
//! server under test sends them: no extension is negotiated and small messages are never fragmented).

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// WebSocket opcodes the client cares about.
pub const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// A fixed masking key. Clients must mask; the key does not need to be secret for a load generator on loopback.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// An open WebSocket connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Frames waiting to be written with the next [`Conn::flush`].
    out: Vec<u8>,
    closed: bool,
}

/// What [`Conn::frames`] found in one frame.
pub enum Incoming<'a> {
    /// A text or binary message.
    Data(&'a [u8]),
    /// The server closed the connection.
    Closed,
}

impl Conn {
    /// Connects to `addr` and performs the opening handshake for `path` (which includes any query string).
    pub async fn connect(addr: SocketAddr, path: &str, read_buffer: usize) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            buf: vec![0; read_buffer.max(1024)],
            start: 0,
            end: 0,
            out: Vec::with_capacity(256),
            closed: false,
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        conn.stream.write_all(request.as_bytes()).await?;
        // Read until the end of the response head; whatever follows it is already frame data.
        loop {
            if let Some(at) = find(&conn.buf[..conn.end], b"\r\n\r\n") {
                let head = &conn.buf[..at];
                if !(head.starts_with(b"HTTP/1.1 101") || head.starts_with(b"HTTP/1.0 101")) {
                    let line = String::from_utf8_lossy(head.split(|b| *b == b'\r').next().unwrap_or_default());
                    return Err(io::Error::other(format!("handshake refused: {line}")));
                }
                conn.start = at + 4;
                return Ok(conn);
            }
            if conn.end == conn.buf.len() {
                return Err(io::Error::other("handshake response too long"));
            }
            let read = conn.stream.read(&mut conn.buf[conn.end..]).await?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the handshake",
                ));
            }
            conn.end += read;
        }
    }

    /// Appends one masked text frame to the output; [`Conn::flush`] writes it.
    pub fn queue_text(&mut self, payload: &[u8]) {
        let len = payload.len();
        self.out.push(0x80 | OP_TEXT);
        push_len(&mut self.out, len);
        self.out.extend_from_slice(&MASK);
        let at = self.out.len();
        self.out.extend_from_slice(payload);
        for (i, byte) in self.out[at..].iter_mut().enumerate() {
            *byte ^= MASK[i & 3];
        }
    }

    /// Whether frames are waiting to be written.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes every queued frame in one write.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads more bytes from the socket; `Ok(0)` means the peer closed it. Cancel-safe: no data is lost when the
    /// future is dropped before it completes.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        if self.start > 0 && (self.start == self.end || self.end == self.buf.len()) {
            // Move the unparsed tail to the front.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // One frame is bigger than the buffer: grow it.
            let grown = self.buf.len() * 2;
            self.buf.resize(grown, 0);
        }
        let read = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += read;
        Ok(read)
    }

    /// Calls `on_frame` for every complete message in the buffer, answering pings on the way. Returns an error for
    /// frames this client does not support.
    pub fn frames(&mut self, mut on_frame: impl FnMut(Incoming<'_>)) -> io::Result<()> {
        loop {
            let available = &self.buf[self.start..self.end];
            let Some((opcode, header, len)) = parse_header(available)? else {
                return Ok(());
            };
            if available.len() < header + len {
                return Ok(());
            }
            let payload = &self.buf[self.start + header..self.start + header + len];
            self.start += header + len;
            match opcode {
                OP_TEXT | OP_BINARY => on_frame(Incoming::Data(payload)),
                OP_PING => {
                    let payload = payload.to_vec();
                    self.queue_control(OP_PONG, &payload);
                }
                OP_PONG => {}
                OP_CLOSE => {
                    if !self.closed {
                        self.closed = true;
                        on_frame(Incoming::Closed);
                    }
                }
                other => return Err(io::Error::other(format!("unsupported frame opcode {other}"))),
            }
        }
    }

    fn queue_control(&mut self, opcode: u8, payload: &[u8]) {
        self.out.push(0x80 | opcode);
        push_len(&mut self.out, payload.len());
        self.out.extend_from_slice(&MASK);
        self.out
            .extend(payload.iter().enumerate().map(|(i, byte)| byte ^ MASK[i & 3]));
    }

    /// Sends a close frame and shuts the socket down; errors are ignored (the connection is going away anyway).
    pub async fn close(mut self) {
        self.queue_control(OP_CLOSE, &[]);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// The opcode, header length and payload length of the frame at the start of `bytes`, if its header is complete.
fn parse_header(bytes: &[u8]) -> io::Result<Option<(u8, usize, usize)>> {
    if bytes.len() < 2 {
        return Ok(None);
    }
    let (first, second) = (bytes[0], bytes[1]);
    if first & 0x80 == 0 || first & 0x0f == 0 {
        return Err(io::Error::other("fragmented messages are not supported"));
    }
    if second & 0x80 != 0 {
        return Err(io::Error::other("the server sent a masked frame"));
    }
    let (header, len) = match second & 0x7f {
        126 if bytes.len() < 4 => return Ok(None),
        126 => (4, u16::from_be_bytes([bytes[2], bytes[3]]) as usize),
        127 if bytes.len() < 10 => return Ok(None),
        127 => {
            let mut raw = [0; 8];
            raw.copy_from_slice(&bytes[2..10]);
            (10, u64::from_be_bytes(raw) as usize)
        }
        short => (2, short as usize),
    };
    Ok(Some((first & 0x0f, header, len)))
}

/// Appends the payload length field of a masked (client) frame.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// The position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(parse_header(&[0x81, 5]).unwrap(), Some((1, 2, 5)));
        assert_eq!(parse_header(&[0x81, 126, 1, 0]).unwrap(), Some((1, 4, 256)));
        assert_eq!(parse_header(&[0x81, 126, 1]).unwrap(), None);
        assert!(parse_header(&[0x01, 5]).is_err());
        let mut out = Vec::new();
        push_len(&mut out, 300);
        assert_eq!(out, [0x80 | 126, 1, 44]);
    }
}
