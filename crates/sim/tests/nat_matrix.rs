//! The path manager across every pair of NAT types, on the virtual clock.
//!
//! Each peer sits behind its own NAT (or none); both learn the other's relay-observed
//! address through the relay and start probing at the same moment (the relay coordinates
//! the start). The table printed by `--nocapture` gives outcome, time to direct and probes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use p2pcall_nat::{Path, PathEvent, PathManager};
use p2pcall_proto::PeerId;
use p2pcall_proto::packet::Control;
use p2pcall_proto::peer::Mapping;
use p2pcall_sim::{Filtering, Link, MappingKind, NatConfig, VirtualNet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Open,
    FullCone,
    RestrictedCone,
    PortRestrictedCone,
    Symmetric,
}

impl Kind {
    fn config(self) -> Option<NatConfig> {
        let (m, f) = match self {
            Kind::Open => return None,
            Kind::FullCone => (
                MappingKind::EndpointIndependent,
                Filtering::EndpointIndependent,
            ),
            Kind::RestrictedCone => (
                MappingKind::EndpointIndependent,
                Filtering::AddressDependent,
            ),
            Kind::PortRestrictedCone => (
                MappingKind::EndpointIndependent,
                Filtering::AddressAndPortDependent,
            ),
            Kind::Symmetric => (
                MappingKind::EndpointDependent,
                Filtering::AddressAndPortDependent,
            ),
        };
        let mut c = NatConfig::new(m, f);
        // Like Linux: cones keep the port when free, symmetric NATs pick random ports.
        c.port_preserving = m == MappingKind::EndpointIndependent;
        c.random_ports = m == MappingKind::EndpointDependent;
        Some(c)
    }
}

const ALL: [Kind; 5] = [
    Kind::Open,
    Kind::FullCone,
    Kind::RestrictedCone,
    Kind::PortRestrictedCone,
    Kind::Symmetric,
];

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Outcome {
    direct_after: Option<Duration>,
    probes: u64,
}

fn mapping(k: Kind) -> Mapping {
    match k {
        Kind::Open => Mapping::None,
        Kind::Symmetric => Mapping::EndpointDependent,
        _ => Mapping::EndpointIndependent,
    }
}

