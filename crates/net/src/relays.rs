//! Choosing a relay among those of a cluster: every known relay is probed at once with an
//! address-reflection request, and the first to answer (sent together, the first answer is the
//! lowest RTT) is used; none within [`PROBE_WINDOW`]: the configured relay.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pcall_proto::PeerId;
use p2pcall_proto::packet::Control;
use p2pcall_proto::relay::RelayEntry;

use crate::config::{RelayCandidate, RelayConfig};

/// How long a choice waits for the first answer.
pub(crate) const PROBE_WINDOW: Duration = Duration::from_secs(1);
/// How long a relay's name may take to resolve.
const RESOLVE_WAIT: Duration = Duration::from_millis(500);

/// A relay to register with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    /// Its UDP (and TCP) address.
    pub(crate) addr: SocketAddr,
    /// The key it must present (`None`: any; the configured relay's is pinned on first use).
    pub(crate) key: Option<PeerId>,
    /// It is the configured relay (its key is the one pinned for the settings' name).
    pub(crate) primary: bool,
}

/// The configured relay's alternates and the relays its cluster listed, as candidates
/// (without the configured relay itself, without repeats).
pub(crate) fn candidates(cfg: &RelayConfig, listed: &[RelayEntry]) -> Vec<RelayCandidate> {
    let mut out: Vec<RelayCandidate> = Vec::new();
    let listed = listed.iter().map(|e| RelayCandidate {
        addr: e.addr.clone(),
        key: Some(e.key),
    });
    for c in cfg.alternates.iter().cloned().chain(listed) {
        let same_key = |k: &Option<PeerId>| c.key.is_some() && *k == c.key;
        if c.addr.is_empty()
            || same_key(&cfg.relay_key)
            || c.addr.parse::<SocketAddr>().ok() == Some(cfg.addr)
            || out.iter().any(|o| o.addr == c.addr || same_key(&o.key))
        {
            continue;
        }
        out.push(c);
    }
    out
}

async fn resolve(addr: &str) -> Option<SocketAddr> {
    if let Ok(a) = addr.parse() {
        return Some(a);
    }
    let found = tokio::time::timeout(RESOLVE_WAIT, tokio::net::lookup_host(addr.to_string()));
    found.await.ok()?.ok()?.next()
}

/// What a relay's address said to reflection requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reflected {
    /// It answered, this long after the first request.
    Answered(Duration),
    /// Its host said nothing listens there (ICMP port unreachable).
    Refused,
    /// No answer (or a local error).
    Silent,
}

/// Sends reflection requests to `addr` from a socket of its own, `tries` times `wait` apart,
/// until one is answered or the host says nothing listens there: a connected UDP socket
/// reports the ICMP error of the next datagram as `ConnectionRefused` (the endpoint's shared
/// socket cannot tell which destination an ICMP error was for).
pub(crate) async fn reflect(addr: SocketAddr, tries: usize, wait: Duration) -> Reflected {
    let any: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let Ok(sock) = tokio::net::UdpSocket::bind(any).await else {
        return Reflected::Silent;
    };
    if sock.connect(addr).await.is_err() {
        return Reflected::Silent;
    }
    let failed = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            Reflected::Refused
        } else {
            Reflected::Silent
        }
    };
    let txid: [u8; 12] = rand::random();
    let mut req = Vec::new();
    Control::ReflectReq { txid }.encode(&mut req);
    let start = Instant::now();
    let mut buf = [0u8; 128];
    for _ in 0..tries {
        if let Err(e) = sock.send(&req).await {
            return failed(e);
        }
        let answer = tokio::time::timeout(wait, async {
            loop {
                let n = sock.recv(&mut buf).await.map_err(failed)?;
                if matches!(Control::decode(&buf[..n]), Ok(Control::ReflectResp { txid: t, .. }) if t == txid)
                {
                    return Ok(start.elapsed());
                }
            }
        });
        match answer.await {
            Ok(Ok(rtt)) => return Reflected::Answered(rtt),
            Ok(Err(r)) => return r,
            Err(_) => {}
        }
    }
    Reflected::Silent
}

/// A relay's RTT: reflection requests every 300 ms, four at most, until one is answered.
async fn probe(addr: SocketAddr) -> Option<Duration> {
    match reflect(addr, 4, Duration::from_millis(300)).await {
        Reflected::Answered(rtt) => Some(rtt),
        Reflected::Refused | Reflected::Silent => None,
    }
}

