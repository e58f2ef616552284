//! Direct-path discovery and path choice for one peer-to-peer connection (sans-IO).
//!
//! Every peer connection starts on the relay path. Each side runs one [`PathManager`]: it
//! probes the other side's candidate addresses with MAC-authenticated pings
//! ([`p2pcall_proto::packet::Control::ProbePing`]), answers the other side's probes, and
//! selects the path its QUIC packets take:
//!
//! ```text
//!            probe answered                  no packet on the direct path for DIRECT_DEAD_AFTER
//!  Relay  ------------------->  Direct(a)  --------------------------------------------> Relay
//!    ^                            |   lower-RTT path validated (RTT < 70% of current)
//!    |  re-probe every            v
//!    +---- REPROBE_INTERVAL    Direct(b)
//! ```
//!
//! The machine takes `now` and packets in, and hands probe transmits, a wake-up time and
//! [`PathEvent`]s out; it reads no clock and owns no socket. The driver routes the QUIC packets
//! of the connection according to [`PathManager::selected`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod classify;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pcall_proto::PeerId;
use p2pcall_proto::packet::Control;

/// Interval between probes of a candidate that has not answered yet. Short so that a path on
/// the same host or LAN is found within a few milliseconds of the first answer, and a lost
/// probe costs little.
pub const PROBE_RETRY: Duration = Duration::from_millis(200);
/// Probes sent to an unanswered candidate in one round before it is marked failed (2 s).
pub const PROBE_TRIES: u32 = 10;
/// While relayed, every candidate is probed again after this long (networks change, NAT
/// mappings appear).
pub const REPROBE_INTERVAL: Duration = Duration::from_secs(30);
/// A selected direct path with no packet received for this long sends a liveness probe.
pub const LIVENESS_PROBE_AFTER: Duration = Duration::from_millis(400);
/// A selected direct path with no packet received for this long is dead: fall back to the
/// relay. With liveness probes every 400 ms this is three lost probes, and it keeps the
/// fallback under the 2 s target.
pub const DIRECT_DEAD_AFTER: Duration = Duration::from_millis(1500);
/// Validated but unselected paths are kept alive this often, under the ~30 s UDP mapping
/// timeout of common NATs.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// A validated path replaces the selected one only if its RTT is below this fraction of the
/// selected path's RTT (hysteresis against flapping).
pub const SWITCH_RTT_RATIO: f64 = 0.7;
/// Most candidate addresses tracked (announced plus peer-reflexive).
pub const MAX_CANDIDATES: usize = 48;
/// Probes awaiting an answer; older ones are forgotten.
const MAX_PENDING: usize = 64;

/// Where the connection's packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Through the relay.
    Relay,
    /// Straight to this address.
    Direct(SocketAddr),
}

/// Something the driver should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEvent {
    /// The selected path changed.
    Selected {
        /// The new path.
        path: Path,
        /// Its round-trip time if measured.
        rtt: Option<Duration>,
    },
}

/// A probe packet to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address.
    pub dst: SocketAddr,
    /// Packet bytes.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CandState {
    /// Probing: `tries` probes sent, the next one due at `next`.
    Probing { tries: u32, next: Instant },
    /// Answered. `last_rx` is the last packet of any kind from this address.
    Valid {
        rtt: Duration,
        last_rx: Instant,
        last_tx: Instant,
    },
    /// Gave up until `retry_at`.
    Failed { retry_at: Instant },
}

#[derive(Debug, Clone)]
struct Candidate {
    addr: SocketAddr,
    state: CandState,
}

/// Path state of one peer-to-peer connection.
#[derive(Debug)]
pub struct PathManager {
    local: PeerId,
    key: [u8; 32],
    counter: u64,
    candidates: Vec<Candidate>,
    pending: VecDeque<([u8; 12], SocketAddr, Instant)>,
    selected: Path,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PathEvent>,
}

