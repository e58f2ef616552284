//! The local API end to end: engines on a real relay, clients on real Unix sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use p2pcall_api::{Answer, ErrorKind, Event, Request, VERSION};
use p2pcall_core::Store;
use p2pcall_core::engine::{Engine, EngineConfig, EngineHandle};
use p2pcall_daemon::{ApiServer, Client, DaemonError, Hub, Served};
use p2pcall_net::RelayConfig;
use p2pcall_relay::Relay;
use p2pcall_transport::Identity;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const T: Duration = Duration::from_secs(20);

/// An engine serving the API at `dir/api.sock`, its events published to the hub.
async fn engine(relay: &Relay, dir: &Path, name: &str) -> (EngineHandle, ApiServer, PathBuf) {
    let mut cfg = EngineConfig::new(
        Identity::generate().unwrap(),
        name.into(),
        Some(RelayConfig::new(relay.udp_addr)),
    );
    cfg.port_mapping = false;
    cfg.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.store = Some(Arc::new(Store::open_in_memory().unwrap()));
    let (h, mut events) = Engine::start(cfg).await.unwrap();
    h.wait_relay(T).await.unwrap();
    let hub = Arc::new(Hub::default());
    let feed = hub.clone();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            feed.publish(&e);
        }
    });
    let path = dir.join("api.sock");
    let served = Served {
        engine: h.clone(),
        hub,
        data_dir: dir.to_path_buf(),
        downloads: dir.join("downloads"),
    };
    let server = ApiServer::start(path.clone(), served).unwrap();
    (h, server, path)
}

