//! Non-QUIC UDP packets that share a peer's socket with QUIC.
//!
//! The first byte tells them apart: QUIC always sets bit `0x40` (p2pcall never negotiates
//! QUIC bit greasing), these types are all below `0x40`.
//!
//! ```text
//! RelaySend   0x10 | session tag (16) | destination key (32) | QUIC packet    peer -> relay
//! RelayRecv   0x11 | source key (32)  | QUIC packet                           relay -> peer
//! ReflectReq  0x12 | txid (12) | zero padding to 48 bytes                     peer -> relay
//! ReflectResp 0x13 | txid (12) | observed address                             relay -> peer
//! ProbePing   0x14 | txid (12) | sender key (32) | mac (16)                  peer <-> peer
//! ProbePong   0x15 | txid (12) | sender key (32) | observed address | mac (16)
//! RelayHop    0x16 | hop token (8) | route (8) | source key (32) | QUIC packet  relay -> relay
//! ParkAlive   0x17 | session tag (16)                                       peer -> relay
//! Beacon      0x18 | park secret (16) | wake (1)                            relay -> peer
//! ParkGone    0x19 | session tag (16)                                       relay -> peer
//! ```
//!
//! A parked session (no QUIC connection to the relay) is kept by `ParkAlive`, which the relay
//! never answers (no amplification); the relay's `Beacon`s say it is alive (in a cluster, so
//! its peers notice when it dies) or that something waits for the peer (`wake`). A keep-alive
//! for a session the relay does not hold (it restarted) is answered `ParkGone`, the same size.
//!
//! The relay forwards a `RelaySend` by rewriting its header in place into a `RelayRecv` (the
//! header shrinks by 16 bytes, so no copy of the payload is needed). A reflection request is
//! padded to at least the size of its answer, so the relay never amplifies traffic.
//! Probes carry a BLAKE3 MAC keyed by a secret both peers export from their authenticated QUIC
//! session, so nobody else can validate a path on their behalf.

use std::net::SocketAddr;

use bytes::BufMut;

use crate::codec::{Reader, WriteExt, socket_addr_len};
use crate::{DecodeError, PeerId};

/// Type byte of [`RelaySend`].
pub const RELAY_SEND: u8 = 0x10;
/// Type byte of a relayed packet delivered to its recipient.
pub const RELAY_RECV: u8 = 0x11;
/// Type byte of an address reflection request.
pub const REFLECT_REQ: u8 = 0x12;
/// Type byte of an address reflection response.
pub const REFLECT_RESP: u8 = 0x13;
/// Type byte of a path probe.
pub const PROBE_PING: u8 = 0x14;
/// Type byte of a path probe answer.
pub const PROBE_PONG: u8 = 0x15;
/// Type byte of a relayed packet crossing from one relay of a cluster to another.
pub const RELAY_HOP: u8 = 0x16;
/// Type byte of a parked session's keep-alive.
pub const PARK_ALIVE: u8 = 0x17;
/// Type byte of a relay's beacon to a parked session.
pub const BEACON: u8 = 0x18;
/// Type byte of a relay's answer to a keep-alive for a session it does not hold.
pub const PARK_GONE: u8 = 0x19;

/// Header length of a `RelaySend` packet.
pub const RELAY_SEND_HEADER: usize = 1 + 16 + 32;
/// Header length of a `RelayRecv` packet.
pub const RELAY_RECV_HEADER: usize = 1 + 32;
/// Header length of a `RelayHop` packet (the same as a `RelaySend`: rewritten in place).
pub const RELAY_HOP_HEADER: usize = 1 + 8 + 8 + 32;
/// Size every reflection request is padded to (≥ the largest response, 1 + 12 + 19 = 32).
pub const REFLECT_REQ_LEN: usize = 48;
/// Length of a probe MAC.
pub const MAC_LEN: usize = 16;

/// True if a datagram is QUIC rather than one of ours.
pub fn is_quic(first_byte: u8) -> bool {
    first_byte & 0x40 != 0
}

