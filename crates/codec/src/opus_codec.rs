//! Opus at 48 kHz mono, 20 ms frames, in-band FEC and DTX.

use opus::{Application, Bitrate, Channels};

use crate::CodecError;

/// Samples per 20 ms frame.
pub const FRAME: usize = 960;
/// Largest Opus packet we produce.
const MAX_PACKET: usize = 1275;

/// Encoder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioConfig {
    /// Target bitrate, bit/s.
    pub bitrate: i32,
    /// Expected packet loss in percent (sizes the in-band FEC).
    pub expected_loss: i32,
    /// Send almost nothing during silence.
    pub dtx: bool,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            bitrate: 32_000,
            expected_loss: 5,
            dtx: true,
        }
    }
}

fn opus_err(e: opus::Error) -> CodecError {
    CodecError::Opus(e.to_string())
}

/// Opus encoder.
pub struct AudioEncoder {
    enc: opus::Encoder,
}

impl std::fmt::Debug for AudioEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioEncoder").finish_non_exhaustive()
    }
}

impl AudioEncoder {
    /// A VoIP encoder with in-band FEC.
    pub fn new(cfg: AudioConfig) -> Result<Self, CodecError> {
        let mut enc =
            opus::Encoder::new(48_000, Channels::Mono, Application::Voip).map_err(opus_err)?;
        enc.set_inband_fec(true).map_err(opus_err)?;
        let mut e = Self { enc };
        e.set(cfg)?;
        Ok(e)
    }

    /// Changes bitrate, expected loss and DTX.
    pub fn set(&mut self, cfg: AudioConfig) -> Result<(), CodecError> {
        self.enc
            .set_bitrate(Bitrate::Bits(cfg.bitrate))
            .map_err(opus_err)?;
        self.enc
            .set_packet_loss_perc(cfg.expected_loss.clamp(0, 100))
            .map_err(opus_err)?;
        self.enc.set_dtx(cfg.dtx).map_err(opus_err)
    }

    /// Encodes one 20 ms frame. In DTX the packet is 1–2 bytes (the caller may send it
    /// rarely or not at all).
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, CodecError> {
        if pcm.len() != FRAME {
            return Err(CodecError::Unsupported(format!(
                "{} samples per frame (need {FRAME})",
                pcm.len()
            )));
        }
        self.enc.encode_vec(pcm, MAX_PACKET).map_err(opus_err)
    }
}

/// What to decode, as the audio jitter buffer decided.
#[derive(Debug, Clone, Copy)]
pub enum AudioInput<'a> {
    /// The frame's own packet.
    Packet(&'a [u8]),
    /// The frame is missing; this is the next packet, whose FEC describes it.
    Fec(&'a [u8]),
    /// The frame is missing: loss concealment.
    Conceal,
    /// DTX silence.
    Silence,
}

/// Opus decoder.
pub struct AudioDecoder {
    dec: opus::Decoder,
}

impl std::fmt::Debug for AudioDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioDecoder").finish_non_exhaustive()
    }
}

impl AudioDecoder {
    /// A 48 kHz mono decoder.
    pub fn new() -> Result<Self, CodecError> {
        Ok(Self {
            dec: opus::Decoder::new(48_000, Channels::Mono).map_err(opus_err)?,
        })
    }

    /// 20 ms of audio.
    pub fn decode(&mut self, input: AudioInput<'_>) -> Result<Vec<i16>, CodecError> {
        let mut out = vec![0i16; FRAME];
        let n = match input {
            AudioInput::Packet(p) => self.dec.decode(p, &mut out, false),
            AudioInput::Fec(next) => self.dec.decode(next, &mut out, true),
            AudioInput::Conceal => self.dec.decode(&[], &mut out, false),
            AudioInput::Silence => return Ok(out),
        }
        .map_err(opus_err)?;
        out.truncate(n);
        out.resize(FRAME, 0);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pcall_media_io::audio::{SpeechLike, Tone};

    fn snr(a: &[i16], b: &[i16]) -> f64 {
        let sig: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
        let noise: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum();
        10.0 * (sig / noise.max(1.0)).log10()
    }

    #[test]
    fn speech_round_trips_fec_rebuilds_a_lost_frame_and_dtx_saves_bytes() {
        let mut enc = AudioEncoder::new(AudioConfig::default()).unwrap();
        let mut dec = AudioDecoder::new().unwrap();
        let mut tone = Tone::new(440.0, 0.3);
        let frames: Vec<Vec<i16>> = (0..50).map(|_| tone.frame()).collect();
        let pkts: Vec<Vec<u8>> = frames.iter().map(|f| enc.encode(f).unwrap()).collect();
        let mut out = Vec::new();
        for (i, p) in pkts.iter().enumerate() {
            out.push(if i == 30 {
                dec.decode(AudioInput::Fec(&pkts[31])).unwrap()
            } else {
                dec.decode(AudioInput::Packet(p)).unwrap()
            });
        }
        // Opus delays its output by its look-ahead (6.5 ms = 312 samples at 48 kHz).
        let flat_in: Vec<i16> = frames.concat();
        let flat_out: Vec<i16> = out.concat();
        let d = 312;
        let s = snr(
            &flat_in[10 * 960..45 * 960 - d],
            &flat_out[10 * 960 + d..45 * 960],
        );
        println!("tone through Opus with frame 30 rebuilt from FEC: SNR {s:.1} dB");
        assert!(s > 10.0, "{s}");
        assert_eq!(dec.decode(AudioInput::Conceal).unwrap().len(), FRAME);
        assert_eq!(dec.decode(AudioInput::Silence).unwrap(), vec![0; FRAME]);

        let mut speech = SpeechLike::new(3);
        let mut enc = AudioEncoder::new(AudioConfig::default()).unwrap();
        let sizes: Vec<usize> = (0..250)
            .map(|_| enc.encode(&speech.frame()).unwrap().len())
            .collect();
        let tiny = sizes.iter().filter(|s| **s <= 3).count();
        println!(
            "speech-like, 5 s: {} bytes, {tiny} DTX frames of 250",
            sizes.iter().sum::<usize>()
        );
        assert!(tiny > 20, "DTX kicks in during pauses: {tiny}");
        assert!(enc.encode(&[0i16; 100]).is_err());
    }
}