/// How much sooner another relay must answer than the configured one to be preferred to it:
/// the configured relay is the user's choice, kept unless another is clearly closer (a
/// relay in another region, not one a busy moment made look faster).
fn clearly_sooner(first: Duration) -> Duration {
    first + first / 2 + Duration::from_millis(20)
}

/// The relay to register with: of `primary` and the candidates, the first to answer a probe,
/// unless `primary` answers too within [`clearly_sooner`] of it; `primary` if none answers
/// within [`PROBE_WINDOW`] (its own failure then says why).
pub(crate) async fn choose(
    primary: Target,
    others: &[RelayCandidate],
) -> (Target, Option<Duration>) {
    let mut probes = tokio::task::JoinSet::new();
    probes.spawn(async move { probe(primary.addr).await.map(|rtt| (primary, rtt)) });
    for c in others.iter().cloned() {
        probes.spawn(async move {
            let addr = resolve(&c.addr).await?;
            let target = Target {
                addr,
                key: c.key,
                primary: false,
            };
            probe(addr).await.map(|rtt| (target, rtt))
        });
    }
    let started = Instant::now();
    let mut best: Option<(Target, Duration)> = None;
    let mut until = started + PROBE_WINDOW;
    loop {
        let next = tokio::time::timeout_at(until.into(), probes.join_next()).await;
        let Ok(Some(done)) = next else { break };
        let Ok(Some((target, rtt))) = done else {
            continue;
        };
        if target.primary {
            return (target, Some(rtt));
        }
        if best.is_none() {
            until = started + clearly_sooner(rtt);
            best = Some((target, rtt));
        }
    }
    match best {
        Some((target, rtt)) => (target, Some(rtt)),
        None => (primary, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    #[test]
    fn candidates_leave_out_the_configured_relay_and_repeats() {
        let mut cfg = RelayConfig::new("127.0.0.1:7700".parse().unwrap());
        cfg.relay_key = Some(key(1));
        cfg.alternates = vec![
            RelayCandidate {
                addr: "relay2.example:7700".into(),
                key: None,
            },
            RelayCandidate {
                addr: "127.0.0.1:7700".into(),
                key: None,
            },
        ];
        let listed = [
            RelayEntry {
                key: key(1),
                addr: "relay1.example:7700".into(),
                region: String::new(),
                peers: 0,
            },
            RelayEntry {
                key: key(2),
                addr: "relay2.example:7700".into(),
                region: String::new(),
                peers: 0,
            },
            RelayEntry {
                key: key(3),
                addr: "relay3.example:7700".into(),
                region: String::new(),
                peers: 0,
            },
            RelayEntry {
                key: key(4),
                addr: String::new(),
                region: String::new(),
                peers: 0,
            },
        ];
        let got: Vec<_> = candidates(&cfg, &listed)
            .into_iter()
            .map(|c| (c.addr, c.key))
            .collect();
        assert_eq!(
            got,
            vec![
                ("relay2.example:7700".to_string(), None),
                ("relay3.example:7700".to_string(), Some(key(3))),
            ]
        );
    }

    #[tokio::test]
    async fn the_first_relay_to_answer_is_chosen_and_silence_means_the_configured_one() {
        // A "relay" that answers reflection requests, and an address where nothing answers.
        let answering = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = answering.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 128];
            while let Ok((n, from)) = answering.recv_from(&mut buf).await {
                if let Ok(Control::ReflectReq { txid }) = Control::decode(&buf[..n]) {
                    let mut out = Vec::new();
                    Control::ReflectResp {
                        txid,
                        observed: from,
                    }
                    .encode(&mut out);
                    let _ = answering.send_to(&out, from).await;
                }
            }
        });
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let primary = Target {
            addr: silent.local_addr().unwrap(),
            key: Some(key(1)),
            primary: true,
        };
        let others = [RelayCandidate {
            addr: at.to_string(),
            key: Some(key(2)),
        }];
        let (t, rtt) = choose(primary, &others).await;
        assert_eq!((t.addr, t.key, t.primary), (at, Some(key(2)), false));
        assert!(rtt.is_some());
        // When the configured relay answers about as soon, it is kept.
        let configured = Target {
            addr: at,
            key: Some(key(1)),
            primary: true,
        };
        let also_at = [RelayCandidate {
            addr: at.to_string(),
            key: Some(key(2)),
        }];
        for _ in 0..5 {
            assert_eq!(choose(configured, &also_at).await.0, configured);
        }
        let t0 = Instant::now();
        let (t, rtt) = choose(primary, &[]).await;
        assert_eq!((t, rtt), (primary, None));
        assert!(t0.elapsed() >= PROBE_WINDOW, "silence waits out the window");
    }
}
