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
//!    ^                            |   another path clearly better (smoothed RTT over at
//!    |  re-probe every            v   least SWITCH_MIN_SAMPLES probes, < 70 % of the
//!    +---- REPROBE_INTERVAL    Direct(b)   current one and at least SWITCH_MIN_GAIN less)
//! ```
//!
//! Path choice is stable: every validated path keeps a smoothed RTT (RFC 6298's 1/8 gain);
//! the first answered path is selected at once, and a selected path is replaced only when it
//! dies or when another is clearly better by both margins over enough samples. Paths of equal
//! RTT (IPv4 and IPv6 to one host, several interfaces of one LAN) never alternate: sub-ms
//! differences are below [`SWITCH_MIN_GAIN`], and single-sample noise is smoothed away.
//!
//! Candidates are probed as soon as they are known (enough for most NAT pairs). In addition
//! the dialer runs coordinated punching *rounds* (like libp2p's DCUtR): it asks the driver to
//! send a `Punch` message through the relayed connection ([`PathEvent::SendPunch`]) and starts
//! half a relay RTT later, when the message reaches the other side, which starts on receipt
//! ([`PathManager::start_round`]). Rounds run after each candidate exchange, after a network
//! change, and every [`REPUNCH_INTERVAL`] while relayed. When one side's NAT maps endpoint-
//! dependently ("symmetric") and the other's endpoint-independently, a round also runs the
//! birthday technique: the symmetric side probes the other's public address from
//! [`BIRTHDAY_SOCKETS`] auxiliary sockets (each gets its own random public port), the other
//! side probes random ports of the symmetric side's public IP; both at most
//! [`BIRTHDAY_RATE`] probes per second for at most [`BIRTHDAY_DURATION`]. A probe that lands
//! on one of the open mappings validates that path. Both sides symmetric: stay relayed.
//!
//! What a hostile peer can make us send is bounded. The birthday technique aims only at the
//! address the relay vouched for ([`PathManager::set_remote_vouched`]), never at one the peer
//! claimed. Every other probe toward an address that has not answered yet is charged to a
//! per-connection budget ([`UNVALIDATED_PROBE_RATE`], [`UNVALIDATED_PROBE_BURST`]) and
//! marked [`Transmit::unvalidated`] for the driver's budget across all connections. A probe
//! is answered once: a replayed probe (same MAC'd transaction id, from anywhere) is ignored.
//!
//! The machine takes `now` and packets in, and hands probe transmits, a wake-up time and
//! [`PathEvent`]s out; it reads no clock and owns no socket. The driver routes the QUIC packets
//! of the connection according to [`PathManager::selected`] and
//! [`PathManager::selected_via`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod classify;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use p2pcall_proto::PeerId;
use p2pcall_proto::packet::Control;
use p2pcall_proto::peer::Mapping;

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
/// A validated path replaces the selected one only if its smoothed RTT is below this fraction
/// of the selected path's (hysteresis against flapping).
pub const SWITCH_RTT_RATIO: f64 = 0.7;
/// ... and at least this much lower in absolute terms: on a LAN or one host, paths differ by
/// fractions of a millisecond that are 30 % of nothing; nobody gains from such a switch.
pub const SWITCH_MIN_GAIN: Duration = Duration::from_millis(2);
/// ... and only once both paths have this many RTT samples (one probe's RTT is noise).
pub const SWITCH_MIN_SAMPLES: u32 = 5;
/// A validated but unselected path with fewer than [`SWITCH_MIN_SAMPLES`] samples is probed
/// this often, so that a clearly better path is found within a few seconds; afterwards only
/// every [`KEEPALIVE_INTERVAL`].
pub const EVAL_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Most candidate addresses tracked (announced plus peer-reflexive).
pub const MAX_CANDIDATES: usize = 48;
/// Probes awaiting an answer; older ones are forgotten (2.5 s of birthday probes).
const MAX_PENDING: usize = 256;
/// While relayed, the dialer starts a coordinated punching round this often.
pub const REPUNCH_INTERVAL: Duration = Duration::from_secs(30);
/// Rounds start at most this often (a peer flooding `Punch` or `Candidates` frames must not
/// turn us into a probe cannon); a request within it is deferred, not dropped.
pub const MIN_ROUND_GAP: Duration = Duration::from_secs(1);
/// Auxiliary sockets the symmetric side opens for the birthday technique.
pub const BIRTHDAY_SOCKETS: u16 = 256;
/// Birthday probes per second, per side.
pub const BIRTHDAY_RATE: u32 = 100;
/// A birthday attempt gives up after this long (and is tried again next round).
pub const BIRTHDAY_DURATION: Duration = Duration::from_secs(20);
/// Lowest port a birthday probe guesses (NATs allocate from the unprivileged range).
const SPRAY_PORT_MIN: u16 = 1024;
/// Probes per second one connection may send toward addresses that have not answered
/// (announced candidates, peer-reflexive ones), birthday probes aside. A round probes each of
/// a handful of candidates [`PROBE_TRIES`] times: the burst covers it.
pub const UNVALIDATED_PROBE_RATE: f64 = 20.0;
/// ... and at most this many at once.
pub const UNVALIDATED_PROBE_BURST: f64 = 100.0;
/// Probe transaction ids remembered to refuse replays.
const SEEN_PINGS: usize = 1024;

