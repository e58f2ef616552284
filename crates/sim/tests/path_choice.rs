//! Virtual-clock test of path *choice*: several direct paths of equal RTT (IPv4 and IPv6 to
//! one host, or two interfaces on one LAN) must not make the selected path alternate, and a
//! path that dies must still be left within the fallback time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pcall_nat::{DIRECT_DEAD_AFTER, MAIN_SOCKET, Path, PathEvent, PathManager};
use p2pcall_proto::PeerId;
use p2pcall_proto::packet::Control;
use p2pcall_sim::{Link, VirtualNet};

const A: &str = "192.0.2.1:1000";
/// Four addresses of B's one socket: two IPv4 interfaces and their IPv6 twins.
const B: [&str; 4] = [
    "192.0.2.2:2000",
    "198.51.100.2:2000",
    "[2001:db8::2]:2000",
    "[fd00::2]:2000",
];

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Run {
    net: VirtualNet,
    pa: PathManager,
    pb: PathManager,
    /// (time since start, which side, new path)
    changes: Vec<(Duration, char, Path)>,
    start: Instant,
}

impl Run {
    fn new(seed: u64, link: Link) -> Self {
        let start = Instant::now();
        let mut net = VirtualNet::new(start, seed);
        for b in B {
            net.connect(a(A), a(b), link);
        }
        let key = [7; 32];
        let mut pa = PathManager::new(PeerId::from_bytes([1; 32]), key, true);
        let mut pb = PathManager::new(PeerId::from_bytes([2; 32]), key, false);
        let bs: Vec<SocketAddr> = B.iter().map(|b| a(b)).collect();
        pa.add_remote_candidates(start, &bs);
        pb.add_remote_candidates(start, &[a(A)]);
        Self {
            net,
            pa,
            pb,
            changes: Vec::new(),
            start,
        }
    }

    /// Drains both machines: A sends from its one address; B answers from the address a
    /// packet reached (as a socket with IP_PKTINFO does) and probes from its first address.
    fn drain(&mut self, b_local: SocketAddr) {
        let now = self.net.now();
        while let Some(t) = self.pa.poll_transmit() {
            self.net.send(a(A), t.dst, t.payload);
        }
        while let Some(t) = self.pb.poll_transmit() {
            self.net.send(b_local, t.dst, t.payload);
        }
        for (side, pm) in [('a', &mut self.pa), ('b', &mut self.pb)] {
            while let Some(e) = pm.poll_event() {
                if let PathEvent::Selected { path, .. } = e {
                    self.changes.push((now - self.start, side, path));
                }
            }
        }
    }

    fn run_until(&mut self, until: Instant) {
        loop {
            let next = [
                self.net.next_event(),
                self.pa.poll_timeout(),
                self.pb.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next.filter(|t| *t <= until) else {
                self.net.advance_to(until);
                return;
            };
            self.net.advance_to(next);
            let now = self.net.now();
            while let Some(d) = self.net.pop_due() {
                let pkt = Control::decode(&d.payload).unwrap();
                if d.to == a(A) {
                    self.pa.handle_control(now, d.from, MAIN_SOCKET, &pkt);
                    self.drain(a(B[0]));
                } else {
                    self.pb.handle_control(now, d.from, MAIN_SOCKET, &pkt);
                    self.drain(d.to);
                }
            }
            self.pa.handle_timeout(now);
            self.pb.handle_timeout(now);
            self.drain(a(B[0]));
        }
    }
}

#[test]
fn four_equal_paths_for_ten_minutes_change_at_most_once_and_a_dead_one_is_left_in_time() {
    for (seed, delay, jitter) in [
        (1, Duration::from_micros(50), Duration::from_micros(100)),
        (2, Duration::from_millis(10), Duration::from_millis(3)),
        (3, Duration::from_millis(40), Duration::from_millis(15)),
    ] {
        let link = Link {
            jitter,
            ..Link::with_delay(delay)
        };
        let mut run = Run::new(seed, link);
        let t0 = run.start;
        run.run_until(t0 + Duration::from_secs(600));
        let of = |side| {
            run.changes
                .iter()
                .filter(|c| c.1 == side)
                .cloned()
                .collect::<Vec<_>>()
        };
        let (ca, cb) = (of('a'), of('b'));
        println!(
            "one way {delay:?} + up to {jitter:?}: A selected {} times, B {} times in 10 min",
            ca.len(),
            cb.len()
        );
        // The first selection is not a change; at most one change after it.
        assert!((1..=2).contains(&ca.len()), "A's path alternated: {ca:?}");
        assert!((1..=2).contains(&cb.len()), "B's path alternated: {cb:?}");
        assert!(matches!(run.pa.selected(), Path::Direct(_)));

        // Cut A's selected path: A leaves it within the fallback time (for another direct
        // path or the relay), and never comes back to it while it is down.
        let Path::Direct(dead) = run.pa.selected() else {
            unreachable!()
        };
        run.net.set_up(a(A), dead, false);
        let cut = run.net.now();
        let before = run.changes.len();
        run.run_until(cut + Duration::from_secs(10));
        let left = run.changes[before..]
            .iter()
            .find(|c| c.1 == 'a')
            .expect("A never left the dead path");
        let after = left.0 - (cut - t0);
        println!("  dead path {dead} left after {after:?} for {}", left.2);
        assert!(
            after <= DIRECT_DEAD_AFTER + Duration::from_millis(500),
            "left after {after:?}"
        );
        assert_ne!(run.pa.selected(), Path::Direct(dead));
    }
}
