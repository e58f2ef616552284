//! The messages relays exchange through NATS besides heartbeats, and their subjects.
//!
//! ```text
//! p2pcall.relays.alive          Heartbeat (every relay, every second)
//! p2pcall.presence.<relay hex>  Deltas: the changes to that relay's peers, numbered
//! p2pcall.relay.<relay hex>     RelayMsg: that relay's inbox (signals, vouches, snapshots)
//!
//! Deltas    version u8 (1) | relay key (32) | epoch u64 | first seq u64 | count u16 (≤ 256)
//!           | Change*
//! Change    0x01 Joined  PeerInfo | route u64
//!           0x02 Updated PeerInfo
//!           0x03 Left    peer key (32)
//! RelayMsg  version u8 (1) | type u8 | body
//!           0x01 Signal          origin relay (32) | from (32) | to (32) | payload u16 len (≤ 16 KiB)
//!           0x02 SignalFailed    from (32) | to (32) | reason u8
//!           0x03 Vouch           from (32) | to (32) | observed address
//!           0x04 SnapshotRequest relay key (32): where to send the parts | request u64
//!           0x05 SnapshotPart    relay key (32) | epoch u64 | seq u64 | request u64
//!                                | part u32 | parts u32 | count u16 (≤ 1024)
//!                                | (PeerInfo | route u64)*
//! ```
//!
//! A peer's `route` is a number its home relay drew for its session: other relays put it in
//! the [`crate::packet::RelayHop`] packets they send for that peer. It is not a secret (the
//! hop token is); it only names the session.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::PeerId;
use crate::codec::{DecodeError, Reader, WriteExt};
use crate::relay::{MAX_SIGNAL, PeerInfo, SignalFailure};

const VERSION: u8 = 1;
/// Most changes in one [`Deltas`] message.
pub const MAX_CHANGES: usize = 256;
/// Most peers in one [`RelayMsg::SnapshotPart`].
pub const SNAPSHOT_PART: usize = 1024;

/// The subject a relay publishes its presence changes on.
pub fn presence_subject(relay: &PeerId) -> String {
    format!("p2pcall.presence.{relay}")
}

/// The subject every relay subscribes to for the others' presence changes.
pub const PRESENCE_WILDCARD: &str = "p2pcall.presence.*";

/// A relay's inbox subject.
pub fn inbox_subject(relay: &PeerId) -> String {
    format!("p2pcall.relay.{relay}")
}

/// A peer registered with another relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePeer {
    /// What its home relay tells about it.
    pub info: PeerInfo,
    /// Its session's route number at its home relay.
    pub route: u64,
}

impl RemotePeer {
    fn write(&self, out: &mut Vec<u8>) {
        self.info.write(out);
        out.extend_from_slice(&self.route.to_be_bytes());
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            info: PeerInfo::read(r)?,
            route: r.u64("route")?,
        })
    }
}

/// One change to a relay's peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A peer registered.
    Joined(RemotePeer),
    /// A peer renamed itself.
    Updated(PeerInfo),
    /// A peer's session ended.
    Left(PeerId),
}

/// Consecutive changes to one relay's peers: the first is number `first_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deltas {
    /// The relay whose peers changed.
    pub relay: PeerId,
    /// Its presence epoch (see [`super::Heartbeat::epoch`]).
    pub epoch: u64,
    /// Number of the first change.
    pub first_seq: u64,
    /// The changes, in order (at most [`MAX_CHANGES`]).
    pub changes: Vec<Change>,
}

impl Deltas {
    /// The number of its last change.
    pub fn last_seq(&self) -> u64 {
        self.first_seq
            .saturating_add(self.changes.len() as u64)
            .saturating_sub(1)
    }

    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + 60 * self.changes.len());
        b.push(VERSION);
        b.put_peer_id(&self.relay);
        b.extend_from_slice(&self.epoch.to_be_bytes());
        b.extend_from_slice(&self.first_seq.to_be_bytes());
        let n = self.changes.len().min(MAX_CHANGES);
        b.extend_from_slice(&(n as u16).to_be_bytes());
        for c in &self.changes[..n] {
            match c {
                Change::Joined(p) => {
                    b.push(1);
                    p.write(&mut b);
                }
                Change::Updated(info) => {
                    b.push(2);
                    info.write(&mut b);
                }
                Change::Left(id) => {
                    b.push(3);
                    b.put_peer_id(id);
                }
            }
        }
        b
    }

    /// Reads a message.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        version(&mut r)?;
        let relay = r.peer_id("relay")?;
        let epoch = r.u64("epoch")?;
        let first_seq = r.u64("first seq")?;
        let n = r.count("changes", MAX_CHANGES)?;
        let mut changes = Vec::with_capacity(n.min(r.remaining() / 33));
        for _ in 0..n {
            changes.push(match r.u8("change")? {
                1 => Change::Joined(RemotePeer::read(&mut r)?),
                2 => Change::Updated(PeerInfo::read(&mut r)?),
                3 => Change::Left(r.peer_id("peer")?),
                v => {
                    return Err(DecodeError::InvalidValue {
                        field: "change",
                        value: u64::from(v),
                    });
                }
            });
        }
        r.finish()?;
        Ok(Self {
            relay,
            epoch,
            first_seq,
            changes,
        })
    }
}

