//! Wire formats of p2pcall, as plain functions over byte slices (sans-IO).
//!
//! * [`id`]: a peer is its Ed25519 public key ([`PeerId`]); fingerprints and safety numbers.
//! * [`frame`]: the versioned, length-prefixed frame envelope used on every reliable stream.
//! * [`relay`]: the control plane between a peer and the relay (register, presence, signaling),
//!   with the sans-IO state machines of both ends ([`relay::server`], [`relay::client`]).
//! * [`peer`]: the control channel between two peers inside their end-to-end QUIC connection.
//! * [`packet`]: UDP packets that are *not* QUIC and share the peer's one socket: the relay data
//!   header, address reflection and path probes. Their first byte is below `0x40`, so they can
//!   never be confused with QUIC packets (whose fixed bit `0x40` is always set: p2pcall
//!   endpoints never negotiate QUIC bit greasing).
//! * [`stream`]: the kind byte that opens every application stream on a peer connection.
//! * [`call`]: call signaling (offer, answer, updates, hang-up) and codec negotiation.
//! * [`group`]: who is in a group call, agreed by its members (a sans-IO state machine).
//! * [`chat`]: chat messages and receipts between two peers.
//! * [`transfer`]: file and folder-tree offers, answers and data records.
//! * [`media`]: media packets and receiver feedback on QUIC datagrams.
//! * [`lan`]: the mDNS / DNS-SD announcement of LAN-only mode.
//! * [`limits`]: token buckets for rate limits.
//! * [`cluster`]: what the relays of one cluster tell each other (membership heartbeats).
//! * [`ticket`]: invitations (`p2pcall:…` tickets and their QR codes).
//!
//! Every decoder treats its input as hostile: it returns a precise [`DecodeError`] and never
//! panics or allocates more than the input's length.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod call;
pub mod chat;
pub mod cluster;
pub mod codec;
pub mod frame;
pub mod group;
pub mod id;
pub mod lan;
pub mod limits;
pub mod media;
pub mod packet;
pub mod peer;
pub mod relay;
pub mod stream;
pub mod text;
pub mod ticket;
pub mod transfer;

pub use codec::DecodeError;
pub use id::{Fingerprint, PeerId, SafetyNumber};

/// Version of the frame envelope and of every frame set defined here.
pub const PROTOCOL_VERSION: u8 = 1;
