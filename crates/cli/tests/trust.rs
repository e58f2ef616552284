//! Trust at the edges, through the real binary: the relay's key is pinned on first use and
//! a different one is refused before anything (the token) is sent to it; names from the
//! network never pick a peer; invitations and message requests; a relay that routes a
//! contact's connection to an impostor gets the impostor nothing.
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

#[test]
fn an_invitation_makes_a_contact_and_pins_the_relay_it_names() {
    let tmp = tempfile::tempdir().unwrap();
    let (adir, bdir) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut c = cmd(&tmp.path().join("r"));
    c.args(["--json", "relay", "--listen", "127.0.0.1:0"]);
    let relay = Proc::spawn(c);
    let started = relay.expect("relay_started");
    let udp = started["udp"].as_str().unwrap().to_string();
    let relay_key = started["key"].as_str().unwrap().to_string();

    // Bob's ticket: his id, his name, the relay and the key it presented (learned by
    // connecting once, since nothing was pinned yet).
    let mut c = cmd(&bdir);
    c.args(["--json", "--relay", &udp, "--name", "Bob", "invite"]);
    let inv = json_out(c);
    assert_eq!(inv["id"], id_of(&bdir).as_str());
    assert_eq!(inv["relay"], udp.as_str());
    assert_eq!(inv["relay_key"], relay_key.as_str());
    let ticket = inv["ticket"].as_str().unwrap().to_string();
    // As text: the line, then its QR code.
    let mut c = cmd(&bdir);
    c.args(["--relay", &udp, "--name", "Bob", "invite", "--qr"]);
    let text = c.output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(ticket.as_str()));
    assert!(lines.filter(|l| l.contains('█')).count() > 20, "{text}");

    // A damaged ticket is refused, saying so.
    let mut damaged = ticket.clone();
    damaged.replace_range(20..21, if &ticket[20..21] == "a" { "b" } else { "a" });
    let (_, err, code) = run({
        let mut c = cmd(&adir);
        c.args(["add", &damaged]);
        c
    });
    assert_ne!(code, Some(0));
    assert!(err.contains("damaged"), "{err}");

    // Alice, with no relay configured, adds it: Bob is her contact "Bob", the relay is hers
    // with its key pinned from the ticket (before she ever connected to it).
    let mut c = cmd(&adir);
    c.args(["--json", "add", &ticket]);
    let added = json_out(c);
    assert_eq!(added["name"], "Bob");
    assert_eq!(added["id"], id_of(&bdir).as_str());
    assert_eq!(added["relay"]["relay"], udp.as_str());
    assert_eq!(added["relay"]["new"], true);
    assert_eq!(added["relay_set"], true);
    let config = std::fs::read_to_string(adir.join("config.toml")).unwrap();
    assert!(config.contains(&udp), "{config}");

    // She writes to "Bob" with no --relay: it goes through the ticket's relay to Bob.
    let mut c = cmd(&bdir);
    c.args(["--json", "--relay", &udp, "--name", "Bob", "listen"]);
    let mut bob = Proc::spawn(c);
    bob.expect("relay_connected");
    let (out, err, code) = run({
        let mut c = cmd(&adir);
        c.args(["--json", "chat", "Bob", "from your ticket"]);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["state"], "delivered", "{out:?}");
    // Bob never chose alice: her message waits apart, as a request, until he accepts it.
    let req = bob.expect("message_request");
    assert_eq!(req["text"], "from your ticket");
    assert!(bob.term().success());
    let mut c = cmd(&bdir);
    c.args(["--json", "requests"]);
    let list = json_out(c);
    assert_eq!(list[0]["id"], id_of(&adir).as_str(), "{list}");
    assert_eq!(list[0]["messages"], 1);
    let fp = list[0]["fingerprint"].as_str().unwrap()[..9].to_string();
    let mut c = cmd(&bdir);
    c.args(["--json", "requests", "accept", &fp, "--name", "Alice"]);
    assert_eq!(json_out(c)["name"], "Alice");
    let mut c = cmd(&bdir);
    c.args(["--json", "requests"]);
    assert_eq!(json_out(c), serde_json::json!([]));
    let mut c = cmd(&bdir);
    c.args(["--json", "history", "Alice"]);
    let (out, err, code) = run(c);
    assert_eq!(code, Some(0), "{err}");
    let messages = out[0]["messages"].as_array().unwrap();
    assert!(
        messages
            .iter()
            .any(|m| m["text"] == "from your ticket" && m["request"] == false),
        "{out:?}"
    );
    assert_eq!(out[0]["peer"]["name"], "Alice", "{out:?}");

    // A ticket that names the same relay with another key (changed on its way, or forged)
    // adds its peer but leaves the pinned key alone, loudly.
    let mut forged: p2pcall_proto::ticket::Ticket = ticket.parse().unwrap();
    forged.peer = p2pcall_proto::PeerId::from_bytes([5; 32]);
    forged.name = "Mallory".into();
    let other_key = p2pcall_proto::PeerId::from_bytes([6; 32]);
    forged.relay.as_mut().unwrap().key = other_key;
    let (out, err, code) = run({
        let mut c = cmd(&adir);
        c.args(["add", &forged.encode()]);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("WARNING") && err.contains(&other_key.to_hex()) && err.contains(&relay_key),
        "{err}"
    );
    assert!(out.is_empty());
    let (out, err, code) = run({
        let mut c = cmd(&adir);
        c.args(["--json", "peers"]);
        c
    });
    assert_eq!(code, Some(0), "the pinned key still holds: {err}");
    assert!(out[0].is_array(), "{out:?}");

    // One's own ticket is not a contact.
    let (_, err, code) = run({
        let mut c = cmd(&bdir);
        c.args(["add", &ticket]);
        c
    });
    assert_ne!(code, Some(0));
    assert!(err.contains("your own ticket"), "{err}");
}

/// A relay that lies on its data path: a UDP front for an honest relay (so its key checks
/// out) that rewrites every relayed packet addressed to `victim` to go to `impostor`, and
/// the impostor's answers to come from `victim`.
/// Returns its address and the count of packets it rerouted; it runs until the test process
/// exits.
fn misrouting_relay(
    relay: &str,
    victim: [u8; 32],
    impostor: [u8; 32],
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::collections::HashMap;
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::{Arc, Mutex};
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    let addr = front.local_addr().unwrap().to_string();
    let relay: SocketAddr = relay.parse().unwrap();
    let upstream: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let rewritten = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = rewritten.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        loop {
            let Ok((n, client)) = front.recv_from(&mut buf) else {
                return;
            };
            let pkt = &mut buf[..n];
            // RelaySend: 0x10 | session tag (16) | destination key (32) | QUIC packet.
            if n > 49 && pkt[0] == 0x10 && pkt[17..49] == victim {
                pkt[17..49].copy_from_slice(&impostor);
                rewritten.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let up = upstream
                .lock()
                .unwrap()
                .entry(client)
                .or_insert_with(|| {
                    let s = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
                    s.connect(relay).unwrap();
                    let (back, front) = (s.clone(), front.clone());
                    std::thread::spawn(move || {
                        let mut b = [0u8; 2048];
                        while let Ok(n) = back.recv(&mut b) {
                            // RelayRecv: 0x11 | source key (32) | QUIC packet. The
                            // impostor's answers claim to come from the victim.
                            if n > 33 && b[0] == 0x11 && b[1..33] == impostor {
                                b[1..33].copy_from_slice(&victim);
                            }
                            let _ = front.send_to(&b[..n], client);
                        }
                    });
                    s
                })
                .clone();
            let _ = up.send(pkt);
        }
    });
    (addr, count)
}

