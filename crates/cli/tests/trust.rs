//! Trust at the edges, through the real binary: the relay's key is pinned on first use and
//! a different one is refused before anything (the token) is sent to it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[test]
fn a_relay_with_another_key_is_refused_until_the_user_accepts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = tmp.path().join("a");
    // The relay alice first meets: its key is pinned.
    let (mut first, udp) = relay(&tmp.path().join("r1"), &["--token", "s3cret"]);
    let peers = |extra: &[&str]| {
        let mut c = cmd(&alice);
        c.args(["--json", "--relay", &udp, "--token", "s3cret"])
            .args(extra)
            .arg("peers");
        run(c)
    };
    let (_, err, code) = peers(&[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(first.term().success());

    // Another relay (another key) answers at the same address, asking for the same token.
    let mut c = cmd(&tmp.path().join("r2"));
    c.args(["--json", "relay", "--listen", &udp, "--token", "s3cret"]);
    let second = Proc::spawn(c);
    let started = second.expect("relay_started");
    let key = started["key"].as_str().unwrap().to_string();
    let (out, err, code) = peers(&[]);
    assert_eq!(code, Some(6), "{out:?} {err}");
    let why = out[0]["error"].as_str().unwrap();
    assert!(why.contains(&format!("presented the key {key}")), "{why}");
    assert!(why.contains(&format!("--accept-relay-key {key}")), "{why}");
    // The handshake failed on the key: the session never began, so no token went out (a
    // token sent to it would have been accepted, since it asks for the same one).
    assert!(!why.contains("refused us"), "{why}");

    // The user accepts the new key: it is pinned from now on.
    let (_, err, code) = peers(&["--accept-relay-key", &key]);
    assert_eq!(code, Some(0), "{err}");
    let (_, err, code) = peers(&[]);
    assert_eq!(code, Some(0), "{err}");
}
