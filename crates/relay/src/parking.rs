//! The parking task: the relay's side of parked sessions (registered peers without a
//! connection, a few hundred bytes each instead of a QUIC connection's tens of KiB).
//!
//! Every [`TICK`] it goes round the parked sessions once: a session whose peer sent no
//! keep-alive for [`EXPIRY_PERIODS`] periods is unregistered (it left); one that a signal or a
//! vouch waits for is woken at once (a `Beacon` with `wake`, repeated every [`WAKE_REPEAT`]
//! until the peer is back); one that presence changes wait for is woken at a random moment
//! within the spread (at least [`PRESENCE_SPREAD`], and wider with more parked subscribers:
//! at most [`PRESENCE_WAKES_PER_S`] a second, so that one join does not bring every parked
//! subscriber back at once); and in a cluster every session gets an alive beacon every
//! `park_beacon`, so that its peer notices within seconds when this relay dies. Signals are
//! not left for the round: the session tells the task at once (`Shared::waker`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use p2pcall_proto::PeerId;
use p2pcall_proto::packet::Control;
use p2pcall_proto::relay::server::CloseCause;
use tokio::sync::mpsc;

use crate::registry::{ParkedState, Session};
use crate::state::Shared;

/// How often the parked sessions are gone round.
const TICK: Duration = Duration::from_millis(250);
/// Keep-alive periods without one after which a parked session is forgotten.
const EXPIRY_PERIODS: u32 = 4;
/// A wake beacon is sent again this often until the peer is back.
const WAKE_REPEAT: Duration = Duration::from_secs(1);
/// Presence changes wake a parked subscriber within this (at least).
const PRESENCE_SPREAD: Duration = Duration::from_secs(5);
/// Parked subscribers woken for presence a second, at most (on average).
const PRESENCE_WAKES_PER_S: u32 = 1_000;
/// Sessions the waker channel holds (more wait for the next round).
pub(crate) const WAKER_QUEUE: usize = 4_096;

/// Runs until the relay stops; `wakes` names sessions a signal now waits for.
pub(crate) async fn run(shared: Arc<Shared>, mut wakes: mpsc::Receiver<PeerId>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            Some(id) = wakes.recv() => wake_now(&shared, &id),
            _ = tick.tick() => round(&shared, Instant::now()),
        }
    }
}

/// Sends `id` a wake beacon now, if it is parked and something waits for it.
fn wake_now(shared: &Shared, id: &PeerId) {
    let now = Instant::now();
    let beacon = {
        let sessions = shared.sessions.read();
        let Some(s) = sessions.parked.get(id) else {
            return;
        };
        let Some(p) = s.parked() else { return };
        let mut st = p.state.lock();
        if !st.urgent || st.wake_at.is_some_and(|at| at > now) {
            return;
        }
        st.wake_at = Some(now + WAKE_REPEAT);
        s.udp_addr().map(|a| (a, p.secret))
    };
    if let Some((addr, secret)) = beacon {
        send_beacon(shared, addr, secret, true);
    }
}

/// What one parked session is due for.
fn due(
    st: &mut ParkedState,
    now: Instant,
    beacon: Option<Duration>,
    spread: Duration,
) -> Option<bool> {
    if (st.urgent || st.presence) && st.wake_at.is_none() {
        st.wake_at = Some(if st.urgent {
            now
        } else {
            now + spread.mul_f64(rand::random::<f64>())
        });
    }
    if st.wake_at.is_some_and(|at| now >= at) {
        st.wake_at = Some(now + WAKE_REPEAT);
        return Some(true);
    }
    match beacon {
        Some(every) if now >= st.next_beacon => {
            st.next_beacon = now + every;
            Some(false)
        }
        _ => None,
    }
}

