//! The real binary: chat queued for an offline peer and delivered by `listen`; `history`;
//! `send` accepted by `listen --accept-files`, declined without it, and resumed after the
//! receiving process was killed (SIGKILL) in the middle of a transfer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::path::Path;

use common::*;
use serde_json::Value;

fn pattern(n: usize) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Full id and fingerprint.
fn id_of(dir: &Path) -> (String, String) {
    let mut c = cmd(dir);
    c.args(["--json", "id"]);
    let v = json_out(c);
    let s = |k: &str| v[k].as_str().unwrap().to_string();
    (s("id"), s("fingerprint"))
}

#[test]
fn chat_history_send_and_resume_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let (rdir, adir, bdir) = (
        tmp.path().join("r"),
        tmp.path().join("a"),
        tmp.path().join("b"),
    );
    // The relay forwards 80 Mbit/s per peer; peers stay on the relay path (--relay-only) so a
    // transfer takes long enough to be interrupted.
    let (_relay, udp) = relay(&rdir, &["--mbit-rate", "80"]);
    let peer = |dir: &Path, name: &str| {
        let mut c = cmd(dir);
        c.args(["--json", "--relay-only", "--relay", &udp, "--name", name]);
        c
    };
    let (alice, alice_fp) = id_of(&adir);

    // Alice is offline: bob's message is queued. The words after the peer are the message.
    let mut c = peer(&bdir, "bob");
    c.args(["chat", &alice, "hello", "from", "the", "past"]);
    let (out, err, code) = run(c);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out[0]["state"], "queued", "{out:?}");
    assert_eq!(out[0]["text"], "hello from the past", "{out:?}");
    assert_eq!(out[0]["peer"]["id"], alice.as_str(), "{out:?}");
    // `-` reads the message from standard input.
    let mut c = peer(&bdir, "bob");
    c.args(["chat", &alice, "-"])
        .stdin(std::process::Stdio::piped());
    c.stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"line one\nline two\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["text"], "line one\nline two", "{m}");

    // Alice listens (accepting files), then bob's listener delivers on its own.
    let inbox = tmp.path().join("inbox");
    let mut c = peer(&adir, "alice");
    c.args(["listen", "--from", "anyone", "--accept-files"])
        .arg(&inbox);
    let a_listen = Proc::spawn(c);
    a_listen.expect("relay_connected");
    let mut c = peer(&bdir, "bob");
    c.arg("listen");
    let mut b_listen = Proc::spawn(c);
    // Bob is not alice's contact: his messages are a message request.
    let m = a_listen.expect("message_request");
    assert_eq!(m["text"], "hello from the past");
    assert_eq!(m["request"], true);
    assert_eq!(
        a_listen.expect("message_request")["text"],
        "line one\nline two"
    );
    // Both messages delivered.
    let mut delivered = 0;
    while delivered < 2 {
        let s = b_listen.expect("message_state");
        if s["state"] == "delivered" {
            delivered += 1;
        }
    }
    b_listen.term();
    let mut c = cmd(&bdir);
    c.args(["--json", "history", &alice_fp[..9]]);
    let h = json_out(c);
    assert_eq!(h["messages"][0]["text"], "hello from the past");
    assert_eq!(h["messages"][0]["state"], "delivered");
    assert_eq!(h["messages"][0]["outgoing"], true);
    assert_eq!(h["messages"][1]["state"], "delivered");
    assert_eq!(h["peer"]["id"], alice.as_str(), "{h}");

    // A 40 MiB file: kill the receiving process once 12 MiB are verified (chunks are
    // recorded every 8 MiB).
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let file = src.join("big.bin");
    std::fs::write(&file, pattern(40 << 20)).unwrap();
    let mut c = peer(&bdir, "bob");
    c.args(["send", &alice]).arg(&file);
    let mut sender = Proc::spawn(c);
    let offer = a_listen.expect("transfer_offer");
    assert_eq!(offer["total_bytes"], 40 << 20);
    loop {
        let p = a_listen.expect("transfer_progress");
        if p["done_bytes"].as_u64().unwrap() >= 12 << 20 {
            break;
        }
    }
    let mut a_listen = a_listen;
    a_listen.child.kill().unwrap(); // SIGKILL
    a_listen.child.wait().unwrap();
    // The network is gone for the sender too (it would notice at its idle timeout).
    sender.child.kill().unwrap();
    sender.child.wait().unwrap();
    assert!(
        !inbox.join("big.bin").exists(),
        "no final file before verification"
    );

    // Both come back: the same command resumes from the verified chunks.
    let mut c = peer(&adir, "alice");
    c.args(["listen", "--from", "anyone", "--accept-files"])
        .arg(&inbox);
    let a_listen = Proc::spawn(c);
    a_listen.expect("relay_connected");
    let mut c = peer(&bdir, "bob");
    c.args(["send", &alice_fp[..9]]).arg(&file);
    let (out, err, code) = run(c);
    assert_eq!(code, Some(0), "{err}");
    let done = out.iter().find(|l| l["event"] == "transfer_done").unwrap();
    let resumed = done["resumed_bytes"].as_u64().unwrap();
    assert!(resumed >= 8 << 20, "{done}");
    a_listen.expect("transfer_resumed");
    let got = a_listen.expect("transfer_done");
    assert_eq!(got["resumed_bytes"], resumed);
    assert_eq!(
        std::fs::read(inbox.join("big.bin")).unwrap(),
        pattern(40 << 20)
    );
    assert_eq!(
        done["blake3"][0]["blake3"].as_str().unwrap(),
        blake3::hash(&pattern(40 << 20)).to_hex().as_str()
    );

    // A listener that does not accept files declines with a reason the sender sees.
    drop(a_listen);
    let mut c = peer(&adir, "alice");
    c.arg("listen");
    let a_listen = Proc::spawn(c);
    a_listen.expect("relay_connected");
    let mut c = peer(&bdir, "bob");
    c.args(["send", &alice]).arg(&file);
    let (out, _, code) = run(c);
    assert_ne!(code, Some(0), "{out:?}");
    let err = out.iter().find(|l| l["event"] == "error").unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains("declined") && err.contains("--accept-files"),
        "{err}"
    );
}

