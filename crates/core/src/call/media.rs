//! Capture and render threads of a call: sources are generated or read, encoded and handed
//! to the call task; received frames are decoded and written to sinks. Codec work never
//! runs on the async runtime.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use p2pcall_codec::{
    AudioConfig, AudioDecoder, AudioEncoder, AudioInput, VideoConfig, VideoDecoder, VideoEncoder,
};
use p2pcall_devices::list::{DeviceList, explain, list_devices};
use p2pcall_devices::{Camera, CameraRequest, DeviceError, Microphone, Speaker};
use p2pcall_media::audio::{FRAME_SAMPLES, Playout};
use p2pcall_media_io::audio::{BeaconDetector, SpeechLike, Tone};
use p2pcall_media_io::pattern::TestPattern;
use p2pcall_media_io::voice::{VoiceProcessor, VoiceSettings};
use p2pcall_media_io::y4m::{Y4mReader, Y4mWriter};
use p2pcall_media_io::{Frame, wav};
use tokio::sync::mpsc;

use super::CallError;

/// Where outgoing video comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoSource {
    /// No video.
    None,
    /// The synthetic test pattern (moving content; frame number and capture time in the
    /// pixels).
    TestPattern,
    /// A Y4M file (I420), looped.
    File(PathBuf),
    /// A V4L2 camera (`/dev/videoN`; the first one when `None`).
    Camera(Option<String>),
}

/// Where outgoing audio comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSource {
    /// No audio.
    None,
    /// A 440 Hz tone.
    Tone,
    /// Synthetic speech-like syllables and pauses (exercises DTX and concealment).
    Speech,
    /// A 48 kHz mono 16-bit WAV file, looped.
    File(PathBuf),
    /// A microphone (the default one when `None`).
    Mic(Option<String>),
}

impl std::str::FromStr for VideoSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" | "off" => Self::None,
            "testsrc" => Self::TestPattern,
            "camera" => Self::Camera(None),
            s if s.starts_with("camera:") => Self::Camera(Some(s["camera:".len()..].into())),
            s if s.ends_with(".y4m") => Self::File(s.into()),
            s => {
                return Err(format!(
                    "unknown video source {s:?}: use testsrc, FILE.y4m, camera[:DEV] or none"
                ));
            }
        })
    }
}

impl std::str::FromStr for AudioSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" | "off" => Self::None,
            "tone" => Self::Tone,
            "speech" => Self::Speech,
            "mic" => Self::Mic(None),
            s if s.starts_with("mic:") => Self::Mic(Some(s["mic:".len()..].into())),
            s if s.ends_with(".wav") => Self::File(s.into()),
            s => {
                return Err(format!(
                    "unknown audio source {s:?}: use tone, speech, FILE.wav, mic[:DEV] or none"
                ));
            }
        })
    }
}

/// An encoded frame from a capture thread.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub audio: bool,
    pub data: Bytes,
    /// Media clock: 48 kHz (audio) or 90 kHz (video) since the call's epoch.
    pub timestamp: u32,
    pub keyframe: bool,
}

/// Commands to a capture thread.
#[derive(Debug)]
pub(crate) enum CaptureCmd {
    Keyframe,
    Active(bool),
}

/// A running capture thread; dropping it stops the thread.
#[derive(Debug)]
pub(crate) struct Capture {
    pub cmd: std_mpsc::Sender<CaptureCmd>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Video capture settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VideoParams {
    pub width: usize,
    pub height: usize,
    pub fps: u32,
    pub kbps: u32,
}

/// Wall-clock milliseconds (truncated): what the test pattern stamps, so a receiver on the
/// same host can measure capture-to-render latency.
pub fn wall_ms() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u32)
        .unwrap_or(0)
}

/// A device that cannot be used, said with what the device listing knows.
fn device_error(e: &DeviceError, list: impl FnOnce() -> DeviceList, fallback: &str) -> CallError {
    CallError::Source(explain(e, &list(), fallback))
}

/// Opens a microphone. Without a sound card, the default one is not even tried (ALSA would
/// only print its configuration errors): the listing says why there is none.
fn open_mic(dev: Option<&str>) -> Result<Microphone, CallError> {
    const FALLBACK: &str = "--audio tone or FILE.wav";
    if dev.is_none()
        && let Some(why) = list_devices().microphones.why_none
    {
        return Err(CallError::Source(format!(
            "no microphone: {why}; use {FALLBACK}"
        )));
    }
    Microphone::open(dev).map_err(|e| device_error(&e, || list_devices().microphones, FALLBACK))
}

