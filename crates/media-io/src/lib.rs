//! Media sources and sinks that need no device: a synthetic video test pattern that carries
//! its frame number and capture time in its pixels (so a receiver can measure latency, loss
//! and quality per frame), tone and speech-like audio generators, Y4M and WAV files, PSNR; pixel-format conversion and
//! scaling for cameras; echo cancellation and noise suppression for microphones.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audio;
pub mod convert;
pub mod frame;
pub mod pattern;
pub mod voice;
pub mod wav;
pub mod y4m;

pub use frame::{Frame, psnr};

/// Errors of sources and sinks.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not in the expected format.
    #[error("{path} is not a valid {format} file: {reason}")]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// Y4M or WAV.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A size this build does not handle.
    #[error("unsupported {what}: {value}")]
    Unsupported {
        /// What.
        what: &'static str,
        /// The value.
        value: String,
    },
}
