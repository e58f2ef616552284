//! Two path managers over a virtual network on a virtual clock.

use super::*;
use std::collections::BinaryHeap;

#[derive(Debug, PartialEq, Eq)]
struct InFlight {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    payload: Vec<u8>,
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.at.cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

struct Net {
    now: Instant,
    one_way: Duration,
    up: bool,
    a: PathManager,
    b: PathManager,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    queue: BinaryHeap<InFlight>,
    seq: u64,
    sent: usize,
}

fn id(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

impl Net {
    fn new(one_way: Duration) -> Self {
        let key = [42; 32];
        let now = Instant::now();
        let mut n = Self {
            now,
            one_way,
            up: true,
            a: PathManager::new(id(1), key, true),
            b: PathManager::new(id(2), key, false),
            a_addr: "192.0.2.1:1000".parse().unwrap(),
            b_addr: "192.0.2.2:2000".parse().unwrap(),
            queue: BinaryHeap::new(),
            seq: 0,
            sent: 0,
        };
        let (a_addr, b_addr) = (n.a_addr, n.b_addr);
        n.a.add_remote_candidates(now, &[b_addr]);
        n.b.add_remote_candidates(now, &[a_addr]);
        n
    }

    fn flush(&mut self) {
        for (is_a, from) in [(true, self.a_addr), (false, self.b_addr)] {
            let m = if is_a { &mut self.a } else { &mut self.b };
            while let Some(t) = m.poll_transmit() {
                self.sent += 1;
                self.seq += 1;
                if self.up {
                    self.queue.push(InFlight {
                        at: self.now + self.one_way,
                        seq: self.seq,
                        from,
                        to: t.dst,
                        payload: t.payload,
                    });
                }
            }
        }
    }

    /// Runs until `until`, returning every path event with its time.
    fn run(&mut self, until: Instant) -> Vec<(Duration, bool, PathEvent)> {
        let start = self.now;
        let mut events = Vec::new();
        loop {
            self.flush();
            let next_pkt = self.queue.peek().map(|p| p.at);
            let next = [next_pkt, self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|t| *t <= until) else {
                self.now = until;
                break;
            };
            self.now = self.now.max(next);
            let now = self.now;
            while self.queue.peek().is_some_and(|p| p.at <= now) {
                let p = self.queue.pop().unwrap();
                let pkt = Control::decode(&p.payload).unwrap();
                let m = if p.to == self.a_addr {
                    &mut self.a
                } else {
                    &mut self.b
                };
                m.handle_control(now, p.from, MAIN_SOCKET, &pkt);
            }
            self.a.handle_timeout(now);
            self.b.handle_timeout(now);
            for (is_a, m) in [(true, &mut self.a), (false, &mut self.b)] {
                while let Some(e) = m.poll_event() {
                    events.push((now - start, is_a, e));
                }
            }
        }
        events
    }
}

#[test]
fn both_sides_go_direct_within_one_round_trip() {
    let mut net = Net::new(Duration::from_millis(25));
    let t0 = net.now;
    let events = net.run(t0 + Duration::from_secs(1));
    assert_eq!(net.a.selected(), Path::Direct(net.b_addr));
    assert_eq!(net.b.selected(), Path::Direct(net.a_addr));
    let (at, _, PathEvent::Selected { rtt, .. }) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(*at, Duration::from_millis(50), "first answer after one RTT");
    assert_eq!(*rtt, Some(Duration::from_millis(50)));
}

#[test]
fn dead_direct_path_falls_back_to_relay_within_two_seconds_and_recovers() {
    let mut net = Net::new(Duration::from_millis(10));
    let t0 = net.now;
    net.run(t0 + Duration::from_secs(5));
    assert!(matches!(net.a.selected(), Path::Direct(_)));
    // Liveness probes keep an idle direct path selected.
    net.run(t0 + Duration::from_secs(20));
    assert!(matches!(net.a.selected(), Path::Direct(_)));

    net.up = false;
    let cut = net.now;
    let events = net.run(cut + Duration::from_secs(3));
    let fallback: Vec<_> = events
        .iter()
        .filter(|(_, _, e)| {
            matches!(
                e,
                PathEvent::Selected {
                    path: Path::Relay,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(fallback.len(), 2, "both sides fall back: {events:?}");
    for (at, _, _) in fallback {
        assert!(*at <= Duration::from_secs(2), "fallback took {at:?}");
    }
    assert_eq!(net.a.selected(), Path::Relay);

    // The path comes back: the periodic re-probe finds it again.
    net.up = true;
    let back = net.now;
    net.run(back + REPROBE_INTERVAL + Duration::from_secs(3));
    assert!(matches!(net.a.selected(), Path::Direct(_)));
    assert!(matches!(net.b.selected(), Path::Direct(_)));
}

#[test]
fn probes_are_bounded_while_the_peer_is_unreachable() {
    let mut net = Net::new(Duration::from_millis(10));
    net.up = false;
    let t0 = net.now;
    net.run(t0 + Duration::from_secs(120));
    assert_eq!(net.a.selected(), Path::Relay);
    // Per side: one round of PROBE_TRIES, then one round per REPROBE_INTERVAL.
    let rounds = 1 + 120 / REPROBE_INTERVAL.as_secs() as usize;
    assert!(
        net.sent <= 2 * rounds * PROBE_TRIES as usize,
        "sent {} probes",
        net.sent
    );
}

#[test]
fn unauthenticated_probes_cannot_select_a_path() {
    let now = Instant::now();
    let mut m = PathManager::new(id(1), [1; 32], true);
    let attacker: SocketAddr = "203.0.113.66:4444".parse().unwrap();
    // The attacker does not know the session key.
    let forged = Control::ProbePing {
        txid: [0; 12],
        from: id(2),
        mac: [0; 16],
    }
    .seal(&[9; 32]);
    assert!(!m.handle_control(now, attacker, MAIN_SOCKET, &forged));
    assert!(m.poll_transmit().is_none(), "no answer to forged probes");
    let forged_pong = Control::ProbePong {
        txid: [0; 12],
        from: id(2),
        observed: attacker,
        mac: [0; 16],
    }
    .seal(&[1; 32]);
    // Right key but a transaction we never started: ignored too.
    assert!(!m.handle_control(now, attacker, MAIN_SOCKET, &forged_pong));
    assert_eq!(m.selected(), Path::Relay);
}

#[test]
fn pong_from_another_address_does_not_validate() {
    let now = Instant::now();
    let key = [3; 32];
    let mut m = PathManager::new(id(1), key, true);
    let real: SocketAddr = "192.0.2.5:5".parse().unwrap();
    m.add_remote_candidates(now, &[real]);
    m.handle_timeout(now);
    let t = m.poll_transmit().unwrap();
    let Control::ProbePing { txid, .. } = Control::decode(&t.payload).unwrap() else {
        panic!("expected a ping")
    };
    let pong = Control::ProbePong {
        txid,
        from: id(2),
        observed: real,
        mac: [0; 16],
    }
    .seal(&key);
    let spoofed_src: SocketAddr = "192.0.2.99:5".parse().unwrap();
    assert!(!m.handle_control(now, spoofed_src, MAIN_SOCKET, &pong));
    assert_eq!(m.selected(), Path::Relay);
}

/// One path manager whose peer answers every probe to `rtts[addr]` after that RTT (on the
/// virtual clock), for `secs`. Returns the selections made, with their times.
fn answer_probes(
    m: &mut PathManager,
    key: [u8; 32],
    start: Instant,
    secs: u64,
    rtt_of: impl Fn(SocketAddr, u64) -> Option<Duration>,
) -> Vec<(Duration, Path)> {
    let mut pending: Vec<(Instant, SocketAddr, Control)> = Vec::new();
    let mut now = start;
    let end = start + Duration::from_secs(secs);
    let mut selected = Vec::new();
    let mut n = 0u64;
    while now < end {
        m.handle_timeout(now);
        while let Some(t) = m.poll_transmit() {
            let Ok(Control::ProbePing { txid, .. }) = Control::decode(&t.payload) else {
                continue;
            };
            n += 1;
            if let Some(rtt) = rtt_of(t.dst, n) {
                let pong = Control::ProbePong {
                    txid,
                    from: id(2),
                    observed: t.dst,
                    mac: [0; 16],
                }
                .seal(&key);
                pending.push((now + rtt, t.dst, pong));
            }
        }
        while let Some(e) = m.poll_event() {
            if let PathEvent::Selected { path, .. } = e {
                selected.push((now - start, path));
            }
        }
        let next = pending
            .iter()
            .map(|p| p.0)
            .chain(m.poll_timeout())
            .min()
            .unwrap_or(end)
            .min(end);
        now = next.max(now);
        let (due, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|p| p.0 <= now);
        pending = rest;
        for (_, from, pong) in due {
            m.handle_control(now, from, MAIN_SOCKET, &pong);
        }
    }
    while let Some(e) = m.poll_event() {
        if let PathEvent::Selected { path, .. } = e {
            selected.push((now - start, path));
        }
    }
    selected
}

#[test]
fn hysteresis_keeps_a_path_unless_clearly_better_over_several_samples() {
    let now = Instant::now();
    let key = [4; 32];
    let mut m = PathManager::new(id(1), key, true);
    let slow: SocketAddr = "192.0.2.1:1".parse().unwrap();
    let similar: SocketAddr = "192.0.2.2:1".parse().unwrap();
    let fast: SocketAddr = "192.0.2.3:1".parse().unwrap();
    m.add_remote_candidates(now, &[slow, similar, fast]);
    // The slow path answers first (the others' first answers are lost); 80 ms is not
    // 30 % better than 100 ms; 20 ms is, once measured SWITCH_MIN_SAMPLES times.
    let ms = Duration::from_millis;
    let changes = answer_probes(&mut m, key, now, 20, |a, n| match a {
        _ if a == slow => Some(ms(100)),
        _ if n <= 3 => None,
        _ if a == fast => Some(ms(20)),
        _ => Some(ms(80)),
    });
    assert_eq!(changes[0], (ms(100), Path::Direct(slow)), "{changes:?}");
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[1].1, Path::Direct(fast));
    assert!(
        changes[1].0 >= EVAL_PROBE_INTERVAL * (SWITCH_MIN_SAMPLES - 1),
        "switched on too few samples: {changes:?}"
    );
    assert!(changes[1].0 <= ms(7000), "{changes:?}");
}

#[test]
fn sub_millisecond_differences_never_switch() {
    let now = Instant::now();
    let key = [5; 32];
    let mut m = PathManager::new(id(1), key, true);
    let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let v6: SocketAddr = "[::1]:1".parse().unwrap();
    m.add_remote_candidates(now, &[v4, v6]);
    // Loopback: the first answer takes 400 us, every later one 60-150 us on either path;
    // one path is "twice as fast" on many samples, but only by 0.09 ms.
    let changes = answer_probes(&mut m, key, now, 600, |a, n| {
        let us = if n <= 2 {
            400
        } else if a == v4 {
            60
        } else {
            150
        };
        Some(Duration::from_micros(us))
    });
    assert_eq!(changes.len(), 1, "{changes:?}");
}

#[test]
fn the_dialer_starts_a_round_half_an_rtt_after_asking_the_peer() {
    let now = Instant::now();
    let mut m = PathManager::new(id(1), [3; 32], true);
    m.set_relay_rtt(Duration::from_millis(80));
    let peer: SocketAddr = "192.0.2.9:9000".parse().unwrap();
    m.add_remote_candidates(now, &[peer]);
    m.handle_timeout(now);
    while m.poll_transmit().is_some() {}
    m.request_round(now);
    assert_eq!(m.poll_event(), Some(PathEvent::SendPunch { round: 1 }));
    assert_eq!(m.poll_timeout(), Some(now + Duration::from_millis(40)));
    m.handle_timeout(now + Duration::from_millis(39));
    assert!(
        m.poll_transmit().is_none(),
        "nothing before the agreed start"
    );
    m.handle_timeout(now + Duration::from_millis(40));
    let t = m
        .poll_transmit()
        .expect("the round re-probes the candidate");
    assert_eq!((t.dst, t.via), (peer, MAIN_SOCKET));

    // The other side never asks; it starts when the Punch arrives.
    let mut other = PathManager::new(id(2), [3; 32], false);
    other.request_round(now);
    assert_eq!(other.poll_event(), None);
}

/// Drives one side of a birthday attempt against a peer that never answers.
fn birthday_probes(local: Mapping, remote: Mapping) -> Vec<(Duration, Transmit)> {
    let t0 = Instant::now();
    let mut m = PathManager::new(id(1), [5; 32], false);
    m.set_local_mapping(local);
    let peer: SocketAddr = "203.0.113.7:4000".parse().unwrap();
    m.set_remote_nat(remote);
    m.set_remote_vouched(peer);
    m.add_remote_candidates(t0, &[peer]);
    m.start_round(t0);
    let mut out = Vec::new();
    let mut now = t0;
    while now < t0 + Duration::from_secs(30) {
        m.handle_timeout(now);
        while let Some(t) = m.poll_transmit() {
            out.push((now - t0, t));
        }
        now = m
            .poll_timeout()
            .unwrap_or(now)
            .max(now + Duration::from_millis(1));
    }
    out
}

#[test]
fn birthday_probes_are_rate_limited_and_bounded_in_time() {
    for (local, remote) in [
        (Mapping::EndpointDependent, Mapping::EndpointIndependent),
        (Mapping::EndpointIndependent, Mapping::EndpointDependent),
    ] {
        let probes = birthday_probes(local, remote);
        let max_per_second = (0..30)
            .map(|s| probes.iter().filter(|(at, _)| at.as_secs() == s).count())
            .max()
            .unwrap();
        // BIRTHDAY_RATE plus the ordinary probes of the one announced candidate.
        assert!(
            max_per_second <= BIRTHDAY_RATE as usize + 6,
            "{local:?}: {max_per_second} probes in one second"
        );
        let late = probes
            .iter()
            .filter(|(at, _)| *at > BIRTHDAY_DURATION + Duration::from_millis(1))
            .count();
        assert!(
            late <= 2,
            "{local:?}: {late} probes after the attempt ended"
        );
        let aux = probes.iter().filter(|(_, t)| t.via != MAIN_SOCKET).count();
        if local == Mapping::EndpointDependent {
            // Every auxiliary socket opens a mapping toward the peer's public address.
            let socks: std::collections::HashSet<_> = probes.iter().map(|(_, t)| t.via).collect();
            assert_eq!(socks.len(), BIRTHDAY_SOCKETS as usize + 1);
            assert!(
                probes
                    .iter()
                    .all(|(_, t)| t.dst == "203.0.113.7:4000".parse().unwrap())
            );
            assert!(aux > 1000);
        } else {
            // Random ports of the peer's public IP, from the main socket.
            assert_eq!(aux, 0);
            let ports: std::collections::HashSet<_> =
                probes.iter().map(|(_, t)| t.dst.port()).collect();
            assert!(ports.len() > 1500, "{} distinct ports", ports.len());
            assert!(probes.iter().all(|(_, t)| t.dst.port() >= 1024));
        }
    }
    // Both symmetric, or nothing known: no birthday attempt at all.
    for (l, r) in [
        (Mapping::EndpointDependent, Mapping::EndpointDependent),
        (Mapping::Unknown, Mapping::EndpointDependent),
    ] {
        assert!(birthday_probes(l, r).len() <= 2 * PROBE_TRIES as usize);
    }
}

#[test]
fn rounds_are_rate_limited_but_not_lost() {
    let now = Instant::now();
    let mut m = PathManager::new(id(1), [3; 32], true);
    m.request_round(now);
    assert_eq!(m.poll_event(), Some(PathEvent::SendPunch { round: 1 }));
    // A flood of triggers within the gap becomes one deferred round.
    for i in 1..100 {
        m.request_round(now + Duration::from_millis(i));
    }
    assert_eq!(m.poll_event(), None);
    // The first round starts (RTT/2 later); the deferred one is due a gap after the first.
    m.handle_timeout(now + Duration::from_millis(100));
    assert_eq!(m.poll_event(), None);
    assert_eq!(m.poll_timeout(), Some(now + MIN_ROUND_GAP));
    m.handle_timeout(now + MIN_ROUND_GAP);
    assert_eq!(m.poll_event(), Some(PathEvent::SendPunch { round: 2 }));
    assert_eq!(m.poll_event(), None);

    // The other side ignores Punch frames that come faster than the dialer may send them.
    let mut other = PathManager::new(id(2), [3; 32], false);
    let peer: SocketAddr = "192.0.2.9:9000".parse().unwrap();
    other.add_remote_candidates(now, &[peer]);
    other.start_round(now);
    other.handle_timeout(now);
    let first = std::iter::from_fn(|| other.poll_transmit()).count();
    assert!(first >= 1);
    for i in 1..100 {
        let t = now + Duration::from_millis(i);
        other.start_round(t);
        other.handle_timeout(t);
    }
    let flood = std::iter::from_fn(|| other.poll_transmit()).count();
    assert!(flood <= 1, "{flood} probes from 99 Punch frames");
}

#[test]
fn a_claimed_address_draws_no_birthday_probes_only_a_vouched_one_does() {
    // The peer says it is symmetric and claims an address (a victim's): nothing is sprayed
    // at it. Only the relay's word (a vouch) starts the birthday technique.
    let t0 = Instant::now();
    let victim: SocketAddr = "198.51.100.9:443".parse().unwrap();
    let mut m = PathManager::new(id(1), [5; 32], false);
    m.set_local_mapping(Mapping::EndpointIndependent);
    m.set_remote_nat(Mapping::EndpointDependent);
    m.start_round(t0);
    let mut now = t0;
    let mut sent = 0;
    while now < t0 + Duration::from_secs(10) {
        m.handle_timeout(now);
        sent += std::iter::from_fn(|| m.poll_transmit()).count();
        now += Duration::from_millis(10);
    }
    assert_eq!(sent, 0, "probes with nothing vouched");
    assert!(!m.birthday_active());
    m.set_remote_vouched(victim);
    m.start_round(now);
    m.handle_timeout(now + Duration::from_millis(100));
    assert!(m.birthday_active());
    let t = m.poll_transmit().unwrap();
    assert_eq!(t.dst.ip(), victim.ip());
    assert!(t.unvalidated);
}

#[test]
fn a_peer_flooding_candidates_and_punch_gets_a_bounded_number_of_probes() {
    // 48 candidates of the peer's choice and a Punch every second for a minute: probes
    // toward them stay within the per-connection budget (before: ~240 a second).
    let t0 = Instant::now();
    let mut m = PathManager::new(id(1), [5; 32], false);
    let targets: Vec<SocketAddr> = (0..MAX_CANDIDATES as u16)
        .map(|i| SocketAddr::from(([198, 51, 100, (i % 250) as u8], 1000 + i)))
        .collect();
    m.add_remote_candidates(t0, &targets);
    let mut now = t0;
    let mut sent = 0usize;
    let mut next_punch = t0;
    while now < t0 + Duration::from_secs(60) {
        if now >= next_punch {
            m.add_remote_candidates(now, &targets);
            m.start_round(now);
            next_punch += Duration::from_secs(1);
        }
        m.handle_timeout(now);
        for t in std::iter::from_fn(|| m.poll_transmit()) {
            assert!(t.unvalidated);
            sent += 1;
        }
        now += Duration::from_millis(5);
    }
    let bound = UNVALIDATED_PROBE_BURST + UNVALIDATED_PROBE_RATE * 60.0;
    assert!(sent as f64 <= bound + 1.0, "{sent} probes in a minute");
    assert!(
        sent as f64 >= bound * 0.9,
        "{sent}: the budget is used, not stuck"
    );
    assert!(m.probes_over_budget() > 5_000);
}

#[test]
fn a_replayed_probe_is_not_answered_nor_adopted_from_anywhere() {
    let now = Instant::now();
    let key = [9; 32];
    let mut m = PathManager::new(id(1), key, false);
    let peer: SocketAddr = "192.0.2.2:2000".parse().unwrap();
    let attacker: SocketAddr = "203.0.113.66:6666".parse().unwrap();
    let ping = Control::ProbePing {
        txid: [1; 12],
        from: id(2),
        mac: [0; 16],
    }
    .seal(&key);
    assert!(m.handle_control(now, peer, MAIN_SOCKET, &ping));
    let pong = m.poll_transmit().unwrap();
    assert_eq!(pong.dst, peer);
    assert!(!pong.unvalidated, "an answer is not a probe of a stranger");
    let before: Vec<_> = std::iter::from_fn(|| m.poll_transmit()).collect();
    // The same probe, captured and sent again from elsewhere (or from the same place).
    for from in [attacker, peer] {
        assert!(!m.handle_control(now, from, MAIN_SOCKET, &ping));
    }
    m.handle_timeout(now);
    let after: Vec<_> = std::iter::from_fn(|| m.poll_transmit()).collect();
    assert!(
        before.iter().chain(&after).all(|t| t.dst != attacker),
        "nothing goes to the replayer: {after:?}"
    );
}