/// Wall-clock milliseconds with fractions (audio beacons).
pub fn wall_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

enum VideoInput {
    Pattern(TestPattern, u32),
    File(Y4mReader, PathBuf),
    Camera(Box<Camera>),
}

impl VideoInput {
    fn open(src: &VideoSource, p: VideoParams) -> Result<Self, CallError> {
        match src {
            VideoSource::TestPattern => Ok(Self::Pattern(TestPattern::new(p.width, p.height), 0)),
            VideoSource::File(path) => Ok(Self::File(
                Y4mReader::open(path).map_err(|e| CallError::Source(e.to_string()))?,
                path.clone(),
            )),
            VideoSource::Camera(dev) => {
                let want = CameraRequest {
                    width: p.width,
                    height: p.height,
                    fps: p.fps,
                };
                Camera::open(dev.as_deref(), want)
                    .map(|c| Self::Camera(Box::new(c)))
                    .map_err(|e| {
                        device_error(&e, || list_devices().cameras, "--video testsrc or FILE.y4m")
                    })
            }
            VideoSource::None => Err(CallError::Source("no video source".into())),
        }
    }

    /// A device hands out frames at its own pace; generated and file frames are paced here.
    fn device_paced(&self) -> bool {
        matches!(self, Self::Camera(_))
    }

    fn next(&mut self) -> Result<Frame, CallError> {
        match self {
            Self::Camera(c) => c
                .next_frame()
                .map(|(f, _)| f)
                .map_err(|e| CallError::Source(e.to_string())),
            Self::Pattern(p, n) => {
                let f = p.frame(*n, wall_ms());
                *n += 1;
                Ok(f)
            }
            Self::File(r, path) => {
                let src = |e: p2pcall_media_io::IoError| CallError::Source(e.to_string());
                match r.next_frame().map_err(src)? {
                    Some(f) => Ok(f),
                    None => {
                        *r = Y4mReader::open(path).map_err(src)?;
                        r.next_frame().map_err(src)?.ok_or_else(|| {
                            CallError::Source(format!("{} has no frames", path.display()))
                        })
                    }
                }
            }
        }
    }
}

fn spawn_capture(
    name: &str,
    body: impl FnOnce(std_mpsc::Receiver<CaptureCmd>, Arc<std::sync::atomic::AtomicBool>)
    + Send
    + 'static,
) -> Result<Capture, CallError> {
    let (tx, rx) = std_mpsc::channel();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || body(rx, s))
        .map_err(|e| CallError::Source(format!("cannot start the {name} thread: {e}")))?;
    Ok(Capture { cmd: tx, stop })
}

/// Starts video capture + encoding at `p.fps`, timestamps from `epoch`.
pub(crate) fn start_video(
    src: &VideoSource,
    p: VideoParams,
    screen: bool,
    epoch: Instant,
    out: mpsc::Sender<Encoded>,
    errors: mpsc::Sender<String>,
) -> Result<Capture, CallError> {
    let mut input = VideoInput::open(src, p)?;
    let mut enc = VideoEncoder::new(VideoConfig {
        bitrate: p.kbps * 1000,
        fps: p.fps as f32,
        screen,
        threads: 1,
        skip_frames: true,
    })
    .map_err(|e| CallError::Codec(e.to_string()))?;
    spawn_capture("video-capture", move |cmds, stop| {
        let interval = Duration::from_secs_f64(1.0 / f64::from(p.fps.max(1)));
        let mut next = Instant::now();
        let (mut active, mut force) = (true, true);
        let paced = input.device_paced();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            while let Ok(c) = cmds.try_recv() {
                match c {
                    CaptureCmd::Keyframe => force = true,
                    CaptureCmd::Active(a) => {
                        force |= a && !active;
                        active = a;
                    }
                }
            }
            let now = Instant::now();
            if !paced && now < next {
                std::thread::sleep(next - now);
            }
            next += interval;
            // Fell far behind (suspended, overloaded): do not burst to catch up.
            if Instant::now() > next + interval * 4 {
                next = Instant::now() + interval;
            }
            if !active {
                if paced {
                    // Keep the device streaming, drop its frames.
                    let _ = input.next();
                }
                continue;
            }
            let captured = Instant::now();
            let frame = match input.next() {
                Ok(f) => f,
                Err(e) => {
                    let _ = errors.blocking_send(e.to_string());
                    return;
                }
            };
            let ms = captured.saturating_duration_since(epoch).as_millis() as u64;
            let e = match enc.encode(&frame, ms, force) {
                Ok(e) => e,
                Err(e) => {
                    let _ = errors.blocking_send(format!("video encoder: {e}"));
                    return;
                }
            };
            force = false;
            if e.data.is_empty() {
                continue; // rate control skipped the frame
            }
            let ts = (captured.saturating_duration_since(epoch).as_secs_f64() * 90_000.0) as u64;
            // A full queue means the call task is behind: drop this frame rather than queue.
            if out
                .try_send(Encoded {
                    audio: false,
                    data: Bytes::from(e.data),
                    timestamp: ts as u32,
                    keyframe: e.keyframe,
                })
                .is_err()
                && out.is_closed()
            {
                return;
            }
        }
    })
}