/// One round of the parked sessions.
fn round(shared: &Shared, now: Instant) {
    let cfg = &shared.cfg;
    let expiry = cfg.park_keepalive * EXPIRY_PERIODS;
    let beacon = cfg.cluster.is_some().then_some(cfg.park_beacon);
    let mut send: Vec<(SocketAddr, [u8; 16], bool)> = Vec::new();
    let mut expired: Vec<Arc<Session>> = Vec::new();
    {
        let sessions = shared.sessions.read();
        let subscribers = (sessions.parked.values())
            .filter(|s| s.wants_presence())
            .count() as u32;
        let spread = PRESENCE_SPREAD.max(Duration::from_secs(u64::from(
            subscribers / PRESENCE_WAKES_PER_S,
        )));
        for s in sessions.parked.values() {
            let (Some(p), Some(addr)) = (s.parked(), s.udp_addr()) else {
                continue;
            };
            let mut st = p.state.lock();
            if now.saturating_duration_since(st.heard) >= expiry {
                expired.push(s.clone());
                continue;
            }
            if let Some(wake) = due(&mut st, now, beacon, spread) {
                send.push((addr, p.secret, wake));
            }
        }
    }
    for (addr, secret, wake) in send {
        send_beacon(shared, addr, secret, wake);
    }
    if !expired.is_empty() {
        let mut sessions = shared.sessions.write();
        for s in expired {
            tracing::debug!(peer = %s.id.fingerprint(), "parked session expired");
            shared.metrics.close(CloseCause::Timeout);
            sessions.unregister(&s, &shared.metrics);
        }
    }
}

fn send_beacon(shared: &Shared, addr: SocketAddr, secret: [u8; 16], wake: bool) {
    let mut buf = Vec::with_capacity(18);
    Control::Beacon { secret, wake }.encode(&mut buf);
    shared.socket.send_control(addr, &buf);
    if wake {
        shared.metrics.wakes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Tells every parked peer to come back (the relay is shutting down: they are refused and
/// move to another relay, instead of waiting for the beacons to stop).
pub(crate) fn wake_all(shared: &Shared) {
    let all: Vec<(SocketAddr, [u8; 16])> = (shared.sessions.read().parked.values())
        .filter_map(|s| Some((s.udp_addr()?, s.parked()?.secret)))
        .collect();
    for (addr, secret) in all {
        send_beacon(shared, addr, secret, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(now: Instant) -> ParkedState {
        ParkedState::new(now, now + Duration::from_millis(1_500))
    }

    #[test]
    fn a_signal_wakes_at_once_and_again_every_second_until_the_peer_is_back() {
        let t0 = Instant::now();
        let mut st = state(t0);
        assert_eq!(due(&mut st, t0, None, PRESENCE_SPREAD), None);
        st.urgent = true;
        assert_eq!(due(&mut st, t0, None, PRESENCE_SPREAD), Some(true));
        assert_eq!(due(&mut st, t0 + TICK, None, PRESENCE_SPREAD), None);
        assert_eq!(
            due(&mut st, t0 + WAKE_REPEAT, None, PRESENCE_SPREAD),
            Some(true)
        );
    }

    #[test]
    fn a_signal_does_not_wait_for_a_wake_planned_for_presence() {
        let t0 = Instant::now();
        let mut st = state(t0);
        let spread = Duration::from_secs(50);
        // Presence changes wait, their wake planned 30 s away.
        st.presence = true;
        st.wake_at = Some(t0 + Duration::from_secs(30));
        assert_eq!(due(&mut st, t0, None, spread), None);
        st.mark_urgent();
        assert_eq!(due(&mut st, t0 + TICK, None, spread), Some(true));
        // Another signal within the second does not send another wake.
        st.mark_urgent();
        assert_eq!(due(&mut st, t0 + TICK * 2, None, spread), None);
        assert_eq!(due(&mut st, t0 + TICK * 5, None, spread), Some(true));
    }

    #[test]
    fn presence_wakes_within_the_spread_and_beacons_keep_their_period() {
        let t0 = Instant::now();
        let beacon = Some(Duration::from_millis(1_500));
        let mut st = state(t0);
        st.presence = true;
        let spread = Duration::from_secs(50);
        let mut t = t0;
        let woken = loop {
            match due(&mut st, t, beacon, spread) {
                Some(true) => break t,
                Some(false) | None => t += TICK,
            }
            assert!(t <= t0 + spread + TICK, "woken within the spread");
        };
        assert!(woken >= t0);
        // Alive beacons every 1.5 s, whatever else happens.
        let mut st = state(t0);
        let beacons: Vec<_> = (0..=24)
            .map(|i| t0 + TICK * i)
            .filter(|t| due(&mut st, *t, beacon, spread) == Some(false))
            .collect();
        assert_eq!(
            beacons,
            vec![
                t0 + Duration::from_millis(1_500),
                t0 + Duration::from_millis(3_000),
                t0 + Duration::from_millis(4_500),
                t0 + Duration::from_millis(6_000)
            ]
        );
        assert_eq!(due(&mut st, t0 + TICK * 25, None, spread), None);
    }
}
