//! H264 through openh264.

use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, RateControlMode,
    UsageType,
};
use openh264::formats::YUVSource;
use openh264::{OpenH264API, Timestamp};
use p2pcall_media_io::Frame;

use crate::CodecError;

/// Encoder settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoConfig {
    /// Target bitrate, bit/s.
    pub bitrate: u32,
    /// Frames per second (the encoder's rate control assumes it).
    pub fps: f32,
    /// Screen-content mode (text and sharp edges) instead of camera mode.
    pub screen: bool,
    /// Encoder threads (0: openh264 decides).
    pub threads: u16,
    /// Let rate control skip frames to hold the bitrate (calls); off to code every frame
    /// (speed measurements, recordings).
    pub skip_frames: bool,
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            bitrate: 1_500_000,
            fps: 30.0,
            screen: false,
            threads: 1,
            skip_frames: true,
        }
    }
}

/// One encoded frame (Annex B byte stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    /// NAL units with start codes.
    pub data: Vec<u8>,
    /// An IDR frame: decodable alone.
    pub keyframe: bool,
}

/// H264 encoder. A frame of a new size reinitialises it (the next frame is a keyframe).
pub struct VideoEncoder {
    enc: Encoder,
    cfg: VideoConfig,
}

impl std::fmt::Debug for VideoEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoEncoder")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

struct Source<'a>(&'a Frame);

impl YUVSource for Source<'_> {
    fn dimensions(&self) -> (usize, usize) {
        (self.0.width, self.0.height)
    }
    fn strides(&self) -> (usize, usize, usize) {
        (self.0.width, self.0.width / 2, self.0.width / 2)
    }
    fn y(&self) -> &[u8] {
        &self.0.y
    }
    fn u(&self) -> &[u8] {
        &self.0.u
    }
    fn v(&self) -> &[u8] {
        &self.0.v
    }
}

fn h264(e: impl std::fmt::Display) -> CodecError {
    CodecError::H264(e.to_string())
}

fn encoder(cfg: &VideoConfig) -> Result<Encoder, CodecError> {
    let c = EncoderConfig::new()
        .bitrate(BitRate::from_bps(cfg.bitrate))
        .max_frame_rate(FrameRate::from_hz(cfg.fps))
        .usage_type(if cfg.screen {
            UsageType::ScreenContentRealTime
        } else {
            UsageType::CameraVideoRealTime
        })
        .rate_control_mode(RateControlMode::Bitrate)
        // Keyframes on demand (loss recovery asks), plus one every 10 s as a safety net.
        .intra_frame_period(IntraFramePeriod::from_num_frames((cfg.fps * 10.0) as u32))
        // Rate control only holds the bitrate if it may skip frames (openh264 says so).
        .skip_frames(cfg.skip_frames)
        .num_threads(cfg.threads);
    Encoder::with_api_config(OpenH264API::from_source(), c).map_err(h264)
}

impl VideoEncoder {
    /// An encoder with `cfg`.
    pub fn new(cfg: VideoConfig) -> Result<Self, CodecError> {
        Ok(Self {
            enc: encoder(&cfg)?,
            cfg,
        })
    }

    /// Current settings.
    pub fn config(&self) -> VideoConfig {
        self.cfg
    }

    /// Changes bitrate, frame rate or mode (the encoder restarts; the next frame is a
    /// keyframe).
    pub fn reconfigure(&mut self, cfg: VideoConfig) -> Result<(), CodecError> {
        if cfg != self.cfg {
            self.enc = encoder(&cfg)?;
            self.cfg = cfg;
        }
        Ok(())
    }

