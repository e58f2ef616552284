//! YUV4MPEG2 files (4:2:0), the format `ffmpeg -f yuv4mpegpipe` and most test sequences use.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::{Frame, IoError};

/// Largest frame dimension accepted.
pub const MAX_DIM: usize = 8192;

/// Reads frames from a Y4M file.
#[derive(Debug)]
pub struct Y4mReader {
    path: PathBuf,
    r: BufReader<std::fs::File>,
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// Frames per second (numerator, denominator).
    pub fps: (u32, u32),
}

fn fmt_err(path: &Path, reason: impl Into<String>) -> IoError {
    IoError::Format {
        path: path.to_path_buf(),
        format: "Y4M",
        reason: reason.into(),
    }
}

impl Y4mReader {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, IoError> {
        let file = std::fs::File::open(path).map_err(|source| IoError::File {
            path: path.to_path_buf(),
            source,
        })?;
        let mut r = BufReader::new(file);
        let mut line = Vec::new();
        r.by_ref()
            .take(1024)
            .read_until(b'\n', &mut line)
            .map_err(|source| IoError::File {
                path: path.to_path_buf(),
                source,
            })?;
        let text = String::from_utf8_lossy(&line);
        let mut words = text.split_whitespace();
        if words.next() != Some("YUV4MPEG2") {
            return Err(fmt_err(path, "missing YUV4MPEG2 signature"));
        }
        let (mut width, mut height, mut fps) = (0, 0, (30, 1));
        for w in words {
            let (tag, val) = w.split_at(1);
            match tag {
                "W" => width = val.parse().map_err(|_| fmt_err(path, "bad width"))?,
                "H" => height = val.parse().map_err(|_| fmt_err(path, "bad height"))?,
                "F" => {
                    let (n, d) = val
                        .split_once(':')
                        .ok_or_else(|| fmt_err(path, "bad frame rate"))?;
                    fps = (
                        n.parse().map_err(|_| fmt_err(path, "bad frame rate"))?,
                        d.parse().map_err(|_| fmt_err(path, "bad frame rate"))?,
                    );
                }
                "C" if !val.starts_with("420") => {
                    return Err(IoError::Unsupported {
                        what: "Y4M colour space (only 4:2:0)",
                        value: val.to_string(),
                    });
                }
                _ => {}
            }
        }
        if width == 0
            || height == 0
            || width > MAX_DIM
            || height > MAX_DIM
            || width % 2 == 1
            || height % 2 == 1
        {
            return Err(fmt_err(path, format!("unsupported size {width}x{height}")));
        }
        Ok(Self {
            path: path.to_path_buf(),
            r,
            width,
            height,
            fps,
        })
    }

    /// The next frame; `None` at the end of the file.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, IoError> {
        let io = |source| IoError::File {
            path: self.path.clone(),
            source,
        };
        let mut line = Vec::new();
        let n = self
            .r
            .by_ref()
            .take(256)
            .read_until(b'\n', &mut line)
            .map_err(io)?;
        if n == 0 {
            return Ok(None);
        }
        if !line.starts_with(b"FRAME") {
            return Err(fmt_err(&self.path, "missing FRAME marker"));
        }
        let (w, h) = (self.width, self.height);
        let mut f = Frame::new(w, h);
        self.r
            .read_exact(&mut f.y)
            .map_err(|source| IoError::File {
                path: self.path.clone(),
                source,
            })?;
        self.r
            .read_exact(&mut f.u)
            .map_err(|source| IoError::File {
                path: self.path.clone(),
                source,
            })?;
        self.r
            .read_exact(&mut f.v)
            .map_err(|source| IoError::File {
                path: self.path.clone(),
                source,
            })?;
        Ok(Some(f))
    }
}

/// Writes frames to a Y4M file.
#[derive(Debug)]
pub struct Y4mWriter {
    path: PathBuf,
    w: BufWriter<std::fs::File>,
    width: usize,
    height: usize,
}