/// True if a QUIC datagram starts with a long-header packet (Initial, 0-RTT, Handshake,
/// Retry: the handshake), false for 1-RTT (short header) packets.
pub fn is_quic_long_header(first_byte: u8) -> bool {
    first_byte & 0xc0 == 0xc0
}

/// A peer-to-relay packet asking for forwarding, borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaySend<'a> {
    /// Secret binding the packet to an authenticated relay session.
    pub session_tag: [u8; 16],
    /// Recipient.
    pub to: PeerId,
    /// The opaque QUIC packet.
    pub payload: &'a [u8],
}

impl<'a> RelaySend<'a> {
    /// Parses a packet whose first byte is [`RELAY_SEND`].
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        expect_type(&mut r, RELAY_SEND)?;
        Ok(Self {
            session_tag: r.array("session tag")?,
            to: r.peer_id("destination")?,
            payload: r.rest(),
        })
    }

    /// Writes just the header; the payload follows.
    pub fn write_header(out: &mut impl BufMut, session_tag: &[u8; 16], to: &PeerId) {
        out.put_u8(RELAY_SEND);
        out.put_slice(session_tag);
        out.put_peer_id(to);
    }

    /// Turns a `RelaySend` packet held in `buf` into a `RelayRecv` from `from`, in place, and
    /// returns the offset at which the rewritten packet starts.
    pub fn rewrite_in_place(buf: &mut [u8], from: &PeerId) -> usize {
        let start = RELAY_SEND_HEADER - RELAY_RECV_HEADER;
        buf[start] = RELAY_RECV;
        buf[start + 1..start + 33].copy_from_slice(from.as_bytes());
        start
    }

    /// Turns a `RelaySend` packet held in `buf` into a `RelayHop` toward another relay of
    /// the cluster (same length: nothing moves but the header).
    pub fn rewrite_to_hop(buf: &mut [u8], token: &[u8; 8], route: u64, from: &PeerId) {
        buf[0] = RELAY_HOP;
        buf[1..9].copy_from_slice(token);
        buf[9..17].copy_from_slice(&route.to_be_bytes());
        buf[17..49].copy_from_slice(from.as_bytes());
    }
}

/// A relayed packet crossing from the sender's relay to the recipient's, borrowed from the
/// receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayHop<'a> {
    /// The receiving relay's hop token (proves the packet comes from a relay of its cluster).
    pub token: [u8; 8],
    /// The recipient's session at the receiving relay.
    pub route: u64,
    /// Sender, as authenticated by its relay.
    pub from: PeerId,
    /// The opaque QUIC packet.
    pub payload: &'a [u8],
}

impl<'a> RelayHop<'a> {
    /// Parses a packet whose first byte is [`RELAY_HOP`].
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        expect_type(&mut r, RELAY_HOP)?;
        Ok(Self {
            token: r.array("hop token")?,
            route: r.u64("route")?,
            from: r.peer_id("source")?,
            payload: r.rest(),
        })
    }

    /// Writes just the header; the payload follows.
    pub fn write_header(out: &mut impl BufMut, token: &[u8; 8], route: u64, from: &PeerId) {
        out.put_u8(RELAY_HOP);
        out.put_slice(token);
        out.put_u64(route);
        out.put_peer_id(from);
    }

    /// Turns a decoded `RelayHop` held in `buf` into a `RelayRecv` (its source key is already
    /// in place) and returns the offset at which the rewritten packet starts.
    pub fn rewrite_in_place(buf: &mut [u8]) -> usize {
        let start = RELAY_HOP_HEADER - RELAY_RECV_HEADER;
        buf[start] = RELAY_RECV;
        start
    }
}

/// A relayed packet as the recipient sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayRecv<'a> {
    /// Sender, as authenticated by the relay.
    pub from: PeerId,
    /// The opaque QUIC packet.
    pub payload: &'a [u8],
}