/// Opens and closes every source and sink a call would use, so a missing camera, microphone,
/// file or speaker is reported before a call is placed or answered.
pub(crate) fn check_sources(
    video: &VideoSource,
    audio: &AudioSource,
    sinks: &Sinks,
    p: VideoParams,
) -> Result<(), CallError> {
    if *video != VideoSource::None {
        drop(VideoInput::open(video, p)?);
    }
    match audio {
        AudioSource::Mic(dev) => drop(open_mic(dev.as_deref())?),
        AudioSource::File(path) => {
            wav::read(path).map_err(|e| CallError::Source(e.to_string()))?;
        }
        _ => {}
    }
    drop(open_speaker(&sinks.speaker)?);
    Ok(())
}

/// The echo canceller between a microphone and the speaker (capture and render threads).
pub(crate) type Voice = Arc<Mutex<VoiceProcessor>>;

/// Echo cancellation and noise suppression for a call whose audio is a microphone.
pub(crate) fn voice_for(src: &AudioSource) -> Option<Voice> {
    matches!(src, AudioSource::Mic(_)).then(|| {
        let mut v = VoiceProcessor::new(VoiceSettings::default());
        // Speaker queue plus microphone block: a starting point, AEC3 finds the real delay.
        v.set_delay_ms(60);
        Arc::new(Mutex::new(v))
    })
}

