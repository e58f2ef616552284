//! Microphones and speakers through cpal (ALSA on Linux), always presented to the rest of
//! the program as 48 kHz mono 16-bit: the device's own rate and channel count are converted
//! here, in the device callback, with a linear resampler.
//!
//! Device names are ALSA PCM names: `default`, `hw:0,0`, `plughw:1,0`, or `null` (a device
//! that discards what it plays and records silence: useful to test without a sound card).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample, SupportedStreamConfig};
use parking_lot::Mutex;

use crate::DeviceError;

/// The rate every other part of the program uses.
pub const RATE: u32 = 48_000;
/// Samples in a 20 ms frame at [`RATE`].
pub const FRAME: usize = 960;

/// Converts a mono stream from one rate to another by linear interpolation; keeps its phase
/// across calls.
#[derive(Debug, Clone)]
pub struct Resampler {
    step: f64,
    pos: f64,
    prev: f32,
}

impl Resampler {
    /// From `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32) -> Self {
        Self {
            step: f64::from(from.max(1)) / f64::from(to.max(1)),
            pos: 0.0,
            prev: 0.0,
        }
    }

    /// Appends the resampled `input` to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) {
        if (self.step - 1.0).abs() < 1e-12 {
            out.extend_from_slice(input);
            return;
        }
        // `pos` is measured from the sample before `input[0]` (`prev`).
        while self.pos < input.len() as f64 {
            let i = self.pos.floor() as usize;
            let frac = (self.pos - i as f64) as f32;
            let a = if i == 0 { self.prev } else { input[i - 1] };
            let b = input[i];
            out.push(a + (b - a) * frac);
            self.pos += self.step;
        }
        self.pos -= input.len() as f64;
        if let Some(&last) = input.last() {
            self.prev = last;
        }
    }
}

fn host_device(name: Option<&str>, input: bool) -> Result<(cpal::Device, String), DeviceError> {
    let host = cpal::default_host();
    let kind = if input { "microphone" } else { "speaker" };
    let device = match name {
        None => if input {
            host.default_input_device()
        } else {
            host.default_output_device()
        }
        .ok_or_else(|| DeviceError::NotFound {
            kind,
            why: "the audio system has no default device".into(),
        })?,
        Some(n) => {
            let full = if n.contains("alsa:") {
                n.to_string()
            } else {
                format!("alsa:{n}")
            };
            let id: cpal::DeviceId = full.parse().map_err(|e| DeviceError::NotFound {
                kind,
                why: format!("{n:?} is not a device name ({e})"),
            })?;
            host.device_by_id(&id)
                .ok_or_else(|| DeviceError::NotFound {
                    kind,
                    why: format!("ALSA has no PCM called {n:?} (see `p2pcall devices`)"),
                })?
        }
    };
    let label = name.unwrap_or("default").to_string();
    Ok((device, label))
}

/// The device's configuration closest to 48 kHz mono.
fn pick_config(
    device: &cpal::Device,
    input: bool,
    label: &str,
) -> Result<SupportedStreamConfig, DeviceError> {
    let open = |e: cpal::Error| DeviceError::Open {
        device: label.to_string(),
        action: "open".into(),
        source: e.into(),
    };
    let ranges: Vec<_> = if input {
        device.supported_input_configs().map_err(open)?.collect()
    } else {
        device.supported_output_configs().map_err(open)?.collect()
    };
    let usable = |f: SampleFormat| {
        matches!(
            f,
            SampleFormat::I16 | SampleFormat::I32 | SampleFormat::F32 | SampleFormat::U16
        )
    };
    // Exactly 48 kHz, fewest channels, 16-bit or float first.
    let best = ranges
        .iter()
        .filter(|r| {
            usable(r.sample_format()) && r.min_sample_rate() <= RATE && RATE <= r.max_sample_rate()
        })
        .min_by_key(|r| (r.channels(), r.sample_format() != SampleFormat::I16));
    if let Some(r) = best {
        return Ok(r.with_sample_rate(RATE));
    }
    let default = if input {
        device.default_input_config()
    } else {
        device.default_output_config()
    }
    .map_err(open)?;
    if usable(default.sample_format()) {
        Ok(default)
    } else {
        Err(DeviceError::Format {
            device: label.to_string(),
            reason: format!("sample format {} is not supported", default.sample_format()),
        })
    }
}

