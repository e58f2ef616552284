//! Echo cancellation and noise suppression for microphone input.
//!
//! This is WebRTC's audio processing module (AEC3 echo canceller, noise suppressor,
//! high-pass filter, AGC2 gain control) in its pure-Rust port, the `sonora` crate: the
//! algorithms every browser call uses, with no C++ build and no system library. Chosen over
//! `webrtc-audio-processing` (C++ via meson, a system or bundled build of a large tree) and
//! `aec3` (an AEC-only port whose API was still in flux); see
//! docs/decisions/0058-echo-cancellation-with-sonora.md.
//!
//! The processor sees both directions: what the speaker plays (`render`) and what the
//! microphone hears (`capture`), in 10 ms blocks at 48 kHz mono. It estimates the echo path
//! (delay and room response) itself; `set_delay_ms` gives it a head start.

use sonora::config::{EchoCanceller, GainController2, NoiseSuppression};
use sonora::{AudioProcessing, Config, StreamConfig};

use crate::IoError;
use crate::audio::RATE;

/// Samples in one 10 ms block.
pub const BLOCK: usize = (RATE / 100) as usize;

/// Which parts run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoiceSettings {
    /// Remove the far end's voice coming back from our speaker.
    pub echo_cancel: bool,
    /// Remove stationary background noise (fans, hum, hiss).
    pub noise_suppress: bool,
    /// Bring the voice to a steady level.
    pub gain_control: bool,
}

impl Default for VoiceSettings {
    fn default() -> Self {
        Self {
            echo_cancel: true,
            noise_suppress: true,
            gain_control: false,
        }
    }
}

/// The echo canceller and noise suppressor for one microphone.
pub struct VoiceProcessor {
    apm: AudioProcessing,
    settings: VoiceSettings,
    /// Played audio short of a whole block.
    render_rest: Vec<i16>,
}