/// The socket a probe leaves on, or arrived on: [`MAIN_SOCKET`] is the endpoint's shared
/// socket, `1..=BIRTHDAY_SOCKETS` are this connection's auxiliary sockets.
pub type Via = u16;
/// The endpoint's shared socket.
pub const MAIN_SOCKET: Via = 0;

/// Where the connection's packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Through the relay.
    Relay,
    /// Straight to this address.
    Direct(SocketAddr),
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Relay => f.write_str("relay"),
            Self::Direct(a) => write!(f, "direct {a}"),
        }
    }
}

/// Something the driver should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEvent {
    /// The selected path changed.
    Selected {
        /// The new path.
        path: Path,
        /// The socket its packets leave on.
        via: Via,
        /// Its round-trip time if measured.
        rtt: Option<Duration>,
    },
    /// (Dialer) send `Punch { round }` to the peer through the connection now.
    SendPunch {
        /// Round number.
        round: u32,
    },
    /// The birthday attempt ended: close every auxiliary socket except `keep`.
    ReleaseAux {
        /// The auxiliary socket the selected path uses, if any.
        keep: Option<Via>,
    },
}

/// A probe packet to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address.
    pub dst: SocketAddr,
    /// The socket to send it from.
    pub via: Via,
    /// Packet bytes.
    pub payload: Vec<u8>,
    /// A probe toward an address that has not answered (the driver charges these to a
    /// budget shared by all connections); false for answers and for validated paths.
    pub unvalidated: bool,
}

/// What this side does in a birthday attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Our mapping is endpoint-dependent: probe `target` from every auxiliary socket.
    Open { target: SocketAddr, next_via: Via },
    /// Our mapping is endpoint-independent, the peer's is not: probe random ports of `ip`.
    Spray { ip: IpAddr },
}

#[derive(Debug, Clone, Copy)]
struct Birthday {
    role: Role,
    next: Instant,
    until: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CandState {
    /// Probing: `tries` probes sent, the next one due at `next`.
    Probing { tries: u32, next: Instant },
    /// Answered. `rtt` is the smoothed RTT over `samples` answered probes; `last_rx` is the
    /// last packet of any kind from this address.
    Valid {
        rtt: Duration,
        samples: u32,
        last_rx: Instant,
        last_tx: Instant,
    },
    /// Gave up until `retry_at`.
    Failed { retry_at: Instant },
}

#[derive(Debug, Clone)]
struct Candidate {
    addr: SocketAddr,
    /// The socket that reaches it (an auxiliary one once a birthday probe got through).
    via: Via,
    state: CandState,
}

/// Path state of one peer-to-peer connection.
#[derive(Debug)]
pub struct PathManager {
    local: PeerId,
    key: [u8; 32],
    dialer: bool,
    counter: u64,
    candidates: Vec<Candidate>,
    pending: VecDeque<([u8; 12], SocketAddr, Via, Instant)>,
    selected: Path,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PathEvent>,
    local_mapping: Mapping,
    remote_mapping: Mapping,
    /// The peer's address as the relay vouched for it: the only birthday target.
    remote_vouched: Option<SocketAddr>,
    relay_rtt: Duration,
    round: u32,
    round_at: Option<Instant>,
    last_round: Option<Instant>,
    round_deferred: bool,
    birthday: Option<Birthday>,
    /// The per-connection budget of probes toward unvalidated addresses (filled at first use).
    budget: Option<p2pcall_proto::limits::TokenBucket>,
    /// Probes skipped for want of budget.
    over_budget: u64,
    /// Transaction ids of probes answered, newest last.
    seen: VecDeque<[u8; 12]>,
}

impl PathManager {
    /// Starts on the relay path. `key` is the probe secret both peers derive from their QUIC
    /// session (TLS exporter), `local` our own identity; `dialer` says which side starts the
    /// punching rounds.
    pub fn new(local: PeerId, key: [u8; 32], dialer: bool) -> Self {
        Self {
            local,
            key,
            dialer,
            counter: 0,
            candidates: Vec::new(),
            pending: VecDeque::new(),
            selected: Path::Relay,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            local_mapping: Mapping::Unknown,
            remote_mapping: Mapping::Unknown,
            remote_vouched: None,
            relay_rtt: Duration::from_millis(100),
            round: 0,
            round_at: None,
            last_round: None,
            round_deferred: false,
            birthday: None,
            budget: None,
            over_budget: 0,
            seen: VecDeque::new(),
        }
    }

