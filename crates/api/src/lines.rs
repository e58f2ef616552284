//! Splitting a byte stream into lines, never buffering more than one line allows.

use crate::{ApiError, MAX_LINE};

/// Bytes read so far, handed out line by line.
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
}

impl Lines {
    /// Adds bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line (without its newline), `None` until one is complete.
    /// [`ApiError::LineTooLong`] once a line exceeds [`MAX_LINE`]: the connection must end
    /// (nothing after it can be trusted to start a line).
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        match self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
            Some(i) => {
                let end = self.scanned + i;
                if end > MAX_LINE {
                    return Err(ApiError::LineTooLong);
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.scanned = 0;
                Ok(Some(line))
            }
            None if self.buf.len() > MAX_LINE => Err(ApiError::LineTooLong),
            None => {
                self.scanned = self.buf.len();
                Ok(None)
            }
        }
    }

    /// Takes the bytes held (when the connection stops carrying lines: a video feed).
    pub fn take_rest(&mut self) -> Vec<u8> {
        self.scanned = 0;
        std::mem::take(&mut self.buf)
    }

    /// Bytes held (a partial line).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}