/// Errors the device reports while it runs (the callback cannot return them).
type Fault = Arc<Mutex<Option<String>>>;

fn fault_sink(fault: &Fault) -> impl FnMut(cpal::Error) + Send + 'static {
    let fault = fault.clone();
    move |e: cpal::Error| {
        tracing::warn!("audio device: {e}");
        {
            let mut f = fault.lock();
            f.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Starts a built stream and says what the device runs at.
fn start(
    stream: Result<cpal::Stream, cpal::Error>,
    kind: &str,
    label: &str,
    config: &SupportedStreamConfig,
) -> Result<cpal::Stream, DeviceError> {
    let open = |e: cpal::Error| DeviceError::Open {
        device: label.to_string(),
        action: "open".into(),
        source: e.into(),
    };
    let stream = stream.map_err(open)?;
    stream.play().map_err(open)?;
    tracing::info!(
        "{kind} {label}: {} Hz, {} channel(s), {}",
        config.sample_rate(),
        config.channels(),
        config.sample_format()
    );
    Ok(stream)
}

/// A microphone: 20 ms frames of 48 kHz mono.
pub struct Microphone {
    _stream: cpal::Stream,
    rx: mpsc::Receiver<Vec<i16>>,
    pending: VecDeque<i16>,
    fault: Fault,
    label: String,
    dropped: Arc<AtomicU64>,
    trimmed: u64,
}

impl std::fmt::Debug for Microphone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microphone")
            .field("device", &self.label)
            .finish_non_exhaustive()
    }
}

fn input_stream<T>(
    device: &cpal::Device,
    config: &SupportedStreamConfig,
    tx: mpsc::SyncSender<Vec<i16>>,
    fault: &Fault,
    dropped: Arc<AtomicU64>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let channels = usize::from(config.channels().max(1));
    let mut rs = Resampler::new(config.sample_rate(), RATE);
    let (mut mono, mut out) = (Vec::new(), Vec::new());
    device.build_input_stream::<T, _, _>(
        config.config(),
        move |data: &[T], _| {
            mono.clear();
            mono.extend(
                data.chunks(channels)
                    .map(|c| c.iter().map(|s| s.to_sample::<f32>()).sum::<f32>() / channels as f32),
            );
            out.clear();
            rs.push(&mono, &mut out);
            let pcm = out
                .iter()
                .map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16)
                .collect();
            // The reader is behind: drop this block rather than grow without bound.
            if tx.try_send(pcm).is_err() {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        },
        fault_sink(fault),
        None,
    )
}

impl Microphone {
    /// Opens `name` (the default microphone when `None`) and starts recording.
    pub fn open(name: Option<&str>) -> Result<Self, DeviceError> {
        let (device, label) = host_device(name, true)?;
        let config = pick_config(&device, true, &label)?;
        // About 1 s of device blocks may wait for the reader.
        let (tx, rx) = mpsc::sync_channel(100);
        let fault: Fault = Arc::default();
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        let stream = start(
            match config.sample_format() {
                SampleFormat::I16 => input_stream::<i16>(&device, &config, tx, &fault, d),
                SampleFormat::I32 => input_stream::<i32>(&device, &config, tx, &fault, d),
                SampleFormat::U16 => input_stream::<u16>(&device, &config, tx, &fault, d),
                _ => input_stream::<f32>(&device, &config, tx, &fault, d),
            },
            "microphone",
            &label,
            &config,
        )?;
        Ok(Self {
            _stream: stream,
            rx,
            pending: VecDeque::new(),
            fault,
            label,
            dropped,
            trimmed: 0,
        })
    }