impl std::fmt::Debug for VoiceProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceProcessor")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl VoiceProcessor {
    /// A processor for 48 kHz mono.
    pub fn new(settings: VoiceSettings) -> Self {
        let config = Config {
            echo_canceller: settings.echo_cancel.then(EchoCanceller::default),
            noise_suppression: settings.noise_suppress.then(NoiseSuppression::default),
            gain_controller2: settings.gain_control.then(GainController2::default),
            ..Default::default()
        };
        let stream = StreamConfig::new(RATE, 1);
        let apm = AudioProcessing::builder()
            .config(config)
            .capture_config(stream)
            .render_config(stream)
            .build();
        Self {
            apm,
            settings,
            render_rest: Vec::with_capacity(2 * BLOCK),
        }
    }

    /// What runs.
    pub fn settings(&self) -> VoiceSettings {
        self.settings
    }

    /// Audio as it goes to the speaker, any length (whole 10 ms blocks are analysed as
    /// they complete; the played audio itself is not changed).
    pub fn render(&mut self, pcm: &[i16]) {
        let mut scratch = [0i16; BLOCK];
        self.render_rest.extend_from_slice(pcm);
        let whole = self.render_rest.len() / BLOCK * BLOCK;
        for b in self.render_rest[..whole].chunks_exact(BLOCK) {
            let _ = self.apm.process_render_i16(b, &mut scratch);
        }
        self.render_rest.drain(..whole);
    }

    /// Microphone audio (a multiple of 10 ms), cleaned in place.
    pub fn capture(&mut self, pcm: &mut [i16]) -> Result<(), IoError> {
        if !pcm.len().is_multiple_of(BLOCK) {
            return Err(IoError::Unsupported {
                what: "voice processing frame",
                value: format!("{} samples (need a multiple of {BLOCK})", pcm.len()),
            });
        }
        let mut out = [0i16; BLOCK];
        for b in pcm.chunks_exact_mut(BLOCK) {
            if self.apm.process_capture_i16(b, &mut out).is_ok() {
                b.copy_from_slice(&out);
            }
        }
        Ok(())
    }

    /// The expected delay from `render` to the echo showing up in `capture` (speaker and
    /// microphone buffering); clamped to 0..=500 ms.
    pub fn set_delay_ms(&mut self, ms: u32) {
        let _ = self.apm.set_stream_delay_ms(ms.min(500) as i32);
    }

    /// The echo canceller's own estimate of how much echo it removes, dB.
    pub fn echo_return_loss_enhancement_db(&self) -> Option<f64> {
        self.apm.statistics().echo_return_loss_enhancement
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::SpeechLike;

    fn energy(s: &[i16]) -> f64 {
        s.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / s.len().max(1) as f64
    }

    fn db(a: f64, b: f64) -> f64 {
        10.0 * (a.max(1e-9) / b.max(1e-9)).log10()
    }

    /// A room: the speaker's sound arrives after 30 ms at 40 %, with a reflection at 55 ms.
    fn room(far: &[i16], i: usize) -> f64 {
        let at = |d: usize| i.checked_sub(d).map_or(0.0, |j| f64::from(far[j]));
        0.4 * at(30 * 48) + 0.15 * at(55 * 48)
    }

    /// Runs `secs` of far-end speech through the room into the microphone, with `near`
    /// added to what the microphone hears; returns (microphone, processed).
    fn run(
        p: &mut VoiceProcessor,
        secs: usize,
        near: impl Fn(usize) -> f64,
    ) -> (Vec<i16>, Vec<i16>) {
        let mut speech = SpeechLike::new(5);
        let far: Vec<i16> = (0..secs * 50).flat_map(|_| speech.frame()).collect();
        let mic: Vec<i16> = (0..far.len())
            .map(|i| (room(&far, i) + near(i)).clamp(-32768.0, 32767.0) as i16)
            .collect();
        let mut out = mic.clone();
        for (f, m) in far.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
            p.render(f);
            p.capture(m).unwrap();
        }
        (mic, out)
    }

    #[test]
    fn echo_of_the_far_end_is_removed() {
        let mut p = VoiceProcessor::new(VoiceSettings {
            noise_suppress: false,
            ..Default::default()
        });
        p.set_delay_ms(20);
        let (mic, out) = run(&mut p, 10, |_| 0.0);
        // After convergence (the last 5 s), echo return loss enhancement.
        let tail = mic.len() / 2;
        let erle = db(energy(&mic[tail..]), energy(&out[tail..]));
        eprintln!(
            "ERLE {erle:.1} dB (canceller's own estimate {:?})",
            p.echo_return_loss_enhancement_db()
        );
        assert!(erle > 20.0, "only {erle:.1} dB of echo removed");
    }

    /// Energy per 20 ms window, dB: the syllable envelope (waveforms are not compared:
    /// the high-pass filter shifts the phase of a voice's low harmonics).
    fn envelope(s: &[i16]) -> Vec<f64> {
        s.chunks(960).map(|w| db(energy(w), 1.0)).collect()
    }

    fn correlation(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len().min(b.len()) as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    }

    #[test]
    fn near_end_speech_passes_while_the_far_end_talks() {
        let mut p = VoiceProcessor::new(VoiceSettings::default());
        let mut voice = SpeechLike::new(11);
        let near: Vec<i16> = (0..12 * 50).flat_map(|_| voice.frame()).collect();
        // Far end alone for 6 s, then both talk for 6 s (the near end as loud as the echo).
        let start = 6 * RATE as usize;
        let near_at = |i: usize| {
            if i >= start {
                0.4 * f64::from(near[i])
            } else {
                0.0
            }
        };
        let (mic, out) = run(&mut p, 12, near_at);
        let sent: Vec<i16> = (start..out.len()).map(|i| near_at(i) as i16).collect();
        let echo: Vec<i16> = (start..out.len())
            .map(|i| (f64::from(mic[i]) - near_at(i)) as i16)
            .collect();
        let kept = db(energy(&out[start..]), energy(&sent));
        // What passes follows the near end's syllables, not the echo's.
        let out_env = envelope(&out[start..]);
        let (with_near, with_echo) = (
            correlation(&out_env, &envelope(&sent)),
            correlation(&out_env, &envelope(&echo)),
        );
        let mic_env = envelope(&mic[start..]);
        eprintln!(
            "double talk: near end kept at {kept:.1} dB; envelope correlation with the near \
             end {with_near:.2} (microphone {:.2}), with the echo {with_echo:.2} (microphone \
             {:.2})",
            correlation(&mic_env, &envelope(&sent)),
            correlation(&mic_env, &envelope(&echo)),
        );
        assert!(kept > -10.0, "near-end voice attenuated by {kept:.1} dB");
        assert!(
            with_near > 0.5,
            "output does not follow the near end ({with_near:.2})"
        );
        assert!(with_echo < 0.25, "output follows the echo ({with_echo:.2})");
    }

    #[test]
    fn stationary_noise_is_suppressed() {
        let mut p = VoiceProcessor::new(VoiceSettings {
            echo_cancel: false,
            ..Default::default()
        });
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise: Vec<i16> = (0..6 * RATE as usize)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 48) as i16) / 32 // about -36 dBFS white noise
            })
            .collect();
        let before = energy(&noise[3 * RATE as usize..]);
        p.capture(&mut noise).unwrap();
        let reduced = db(before, energy(&noise[3 * RATE as usize..]));
        eprintln!("noise suppressed by {reduced:.1} dB");
        assert!(reduced > 6.0, "noise only {reduced:.1} dB lower");
        assert!(p.capture(&mut [0; 100]).is_err());
    }
}
