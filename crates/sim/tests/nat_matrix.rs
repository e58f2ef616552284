//! The path manager across every pair of NAT types, on the virtual clock.
//!
//! Each peer sits behind its own NAT (or none); both learn the other's relay-observed
//! address through the relay and start probing at the same moment (the relay coordinates
//! the start). The table printed by `--nocapture` gives outcome, time to direct and probes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use p2pcall_nat::{Path, PathManager};
use p2pcall_proto::PeerId;
use p2pcall_proto::packet::Control;
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
        Some(NatConfig::new(m, f))
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

/// Runs one pair with `one_way` delay on the direct path.
fn run(ka: Kind, kb: Kind, one_way: Duration) -> Outcome {
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
    let relay_leg = Link::with_delay(Duration::from_millis(20));
    net.connect(SocketAddr::new(pub_a, 0), relay, relay_leg);
    net.connect(SocketAddr::new(pub_b, 0), relay, relay_leg);
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
    let key = [7u8; 32];
    let mut pa = PathManager::new(PeerId::from_bytes([1; 32]), key);
    let mut pb = PathManager::new(PeerId::from_bytes([2; 32]), key);
    let start = net.now();
    pa.add_remote_candidates(start, &[observed[1].unwrap()]);
    pb.add_remote_candidates(start, &[observed[0].unwrap()]);
    let end = start + Duration::from_secs(10);
    let mut direct_at = [None, None];
    let mut probes = 0u64;
    let mut now = start;
    loop {
        for (i, (pm, me)) in [(&mut pa, a), (&mut pb, b)].into_iter().enumerate() {
            pm.handle_timeout(now);
            while let Some(t) = pm.poll_transmit() {
                probes += 1;
                net.send(me, t.dst, t.payload);
            }
            if direct_at[i].is_none() && matches!(pm.selected(), Path::Direct(_)) {
                direct_at[i] = Some(now - start);
            }
        }
        if direct_at.iter().all(Option::is_some) {
            break;
        }
        let next = [net.next_event(), pa.poll_timeout(), pb.poll_timeout()]
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
            let pm = if d.to == a { &mut pa } else { &mut pb };
            pm.handle_control(now, d.from, &pkt);
        }
    }
    Outcome {
        direct_after: direct_at[0]
            .max(direct_at[1])
            .filter(|_| direct_at.iter().all(Option::is_some)),
        probes,
    }
}

/// Whether a direct path is expected without port prediction: at least one side must have
/// endpoint-independent mapping, and a symmetric side can only be reached by a peer whose
/// filter does not check the port (the symmetric side's probes come from a fresh port).
fn expect_direct(a: Kind, b: Kind) -> bool {
    let reachable = |cone: Kind| !matches!(cone, Kind::PortRestrictedCone | Kind::Symmetric);
    match (a, b) {
        (Kind::Symmetric, Kind::Symmetric) => false,
        (Kind::Symmetric, other) | (other, Kind::Symmetric) => reachable(other),
        _ => true,
    }
}

#[test]
fn every_nat_pair_reaches_the_expected_path() {
    for one_way in [Duration::ZERO, Duration::from_millis(25)] {
        println!("direct-path one-way delay {one_way:?}:");
        for (i, &ka) in ALL.iter().enumerate() {
            for &kb in &ALL[i..] {
                let o = run(ka, kb, one_way);
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
                if let Some(d) = o.direct_after {
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
