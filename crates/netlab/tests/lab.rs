//! The real binaries in the NAT lab: for each pair of home-router NATs, a relay, a listening
//! peer and a pinging peer in their own namespaces. Asserts direct where the NATs allow it,
//! the relay where not, and prints what it measured. Needs root; says so and skips otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Outcome, run_pair};
use p2pcall_netlab::{Impair, Nat};

/// Pings every 100 ms; enough for the birthday technique (a few seconds, up to 20).
const PINGS: u32 = 30;

fn check(a: Nat, b: Nat, impair: Impair, expect_direct: bool) -> Option<Outcome> {
    let birthday = matches!(
        (a, b),
        (Nat::Cone, Nat::Symmetric) | (Nat::Symmetric, Nat::Cone)
    );
    let pings = if birthday { 220 } else { PINGS };
    let o = run_pair(a, b, impair, pings)?;
    eprintln!("{}", o.row());
    if expect_direct {
        assert!(
            o.direct_ms.is_some(),
            "{a:?} x {b:?}: expected a direct path: {o:?}"
        );
        assert!(o.final_path.starts_with("direct"), "{o:?}");
    } else {
        assert!(
            o.direct_ms.is_none(),
            "{a:?} x {b:?}: expected the relay: {o:?}"
        );
        assert_eq!(o.final_path, "relay", "{o:?}");
    }
    assert_eq!(o.lost, 0, "pings lost: {o:?}");
    Some(o)
}

#[test]
fn cone_x_cone_goes_direct() {
    check(Nat::Cone, Nat::Cone, Impair::default(), true);
}

#[test]
fn public_x_symmetric_goes_direct() {
    check(Nat::Public, Nat::Symmetric, Impair::default(), true);
}

#[test]
fn cone_x_symmetric_goes_direct() {
    check(Nat::Cone, Nat::Symmetric, Impair::default(), true);
}

#[test]
fn symmetric_x_symmetric_stays_relayed() {
    check(Nat::Symmetric, Nat::Symmetric, Impair::default(), false);
}

#[test]
fn udp_blocked_uses_the_tcp_relay() {
    let Some(o) = check(Nat::UdpBlocked, Nat::Cone, Impair::default(), false) else {
        return;
    };
    assert_eq!(o.transport, "tcp", "{o:?}");
}

#[test]
fn cone_x_cone_at_50ms_rtt() {
    let impair = Impair {
        one_way_delay: Duration::from_millis(25),
        ..Impair::default()
    };
    check(Nat::Cone, Nat::Cone, impair, true);
}
