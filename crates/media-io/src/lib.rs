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

/// Creates a new file at `path`, or, if that name is taken, at the first free
/// `stem (n).ext` beside it (the rule received files follow): a recording never overwrites
/// a file. Returns the file and the path it got.
pub fn create_new(path: &std::path::Path) -> Result<(std::fs::File, std::path::PathBuf), IoError> {
    let err = |source| IoError::File {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(std::path::Path::new(""));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| err(std::io::Error::other("not a file name")))?;
    // A name can be taken between the check and the creation: `create_new` is the judge.
    for _ in 0..16 {
        let free = p2pcall_transfer::unique_name(&name, |n| dir.join(n).symlink_metadata().is_ok())
            .ok_or_else(|| err(std::io::Error::other("no free name for a new file")))?;
        let target = dir.join(free);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
        {
            Ok(f) => return Ok((f, target)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(IoError::File {
                    path: target,
                    source,
                });
            }
        }
    }
    Err(err(std::io::Error::other("no free name for a new file")))
}

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