/// A message to one relay's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayMsg {
    /// A signal for one of its peers.
    Signal {
        /// The sender's relay (told if it cannot be delivered).
        origin: PeerId,
        /// Sender, as authenticated by its relay.
        from: PeerId,
        /// Recipient.
        to: PeerId,
        /// Opaque payload.
        payload: Bytes,
    },
    /// A signal from one of its peers (`from`) could not be delivered to `to`.
    SignalFailed {
        /// The sender of the signal.
        from: PeerId,
        /// Its recipient.
        to: PeerId,
        /// Why.
        reason: SignalFailure,
    },
    /// `from` asked its relay to tell `to` where its UDP packets come from.
    Vouch {
        /// The vouched-for peer.
        from: PeerId,
        /// The peer to tell.
        to: PeerId,
        /// `from`'s address as its relay sees it.
        observed: SocketAddr,
    },
    /// Send your peers to `relay`'s inbox.
    SnapshotRequest {
        /// Who asks.
        relay: PeerId,
        /// Names the request; the parts carry it back.
        request: u64,
    },
    /// Part of a relay's peers, as of change `seq` of `epoch`.
    SnapshotPart {
        /// Whose peers.
        relay: PeerId,
        /// Its presence epoch.
        epoch: u64,
        /// The last change the snapshot includes.
        seq: u64,
        /// The request this answers.
        request: u64,
        /// This part's number, from 0.
        part: u32,
        /// How many parts the snapshot has.
        parts: u32,
        /// Peers (at most [`SNAPSHOT_PART`]).
        peers: Vec<RemotePeer>,
    },
}

mod ty {
    pub const SIGNAL: u8 = 1;
    pub const SIGNAL_FAILED: u8 = 2;
    pub const VOUCH: u8 = 3;
    pub const SNAPSHOT_REQUEST: u8 = 4;
    pub const SNAPSHOT_PART: u8 = 5;
}

fn version(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    match r.u8("version")? {
        VERSION => Ok(()),
        v => Err(DecodeError::UnsupportedVersion(v)),
    }
}

