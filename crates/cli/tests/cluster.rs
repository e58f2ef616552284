//! The real binaries as a network of three relays on a 3-node NATS cluster (all started here
//! on free loopback ports): peers registered with relay c chat with, send a folder to and hold
//! a short call with a peer of relay a; relay b's process is killed and its peer is registered with
//! another relay within 5 s, in a call and parked alike; relay b restarts and its peers come
//! back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
#[path = "../../relay/tests/nats/mod.rs"]
mod nats;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// A relay process of the cluster (`listen`: its address; port 0: any), its UDP address and
/// its metrics address.
fn cluster_relay(
    dir: &Path,
    nats: &nats::NatsCluster,
    first: usize,
    listen: &str,
) -> (Proc, String, String) {
    let mut c = cmd(dir);
    c.args([
        "--json",
        "relay",
        "--listen",
        listen,
        "--metrics",
        "127.0.0.1:0",
    ])
    .args(["--cluster", &nats.urls_from(first).join(",")])
    .args(["--region", &format!("r{first}")]);
    let p = Proc::spawn(c);
    let started = p.expect("relay_started");
    let udp = started["udp"].as_str().unwrap().to_string();
    let metrics = (started["metrics"].as_str().unwrap())
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    (p, udp, metrics)
}

/// The value of one metric line (`name value`) of a relay.
fn metric(metrics: &str, name: &str) -> u64 {
    let body = http_get(metrics, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_relays_carry_chat_a_folder_and_a_call_and_survive_losing_a_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let nats = nats::NatsCluster::start(3);
    let (_ra, addr_a, ma) = cluster_relay(&root.join("ra"), &nats, 0, "127.0.0.1:0");
    let (mut rb, addr_b, mb) = cluster_relay(&root.join("rb"), &nats, 1, "127.0.0.1:0");
    let (_rc, addr_c, mc) = cluster_relay(&root.join("rc"), &nats, 2, "127.0.0.1:0");
    until(
        "three relays in one cluster",
        Duration::from_secs(10),
        || {
            [&ma, &mb, &mc]
                .iter()
                .all(|m| metric(m, "p2pcall_relay_cluster_members") == 2)
        },
    );
    assert!(http_get(&ma, "/healthz").ends_with("ok\n"));
    let peer = |name: &str, relay: &str| {
        let mut c = cmd(&root.join(name));
        c.args(["--json", "--relay-only", "--relay", relay, "--name", name]);
        c
    };

    // Alice listens at relay a (taking files, answering calls); carol uses relay c.
    let inbox = root.join("inbox");
    let rec = root.join("call.wav");
    let alice_id = id_of(&root.join("alice"));
    let mut c = peer("alice", &addr_a);
    c.args(["listen", "--from", "anyone", "--accept-files"])
        .arg(&inbox)
        .args([
            "--answer",
            "--video",
            "none",
            "--speaker",
            "none",
            "--record-audio",
        ])
        .arg(&rec);
    let alice = Proc::spawn_logged(c, Some(&root.join("alice.log")));
    alice.expect("relay_connected");

    let mut c = peer("carol", &addr_c);
    c.args(["chat", &alice_id, "hello", "across", "relays"]);
    let (out, err, code) = run(c);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["state"], "delivered", "{out:?}");
    assert_eq!(
        alice.expect("message_request")["text"],
        "hello across relays"
    );

    let folder = root.join("album");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    let files = [("a.bin", 3 << 20), ("sub/b.txt", 1000), ("sub/empty", 0)];
    for (name, len) in files {
        let data: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
        std::fs::write(folder.join(name), data).unwrap();
    }
    // Each of these peers is new to the cluster: one that knows it already may start at
    // another relay that answers clearly sooner (decision 0086), and the point here is the
    // crossing from relay c to relay a.
    let mut c = peer("cora", &addr_c);
    c.args(["send", &alice_id]).arg(&folder);
    let (out, err, code) = run(c);
    assert_eq!(code, Some(0), "{err} {out:?}");
    alice.expect("transfer_done");
    for (name, _) in files {
        assert_eq!(
            std::fs::read(inbox.join("album").join(name)).unwrap(),
            std::fs::read(folder.join(name)).unwrap(),
            "{name}"
        );
    }

    let mut c = peer("cleo", &addr_c);
    c.args([
        "call",
        &alice_id,
        "--duration",
        "2",
        "--video",
        "none",
        "--speaker",
        "none",
    ]);
    let (out, err, code) = run(c);
    assert_eq!(code, Some(0), "{err}");
    let end = out.iter().find(|v| v["event"] == "call_ended").unwrap();
    assert_eq!(end["reason"], "finished", "{end}");
    // All of it crossed from relay c to relay a, and nothing went through b.
    assert!(metric(&mc, "p2pcall_relay_hops_out_total") > 1000);
    assert!(metric(&ma, "p2pcall_relay_hops_in_total") > 1000);
    assert_eq!(metric(&mb, "p2pcall_relay_hops_in_total"), 0);

    // Bob listens at relay b, in a call with carol over the relays, when relay b's process
    // is killed: bob is registered with another relay of the cluster within 5 s, and the call
    // carries on (a call ends after 5 s without media) without anyone redialing.
    let bob_id = id_of(&root.join("bob"));
    let mut c = peer("bob", &addr_b);
    c.args([
        "listen",
        "--from",
        "anyone",
        "--answer",
        "--video",
        "none",
        "--speaker",
        "none",
    ]);
    let bob = Proc::spawn_logged(c, Some(&root.join("bob.log")));
    let first = bob.expect("relay_connected");
    assert_eq!(first["relay_addr"], addr_b.as_str());
    let mut c = peer("carol", &addr_c);
    c.args([
        "call",
        &bob_id,
        "--duration",
        "8",
        "--video",
        "none",
        "--speaker",
        "none",
    ]);
    let mut call = Proc::spawn_logged(c, Some(&root.join("carol-call.log")));
    call.expect("call_started");
    std::thread::sleep(Duration::from_secs(1));
    rb.child.kill().unwrap(); // SIGKILL: no goodbye to anyone
    let killed = Instant::now();
    rb.child.wait().unwrap();
    let moved = bob.expect("relay_connected");
    let took = killed.elapsed();
    assert_ne!(moved["relay_addr"], addr_b.as_str(), "{moved}");
    assert_eq!(moved["configured"], false);
    assert!(
        took < Duration::from_secs(5),
        "re-registered after {took:?}"
    );
    eprintln!("bob re-registered {took:?} after relay b was killed");
    let ended = call.expect("call_ended");
    assert_eq!(ended["reason"], "finished", "the call survived: {ended}");
    assert!(call.child.wait().unwrap().success());
    eprintln!("the call's end: {ended}");
    let mut c = peer("carol", &addr_c);
    c.args(["chat", &bob_id, "found you"]);
    let (out, err, code) = run(c);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["state"], "delivered", "{out:?}");

    // Relay b restarts (same key, same address): its peers come back to it.
    let (mut rb, _, mb) = cluster_relay(&root.join("rb"), &nats, 1, &addr_b);
    until(
        "relay b back in the cluster",
        Duration::from_secs(10),
        || metric(&mb, "p2pcall_relay_cluster_members") == 2,
    );
    // Dave parks after a second without anything on his relay session.
    let dave_id = id_of(&root.join("dave"));
    std::fs::write(
        root.join("dave").join("config.toml"),
        "park_after_secs = 1\n",
    )
    .unwrap();
    let mut c = peer("dave", &addr_b);
    c.args(["listen", "--from", "anyone"]);
    let dave = Proc::spawn_logged(c, Some(&root.join("dave.log")));
    assert_eq!(
        dave.expect("relay_connected")["relay_addr"],
        addr_b.as_str()
    );
    let mut c = peer("carol", &addr_c);
    c.args(["chat", &dave_id, "welcome back"]);
    let (out, err, code) = run(c);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["state"], "delivered", "{out:?}");

    // Erin uses relay b and hears of its cluster; the next time relay b is down, she starts
    // with another relay of the cluster, the one that answers first.
    let mut c = peer("erin", &addr_b);
    c.arg("listen");
    let mut erin = Proc::spawn(c);
    let listed = erin.expect("relays_listed");
    assert_eq!(listed["relays"].as_array().unwrap().len(), 3, "{listed}");
    assert!(erin.term().success());

    // Dave is parked at relay b (no connection to it) when its process is killed: its
    // beacons stop, and he is registered with another relay within 5 s all the same.
    until("dave parked", Duration::from_secs(10), || {
        metric(&mb, "p2pcall_relay_peers_parked") == 1
    });
    rb.child.kill().unwrap();
    let killed = Instant::now();
    rb.child.wait().unwrap();
    let moved = dave.expect("relay_connected");
    let took = killed.elapsed();
    assert_ne!(moved["relay_addr"], addr_b.as_str(), "{moved}");
    assert!(
        took < Duration::from_secs(5),
        "parked dave moved after {took:?}"
    );
    eprintln!("parked dave re-registered {took:?} after relay b was killed");
    drop(dave);
    let mut c = peer("erin", &addr_b);
    c.args(["chat", &alice_id, "relay b is down"]);
    let (out, err, code) = run(c);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["state"], "delivered", "{out:?}");
    // Frank never met relay b: the relays his settings name stand in for it.
    let frank = root.join("frank");
    std::fs::create_dir_all(&frank).unwrap();
    std::fs::write(
        frank.join("config.toml"),
        format!("relay = \"{addr_b}\"\nrelays = [\"{addr_c}\"]\n"),
    )
    .unwrap();
    let mut c = cmd(&frank);
    c.args([
        "--json",
        "--relay-only",
        "chat",
        &alice_id,
        "from the settings' relays",
    ]);
    let (out, err, code) = run(c);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["state"], "delivered", "{out:?}");
}
