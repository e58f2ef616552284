//! V4L2 cameras: the device is asked for the call's size and rate in the first format it
//! offers of YUYV, NV12, YU12 (I420) or MJPEG; frames are converted to I420 and scaled when
//! the driver picked another size.

use std::time::Instant;

use p2pcall_media_io::{Frame, convert};
use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, Format, FourCC};

use crate::DeviceError;

/// Pixel formats this build converts, in order of preference (uncompressed first: no decode).
const FORMATS: [&[u8; 4]; 4] = [b"YUYV", b"NV12", b"YU12", b"MJPG"];

/// What the camera was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CameraRequest {
    /// Width of the frames handed out.
    pub width: usize,
    /// Height of the frames handed out.
    pub height: usize,
    /// Frames per second asked of the driver.
    pub fps: u32,
}

/// An open camera.
pub struct Camera {
    stream: Stream<'static>,
    format: Format,
    want: CameraRequest,
    path: String,
}

impl std::fmt::Debug for Camera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Camera")
            .field("path", &self.path)
            .field("format", &self.format.fourcc.to_string())
            .field("size", &(self.format.width, self.format.height))
            .finish_non_exhaustive()
    }
}

impl Camera {
    /// Opens `path` (`/dev/video0` when `None`) at about `want`.
    pub fn open(path: Option<&str>, want: CameraRequest) -> Result<Self, DeviceError> {
        let path = path.unwrap_or("/dev/video0").to_string();
        let open = |action: String| {
            let device = path.clone();
            move |e: std::io::Error| DeviceError::Open {
                device,
                action,
                source: e.into(),
            }
        };
        let dev = Device::with_path(&path).map_err(open("open".into()))?;
        let offered: Vec<FourCC> = dev
            .enum_formats()
            .map_err(open("list formats".into()))?
            .into_iter()
            .map(|d| d.fourcc)
            .collect();
        let fourcc = FORMATS
            .iter()
            .map(|f| FourCC::new(f))
            .find(|f| offered.contains(f))
            .ok_or_else(|| DeviceError::Format {
                device: path.clone(),
                reason: format!(
                    "offers {} and this build converts YUYV, NV12, YU12 and MJPG",
                    offered
                        .iter()
                        .map(|f| f.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        let format = dev
            .set_format(&Format::new(want.width as u32, want.height as u32, fourcc))
            .map_err(open(format!("set {fourcc} {}x{}", want.width, want.height)))?;
        // Not every driver takes a rate; the call paces itself either way.
        if let Err(e) = dev.set_params(&v4l::video::capture::Parameters::with_fps(want.fps)) {
            tracing::debug!("{path}: cannot set {} fps: {e}", want.fps);
        }
        let stream = Stream::with_buffers(&dev, Type::VideoCapture, 4)
            .map_err(open("start streaming".into()))?;
        tracing::info!(
            "camera {path}: {} {}x{} (asked {}x{} at {} fps)",
            format.fourcc,
            format.width,
            format.height,
            want.width,
            want.height,
            want.fps
        );
        Ok(Self {
            stream,
            format,
            want,
            path,
        })
    }

    /// Waits for the next frame; returns it as I420 at the requested size, with the time it
    /// was dequeued.
    pub fn next_frame(&mut self) -> Result<(Frame, Instant), DeviceError> {
        let (buf, meta) = self.stream.next().map_err(|e| DeviceError::Stream {
            device: self.path.clone(),
            reason: e.to_string(),
        })?;
        let at = Instant::now();
        let used = (meta.bytesused as usize).min(buf.len());
        let frame = decode(&buf[..used], &self.format).map_err(|reason| DeviceError::Decode {
            device: self.path.clone(),
            reason,
        })?;
        let scaled =
            convert::scale(&frame, self.want.width & !1, self.want.height & !1).map_err(|e| {
                DeviceError::Decode {
                    device: self.path.clone(),
                    reason: e.to_string(),
                }
            })?;
        Ok((scaled, at))
    }
}

/// Converts one buffer of `format` to I420.
pub fn decode(data: &[u8], format: &Format) -> Result<Frame, String> {
    let (w, h, stride) = (
        format.width as usize,
        format.height as usize,
        format.stride as usize,
    );
    let fourcc = format.fourcc.repr;
    let r = match &fourcc {
        b"YUYV" => convert::from_yuyv(data, w, h, stride),
        b"NV12" => convert::from_nv12(data, w, h, stride),
        b"YU12" => convert::from_i420(data, w, h),
        b"MJPG" => return decode_mjpeg(data),
        _ => return Err(format!("pixel format {} is not converted", format.fourcc)),
    };
    r.map_err(|e| e.to_string())
}

/// One MJPEG frame (a JPEG image) to I420.
pub fn decode_mjpeg(data: &[u8]) -> Result<Frame, String> {
    let mut d = jpeg_decoder::Decoder::new(data);
    let pixels = d.decode().map_err(|e| format!("bad MJPEG frame: {e}"))?;
    let info = d.info().ok_or("bad MJPEG frame: no header")?;
    let (w, h) = (usize::from(info.width), usize::from(info.height));
    let rgb: Vec<u8> = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&l| [l, l, l]).collect(),
        other => return Err(format!("MJPEG pixel format {other:?} is not converted")),
    };
    // Odd sizes lose their last row/column.
    let (ew, eh) = (w & !1, h & !1);
    let cropped: Vec<u8> = if ew == w {
        rgb[..w * eh * 3].to_vec()
    } else {
        (0..eh)
            .flat_map(|y| rgb[y * w * 3..(y * w + ew) * 3].to_vec())
            .collect()
    };
    convert::from_rgb24(&cropped, ew, eh).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_camera_is_a_clear_error() {
        let want = CameraRequest {
            width: 640,
            height: 480,
            fps: 30,
        };
        let e = Camera::open(Some("/dev/no-such-video"), want)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/no-such-video") && e.contains("No such file"),
            "{e}"
        );
        // Not a V4L2 device at all.
        let e = Camera::open(Some("/dev/null"), want)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/null"), "{e}");
    }

    #[test]
    fn buffers_decode_by_their_format_and_garbage_is_refused() {
        let f = Format::new(4, 2, FourCC::new(b"YUYV"));
        let yuyv = [
            10, 100, 20, 200, 30, 100, 40, 200, 50, 100, 60, 200, 70, 100, 80, 200,
        ];
        let mut fmt = f;
        fmt.stride = 8;
        let out = decode(&yuyv, &fmt).unwrap();
        assert_eq!(out.y, [10, 20, 30, 40, 50, 60, 70, 80]);
        assert_eq!(
            (out.u.as_slice(), out.v.as_slice()),
            (&[100, 100][..], &[200, 200][..])
        );
        assert!(decode(&yuyv[..10], &fmt).is_err());
        let mj = Format::new(4, 2, FourCC::new(b"MJPG"));
        assert!(decode(b"not a jpeg", &mj).unwrap_err().contains("MJPEG"));
        let other = Format::new(4, 2, FourCC::new(b"H264"));
        assert!(decode(&yuyv, &other).is_err());
    }
}
