//! Reading and writing [`p2pcall_proto::frame`] envelopes on async byte streams (a QUIC stream
//! or a TLS-over-TCP stream).

use p2pcall_proto::DecodeError;
use p2pcall_proto::frame::{self, RawFrame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Errors reading a frame from a stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    /// The stream ended cleanly between frames.
    #[error("the stream was closed")]
    Closed,
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid frame.
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
}

/// Buffered frame reader over any async byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames of at most `max` bytes from `inner`.
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(4096),
            start: 0,
            max,
        }
    }

    /// Waits for the next complete frame. The returned body borrows the reader's buffer.
    /// Memory stays bounded by `max` plus one read chunk, whatever the peer sends.
    pub async fn next(&mut self) -> Result<RawFrame<'_>, FrameReadError> {
        loop {
            if let Some((used, _)) = frame::split(&self.buf[self.start..], self.max)? {
                let begin = self.start;
                self.start += used;
                let (_, f) = frame::split(&self.buf[begin..begin + used], self.max)?
                    .ok_or(DecodeError::Truncated { field: "frame" })?;
                return Ok(f);
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let len = self.buf.len();
            self.buf.resize(len + 8192, 0);
            let n = self.inner.read(&mut self.buf[len..]).await;
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e.into());
                }
            };
            self.buf.truncate(len + n);
            if n == 0 {
                return if self.buf.is_empty() {
                    Err(FrameReadError::Closed)
                } else {
                    Err(DecodeError::Truncated { field: "frame" }.into())
                };
            }
        }
    }
}

/// Writes one already-encoded frame (or several concatenated) and flushes.
pub async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}
