//! Control plane between a peer and the relay.
//!
//! Flow, on one bidirectional QUIC stream (or on the TCP+TLS fallback connection):
//!
//! ```text
//! peer                                   relay
//!  |-- TLS 1.3, client raw public key ---->|  the key is the peer's identity
//!  |-- Hello{name, token, presence} ------>|
//!  |<-- Welcome{session tag, observed} ----|  or Refused{reason} + close
//!  |<-- Snapshot{..., last} ... -----------|  if presence was asked for
//!  |<-- Joined / Left / Updated -----------|  incremental, never the whole list again
//!  |-- Signal{to} ------------------------>|-- Signal{from} --> other peer
//!  |-- Data{to} (TCP fallback only) ------>|-- Data{from} ----> other peer
//!  |-- Vouch{to} ------------------------->|-- Vouched{from, observed} --> other peer
//! ```
//!
//! `Vouch` asks the relay to tell one peer (of the sender's choice, typically the one it is
//! connecting to) the address the relay sees the sender's UDP session at: a fact the peer
//! cannot forge, so the hole-punching techniques that fire many probes (the birthday
//! technique) aim only at an address the relay vouched for, never at one a peer claimed.
//!
//! The relay never sees anything it could decrypt: signals and data are opaque to it.

pub mod client;
pub mod server;

use bytes::{BufMut, Bytes};

use crate::codec::{Reader, WriteExt, owned, socket_addr_len, truncate_utf8};
use crate::frame::{self, RawFrame};
use crate::{DecodeError, PeerId};

/// Largest control frame (envelope length field) the relay or a peer accepts.
pub const MAX_FRAME: usize = 64 * 1024;
/// Longest display name, in bytes.
pub const MAX_NAME: usize = 64;
/// Longest access token, in bytes.
pub const MAX_TOKEN: usize = 256;
/// Largest opaque signaling payload.
pub const MAX_SIGNAL: usize = 16 * 1024;
/// Largest relayed packet carried in a `Data` frame (the TCP fallback).
pub const MAX_DATA: usize = 2048;
/// Peers per `Snapshot` frame; a larger presence list is sent in several frames.
pub const SNAPSHOT_CHUNK: usize = 256;
/// Longest human-readable reason text.
pub const MAX_REASON: usize = 256;
/// Most reflection ports a relay may announce.
pub const MAX_REFLECT_PORTS: usize = 4;

/// What the relay knows and tells about an online peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's identity.
    pub id: PeerId,
    /// Self-chosen display name (a hint, not an identity).
    pub name: String,
    /// When this session registered, Unix milliseconds (relay clock).
    pub online_since_ms: u64,
}

impl PeerInfo {
    fn encoded_len(&self) -> usize {
        32 + 2 + self.name.len().min(MAX_NAME) + 8
    }
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.put_peer_id(&self.id);
        out.put_str16(truncate_utf8(&self.name, MAX_NAME));
        out.put_u64(self.online_since_ms);
    }
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.peer_id("peer id")?,
            name: r.str16("name", MAX_NAME)?,
            online_since_ms: r.u64("online since")?,
        })
    }
}

/// Most relays a [`ServerFrame::Relays`] lists.
pub const MAX_RELAYS: usize = 64;

/// A relay of the cluster, as a relay tells its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayEntry {
    /// Its key (what a client pins for it).
    pub key: PeerId,
    /// Where clients reach it, `host:port`.
    pub addr: String,
    /// Its region (may be empty).
    pub region: String,
    /// Peers registered with it.
    pub peers: u32,
}

impl RelayEntry {
    fn encoded_len(&self) -> usize {
        32 + 1 + self.addr.len().min(255) + 1 + self.region.len().min(32) + 4
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.put_peer_id(&self.key);
        let addr = truncate_utf8(&self.addr, 255);
        out.put_u8(addr.len() as u8);
        out.put_slice(addr.as_bytes());
        let region = truncate_utf8(&self.region, 32);
        out.put_u8(region.len() as u8);
        out.put_slice(region.as_bytes());
        out.put_u32(self.peers);
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            key: r.peer_id("relay key")?,
            addr: r.str8("relay address", 255)?,
            region: r.str8("relay region", 32)?,
            peers: r.u32("relay peers")?,
        })
    }
}

