//! One engine per identity, through the real binary: with `p2pcall daemon` running, other
//! commands on its data dir use it (the relay keeps one session for the key), a second
//! engine is refused with who runs the first, and a listener that owns its engine serves
//! the same commands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::path::Path;

use common::*;

#[test]
fn commands_use_the_running_engine_and_a_second_engine_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (rdir, adir, bdir) = (
        tmp.path().join("r"),
        tmp.path().join("a"),
        tmp.path().join("b"),
    );
    let (_relay, udp) = relay(&rdir, &[]);
    let peer = |dir: &Path, name: &str| {
        let mut c = cmd(dir);
        c.args(["--json", "--relay", &udp, "--name", name]);
        c
    };
    // First contact is by key (a name from the network reaches nobody who is not a contact).
    let (alice_id, bob_id) = (id_of(&adir), id_of(&bdir));

    let mut c = peer(&adir, "alice");
    c.arg("daemon");
    let mut daemon = Proc::spawn(c);
    let started = daemon.expect("daemon_started");
    assert_eq!(started["pid"], daemon.child.id(), "{started}");
    daemon.expect("relay_connected");

    // Bob listens on his own engine, which serves his data dir the same way.
    let bob_inbox = tmp.path().join("bob-inbox");
    let mut c = peer(&bdir, "bob");
    c.args(["listen", "--from", "anyone", "--accept-files"])
        .arg(&bob_inbox);
    let mut bob = Proc::spawn(c);
    bob.expect("relay_connected");

    // A second terminal of alice's follows her daemon's events.
    let mut c = peer(&adir, "alice");
    c.arg("listen");
    let mut follower = Proc::spawn(c);

    // Alice's commands go through her daemon: no second login with her key.
    let (out, err, code) = run({
        let mut c = peer(&adir, "alice");
        c.arg("peers");
        c
    });
    assert_eq!(code, Some(0), "{err}");
    let list = out[0].as_array().unwrap();
    assert!(list.iter().any(|p| p["name"] == "bob"), "{out:?}");
    let (out, err, code) = run({
        let mut c = peer(&adir, "alice");
        c.args(["chat", &bob_id, "hello", "through", "the", "daemon"]);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["state"], "delivered", "{out:?}");
    // Alice is not bob's contact (yet): a message request.
    assert_eq!(
        bob.expect("message_request")["text"],
        "hello through the daemon"
    );

    // Bob's second terminal: its chat goes through bob's listener.
    let (out, err, code) = run({
        let mut c = peer(&bdir, "bob");
        c.args(["chat", &alice_id, "and back"]);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["state"], "delivered", "{out:?}");
    let got = follower.expect("message");
    assert_eq!(
        (got["text"].clone(), got["outgoing"].clone()),
        ("and back".into(), false.into())
    );

    // Offers wait in alice's daemon and are answered one at a time.
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, b"offered through a daemon").unwrap();
    let cdir = tmp.path().join("c");
    let send = |dir: &Path| {
        let mut c = peer(dir, "carol");
        c.args(["send", &alice_id]).arg(&file);
        Proc::spawn(c)
    };
    let mut first = send(&cdir);
    let waiting = loop {
        let (out, err, code) = run({
            let mut c = peer(&adir, "alice");
            c.arg("offers");
            c
        });
        assert_eq!(code, Some(0), "{err}");
        if let Some(o) = out[0].as_array().unwrap().first() {
            break o.clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(waiting["peer"]["name"], "carol", "{waiting}");
    assert_eq!(
        waiting["tops"],
        serde_json::json!(["notes.txt"]),
        "{waiting}"
    );
    let id = waiting["id"].as_str().unwrap().to_string();
    let inbox = tmp.path().join("inbox");
    let (out, err, code) = run({
        let mut c = peer(&adir, "alice");
        c.args(["accept", &id[..8], "--to"]).arg(&inbox);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["id"], id.as_str(), "{out:?}");
    assert_eq!(
        first.child.wait().unwrap().code(),
        Some(0),
        "the send completes"
    );
    assert_eq!(
        std::fs::read(inbox.join("notes.txt")).unwrap(),
        b"offered through a daemon"
    );
    let mut second = send(&cdir);
    let id = loop {
        let (out, _, _) = run({
            let mut c = peer(&adir, "alice");
            c.arg("offers");
            c
        });
        if let Some(o) = out[0].as_array().unwrap().first() {
            break o["id"].as_str().unwrap().to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let (_, err, code) = run({
        let mut c = peer(&adir, "alice");
        c.args(["reject", &id]);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(second.child.wait().unwrap().code(), Some(7), "declined");
    let (_, _, code) = run({
        let mut c = peer(&adir, "alice");
        c.args(["accept", &id]);
        c
    });
    assert_eq!(code, Some(1), "an offer answered already is gone");

    // Alice sends through her daemon: the summary when bob has it all.
    let (out, err, code) = run({
        let mut c = peer(&adir, "alice");
        c.args(["send", "bob"]).arg(&file);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    let done = out
        .iter()
        .find(|v| v["event"] == "transfer_done")
        .expect("a summary");
    assert_eq!(done["files"], 1, "{done}");
    assert_eq!(
        std::fs::read(bob_inbox.join("notes.txt")).unwrap(),
        b"offered through a daemon"
    );

    // A second engine on alice's data dir is refused, naming the daemon.
    let (out, err, code) = run({
        let mut c = peer(&adir, "alice");
        c.arg("daemon");
        c
    });
    assert_eq!(code, Some(1), "{err}");
    let why = out[0]["error"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!("`p2pcall daemon`, pid {}", daemon.child.id())),
        "{out:?}"
    );

    // Nobody's session was replaced meanwhile: both are still online, the daemon answers.
    let (out, err, code) = run({
        let mut c = peer(&adir, "alice");
        c.arg("peers");
        c
    });
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out[0]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "bob")
    );
    // The daemon killed: the attached listener says so, with its own exit code.
    daemon.child.kill().unwrap();
    let _ = daemon.child.wait();
    let stopped = follower.expect("error");
    assert_eq!(stopped["exit_code"], 10, "{stopped}");
    assert!(
        stopped["error"]
            .as_str()
            .unwrap()
            .contains("daemon stopped"),
        "{stopped}"
    );
    assert_eq!(follower.child.wait().unwrap().code(), Some(10));
    assert!(bob.term().success());

    // The daemon gone, commands run their own engine again.
    let (out, err, code) = run({
        let mut c = peer(&adir, "alice");
        c.args(["chat", "bob", "queued now"]);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["state"], "queued", "{out:?}");
}

#[test]
fn a_killed_daemon_loses_nothing_it_acknowledged_and_resumes_its_transfer() {
    let tmp = tempfile::tempdir().unwrap();
    let (adir, bdir) = (tmp.path().join("a"), tmp.path().join("b"));
    // 80 Mbit/s per peer through the relay, peers on the relay path: a transfer lasts long
    // enough to kill the daemon in the middle.
    let (_relay, udp) = relay(&tmp.path().join("r"), &["--mbit-rate", "80"]);
    let peer = |dir: &Path, name: &str| {
        let mut c = cmd(dir);
        c.args(["--json", "--relay-only", "--relay", &udp, "--name", name]);
        c
    };
    let daemon = || {
        let mut c = peer(&adir, "alice");
        c.arg("daemon");
        let d = Proc::spawn(c);
        d.expect("relay_connected");
        d
    };
    let (bob_id, _) = {
        let mut c = cmd(&bdir);
        c.args(["--json", "id"]);
        let v = json_out(c);
        (v["id"].as_str().unwrap().to_string(), ())
    };

    // Bob is offline: the daemon acknowledges the message as queued, then is killed.
    let mut d = daemon();
    let (out, err, code) = run({
        let mut c = peer(&adir, "alice");
        c.args(["chat", &bob_id, "kept across a kill -9"]);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["state"], "queued", "{out:?}");
    d.child.kill().unwrap();
    d.child.wait().unwrap();

    // Bob comes online; the restarted daemon delivers the message by itself.
    let inbox = tmp.path().join("inbox");
    let mut c = peer(&bdir, "bob");
    c.args(["listen", "--from", "anyone", "--accept-files"])
        .arg(&inbox);
    let bob = Proc::spawn(c);
    bob.expect("relay_connected");
    let mut d = daemon();
    assert_eq!(
        bob.expect("message_request")["text"],
        "kept across a kill -9"
    );

    // A 40 MiB file sent through the daemon; the daemon is killed once 12 MiB are verified.
    let file = tmp.path().join("big.bin");
    let data: Vec<u8> = (0..40u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let mut c = peer(&adir, "alice");
    c.args(["send", &bob_id]).arg(&file);
    let mut sender = Proc::spawn(c);
    loop {
        let p = bob.expect("transfer_progress");
        if p["done_bytes"].as_u64().unwrap() >= 12 << 20 {
            break;
        }
    }
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    // The command that asked for it learns that its daemon is gone.
    assert_eq!(sender.child.wait().unwrap().code(), Some(10));

    // The restarted daemon resumes the transfer on its own, from the verified chunks.
    let _d = daemon();
    bob.expect("transfer_resumed");
    let done = bob.expect("transfer_done");
    assert!(done["resumed_bytes"].as_u64().unwrap() >= 8 << 20, "{done}");
    assert_eq!(std::fs::read(inbox.join("big.bin")).unwrap(), data);
}

#[test]
fn calls_pings_and_speed_tests_go_through_the_daemon_and_calls_are_answered_one_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (adir, bdir) = (tmp.path().join("a"), tmp.path().join("b"));
    let (_relay, udp) = relay(&tmp.path().join("r"), &[]);
    let peer = |dir: &Path, name: &str| {
        let mut c = cmd(dir);
        c.args(["--json", "--relay", &udp, "--name", name]);
        c
    };
    let daemon = |dir: &Path, name: &str| {
        let mut c = peer(dir, name);
        c.arg("daemon");
        let d = Proc::spawn(c);
        d.expect("relay_connected");
        d
    };
    let _alice = daemon(&adir, "alice");
    let _bob = daemon(&bdir, "bob");

    // Bob's `listen --answer`, attached to his daemon, installs the policy there; the
    // recording's relative path is the listener's, not the daemon's.
    let mut c = peer(&bdir, "bob");
    c.current_dir(tmp.path())
        .args(["listen", "--from", "anyone", "--answer", "--video", "none"])
        .args(["--speaker", "none"])
        .args(["--record-video", "rec.y4m", "--accept-files", "inbox"]);
    let mut listener = Proc::spawn(c);
    let attached = listener.expect("attached");
    assert_eq!(attached["answer"], true, "{attached}");
    assert_eq!(
        attached["accept_files"],
        tmp.path().join("inbox").to_str().unwrap(),
        "{attached}"
    );
    let alice = |args: &[&str]| {
        let mut c = peer(&adir, "alice");
        c.args(args);
        run(c)
    };
    // The first call is by key: from then on bob is alice's contact, reached by name.
    let bob_id = id_of(&bdir);
    let (out, err, code) = alice(&["call", &bob_id, "--duration", "2", "--speaker", "none"]);
    assert_eq!(code, Some(0), "{err}");
    let kinds: Vec<&str> = out.iter().filter_map(|v| v["event"].as_str()).collect();
    for k in ["call_started", "call_stats", "call_ended"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let end = out.iter().find(|v| v["event"] == "call_ended").unwrap();
    assert_eq!(end["reason"], "finished", "{end}");
    assert_eq!(listener.expect("call_started")["event"], "call_started");
    listener.expect("call_ended");
    let rec = std::fs::read(tmp.path().join("rec.y4m")).unwrap();
    assert!(rec.starts_with(b"YUV4MPEG2"), "a recording");
    assert!(
        rec.len() > 640 * 360 * 3 / 2 * 10,
        "{} bytes recorded",
        rec.len()
    );

    // Files are accepted by the policy, and the listener reports them as its own would.
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, b"accepted by a policy").unwrap();
    let (_, err, code) = alice(&["send", "bob", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let done = listener.expect("transfer_done");
    assert_eq!(done["files"], 1, "{done}");
    assert_eq!(
        std::fs::read(tmp.path().join("inbox/notes.txt")).unwrap(),
        b"accepted by a policy"
    );

    // A new name is announced by the running daemon at once.
    let (out, err, code) = alice(&["name", "Alice Liddell"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["announced"], true, "{out:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (out, _, _) = {
            let mut c = peer(&bdir, "bob");
            c.arg("peers");
            run(c)
        };
        if out[0]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Alice Liddell")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob never saw the new name"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Ping, speed test and NAT check through alice's daemon.
    let (out, err, code) = alice(&["ping", "bob", "--count", "2", "--interval", "100"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["event"], "connected", "{out:?}");
    assert_eq!(out[0]["peer"]["name"], "bob", "{out:?}");
    let summary = out.last().unwrap();
    assert_eq!(summary["received"], 2, "{summary}");
    let (out, err, code) = alice(&["speedtest", "bob", "--bytes", "2MB"]);
    assert_eq!(code, Some(0), "{err}");
    let result = out.iter().find(|v| v["event"] == "result").unwrap();
    assert_eq!(result["verified"], true, "{result}");
    assert_eq!(result["bytes"], 2_000_000, "{result}");
    let (out, err, code) = alice(&["netcheck"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["udp"], true, "{out:?}");
    assert_eq!(out[0]["relay_transport"], "udp", "{out:?}");

    // The listener gone, its policy goes with it: calls ring in bob's daemon until bob
    // answers or declines one.
    assert!(listener.term().success());
    let call = || {
        let mut c = peer(&adir, "alice");
        c.args(["call", "bob", "--duration", "1", "--speaker", "none"]);
        Proc::spawn(c)
    };
    let bob = |args: &[&str]| {
        let mut c = peer(&bdir, "bob");
        c.args(args);
        run(c)
    };
    let mut caller = call();
    caller.expect("call_ringing");
    let (out, err, code) = bob(&["decline"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["event"], "call_declined", "{out:?}");
    assert_eq!(caller.child.wait().unwrap().code(), Some(7), "declined");
    let (_, _, code) = bob(&["decline"]);
    assert_eq!(code, Some(1), "nothing rings any more");

    let mut caller = call();
    caller.expect("call_ringing");
    let (out, err, code) = bob(&["answer", "--video", "none", "--speaker", "none"]);
    assert_eq!(code, Some(0), "{err}");
    let kinds: Vec<&str> = out.iter().filter_map(|v| v["event"].as_str()).collect();
    assert!(kinds.contains(&"call_started"), "{kinds:?}");
    let end = out.iter().find(|v| v["event"] == "call_ended").unwrap();
    assert_eq!(end["reason"], "hung_up_by_peer", "{end}");
    assert_eq!(caller.child.wait().unwrap().code(), Some(0));
}

#[test]
fn the_app_starts_a_daemon_in_a_background_process_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let (_relay, udp) = relay(&tmp.path().join("r"), &[]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!("name = \"alice\"\nrelay = \"{udp}\"\nport_mapping = false\n"),
    )
    .unwrap();
    let dirs = p2pcall_core::settings::Dirs::resolve(Some(&dir)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // What the app does with `keep_online` (or "Restart the daemon").
    rt.block_on(p2pcall_app::start_daemon(std::path::Path::new(BIN), &dirs))
        .unwrap();
    let status = rt.block_on(async {
        let mut c = p2pcall_daemon::Client::connect(&dir, "test")
            .await
            .unwrap()
            .expect("the daemon serves the data dir");
        c.call(p2pcall_api::Request::Status).await.unwrap()
    });
    let p2pcall_api::Answer::Status(status) = status else {
        panic!("{status:?}")
    };
    // Not left running if this test fails.
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
    let _reap = Reap(status.pid);
    let (out, err, code) = run({
        let mut c = cmd(&dir);
        c.args(["--json", "peers"]);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    assert!(out[0].is_array(), "{out:?}");
    assert_eq!(status.name, "alice");
    assert_ne!(status.pid, std::process::id(), "a process of its own");
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap();
    assert!(log.contains("local API"), "{log}");
    // It stops on SIGTERM like any daemon.
    let killed = std::process::Command::new("kill")
        .arg(status.pid.to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // (A connection in the middle of its shutdown may be reset rather than refused.)
    while matches!(
        rt.block_on(p2pcall_daemon::Client::connect(&dir, "test")),
        Ok(Some(_))
    ) {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon is still serving"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