impl<'a> RelayRecv<'a> {
    /// Parses a packet whose first byte is [`RELAY_RECV`].
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        expect_type(&mut r, RELAY_RECV)?;
        Ok(Self {
            from: r.peer_id("source")?,
            payload: r.rest(),
        })
    }

    /// Writes just the header; the payload follows.
    pub fn write_header(out: &mut impl BufMut, from: &PeerId) {
        out.put_u8(RELAY_RECV);
        out.put_peer_id(from);
    }
}

/// Address reflection ("what is my public address?"), and path probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Asks the receiver which source address it sees.
    ReflectReq {
        /// Transaction id echoed in the response.
        txid: [u8; 12],
    },
    /// The observed source address of a reflection request.
    ReflectResp {
        /// The request's transaction id.
        txid: [u8; 12],
        /// Address the responder saw.
        observed: SocketAddr,
    },
    /// A path probe between peers.
    ProbePing {
        /// Transaction id echoed in the answer.
        txid: [u8; 12],
        /// The sender's identity, to pick the MAC key.
        from: PeerId,
        /// MAC over the preceding bytes.
        mac: [u8; MAC_LEN],
    },
    /// Answer to a probe.
    ProbePong {
        /// The probe's transaction id.
        txid: [u8; 12],
        /// The answering peer's identity.
        from: PeerId,
        /// The source address the probe came from, as the answering peer saw it.
        observed: SocketAddr,
        /// MAC over the preceding bytes.
        mac: [u8; MAC_LEN],
    },
    /// Keeps a parked session (and the NAT mapping its data path uses); the relay takes the
    /// source address as the session's from then on.
    ParkAlive {
        /// The session's tag (from `Welcome`).
        tag: [u8; 16],
    },
    /// The relay to a parked session: alive, or come back (`wake`).
    Beacon {
        /// The secret `Parked` gave.
        secret: [u8; 16],
        /// Something waits for the peer (a signal): reconnect.
        wake: bool,
    },
    /// The relay holds no session with this tag (it restarted): register again.
    ParkGone {
        /// The keep-alive's tag.
        tag: [u8; 16],
    },
}

