//! A deterministic network on a virtual clock (dev-only).
//!
//! Datagrams travel between addresses over [`Link`]s with a one-way delay, optional jitter
//! and seeded random loss; a link can be cut and restored. Nothing reads a real clock: the
//! owner advances time to [`VirtualNet::next_event`] and takes the datagrams due then, so a
//! test of minutes of protocol time runs in milliseconds and always the same way.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};

pub mod nat;
pub use nat::{Filtering, MappingKind, NatConfig};
use std::time::{Duration, Instant};

/// One direction of a path between two addresses.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// Base one-way delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per datagram (may reorder).
    pub jitter: Duration,
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// A cut link drops everything.
    pub up: bool,
    /// Bottleneck capacity, bit/s: datagrams queue behind each other at this rate (None:
    /// unlimited).
    pub rate_bps: Option<u64>,
    /// Most queueing delay the bottleneck holds; a datagram that would wait longer is
    /// dropped (tail drop).
    pub queue: Duration,
}

impl Link {
    /// A lossless link with a fixed delay.
    pub fn with_delay(delay: Duration) -> Self {
        Self {
            delay,
            jitter: Duration::ZERO,
            loss: 0.0,
            up: true,
            rate_bps: None,
            queue: Duration::from_millis(300),
        }
    }

    /// The same link with a bottleneck of `bps` (RMCAT test cases: a 300 ms queue).
    pub fn with_rate(self, bps: u64) -> Self {
        Self {
            rate_bps: Some(bps),
            ..self
        }
    }
}

/// A datagram in flight or delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// When it arrives.
    pub at: Instant,
    /// Sender address.
    pub from: SocketAddr,
    /// Recipient address.
    pub to: SocketAddr,
    /// Bytes.
    pub payload: Vec<u8>,
    seq: u64,
}

impl Ord for Datagram {
    fn cmp(&self, o: &Self) -> Ordering {
        // Min-heap on (arrival, send order).
        o.at.cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Datagram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// Counters of one network.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Datagrams dropped (loss, cut link, no link).
    pub dropped: u64,
    /// Datagrams delivered.
    pub delivered: u64,
    /// Datagrams dropped because a bottleneck's queue was full.
    pub queue_drops: u64,
}

/// The network: links between addresses, datagrams in flight, a seeded RNG.
#[derive(Debug)]
pub struct VirtualNet {
    now: Instant,
    links: HashMap<(IpAddr, IpAddr), Link>,
    /// When each bottleneck finishes sending what it holds.
    busy: HashMap<(IpAddr, IpAddr), Instant>,
    nats: Vec<nat::NatBox>,
    queue: BinaryHeap<Datagram>,
    seq: u64,
    rng: u64,
    /// Counters.
    pub stats: NetStats,
}

impl VirtualNet {
    /// An empty network starting at `start`, with a seed for loss and jitter.
    pub fn new(start: Instant, seed: u64) -> Self {
        Self {
            now: start,
            links: HashMap::new(),
            busy: HashMap::new(),
            nats: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            rng: seed | 1,
            stats: NetStats::default(),
        }
    }

    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Advances the clock (never backwards).
    pub fn advance_to(&mut self, t: Instant) {
        self.now = self.now.max(t);
    }

    /// Sets the link between the hosts of `a` and `b` (by IP address), both directions.
    pub fn connect(&mut self, a: SocketAddr, b: SocketAddr, link: Link) {
        self.links.insert((a.ip(), b.ip()), link);
        self.links.insert((b.ip(), a.ip()), link);
    }

    /// Puts the hosts `inside` behind a NAT whose public address is `public`.
    /// Links of the NAT's outside are set with [`connect`](Self::connect) on `public`.
    pub fn add_nat(&mut self, public: IpAddr, cfg: NatConfig, inside: &[IpAddr]) {
        self.nats
            .push(nat::NatBox::new(public, cfg, inside.to_vec()));
    }

    /// Changes the bottleneck from `from`'s host to `to`'s (one direction): what is queued
    /// keeps its departure times, new datagrams queue at the new rate.
    pub fn set_rate(&mut self, from: SocketAddr, to: SocketAddr, bps: Option<u64>) {
        if let Some(l) = self.links.get_mut(&(from.ip(), to.ip())) {
            l.rate_bps = bps;
        }
    }

    /// How long a datagram sent now from `from`'s host to `to`'s would wait in the
    /// bottleneck's queue.
    pub fn queue_delay(&self, from: SocketAddr, to: SocketAddr) -> Duration {
        self.busy
            .get(&(from.ip(), to.ip()))
            .map_or(Duration::ZERO, |b| b.saturating_duration_since(self.now))
    }

    /// Cuts or restores both directions between the hosts of `a` and `b`.
    pub fn set_up(&mut self, a: SocketAddr, b: SocketAddr, up: bool) {
        for k in [(a.ip(), b.ip()), (b.ip(), a.ip())] {
            if let Some(l) = self.links.get_mut(&k) {
                l.up = up;
            }
        }
    }