async fn client(path: &Path) -> Client {
    Client::connect_at(path, "test")
        .await
        .unwrap()
        .expect("an engine serves it")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_chats_through_the_engine_and_a_subscriber_sees_it_arrive() {
    let relay = p2pcall_demo::local_relay().await.unwrap();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, _sa, pa) = engine(&relay, da.path(), "alice").await;
    let (b, _sb, pb) = engine(&relay, db.path(), "bob").await;

    let mut watcher = client(&pb).await;
    assert_eq!(
        watcher.call(Request::Subscribe).await.unwrap(),
        Answer::Subscribed
    );

    let mut c = client(&pa).await;
    assert_eq!(c.pid(), std::process::id());
    let Answer::Status(s) = c.call(Request::Status).await.unwrap() else {
        panic!("status")
    };
    assert_eq!(
        (s.id, s.name, s.relay.as_deref()),
        (a.id().to_hex(), "alice".into(), Some("udp"))
    );
    let Answer::Peers { peers } = c.call(Request::Peers { wait_ms: 10_000 }).await.unwrap() else {
        panic!("peers")
    };
    assert!(
        peers
            .iter()
            .any(|p| p.id == b.id().to_hex() && p.name == "bob"),
        "{peers:?}"
    );

    // A name from the network reaches nobody until its owner is a contact.
    let unknown = c
        .call(Request::SendMessage {
            peer: "bob".into(),
            text: "to whoever calls themselves bob".into(),
        })
        .await;
    match unknown {
        Err(DaemonError::Refused(e)) => {
            assert_eq!(e.kind, ErrorKind::PeerNotFound, "{e}");
            assert!(e.message.contains("not one of your contacts"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let added = c
        .call(Request::AddContact {
            peer: b.id().to_hex()[..8].into(),
            name: Some("Bob B.".into()),
        })
        .await
        .unwrap();
    let Answer::Contacts { contacts } = added else {
        panic!("{added:?}")
    };
    assert_eq!(
        (contacts[0].name.as_str(), contacts[0].announced.as_str()),
        ("Bob B.", "bob")
    );
    let sent = c
        .call(Request::SendMessage {
            peer: "bob b.".into(),
            text: "hi from a client".into(),
        })
        .await
        .unwrap();
    let Answer::Sent {
        message,
        name,
        offline,
    } = sent
    else {
        panic!("{sent:?}")
    };
    assert_eq!((name.as_str(), offline), ("bob", false));
    assert_eq!(message.text, "hi from a client");
    assert!(message.outgoing);

    let got = tokio::time::timeout(T, async {
        loop {
            if let Event::MessageReceived(m) = watcher.next_event().await.unwrap() {
                return m;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (got.text.as_str(), got.peer),
        ("hi from a client", a.id().to_hex())
    );

    let Answer::History { messages } = c
        .call(Request::History {
            peer: b.id().to_hex(),
            before: None,
            limit: 10,
        })
        .await
        .unwrap()
    else {
        panic!("history")
    };
    assert_eq!(messages.len(), 1);

    // Errors carry their kind: the CLI's exit code follows it.
    let nobody = c
        .call(Request::SendMessage {
            peer: "carol".into(),
            text: "?".into(),
        })
        .await;
    assert!(
        matches!(&nobody, Err(DaemonError::Refused(e)) if e.kind == ErrorKind::PeerNotFound),
        "{nobody:?}"
    );
}

/// Sends raw lines and reads raw answers.
async fn raw(
    path: &Path,
) -> (
    BufReader<tokio::net::unix::OwnedReadHalf>,
    tokio::net::unix::OwnedWriteHalf,
) {
    let (r, w) = UnixStream::connect(path).await.unwrap().into_split();
    (BufReader::new(r), w)
}

async fn answer_line(r: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> serde_json::Value {
    let mut line = String::new();
    tokio::time::timeout(T, r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    serde_json::from_str(&line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_an_error_reply_and_a_huge_line_ends_only_that_client() {
    let relay = p2pcall_demo::local_relay().await.unwrap();
    let d = tempfile::tempdir().unwrap();
    let (_a, _s, path) = engine(&relay, d.path(), "alice").await;

    let (mut r, mut w) = raw(&path).await;
    w.write_all(b"this is not json\n").await.unwrap();
    let v = answer_line(&mut r).await;
    assert_eq!(v["error"]["data"]["kind"], "bad_request", "{v}");
    w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"status\"}\n")
        .await
        .unwrap();
    let v = answer_line(&mut r).await;
    assert_eq!(
        (v["id"].clone(), v["error"]["message"].clone()),
        (5.into(), "say hello first".into())
    );
    let hello = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"hello\",\"params\":{{\"version\":{VERSION},\"client\":\"sh\"}}}}\n"
    );
    w.write_all(hello.as_bytes()).await.unwrap();
    assert_eq!(answer_line(&mut r).await["result"]["kind"], "hello");

    // A line that never ends: the engine stops reading it past the limit and hangs up.
    let (mut r2, mut w2) = raw(&path).await;
    let junk = vec![b'x'; 64 << 10];
    let mut sent = 0;
    while sent <= p2pcall_api::MAX_LINE + (64 << 10) {
        if w2.write_all(&junk).await.is_err() {
            break;
        }
        sent += junk.len();
    }
    let v = answer_line(&mut r2).await;
    assert_eq!(v["error"]["data"]["kind"], "bad_request", "{v}");
    // Then the connection closes (reset, as the engine leaves our junk unread).
    let mut rest = String::new();
    let end = r2.read_line(&mut rest).await;
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?} {rest:?}");

    // The first client is still served.
    w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"status\"}\n")
        .await
        .unwrap();
    assert_eq!(answer_line(&mut r).await["result"]["kind"], "status");

    // Another version is refused.
    let (mut r3, mut w3) = raw(&path).await;
    let old = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"hello\",\"params\":{\"version\":999,\"client\":\"x\"}}\n";
    w3.write_all(old.as_bytes()).await.unwrap();
    assert_eq!(
        answer_line(&mut r3).await["error"]["data"]["kind"],
        "version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_stalls_nothing() {
    let relay = p2pcall_demo::local_relay().await.unwrap();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_a, _sa, pa) = engine(&relay, da.path(), "alice").await;
    let (_b, _sb, pb) = engine(&relay, db.path(), "bob").await;

    // Bob's engine has a subscriber that never reads a byte.
    let (_r, mut w) = raw(&pb).await;
    let hello = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"hello\",\"params\":{{\"version\":{VERSION},\"client\":\"stuck\"}}}}\n"
    );
    w.write_all(hello.as_bytes()).await.unwrap();
    w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"subscribe\"}\n")
        .await
        .unwrap();

    // Far more messages than its queues hold (and than a message request holds: alice is
    // bob's contact) still reach bob, each acknowledged.
    _b.add_contact(_a.id(), None).await.unwrap();
    let mut c = client(&pa).await;
    let long = "x".repeat(8 << 10);
    for i in 0..400 {
        let a = tokio::time::timeout(
            T,
            c.call(Request::SendMessage {
                peer: _b.id().to_hex(),
                text: format!("{i} {long}"),
            }),
        )
        .await
        .expect("the engine never waits for the stuck client")
        .unwrap();
        let Answer::Sent { message, .. } = a else {
            panic!()
        };
        assert_eq!(message.state, "delivered", "message {i}");
    }
    let mut other = client(&pb).await;
    assert!(matches!(
        other.call(Request::Status).await,
        Ok(Answer::Status(_))
    ));
}

fn media(video: &str) -> p2pcall_api::Media {
    p2pcall_api::Media {
        video: video.into(),
        audio: "none".into(),
        speaker: "none".into(),
        width: 320,
        height: 240,
        fps: 15,
        video_kbps: 300,
        record_video: None,
        record_audio: None,
        duration_ms: Some(2000),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_the_api_shows_both_pictures_on_a_video_feed() {
    use p2pcall_api::video::Side;
    let relay = p2pcall_demo::local_relay().await.unwrap();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_a, _sa, pa) = engine(&relay, da.path(), "alice").await;
    let (b, _sb, pb) = engine(&relay, db.path(), "bob").await;

    // Bob's engine answers by policy while this connection stays open.
    let mut policy = client(&pb).await;
    let set = Request::Policy {
        accept_files: None,
        answer: Some(media("testsrc")),
        // Alice is no contact of bob's.
        from: "anyone".into(),
    };
    assert_eq!(policy.call(set).await.unwrap(), Answer::Done);
    // A feed that never reads a byte: pictures for it are dropped, nothing waits on it.
    let (_stuck_r, mut stuck) = raw(&pa).await;
    let hello = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"hello\",\"params\":{{\"version\":{VERSION},\"client\":\"stuck\"}}}}\n"
    );
    stuck.write_all(hello.as_bytes()).await.unwrap();
    stuck
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"video_feed\"}\n")
        .await
        .unwrap();
    // The pictures of alice's calls, as the app shows them.
    let mut feed = client(&pa).await.video_feed().await.unwrap();
    let mut c = client(&pa).await;
    let placed = Request::Call {
        peer: b.id().to_hex(),
        media: media("testsrc"),
        also: Vec::new(),
    };
    let Answer::Calling { peer, .. } = c.call(placed).await.unwrap() else {
        panic!("calling")
    };
    assert_eq!(peer, b.id().to_hex());
    let (mut local, mut remote) = (0, 0);
    while local < 5 || remote < 5 {
        let (side, f) = tokio::time::timeout(T, feed.next_frame())
            .await
            .expect("frames during the call")
            .unwrap();
        assert_eq!((f.width, f.height), (320, 240));
        assert_eq!(f.y.len(), 320 * 240);
        match side {
            Side::Local => local += 1,
            Side::Remote(_) => remote += 1,
        }
    }
    // A media option that cannot work is refused before anyone's phone rings.
    let bad = Request::Call {
        peer: b.id().to_hex(),
        media: media("/nonexistent/clip.y4m"),
        also: Vec::new(),
    };
    match c.call(bad).await {
        Err(DaemonError::Refused(e)) => assert_eq!(e.kind, ErrorKind::BadMedia, "{e}"),
        other => panic!("{other:?}"),
    }
}
