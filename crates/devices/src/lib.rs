//! Capture and playback devices for calls: V4L2 cameras, and microphones and speakers through
//! cpal (ALSA). Everything is handed to the rest of the program in its own formats (I420
//! frames; 48 kHz mono 16-bit audio), and every missing or failing device is an error that
//! says which device and why, never a panic.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audio;
pub mod camera;
pub mod list;

pub use audio::{Microphone, Speaker};
pub use camera::{Camera, CameraRequest};

/// Why a device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No such device.
    #[error("no {kind}: {why}")]
    NotFound {
        /// camera, microphone or speaker.
        kind: &'static str,
        /// What was looked for and not found.
        why: String,
    },
    /// The device exists and refused to open or start.
    #[error("{device}: cannot {action}: {source}")]
    Open {
        /// The device.
        device: String,
        /// What was asked of it (open, list formats, start streaming, …).
        action: String,
        /// What it said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The device offers nothing this build can convert.
    #[error("{device}: {reason}")]
    Format {
        /// The device.
        device: String,
        /// What it offers.
        reason: String,
    },
    /// The device failed while running.
    #[error("{device} stopped: {reason}")]
    Stream {
        /// The device.
        device: String,
        /// What happened.
        reason: String,
    },
    /// A frame from the device could not be decoded.
    #[error("{device}: {reason}")]
    Decode {
        /// The device.
        device: String,
        /// What is wrong with the frame.
        reason: String,
    },
}
#[cfg(test)]
mod tests {
    #[test]
    fn devices_can_move_to_capture_threads() {
        fn send<T: Send>() {}
        send::<super::Microphone>();
        send::<super::Speaker>();
        send::<super::Camera>();
    }
}
