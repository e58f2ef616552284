//! Reading and writing [`p2pcall_proto::frame`] envelopes on async byte streams (a QUIC stream
//! or a TLS-over-TCP stream).

use p2pcall_proto::DecodeError;
use p2pcall_proto::frame::{self, RawFrame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes requested per read.
const READ_CHUNK: usize = 4096;
/// A drained read buffer larger than this is freed (idle sessions cost no buffer).
const IDLE_BUFFER: usize = 0;

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
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Waits for the next complete frame. The returned body borrows the reader's buffer.
    /// Cancel-safe: may be used as a `select!` branch.
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
            // Idle sessions should cost little memory: give back a large buffer once drained.
            if self.buf.is_empty() && self.buf.capacity() > IDLE_BUFFER {
                self.buf = Vec::new();
            }
            // `read_buf` appends only what was read, so dropping this future (a `select!`
            // picking another branch) loses nothing: `next` is cancel-safe.
            self.buf.reserve(
                READ_CHUNK
                    .min((self.max + frame::HEADER_LEN).saturating_sub(self.buf.len()))
                    .max(1),
            );
            let n = self.inner.read_buf(&mut self.buf).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use p2pcall_proto::relay::{PeerInfo, ServerFrame};
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn frames_split_across_reads_are_reassembled() {
        let frames: Vec<ServerFrame> = (0..50u64)
            .map(|i| {
                if i % 3 == 0 {
                    ServerFrame::Snapshot {
                        peers: vec![
                            PeerInfo {
                                id: p2pcall_proto::PeerId::from_bytes([i as u8; 32]),
                                name: "x".repeat(i as usize),
                                online_since_ms: i,
                            };
                            (i % 7) as usize
                        ],
                        last: i % 2 == 0,
                    }
                } else {
                    ServerFrame::Pong { nonce: i }
                }
            })
            .collect();
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode(&mut bytes);
        }
        let (mut a, b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(37) {
                a.write_all(chunk).await.unwrap();
            }
        });
        let mut r = FrameReader::new(b, 1 << 16);
        for f in &frames {
            let raw = r.next().await.unwrap();
            assert_eq!(&ServerFrame::decode(raw).unwrap(), f);
        }
        writer.await.unwrap();
        assert!(matches!(r.next().await, Err(FrameReadError::Closed)));
    }

    #[tokio::test]
    async fn next_is_cancel_safe() {
        let mut bytes = Vec::new();
        for nonce in 0..20u64 {
            ServerFrame::Pong { nonce }.encode(&mut bytes);
        }
        let (mut a, b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for chunk in bytes.chunks(5) {
                a.write_all(chunk).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        });
        let mut r = FrameReader::new(b, 1 << 16);
        let mut got = Vec::new();
        let mut cancelled = 0;
        while got.len() < 20 {
            tokio::select! {
                f = r.next() => got.push(ServerFrame::decode(f.unwrap()).unwrap()),
                _ = tokio::task::yield_now() => cancelled += 1,
            }
        }
        assert!(cancelled > 0, "the test must actually cancel reads");
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f, &ServerFrame::Pong { nonce: i as u64 });
        }
    }
}