impl RelayMsg {
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![VERSION];
        match self {
            Self::Signal {
                origin,
                from,
                to,
                payload,
            } => {
                b.push(ty::SIGNAL);
                b.put_peer_id(origin);
                b.put_peer_id(from);
                b.put_peer_id(to);
                b.put_bytes16(&payload[..payload.len().min(MAX_SIGNAL)]);
            }
            Self::SignalFailed { from, to, reason } => {
                b.push(ty::SIGNAL_FAILED);
                b.put_peer_id(from);
                b.put_peer_id(to);
                b.push(*reason as u8);
            }
            Self::Vouch { from, to, observed } => {
                b.push(ty::VOUCH);
                b.put_peer_id(from);
                b.put_peer_id(to);
                b.put_socket_addr(observed);
            }
            Self::SnapshotRequest { relay, request } => {
                b.push(ty::SNAPSHOT_REQUEST);
                b.put_peer_id(relay);
                b.extend_from_slice(&request.to_be_bytes());
            }
            Self::SnapshotPart {
                relay,
                epoch,
                seq,
                request,
                part,
                parts,
                peers,
            } => {
                b.push(ty::SNAPSHOT_PART);
                b.put_peer_id(relay);
                b.extend_from_slice(&epoch.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&request.to_be_bytes());
                b.extend_from_slice(&part.to_be_bytes());
                b.extend_from_slice(&parts.to_be_bytes());
                let n = peers.len().min(SNAPSHOT_PART);
                b.extend_from_slice(&(n as u16).to_be_bytes());
                for p in &peers[..n] {
                    p.write(&mut b);
                }
            }
        }
        b
    }

    /// Reads a message.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        version(&mut r)?;
        let msg = match r.u8("type")? {
            ty::SIGNAL => Self::Signal {
                origin: r.peer_id("origin")?,
                from: r.peer_id("from")?,
                to: r.peer_id("to")?,
                payload: crate::codec::owned(r.bytes16("payload", MAX_SIGNAL)?),
            },
            ty::SIGNAL_FAILED => Self::SignalFailed {
                from: r.peer_id("from")?,
                to: r.peer_id("to")?,
                reason: SignalFailure::from_u8(r.u8("reason")?)?,
            },
            ty::VOUCH => Self::Vouch {
                from: r.peer_id("from")?,
                to: r.peer_id("to")?,
                observed: r.socket_addr("observed")?,
            },
            ty::SNAPSHOT_REQUEST => Self::SnapshotRequest {
                relay: r.peer_id("relay")?,
                request: r.u64("request")?,
            },
            ty::SNAPSHOT_PART => {
                let relay = r.peer_id("relay")?;
                let epoch = r.u64("epoch")?;
                let seq = r.u64("seq")?;
                let request = r.u64("request")?;
                let part = r.u32("part")?;
                let parts = r.u32("parts")?;
                let n = r.count("peers", SNAPSHOT_PART)?;
                let mut peers = Vec::with_capacity(n.min(r.remaining() / 50));
                for _ in 0..n {
                    peers.push(RemotePeer::read(&mut r)?);
                }
                Self::SnapshotPart {
                    relay,
                    epoch,
                    seq,
                    request,
                    part,
                    parts,
                    peers,
                }
            }
            t => return Err(DecodeError::UnknownFrameType(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer_info() -> impl Strategy<Value = PeerInfo> {
        (any::<[u8; 32]>(), "\\PC{0,20}", any::<u64>()).prop_map(|(id, name, since)| PeerInfo {
            id: PeerId::from_bytes(id),
            name,
            online_since_ms: since,
        })
    }

    fn remote() -> impl Strategy<Value = RemotePeer> {
        (peer_info(), any::<u64>()).prop_map(|(info, route)| RemotePeer { info, route })
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            remote().prop_map(Change::Joined),
            peer_info().prop_map(Change::Updated),
            any::<[u8; 32]>().prop_map(|k| Change::Left(PeerId::from_bytes(k))),
        ]
    }

    fn id() -> impl Strategy<Value = PeerId> {
        any::<[u8; 32]>().prop_map(PeerId::from_bytes)
    }

    fn msg() -> impl Strategy<Value = RelayMsg> {
        prop_oneof![
            (
                id(),
                id(),
                id(),
                proptest::collection::vec(any::<u8>(), 0..100)
            )
                .prop_map(|(origin, from, to, p)| RelayMsg::Signal {
                    origin,
                    from,
                    to,
                    payload: p.into()
                }),
            (id(), id(), 1u8..=3).prop_map(|(from, to, r)| RelayMsg::SignalFailed {
                from,
                to,
                reason: SignalFailure::from_u8(r).unwrap()
            }),
            (id(), id(), any::<std::net::SocketAddrV4>()).prop_map(|(from, to, a)| {
                RelayMsg::Vouch {
                    from,
                    to,
                    observed: SocketAddr::V4(a),
                }
            }),
            (id(), any::<u64>())
                .prop_map(|(relay, request)| RelayMsg::SnapshotRequest { relay, request }),
            (
                id(),
                any::<(u64, u64, u64)>(),
                any::<(u32, u32)>(),
                proptest::collection::vec(remote(), 0..8)
            )
                .prop_map(|(relay, (epoch, seq, request), (part, parts), peers)| {
                    RelayMsg::SnapshotPart {
                        relay,
                        epoch,
                        seq,
                        request,
                        part,
                        parts,
                        peers,
                    }
                }),
        ]
    }

    proptest! {
        #[test]
        fn deltas_round_trip(relay in id(), epoch in any::<u64>(), first_seq in any::<u64>(),
                             changes in proptest::collection::vec(change(), 0..20)) {
            let d = Deltas { relay, epoch, first_seq, changes };
            prop_assert_eq!(Deltas::decode(&d.encode()), Ok(d));
        }

        #[test]
        fn relay_messages_round_trip(m in msg()) {
            prop_assert_eq!(RelayMsg::decode(&m.encode()), Ok(m));
        }

        #[test]
        fn any_bytes_decode_or_are_refused(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(d) = Deltas::decode(&buf) {
                prop_assert_eq!(Deltas::decode(&d.encode()), Ok(d));
            }
            if let Ok(m) = RelayMsg::decode(&buf) {
                prop_assert_eq!(RelayMsg::decode(&m.encode()), Ok(m));
            }
        }
    }

    #[test]
    fn hostile_messages_are_refused_with_a_reason() {
        let d = Deltas {
            relay: PeerId::from_bytes([1; 32]),
            epoch: 1,
            first_seq: 1,
            changes: vec![Change::Left(PeerId::from_bytes([2; 32]))],
        };
        let mut b = d.encode();
        b[50] = 2; // claims two changes, holds one
        assert!(matches!(
            Deltas::decode(&b),
            Err(DecodeError::Truncated { .. })
        ));
        let mut b = d.encode();
        b[49] = 0xff;
        b[50] = 0xff;
        assert!(matches!(
            Deltas::decode(&b),
            Err(DecodeError::TooLong { .. })
        ));
        assert_eq!(
            RelayMsg::decode(&[VERSION, 9]),
            Err(DecodeError::UnknownFrameType(9))
        );
        assert_eq!(
            RelayMsg::decode(&[7, 1]),
            Err(DecodeError::UnsupportedVersion(7))
        );
        assert_eq!(d.last_seq(), 1);
        assert_eq!(
            presence_subject(&d.relay),
            format!("p2pcall.presence.{}", d.relay)
        );
    }
}