impl Y4mWriter {
    /// Creates `path` for `width × height` at `fps`, or `stem (n).y4m` beside it if that
    /// name is taken (see [`crate::create_new`]); [`path`](Self::path) tells which.
    pub fn create(path: &Path, width: usize, height: usize, fps: u32) -> Result<Self, IoError> {
        let (f, path) = crate::create_new(path)?;
        let io = |source| IoError::File {
            path: path.clone(),
            source,
        };
        let mut w = BufWriter::new(f);
        writeln!(w, "YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg").map_err(io)?;
        Ok(Self {
            path,
            w,
            width,
            height,
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a frame; one of another size is fitted to the file's (its shape kept,
    /// centred on black: [`crate::convert::fit`]), as a Y4M file has one size.
    pub fn write(&mut self, f: &Frame) -> Result<(), IoError> {
        let fitted;
        let f = if f.width != self.width || f.height != self.height {
            fitted = crate::convert::fit(f, self.width, self.height)?;
            &fitted
        } else {
            f
        };
        let io = |source| IoError::File {
            path: self.path.clone(),
            source,
        };
        self.w.write_all(b"FRAME\n").map_err(io)?;
        self.w.write_all(&f.y).map_err(|source| IoError::File {
            path: self.path.clone(),
            source,
        })?;
        self.w.write_all(&f.u).map_err(|source| IoError::File {
            path: self.path.clone(),
            source,
        })?;
        self.w.write_all(&f.v).map_err(|source| IoError::File {
            path: self.path.clone(),
            source,
        })?;
        Ok(())
    }

    /// Flushes to disk.
    pub fn finish(mut self) -> Result<(), IoError> {
        self.w.flush().map_err(|source| IoError::File {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::TestPattern;

    #[test]
    fn frames_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.y4m");
        let p = TestPattern::new(320, 240);
        let mut w = Y4mWriter::create(&path, 320, 240, 30).unwrap();
        for n in 0..5 {
            w.write(&p.frame(n, n * 33)).unwrap();
        }
        w.finish().unwrap();
        let mut r = Y4mReader::open(&path).unwrap();
        assert_eq!((r.width, r.height, r.fps), (320, 240, (30, 1)));
        for n in 0..5 {
            assert_eq!(r.next_frame().unwrap().unwrap(), p.frame(n, n * 33));
        }
        assert!(r.next_frame().unwrap().is_none());
    }

    #[test]
    fn frames_of_another_size_are_recorded_at_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.y4m");
        let p = TestPattern::new(640, 360);
        let mut w = Y4mWriter::create(&path, 640, 360, 30).unwrap();
        w.write(&p.frame(0, 0)).unwrap();
        let small = crate::convert::scale(&p.frame(1, 33), 320, 180).unwrap();
        w.write(&small).unwrap();
        w.finish().unwrap();
        let mut r = Y4mReader::open(&path).unwrap();
        assert_eq!(r.next_frame().unwrap().unwrap(), p.frame(0, 0));
        let up = r.next_frame().unwrap().unwrap();
        assert_eq!((up.width, up.height), (640, 360));
        assert_eq!(crate::pattern::decode(&up), Some((1, 33)));
        assert!(r.next_frame().unwrap().is_none());
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.y4m");
        std::fs::write(&path, b"P6 320 240\n").unwrap();
        assert!(matches!(
            Y4mReader::open(&path),
            Err(IoError::Format { .. })
        ));
        std::fs::write(&path, b"YUV4MPEG2 W320 H240 C444\n").unwrap();
        assert!(matches!(
            Y4mReader::open(&path),
            Err(IoError::Unsupported { .. })
        ));
        std::fs::write(&path, b"YUV4MPEG2 W99999 H240\n").unwrap();
        assert!(matches!(
            Y4mReader::open(&path),
            Err(IoError::Format { .. })
        ));
        assert!(matches!(
            Y4mReader::open(&dir.path().join("none.y4m")),
            Err(IoError::File { .. })
        ));
    }
}