/// Why a signal could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalFailure {
    /// The addressed peer is not online on this relay.
    Offline = 1,
    /// The sender exceeded its signaling rate.
    RateLimited = 2,
    /// The recipient's queue is full.
    QueueFull = 3,
}

/// Why the relay refused or closed a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// The access token is missing or wrong.
    BadToken = 1,
    /// The relay has reached its peer limit.
    ServerFull = 2,
    /// A newer login with the same key replaced this session.
    Replaced = 3,
    /// The peer broke the protocol (bad frame, wrong order).
    Protocol = 4,
    /// The peer exceeded a rate limit.
    RateLimited = 5,
    /// The peer was too slow (handshake or idle timeout).
    Timeout = 6,
    /// The relay is shutting down.
    ShuttingDown = 7,
}

impl RefuseReason {
    /// The reason behind a connection close code (relays close with `reason as u32`).
    pub fn from_code(code: u64) -> Option<Self> {
        u8::try_from(code).ok().and_then(|c| Self::from_u8(c).ok())
    }

    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => Self::BadToken,
            2 => Self::ServerFull,
            3 => Self::Replaced,
            4 => Self::Protocol,
            5 => Self::RateLimited,
            6 => Self::Timeout,
            7 => Self::ShuttingDown,
            _ => {
                return Err(DecodeError::InvalidValue {
                    field: "refuse reason",
                    value: u64::from(v),
                });
            }
        })
    }
}

impl SignalFailure {
    pub(crate) fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => Self::Offline,
            2 => Self::RateLimited,
            3 => Self::QueueFull,
            _ => {
                return Err(DecodeError::InvalidValue {
                    field: "signal failure",
                    value: u64::from(v),
                });
            }
        })
    }
}

/// Frames a peer sends to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// First frame: registers the session.
    Hello {
        /// Display name.
        name: String,
        /// Access token, if the relay requires one.
        token: Option<String>,
        /// Whether to receive the presence snapshot and incremental events.
        presence: bool,
    },
    /// Changes the display name.
    SetName {
        /// New display name.
        name: String,
    },
    /// Opaque message for another peer.
    Signal {
        /// Recipient.
        to: PeerId,
        /// Opaque payload (end-to-end protected by the peers if they need it).
        payload: Bytes,
    },
    /// Round-trip probe to the relay.
    Ping {
        /// Echoed back in `Pong`.
        nonce: u64,
    },
    /// A peer-to-peer packet to forward (TCP fallback; over UDP the packet header is used).
    Data {
        /// Recipient.
        to: PeerId,
        /// Opaque QUIC packet.
        packet: Bytes,
    },
    /// Tell `to` the address the relay sees this session's UDP packets come from.
    Vouch {
        /// The peer to tell.
        to: PeerId,
    },
    /// Park the session: the relay keeps it (presence, session tag, data path) without the
    /// connection, answers `Parked` and the client closes the connection. Only over UDP.
    Park,
}

