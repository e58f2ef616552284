//! Userspace delay / jitter / loss for the NAT lab (this kernel has no netem).
//!
//! Takes packets from an NFQUEUE, holds each for `--delay-us` plus a uniform random
//! `[0, --jitter-us]`, then accepts it (so jitter reorders packets); drops
//! `--loss-permille` of them at random. Prints `ready` on stderr once bound. Stops when
//! killed; with `--queue-bypass` on the iptables rule, packets flow undelayed without it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use nfq::{Queue, Verdict};
use rand::Rng;

struct Held {
    due: Instant,
    seq: u64,
    msg: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

fn arg(args: &[String], name: &str) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let queue_num = arg(&args, "--queue") as u16;
    let delay = Duration::from_micros(arg(&args, "--delay-us"));
    let jitter = arg(&args, "--jitter-us");
    let loss = arg(&args, "--loss-permille");
    let mut q = Queue::open()?;
    q.bind(queue_num)?;
    q.set_queue_max_len(queue_num, 65536)?;
    q.set_fail_open(queue_num, true)?;
    q.set_nonblocking(true);
    eprintln!("ready");
    let mut rng = rand::rng();
    let mut held = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    if loss > 0 && rng.random_range(0..1000) < loss {
                        msg.set_verdict(Verdict::Drop);
                        q.verdict(msg)?;
                        continue;
                    }
                    let extra = if jitter > 0 {
                        Duration::from_micros(rng.random_range(0..=jitter))
                    } else {
                        Duration::ZERO
                    };
                    seq += 1;
                    held.push(Reverse(Held {
                        due: Instant::now() + delay + extra,
                        seq,
                        msg,
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let now = Instant::now();
        while held.peek().is_some_and(|Reverse(h)| h.due <= now) {
            if let Some(Reverse(mut h)) = held.pop() {
                h.msg.set_verdict(Verdict::Accept);
                q.verdict(h.msg)?;
            }
        }
        let wait = held
            .peek()
            .map_or(Duration::from_micros(500), |Reverse(h)| {
                h.due.saturating_duration_since(now)
            })
            .min(Duration::from_micros(500));
        std::thread::sleep(wait);
    }
}