    /// The next 20 ms; an error when the device fails or delivers nothing for `timeout`.
    pub fn read_frame(&mut self, timeout: Duration) -> Result<Vec<i16>, DeviceError> {
        while self.pending.len() < FRAME {
            if let Some(f) = self.fault.lock().clone() {
                return Err(DeviceError::Stream {
                    device: self.label.clone(),
                    reason: f,
                });
            }
            match self.rx.recv_timeout(timeout) {
                Ok(block) => self.pending.extend(block),
                Err(_) => {
                    return Err(DeviceError::Stream {
                        device: self.label.clone(),
                        reason: format!(
                            "no audio for {} ms (unplugged, or used by another program?)",
                            timeout.as_millis()
                        ),
                    });
                }
            }
        }
        // Whatever else is ready; beyond 60 ms of backlog (a device clock faster than the
        // reader's) the oldest audio goes: latency stays bounded.
        while let Ok(block) = self.rx.try_recv() {
            self.pending.extend(block);
        }
        if self.pending.len() > 3 * FRAME {
            let n = self.pending.len() - 3 * FRAME;
            self.pending.drain(..n);
            self.trimmed += n as u64;
        }
        Ok(self.pending.drain(..FRAME).collect())
    }

    /// Samples dropped to keep the backlog under 60 ms.
    pub fn trimmed_samples(&self) -> u64 {
        self.trimmed
    }

    /// Device blocks dropped because the reader fell behind.
    pub fn dropped_blocks(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Counters of a speaker.
#[derive(Debug, Default)]
struct Counters {
    played: AtomicU64,
    underruns: AtomicU64,
    dropped: AtomicU64,
}

/// A speaker: takes 48 kHz mono, plays it at the device's rate and channel count.
pub struct Speaker {
    _stream: cpal::Stream,
    queue: Arc<Mutex<VecDeque<f32>>>,
    resampler: Resampler,
    device_rate: u32,
    counters: Arc<Counters>,
    fault: Fault,
    label: String,
}

impl std::fmt::Debug for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaker")
            .field("device", &self.label)
            .finish_non_exhaustive()
    }
}

