//! The engine's errors: [`EngineError`] for every command, [`CallError`] for what a call
//! needs (devices, codecs, files, the call stream). Each message says what to do next.

use std::time::Duration;

use p2pcall_net::NetError;
use p2pcall_proto::PeerId;
use p2pcall_store::StoreError;

/// Engine errors, each telling the user what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Network failure.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The peer query matched nobody online.
    #[error(
        "no contact or peer matches {query:?} ({online} peers online); `p2pcall contacts` lists your contacts and `p2pcall peers` who is online (reach someone who is not a contact by at least 8 hex digits of their fingerprint)"
    )]
    PeerNotFound {
        /// What the user typed.
        query: String,
        /// How many peers are online.
        online: usize,
    },
    /// The name is not a contact's; peers online announce it (strangers can announce any
    /// name).
    #[error(
        "{query:?} is not one of your contacts; online, not contacts: {strangers}. To reach one of them, use its fingerprint (at least 8 hex digits, as `p2pcall peers` shows it), or add it as a contact first (`p2pcall add FINGERPRINT --name NAME`)"
    )]
    NotAContact {
        /// What the user typed.
        query: String,
        /// The peers online announcing that name, with their fingerprints.
        strangers: String,
    },
    /// The peer query matched several peers.
    #[error("{query:?} matches several peers: {candidates}; type more of the fingerprint")]
    Ambiguous {
        /// What the user typed.
        query: String,
        /// Who matched.
        candidates: String,
    },
    /// The relay reports the peer offline (it has no session with that key).
    #[error(
        "{name} is offline: the relay does not see {fingerprint} now; try again once {name} is online"
    )]
    PeerOffline {
        /// The peer.
        peer: PeerId,
        /// Its name as we know it (the fingerprint if we know none).
        name: String,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// A ticket that could not be read.
    #[error(transparent)]
    Ticket(#[from] p2pcall_proto::ticket::TicketError),
    /// No message request from a sender that matches.
    #[error(
        "no message request from {0:?}: `p2pcall requests` lists them with the senders' fingerprints"
    )]
    NoSuchRequest(String),
    /// The user's own ticket given to `add`.
    #[error("this is your own ticket: give it to the people who should reach you")]
    OwnTicket,
    /// Work on a blocking thread (the database, the disk) failed to complete.
    #[error("a background task failed: {0}")]
    Blocking(#[source] tokio::task::JoinError),
    /// A stream to the peer failed.
    #[error("the stream to the peer failed: {0}")]
    Stream(#[from] StreamError),
    /// The relay did not deliver the presence list in time.
    #[error("the relay did not send the peer list within {0:?}")]
    NoPresence(Duration),
    /// The local database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A chat message is longer than the protocol allows.
    #[error("the message is {len} bytes; the limit is {max} bytes: split it, or send it as a file")]
    MessageTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A file or folder to send cannot be read.
    #[error("cannot read {path}: {source}")]
    Source {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Nothing to send.
    #[error("nothing to send: {0}")]
    NothingToSend(String),
    /// The peer refused the offer.
    #[error("the peer declined the transfer: {0}")]
    Rejected(String),
    /// The transfer stopped.
    #[error("the transfer stopped ({code}): {reason}")]
    Aborted {
        /// Typed cause.
        code: p2pcall_proto::transfer::AbortCode,
        /// Details.
        reason: String,
    },
    /// The other side broke the chat or transfer protocol.
    #[error("protocol error from the peer: {0}")]
    Protocol(String),
    /// The other side sent a frame that does not decode.
    #[error("the peer sent a malformed frame: {0}")]
    BadFrame(#[from] p2pcall_proto::DecodeError),
    /// A call failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// No pending offer with that id.
    #[error("no pending offer {0}")]
    NoSuchOffer(p2pcall_proto::transfer::TransferId),
}

/// Why a stream to the peer failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Writing to it failed (the peer stopped it, or the connection closed).
    #[error("{0}")]
    Write(#[from] quinn::WriteError),
    /// Reading a frame from it failed.
    #[error("{0}")]
    Read(#[from] p2pcall_transport::framed::FrameReadError),
    /// A task serving it failed.
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    /// It ended as another task (the one running the same transfer) reported.
    #[error("{0}")]
    Ended(String),
}

/// Call errors, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// A call is already running.
    #[error("already in a call; hang up first")]
    Busy,
    /// No call with that id.
    #[error("no such call")]
    NoSuchCall,
    /// The call was hung up before the connection to the peer came up.
    #[error("hung up before the call connected")]
    HungUpConnecting,
    /// A group call has at most six participants.
    #[error(
        "a call has at most {} participants",
        p2pcall_proto::group::MAX_MEMBERS
    )]
    TooMany,
    /// A media source cannot be used; the text says which devices exist or what to pass
    /// instead.
    #[error("media source: {0}")]
    Source(String),
    /// A sink cannot be used; the text says what to pass instead.
    #[error("media sink: {0}")]
    Sink(String),
    /// A media file (Y4M, WAV) cannot be read or written.
    #[error("media file {}: {source}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: p2pcall_media_io::IoError,
    },
    /// A camera or microphone failed.
    #[error("media device: {0}")]
    Device(#[from] p2pcall_devices::DeviceError),
    /// A captured frame could not be scaled to the call's size.
    #[error("scaling a frame: {0}")]
    Scale(#[source] p2pcall_media_io::IoError),
    /// A codec failed to start.
    #[error("codec: {0}")]
    Codec(#[from] p2pcall_codec::CodecError),
    /// A capture, grab or render thread could not start.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        /// Which thread.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The call stream could not be opened.
    #[error("the call stream could not be opened: {0}")]
    Open(#[from] quinn::ConnectionError),
    /// The call stream failed.
    #[error("the call stream failed: {0}")]
    Stream(#[from] quinn::WriteError),
}

/// An error and its causes as one line, each cause once (a cause whose text the line
/// already holds adds nothing): what people are shown.
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut next = Some(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}
