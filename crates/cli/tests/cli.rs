//! The real `p2pcall` binary, end to end on loopback: relay, id, listen, peers, ping,
//! metrics, SIGTERM, and the error paths a user meets first.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Duration;

use serde_json::Value;

mod common;
use common::*;

#[test]
fn relay_listen_peers_ping_metrics_and_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let (rdir, adir, bdir) = (
        tmp.path().join("r"),
        tmp.path().join("a"),
        tmp.path().join("b"),
    );

    let mut relay_cmd = cmd(&rdir);
    relay_cmd.args([
        "--json",
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let mut relay = Proc::spawn(relay_cmd);
    let started = relay.expect("relay_started");
    let udp = started["udp"].as_str().unwrap().to_string();
    let metrics = started["metrics"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();

    let mut id_cmd = cmd(&adir);
    id_cmd.args(["--json", "id"]);
    let id = json_out(id_cmd);
    assert_eq!(id["created"], true);
    let fp = id["fingerprint"].as_str().unwrap().to_string();
    let mut again = cmd(&adir);
    again.args(["--json", "id"]);
    assert_eq!(
        json_out(again)["fingerprint"],
        fp.as_str(),
        "the identity persists"
    );

    let mut listen_cmd = cmd(&adir);
    listen_cmd.args(["--json", "--relay", &udp, "--name", "alice", "listen"]);
    let mut listen = Proc::spawn(listen_cmd);
    listen.expect("relay_connected");

    let mut peers_cmd = cmd(&bdir);
    peers_cmd.args(["--json", "--relay", &udp, "--name", "bob", "peers"]);
    let peers = json_out(peers_cmd);
    let list = peers.as_array().unwrap();
    assert!(
        list.iter()
            .any(|p| p["fingerprint"] == fp.as_str() && p["name"] == "alice"),
        "{peers}"
    );

    let mut ping_cmd = cmd(&bdir);
    ping_cmd.args([
        "--json",
        "--relay",
        &udp,
        "ping",
        &fp[..9],
        "--count",
        "3",
        "--interval",
        "100",
    ]);
    let out = ping_cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["event"], "connected");
    // One peer object everywhere: id, fingerprint, name.
    assert_eq!(lines[0]["peer"]["fingerprint"], fp.as_str(), "{}", lines[0]);
    assert_eq!(lines[0]["peer"]["name"], "alice", "{}", lines[0]);
    assert_eq!(lines[0]["peer"]["id"].as_str().map(str::len), Some(64));
    assert_eq!(
        lines[0]["safety_number"]
            .as_str()
            .unwrap()
            .chars()
            .filter(char::is_ascii_digit)
            .count(),
        60
    );
    let pings: Vec<_> = lines.iter().filter(|l| l["event"] == "ping").collect();
    assert_eq!(pings.len(), 3);
    // Pings are datagrams: on a loaded 2-core machine (tests run in parallel) one may be
    // lost, and the summary must say so.
    let answered = pings
        .iter()
        .filter(|p| p["rtt_ms"].as_f64().is_some())
        .count();
    assert!(answered >= 1, "{pings:?}");
    let summary = lines.last().unwrap();
    assert_eq!(
        (summary["event"].as_str(), summary["received"].as_u64()),
        (Some("summary"), Some(answered as u64))
    );
    // The listener saw the connection, with the same safety number.
    let conn = listen.expect("connected");
    assert_eq!(conn["safety_number"], lines[0]["safety_number"]);

    // netcheck: on loopback the relay sees our own address on both reflection ports; the
    // report lists that address once.
    let mut nc = cmd(&bdir);
    nc.args(["--json", "--relay", &udp, "netcheck"]);
    let report = json_out(nc);
    assert_eq!(report["udp"], true, "{report}");
    assert_eq!(report["mapping"], "none (public address)", "{report}");
    assert_eq!(report["observed"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["port_preserved"], true, "{report}");
    assert!(
        report["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().starts_with("127.0.0.1:"))
    );

    // ping --watch runs until SIGTERM and still prints its summary.
    let mut watch_cmd = cmd(&bdir);
    watch_cmd.args([
        "--json",
        "--relay",
        &udp,
        "ping",
        &fp,
        "--watch",
        "--interval",
        "50",
    ]);
    let mut watch = Proc::spawn(watch_cmd);
    watch.expect("connected");
    // Ping datagrams are unreliable: one in flight while the path switches to direct can
    // be lost. Wait for three answered ones.
    let mut answered = 0;
    while answered < 3 {
        answered += usize::from(!watch.expect("ping")["rtt_ms"].is_null());
    }
    assert!(watch.term().success());
    let summary = watch.expect("summary");
    assert!(summary["received"].as_u64().unwrap() >= 3, "{summary}");

    let m = http_get(&metrics, "/metrics");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(m.contains("p2pcall_relay_peers_online 1"), "{m}");
    assert!(
        m.contains("p2pcall_relay_drops_total{reason=\"rate_limited\"} 0"),
        "{m}"
    );
    assert!(http_get(&metrics, "/healthz").ends_with("ok\n"));
    assert!(http_get(&metrics, "/nope").starts_with("HTTP/1.1 404"));

    // SIGTERM: the relay says goodbye and exits cleanly; the listener notices.
    assert!(relay.term().success());
    let gone = listen.expect("relay_disconnected");
    assert!(
        gone["reason"].as_str().unwrap().contains("shutting down"),
        "{gone}"
    );
    assert!(listen.term().success());
}

/// The README's first command: every step of the demo succeeds (it failed at the chat step
/// from the day message requests came until the demo accepted alice's request).
#[test]
fn the_demo_succeeds_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cmd(tmp.path());
    c.args(["--json", "demo", "--bytes", "4MiB"]);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for step in ["presence", "signal", "chat", "files", "call"] {
        assert_eq!(v[format!("{step}_ok")], true, "{step}: {v}");
    }
}

#[test]
fn user_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let (rdir, adir) = (tmp.path().join("r"), tmp.path().join("a"));

    // No relay configured.
    let out = cmd(&adir).arg("peers").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no relay configured") && err.contains("--relay"),
        "{err}"
    );

    // A relay that requires a token.
    let mut relay_cmd = cmd(&rdir);
    relay_cmd.args([
        "--json",
        "--token",
        "sesame",
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--no-tcp",
    ]);
    let relay = Proc::spawn(relay_cmd);
    let udp = relay.expect("relay_started")["udp"]
        .as_str()
        .unwrap()
        .to_string();
    let out = cmd(&adir)
        .args(["--relay", &udp, "peers"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token"), "{err}");
    let ok = cmd(&adir)
        .args(["--relay", &udp, "--token", "sesame", "peers"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("nobody else is online"));

    // An unknown peer.
    let out = cmd(&adir)
        .args(["--relay", &udp, "--token", "sesame", "ping", "abcd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(9), "no such peer");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no contact or peer matches"));

    // A known peer that is offline: the relay's presence says so, no connection attempt
    // waits for a timeout.
    let bdir = tmp.path().join("b");
    let bob = cmd(&bdir)
        .args([
            "--relay", &udp, "--token", "sesame", "--name", "bob", "peers",
        ])
        .output()
        .unwrap();
    assert!(bob.status.success());
    let mut listen = cmd(&bdir);
    listen.args([
        "--json", "--relay", &udp, "--token", "sesame", "--name", "bob", "listen",
    ]);
    let mut bob = Proc::spawn(listen);
    bob.expect("relay_connected");
    let seen = cmd(&adir)
        .args(["--relay", &udp, "--token", "sesame", "peers"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&seen.stdout).contains("bob"));
    assert!(bob.term().success());
    // A name from the network reaches nobody until its owner is a contact.
    let out = cmd(&adir)
        .args(["--relay", &udp, "--token", "sesame", "ping", "bob"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{err}");
    let bob_id = json_out({
        let mut c = cmd(&bdir);
        c.args(["--json", "id"]);
        c
    })["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = cmd(&adir)
        .args(["--relay", &udp, "--token", "sesame", "add", &bob_id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is your contact \"bob\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for what in [&["ping", "bob"][..], &["send", "bob", "Cargo.toml"][..]] {
        let out = cmd(&adir)
            .args(["--relay", &udp, "--token", "sesame"])
            .args(what)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{what:?}: {err}");
        assert!(err.contains("bob is offline"), "{err}");
    }
    let out = cmd(&adir)
        .args(["--relay", &udp, "--token", "sesame", "chat", "bob", "hi"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("queued") && said.contains("delivered when bob is online"),
        "{said}"
    );

    // Nothing listens at the relay's address: UDP and TCP both refuse at once.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = cmd(&adir)
        .args(["--json", "--relay", &format!("127.0.0.1:{port}"), "peers"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "relay unreachable");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["exit_code"], 4);
    let err = line["error"].as_str().unwrap();
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("check the address"),
        "{err}"
    );

    // A key file others can read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = adir.join("identity.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = cmd(&adir).arg("id").output().unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    }
}

/// What the command line itself promises: JSON errors for scripts, help that separates the
/// global options and shows examples, a remembered display name, the usual boolean spellings
/// in the environment, and a closed standard output that stops a command quietly.
#[test]
fn the_command_line_serves_scripts_and_people() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");

    // A wrong command line, with --json: an error object on stdout, exit code 2.
    let out = cmd(&dir).args(["--json", "chat"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["event"], "error", "{err}");
    assert_eq!(err["exit_code"], 2, "{err}");
    assert!(err["error"].as_str().unwrap().contains("required"), "{err}");
    // Without --json: clap's own message on stderr, same code.
    let out = cmd(&dir).args(["chat"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());

    // A command's help: its own options, then the global ones apart, then examples.
    let out = cmd(&dir).args(["ping", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let global = help.find("Global options").expect("a global section");
    assert!(help.find("--count").unwrap() < global, "{help}");
    assert!(help.find("--relay").unwrap() > global, "{help}");
    assert!(help.contains("Examples:"), "{help}");
    let out = cmd(&dir).args(["speedtest", "--help"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("[default: 256MiB]"),
        "sizes are shown for people"
    );

    // The display name is kept once set; --name overrides it for one run.
    let out = cmd(&dir).args(["name", "Ada L."]).output().unwrap();
    assert!(out.status.success());
    let mut c = cmd(&dir);
    c.args(["--json", "name"]);
    let v = json_out(c);
    assert_eq!(
        (v["name"].as_str(), v["source"].as_str()),
        (Some("Ada L."), Some("settings"))
    );
    let mut c = cmd(&dir);
    c.args(["--json", "--name", "other", "id"]);
    assert_eq!(json_out(c)["name"], "other");
    let mut c = cmd(&dir);
    c.args(["--json", "id"]);
    assert_eq!(json_out(c)["name"], "Ada L.");
    let out = cmd(&dir).args(["name", "  "]).output().unwrap();
    assert!(!out.status.success(), "an empty name is refused");

    // Boolean environment variables take 1/0 as well as true/false.
    let out = cmd(&dir)
        .env("P2PCALL_NO_PORT_MAPPING", "1")
        .arg("id")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nobody reads stdout any more: the relay stops as on Ctrl-C, without a panic.
    let mut c = cmd(&tmp.path().join("r"));
    c.args([
        "--json",
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--no-tcp",
        "--no-reflect",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the relay kept running with its stdout closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_relay_takes_its_settings_from_a_file_and_the_command_line_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("relay.toml");
    std::fs::write(
        &file,
        // A cluster whose NATS is not there: the relay serves its own peers all the same.
        "listen = \"127.0.0.1:0\"\ntoken = \"from-the-file\"\ntcp = false\nreflect = false\nmax_peers = 5\ncluster = \"nats://127.0.0.1:1\"\nregion = \"test\"\n",
    )
    .unwrap();
    let mut c = cmd(&tmp.path().join("r"));
    c.args(["--json", "relay", "--config"])
        .arg(&file)
        .args(["--max-peers", "7"]);
    let relay = Proc::spawn(c);
    let started = relay.expect("relay_started");
    assert_eq!(started["token_required"], true);
    assert!(
        started["tcp"].is_null() && started["reflect"].is_null(),
        "{started}"
    );
    assert_eq!(started["cluster"]["region"], "test", "{started}");
    assert_eq!(started["cluster"]["servers"][0], "nats://127.0.0.1:1");
    let udp = started["udp"].as_str().unwrap().to_string();
    let peers = |token: Option<&str>| {
        let mut c = cmd(&tmp.path().join("a"));
        c.args(["--json", "--relay", &udp]);
        if let Some(t) = token {
            c.args(["--token", t]);
        }
        c.arg("peers");
        run(c)
    };
    let (_, err, code) = peers(Some("from-the-file"));
    assert_eq!(code, Some(0), "{err}");
    let (out, _, code) = peers(None);
    assert_eq!(code, Some(6), "{out:?}");
    // A misspelt setting stops the relay, naming it.
    std::fs::write(&file, "max_peer = 3\n").unwrap();
    let mut c = cmd(&tmp.path().join("r2"));
    c.args(["relay", "--config"]).arg(&file);
    let (_, err, code) = run(c);
    assert_ne!(code, Some(0));
    assert!(err.contains("max_peer"), "{err}");
}