/// Frames the relay sends to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// The session is registered.
    Welcome {
        /// Secret that binds UDP relay packets to this session.
        session_tag: [u8; 16],
        /// The address the relay sees for this connection.
        observed: std::net::SocketAddr,
        /// UDP ports on which the relay answers address reflection requests.
        reflect_ports: Vec<u16>,
    },
    /// A chunk of the presence list; `last` marks the end of the snapshot.
    Snapshot {
        /// Peers online.
        peers: Vec<PeerInfo>,
        /// True on the final chunk.
        last: bool,
    },
    /// A peer came online.
    Joined(PeerInfo),
    /// A peer went offline.
    Left(PeerId),
    /// A peer changed its name.
    Updated(PeerInfo),
    /// A signal from another peer.
    Signal {
        /// Sender, as authenticated by the relay.
        from: PeerId,
        /// Opaque payload.
        payload: Bytes,
    },
    /// A signal could not be delivered.
    SignalFailed {
        /// The addressed peer.
        to: PeerId,
        /// Why.
        reason: SignalFailure,
    },
    /// Answer to `Ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// A forwarded peer-to-peer packet (TCP fallback).
    Data {
        /// Sender, as authenticated by the relay.
        from: PeerId,
        /// Opaque QUIC packet.
        packet: Bytes,
    },
    /// The address the relay sees another peer's UDP session at (that peer asked it to tell
    /// us: `Vouch`).
    Vouched {
        /// The peer, as authenticated by the relay.
        from: PeerId,
        /// Its address as the relay sees it.
        observed: std::net::SocketAddr,
    },
    /// The relays of the cluster this relay belongs to, itself first (sent after `Welcome`
    /// and when the cluster changes; never by a relay alone).
    Relays(Vec<RelayEntry>),
    /// The session is parked (the answer to `Park`, and the last frame of the connection):
    /// the client closes the connection, sends `ParkAlive` packets with its session tag
    /// every `keepalive_ms`, and comes back when a `Beacon` says something waits for it.
    Parked {
        /// Carried by the relay's beacons (a beacon without it is not from our relay).
        secret: [u8; 16],
        /// How often the client must send `ParkAlive` (the relay forgets the session after
        /// four periods without one).
        keepalive_ms: u32,
        /// How often the relay sends a beacon to say it is alive (0: never; a relay alone,
        /// with nowhere else to go, does not).
        beacon_ms: u32,
    },
    /// The relay refuses or ends the session; the connection closes after this frame.
    Refused {
        /// Machine-readable cause.
        reason: RefuseReason,
        /// Human-readable detail.
        detail: String,
    },
}

mod ty {
    pub const HELLO: u8 = 0x01;
    pub const SET_NAME: u8 = 0x02;
    pub const SIGNAL: u8 = 0x03;
    pub const PING: u8 = 0x04;
    pub const DATA: u8 = 0x05;
    pub const VOUCH: u8 = 0x06;
    pub const PARK: u8 = 0x07;

    pub const WELCOME: u8 = 0x81;
    pub const SNAPSHOT: u8 = 0x82;
    pub const JOINED: u8 = 0x83;
    pub const LEFT: u8 = 0x84;
    pub const UPDATED: u8 = 0x85;
    pub const S_SIGNAL: u8 = 0x86;
    pub const SIGNAL_FAILED: u8 = 0x87;
    pub const PONG: u8 = 0x88;
    pub const S_DATA: u8 = 0x89;
    pub const REFUSED: u8 = 0x8a;
    pub const VOUCHED: u8 = 0x8b;
    pub const RELAYS: u8 = 0x8c;
    pub const PARKED: u8 = 0x8d;
}

