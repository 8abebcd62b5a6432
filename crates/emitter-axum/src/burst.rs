//! The socket under each WebSocket: reads pass straight through, writes gather into a buffer that exists only while
//! there is something to write.
//!
//! tungstenite keeps its own write buffer at the capacity a burst grew it to, for the life of the connection, and
//! writes to the socket every time that buffer passes its size. Sized for throughput (tens of KiB, few system calls
//! per burst) that is tens of KiB per idle connection; sized for idle memory (a couple of KiB) it is a system call
//! and a TCP packet every couple of KiB of a burst. So tungstenite gets no buffer of its own (every frame it formats
//! comes straight here) and this layer gathers up to [`CHUNK`] bytes per write to the socket, then lets go of the
//! allocation once a flush has emptied it. The connection's text frames do not go through tungstenite at all: the
//! writer formats them straight into the gathered bytes (`BurstWriter::gathered`), whole, so that they
//! never interleave with the control frames (pings, pongs, close) tungstenite writes, which arrive whole too.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes gathered before they are written to the socket; also the most a connection holds while its peer does not
/// read (then the writer waits, and further frames wait in the connection's queue).
pub(crate) const CHUNK: usize = 16 * 1024;

/// The buffer a burst starts with: room for a link storm's usual burst (a hundred small frames), so that it is not
/// copied as it grows; an echo's burst of one frame costs the same allocation.
const FIRST: usize = 4 * 1024;

/// A socket whose writes are gathered into bursts.
pub(crate) struct BurstWriter<T> {
    inner: T,
    buffer: Vec<u8>,
    /// How much of `buffer` the socket has taken so far.
    written: usize,
}

impl<T> BurstWriter<T> {
    pub(crate) fn new(inner: T) -> Self {
        BurstWriter {
            inner,
            buffer: Vec::new(),
            written: 0,
        }
    }
}

impl<T> BurstWriter<T> {
    /// The bytes gathered and not yet written to the socket, for a caller that formats frames straight into them
    /// (whole frames only: tungstenite's frames go in whole too, so that they never interleave). Drain once it holds
    /// [`CHUNK`] or more.
    pub(crate) fn gathered(&mut self) -> &mut Vec<u8> {
        if self.buffer.capacity() == 0 {
            self.buffer.reserve(FIRST);
        }
        &mut self.buffer
    }

    /// Whether [`CHUNK`] bytes or more are gathered.
    pub(crate) fn full(&self) -> bool {
        self.buffer.len() >= CHUNK
    }
}

impl<T: AsyncWrite + Unpin> BurstWriter<T> {
    /// Writes what is gathered to the socket.
    pub(crate) fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffer[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buffer.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for BurstWriter<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for BurstWriter<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !this.buffer.is_empty() && this.buffer.len() + data.len() > CHUNK {
            ready!(this.poll_drain(cx))?;
        }
        if this.buffer.is_empty() && data.len() >= CHUNK {
            // Too big to gather: straight through.
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        if this.buffer.capacity() == 0 {
            // Most bursts are a frame or a few: start small, grow up to a chunk.
            this.buffer.reserve(FIRST.max(data.len()));
        }
        this.buffer.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        // The burst is over, and idle connections are the many: keep nothing for them.
        self.buffer = Vec::new();
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn gathers_small_writes_and_lets_go_when_flushed() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut writer = BurstWriter::new(near);
        for _ in 0..100 {
            writer.write_all(b"0123456789").await.unwrap();
        }
        assert_eq!(writer.buffer.len(), 1000, "nothing reached the socket yet");
        writer.flush().await.unwrap();
        assert_eq!(writer.buffer.capacity(), 0, "the buffer is released once empty");
        let mut read = vec![0; 1000];
        far.read_exact(&mut read).await.unwrap();
        assert!(read.chunks(10).all(|chunk| chunk == b"0123456789"));
    }

    #[tokio::test]
    async fn a_full_chunk_goes_out_before_more_is_gathered() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut writer = BurstWriter::new(near);
        let frame = vec![7u8; 1000];
        for _ in 0..40 {
            writer.write_all(&frame).await.unwrap();
            assert!(writer.buffer.len() <= CHUNK);
        }
        writer.flush().await.unwrap();
        let mut read = vec![0; 40_000];
        far.read_exact(&mut read).await.unwrap();
        assert!(read.iter().all(|&b| b == 7));
    }
}
