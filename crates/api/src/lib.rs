//! The local API between a p2pcall engine (the daemon, or a long-running command) and its
//! clients (the CLI, the desktop app).
//!
//! JSON-RPC 2.0, one JSON object per line, over a Unix socket
//! ([0079](../../../docs/decisions/0079-local-api-json-rpc-over-a-unix-socket.md)). This crate
//! is sans-IO: the messages ([`Request`], [`Answer`], [`RpcError`], [`Event`]), their one
//! wire form ([`Frame::encode`], [`Frame::decode`]), and a line splitter ([`Lines`]) that
//! bounds what the other side may make us buffer. Whatever arrives may be hostile: decoding
//! never panics and reports what is wrong.
//!
//! ```text
//! -> {"jsonrpc":"2.0","id":1,"method":"hello","params":{"version":1,"client":"cli"}}
//! <- {"jsonrpc":"2.0","id":1,"result":{"kind":"hello","version":1,"pid":4242,...}}
//! -> {"jsonrpc":"2.0","id":2,"method":"send_message","params":{"peer":"bob","text":"hi"}}
//! <- {"jsonrpc":"2.0","id":2,"error":{"code":-32000,"message":"...","data":{"kind":"peer_not_found"}}}
//! <- {"jsonrpc":"2.0","method":"event","params":{"kind":"message_received",...}}
//! ```
#![forbid(unsafe_code)]

mod call;
mod lines;
pub mod video;
mod wire;

pub use call::{CallChange, CallEnd, CallNote, Connection, Media, Pong, Ringing, Stream, Streams};
pub use lines::Lines;
pub use wire::Frame;

use serde::{Deserialize, Serialize};

