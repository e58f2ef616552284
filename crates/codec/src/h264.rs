//! H264 through openh264.
//!
//! Rate changes ([`VideoEncoder::set_rate`]) go to the running encoder through openh264's
//! `SetOption` (target and maximum bitrate, frame rate): rate control picks them up at the
//! next frame, with no keyframe and no restart. The `openh264` crate has no safe call for
//! that, so this file holds the crate's only `unsafe` code: one `SetOption` call with a value
//! that lives on the stack for the duration of the call (see [`set_option`]).
//!
//! More than one thread needs more than one slice per picture (openh264 gives each thread its
//! own slices). The crate's safe configuration offers one slice or size-limited slices; with
//! threads, pictures are cut into slices of at most [`SLICE_BYTES`], which openh264 encodes
//! as one partition of the picture per thread.

use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod,
    RateControlMode, UsageType,
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

/// Largest slice, bytes, when the encoder runs on more than one thread (see the module
/// documentation). Large enough that a delta frame of a screen is one slice per thread;
/// keyframes are cut into more.
pub const SLICE_BYTES: u32 = 32_000;

/// H264 encoder. A frame of a new size restarts it (the next frame is a keyframe); a new
/// bitrate or frame rate does not ([`VideoEncoder::set_rate`]).
pub struct VideoEncoder {
    enc: Encoder,
    cfg: VideoConfig,
    /// Size of the frames the encoder was initialised for (it initialises at the first frame).
    size: Option<(usize, usize)>,
}

impl std::fmt::Debug for VideoEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoEncoder")
            .field("cfg", &self.cfg)
            .field("size", &self.size)
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

fn check_rate(bitrate: u32, fps: f32) -> Result<(), CodecError> {
    // openh264 refuses a bitrate below one bit per frame, and clamps fps to 1..=60.
    if !(1.0..=60.0).contains(&fps) || !(10_000..=100_000_000).contains(&bitrate) {
        return Err(CodecError::Unsupported(format!(
            "rate {bitrate} bit/s at {fps} fps (10 kbit/s … 100 Mbit/s, 1 … 60 fps)"
        )));
    }
    Ok(())
}

fn encoder(cfg: &VideoConfig) -> Result<Encoder, CodecError> {
    check_rate(cfg.bitrate, cfg.fps)?;
    let mut c = EncoderConfig::new()
        .bitrate(BitRate::from_bps(cfg.bitrate))
        .max_frame_rate(FrameRate::from_hz(cfg.fps))
        .usage_type(if cfg.screen {
            UsageType::ScreenContentRealTime
        } else {
            UsageType::CameraVideoRealTime
        })
        .rate_control_mode(RateControlMode::Bitrate)
        // Keyframes only on demand (the receiver asks when it cannot decode): a periodic
        // one is a burst of several frames' size that queues at a bottleneck (at 1 Mbit/s a
        // 640x360 IDR queued 100-130 ms and cut the bandwidth estimate every 10 s).
        .intra_frame_period(IntraFramePeriod::from_num_frames(0))
        // Nor on a scene change: openh264 codes one as an IDR frame, which at a low
        // bitrate came every ~2.5 s (its rate control skips frames, the next one looks
        // like a new scene) and queued ~100 ms at 0.6 Mbit/s each time. A changed picture
        // is coded as a P-frame of intra blocks, under rate control.
        .scene_change_detect(false)
        // Rate control only holds the bitrate if it may skip frames (openh264 says so).
        .skip_frames(cfg.skip_frames)
        .num_threads(cfg.threads);
    if cfg.screen {
        c = c.complexity(Complexity::Low);
    }
    if cfg.threads != 1 {
        c = c.max_slice_len(SLICE_BYTES);
    }
    Encoder::with_api_config(OpenH264API::from_source(), c).map_err(h264)
}