impl PathManager {
    /// Starts on the relay path. `key` is the probe secret both peers derive from their QUIC
    /// session (TLS exporter), `local` our own identity.
    pub fn new(local: PeerId, key: [u8; 32]) -> Self {
        Self {
            local,
            key,
            counter: 0,
            candidates: Vec::new(),
            pending: VecDeque::new(),
            selected: Path::Relay,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The path packets should take now.
    pub fn selected(&self) -> Path {
        self.selected
    }

    /// Probes sent so far.
    pub fn probes_sent(&self) -> u64 {
        self.counter
    }

    /// Round-trip time of the selected direct path.
    pub fn direct_rtt(&self) -> Option<Duration> {
        let Path::Direct(addr) = self.selected else {
            return None;
        };
        self.candidates.iter().find_map(|c| match c.state {
            CandState::Valid { rtt, .. } if c.addr == addr => Some(rtt),
            _ => None,
        })
    }

    /// Sets the remote side's announced candidates; new ones are probed at once.
    pub fn add_remote_candidates(&mut self, now: Instant, addrs: &[SocketAddr]) {
        for a in addrs {
            self.add_candidate(now, *a);
        }
    }

    /// Forces every known candidate to be probed again now (after a local network change).
    pub fn reprobe(&mut self, now: Instant) {
        for c in &mut self.candidates {
            if !matches!(c.state, CandState::Valid { .. }) {
                c.state = CandState::Probing {
                    tries: 0,
                    next: now,
                };
            }
        }
    }

    fn add_candidate(&mut self, now: Instant, addr: SocketAddr) {
        if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
            return;
        }
        if self.candidates.iter().any(|c| c.addr == addr) {
            return;
        }
        if self.candidates.len() >= MAX_CANDIDATES {
            // Forget the oldest failed candidate to make room; if none failed, ignore.
            let Some(i) = self
                .candidates
                .iter()
                .position(|c| matches!(c.state, CandState::Failed { .. }))
            else {
                return;
            };
            self.candidates.remove(i);
        }
        self.candidates.push(Candidate {
            addr,
            state: CandState::Probing {
                tries: 0,
                next: now,
            },
        });
    }

    /// Feeds a probe packet received from `from`. Packets that fail authentication, or are
    /// not probes, are ignored (returns false) so that nobody else can steer our path.
    pub fn handle_control(&mut self, now: Instant, from: SocketAddr, pkt: &Control) -> bool {
        if !pkt.verify(&self.key) {
            return false;
        }
        match pkt {
            Control::ProbePing {
                txid, from: sender, ..
            } => {
                if *sender == self.local {
                    return false; // our own probe reflected back
                }
                let pong = Control::ProbePong {
                    txid: *txid,
                    from: self.local,
                    observed: from,
                    mac: [0; 16],
                }
                .seal(&self.key);
                self.push_transmit(from, &pong);
                // A probe that reaches us from an address we did not know is a
                // peer-reflexive candidate (the other side's NAT mapping): probe it back.
                self.add_candidate(now, from);
                self.note_rx(now, from);
                true
            }
            Control::ProbePong {
                txid, from: sender, ..
            } => {
                if *sender == self.local {
                    return false;
                }
                let Some(pos) = self.pending.iter().position(|(t, _, _)| t == txid) else {
                    return false;
                };
                let Some((_, addr, sent)) = self.pending.remove(pos) else {
                    return false;
                };
                if addr != from {
                    return false;
                }
                let rtt = now.saturating_duration_since(sent);
                if let Some(c) = self.candidates.iter_mut().find(|c| c.addr == from) {
                    c.state = CandState::Valid {
                        rtt,
                        last_rx: now,
                        last_tx: sent,
                    };
                }
                self.choose();
                true
            }
            _ => false,
        }
    }

    /// Notes that a (QUIC) packet of this connection arrived directly from `from`.
    pub fn note_rx(&mut self, now: Instant, from: SocketAddr) {
        if let Some(Candidate {
            state: CandState::Valid { last_rx, .. },
            ..
        }) = self.candidates.iter_mut().find(|c| c.addr == from)
        {
            *last_rx = now;
        }
    }

    /// Advances timers: probes, liveness, fallback.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut to_send = Vec::new();
        let mut died = false;
        for c in &mut self.candidates {
            match &mut c.state {
                CandState::Probing { tries, next } if *next <= now => {
                    if *tries >= PROBE_TRIES {
                        c.state = CandState::Failed {
                            retry_at: now + REPROBE_INTERVAL,
                        };
                    } else {
                        *tries += 1;
                        *next = now + PROBE_RETRY;
                        to_send.push(c.addr);
                    }
                }
                CandState::Failed { retry_at } if *retry_at <= now => {
                    c.state = CandState::Probing {
                        tries: 1,
                        next: now + PROBE_RETRY,
                    };
                    to_send.push(c.addr);
                }
                CandState::Valid {
                    last_rx, last_tx, ..
                } => {
                    let is_selected = self.selected == Path::Direct(c.addr);
                    let idle = now.saturating_duration_since(*last_rx);
                    if idle
                        >= DIRECT_DEAD_AFTER.max(if is_selected {
                            Duration::ZERO
                        } else {
                            KEEPALIVE_INTERVAL * 2
                        })
                    {
                        if is_selected {
                            died = true;
                        }
                        c.state = CandState::Probing {
                            tries: 1,
                            next: now + PROBE_RETRY,
                        };
                        to_send.push(c.addr);
                        continue;
                    }
                    let probe_every = if is_selected {
                        LIVENESS_PROBE_AFTER
                    } else {
                        KEEPALIVE_INTERVAL
                    };
                    let since_tx = now.saturating_duration_since(*last_tx);
                    if idle >= probe_every && since_tx >= probe_every.min(LIVENESS_PROBE_AFTER) {
                        *last_tx = now;
                        to_send.push(c.addr);
                    }
                }
                _ => {}
            }
        }
        for addr in to_send {
            self.send_probe(now, addr);
        }
        if died {
            self.choose();
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.candidates
            .iter()
            .map(|c| match c.state {
                CandState::Probing { next, .. } => next,
                CandState::Failed { retry_at } => retry_at,
                CandState::Valid {
                    last_rx, last_tx, ..
                } => {
                    if self.selected == Path::Direct(c.addr) {
                        (last_rx + DIRECT_DEAD_AFTER)
                            .min((last_rx.max(last_tx)) + LIVENESS_PROBE_AFTER)
                    } else {
                        (last_rx + KEEPALIVE_INTERVAL * 2)
                            .min(last_rx.max(last_tx) + KEEPALIVE_INTERVAL)
                    }
                }
            })
            .min()
    }

    /// Next probe packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event for the driver.
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }

