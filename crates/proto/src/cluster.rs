//! What the relays of one cluster tell each other through NATS.
//!
//! Membership with liveness: every relay publishes a [`Heartbeat`] on [`ALIVE_SUBJECT`] every
//! [`HEARTBEAT_EVERY`], and a last one with `leaving` set when it shuts down; every relay
//! keeps the members it heard from within [`MEMBER_TTL`] ([`Membership`], sans-IO).
//!
//! ```text
//! Heartbeat  version u8 (2) | relay key (32) | flags u8 (bit 0: leaving, bit 1: hop present)
//!            | peers u32 | region u8 len + UTF-8 (≤ 32) | public address u8 len + ASCII (≤ 255)
//!            | presence epoch u64 | presence seq u64 | [hop token (8) | hop address]
//! ```
//!
//! Presence and signaling ([`wire`], [`directory`]): each relay publishes the changes of its
//! own peers, numbered, on its presence subject; every relay keeps the others' peers in a
//! [`Directory`] and asks a relay for a snapshot when it missed a change. Signals, vouches and
//! snapshots go to the one relay concerned, on its inbox subject. Relayed packets cross
//! relays as UDP [`crate::packet::RelayHop`] datagrams, authenticated by the receiving relay's
//! hop token (announced here).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::PeerId;
use crate::codec::{DecodeError, Reader, WriteExt};

pub mod directory;
pub mod wire;

pub use directory::{Directory, DirectoryEvent, Located};
pub use wire::{Change, Deltas, RelayMsg, RemotePeer};

/// The subject every relay publishes its heartbeat on (and every relay subscribes to).
pub const ALIVE_SUBJECT: &str = "p2pcall.relays.alive";
/// How often a relay publishes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A member not heard from for this long has left (three heartbeats lost).
pub const MEMBER_TTL: Duration = Duration::from_secs(3);
/// Longest region name, bytes.
pub const MAX_REGION: usize = 32;
/// Longest public address (`host:port`), bytes.
pub const MAX_PUBLIC_ADDR: usize = 255;
/// Most members a relay keeps (a cluster is a handful of relays; this bounds what a hostile
/// publisher can make us hold).
pub const MAX_MEMBERS: usize = 256;
const VERSION: u8 = 2;

/// Where and how another relay accepts relayed packets for its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// Its UDP address for other relays.
    pub addr: SocketAddr,
    /// The token its [`crate::packet::RelayHop`] packets must carry.
    pub token: [u8; 8],
}

/// One relay's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The relay's key (the one its clients pin).
    pub relay: PeerId,
    /// Its region, as its operator named it (may be empty).
    pub region: String,
    /// Where clients reach it, `host:port` (may be empty).
    pub public_addr: String,
    /// Peers registered with it now.
    pub peers: u32,
    /// Its last heartbeat: it is shutting down.
    pub leaving: bool,
    /// Its presence numbering: changes to its peers since `epoch` (a random number drawn at
    /// start) are numbered 1, 2, …; `seq` is the last one published.
    pub epoch: u64,
    /// The last presence change it published.
    pub seq: u64,
    /// Where it takes packets for its peers (none: it cannot be reached by other relays).
    pub hop: Option<Hop>,
}

impl Heartbeat {
    /// The heartbeat's bytes (fields too long are cut to their limits).
    pub fn encode(&self) -> Vec<u8> {
        let region = crate::codec::truncate_utf8(&self.region, MAX_REGION);
        let addr = crate::codec::truncate_utf8(&self.public_addr, MAX_PUBLIC_ADDR);
        let mut b = Vec::with_capacity(90 + region.len() + addr.len());
        b.push(VERSION);
        b.extend_from_slice(self.relay.as_bytes());
        b.push(u8::from(self.leaving) | (u8::from(self.hop.is_some()) << 1));
        b.extend_from_slice(&self.peers.to_be_bytes());
        b.push(region.len() as u8);
        b.extend_from_slice(region.as_bytes());
        b.push(addr.len() as u8);
        b.extend_from_slice(addr.as_bytes());
        b.extend_from_slice(&self.epoch.to_be_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        if let Some(hop) = &self.hop {
            b.extend_from_slice(&hop.token);
            b.put_socket_addr(&hop.addr);
        }
        b
    }

    /// Reads a heartbeat.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let v = r.u8("heartbeat version")?;
        if v != VERSION {
            return Err(DecodeError::UnsupportedVersion(v));
        }
        let relay = r.peer_id("relay")?;
        let flags = r.u8("heartbeat flags")?;
        if flags > 3 {
            return Err(DecodeError::InvalidValue {
                field: "heartbeat flags",
                value: u64::from(flags),
            });
        }
        let peers = r.u32("peers")?;
        let region = text8(&mut r, "region", MAX_REGION)?;
        let public_addr = text8(&mut r, "public address", MAX_PUBLIC_ADDR)?;
        let epoch = r.u64("presence epoch")?;
        let seq = r.u64("presence seq")?;
        let hop = if flags & 2 != 0 {
            Some(Hop {
                token: r.array("hop token")?,
                addr: r.socket_addr("hop address")?,
            })
        } else {
            None
        };
        r.finish()?;
        Ok(Self {
            relay,
            region,
            public_addr,
            peers,
            leaving: flags & 1 != 0,
            epoch,
            seq,
            hop,
        })
    }
}

/// A text field of a heartbeat: no control characters (it reaches logs and tables).
fn text8(r: &mut Reader<'_>, field: &'static str, max: usize) -> Result<String, DecodeError> {
    let s = r.str8(field, max)?;
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(DecodeError::InvalidValue {
            field,
            value: u64::from(c),
        }),
        None => Ok(s),
    }
}