    /// The path packets should take now.
    pub fn selected(&self) -> Path {
        self.selected
    }

    /// The socket the selected path's packets leave on.
    pub fn selected_via(&self) -> Via {
        match self.selected {
            Path::Relay => MAIN_SOCKET,
            Path::Direct(a) => self
                .candidates
                .iter()
                .find(|c| c.addr == a)
                .map_or(MAIN_SOCKET, |c| c.via),
        }
    }

    /// Our own NAT mapping behaviour (from reflection through the relay).
    pub fn set_local_mapping(&mut self, m: Mapping) {
        self.local_mapping = m;
    }

    /// The peer's NAT mapping behaviour, from its `Hello`. (The address it says the relay
    /// observed is a claim: nothing is aimed at it; see [`Self::set_remote_vouched`].)
    pub fn set_remote_nat(&mut self, m: Mapping) {
        self.remote_mapping = m;
    }

    /// The peer's address as the relay saw it and vouched for it (the peer asked the relay to
    /// tell us): what the birthday technique aims at.
    pub fn set_remote_vouched(&mut self, addr: SocketAddr) {
        self.remote_vouched = Some(addr);
    }

    /// Probes toward unvalidated addresses skipped because the budget was spent.
    pub fn probes_over_budget(&self) -> u64 {
        self.over_budget
    }

    /// The connection's RTT through the relay (times the punching rounds).
    pub fn set_relay_rtt(&mut self, rtt: Duration) {
        self.relay_rtt = rtt;
    }

    /// (Dialer) starts a coordinated punching round: emits [`PathEvent::SendPunch`] now and
    /// starts probing half a relay RTT later, when the other side receives it.
    pub fn request_round(&mut self, now: Instant) {
        if !self.dialer {
            return;
        }
        if self.last_round.is_some_and(|t| now < t + MIN_ROUND_GAP) {
            self.round_deferred = true;
            return;
        }
        self.round_deferred = false;
        self.round += 1;
        self.last_round = Some(now);
        self.events
            .push_back(PathEvent::SendPunch { round: self.round });
        self.round_at = Some(now + self.relay_rtt / 2);
    }

    /// (Other side) the peer's `Punch` arrived: start the round now.
    pub fn start_round(&mut self, now: Instant) {
        if self.last_round.is_some_and(|t| now < t + MIN_ROUND_GAP / 2) {
            return;
        }
        self.last_round = Some(now);
        self.round_at = Some(now);
    }

    /// Whether a birthday attempt is running.
    pub fn birthday_active(&self) -> bool {
        self.birthday.is_some()
    }