/// The API version; a client and an engine of different versions refuse each other at
/// [`Request::Hello`].
pub const VERSION: u32 = 1;
/// Longest line either side accepts (a history page of long messages fits easily).
pub const MAX_LINE: usize = 1 << 20;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum Request {
    /// The first request of every connection.
    Hello {
        /// The client's [`VERSION`].
        version: u32,
        /// What the client is (`cli`, `app`), for the engine's log.
        client: String,
    },
    /// Who the engine is and how it is connected.
    Status,
    /// The peers online, after waiting up to `wait_ms` for the first presence list.
    Peers {
        /// How long to wait for presence, milliseconds.
        wait_ms: u64,
    },
    /// Stores a chat message and delivers it now or when the peer is reachable.
    SendMessage {
        /// A peer as a user names it: full id, fingerprint prefix or display name.
        peer: String,
        /// The message.
        text: String,
    },
    /// A page of the conversation with `peer`, oldest first, before message `before`.
    History {
        /// The peer, as in [`Request::SendMessage`].
        peer: String,
        /// Only messages numbered below this.
        before: Option<i64>,
        /// At most this many.
        limit: u32,
    },
    /// Marks the conversation with `peer` read (receipts go out).
    MarkRead {
        /// The peer, as in [`Request::SendMessage`].
        peer: String,
    },
    /// Sends the engine's [`Event`]s from now on, until the connection closes.
    Subscribe,
    /// The file offers waiting for an answer.
    Offers,
    /// Accepts a waiting offer.
    Accept {
        /// The offer: its 32 hex digits, or a prefix only it starts with.
        id: String,
        /// The folder to receive into (created if missing); the engine's download folder
        /// when `None`.
        dir: Option<String>,
    },
    /// Declines a waiting offer (the sender is told).
    Reject {
        /// As in [`Request::Accept`].
        id: String,
    },
    /// The peer a user means.
    Resolve {
        /// As in [`Request::SendMessage`].
        peer: String,
    },
    /// Sends files and folders; answered when the transfer ends (progress comes as events).
    /// The same paths to the same peer resume an unfinished transfer.
    SendFiles {
        /// The peer (full id, as [`Request::Resolve`] gives it, or as a user names it).
        peer: String,
        /// Absolute paths.
        paths: Vec<String>,
    },
    /// Interrupts a running transfer: both sides keep what was verified, and sending the
    /// same paths again resumes it.
    InterruptTransfer {
        /// The peer, 64 hex digits.
        peer: String,
        /// The transfer, 32 hex digits.
        id: String,
    },
    /// Calls a peer; answered once the call is placed (what follows comes as
    /// [`Event::Call`]).
    Call {
        /// The peer, as in [`Request::SendMessage`].
        peer: String,
        /// What to send and where to put what arrives.
        media: Media,
        /// More peers: a group call with all of them (at most five besides `peer`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        also: Vec<String>,
    },
    /// The incoming call waiting for an answer, if any.
    Ringing,
    /// Answers the incoming call.
    AnswerCall {
        /// The call: its 32 hex digits or a prefix; `None`: the one ringing.
        id: Option<String>,
        /// What to send and where to put what arrives.
        media: Media,
    },
    /// Declines the incoming call (the caller is told).
    DeclineCall {
        /// As in [`Request::AnswerCall`].
        id: Option<String>,
    },
    /// Hangs up the call in progress (or cancels the one being placed).
    Hangup,
    /// Changes the call in progress.
    ChangeCall(CallChange),
    /// Answers offers and calls automatically for as long as this connection stays open
    /// (`listen --accept-files DIR --answer`); a second policy replaces the first.
    Policy {
        /// Accept every file offer into this folder.
        accept_files: Option<String>,
        /// Answer every incoming call with these media (one at a time).
        answer: Option<Media>,
        /// From whom: `contacts` (the default), `verified` (contacts whose safety number
        /// was compared) or `anyone`. Offers and calls from others wait for an answer.
        #[serde(default = "contacts")]
        from: String,
    },
    /// Connects to a peer (or finds the connection up).
    Connect {
        /// The peer, as in [`Request::SendMessage`].
        peer: String,
    },
    /// Pings a connected peer over its connection.
    Ping {
        /// The peer, 64 hex digits.
        peer: String,
        /// Sequence number.
        seq: u32,
    },
    /// Sends `bytes` of data to a connected peer, which checks them.
    Speedtest {
        /// The peer, 64 hex digits.
        peer: String,
        /// How much.
        bytes: u64,
    },
    /// Measures the NAT through the relay's reflection ports.
    Netcheck,
    /// Turns this connection into a feed of the calls' video ([`video`]): after the
    /// answer, only video frames follow on it, until the client closes it.
    VideoFeed,
    /// Changes our display name (announced at once, kept in the settings by the caller).
    SetName {
        /// The new name.
        name: String,
    },
    /// Makes a peer a contact, under the user's own name for it.
    AddContact {
        /// The peer: full id, or a fingerprint prefix (8+ hex digits for a stranger).
        peer: String,
        /// The user's name for it (`None`: the name it announces; an existing contact keeps
        /// its name).
        name: Option<String>,
    },
    /// The user's contacts.
    Contacts,
    /// Message requests: people who are not contacts wrote.
    MessageRequests,
    /// Accepts a message request: the sender becomes a contact, its messages join the
    /// conversation.
    AcceptRequest {
        /// The sender: full id, or 4+ hex digits of its fingerprint.
        peer: String,
        /// The user's name for it (`None`: the one it announces).
        name: Option<String>,
    },
    /// Deletes a message request (the sender's messages).
    DeleteRequest {
        /// The sender, as in [`Request::AcceptRequest`].
        peer: String,
    },
    /// Makes the peer of someone's invitation ticket a contact and pins the relay the ticket
    /// names (unless another key is pinned for it).
    AddTicket {
        /// The ticket, `p2pcall:…`.
        ticket: String,
        /// The user's name for the peer (`None`: the name the ticket suggests; an existing
        /// contact keeps its name).
        name: Option<String>,
    },
    /// Stops a transfer for good (the partial files are removed).
    CancelTransfer {
        /// The peer, 64 hex digits.
        peer: String,
        /// The transfer, 32 hex digits.
        id: String,
    },
}

fn contacts() -> String {
    "contacts".into()
}

