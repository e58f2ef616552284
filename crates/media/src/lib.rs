//! Media transport logic without I/O: everything between an encoder's output and a
//! decoder's input, driven by `now` and datagrams passed in (see `p2pcall_proto::media` for
//! the wire format).
//!
//! * [`call`]: the call state machine (offer, ring, accept/reject, updates, hang-up,
//!   liveness) and codec negotiation.
//! * [`packetize`]: frames → datagram-sized packets (never relying on IP fragmentation).
//! * [`assemble`]: packets → complete frames, bounded memory.
//! * [`nack`]: which packets to ask for again, when (RTT-aware), when to give up, and a
//!   rate-limited keyframe request; [`retransmit`]: the sender's side of it.
//! * [`session`]: all of the above for the streams of one call, with lip sync and stats.
//! * [`audio`]: the adaptive audio jitter buffer (target ≈ 95th percentile of the observed
//!   delay variation, Opus FEC/PLC decisions, catch-up); [`video`]: the frame buffer that
//!   releases only decodable frames.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod active;
pub mod adapt;
pub mod assemble;
pub mod audio;
pub mod bwe;
pub mod call;
pub mod gate;
pub mod mix;
pub mod nack;
pub mod pacer;
pub mod packetize;
pub mod retransmit;
pub mod session;
pub mod simulcast;
pub mod video;

/// Errors of the media logic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The connection's datagrams are too small to carry a media header and data.
    #[error("the maximum datagram size {0} is too small for media")]
    DatagramTooSmall(usize),
    /// A frame for a stream that was not negotiated.
    #[error("stream {0} is not negotiated")]
    UnknownStream(u8),
    /// A frame would need more fragments than the header allows.
    #[error("a frame of {bytes} bytes needs {frags} fragments (limit {max})")]
    FrameTooLarge {
        /// Frame size.
        bytes: usize,
        /// Fragments needed.
        frags: usize,
        /// The limit.
        max: u16,
    },
}