    fn begin_round(&mut self, now: Instant) {
        self.round_at = None;
        for c in &mut self.candidates {
            if !matches!(c.state, CandState::Valid { .. }) {
                c.state = CandState::Probing {
                    tries: 0,
                    next: now,
                };
            }
        }
        if self.birthday.is_some() || matches!(self.selected, Path::Direct(_)) {
            return;
        }
        let role = match (self.local_mapping, self.remote_mapping, self.remote_vouched) {
            (Mapping::EndpointDependent, Mapping::EndpointIndependent, Some(target)) => {
                Role::Open {
                    target,
                    next_via: 1,
                }
            }
            (Mapping::EndpointIndependent, Mapping::EndpointDependent, Some(o)) => {
                Role::Spray { ip: o.ip() }
            }
            _ => return,
        };
        self.birthday = Some(Birthday {
            role,
            next: now,
            until: now + BIRTHDAY_DURATION,
        });
    }

    fn end_birthday(&mut self) {
        if self.birthday.take().is_some() {
            let via = self.selected_via();
            self.events.push_back(PathEvent::ReleaseAux {
                keep: (via != MAIN_SOCKET).then_some(via),
            });
        }
    }

    fn run_birthday(&mut self, now: Instant) {
        let Some(mut b) = self.birthday else { return };
        if now >= b.until || matches!(self.selected, Path::Direct(_)) {
            self.end_birthday();
            return;
        }
        let every = Duration::from_secs(1) / BIRTHDAY_RATE;
        // A late wake-up does not make up for lost time: the rate limit holds.
        b.next = b.next.max(now.checked_sub(every).unwrap_or(now));
        while b.next <= now {
            b.next += every;
            match &mut b.role {
                Role::Open { target, next_via } => {
                    let (dst, via) = (*target, *next_via);
                    *next_via = if *next_via >= BIRTHDAY_SOCKETS {
                        1
                    } else {
                        *next_via + 1
                    };
                    self.send_probe(now, dst, via, Charge::Birthday);
                }
                Role::Spray { ip } => {
                    let h = blake3::keyed_hash(&self.key, &(self.counter + 1).to_le_bytes());
                    let r = u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]]);
                    let port = SPRAY_PORT_MIN + r % (u16::MAX - SPRAY_PORT_MIN + 1);
                    let dst = SocketAddr::new(*ip, port);
                    self.send_probe(now, dst, MAIN_SOCKET, Charge::Birthday);
                }
            }
        }
        self.birthday = Some(b);
    }

    /// Probes sent so far.
    pub fn probes_sent(&self) -> u64 {
        self.counter
    }

    /// The addresses validated so far (answered probes), selected or not.
    pub fn validated(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.candidates
            .iter()
            .filter(|c| matches!(c.state, CandState::Valid { .. }))
            .map(|c| c.addr)
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
            via: MAIN_SOCKET,
            state: CandState::Probing {
                tries: 0,
                next: now,
            },
        });
    }

    /// Feeds a probe packet received from `from` on socket `via`. Packets that fail
    /// authentication, or are not probes, are ignored (returns false) so that nobody else can
    /// steer our path.
    pub fn handle_control(
        &mut self,
        now: Instant,
        from: SocketAddr,
        via: Via,
        pkt: &Control,
    ) -> bool {
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
                // Every probe has a fresh id: one seen before is a replay (perhaps from
                // another address, to make us answer there or adopt it as a path).
                if self.seen.contains(txid) {
                    return false;
                }
                if self.seen.len() >= SEEN_PINGS {
                    self.seen.pop_front();
                }
                self.seen.push_back(*txid);
                let pong = Control::ProbePong {
                    txid: *txid,
                    from: self.local,
                    observed: from,
                    mac: [0; 16],
                }
                .seal(&self.key);
                self.push_transmit(from, via, &pong, false);
                // A probe that reaches us from an address we did not know is a
                // peer-reflexive candidate (the other side's NAT mapping): probe it back, on
                // the socket it reached (an auxiliary one when a birthday probe got through).
                self.add_candidate(now, from);
                if let Some(c) = self.candidates.iter_mut().find(|c| c.addr == from)
                    && !matches!(c.state, CandState::Valid { .. })
                {
                    c.via = via;
                    if !matches!(c.state, CandState::Probing { tries: 0, .. }) {
                        c.state = CandState::Probing {
                            tries: 0,
                            next: now,
                        };
                    }
                }
                self.note_rx(now, from);
                true
            }
            Control::ProbePong {
                txid, from: sender, ..
            } => {
                if *sender == self.local {
                    return false;
                }
                let Some(pos) = self.pending.iter().position(|(t, ..)| t == txid) else {
                    return false;
                };
                let Some((_, addr, sent_via, sent)) = self.pending.remove(pos) else {
                    return false;
                };
                if addr != from || sent_via != via {
                    return false;
                }
                let rtt = now.saturating_duration_since(sent);
                // A birthday probe that found an open mapping becomes a candidate here.
                self.add_candidate(now, from);
                if let Some(c) = self.candidates.iter_mut().find(|c| c.addr == from) {
                    c.via = via;
                    let (rtt, samples) = match c.state {
                        CandState::Valid {
                            rtt: srtt, samples, ..
                        } => (smooth(srtt, rtt), samples.saturating_add(1)),
                        _ => (rtt, 1),
                    };
                    c.state = CandState::Valid {
                        rtt,
                        samples,
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

    /// Advances timers: punching rounds, probes, liveness, fallback.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.round_at.is_some_and(|t| t <= now) {
            self.begin_round(now);
        }
        if self.round_deferred && self.last_round.is_none_or(|t| now >= t + MIN_ROUND_GAP) {
            self.request_round(now);
        }
        if self.dialer
            && self.selected == Path::Relay
            && self.round_at.is_none()
            && self.birthday.is_none()
            && self.last_round.is_some_and(|t| now >= t + REPUNCH_INTERVAL)
        {
            self.request_round(now);
        }
        self.run_birthday(now);
        let mut to_send: Vec<(SocketAddr, Via, Charge)> = Vec::new();
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
                        to_send.push((c.addr, c.via, Charge::Unvalidated));
                    }
                }
                CandState::Failed { retry_at } if *retry_at <= now => {
                    c.state = CandState::Probing {
                        tries: 1,
                        next: now + PROBE_RETRY,
                    };
                    to_send.push((c.addr, c.via, Charge::Unvalidated));
                }
                CandState::Valid {
                    last_rx,
                    last_tx,
                    samples,
                    ..
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
                        // It answered before: re-validating it is not a probe of a stranger.
                        to_send.push((c.addr, c.via, Charge::Validated));
                        continue;
                    }
                    if now >= probe_due(is_selected, *samples, *last_rx, *last_tx) {
                        *last_tx = now;
                        to_send.push((c.addr, c.via, Charge::Validated));
                    }
                }
                _ => {}
            }
        }
        for (addr, via, charge) in to_send {
            self.send_probe(now, addr, via, charge);
        }
        if died {
            self.choose();
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let repunch = self
            .last_round
            .filter(|_| self.dialer && self.selected == Path::Relay)
            .map(|t| t + REPUNCH_INTERVAL);
        let birthday = self.birthday.map(|b| b.next.min(b.until));
        let deferred = self
            .last_round
            .filter(|_| self.round_deferred)
            .map(|t| t + MIN_ROUND_GAP);
        let timers = self.candidates.iter().map(|c| match c.state {
            CandState::Probing { next, .. } => next,
            CandState::Failed { retry_at } => retry_at,
            CandState::Valid {
                last_rx,
                last_tx,
                samples,
                ..
            } => {
                let selected = self.selected == Path::Direct(c.addr);
                let probe = probe_due(selected, samples, last_rx, last_tx);
                if selected {
                    (last_rx + DIRECT_DEAD_AFTER).min(probe)
                } else {
                    (last_rx + KEEPALIVE_INTERVAL * 2).min(probe)
                }
            }
        });
        timers
            .chain(self.round_at)
            .chain(repunch)
            .chain(birthday)
            .chain(deferred)
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

    fn send_probe(&mut self, now: Instant, addr: SocketAddr, via: Via, charge: Charge) {
        if charge == Charge::Unvalidated {
            let budget = self.budget.get_or_insert_with(|| {
                p2pcall_proto::limits::TokenBucket::new(
                    now,
                    UNVALIDATED_PROBE_RATE,
                    UNVALIDATED_PROBE_BURST,
                )
            });
            if !budget.take(now, 1.0) {
                self.over_budget += 1;
                return;
            }
        }
        self.counter += 1;
        let mut txid = [0u8; 12];
        let h = blake3::keyed_hash(&self.key, &self.counter.to_be_bytes());
        txid.copy_from_slice(&h.as_bytes()[..12]);
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back((txid, addr, via, now));
        let ping = Control::ProbePing {
            txid,
            from: self.local,
            mac: [0; 16],
        }
        .seal(&self.key);
        self.push_transmit(addr, via, &ping, charge != Charge::Validated);
    }

    fn push_transmit(&mut self, dst: SocketAddr, via: Via, pkt: &Control, unvalidated: bool) {
        let mut payload = Vec::with_capacity(pkt.encoded_len());
        pkt.encode(&mut payload);
        self.transmits.push_back(Transmit {
            dst,
            via,
            payload,
            unvalidated,
        });
    }

    /// Picks the best validated path, with hysteresis: the first answered path at once, and
    /// another one only when it is clearly better (see [`clearly_better`]).
    fn choose(&mut self) {
        let valid = |c: &Candidate| match c.state {
            CandState::Valid { rtt, samples, .. } => Some((c.addr, rtt, samples)),
            _ => None,
        };
        let best = self
            .candidates
            .iter()
            .filter_map(valid)
            .min_by_key(|(_, rtt, _)| *rtt);
        let current = match self.selected {
            Path::Direct(a) => self
                .candidates
                .iter()
                .filter(|c| c.addr == a)
                .find_map(valid),
            Path::Relay => None,
        };
        let next = match (best, current) {
            (None, _) => Path::Relay,
            (Some((addr, ..)), None) => Path::Direct(addr),
            (Some((addr, rtt, n)), Some((_, cur, cur_n))) => {
                if clearly_better((rtt, n), (cur, cur_n)) {
                    Path::Direct(addr)
                } else {
                    self.selected
                }
            }
        };
        if next != self.selected {
            self.selected = next;
            let rtt = self.direct_rtt();
            let via = self.selected_via();
            self.events.push_back(PathEvent::Selected {
                path: next,
                via,
                rtt,
            });
            if matches!(next, Path::Direct(_)) {
                self.end_birthday();
            }
        }
    }
}