fn output_stream<T>(
    device: &cpal::Device,
    config: &SupportedStreamConfig,
    queue: Arc<Mutex<VecDeque<f32>>>,
    counters: Arc<Counters>,
    fault: &Fault,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + FromSample<f32>,
{
    let channels = usize::from(config.channels().max(1));
    device.build_output_stream::<T, _, _>(
        config.config(),
        move |data: &mut [T], _| {
            let mut q = queue.lock();
            let mut short = false;
            for frame in data.chunks_mut(channels) {
                let s = q.pop_front().unwrap_or_else(|| {
                    short = true;
                    0.0
                });
                frame.iter_mut().for_each(|o| *o = T::from_sample(s));
            }
            counters
                .played
                .fetch_add((data.len() / channels) as u64, Ordering::Relaxed);
            if short {
                counters.underruns.fetch_add(1, Ordering::Relaxed);
            }
        },
        fault_sink(fault),
        None,
    )
}

/// Most audio a speaker queues before it drops the oldest (a call's jitter buffer is the
/// place for delay, not the device queue).
const MAX_QUEUE_MS: u64 = 200;

impl Speaker {
    /// Opens `name` (the default speaker when `None`) and starts playing (silence at first).
    pub fn open(name: Option<&str>) -> Result<Self, DeviceError> {
        let (device, label) = host_device(name, false)?;
        let config = pick_config(&device, false, &label)?;
        let queue: Arc<Mutex<VecDeque<f32>>> = Arc::default();
        let counters = Arc::new(Counters::default());
        let fault: Fault = Arc::default();
        let (q, c) = (queue.clone(), counters.clone());
        let stream = start(
            match config.sample_format() {
                SampleFormat::I16 => output_stream::<i16>(&device, &config, q, c, &fault),
                SampleFormat::I32 => output_stream::<i32>(&device, &config, q, c, &fault),
                SampleFormat::U16 => output_stream::<u16>(&device, &config, q, c, &fault),
                _ => output_stream::<f32>(&device, &config, q, c, &fault),
            },
            "speaker",
            &label,
            &config,
        )?;
        Ok(Self {
            _stream: stream,
            queue,
            resampler: Resampler::new(RATE, config.sample_rate()),
            device_rate: config.sample_rate(),
            counters,
            fault,
            label,
        })
    }

    /// Queues 48 kHz mono samples; an error once the device has failed.
    pub fn play(&mut self, pcm: &[i16]) -> Result<(), DeviceError> {
        if let Some(f) = self.fault.lock().clone() {
            return Err(DeviceError::Stream {
                device: self.label.clone(),
                reason: f,
            });
        }
        let input: Vec<f32> = pcm.iter().map(|&s| f32::from(s) / 32768.0).collect();
        let mut out = Vec::with_capacity(input.len() * 2);
        self.resampler.push(&input, &mut out);
        let mut q = self.queue.lock();
        q.extend(out);
        let max = (u64::from(self.device_rate) * MAX_QUEUE_MS / 1000) as usize;
        if q.len() > max {
            let n = q.len() - max;
            q.drain(..n);
            self.counters.dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Audio queued and not yet handed to the device, ms.
    pub fn queued_ms(&self) -> u32 {
        let n = self.queue.lock().len() as u64;
        (n * 1000 / u64::from(self.device_rate.max(1))) as u32
    }

    /// Samples (per channel, at the device rate) the device has taken.
    pub fn played_samples(&self) -> u64 {
        self.counters.played.load(Ordering::Relaxed)
    }

    /// Device callbacks that found the queue short (a gap was played).
    pub fn underruns(&self) -> u64 {
        self.counters.underruns.load(Ordering::Relaxed)
    }

    /// Samples dropped because the queue ran over [`MAX_QUEUE_MS`].
    pub fn dropped_samples(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_keeps_length_ratio_and_a_tone() {
        // 44.1 kHz → 48 kHz, in uneven blocks: length follows the ratio, the tone survives.
        let tone: Vec<f32> = (0..44_100)
            .map(|i| (2.0 * std::f32::consts::PI * 441.0 * i as f32 / 44_100.0).sin())
            .collect();
        let mut rs = Resampler::new(44_100, RATE);
        let mut out = Vec::new();
        for block in tone.chunks(441 + 17) {
            rs.push(block, &mut out);
        }
        assert!((out.len() as i64 - 48_000).abs() <= 1, "{}", out.len());
        let crossings = out.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        assert!((440..=442).contains(&crossings), "{crossings}");
        // Same rate: untouched.
        let mut same = Vec::new();
        Resampler::new(RATE, RATE).push(&tone[..100], &mut same);
        assert_eq!(same, tone[..100]);
    }

    #[test]
    fn a_missing_device_is_a_clear_error() {
        let e = Microphone::open(Some("no-such-pcm"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no-such-pcm"), "{e}");
        let e = Speaker::open(Some("no-such-pcm")).unwrap_err().to_string();
        assert!(e.contains("no-such-pcm"), "{e}");
    }

    #[test]
    fn the_null_device_records_silence_and_takes_what_is_played() {
        // ALSA's `null` PCM exists wherever alsa-lib does, sound card or not.
        let mut mic = Microphone::open(Some("null")).unwrap();
        for _ in 0..3 {
            let f = mic.read_frame(Duration::from_secs(2)).unwrap();
            assert_eq!(f.len(), FRAME);
            assert!(f.iter().all(|&s| s == 0));
        }
        let mut spk = Speaker::open(Some("null")).unwrap();
        let tone: Vec<i16> = (0..FRAME).map(|i| ((i % 48) as i16 - 24) * 500).collect();
        let t0 = std::time::Instant::now();
        while spk.played_samples() < u64::from(RATE) / 5 && t0.elapsed() < Duration::from_secs(5) {
            spk.play(&tone).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            spk.played_samples() >= u64::from(RATE) / 5,
            "{}",
            spk.played_samples()
        );
        assert!(spk.queued_ms() <= MAX_QUEUE_MS as u32);
    }
}