#[test]
fn a_relay_that_routes_a_contact_to_an_impostor_gets_it_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (adir, bdir, xdir) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("x"),
    );
    let (_relay, udp) = relay(&tmp.path().join("r"), &[]);
    let hex = |s: &str| -> [u8; 32] {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        k
    };
    let (bob_id, x_id) = (id_of(&bdir), id_of(&xdir));
    // Bob and the impostor are online at the honest relay; Alice goes through the lying one.
    let (lying, rerouted) = misrouting_relay(&udp, hex(&bob_id), hex(&x_id));
    let online = |dir: &std::path::Path, name: &str| {
        let mut c = cmd(dir);
        c.args([
            "--json", "--relay", &udp, "--name", name, "listen", "--from", "anyone",
        ]);
        let p = Proc::spawn(c);
        p.expect("relay_connected");
        p
    };
    let mut bob = online(&bdir, "bob");
    let mut impostor = online(&xdir, "bob");
    let (out, err, code) = run({
        let mut c = cmd(&adir);
        c.args(["--json", "--relay", &lying, "chat", &bob_id, "for bob only"]);
        c
    });
    // The dial reaches the impostor, whose key is not Bob's: the handshake fails, the user
    // is told who answered, and the message waits for Bob.
    assert_eq!(code, Some(11), "{out:?} {err}");
    let why = out[0]["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("someone else answered") && why.contains(&x_id),
        "{out:?}"
    );
    let mut c = cmd(&adir);
    c.args(["--json", "history", &bob_id]);
    let history = json_out(c);
    assert_eq!(history["messages"][0]["text"], "for bob only");
    assert_eq!(history["messages"][0]["state"], "queued");
    assert!(rerouted.load(std::sync::atomic::Ordering::Relaxed) > 0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(impostor.term().success());
    assert!(bob.term().success());
    while let Ok(l) = impostor.lines.try_recv() {
        assert!(
            !l.contains("for bob only") && !l.contains("\"connected\""),
            "the impostor got: {l}"
        );
    }
}