impl ClientFrame {
    /// Appends the enveloped frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Hello {
                name,
                token,
                presence,
            } => frame::write(out, ty::HELLO, |b| {
                b.put_str16(truncate_utf8(name, MAX_NAME));
                match token {
                    Some(t) => {
                        b.put_u8(1);
                        b.put_str16(truncate_utf8(t, MAX_TOKEN));
                    }
                    None => b.put_u8(0),
                }
                b.put_bool(*presence);
            }),
            Self::SetName { name } => frame::write(out, ty::SET_NAME, |b| {
                b.put_str16(truncate_utf8(name, MAX_NAME))
            }),
            Self::Signal { to, payload } => frame::write(out, ty::SIGNAL, |b| {
                b.put_peer_id(to);
                b.put_bytes16(&payload[..payload.len().min(MAX_SIGNAL)]);
            }),
            Self::Ping { nonce } => frame::write(out, ty::PING, |b| b.put_u64(*nonce)),
            Self::Data { to, packet } => frame::write(out, ty::DATA, |b| {
                b.put_peer_id(to);
                b.put_bytes16(&packet[..packet.len().min(MAX_DATA)]);
            }),
            Self::Vouch { to } => frame::write(out, ty::VOUCH, |b| b.put_peer_id(to)),
            Self::Park => frame::write(out, ty::PARK, |_| {}),
        }
    }

    /// Exact number of bytes [`encode`](Self::encode) appends.
    pub fn encoded_len(&self) -> usize {
        frame::HEADER_LEN
            + match self {
                Self::Hello { name, token, .. } => {
                    2 + name.len().min(MAX_NAME)
                        + 1
                        + token.as_ref().map_or(0, |t| 2 + t.len().min(MAX_TOKEN))
                        + 1
                }
                Self::SetName { name } => 2 + name.len().min(MAX_NAME),
                Self::Signal { payload, .. } => 32 + 2 + payload.len().min(MAX_SIGNAL),
                Self::Ping { .. } => 8,
                Self::Data { packet, .. } => 32 + 2 + packet.len().min(MAX_DATA),
                Self::Vouch { .. } => 32,
                Self::Park => 0,
            }
    }

    /// Decodes a frame body taken by [`frame::split`].
    pub fn decode(f: RawFrame<'_>) -> Result<Self, DecodeError> {
        let mut r = Reader::new(f.body);
        let frame = match f.ty {
            ty::HELLO => Self::Hello {
                name: r.str16("name", MAX_NAME)?,
                token: if r.bool("token present")? {
                    Some(r.str16("token", MAX_TOKEN)?)
                } else {
                    None
                },
                presence: r.bool("presence")?,
            },
            ty::SET_NAME => Self::SetName {
                name: r.str16("name", MAX_NAME)?,
            },
            ty::SIGNAL => Self::Signal {
                to: r.peer_id("to")?,
                payload: owned(r.bytes16("signal payload", MAX_SIGNAL)?),
            },
            ty::PING => Self::Ping {
                nonce: r.u64("nonce")?,
            },
            ty::DATA => Self::Data {
                to: r.peer_id("to")?,
                packet: owned(r.bytes16("packet", MAX_DATA)?),
            },
            ty::VOUCH => Self::Vouch {
                to: r.peer_id("to")?,
            },
            ty::PARK => Self::Park,
            other => return Err(DecodeError::UnknownFrameType(other)),
        };
        r.finish()?;
        Ok(frame)
    }
}