/// What the engine answers to a request (the variant matches the request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    /// To [`Request::Hello`].
    Hello {
        /// The engine's [`VERSION`].
        version: u32,
        /// The engine's process.
        pid: u32,
    },
    /// To [`Request::Status`].
    Status(Status),
    /// To [`Request::Peers`].
    Peers {
        /// Online, sorted by name.
        peers: Vec<Peer>,
    },
    /// To [`Request::SendMessage`]: the message as it stands after the delivery attempt.
    Sent {
        /// The message.
        message: Message,
        /// The name the engine knows the peer by.
        name: String,
        /// The relay reports the peer offline (the message waits for it).
        offline: bool,
    },
    /// To [`Request::History`].
    History {
        /// Oldest first.
        messages: Vec<Message>,
    },
    /// To [`Request::MarkRead`]: how many messages became read.
    Count {
        /// The number.
        n: u64,
    },
    /// To [`Request::Subscribe`]: events follow.
    Subscribed,
    /// To [`Request::Offers`].
    Offers {
        /// Oldest first.
        offers: Vec<Offer>,
    },
    /// To [`Request::Accept`]: the transfer runs (its events follow to subscribers).
    Accepted {
        /// The offer's full id.
        id: String,
        /// Where the files go.
        dir: String,
    },
    /// To [`Request::Reject`].
    Rejected {
        /// The offer's full id.
        id: String,
    },
    /// To [`Request::Resolve`].
    Resolved {
        /// The peer (its name: the user's for a contact, else the one it announces).
        peer: Peer,
        /// One of the user's contacts (else reached by its key alone).
        contact: bool,
    },
    /// To [`Request::Contacts`] (and [`Request::AddContact`]: the contact added).
    Contacts {
        /// The user's contacts, most recently seen first.
        contacts: Vec<Contact>,
    },
    /// To [`Request::MessageRequests`].
    MessageRequests {
        /// Oldest first.
        requests: Vec<MessageRequest>,
    },
    /// To [`Request::AddTicket`].
    Invited {
        /// The contact added.
        contact: Contact,
        /// What became of the ticket's relay (`None`: it names none).
        relay: Option<RelayPin>,
    },
    /// To [`Request::SendFiles`]: the transfer is complete.
    Transferred(TransferSummary),
    /// To [`Request::Call`]: the call is placed.
    Calling {
        /// The call, 32 hex digits.
        call: String,
        /// The peer, 64 hex digits.
        peer: String,
    },
    /// To [`Request::Ringing`].
    Ringing {
        /// The call waiting, if any.
        call: Option<Ringing>,
    },
    /// To the requests that only need to succeed ([`Request::AnswerCall`],
    /// [`Request::DeclineCall`], [`Request::Hangup`], [`Request::ChangeCall`],
    /// [`Request::Policy`]).
    Done,
    /// To [`Request::Connect`].
    Connected(Connection),
    /// To [`Request::Ping`].
    Pong(Pong),
    /// To [`Request::Speedtest`].
    Speed(Speed),
    /// To [`Request::Netcheck`].
    Netcheck(Netcheck),
}

/// A speed test's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Speed {
    /// Bytes sent.
    pub bytes: u64,
    /// From the first byte to the peer's answer, microseconds.
    pub elapsed_us: u64,
    /// The peer's hash and count matched.
    pub verified: bool,
    /// Bytes the connection sent through the relay.
    pub tx_relay: u64,
    /// Bytes it sent directly.
    pub tx_direct: u64,
    /// Its path now.
    pub path: String,
}

/// What the relay's reflection ports tell about our NAT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Netcheck {
    /// UDP reaches the relay.
    pub udp: bool,
    /// The relay session's transport.
    pub relay_transport: String,
    /// `none`, `endpoint-independent`, `endpoint-dependent` or `unknown`.
    pub mapping: String,
    /// The NAT kept our port.
    pub port_preserved: bool,
    /// Our addresses as the reflection ports saw them.
    pub observed: Vec<String>,
    /// A global IPv6 address.
    pub ipv6: bool,
    /// The addresses we offer peers.
    pub candidates: Vec<String>,
}