#[test]
fn what_a_peer_writes_never_drives_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let (_relay, udp) = relay(&tmp.path().join("r"), &[]);
    let peer = |dir: &Path, name: &str| {
        let mut c = cmd(dir);
        c.args(["--relay", &udp, "--name", name]);
        c
    };
    // Bob reads his messages in a terminal (text, not JSON).
    let (bob_id, _) = id_of(&tmp.path().join("b"));
    let mut c = peer(&tmp.path().join("b"), "bob");
    c.arg("listen");
    let mut bob = Proc::spawn(c);
    // Online before alice writes (else her message waits for a later meeting: under load
    // bob's start-up took longer than alice's whole `chat`).
    let ready = bob
        .lines
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("bob listening");
    assert!(ready.contains("listening as"), "{ready}");
    let (_, err, code) = run({
        let mut c = peer(&tmp.path().join("a"), "alice");
        c.args([
            "--json",
            "chat",
            &bob_id,
            "\u{1b}]0;pwned\u{7}\u{1b}[2J hi\rfrom your bank: pay now \u{202E}txt.exe",
        ]);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    let line = loop {
        let l = bob
            .lines
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the message");
        if l.contains("pwned") {
            break l;
        }
    };
    for bad in ['\u{1b}', '\u{7}', '\r', '\u{202E}'] {
        assert!(
            !line.contains(bad),
            "{bad:?} reached the terminal: {line:?}"
        );
    }
    assert!(line.contains("\\u001b]0;pwned\\u0007"), "{line}");
    assert!(line.contains("\\u202etxt.exe"), "{line}");
    assert!(bob.term().success());
}