/// Starts audio capture + Opus encoding in 20 ms frames, timestamps from `epoch`.
pub(crate) fn start_audio(
    src: &AudioSource,
    epoch: Instant,
    voice: Option<Voice>,
    out: mpsc::Sender<Encoded>,
    errors: mpsc::Sender<String>,
) -> Result<Capture, CallError> {
    // A microphone paces capture itself; generated and file audio is paced by the clock.
    let mut paced = false;
    let mut next_pcm: Box<dyn FnMut() -> Result<Vec<i16>, String> + Send> = match src {
        AudioSource::Tone => {
            // With beacons on the wall clock: a receiver on the same host times them. The
            // frame is complete now, so its first sample was "captured" 20 ms ago.
            let mut t = Tone::new(440.0, 0.3);
            Box::new(move || Ok(t.frame_at(wall_ms_f64() - 20.0)))
        }
        AudioSource::Speech => {
            let mut t = SpeechLike::new(1);
            Box::new(move || Ok(t.frame()))
        }
        AudioSource::File(path) => {
            let w = wav::read(path).map_err(|e| CallError::Source(e.to_string()))?;
            if w.rate != 48_000 || w.channels != 1 || w.samples.is_empty() {
                return Err(CallError::Source(format!(
                    "{}: need 48 kHz mono 16-bit audio, got {} Hz × {} channels (convert it: \
                     `ffmpeg -i IN -ar 48000 -ac 1 OUT.wav` or `sox IN -r 48000 -c 1 OUT.wav`)",
                    path.display(),
                    w.rate,
                    w.channels
                )));
            }
            let mut pos = 0usize;
            Box::new(move || {
                let (n, len) = (FRAME_SAMPLES as usize, w.samples.len());
                let frame = (0..n).map(|i| w.samples[(pos + i) % len]).collect();
                pos = (pos + n) % len;
                Ok(frame)
            })
        }
        AudioSource::Mic(dev) => {
            let mut mic = open_mic(dev.as_deref())?;
            paced = true;
            Box::new(move || {
                let mut pcm = mic
                    .read_frame(Duration::from_secs(2))
                    .map_err(|e| e.to_string())?;
                if let Some(v) = &voice
                    && let Ok(mut v) = v.lock()
                {
                    let _ = v.capture(&mut pcm);
                }
                Ok(pcm)
            })
        }
        AudioSource::None => return Err(CallError::Source("no audio source".into())),
    };
    let mut enc =
        AudioEncoder::new(AudioConfig::default()).map_err(|e| CallError::Codec(e.to_string()))?;
    spawn_capture("audio-capture", move |cmds, stop| {
        let mut n: u64 = 0;
        let mut active = true;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            while let Ok(c) = cmds.try_recv() {
                if let CaptureCmd::Active(a) = c {
                    active = a;
                }
            }
            // Frame n is captured at epoch + 20 ms × n: one clock for audio and video.
            let due = epoch + Duration::from_millis(20 * (n + 1));
            let now = Instant::now();
            if paced {
                // The device's clock rules and the frame count is the timestamp; a device
                // that hands out audio faster than real time (ALSA `null`) is held to it.
                let ahead = Duration::from_millis(40);
                if now + ahead < due {
                    std::thread::sleep(due - ahead - now);
                }
            } else if now < due {
                std::thread::sleep(due - now);
            } else if now > due + Duration::from_millis(200) {
                // Fell behind: skip ahead (the receiver sees a gap, not a burst).
                n = (now.saturating_duration_since(epoch).as_millis() / 20) as u64;
                continue;
            }
            let ts = (n * u64::from(FRAME_SAMPLES)) as u32;
            n += 1;
            let pcm = match next_pcm() {
                Ok(p) => p,
                Err(e) => {
                    let _ = errors.blocking_send(e);
                    return;
                }
            };
            if !active {
                continue;
            }
            let data = match enc.encode(&pcm) {
                Ok(d) => d,
                Err(e) => {
                    let _ = errors.blocking_send(format!("audio encoder: {e}"));
                    return;
                }
            };
            // DTX: a 1–2 byte packet says "silence"; Opus still wants it sent sparsely,
            // the encoder already spaces them.
            if out
                .try_send(Encoded {
                    audio: true,
                    data: Bytes::from(data),
                    timestamp: ts,
                    keyframe: true,
                })
                .is_err()
                && out.is_closed()
            {
                return;
            }
        }
    })
}

/// What the render thread is asked to do.
#[derive(Debug)]
pub(crate) enum Render {
    Audio { playout: Playout, stretch: i32 },
    Video { data: Bytes },
}

/// Counters of the render thread.
#[derive(Debug, Default, Clone)]
pub struct RenderStats {
    /// Video frames decoded.
    pub decoded: u64,
    /// Frames the decoder refused.
    pub decode_errors: u64,
    /// Size of the last decoded frame.
    pub resolution: Option<(usize, usize)>,
    /// Frames that carried a test-pattern stamp.
    pub stamped: u64,
    /// Test-pattern stamps: capture-to-render latency of the last frame, ms (same host).
    pub video_latency_ms: Option<f64>,
    /// Mean of those latencies.
    pub video_latency_mean_ms: Option<f64>,
    /// Frame numbers seen going backwards or skipping (from stamps).
    pub stamp_gaps: u64,
    /// Audio samples written.
    pub audio_samples: u64,
    /// Tone beacons: capture-to-playout latency of the last one, ms (same host).
    pub audio_latency_ms: Option<f64>,
    /// Mean of those latencies.
    pub audio_latency_mean_ms: Option<f64>,
    /// Beacons timed.
    pub beacons: u64,
    /// Frames written to the Y4M recording.
    pub recorded_frames: u64,
    /// The speaker received audio plays on, or why there is none.
    pub speaker: Option<String>,
    /// Times the speaker ran dry (a gap was heard).
    pub speaker_underruns: u64,
}

/// Sinks for received media.
#[derive(Debug, Clone, Default)]
pub struct Sinks {
    /// Write decoded video here (Y4M).
    pub video: Option<PathBuf>,
    /// Write decoded audio here (WAV, 48 kHz mono).
    pub audio: Option<PathBuf>,
    /// Play decoded audio here.
    pub speaker: SpeakerChoice,
}

/// Which speaker plays received audio.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SpeakerChoice {
    /// None (recordings only).
    #[default]
    Off,
    /// The default speaker if there is one; without one the call goes on silently.
    Auto,
    /// This ALSA device (`default`, `hw:0,0`, `null` …); failing to open it is an error.
    Device(String),
}