/// How far a transfer is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferProgress {
    /// The other side, 64 hex digits.
    pub peer: String,
    /// The transfer, 32 hex digits.
    pub id: String,
    /// We send.
    pub outgoing: bool,
    /// Bytes done (verified by the receiver; written by the sender).
    pub done_bytes: u64,
    /// Bytes in all.
    pub total_bytes: u64,
    /// Files in place.
    pub files_done: u64,
    /// Files in all.
    pub files: u64,
    /// Smoothed rate, bytes per second.
    pub rate_bps: Option<u64>,
    /// Estimated time left, milliseconds.
    pub eta_ms: Option<u64>,
}

/// A finished transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSummary {
    /// The other side, 64 hex digits.
    pub peer: String,
    /// The transfer, 32 hex digits.
    pub id: String,
    /// We sent.
    pub outgoing: bool,
    /// Files.
    pub files: u64,
    /// Folders.
    pub dirs: u64,
    /// Bytes in all.
    pub total_bytes: u64,
    /// Bytes already there from an earlier attempt.
    pub resumed_bytes: u64,
    /// This attempt's duration, milliseconds.
    pub elapsed_ms: u64,
    /// Receiver: where the top-level entries landed.
    pub placed: Vec<String>,
    /// Sender: symlinks and special files skipped.
    pub skipped: Vec<String>,
    /// Each file's relative path and BLAKE3 hash (64 hex digits).
    pub hashes: Vec<(String, String)>,
}

/// A file offer waiting for an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The transfer, 32 hex digits.
    pub id: String,
    /// The sender, 64 hex digits.
    pub peer: String,
    /// The name the engine knows the sender by (in answers; `None` in events).
    pub name: Option<String>,
    /// Files offered.
    pub files: u64,
    /// Folders offered.
    pub dirs: u64,
    /// Sum of the file sizes, bytes.
    pub total_bytes: u64,
    /// The top-level names.
    pub tops: Vec<String>,
    /// The first entries: relative path and size (`None` for a folder).
    pub sample: Vec<(String, Option<u64>)>,
}

/// The engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Our peer id, 64 hex digits.
    pub id: String,
    /// Our display name.
    pub name: String,
    /// The relay session's transport (`udp`, `tcp`), `None` while not connected or on a LAN.
    pub relay: Option<String>,
    /// LAN-only mode.
    pub lan: bool,
    /// The data dir the engine serves.
    pub data_dir: String,
    /// The engine's process.
    pub pid: u32,
}

/// A peer online.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// 64 hex digits.
    pub id: String,
    /// Its display name (a hint).
    pub name: String,
    /// Online since, Unix milliseconds.
    pub online_since_ms: u64,
}

/// A contact the user chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// 64 hex digits.
    pub id: String,
    /// The user's name for it.
    pub name: String,
    /// The name it announced last.
    pub announced: String,
    /// The user compared safety numbers with it.
    pub verified: bool,
    /// Last seen online, Unix milliseconds.
    pub last_seen_ms: u64,
}

/// The relay an invitation ticket names, and whether its key is pinned now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayPin {
    /// `host:port`.
    pub relay: String,
    /// The key the ticket names, 64 hex digits.
    pub key: String,
    /// Pinned by this ticket (no key was pinned for the relay before).
    pub new: bool,
    /// Another key pinned for this relay before, which stays pinned (a ticket never replaces
    /// a pinned key: `--accept-relay-key` does).
    pub conflict: Option<String>,
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Its number in the local history.
    pub n: i64,
    /// The other side, 64 hex digits.
    pub peer: String,
    /// We sent it.
    pub outgoing: bool,
    /// Its id, 32 hex digits.
    pub id: String,
    /// The sender's sequence number.
    pub seq: u64,
    /// When it was written, Unix milliseconds.
    pub sent_ms: u64,
    /// When it arrived here (incoming only).
    pub received_ms: Option<u64>,
    /// The text.
    pub text: String,
    /// `queued`, `sent`, `delivered`, `read` or `received`.
    pub state: String,
    /// From someone who is not a contact: a message request, kept apart until accepted.
    #[serde(default)]
    pub request: bool,
}