impl ServerFrame {
    /// Appends the enveloped frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Welcome {
                session_tag,
                observed,
                reflect_ports,
            } => frame::write(out, ty::WELCOME, |b| {
                b.put_slice(session_tag);
                b.put_socket_addr(observed);
                let ports = &reflect_ports[..reflect_ports.len().min(MAX_REFLECT_PORTS)];
                b.put_u16(ports.len() as u16);
                for p in ports {
                    b.put_u16(*p);
                }
            }),
            Self::Snapshot { peers, last } => frame::write(out, ty::SNAPSHOT, |b| {
                let peers = &peers[..peers.len().min(SNAPSHOT_CHUNK)];
                b.put_u16(peers.len() as u16);
                for p in peers {
                    p.write(b);
                }
                b.put_bool(*last);
            }),
            Self::Joined(p) => frame::write(out, ty::JOINED, |b| p.write(b)),
            Self::Left(id) => frame::write(out, ty::LEFT, |b| b.put_peer_id(id)),
            Self::Updated(p) => frame::write(out, ty::UPDATED, |b| p.write(b)),
            Self::Signal { from, payload } => frame::write(out, ty::S_SIGNAL, |b| {
                b.put_peer_id(from);
                b.put_bytes16(&payload[..payload.len().min(MAX_SIGNAL)]);
            }),
            Self::SignalFailed { to, reason } => frame::write(out, ty::SIGNAL_FAILED, |b| {
                b.put_peer_id(to);
                b.put_u8(*reason as u8);
            }),
            Self::Pong { nonce } => frame::write(out, ty::PONG, |b| b.put_u64(*nonce)),
            Self::Data { from, packet } => frame::write(out, ty::S_DATA, |b| {
                b.put_peer_id(from);
                b.put_bytes16(&packet[..packet.len().min(MAX_DATA)]);
            }),
            Self::Vouched { from, observed } => frame::write(out, ty::VOUCHED, |b| {
                b.put_peer_id(from);
                b.put_socket_addr(observed);
            }),
            Self::Relays(list) => frame::write(out, ty::RELAYS, |b| {
                let list = &list[..list.len().min(MAX_RELAYS)];
                b.put_u16(list.len() as u16);
                for e in list {
                    e.write(b);
                }
            }),
            Self::Parked {
                secret,
                keepalive_ms,
                beacon_ms,
            } => frame::write(out, ty::PARKED, |b| {
                b.put_slice(secret);
                b.put_u32(*keepalive_ms);
                b.put_u32(*beacon_ms);
            }),
            Self::Refused { reason, detail } => frame::write(out, ty::REFUSED, |b| {
                b.put_u8(*reason as u8);
                b.put_str16(truncate_utf8(detail, MAX_REASON));
            }),
        }
    }

    /// Exact number of bytes [`encode`](Self::encode) appends.
    pub fn encoded_len(&self) -> usize {
        frame::HEADER_LEN
            + match self {
                Self::Welcome {
                    observed,
                    reflect_ports,
                    ..
                } => {
                    16 + socket_addr_len(observed)
                        + 2
                        + 2 * reflect_ports.len().min(MAX_REFLECT_PORTS)
                }
                Self::Snapshot { peers, .. } => {
                    2 + peers
                        .iter()
                        .take(SNAPSHOT_CHUNK)
                        .map(PeerInfo::encoded_len)
                        .sum::<usize>()
                        + 1
                }
                Self::Joined(p) | Self::Updated(p) => p.encoded_len(),
                Self::Left(_) => 32,
                Self::Signal { payload, .. } => 32 + 2 + payload.len().min(MAX_SIGNAL),
                Self::SignalFailed { .. } => 33,
                Self::Pong { .. } => 8,
                Self::Data { packet, .. } => 32 + 2 + packet.len().min(MAX_DATA),
                Self::Vouched { observed, .. } => 32 + socket_addr_len(observed),
                Self::Relays(list) => {
                    2 + (list.iter().take(MAX_RELAYS))
                        .map(RelayEntry::encoded_len)
                        .sum::<usize>()
                }
                Self::Parked { .. } => 16 + 4 + 4,
                Self::Refused { detail, .. } => 1 + 2 + detail.len().min(MAX_REASON),
            }
    }

    /// Decodes a frame body taken by [`frame::split`].
    pub fn decode(f: RawFrame<'_>) -> Result<Self, DecodeError> {
        let mut r = Reader::new(f.body);
        let frame = match f.ty {
            ty::WELCOME => {
                let session_tag = r.array("session tag")?;
                let observed = r.socket_addr("observed address")?;
                let n = r.count("reflect ports", MAX_REFLECT_PORTS)?;
                let mut reflect_ports = Vec::with_capacity(n);
                for _ in 0..n {
                    reflect_ports.push(r.u16("reflect port")?);
                }
                Self::Welcome {
                    session_tag,
                    observed,
                    reflect_ports,
                }
            }
            ty::SNAPSHOT => {
                let n = r.count("snapshot peers", SNAPSHOT_CHUNK)?;
                let mut peers = Vec::with_capacity(n);
                for _ in 0..n {
                    peers.push(PeerInfo::read(&mut r)?);
                }
                Self::Snapshot {
                    peers,
                    last: r.bool("last")?,
                }
            }
            ty::JOINED => Self::Joined(PeerInfo::read(&mut r)?),
            ty::LEFT => Self::Left(r.peer_id("peer id")?),
            ty::UPDATED => Self::Updated(PeerInfo::read(&mut r)?),
            ty::S_SIGNAL => Self::Signal {
                from: r.peer_id("from")?,
                payload: owned(r.bytes16("signal payload", MAX_SIGNAL)?),
            },
            ty::SIGNAL_FAILED => Self::SignalFailed {
                to: r.peer_id("to")?,
                reason: SignalFailure::from_u8(r.u8("reason")?)?,
            },
            ty::PONG => Self::Pong {
                nonce: r.u64("nonce")?,
            },
            ty::S_DATA => Self::Data {
                from: r.peer_id("from")?,
                packet: owned(r.bytes16("packet", MAX_DATA)?),
            },
            ty::VOUCHED => Self::Vouched {
                from: r.peer_id("from")?,
                observed: r.socket_addr("observed address")?,
            },
            ty::RELAYS => {
                let n = r.count("relays", MAX_RELAYS)?;
                let mut list = Vec::with_capacity(n.min(r.remaining() / 38));
                for _ in 0..n {
                    list.push(RelayEntry::read(&mut r)?);
                }
                Self::Relays(list)
            }
            ty::PARKED => Self::Parked {
                secret: r.array("park secret")?,
                keepalive_ms: r.u32("keepalive")?,
                beacon_ms: r.u32("beacon")?,
            },
            ty::REFUSED => Self::Refused {
                reason: RefuseReason::from_u8(r.u8("reason")?)?,
                detail: r.str16("detail", MAX_REASON)?,
            },
            other => return Err(DecodeError::UnknownFrameType(other)),
        };
        r.finish()?;
        Ok(frame)
    }
}