impl Control {
    /// Parses any of the control packet types.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let ty = r.u8("packet type")?;
        let pkt = match ty {
            REFLECT_REQ => {
                let txid = r.array("txid")?;
                let pad = r.rest();
                if buf.len() < REFLECT_REQ_LEN {
                    return Err(DecodeError::Truncated {
                        field: "reflect padding",
                    });
                }
                if pad.iter().any(|b| *b != 0) {
                    return Err(DecodeError::InvalidValue {
                        field: "reflect padding",
                        value: 1,
                    });
                }
                return Ok(Self::ReflectReq { txid });
            }
            REFLECT_RESP => Self::ReflectResp {
                txid: r.array("txid")?,
                observed: r.socket_addr("observed address")?,
            },
            PROBE_PING => Self::ProbePing {
                txid: r.array("txid")?,
                from: r.peer_id("sender")?,
                mac: r.array("mac")?,
            },
            PROBE_PONG => Self::ProbePong {
                txid: r.array("txid")?,
                from: r.peer_id("sender")?,
                observed: r.socket_addr("observed address")?,
                mac: r.array("mac")?,
            },
            PARK_ALIVE => Self::ParkAlive {
                tag: r.array("session tag")?,
            },
            BEACON => Self::Beacon {
                secret: r.array("park secret")?,
                wake: r.bool("wake")?,
            },
            PARK_GONE => Self::ParkGone {
                tag: r.array("session tag")?,
            },
            other => return Err(DecodeError::UnknownPacketType(other)),
        };
        r.finish()?;
        Ok(pkt)
    }

    /// Serialises the packet. For probes, `mac` is written as held; use
    /// [`Control::seal`] to compute it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            Self::ReflectReq { txid } => {
                out.put_u8(REFLECT_REQ);
                out.put_slice(txid);
                out.resize(start + REFLECT_REQ_LEN, 0);
            }
            Self::ReflectResp { txid, observed } => {
                out.put_u8(REFLECT_RESP);
                out.put_slice(txid);
                out.put_socket_addr(observed);
            }
            Self::ProbePing { txid, from, mac } => {
                out.put_u8(PROBE_PING);
                out.put_slice(txid);
                out.put_peer_id(from);
                out.put_slice(mac);
            }
            Self::ProbePong {
                txid,
                from,
                observed,
                mac,
            } => {
                out.put_u8(PROBE_PONG);
                out.put_slice(txid);
                out.put_peer_id(from);
                out.put_socket_addr(observed);
                out.put_slice(mac);
            }
            Self::ParkAlive { tag } => {
                out.put_u8(PARK_ALIVE);
                out.put_slice(tag);
            }
            Self::Beacon { secret, wake } => {
                out.put_u8(BEACON);
                out.put_slice(secret);
                out.put_u8(u8::from(*wake));
            }
            Self::ParkGone { tag } => {
                out.put_u8(PARK_GONE);
                out.put_slice(tag);
            }
        }
    }

    /// Exact length of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::ReflectReq { .. } => REFLECT_REQ_LEN,
            Self::ReflectResp { observed, .. } => 1 + 12 + socket_addr_len(observed),
            Self::ProbePing { .. } => 1 + 12 + 32 + MAC_LEN,
            Self::ProbePong { observed, .. } => 1 + 12 + 32 + socket_addr_len(observed) + MAC_LEN,
            Self::ParkAlive { .. } => 1 + 16,
            Self::Beacon { .. } => 1 + 16 + 1,
            Self::ParkGone { .. } => 1 + 16,
        }
    }

    /// Computes the probe MAC with `key` and stores it; no-op for the other packets.
    pub fn seal(mut self, key: &[u8; 32]) -> Self {
        let mac = self.compute_mac(key);
        if let Self::ProbePing { mac: m, .. } | Self::ProbePong { mac: m, .. } = &mut self {
            *m = mac;
        }
        self
    }

    /// True if the probe's MAC is valid under `key` (other packets carry none: false).
    pub fn verify(&self, key: &[u8; 32]) -> bool {
        match self {
            Self::ProbePing { mac, .. } | Self::ProbePong { mac, .. } => {
                // Constant-time comparison via blake3's Hash equality on the padded value.
                let mut want = [0u8; 32];
                want[..MAC_LEN].copy_from_slice(&self.compute_mac(key));
                let mut got = [0u8; 32];
                got[..MAC_LEN].copy_from_slice(mac);
                blake3::Hash::from(want) == blake3::Hash::from(got)
            }
            _ => false,
        }
    }

    fn compute_mac(&self, key: &[u8; 32]) -> [u8; MAC_LEN] {
        let mut body = Vec::with_capacity(self.encoded_len());
        self.encode(&mut body);
        body.truncate(body.len().saturating_sub(MAC_LEN));
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&blake3::keyed_hash(key, &body).as_bytes()[..MAC_LEN]);
        out
    }
}