/// Someone who is not a contact wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRequest {
    /// The sender, 64 hex digits.
    pub peer: String,
    /// The name it announced (anyone can announce any name).
    pub name: String,
    /// How many messages wait.
    pub messages: u64,
    /// When the first arrived, Unix milliseconds.
    pub first_ms: u64,
    /// The newest message's text.
    pub last_text: String,
}

/// What the engine reports to subscribers, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A message arrived (already stored).
    MessageReceived(Message),
    /// A message was written through the engine, by any of its clients (stored, queued).
    MessageQueued(Message),
    /// One of our messages changed state.
    MessageState {
        /// The conversation, 64 hex digits.
        peer: String,
        /// The message, 32 hex digits.
        id: String,
        /// Its new state.
        state: String,
    },
    /// Everyone online (after the engine registered again with the relay).
    PeersOnline {
        /// The list.
        peers: Vec<Peer>,
    },
    /// A peer came online.
    PeerJoined(Peer),
    /// A peer online changed its name.
    PeerUpdated(Peer),
    /// A peer went offline.
    PeerLeft {
        /// 64 hex digits.
        id: String,
    },
    /// A peer offers files: answer with [`Request::Accept`] or [`Request::Reject`].
    OfferReceived(Offer),
    /// A transfer's progress (about every 200 ms).
    TransferProgress(TransferProgress),
    /// An interrupted transfer, accepted earlier, goes on (no question asked).
    TransferResumed(Offer),
    /// A transfer is complete.
    TransferDone(TransferSummary),
    /// A transfer stopped.
    TransferFailed {
        /// The other side, 64 hex digits.
        peer: String,
        /// The transfer, 32 hex digits.
        id: String,
        /// We sent.
        outgoing: bool,
        /// What happened.
        reason: String,
        /// Sending the same paths again continues it.
        resumable: bool,
    },
    /// Something happened in a call.
    Call(CallNote),
    /// A connection's path changed.
    PathChanged {
        /// The peer, 64 hex digits.
        peer: String,
        /// `relay` or `direct ADDR`.
        path: String,
        /// The new direct path's RTT, microseconds.
        rtt_us: Option<u64>,
    },
    /// The relay session is up.
    RelayConnected {
        /// `udp` or `tcp`.
        transport: String,
    },
    /// The relay session dropped; the engine retries.
    RelayDisconnected {
        /// Why.
        reason: String,
        /// The next attempt, milliseconds from now.
        retry_in_ms: u64,
    },
    /// The relay refused us for good.
    RelayRefused {
        /// Why.
        reason: String,
        /// Details.
        detail: String,
    },
    /// The subscriber fell behind: this many events were dropped, the rest follow.
    Lagged {
        /// How many.
        dropped: u64,
    },
}

/// Why a request failed: a sentence for people and a kind for programs (the CLI's exit
/// code follows the kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    /// What went wrong, saying what to do.
    pub message: String,
    /// Its kind.
    pub kind: ErrorKind,
}

/// Kinds of [`RpcError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request does not parse or names no method.
    BadRequest,
    /// Client and engine speak different [`VERSION`]s.
    Version,
    /// No peer matches the name given.
    PeerNotFound,
    /// Several peers match.
    Ambiguous,
    /// The relay reports the peer offline.
    PeerOffline,
    /// The presence list did not arrive in time.
    NoPresence,
    /// Something did not answer in time.
    Timeout,
    /// No waiting offer has that id (or several start with it).
    NoSuchOffer,
    /// The peer declined.
    Declined,
    /// Interrupted; the same request resumes it.
    Interrupted,
    /// No call is in progress or ringing (or not the one named).
    NoSuchCall,
    /// The media options name a source, sink or size that cannot be used.
    BadMedia,
    /// Someone else answered for the peer: the key it proved is not the peer's.
    WrongPeerKey,
    /// Anything else.
    Failure,
}

impl RpcError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind,
        }
    }
}

/// A line that is not one of our messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A line longer than [`MAX_LINE`].
    #[error("a line of more than {MAX_LINE} bytes")]
    LineTooLong,
    /// Not JSON, or not a JSON-RPC 2.0 message of this API.
    #[error("not a message of the p2pcall API: {0}")]
    Malformed(String),
}

#[cfg(test)]
mod tests;