impl std::fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::BadToken => "the relay's access token is missing or wrong (pass --token)",
            Self::ServerFull => "the relay is full",
            Self::Replaced => "another login with the same identity replaced this session",
            Self::Protocol => "protocol violation",
            Self::RateLimited => "rate limit exceeded",
            Self::Timeout => "timed out",
            Self::ShuttingDown => "the relay is shutting down",
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::frame::split;
    use proptest::prelude::*;

    pub fn peer_id() -> impl Strategy<Value = PeerId> {
        any::<[u8; 32]>().prop_map(PeerId::from_bytes)
    }
    pub fn name() -> impl Strategy<Value = String> {
        "\\PC{0,16}".prop_filter("fits", |s| s.len() <= MAX_NAME)
    }
    pub fn payload(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max.min(600)).prop_map(Bytes::from)
    }
    pub fn socket_addr() -> impl Strategy<Value = std::net::SocketAddr> {
        any::<std::net::SocketAddr>().prop_map(|a| std::net::SocketAddr::new(a.ip(), a.port()))
    }
    fn peer_info() -> impl Strategy<Value = PeerInfo> {
        (peer_id(), name(), any::<u64>()).prop_map(|(id, name, online_since_ms)| PeerInfo {
            id,
            name,
            online_since_ms,
        })
    }

    fn client_frame() -> impl Strategy<Value = ClientFrame> {
        prop_oneof![
            (
                name(),
                proptest::option::of("[a-z0-9]{0,40}"),
                any::<bool>()
            )
                .prop_map(|(name, token, presence)| ClientFrame::Hello {
                    name,
                    token,
                    presence
                }),
            name().prop_map(|name| ClientFrame::SetName { name }),
            (peer_id(), payload(MAX_SIGNAL))
                .prop_map(|(to, payload)| ClientFrame::Signal { to, payload }),
            any::<u64>().prop_map(|nonce| ClientFrame::Ping { nonce }),
            (peer_id(), payload(MAX_DATA))
                .prop_map(|(to, packet)| ClientFrame::Data { to, packet }),
            peer_id().prop_map(|to| ClientFrame::Vouch { to }),
            Just(ClientFrame::Park),
        ]
    }

    fn server_frame() -> impl Strategy<Value = ServerFrame> {
        let refuse = prop_oneof![
            Just(RefuseReason::BadToken),
            Just(RefuseReason::ServerFull),
            Just(RefuseReason::Replaced),
            Just(RefuseReason::Protocol),
            Just(RefuseReason::RateLimited),
            Just(RefuseReason::Timeout),
            Just(RefuseReason::ShuttingDown),
        ];
        let failure = prop_oneof![
            Just(SignalFailure::Offline),
            Just(SignalFailure::RateLimited),
            Just(SignalFailure::QueueFull),
        ];
        prop_oneof![
            (
                any::<[u8; 16]>(),
                socket_addr(),
                proptest::collection::vec(any::<u16>(), 0..=MAX_REFLECT_PORTS)
            )
                .prop_map(|(session_tag, observed, reflect_ports)| {
                    ServerFrame::Welcome {
                        session_tag,
                        observed,
                        reflect_ports,
                    }
                }),
            (proptest::collection::vec(peer_info(), 0..20), any::<bool>())
                .prop_map(|(peers, last)| ServerFrame::Snapshot { peers, last }),
            peer_info().prop_map(ServerFrame::Joined),
            peer_id().prop_map(ServerFrame::Left),
            peer_info().prop_map(ServerFrame::Updated),
            (peer_id(), payload(MAX_SIGNAL))
                .prop_map(|(from, payload)| ServerFrame::Signal { from, payload }),
            (peer_id(), failure).prop_map(|(to, reason)| ServerFrame::SignalFailed { to, reason }),
            any::<u64>().prop_map(|nonce| ServerFrame::Pong { nonce }),
            (peer_id(), payload(MAX_DATA))
                .prop_map(|(from, packet)| ServerFrame::Data { from, packet }),
            (peer_id(), socket_addr())
                .prop_map(|(from, observed)| ServerFrame::Vouched { from, observed }),
            proptest::collection::vec(
                (peer_id(), "[a-z0-9.:-]{0,40}", "[a-z-]{0,32}", any::<u32>()),
                0..5
            )
            .prop_map(|l| ServerFrame::Relays(
                l.into_iter()
                    .map(|(key, addr, region, peers)| RelayEntry {
                        key,
                        addr,
                        region,
                        peers
                    })
                    .collect()
            )),
            (any::<[u8; 16]>(), any::<u32>(), any::<u32>()).prop_map(
                |(secret, keepalive_ms, beacon_ms)| ServerFrame::Parked {
                    secret,
                    keepalive_ms,
                    beacon_ms
                }
            ),
            (refuse, "\\PC{0,40}").prop_map(|(reason, detail)| ServerFrame::Refused {
                reason,
                detail: truncate_utf8(&detail, MAX_REASON).to_owned()
            }),
        ]
    }

    proptest! {
        #[test]
        fn client_frames_round_trip(f in client_frame()) {
            let mut buf = Vec::new();
            f.encode(&mut buf);
            prop_assert_eq!(buf.len(), f.encoded_len());
            let (used, raw) = split(&buf, MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(ClientFrame::decode(raw).unwrap(), f);
        }

        #[test]
        fn server_frames_round_trip(f in server_frame()) {
            let mut buf = Vec::new();
            f.encode(&mut buf);
            prop_assert_eq!(buf.len(), f.encoded_len());
            let (used, raw) = split(&buf, MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(ServerFrame::decode(raw).unwrap(), f);
        }

        #[test]
        fn decoders_never_panic(ty in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let raw = RawFrame { ty, body: &body };
            let _ = ClientFrame::decode(raw);
            let _ = ServerFrame::decode(raw);
        }
    }

    #[test]
    fn unknown_type_and_trailing_bytes_are_specific_errors() {
        let raw = RawFrame {
            ty: 0x7f,
            body: &[],
        };
        assert_eq!(
            ClientFrame::decode(raw),
            Err(DecodeError::UnknownFrameType(0x7f))
        );
        let mut buf = Vec::new();
        ClientFrame::Ping { nonce: 1 }.encode(&mut buf);
        buf.push(0);
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let (_, raw) = split(&buf, MAX_FRAME).unwrap().unwrap();
        assert_eq!(ClientFrame::decode(raw), Err(DecodeError::TrailingBytes(1)));
    }
}
