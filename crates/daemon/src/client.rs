//! The clients' side: a connection to the engine of a data dir.

use std::collections::VecDeque;
use std::path::Path;

use p2pcall_api::video::{HEADER_LEN, Side, VideoHeader};
use p2pcall_api::{Answer, ErrorKind, Event, Frame, Lines, Request, VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::{DaemonError, socket_path};

/// A connection to a running engine.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    lines: Lines,
    next_id: u64,
    /// Events that arrived while a reply was awaited.
    events: VecDeque<Event>,
    pid: u32,
}

impl Client {
    /// Connects to the engine of `data_dir` as `client` (`cli`, `app`); `None` when no
    /// engine serves it (no socket, or nobody listening on it).
    pub async fn connect(data_dir: &Path, client: &str) -> Result<Option<Client>, DaemonError> {
        Self::connect_at(&socket_path(data_dir), client).await
    }

    /// Connects to the engine serving the socket at `path`; `None` when nobody does.
    pub async fn connect_at(path: &Path, client: &str) -> Result<Option<Client>, DaemonError> {
        let stream = match UnixStream::connect(path).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let mut c = Client {
            stream,
            lines: Lines::default(),
            next_id: 1,
            events: VecDeque::new(),
            pid: 0,
        };
        let hello = Request::Hello {
            version: VERSION,
            client: client.into(),
        };
        match c.call(hello).await {
            Ok(Answer::Hello { pid, .. }) => c.pid = pid,
            Ok(other) => return Err(DaemonError::Unexpected(format!("{other:?}"))),
            Err(DaemonError::Refused(e)) if e.kind == ErrorKind::Version => {
                return Err(DaemonError::Refused(e));
            }
            Err(e) => return Err(e),
        }
        Ok(Some(c))
    }

    /// The engine's process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Asks the engine and waits for its answer (events arriving meanwhile are kept for
    /// [`Client::next_event`]).
    pub async fn call(&mut self, request: Request) -> Result<Answer, DaemonError> {
        let id = self.next_id;
        self.next_id += 1;
        self.stream
            .write_all(&Frame::Request { id, request }.encode())
            .await?;
        loop {
            match self.read_frame().await? {
                Frame::Reply { id: rid, result } if rid == id => {
                    return result.map_err(DaemonError::Refused);
                }
                Frame::Event(e) => self.events.push_back(e),
                // A reply to no request of ours (an error about a line we did not send).
                Frame::Reply { .. } | Frame::Request { .. } => {}
            }
        }
    }

    /// The next event (after a [`Request::Subscribe`]).
    pub async fn next_event(&mut self) -> Result<Event, DaemonError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        loop {
            if let Frame::Event(e) = self.read_frame().await? {
                return Ok(e);
            }
        }
    }

    /// Turns this connection into a feed of the engine's call pictures.
    pub async fn video_feed(mut self) -> Result<VideoFeed, DaemonError> {
        match self.call(Request::VideoFeed).await? {
            Answer::Done => Ok(VideoFeed {
                buf: self.lines.take_rest(),
                stream: self.stream,
            }),
            other => Err(DaemonError::Unexpected(format!("{other:?}"))),
        }
    }

    async fn read_frame(&mut self) -> Result<Frame, DaemonError> {
        let mut buf = [0u8; 16 << 10];
        loop {
            if let Some(line) = self.lines.next_line()? {
                return Ok(Frame::decode(&line)?);
            }
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return Err(DaemonError::Stopped);
            }
            self.lines.push(&buf[..n]);
        }
    }
}

/// The pictures of the engine's calls ([`p2pcall_api::video`]): what we send and what the
/// peer sends, as they are shown.
#[derive(Debug)]
pub struct VideoFeed {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl VideoFeed {
    /// The next picture.
    pub async fn next_frame(&mut self) -> Result<(Side, p2pcall_media_io::Frame), DaemonError> {
        self.fill(HEADER_LEN).await?;
        let h = VideoHeader::decode(&self.buf)?;
        self.fill(HEADER_LEN + h.body_len()).await?;
        let (w, ht) = (usize::from(h.width), usize::from(h.height));
        let (luma, chroma) = (w * ht, (w / 2) * (ht / 2));
        let body = &self.buf[HEADER_LEN..HEADER_LEN + h.body_len()];
        let f = p2pcall_media_io::Frame {
            width: w,
            height: ht,
            y: body[..luma].to_vec(),
            u: body[luma..luma + chroma].to_vec(),
            v: body[luma + chroma..].to_vec(),
        };
        self.buf.drain(..HEADER_LEN + h.body_len());
        Ok((h.side, f))
    }

    async fn fill(&mut self, n: usize) -> Result<(), DaemonError> {
        while self.buf.len() < n {
            self.buf.reserve(n - self.buf.len());
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(DaemonError::Stopped);
            }
        }
        Ok(())
    }
}