impl std::str::FromStr for SpeakerChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" | "off" => Self::Off,
            "auto" => Self::Auto,
            "" => return Err("empty speaker name: use auto, none or an ALSA device".into()),
            d => Self::Device(d.to_string()),
        })
    }
}

fn open_speaker(choice: &SpeakerChoice) -> Result<(Option<Speaker>, Option<String>), CallError> {
    Ok(match choice {
        SpeakerChoice::Off => (None, None),
        SpeakerChoice::Auto => match list_devices().speakers.why_none {
            Some(why) => {
                tracing::info!("received audio is not played: {why}");
                (None, Some(format!("none ({why})")))
            }
            None => match Speaker::open(None) {
                Ok(s) => (Some(s), Some("default".into())),
                Err(e) => {
                    tracing::info!("received audio is not played: {e}");
                    (None, Some(format!("none ({e})")))
                }
            },
        },
        SpeakerChoice::Device(d) => {
            let s = Speaker::open(Some(d)).map_err(|e| {
                CallError::Sink(explain(&e, &list_devices().speakers, "--speaker none"))
            })?;
            (Some(s), Some(d.clone()))
        }
    })
}

/// The render thread's input and handle.
pub(crate) type RenderThread = (
    std_mpsc::SyncSender<Render>,
    std::thread::JoinHandle<Result<(), String>>,
);