/// Which budget a probe is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charge {
    /// An address that answered before (liveness, keepalive, RTT samples): free.
    Validated,
    /// An address that has not answered: the connection's budget.
    Unvalidated,
    /// A birthday probe: its own rate and duration, aimed at the relay-vouched address.
    Birthday,
}

/// RFC 6298's smoothed RTT: 7/8 of the old estimate plus 1/8 of the new sample.
fn smooth(srtt: Duration, sample: Duration) -> Duration {
    (srtt * 7 + sample) / 8
}

/// When a validated path is probed next: when nothing arrived on it for a while (the
/// selected one after [`LIVENESS_PROBE_AFTER`], for liveness; another after
/// [`KEEPALIVE_INTERVAL`], to keep its NAT mapping open), and every [`EVAL_PROBE_INTERVAL`]
/// while its RTT has fewer than [`SWITCH_MIN_SAMPLES`] samples (so paths can be compared).
fn probe_due(selected: bool, samples: u32, last_rx: Instant, last_tx: Instant) -> Instant {
    let every = if selected {
        LIVENESS_PROBE_AFTER
    } else {
        KEEPALIVE_INTERVAL
    };
    let idle = (last_rx + every).max(last_tx + every.min(LIVENESS_PROBE_AFTER));
    if samples < SWITCH_MIN_SAMPLES {
        idle.min(last_tx + EVAL_PROBE_INTERVAL)
    } else {
        idle
    }
}

/// Whether a path of smoothed RTT `cand` (over `cand_n` samples) should replace the selected
/// one (`cur`, `cur_n`): both measured at least [`SWITCH_MIN_SAMPLES`] times, and the
/// candidate below [`SWITCH_RTT_RATIO`] of the current RTT by at least [`SWITCH_MIN_GAIN`].
fn clearly_better((cand, cand_n): (Duration, u32), (cur, cur_n): (Duration, u32)) -> bool {
    cand_n >= SWITCH_MIN_SAMPLES
        && cur_n >= SWITCH_MIN_SAMPLES
        && cand.as_secs_f64() < cur.as_secs_f64() * SWITCH_RTT_RATIO
        && cur.saturating_sub(cand) >= SWITCH_MIN_GAIN
}

#[cfg(test)]
mod tests;