    /// Encodes `f` (capture time `ms`); `keyframe` forces an IDR frame.
    pub fn encode(
        &mut self,
        f: &Frame,
        ms: u64,
        keyframe: bool,
    ) -> Result<EncodedFrame, CodecError> {
        if f.width % 2 == 1 || f.height % 2 == 1 || f.width < 16 || f.height < 16 {
            return Err(CodecError::Unsupported(format!(
                "frame size {}x{}",
                f.width, f.height
            )));
        }
        if keyframe {
            self.enc.force_intra_frame();
        }
        let bs = self
            .enc
            .encode_at(&Source(f), Timestamp::from_millis(ms))
            .map_err(h264)?;
        let ty = bs.frame_type();
        let key = matches!(ty, FrameType::IDR | FrameType::I);
        Ok(EncodedFrame {
            data: if ty == FrameType::Skip {
                Vec::new()
            } else {
                bs.to_vec()
            },
            keyframe: key,
        })
    }
}

/// H264 decoder.
pub struct VideoDecoder {
    dec: openh264::decoder::Decoder,
}

impl std::fmt::Debug for VideoDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoDecoder").finish_non_exhaustive()
    }
}

impl VideoDecoder {
    /// A decoder.
    pub fn new() -> Result<Self, CodecError> {
        Ok(Self {
            dec: openh264::decoder::Decoder::new().map_err(h264)?,
        })
    }

    /// Decodes one encoded frame; `None` while the decoder has no picture yet.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<Frame>, CodecError> {
        let Some(img) = self.dec.decode(data).map_err(h264)? else {
            return Ok(None);
        };
        let (w, h) = img.dimensions();
        let (sy, su, sv) = img.strides();
        let mut f = Frame::new(w, h);
        let copy = |dst: &mut [u8], src: &[u8], width: usize, rows: usize, stride: usize| {
            for r in 0..rows {
                if let (Some(d), Some(s)) = (
                    dst.get_mut(r * width..(r + 1) * width),
                    src.get(r * stride..r * stride + width),
                ) {
                    d.copy_from_slice(s);
                }
            }
        };
        copy(&mut f.y, img.y(), w, h, sy);
        copy(&mut f.u, img.u(), w / 2, h / 2, su);
        copy(&mut f.v, img.v(), w / 2, h / 2, sv);
        Ok(Some(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pcall_media_io::pattern::{TestPattern, decode};
    use p2pcall_media_io::psnr;

    #[test]
    fn the_test_pattern_survives_h264_with_its_stamps() {
        let p = TestPattern::new(640, 360);
        let mut enc = VideoEncoder::new(VideoConfig {
            bitrate: 1_000_000,
            ..VideoConfig::default()
        })
        .unwrap();
        let mut dec = VideoDecoder::new().unwrap();
        let mut psnrs = Vec::new();
        let (mut bytes, mut skipped) = (0, 0);
        for n in 0..30u32 {
            let src = p.frame(n, n * 33);
            let e = enc.encode(&src, u64::from(n) * 33, false).unwrap();
            assert_eq!(e.keyframe, n == 0, "frame {n}");
            if e.data.is_empty() {
                skipped += 1;
                continue;
            }
            bytes += e.data.len();
            let out = dec.decode(&e.data).unwrap().expect("a picture per frame");
            assert_eq!(decode(&out), Some((n, n * 33)), "stamp of frame {n}");
            psnrs.push(psnr(&src, &out));
        }
        let mean = psnrs.iter().sum::<f64>() / psnrs.len() as f64;
        let kbps = bytes as f64 * 8.0 / 1000.0;
        println!(
            "640x360 at 1 Mbit/s: mean PSNR {mean:.1} dB, {kbps:.0} kbit in 1 s, {skipped} skipped"
        );
        assert!(mean > 30.0, "{mean}");
        assert!(
            kbps < 1500.0,
            "rate control holds the bitrate: {kbps} kbit/s"
        );
        // A forced keyframe is one.
        assert!(enc.encode(&p.frame(30, 990), 990, true).unwrap().keyframe);
        // A new size restarts with a keyframe and decodes.
        let small = TestPattern::new(320, 240).frame(31, 1023);
        let e = enc.encode(&small, 1023, false).unwrap();
        assert!(e.keyframe);
        let out = dec.decode(&e.data).unwrap().unwrap();
        assert_eq!((out.width, out.height), (320, 240));
        assert!(
            enc.encode(&p2pcall_media_io::Frame::new(15, 16), 0, false)
                .is_err()
        );
    }
}
