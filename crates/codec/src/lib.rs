//! Codecs: H264 through the `openh264` crate (Cisco's encoder and decoder, compiled from
//! source with nasm: no system library), and Opus through the `opus` crate (a static libopus
//! built with cmake), 48 kHz mono in 20 ms frames with in-band FEC and DTX.
//!
//! The wrappers speak the project's types: [`p2pcall_media_io::Frame`] (I420) in and out of
//! H264, 960-sample frames in and out of Opus, and the audio jitter buffer's decisions
//! ([`AudioDecoder::decode`] takes a frame, the FEC of the next packet, or a concealment).
#![deny(unsafe_code)] // one `SetOption` call in h264.rs; see there
#![deny(missing_docs)]

pub mod h264;
pub mod opus_codec;

pub use h264::{EncodedFrame, VideoConfig, VideoDecoder, VideoEncoder};
pub use opus_codec::{AudioConfig, AudioDecoder, AudioEncoder, AudioInput};

/// Codec errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The H264 encoder or decoder failed.
    #[error("H264: {0}")]
    H264(String),
    /// The Opus encoder or decoder failed.
    #[error("Opus: {0}")]
    Opus(String),
    /// A frame or parameter outside what the codec accepts.
    #[error("unsupported {0}")]
    Unsupported(String),
}