    fn random(&mut self) -> f64 {
        // xorshift64*: deterministic, good enough for loss and jitter draws.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Sends a datagram now; it arrives after the link's delay unless dropped. A sender
    /// behind a NAT is translated to its public mapping on the way out.
    pub fn send(&mut self, from: SocketAddr, to: SocketAddr, payload: Vec<u8>) {
        self.stats.sent += 1;
        let now = self.now;
        let from = match self.nats.iter_mut().find(|n| n.is_inside(from.ip())) {
            Some(n) => n.outbound(now, from, to),
            None => from,
        };
        let Some(link) = self.links.get(&(from.ip(), to.ip())).copied() else {
            self.stats.dropped += 1;
            return;
        };
        if !link.up || (link.loss > 0.0 && self.random() < link.loss) {
            self.stats.dropped += 1;
            return;
        }
        // A bottleneck sends one datagram after the other (IP + UDP headers count).
        let mut depart = self.now;
        if let Some(rate) = link.rate_bps.filter(|r| *r > 0) {
            let key = (from.ip(), to.ip());
            let busy = self.busy.get(&key).copied().unwrap_or(now).max(now);
            if busy.saturating_duration_since(now) > link.queue {
                self.stats.dropped += 1;
                self.stats.queue_drops += 1;
                return;
            }
            let bits = (payload.len() + 28) as f64 * 8.0;
            depart = busy + Duration::from_secs_f64(bits / rate as f64);
            self.busy.insert(key, depart);
        }
        let jitter = link.jitter.mul_f64(self.random());
        self.seq += 1;
        self.queue.push(Datagram {
            at: depart + link.delay + jitter,
            from,
            to,
            payload,
            seq: self.seq,
        });
    }

    /// Arrival time of the next datagram in flight.
    pub fn next_event(&self) -> Option<Instant> {
        self.queue.peek().map(|d| d.at)
    }

    /// Takes the next datagram due at or before now. Datagrams to a NAT's public address
    /// pass its filter and are translated to the inside host, or are dropped.
    pub fn pop_due(&mut self) -> Option<Datagram> {
        while self.queue.peek().is_some_and(|d| d.at <= self.now) {
            let mut d = self.queue.pop()?;
            let now = self.now;
            if let Some(n) = self.nats.iter_mut().find(|n| n.public() == d.to.ip()) {
                match n.inbound(now, d.from, d.to) {
                    Some(inside) => d.to = inside,
                    None => {
                        self.stats.dropped += 1;
                        continue;
                    }
                }
            }
            self.stats.delivered += 1;
            return Some(d);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, n], 1000))
    }

    #[test]
    fn delivers_in_order_after_the_delay_and_respects_cuts() {
        let t0 = Instant::now();
        let mut net = VirtualNet::new(t0, 1);
        net.connect(
            addr(1),
            addr(2),
            Link::with_delay(Duration::from_millis(10)),
        );
        net.send(addr(1), addr(2), vec![1]);
        net.send(addr(1), addr(2), vec![2]);
        net.send(addr(1), addr(3), vec![3]); // no link
        assert_eq!(net.pop_due(), None);
        assert_eq!(net.next_event(), Some(t0 + Duration::from_millis(10)));
        net.advance_to(t0 + Duration::from_millis(10));
        assert_eq!(net.pop_due().unwrap().payload, vec![1]);
        assert_eq!(net.pop_due().unwrap().payload, vec![2]);
        net.set_up(addr(1), addr(2), false);
        net.send(addr(2), addr(1), vec![4]);
        assert_eq!(net.next_event(), None);
        assert_eq!(
            net.stats,
            NetStats {
                sent: 4,
                dropped: 2,
                delivered: 2,
                queue_drops: 0,
            }
        );
    }

    #[test]
    fn a_bottleneck_serialises_datagrams_and_drops_past_its_queue() {
        let t0 = Instant::now();
        let mut net = VirtualNet::new(t0, 1);
        // 1 Mbit/s, 5 ms delay, 300 ms queue: 1222 + 28 bytes take 10 ms each.
        net.connect(
            addr(1),
            addr(2),
            Link::with_delay(Duration::from_millis(5)).with_rate(1_000_000),
        );
        for i in 0..40u8 {
            net.send(addr(1), addr(2), vec![i; 1222]);
        }
        // 31 fit (the 31st starts after 300 ms of queue), the rest are dropped.
        assert_eq!(net.stats.queue_drops, 9);
        assert_eq!(
            net.queue_delay(addr(1), addr(2)),
            Duration::from_millis(310)
        );
        let mut arrivals = Vec::new();
        while let Some(t) = net.next_event() {
            net.advance_to(t);
            while let Some(d) = net.pop_due() {
                arrivals.push(d.at - t0);
            }
        }
        assert_eq!(arrivals.len(), 31);
        assert_eq!(arrivals[0], Duration::from_millis(15));
        assert_eq!(arrivals[30], Duration::from_millis(315));
        // The other direction has no bottleneck (set_rate is per direction).
        net.set_rate(addr(2), addr(1), None);
        net.send(addr(2), addr(1), vec![0; 1222]);
        assert_eq!(net.next_event(), Some(net.now() + Duration::from_millis(5)));
    }

    #[test]
    fn loss_is_seeded_and_close_to_the_rate() {
        let run = |seed| {
            let mut net = VirtualNet::new(Instant::now(), seed);
            let mut l = Link::with_delay(Duration::ZERO);
            l.loss = 0.1;
            net.connect(addr(1), addr(2), l);
            for _ in 0..10_000 {
                net.send(addr(1), addr(2), vec![]);
            }
            net.stats.dropped
        };
        assert_eq!(run(7), run(7));
        let d = run(7);
        assert!((900..1100).contains(&d), "{d}");
    }
}