fn expect_type(r: &mut Reader<'_>, want: u8) -> Result<(), DecodeError> {
    let ty = r.u8("packet type")?;
    if ty == want {
        Ok(())
    } else {
        Err(DecodeError::UnknownPacketType(ty))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::tests::{peer_id, socket_addr};
    use proptest::prelude::*;

    fn control() -> impl Strategy<Value = Control> {
        prop_oneof![
            any::<[u8; 12]>().prop_map(|txid| Control::ReflectReq { txid }),
            (any::<[u8; 12]>(), socket_addr())
                .prop_map(|(txid, observed)| Control::ReflectResp { txid, observed }),
            (any::<[u8; 12]>(), peer_id(), any::<[u8; 16]>())
                .prop_map(|(txid, from, mac)| Control::ProbePing { txid, from, mac }),
            (
                any::<[u8; 12]>(),
                peer_id(),
                socket_addr(),
                any::<[u8; 16]>()
            )
                .prop_map(|(txid, from, observed, mac)| Control::ProbePong {
                    txid,
                    from,
                    observed,
                    mac
                }),
            any::<[u8; 16]>().prop_map(|tag| Control::ParkAlive { tag }),
            (any::<[u8; 16]>(), any::<bool>())
                .prop_map(|(secret, wake)| Control::Beacon { secret, wake }),
            any::<[u8; 16]>().prop_map(|tag| Control::ParkGone { tag }),
        ]
    }

    proptest! {
        #[test]
        fn control_round_trip(c in control()) {
            let mut buf = Vec::new();
            c.encode(&mut buf);
            prop_assert_eq!(buf.len(), c.encoded_len());
            prop_assert!(!is_quic(buf[0]));
            prop_assert_eq!(Control::decode(&buf).unwrap(), c);
        }

        #[test]
        fn relay_send_rewrites_to_relay_recv(tag in any::<[u8;16]>(), to in peer_id(), from in peer_id(),
                                             payload in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let mut buf = Vec::new();
            RelaySend::write_header(&mut buf, &tag, &to);
            buf.extend_from_slice(&payload);
            let parsed = RelaySend::decode(&buf).unwrap();
            prop_assert_eq!(parsed, RelaySend { session_tag: tag, to, payload: &payload });
            let start = RelaySend::rewrite_in_place(&mut buf, &from);
            let recv = RelayRecv::decode(&buf[start..]).unwrap();
            prop_assert_eq!(recv, RelayRecv { from, payload: &payload });
            let mut again = Vec::new();
            RelayRecv::write_header(&mut again, &from);
            again.extend_from_slice(&payload);
            prop_assert_eq!(&again[..], &buf[start..]);
        }

        #[test]
        fn a_packet_crossing_two_relays_arrives_as_sent(tag in any::<[u8;16]>(), to in peer_id(),
                from in peer_id(), token in any::<[u8; 8]>(), route in any::<u64>(),
                payload in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let mut buf = Vec::new();
            RelaySend::write_header(&mut buf, &tag, &to);
            buf.extend_from_slice(&payload);
            RelaySend::rewrite_to_hop(&mut buf, &token, route, &from);
            let hop = RelayHop::decode(&buf).unwrap();
            prop_assert_eq!(hop, RelayHop { token, route, from, payload: &payload });
            prop_assert!(!is_quic(buf[0]));
            let mut again = Vec::new();
            RelayHop::write_header(&mut again, &token, route, &from);
            again.extend_from_slice(&payload);
            prop_assert_eq!(&again[..], &buf[..]);
            let start = RelayHop::rewrite_in_place(&mut buf);
            prop_assert_eq!(RelayRecv::decode(&buf[start..]).unwrap(), RelayRecv { from, payload: &payload });
        }

        #[test]
        fn decoders_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = Control::decode(&buf);
            let _ = RelaySend::decode(&buf);
            let _ = RelayRecv::decode(&buf);
            let _ = RelayHop::decode(&buf);
        }
    }

    #[test]
    fn probe_mac_binds_every_field() {
        let key = [5u8; 32];
        let ping = Control::ProbePing {
            txid: [1; 12],
            from: PeerId::from_bytes([2; 32]),
            mac: [0; 16],
        }
        .seal(&key);
        assert!(ping.verify(&key));
        assert!(!ping.verify(&[6u8; 32]));
        let mut buf = Vec::new();
        ping.encode(&mut buf);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 1;
            if let Ok(c) = Control::decode(&bad) {
                assert!(!c.verify(&key), "flipping byte {i} must break the mac");
            }
        }
    }

    #[test]
    fn reflect_request_must_be_padded() {
        let mut buf = Vec::new();
        Control::ReflectReq { txid: [3; 12] }.encode(&mut buf);
        assert!(
            Control::decode(&buf[..20]).is_err(),
            "short request would amplify"
        );
        let resp = Control::ReflectResp {
            txid: [3; 12],
            observed: "[2001:db8::1]:65535".parse().unwrap(),
        };
        assert!(resp.encoded_len() <= REFLECT_REQ_LEN);
    }
}