    fn send_probe(&mut self, now: Instant, addr: SocketAddr) {
        self.counter += 1;
        let mut txid = [0u8; 12];
        let h = blake3::keyed_hash(&self.key, &self.counter.to_be_bytes());
        txid.copy_from_slice(&h.as_bytes()[..12]);
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back((txid, addr, now));
        let ping = Control::ProbePing {
            txid,
            from: self.local,
            mac: [0; 16],
        }
        .seal(&self.key);
        self.push_transmit(addr, &ping);
    }

    fn push_transmit(&mut self, dst: SocketAddr, pkt: &Control) {
        let mut payload = Vec::with_capacity(pkt.encoded_len());
        pkt.encode(&mut payload);
        self.transmits.push_back(Transmit { dst, payload });
    }

    /// Picks the best validated path, with hysteresis.
    fn choose(&mut self) {
        let best = self
            .candidates
            .iter()
            .filter_map(|c| match c.state {
                CandState::Valid { rtt, .. } => Some((c.addr, rtt)),
                _ => None,
            })
            .min_by_key(|(_, rtt)| *rtt);
        let current_rtt = match self.selected {
            Path::Direct(a) => self.candidates.iter().find_map(|c| match c.state {
                CandState::Valid { rtt, .. } if c.addr == a => Some(rtt),
                _ => None,
            }),
            Path::Relay => None,
        };
        let next = match (best, current_rtt) {
            (None, _) => Path::Relay,
            (Some((addr, _)), None) => Path::Direct(addr),
            (Some((addr, rtt)), Some(cur)) => {
                if rtt.as_secs_f64() < cur.as_secs_f64() * SWITCH_RTT_RATIO {
                    Path::Direct(addr)
                } else {
                    self.selected
                }
            }
        };
        if next != self.selected {
            self.selected = next;
            let rtt = self.direct_rtt();
            self.events
                .push_back(PathEvent::Selected { path: next, rtt });
        }
    }
}

#[cfg(test)]
mod tests;