/// Runs one pair with `one_way` delay on the direct path; `seed` varies the probe secret
/// (and so the birthday guesses).
fn run(ka: Kind, kb: Kind, one_way: Duration, seed: u8) -> Outcome {
    let t0 = Instant::now();
    let mut net = VirtualNet::new(t0, 9);
    let relay = sa("198.51.100.1:7700");
    let (pub_a, pub_b): (IpAddr, IpAddr) = (
        "203.0.113.1".parse().unwrap(),
        "203.0.113.2".parse().unwrap(),
    );
    let a = if ka == Kind::Open {
        SocketAddr::new(pub_a, 5000)
    } else {
        sa("10.0.1.2:5000")
    };
    let b = if kb == Kind::Open {
        SocketAddr::new(pub_b, 6000)
    } else {
        sa("10.0.2.2:6000")
    };
    if let Some(c) = ka.config() {
        net.add_nat(pub_a, c, &[a.ip()]);
    }
    if let Some(c) = kb.config() {
        net.add_nat(pub_b, c, &[b.ip()]);
    }
    let relay_leg = Duration::from_millis(20);
    net.connect(
        SocketAddr::new(pub_a, 0),
        relay,
        Link::with_delay(relay_leg),
    );
    net.connect(
        SocketAddr::new(pub_b, 0),
        relay,
        Link::with_delay(relay_leg),
    );
    net.connect(
        SocketAddr::new(pub_a, 0),
        SocketAddr::new(pub_b, 0),
        Link::with_delay(one_way),
    );

    // Registration: the relay observes each peer's public mapping toward it.
    net.send(a, relay, vec![0]);
    net.send(b, relay, vec![1]);
    let mut observed = [None, None];
    while observed.iter().any(Option::is_none) {
        let t = net.next_event().unwrap();
        net.advance_to(t);
        while let Some(d) = net.pop_due() {
            observed[usize::from(d.payload[0])] = Some(d.from);
        }
    }
    let key = [seed; 32];
    // A dials B; each learns the other's candidates and NAT type from the Hello that travels
    // through the relay, and the other's observed address from the relay's vouch.
    let mut pa = PathManager::new(PeerId::from_bytes([1; 32]), key, true);
    let mut pb = PathManager::new(PeerId::from_bytes([2; 32]), key, false);
    let start = net.now();
    pa.set_local_mapping(mapping(ka));
    pb.set_local_mapping(mapping(kb));
    pa.set_remote_nat(mapping(kb));
    pb.set_remote_nat(mapping(ka));
    if let [Some(a), Some(b)] = observed {
        pa.set_remote_vouched(b);
        pb.set_remote_vouched(a);
    }
    pa.set_relay_rtt(relay_leg * 4);
    pa.add_remote_candidates(start, &[observed[1].unwrap()]);
    pb.add_remote_candidates(start, &[observed[0].unwrap()]);
    pa.request_round(start);
    // The Punch message reaches B after the relayed one-way delay.
    let mut punch_at: Option<Instant> = None;
    let end = start + Duration::from_secs(25);
    let mut direct_at = [None, None];
    let mut probes = 0u64;
    let mut now = start;
    loop {
        if punch_at.is_some_and(|t| t <= now) {
            pb.start_round(now);
            punch_at = None;
        }
        for (i, (pm, me)) in [(&mut pa, a), (&mut pb, b)].into_iter().enumerate() {
            pm.handle_timeout(now);
            while let Some(t) = pm.poll_transmit() {
                probes += 1;
                // Auxiliary socket k is port + k on the same host.
                let from = SocketAddr::new(me.ip(), me.port() + t.via);
                net.send(from, t.dst, t.payload);
            }
            while let Some(e) = pm.poll_event() {
                if let PathEvent::SendPunch { .. } = e {
                    punch_at = Some(now + relay_leg * 2);
                }
            }
            if direct_at[i].is_none() && matches!(pm.selected(), Path::Direct(_)) {
                direct_at[i] = Some(now - start);
            }
        }
        if direct_at.iter().all(Option::is_some) {
            break;
        }
        let next = [
            net.next_event(),
            pa.poll_timeout(),
            pb.poll_timeout(),
            punch_at,
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next.filter(|t| *t <= end) else {
            break;
        };
        now = next.max(now);
        net.advance_to(now);
        while let Some(d) = net.pop_due() {
            let pkt = Control::decode(&d.payload).unwrap();
            let (pm, base) = if d.to.ip() == a.ip() {
                (&mut pa, a.port())
            } else {
                (&mut pb, b.port())
            };
            pm.handle_control(now, d.from, d.to.port() - base, &pkt);
        }
    }
    Outcome {
        direct_after: direct_at[0]
            .max(direct_at[1])
            .filter(|_| direct_at.iter().all(Option::is_some)),
        probes,
    }
}

/// Whether a direct path is expected: everything but two symmetric NATs (a symmetric side
/// behind a port-checking cone needs the birthday technique, which may take seconds).
fn expect_direct(a: Kind, b: Kind) -> bool {
    !(a == Kind::Symmetric && b == Kind::Symmetric)
}

fn needs_birthday(a: Kind, b: Kind) -> bool {
    matches!(
        (a, b),
        (Kind::PortRestrictedCone, Kind::Symmetric) | (Kind::Symmetric, Kind::PortRestrictedCone)
    )
}

#[test]
fn every_nat_pair_reaches_the_expected_path() {
    for one_way in [Duration::ZERO, Duration::from_millis(25)] {
        println!("direct-path one-way delay {one_way:?}:");
        for (i, &ka) in ALL.iter().enumerate() {
            for &kb in &ALL[i..] {
                let o = run(ka, kb, one_way, 7);
                println!(
                    "  {ka:?} x {kb:?}: {} ({} probes)",
                    o.direct_after
                        .map_or("relay".to_string(), |d| format!("direct after {d:?}")),
                    o.probes
                );
                assert_eq!(
                    o.direct_after.is_some(),
                    expect_direct(ka, kb),
                    "{ka:?} x {kb:?}"
                );
                if let Some(d) = o.direct_after
                    && !needs_birthday(ka, kb)
                {
                    // Both sides open their filters with their first probes; a probe that
                    // hit a closed filter is retried after PROBE_RETRY.
                    let rtt = one_way * 2;
                    assert!(
                        d <= 2 * rtt + p2pcall_nat::PROBE_RETRY + Duration::from_millis(1),
                        "{ka:?} x {kb:?}: {d:?}"
                    );
                }
            }
        }
    }
}

/// The birthday technique across 20 different probe secrets: how often and how fast a
/// port-restricted cone and a symmetric NAT with random ports meet.
#[test]
fn birthday_technique_connects_cone_and_symmetric() {
    let mut times = Vec::new();
    for seed in 0..20u8 {
        let o = run(
            Kind::PortRestrictedCone,
            Kind::Symmetric,
            Duration::from_millis(25),
            seed,
        );
        if let Some(d) = o.direct_after {
            times.push(d);
        }
        println!(
            "  seed {seed}: {} ({} probes)",
            o.direct_after
                .map_or("relay".to_string(), |d| format!("direct after {d:?}")),
            o.probes
        );
    }
    times.sort();
    println!(
        "birthday: {}/20 direct, median {:?}, max {:?}",
        times.len(),
        times.get(times.len() / 2),
        times.last()
    );
    assert!(times.len() >= 19, "only {}/20 went direct", times.len());
}
