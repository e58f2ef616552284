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

#[test]
fn a_stranger_announcing_a_contacts_name_receives_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (adir, bdir, sdir) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("s"),
    );
    let (_relay, udp) = relay(&tmp.path().join("r"), &[]);
    let peer = |dir: &std::path::Path, name: &str| {
        let mut c = cmd(dir);
        c.args(["--json", "--relay", &udp, "--name", name]);
        c
    };
    // Alice writes to Bob (by key: he becomes her contact "bob").
    let mut c = peer(&bdir, "bob");
    c.arg("listen");
    let mut bob = Proc::spawn(c);
    bob.expect("relay_connected");
    let (out, err, code) = run({
        let mut c = peer(&adir, "alice");
        c.args(["chat", &id_of(&bdir), "hello bob"]);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["state"], "delivered", "{out:?}");
    assert!(bob.term().success());

    // Bob is offline; a stranger registers under the name "bob", another as "bоb" (with a
    // Cyrillic о).
    let mut c = peer(&sdir, "bob");
    c.arg("listen");
    let stranger = Proc::spawn(c);
    stranger.expect("relay_connected");
    let mut c = peer(&tmp.path().join("s2"), "b\u{043E}b");
    c.arg("listen");
    let cyrillic = Proc::spawn(c);
    cyrillic.expect("relay_connected");
    let (out, err, code) = run({
        let mut c = peer(&adir, "alice");
        c.arg("peers");
        c
    });
    assert_eq!(code, Some(0), "{err}");
    let online = out[0].as_array().unwrap();
    assert_eq!(online.len(), 2, "{out:?}");
    // Both are flagged as looking like alice's contact.
    for p in online {
        let looks = p["looks_like_contact"].as_str().unwrap_or_default();
        assert!(looks.starts_with("bob ("), "{p}");
    }
    // "bob" is still Bob: the message waits for him, the stranger gets nothing.
    let (out, err, code) = run({
        let mut c = peer(&adir, "alice");
        c.args(["chat", "bob", "the secret"]);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["state"], "queued", "{out:?}");
    assert_eq!(out[0]["peer"]["id"], id_of(&bdir).as_str(), "{out:?}");
    let (_, err, code) = run({
        let mut c = peer(&adir, "alice");
        c.args(["ping", "bob", "--count", "1"]);
        c
    });
    assert_eq!(code, Some(3), "bob is offline, not the stranger: {err}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    while let Ok(l) = stranger.lines.try_recv() {
        assert!(!l.contains("\"message\""), "the stranger received: {l}");
    }
}

#[test]
fn unattended_listeners_take_files_and_calls_from_contacts_only_unless_told_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let (adir, bdir) = (tmp.path().join("a"), tmp.path().join("b"));
    let (_relay, udp) = relay(&tmp.path().join("r"), &[]);
    let peer = |dir: &std::path::Path, name: &str| {
        let mut c = cmd(dir);
        c.args(["--json", "--relay", &udp, "--name", name]);
        c
    };
    let inbox = tmp.path().join("inbox");
    let listen = |extra: &[&str]| {
        let mut c = peer(&bdir, "bob");
        c.args(["listen", "--accept-files"]).arg(&inbox);
        c.args([
            "--answer",
            "--video",
            "none",
            "--audio",
            "none",
            "--speaker",
            "none",
        ]);
        c.args(extra);
        let p = Proc::spawn(c);
        p.expect("relay_connected");
        p
    };
    let file = tmp.path().join("gift.txt");
    std::fs::write(&file, b"from a stranger").unwrap();
    let bob_id = id_of(&bdir);
    let alice = |args: &[&str]| {
        let mut c = peer(&adir, "alice");
        c.args(args);
        run(c)
    };

    // Alice is a stranger to Bob: his file and call policies do not cover her.
    let mut bob = listen(&[]);
    let (out, err, code) = alice(&["send", &bob_id, file.to_str().unwrap()]);
    assert_eq!(code, Some(7), "declined: {out:?} {err}");
    let why = out.last().unwrap()["error"].as_str().unwrap().to_string();
    assert!(why.contains("only from its contacts"), "{why}");
    assert!(!inbox.join("gift.txt").exists());
    let (_, err, code) = alice(&["call", &bob_id, "--video", "none", "--audio", "none"]);
    assert_eq!(code, Some(7), "declined: {err}");
    assert!(bob.term().success());

    // Once Bob adds her, both go through.
    let (_, err, code) = run({
        let mut c = peer(&bdir, "bob");
        c.args(["add", &id_of(&adir), "--name", "Alice"]);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    let mut bob = listen(&[]);
    let (_, err, code) = alice(&["send", &bob_id, file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        std::fs::read(inbox.join("gift.txt")).unwrap(),
        b"from a stranger"
    );
    let (_, err, code) = alice(&[
        "call",
        &bob_id,
        "--video",
        "none",
        "--audio",
        "none",
        "--duration",
        "1",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(bob.term().success());

    // `--from verified` wants more than a contact.
    let bob = listen(&["--from", "verified"]);
    let (out, err, code) = alice(&["send", &bob_id, file.to_str().unwrap()]);
    assert_eq!(code, Some(7), "{err}");
    let why = out.last().unwrap()["error"].as_str().unwrap().to_string();
    assert!(why.contains("only from verified contacts"), "{why}");
    drop(bob);
}

#[test]
fn a_running_engine_keeps_to_the_relay_key_it_first_met() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut first, udp) = relay(&tmp.path().join("r1"), &[]);
    // A listener meets the relay for the first time (nothing pinned yet) ...
    let mut c = cmd(&tmp.path().join("a"));
    c.args(["--json", "--relay", &udp, "--name", "alice", "listen"]);
    let listener = Proc::spawn(c);
    listener.expect("relay_connected");
    // ... then another server with another key answers at that address (another network, a
    // spoofed name): the listener does not reconnect to it.
    assert!(first.term().success());
    let mut c = cmd(&tmp.path().join("r2"));
    c.args(["--json", "relay", "--listen", &udp]);
    let second = Proc::spawn(c);
    let key = second.expect("relay_started")["key"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = listener.expect("relay_key_mismatch");
    assert_eq!(refused["presented"], key.as_str(), "{refused}");
}
