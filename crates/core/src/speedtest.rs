//! Speed test: the opener sends the kind byte and then any number of bytes and finishes the
//! stream; the other side hashes everything it received (BLAKE3) and answers with the hash
//! and the byte count, so the opener knows every byte arrived, in order, exactly once. It
//! measures the connection's throughput and checks integrity across path switches.

use std::time::{Duration, Instant};

use p2pcall_net::PeerConnection;

use crate::error::EngineError;

/// Kind byte of a speed-test stream.
pub const SPEEDTEST: u8 = p2pcall_proto::stream::StreamKind::Speedtest.byte();
/// Most bytes one speed test may carry.
pub const MAX_SPEEDTEST_BYTES: u64 = 64 << 30;
/// Stream error code: the speed test is larger than [`MAX_SPEEDTEST_BYTES`].
const TOO_LARGE: u32 = 1;
const CHUNK: usize = 1 << 20;

/// Result of a speed test.
#[derive(Debug, Clone)]
pub struct SpeedReport {
    /// Bytes sent.
    pub bytes: u64,
    /// From the first byte sent to the peer's answer.
    pub elapsed: Duration,
    /// The peer's hash and count matched what we sent.
    pub verified: bool,
}

impl SpeedReport {
    /// Throughput in Mbit/s.
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Answers a speed test the peer opened (its kind byte already read).
pub(crate) async fn serve(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut hasher = blake3::Hasher::new();
    let mut count = 0u64;
    loop {
        match recv.read_chunk(CHUNK, true).await {
            Ok(Some(c)) => {
                count += c.bytes.len() as u64;
                if count > MAX_SPEEDTEST_BYTES {
                    let _ = recv.stop(TOO_LARGE.into());
                    return;
                }
                hasher.update(&c.bytes);
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let mut answer = Vec::with_capacity(40);
    answer.extend_from_slice(hasher.finalize().as_bytes());
    answer.extend_from_slice(&count.to_be_bytes());
    if send.write_all(&answer).await.is_ok() {
        let _ = send.finish();
    }
}

/// Sends `bytes` of pseudo-random data to the peer and checks its answer.
pub(crate) async fn speedtest(
    conn: &PeerConnection,
    bytes: u64,
) -> Result<SpeedReport, EngineError> {
    let bytes = bytes.min(MAX_SPEEDTEST_BYTES);
    let (mut send, mut recv) = conn
        .quic()
        .open_bi()
        .await
        .map_err(|e| EngineError::Net(e.into()))?;
    let mut block = vec![0u8; CHUNK];
    blake3::Hasher::new_derive_key("p2pcall speedtest data v1")
        .finalize_xof()
        .fill(&mut block);
    let block = bytes::Bytes::from(block);
    let mut hasher = blake3::Hasher::new();
    let t0 = Instant::now();
    let lost = |e: quinn::WriteError| EngineError::Stream(e.into());
    send.write_all(&[SPEEDTEST]).await.map_err(lost)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        let chunk = block.slice(..n);
        hasher.update(&chunk);
        send.write_chunk(chunk).await.map_err(lost)?;
        left -= n as u64;
    }
    let _ = send.finish();
    let mut answer = [0u8; 40];
    let ok = recv.read_exact(&mut answer).await.is_ok();
    let elapsed = t0.elapsed();
    let verified = ok
        && answer[..32] == *hasher.finalize().as_bytes()
        && u64::from_be_bytes(answer[32..].try_into().unwrap_or_default()) == bytes;
    Ok(SpeedReport {
        bytes,
        elapsed,
        verified,
    })
}