/// Starts the render thread: decodes and writes; ends when the sender is dropped.
pub(crate) fn start_render(
    sinks: Sinks,
    fps: u32,
    stats: Arc<Mutex<RenderStats>>,
    voice: Option<Voice>,
) -> Result<RenderThread, CallError> {
    let (mut speaker, label) = open_speaker(&sinks.speaker)?;
    if let Ok(mut s) = stats.lock() {
        s.speaker = label;
    }
    let (tx, rx) = std_mpsc::sync_channel::<Render>(256);
    let mut vdec = VideoDecoder::new().map_err(|e| CallError::Codec(e.to_string()))?;
    let mut adec = AudioDecoder::new().map_err(|e| CallError::Codec(e.to_string()))?;
    let mut wav_out = match &sinks.audio {
        Some(p) => {
            Some(wav::WavWriter::create(p, 48_000, 1).map_err(|e| CallError::Sink(e.to_string()))?)
        }
        None => None,
    };
    let h = std::thread::Builder::new()
        .name("render".into())
        .spawn(move || {
            let mut y4m: Option<Y4mWriter> = None;
            let mut last_stamp: Option<u32> = None;
            let mut lat_sum = 0.0;
            let (mut beacon, mut audio_lat_sum) = (BeaconDetector::new(), 0.0);
            while let Ok(msg) = rx.recv() {
                match msg {
                    Render::Audio { playout, stretch } => {
                        let input = match &playout {
                            Playout::Frame(p) => AudioInput::Packet(p),
                            Playout::Fec(p) => AudioInput::Fec(p),
                            Playout::Conceal => AudioInput::Conceal,
                            Playout::Silence => AudioInput::Silence,
                        };
                        let pcm = adec
                            .decode(input)
                            .unwrap_or_else(|_| vec![0; FRAME_SAMPLES as usize]);
                        let pcm = stretch_pcm(&pcm, stretch);
                        // Played now, or once the speaker's queue ahead of it has played.
                        let queued = speaker.as_ref().map_or(0, |s| s.queued_ms());
                        let beacons = beacon.feed(&pcm, wall_ms_f64() + f64::from(queued));
                        if let Some(w) = &mut wav_out {
                            w.write(&pcm).map_err(|e| e.to_string())?;
                        }
                        let mut spk_failed = None;
                        if let Some(spk) = &mut speaker {
                            match spk.play(&pcm) {
                                // What the speaker plays is what the echo canceller removes.
                                Ok(()) => {
                                    if let Some(v) = &voice
                                        && let Ok(mut v) = v.lock()
                                    {
                                        v.render(&pcm);
                                    }
                                }
                                Err(e) => spk_failed = Some(e.to_string()),
                            }
                        }
                        if let Ok(mut s) = stats.lock() {
                            s.audio_samples += pcm.len() as u64;
                            for lat in beacons {
                                s.beacons += 1;
                                audio_lat_sum += lat;
                                s.audio_latency_ms = Some(lat);
                                s.audio_latency_mean_ms = Some(audio_lat_sum / s.beacons as f64);
                            }
                            if let Some(spk) = &speaker {
                                s.speaker_underruns = spk.underruns();
                            }
                            if let Some(e) = spk_failed {
                                tracing::warn!("speaker: {e}");
                                s.speaker = Some(format!("none ({e})"));
                                speaker = None;
                            }
                        }
                    }
                    Render::Video { data } => {
                        let Ok(out) = vdec.decode(&data) else {
                            if let Ok(mut s) = stats.lock() {
                                s.decode_errors += 1;
                            }
                            continue;
                        };
                        let Some(f) = out else { continue };
                        let stamp = p2pcall_media_io::pattern::decode(&f);
                        let mut recorded = false;
                        if let Some(path) = &sinks.video {
                            if y4m.is_none() {
                                y4m = Some(
                                    Y4mWriter::create(path, f.width, f.height, fps)
                                        .map_err(|e| e.to_string())?,
                                );
                            }
                            // A Y4M file has one size: frames of another size are not
                            // recorded (the call itself goes on).
                            if let Some(w) = &mut y4m
                                && w.write(&f).is_ok()
                            {
                                recorded = true;
                            }
                        }
                        if let Ok(mut s) = stats.lock() {
                            s.decoded += 1;
                            s.recorded_frames += u64::from(recorded);
                            s.resolution = Some((f.width, f.height));
                            if let Some((n, cap)) = stamp {
                                s.stamped += 1;
                                let lat = f64::from(wall_ms().wrapping_sub(cap) as i32);
                                lat_sum += lat;
                                s.video_latency_ms = Some(lat);
                                s.video_latency_mean_ms = Some(lat_sum / s.stamped as f64);
                                if last_stamp.is_some_and(|l| n != l + 1) {
                                    s.stamp_gaps += 1;
                                }
                                last_stamp = Some(n);
                            }
                        }
                    }
                }
            }
            if let Some(w) = y4m {
                w.finish().map_err(|e| e.to_string())?;
            }
            if let Some(w) = wav_out {
                w.finish().map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .map_err(|e| CallError::Sink(format!("cannot start the render thread: {e}")))?;
    Ok((tx, h))
}

/// Shortens (`stretch` > 0) or lengthens a frame by resampling it linearly: the jitter
/// buffer's time-stretch request (≤ 96 samples of 960, 10 %).
pub fn stretch_pcm(pcm: &[i16], stretch: i32) -> Vec<i16> {
    let n = pcm.len();
    let m = (n as i64 - i64::from(stretch)).clamp(1, 2 * n as i64) as usize;
    if m == n || n < 2 {
        return pcm.to_vec();
    }
    (0..m)
        .map(|i| {
            let x = i as f64 * (n - 1) as f64 / (m - 1).max(1) as f64;
            let (i0, frac) = (x.floor() as usize, x.fract());
            let a = f64::from(pcm[i0]);
            let b = f64::from(pcm[(i0 + 1).min(n - 1)]);
            (a + (b - a) * frac).round() as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretching_changes_the_length_and_keeps_the_ends() {
        let pcm: Vec<i16> = (0..960).map(|i| (i * 10) as i16).collect();
        for s in [-96, -1, 0, 1, 96] {
            let out = stretch_pcm(&pcm, s);
            assert_eq!(out.len() as i32, 960 - s);
            assert_eq!(out[0], 0);
            assert_eq!(*out.last().unwrap(), 9590);
        }
    }

    #[test]
    fn sources_parse_with_helpful_errors() {
        assert_eq!("testsrc".parse(), Ok(VideoSource::TestPattern));
        assert_eq!(
            "camera:/dev/video2".parse(),
            Ok(VideoSource::Camera(Some("/dev/video2".into())))
        );
        assert_eq!("a.y4m".parse(), Ok(VideoSource::File("a.y4m".into())));
        assert!(
            "x.mp4"
                .parse::<VideoSource>()
                .unwrap_err()
                .contains("FILE.y4m")
        );
        assert_eq!("mic".parse(), Ok(AudioSource::Mic(None)));
        assert_eq!("b.wav".parse(), Ok(AudioSource::File("b.wav".into())));
        assert!(
            "b.mp3"
                .parse::<AudioSource>()
                .unwrap_err()
                .contains("FILE.wav")
        );
    }
}