/// One `SetOption` on a running encoder: `option` with an `SBitrateInfo` or a float.
#[allow(unsafe_code)]
fn set_option(enc: &mut Encoder, option: RateOption) -> Result<(), CodecError> {
    use openh264_sys2::{
        ENCODER_OPTION_BITRATE, ENCODER_OPTION_FRAME_RATE, ENCODER_OPTION_MAX_BITRATE,
        SBitrateInfo, SPATIAL_LAYER_0, SPATIAL_LAYER_ALL,
    };
    let bitrate = |layer, bps: u32| SBitrateInfo {
        iLayer: layer,
        iBitrate: bps.min(i32::MAX as u32) as i32,
    };
    let mut info;
    let mut fps;
    let (id, ptr, what): (_, *mut std::ffi::c_void, _) = match option {
        RateOption::Bitrate(bps) => {
            info = bitrate(SPATIAL_LAYER_ALL, bps);
            (ENCODER_OPTION_BITRATE, (&raw mut info).cast(), "bitrate")
        }
        RateOption::MaxBitrate(bps) => {
            info = bitrate(SPATIAL_LAYER_0, bps);
            (
                ENCODER_OPTION_MAX_BITRATE,
                (&raw mut info).cast(),
                "max bitrate",
            )
        }
        RateOption::FrameRate(f) => {
            fps = f;
            (
                ENCODER_OPTION_FRAME_RATE,
                (&raw mut fps).cast(),
                "frame rate",
            )
        }
    };
    // SAFETY: the encoder is initialised (callers check `size`), these three options only
    // write fields of its parameter set (openh264 `CWelsH264SVCEncoder::SetOption`), and
    // `ptr` points at a live `SBitrateInfo` / `f32` (as each option expects) that openh264
    // only reads during the call. No parameter the `openh264` crate relies on is changed:
    // it keeps its own copy of the configuration and only uses it to re-initialise at a new
    // frame size, which `VideoEncoder` never lets it do (it makes a new encoder instead).
    let rc = unsafe { enc.raw_api().set_option(id, ptr) };
    if rc != 0 {
        return Err(CodecError::H264(format!("SetOption({what}) failed: {rc}")));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum RateOption {
    Bitrate(u32),
    MaxBitrate(u32),
    FrameRate(f32),
}

impl VideoEncoder {
    /// An encoder with `cfg`.
    pub fn new(cfg: VideoConfig) -> Result<Self, CodecError> {
        Ok(Self {
            enc: encoder(&cfg)?,
            cfg,
            size: None,
        })
    }

    /// Current settings.
    pub fn config(&self) -> VideoConfig {
        self.cfg
    }

    /// Changes mode, threads or frame skipping (the encoder restarts; the next frame is a
    /// keyframe). A change of bitrate or frame rate alone is [`VideoEncoder::set_rate`].
    pub fn reconfigure(&mut self, cfg: VideoConfig) -> Result<(), CodecError> {
        let rate_only = VideoConfig {
            bitrate: cfg.bitrate,
            fps: cfg.fps,
            ..self.cfg
        } == cfg;
        if rate_only {
            return self.set_rate(cfg.bitrate, cfg.fps);
        }
        self.enc = encoder(&cfg)?;
        self.cfg = cfg;
        self.size = None;
        Ok(())
    }

    /// Changes the target bitrate (bit/s) and frame rate of the running encoder: rate control
    /// follows from the next frame on, which is *not* made a keyframe.
    pub fn set_rate(&mut self, bitrate: u32, fps: f32) -> Result<(), CodecError> {
        check_rate(bitrate, fps)?;
        let old = self.cfg;
        if (old.bitrate, old.fps) == (bitrate, fps) {
            return Ok(());
        }
        self.cfg.bitrate = bitrate;
        self.cfg.fps = fps;
        if self.size.is_none() {
            // Not initialised yet (that happens at the first frame): start with the new rate.
            self.enc = encoder(&self.cfg)?;
            return Ok(());
        }
        let result = (|| {
            // The frame rate first: openh264 checks the bitrate against it (≥ 1 bit/frame).
            set_option(&mut self.enc, RateOption::FrameRate(fps))?;
            // The maximum may never be below the target: raise it first, lower it last.
            if bitrate > old.bitrate {
                set_option(&mut self.enc, RateOption::MaxBitrate(bitrate))?;
                set_option(&mut self.enc, RateOption::Bitrate(bitrate))
            } else {
                set_option(&mut self.enc, RateOption::Bitrate(bitrate))?;
                set_option(&mut self.enc, RateOption::MaxBitrate(bitrate))
            }
        })();
        if result.is_err() {
            // Half-applied: a fresh encoder with the new settings (the next frame is a
            // keyframe) is better than one in an unknown state.
            self.enc = encoder(&self.cfg)?;
            self.size = None;
        }
        result
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
        let size = (f.width, f.height);
        if self.size.is_some_and(|s| s != size) {
            // The crate would re-initialise with the configuration it was created with (and
            // so undo `set_rate`): a new encoder with the current one instead.
            self.enc = encoder(&self.cfg)?;
        }
        if keyframe && self.size == Some(size) {
            self.enc.force_intra_frame();
        }
        self.size = Some(size);
        let bs = match self.enc.encode_at(&Source(f), Timestamp::from_millis(ms)) {
            Ok(bs) => bs,
            Err(e) => {
                // Whatever state it is in, the next frame starts a new encoder.
                let e = h264(e);
                self.enc = encoder(&self.cfg)?;
                self.size = None;
                return Err(e);
            }
        };
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

    /// kbit/s of `frames` frames of the pattern from frame `from` at `fps`, and whether any
    /// was a keyframe; every coded frame decodes to its stamp.
    fn run(
        enc: &mut VideoEncoder,
        dec: &mut VideoDecoder,
        p: &TestPattern,
        from: u32,
        frames: u32,
        fps: f64,
    ) -> (f64, bool) {
        let (mut bytes, mut key) = (0usize, false);
        for n in from..from + frames {
            let ms = (f64::from(n) * 1000.0 / fps) as u32;
            let e = enc.encode(&p.frame(n, ms), u64::from(ms), false).unwrap();
            key |= e.keyframe;
            bytes += e.data.len();
            if !e.data.is_empty() {
                let out = dec.decode(&e.data).unwrap().expect("a picture");
                assert_eq!(decode(&out), Some((n, ms)), "frame {n}");
            }
        }
        (bytes as f64 * 8.0 / (f64::from(frames) / fps) / 1000.0, key)
    }

    #[test]
    fn a_starved_encoder_codes_no_keyframes_of_its_own() {
        // Far below what this busy pattern needs, rate control skips frames and the next
        // coded one differs a lot from the last: with scene-change detection on, openh264
        // made that an IDR frame every couple of seconds.
        let p = TestPattern::new(480, 270);
        let mut enc = VideoEncoder::new(VideoConfig {
            bitrate: 150_000,
            ..VideoConfig::default()
        })
        .unwrap();
        let mut dec = VideoDecoder::new().unwrap();
        let first = enc.encode(&p.frame(0, 0), 0, false).unwrap();
        assert!(first.keyframe);
        dec.decode(&first.data).unwrap();
        let (kbps, key) = run(&mut enc, &mut dec, &p, 1, 300, 30.0);
        assert!(!key, "a keyframe nobody asked for ({kbps:.0} kbit/s)");
    }

    #[test]
    fn set_rate_changes_the_bitrate_without_a_keyframe() {
        // Rates at which rate control codes most frames of this busy pattern.
        let p = TestPattern::new(640, 360);
        let mut enc = VideoEncoder::new(VideoConfig {
            bitrate: 1_500_000,
            ..VideoConfig::default()
        })
        .unwrap();
        let mut dec = VideoDecoder::new().unwrap();
        let (high, _) = run(&mut enc, &mut dec, &p, 0, 60, 30.0);
        enc.set_rate(600_000, 30.0).unwrap();
        assert_eq!(enc.config().bitrate, 600_000);
        // The very next frame is a delta frame.
        let e = enc.encode(&p.frame(60, 2000), 2000, false).unwrap();
        assert!(!e.keyframe);
        dec.decode(&e.data).unwrap();
        let (settle, key) = run(&mut enc, &mut dec, &p, 61, 29, 30.0);
        assert!(!key, "no keyframe after set_rate");
        let (low, key) = run(&mut enc, &mut dec, &p, 90, 60, 30.0);
        assert!(!key);
        enc.set_rate(1_500_000, 30.0).unwrap();
        let e = enc.encode(&p.frame(150, 5000), 5000, false).unwrap();
        assert!(!e.keyframe);
        dec.decode(&e.data).unwrap();
        let (_, key) = run(&mut enc, &mut dec, &p, 151, 29, 30.0);
        assert!(!key);
        let (again, key) = run(&mut enc, &mut dec, &p, 180, 60, 30.0);
        assert!(!key);
        println!(
            "1.5 Mbit/s: {high:.0} kbit/s; 600 kbit/s: {settle:.0} (first second), {low:.0}; \
             1.5 Mbit/s again: {again:.0} kbit/s"
        );
        assert!(high > 1100.0, "{high}");
        assert!(low < 800.0 && low > 400.0, "follows 600 kbit/s: {low}");
        assert!(again > 1100.0, "follows 1.5 Mbit/s again: {again}");
        // Nothing to change is no error, and a rate out of range is refused.
        enc.set_rate(1_500_000, 30.0).unwrap();
        assert!(enc.set_rate(5, 30.0).is_err());
        assert!(enc.set_rate(1_000_000, 0.0).is_err());
    }

    #[test]
    fn set_rate_changes_the_frame_rate_rate_control_assumes() {
        // The same bitrate at half the frame rate is twice the bits per frame.
        let p = TestPattern::new(640, 360);
        let mut enc = VideoEncoder::new(VideoConfig {
            bitrate: 600_000,
            ..VideoConfig::default()
        })
        .unwrap();
        let mut dec = VideoDecoder::new().unwrap();
        run(&mut enc, &mut dec, &p, 0, 30, 30.0);
        let (at30, _) = run(&mut enc, &mut dec, &p, 30, 60, 30.0);
        enc.set_rate(600_000, 15.0).unwrap();
        // Frames now come at 15 fps (timestamps continue from frame 90 at 30 fps = 3 s).
        let (mut bytes, mut coded) = (0usize, 0u32);
        for k in 0..60u32 {
            let ms = 3000 + k * 1000 / 15;
            let e = enc
                .encode(&p.frame(90 + k, ms), u64::from(ms), false)
                .unwrap();
            assert!(!e.keyframe, "frame {k} after the change");
            if k >= 15 && !e.data.is_empty() {
                bytes += e.data.len();
                coded += 1;
            }
            if !e.data.is_empty() {
                dec.decode(&e.data).unwrap();
            }
        }
        let at15 = bytes as f64 * 8.0 / (45.0 / 15.0) / 1000.0;
        println!(
            "600 kbit/s at 30 fps: {at30:.0} kbit/s; at 15 fps: {at15:.0} kbit/s ({coded} of 45 coded)"
        );
        assert!((at15 - 600.0).abs() < 200.0, "{at15}");
        assert!((at30 - 600.0).abs() < 200.0, "{at30}");
    }

    #[test]
    fn threads_with_slices_encode_screens_that_decode() {
        let p = TestPattern::new(1280, 720);
        let mut enc = VideoEncoder::new(VideoConfig {
            bitrate: 3_000_000,
            fps: 60.0,
            screen: true,
            threads: 2,
            skip_frames: false,
        })
        .unwrap();
        let mut dec = VideoDecoder::new().unwrap();
        let (kbps, _) = run(&mut enc, &mut dec, &p, 0, 20, 60.0);
        assert!(kbps > 0.0);
        // A new size is a keyframe and keeps the rate set since.
        enc.set_rate(2_000_000, 30.0).unwrap();
        let small = TestPattern::new(640, 360);
        let e = enc.encode(&small.frame(0, 0), 0, false).unwrap();
        assert!(e.keyframe);
        assert_eq!(decode(&dec.decode(&e.data).unwrap().unwrap()), Some((0, 0)));
        assert_eq!((enc.config().bitrate, enc.config().fps), (2_000_000, 30.0));
    }
}
