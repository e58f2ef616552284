//! 16-bit PCM WAV files (mono or stereo; the call engine uses 48 kHz mono).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::IoError;

/// A decoded WAV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wav {
    /// Sample rate.
    pub rate: u32,
    /// Channels.
    pub channels: u16,
    /// Interleaved samples.
    pub samples: Vec<i16>,
}

fn fmt_err(path: &Path, reason: &str) -> IoError {
    IoError::Format {
        path: path.to_path_buf(),
        format: "WAV",
        reason: reason.to_string(),
    }
}

/// Reads a whole 16-bit PCM WAV file.
pub fn read(path: &Path) -> Result<Wav, IoError> {
    let io = |source| IoError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut data = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .read_to_end(&mut data)
        .map_err(|source| IoError::File {
            path: path.to_path_buf(),
            source,
        })?;
    if data.len() < 12 || &data[..4] != b"RIFF" || &data[8..12] != b"WAVE" {
        return Err(fmt_err(path, "missing RIFF/WAVE header"));
    }
    let mut pos = 12;
    let (mut rate, mut channels, mut bits, mut pcm) = (0u32, 0u16, 0u16, None);
    while pos + 8 <= data.len() {
        let id = &data[pos..pos + 4];
        let len = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]])
            as usize;
        let body = data
            .get(pos + 8..pos + 8 + len)
            .ok_or_else(|| fmt_err(path, "truncated chunk"))?;
        match id {
            b"fmt " if body.len() >= 16 => {
                if u16::from_le_bytes([body[0], body[1]]) != 1 {
                    return Err(IoError::Unsupported {
                        what: "WAV encoding (only PCM)",
                        value: format!("{}", u16::from_le_bytes([body[0], body[1]])),
                    });
                }
                channels = u16::from_le_bytes([body[2], body[3]]);
                rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                bits = u16::from_le_bytes([body[14], body[15]]);
            }
            b"data" => pcm = Some(body),
            _ => {}
        }
        pos += 8 + len + (len & 1);
    }
    let pcm = pcm.ok_or_else(|| fmt_err(path, "no data chunk"))?;
    if bits != 16 || channels == 0 || rate == 0 {
        return Err(IoError::Unsupported {
            what: "WAV format (only 16-bit PCM)",
            value: format!("{bits} bits, {channels} channels, {rate} Hz"),
        });
    }
    Ok(Wav {
        rate,
        channels,
        samples: pcm
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect(),
    })
}

/// Writes samples to a WAV file as they come; the header is completed by `finish`.
#[derive(Debug)]
pub struct WavWriter {
    path: PathBuf,
    f: std::io::BufWriter<std::fs::File>,
    samples: u64,
    channels: u16,
    rate: u32,
}

impl WavWriter {
    /// Creates `path`, or `stem (n).wav` beside it if that name is taken (see
    /// [`crate::create_new`]); [`path`](Self::path) tells which.
    pub fn create(path: &Path, rate: u32, channels: u16) -> Result<Self, IoError> {
        let (f, path) = crate::create_new(path)?;
        let mut w = Self {
            path,
            f: std::io::BufWriter::new(f),
            samples: 0,
            channels,
            rate,
        };
        w.header()?;
        Ok(w)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn header(&mut self) -> Result<(), IoError> {
        let data = (self.samples * 2).min(u64::from(u32::MAX) - 36) as u32;
        let mut h = Vec::with_capacity(44);
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&(36 + data).to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&self.channels.to_le_bytes());
        h.extend_from_slice(&self.rate.to_le_bytes());
        h.extend_from_slice(&(self.rate * u32::from(self.channels) * 2).to_le_bytes());
        h.extend_from_slice(&(self.channels * 2).to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(b"data");
        h.extend_from_slice(&data.to_le_bytes());
        self.f.write_all(&h).map_err(|source| IoError::File {
            path: self.path.clone(),
            source,
        })
    }

    /// Appends interleaved samples.
    pub fn write(&mut self, samples: &[i16]) -> Result<(), IoError> {
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        self.samples += samples.len() as u64;
        self.f.write_all(&bytes).map_err(|source| IoError::File {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes the final sizes into the header.
    pub fn finish(mut self) -> Result<(), IoError> {
        let io = |source| IoError::File {
            path: self.path.clone(),
            source,
        };
        self.f.seek(SeekFrom::Start(0)).map_err(io)?;
        self.header()?;
        self.f.flush().map_err(|source| IoError::File {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::Tone;

    #[test]
    fn samples_round_trip_and_bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wav");
        let mut t = Tone::new(440.0, 0.3);
        let frames: Vec<i16> = (0..10).flat_map(|_| t.frame()).collect();
        let mut w = WavWriter::create(&path, 48_000, 1).unwrap();
        w.write(&frames).unwrap();
        w.finish().unwrap();
        let r = read(&path).unwrap();
        assert_eq!((r.rate, r.channels), (48_000, 1));
        assert_eq!(r.samples, frames);
        std::fs::write(&path, b"RIFF\0\0\0\0WAVEdata\xff\xff\xff\x7f").unwrap();
        assert!(matches!(read(&path), Err(IoError::Format { .. })));
        std::fs::write(&path, b"not a wav").unwrap();
        assert!(matches!(read(&path), Err(IoError::Format { .. })));
    }

    #[test]
    fn recording_twice_to_one_name_keeps_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("got.wav");
        let mut first = WavWriter::create(&path, 48_000, 1).unwrap();
        first.write(&[1000; 960]).unwrap();
        first.finish().unwrap();
        let mut second = WavWriter::create(&path, 48_000, 1).unwrap();
        assert_eq!(second.path(), dir.path().join("got (1).wav"));
        second.write(&[-1000; 480]).unwrap();
        second.finish().unwrap();
        assert_eq!(read(&path).unwrap().samples, vec![1000; 960]);
        assert_eq!(
            read(&dir.path().join("got (1).wav")).unwrap().samples,
            vec![-1000; 480]
        );
        let video = dir.path().join("got.y4m");
        std::fs::write(&video, b"mine").unwrap();
        let w = crate::y4m::Y4mWriter::create(&video, 16, 16, 30).unwrap();
        assert_eq!(w.path(), dir.path().join("got (1).y4m"));
        assert_eq!(std::fs::read(&video).unwrap(), b"mine");
    }
}