/// A member of the cluster as last heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its last heartbeat.
    pub heartbeat: Heartbeat,
    /// When it arrived.
    pub heard: Instant,
}

/// The relays of the cluster this relay heard from recently (sans-IO: `now` is passed in).
#[derive(Debug, Default)]
pub struct Membership {
    me: Option<PeerId>,
    members: HashMap<PeerId, Member>,
}

/// A change of membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// A relay joined (its first heartbeat).
    Joined(PeerId),
    /// A relay left (said so, or went silent for [`MEMBER_TTL`]).
    Left(PeerId),
}

impl Membership {
    /// The membership as `me` sees it (its own heartbeats are not a member).
    pub fn new(me: PeerId) -> Self {
        Self {
            me: Some(me),
            members: HashMap::new(),
        }
    }

    /// A heartbeat arrived at `now`.
    pub fn heard(&mut self, now: Instant, hb: Heartbeat) -> Option<MemberChange> {
        if Some(hb.relay) == self.me {
            return None;
        }
        let id = hb.relay;
        if hb.leaving {
            return self.members.remove(&id).map(|_| MemberChange::Left(id));
        }
        if !self.members.contains_key(&id) && self.members.len() >= MAX_MEMBERS {
            return None;
        }
        let new = self
            .members
            .insert(
                id,
                Member {
                    heartbeat: hb,
                    heard: now,
                },
            )
            .is_none();
        new.then_some(MemberChange::Joined(id))
    }

    /// Members silent for [`MEMBER_TTL`] at `now` leave.
    pub fn expire(&mut self, now: Instant) -> Vec<MemberChange> {
        let gone: Vec<PeerId> = (self.members.iter())
            .filter(|(_, m)| now.saturating_duration_since(m.heard) >= MEMBER_TTL)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.members.remove(id);
        }
        gone.into_iter().map(MemberChange::Left).collect()
    }

    /// The members, by key.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hb(n: u8, leaving: bool) -> Heartbeat {
        Heartbeat {
            relay: PeerId::from_bytes([n; 32]),
            region: "eu-west".into(),
            public_addr: format!("relay{n}.example.org:7700"),
            peers: u32::from(n) * 10,
            leaving,
            epoch: 7,
            seq: u64::from(n),
            hop: Some(Hop {
                addr: SocketAddr::from(([192, 0, 2, n], 7700)),
                token: [n; 8],
            }),
        }
    }

    proptest! {
        #[test]
        fn heartbeats_round_trip(
            relay in any::<[u8; 32]>(),
            region in "[a-z0-9-]{0,32}",
            public_addr in "[a-z0-9.:-]{0,100}",
            peers in any::<u32>(),
            leaving in any::<bool>(),
            epoch in any::<u64>(),
            seq in any::<u64>(),
            hop in proptest::option::of((any::<[u8; 8]>(), any::<std::net::SocketAddrV6>())),
        ) {
            let hop = hop.map(|(token, a)| Hop { token, addr: SocketAddr::V6(std::net::SocketAddrV6::new(*a.ip(), a.port(), 0, 0)) });
            let h = Heartbeat { relay: PeerId::from_bytes(relay), region, public_addr, peers, leaving, epoch, seq, hop };
            prop_assert_eq!(Heartbeat::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn any_bytes_decode_or_are_refused(buf in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(h) = Heartbeat::decode(&buf) {
                prop_assert_eq!(Heartbeat::decode(&h.encode()), Ok(h));
            }
        }
    }

    #[test]
    fn members_join_leave_and_expire_on_a_virtual_clock() {
        let t0 = Instant::now();
        let mut m = Membership::new(PeerId::from_bytes([1; 32]));
        assert_eq!(m.heard(t0, hb(1, false)), None, "our own heartbeat");
        assert_eq!(
            m.heard(t0, hb(2, false)),
            Some(MemberChange::Joined(PeerId::from_bytes([2; 32])))
        );
        assert!(m.heard(t0, hb(3, false)).is_some());
        // Heard again: no change, its liveness renewed.
        assert_eq!(m.heard(t0 + Duration::from_secs(2), hb(2, false)), None);
        assert_eq!(
            m.expire(t0 + MEMBER_TTL),
            vec![MemberChange::Left(PeerId::from_bytes([3; 32]))]
        );
        assert_eq!(m.members().count(), 1);
        // One that says it leaves is gone at once.
        assert_eq!(
            m.heard(t0 + Duration::from_secs(3), hb(2, true)),
            Some(MemberChange::Left(PeerId::from_bytes([2; 32])))
        );
        assert_eq!(m.members().count(), 0);
        // Bounded: a flood of made-up relays fills at most MAX_MEMBERS.
        for i in 0..(MAX_MEMBERS + 50) {
            let mut h = hb(9, false);
            h.relay = PeerId::from_bytes({
                let mut k = [0u8; 32];
                k[..8].copy_from_slice(&(i as u64).to_le_bytes());
                k
            });
            m.heard(t0, h);
        }
        assert_eq!(m.members().count(), MAX_MEMBERS);
    }

    #[test]
    fn hostile_heartbeats_are_refused_with_a_reason() {
        let mut b = hb(2, false).encode();
        b[0] = 9;
        assert_eq!(
            Heartbeat::decode(&b),
            Err(DecodeError::UnsupportedVersion(9))
        );
        let mut b = hb(2, false).encode();
        b[33] = 7;
        assert!(matches!(
            Heartbeat::decode(&b),
            Err(DecodeError::InvalidValue { .. })
        ));
        let mut b = hb(2, false).encode();
        b.push(0);
        assert_eq!(Heartbeat::decode(&b), Err(DecodeError::TrailingBytes(1)));
    }
}
