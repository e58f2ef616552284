//! Chat and file transfer end to end: an in-process relay and real engines on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use p2pcall_core::chat::ChatEvent;
use p2pcall_core::engine::{Engine, EngineConfig, EngineError, EngineEvent, EngineHandle};
use p2pcall_core::transfer::{OFFER, Summary, TransferEvent};
use p2pcall_core::{MessageState, Store};
use p2pcall_net::RelayConfig;
use p2pcall_proto::transfer::{AbortCode, Entry, EntryKind, TransferFrame};
use p2pcall_relay::Relay;
use p2pcall_transport::Identity;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(20);

async fn relay() -> Relay {
    p2pcall_demo::local_relay().await.unwrap()
}

struct Peer {
    h: EngineHandle,
    ev: mpsc::Receiver<EngineEvent>,
}

async fn peer(relay: &Relay, id: &Identity, store: Arc<Store>, relay_only: bool) -> Peer {
    let mut cfg = EngineConfig::new(
        id.clone(),
        "p".into(),
        Some(RelayConfig::new(relay.udp_addr)),
    );
    cfg.port_mapping = false;
    cfg.direct_paths = !relay_only;
    cfg.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.store = Some(store);
    let (h, ev) = Engine::start(cfg).await.unwrap();
    h.wait_relay(T).await.unwrap();
    h.wait_presence(T).await.unwrap();
    Peer { h, ev }
}

async fn sees(a: &EngineHandle, b: &EngineHandle) {
    tokio::time::timeout(T, async {
        while !a.online_peers().iter().any(|p| p.id == b.id()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
}

fn mem() -> Arc<Store> {
    Arc::new(Store::open_in_memory().unwrap())
}

/// Waits for an event matching `f`.
async fn until<R>(
    ev: &mut mpsc::Receiver<EngineEvent>,
    mut f: impl FnMut(EngineEvent) -> Option<R>,
) -> R {
    tokio::time::timeout(T, async {
        loop {
            if let Some(r) = f(ev.recv().await.expect("engine stopped")) {
                return r;
            }
        }
    })
    .await
    .expect("event did not come")
}

/// Accepts every offer into `dir` and returns the receiver's summary of the first transfer
/// that finishes (or its failure reason).
fn auto_accept(p: Peer, dir: PathBuf) -> tokio::task::JoinHandle<(Peer, Result<Summary, String>)> {
    tokio::spawn(async move {
        let mut p = p;
        let r = loop {
            match p.ev.recv().await {
                Some(EngineEvent::Transfer(TransferEvent::Offered(o))) => {
                    p.h.accept_offer(o.peer, o.id, dir.clone()).unwrap();
                }
                Some(EngineEvent::Transfer(TransferEvent::Finished(s))) => break Ok(s),
                // A resumable stop (e.g. an older attempt superseded) is not the end.
                Some(EngineEvent::Transfer(TransferEvent::Failed {
                    reason,
                    resumable: false,
                    ..
                })) => {
                    break Err(reason);
                }
                Some(_) => {}
                None => break Err("engine stopped".into()),
            }
        };
        (p, r)
    })
}

/// Every file and folder under `root`: relative path -> (is_dir, content hash, mode).
fn tree(root: &Path) -> BTreeMap<String, (bool, String, u32)> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, p: &Path, out: &mut BTreeMap<String, (bool, String, u32)>) {
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let m = std::fs::symlink_metadata(&path).unwrap();
            if m.is_dir() {
                out.insert(rel, (true, String::new(), m.permissions().mode() & 0o7777));
                walk(base, &path, out);
            } else {
                let h = blake3::hash(&std::fs::read(&path).unwrap())
                    .to_hex()
                    .to_string();
                out.insert(rel, (false, h, m.permissions().mode() & 0o7777));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_tree_arrives_intact_and_never_overwrites() {
    let r = relay().await;
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("trip");
    write(&root.join("empty.txt"), b"");
    std::fs::create_dir_all(root.join("nothing here/also empty")).unwrap();
    write(
        &root.join("日本/東京 🗼.txt"),
        "こんにちは".repeat(1000).as_bytes(),
    );
    write(&root.join("a/b/c/deep.bin"), &pattern(3 << 20 | 12345, 1));
    write(&root.join("script.sh"), b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(
        root.join("script.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // Setuid and writable by everyone where it comes from.
    write(&root.join("shared.txt"), b"anyone may write me");
    std::fs::set_permissions(
        root.join("shared.txt"),
        std::fs::Permissions::from_mode(0o4666),
    )
    .unwrap();
    // A large sparse file: 1 GiB, data only at a few places.
    let sparse = std::fs::File::create(root.join("disk.img")).unwrap();
    sparse.set_len(1 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"boot sector", 0).unwrap();
    sparse.write_all_at(&pattern(5000, 7), 700 << 20).unwrap();
    sparse.write_all_at(b"the end", (1 << 30) - 7).unwrap();
    drop(sparse);
    std::os::unix::fs::symlink("/etc/passwd", root.join("link-to-passwd")).unwrap();

    let a = peer(&r, &Identity::generate().unwrap(), mem(), false).await;
    let b = peer(&r, &Identity::generate().unwrap(), mem(), false).await;
    sees(&a.h, &b.h).await;
    let dest = tempfile::tempdir().unwrap();
    // Something is already called "trip" there: it must stay untouched.
    write(&dest.path().join("trip"), b"mine");
    let b_id = b.h.id();
    let recv = auto_accept(b, dest.path().to_path_buf());
    let sent =
        a.h.send_files(b_id, std::slice::from_ref(&root))
            .await
            .unwrap();
    let (b, got) = recv.await.unwrap();
    let got = got.unwrap();
    assert_eq!(std::fs::read(dest.path().join("trip")).unwrap(), b"mine");
    assert_eq!(
        got.placed,
        [dest.path().canonicalize().unwrap().join("trip (1)")]
    );
    assert_eq!(sent.hashes, got.hashes);
    assert_eq!(sent.skipped, [root.join("link-to-passwd")]);
    let mut want = tree(&root);
    want.remove("link-to-passwd");
    // Received files are nobody else's to write, setuid never, executable only if the
    // receiver opted in (this one did not).
    assert_eq!(want["script.sh"].2, 0o755);
    want.get_mut("script.sh").unwrap().2 = 0o644;
    assert_eq!(want["shared.txt"].2, 0o4666);
    want.get_mut("shared.txt").unwrap().2 = 0o644;
    assert_eq!(tree(&got.placed[0]), want);
    // Hashes are the ordinary BLAKE3 of each file.
    let deep = sent
        .hashes
        .iter()
        .find(|(p, _)| p == "trip/a/b/c/deep.bin")
        .unwrap()
        .1;
    assert_eq!(deep, *blake3::hash(&pattern(3 << 20 | 12345, 1)).as_bytes());
    // The sparse file stayed sparse on the receiver (holes are never written).
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(got.placed[0].join("disk.img")).unwrap();
    assert_eq!(m.len(), 1 << 30);
    assert!(m.blocks() * 512 < 64 << 20, "{} blocks", m.blocks());
    // No temporary file is left anywhere.
    assert!(!want.keys().any(|k| k.contains(".p2pcall-")));
    assert!(tree(dest.path()).keys().all(|k| !k.contains(".p2pcall-")));

    // The same again: lands beside, as "trip (2)".
    let recv = auto_accept(b, dest.path().to_path_buf());
    let again =
        a.h.send_files(b_id, &[root.join("script.sh")])
            .await
            .unwrap();
    let (_b, got2) = recv.await.unwrap();
    assert_eq!(again.files, 1);
    assert_eq!(
        got2.unwrap().placed,
        [dest.path().canonicalize().unwrap().join("script.sh")]
    );
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_and_hostile_offers_reach_the_sender_and_write_nothing() {
    let r = relay().await;
    let mut a = peer(&r, &Identity::generate().unwrap(), mem(), false).await;
    let b = peer(&r, &Identity::generate().unwrap(), mem(), false).await;
    sees(&b.h, &a.h).await;
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("f.txt"), b"x");

    // A rejection carries its reason.
    let a_id = a.h.id();
    let ah = a.h.clone();
    let rejecter = tokio::spawn(async move {
        let o = until(&mut a.ev, |e| match e {
            EngineEvent::Transfer(TransferEvent::Offered(o)) => Some(o),
            _ => None,
        })
        .await;
        assert_eq!(
            (o.files, o.total_bytes, o.tops.clone()),
            (1, 1, vec!["f.txt".to_string()])
        );
        ah.reject_offer(o.peer, o.id, "not now").unwrap();
        a
    });
    let e = tokio::time::timeout(T, b.h.send_files(a_id, &[src.path().join("f.txt")]))
        .await
        .expect("the offer was answered")
        .unwrap_err();
    assert!(
        matches!(&e, EngineError::Rejected(r) if r == "not now"),
        "{e}"
    );
    let mut a = rejecter.await.unwrap();

    // Hostile manifests: each refused by the receiver with the rule it broke.
    let conn = b.h.connect(a_id).await.unwrap();
    let cases: &[(&str, &str)] = &[
        ("../../etc/cron.d/x", "climbs out"),
        ("/etc/passwd", "absolute path"),
        ("ok/../../x", "climbs out"),
        ("NUL.txt", "device name"),
        ("a\\..\\b", "forbidden character"),
        ("a//b", "empty component"),
    ];
    for (path, why) in cases {
        let (mut s, r) = conn.quic().open_bi().await.unwrap();
        let mut out = vec![OFFER];
        TransferFrame::Offer {
            id: p2pcall_proto::transfer::TransferId::from_bytes(rand::random()),
            chunk_size: 1 << 20,
            entries: vec![Entry {
                path: path.to_string(),
                kind: EntryKind::File { size: 3 },
                mode: 0o644,
                mtime: 0,
            }],
        }
        .encode(&mut out);
        s.write_all(&out).await.unwrap();
        let mut reader = p2pcall_transport::framed::FrameReader::new(r, 1 << 20);
        let raw = tokio::time::timeout(T, reader.next())
            .await
            .expect("an answer")
            .unwrap();
        let answer = TransferFrame::decode(raw).unwrap();
        match answer {
            TransferFrame::Reject { reason } => assert!(reason.contains(why), "{path}: {reason}"),
            other => panic!("{path}: {other:?}"),
        }
        let failed = until(&mut a.ev, |e| match e {
            EngineEvent::Transfer(TransferEvent::Failed { reason, .. })
                if reason.starts_with("unsafe") =>
            {
                Some(reason)
            }
            _ => None,
        })
        .await;
        assert!(failed.contains(why));
    }

    // A peer may hold only a few offers open at once (each may carry a 16 MiB manifest).
    // The receiver reads each stream's kind byte in its own task, so which of five
    // concurrent offers is the one too many is not fixed.
    let mut held = Vec::new();
    for _ in 0..5 {
        let (mut s, r) = conn.quic().open_bi().await.unwrap();
        s.write_all(&[OFFER]).await.unwrap();
        held.push((s, r));
    }
    let mut refused = vec![false; held.len()];
    let deadline = tokio::time::Instant::now() + T;
    let mut settled = None;
    while tokio::time::Instant::now() < deadline
        && settled.is_none_or(|t| tokio::time::Instant::now() < t)
    {
        for (i, (_, r)) in held.iter_mut().enumerate() {
            let mut buf = [0u8; 1];
            if !refused[i]
                && let Ok(Err(quinn::ReadError::Reset(_))) =
                    tokio::time::timeout(Duration::from_millis(20), r.read(&mut buf)).await
            {
                refused[i] = true;
                // Give a wrong second refusal time to show up.
                settled.get_or_insert(tokio::time::Instant::now() + Duration::from_millis(500));
            }
        }
    }
    let refused = refused.iter().filter(|r| **r).count();
    // At most four are held (offers of the hostile cases above may still count for a
    // moment, so more than one can be refused).
    assert!(refused >= 1, "five concurrent open offers were all held");
    drop(held);
    r.shutdown().await;
}

/// Starts a relayed (12.5 MB/s) transfer of a 40 MiB file and stops the sender's engine
/// once the receiver has verified at least 8 MiB. Returns what is needed to resume.
struct Interrupted {
    r: Relay,
    a_id: Identity,
    a_store: Arc<Store>,
    b: Peer,
    file: PathBuf,
    dest: tempfile::TempDir,
    /// The transfer.
    id: p2pcall_proto::transfer::TransferId,
    _src: tempfile::TempDir,
}

async fn interrupted_transfer() -> Interrupted {
    let r = relay().await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    write(&file, &pattern(40 << 20, 3));
    let a_id = Identity::generate().unwrap();
    let a_store = mem();
    let a = peer(&r, &a_id, a_store.clone(), true).await;
    let mut b = peer(&r, &Identity::generate().unwrap(), mem(), true).await;
    sees(&a.h, &b.h).await;
    let dest = tempfile::tempdir().unwrap();
    let (ah, bid, f2) = (a.h.clone(), b.h.id(), file.clone());
    let sender = tokio::spawn(async move { ah.send_files(bid, &[f2]).await });
    let o = until(&mut b.ev, |e| match e {
        EngineEvent::Transfer(TransferEvent::Offered(o)) => Some(o),
        _ => None,
    })
    .await;
    b.h.accept_offer(o.peer, o.id, dest.path().to_path_buf())
        .unwrap();
    until(&mut b.ev, |e| match e {
        EngineEvent::Transfer(TransferEvent::Progress(p)) if p.done_bytes >= 8 << 20 => Some(()),
        _ => None,
    })
    .await;
    a.h.shutdown().await;
    let e = sender.await.unwrap().unwrap_err();
    println!("sender stopped: {e}");
    // The receiver may not notice before its idle timeout: the retry supersedes the attempt.
    assert!(
        !dest.path().join("big.bin").exists(),
        "no final file before verification"
    );
    Interrupted {
        r,
        a_id,
        a_store,
        b,
        file,
        dest,
        id: o.id,
        _src: src,
    }
}

fn part_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".part"))
        .expect("a partial file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_transfer_resumes_from_verified_chunks() {
    let i = interrupted_transfer().await;
    let a = peer(&i.r, &i.a_id, i.a_store.clone(), true).await;
    sees(&a.h, &i.b.h).await;
    let bid = i.b.h.id();
    let recv = auto_accept(i.b, i.dest.path().to_path_buf());
    let s =
        a.h.send_files(bid, std::slice::from_ref(&i.file))
            .await
            .unwrap();
    let (_b, got) = recv.await.unwrap();
    let got = got.unwrap();
    println!("resumed {} of {} bytes", s.resumed_bytes, s.total_bytes);
    assert!(s.resumed_bytes >= 8 << 20, "{}", s.resumed_bytes);
    assert_eq!(got.resumed_bytes, s.resumed_bytes);
    assert_eq!(
        std::fs::read(i.dest.path().join("big.bin")).unwrap(),
        pattern(40 << 20, 3)
    );
    i.r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_offer_under_an_accepted_id_is_asked_about_again() {
    let mut i = interrupted_transfer().await;
    let partial = part_file(i.dest.path());
    // The same sender key (on an engine that does not resume anything by itself), the same
    // transfer id, another manifest: a new top-level name.
    let a = peer(&i.r, &i.a_id, mem(), true).await;
    sees(&a.h, &i.b.h).await;
    let conn = a.h.connect(i.b.h.id()).await.unwrap();
    let (mut s, r) = conn.quic().open_bi().await.unwrap();
    let mut out = vec![OFFER];
    TransferFrame::Offer {
        id: i.id,
        chunk_size: 1 << 20,
        entries: vec![Entry {
            path: "run-me.sh".into(),
            kind: EntryKind::File { size: 3 },
            mode: 0o755,
            mtime: 0,
        }],
    }
    .encode(&mut out);
    s.write_all(&out).await.unwrap();
    // It is a new offer the user must accept, not a resume.
    let o = until(&mut i.b.ev, |e| match e {
        EngineEvent::Transfer(TransferEvent::Offered(o)) => Some(o),
        EngineEvent::Transfer(TransferEvent::Resumed(o)) => {
            panic!("resumed without asking: {o:?}")
        }
        _ => None,
    })
    .await;
    assert_eq!(
        (o.id, o.tops.clone()),
        (i.id, vec!["run-me.sh".to_string()])
    );
    i.b.h.reject_offer(o.peer, o.id, "not that").unwrap();
    let mut reader = p2pcall_transport::framed::FrameReader::new(r, 1 << 20);
    let raw = tokio::time::timeout(T, reader.next())
        .await
        .expect("an answer")
        .unwrap();
    match TransferFrame::decode(raw).unwrap() {
        TransferFrame::Reject { reason } => assert_eq!(reason, "not that"),
        other => panic!("{other:?}"),
    }
    // Nothing was written, and the earlier attempt's partial data went with it (the
    // changed offer replaced it: the original, offered again, is asked about too).
    assert!(!i.dest.path().join("run-me.sh").exists());
    assert!(!partial.exists(), "{} is left", partial.display());
    i.r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_partial_chunk_is_detected_and_fetched_again() {
    let i = interrupted_transfer().await;
    // Damage the first chunk of the partial file on the receiver's disk.
    let part = part_file(i.dest.path());
    let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"garbage", 1000).unwrap();
    drop(f);
    // Alice comes back: her engine resumes the transfer by itself (no new `send`).
    let recv = auto_accept(i.b, i.dest.path().to_path_buf());
    let _a = peer(&i.r, &i.a_id, i.a_store.clone(), true).await;
    let (_b, got) = recv.await.unwrap();
    let s = got.unwrap();
    assert!(
        s.resumed_bytes >= 7 << 20,
        "the other verified chunks were kept: {}",
        s.resumed_bytes
    );
    assert_eq!(s.resumed_bytes % (1 << 20), 0);
    assert_eq!(
        std::fs::read(i.dest.path().join("big.bin")).unwrap(),
        pattern(40 << 20, 3)
    );
    i.r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_tells_both_sides_and_leaves_no_file() {
    let r = relay().await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    write(&file, &pattern(40 << 20, 9));
    let a = peer(&r, &Identity::generate().unwrap(), mem(), true).await;
    let mut b = peer(&r, &Identity::generate().unwrap(), mem(), true).await;
    sees(&a.h, &b.h).await;
    let dest = tempfile::tempdir().unwrap();
    let (ah, bid) = (a.h.clone(), b.h.id());
    let sender = tokio::spawn(async move { ah.send_files(bid, &[file]).await });
    let o = until(&mut b.ev, |e| match e {
        EngineEvent::Transfer(TransferEvent::Offered(o)) => Some(o),
        _ => None,
    })
    .await;
    b.h.accept_offer(o.peer, o.id, dest.path().to_path_buf())
        .unwrap();
    until(&mut b.ev, |e| match e {
        EngineEvent::Transfer(TransferEvent::Progress(p)) if p.done_bytes >= 4 << 20 => Some(()),
        _ => None,
    })
    .await;
    assert!(b.h.cancel_transfer(o.peer, o.id));
    let e = sender.await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::Aborted {
                code: AbortCode::Cancelled,
                ..
            }
        ),
        "{e}"
    );
    let (reason, resumable) = until(&mut b.ev, |e| match e {
        EngineEvent::Transfer(TransferEvent::Failed {
            reason, resumable, ..
        }) => Some((reason, resumable)),
        _ => None,
    })
    .await;
    assert!(reason.contains("cancelled"), "{reason}");
    assert!(!resumable);
    assert_eq!(
        std::fs::read_dir(dest.path()).unwrap().count(),
        0,
        "nothing left behind"
    );
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_is_ordered_deduplicated_and_queued_for_offline_peers() {
    let r = relay().await;
    let a_store = mem();
    let mut a = peer(&r, &Identity::generate().unwrap(), a_store.clone(), false).await;
    let b_ident = Identity::generate().unwrap();
    let b_id = b_ident.id();

    // Bob is offline: messages are queued, in order.
    for i in 0..20 {
        let m = a.h.send_message(b_id, &format!("msg {i}")).await.unwrap();
        assert_eq!(m.state, MessageState::Queued);
        assert_eq!(m.seq, i + 1);
    }
    let too_long = "x".repeat(p2pcall_proto::chat::MAX_TEXT + 1);
    assert!(matches!(
        a.h.send_message(b_id, &too_long).await,
        Err(EngineError::MessageTooLong { .. })
    ));

    // Bob comes online: alice's engine delivers on its own, in order.
    let b_store = mem();
    b_store.choose_contact(&a.h.id(), None, "alice", 1).unwrap();
    let mut b = peer(&r, &b_ident, b_store.clone(), false).await;
    let mut got = Vec::new();
    while got.len() < 20 {
        let m = until(&mut b.ev, |e| match e {
            EngineEvent::Chat(ChatEvent::Received(m)) => Some(m),
            _ => None,
        })
        .await;
        got.push(m.text);
    }
    assert_eq!(got, (0..20).map(|i| format!("msg {i}")).collect::<Vec<_>>());
    until(&mut a.ev, |e| match e {
        EngineEvent::Chat(ChatEvent::State {
            state: MessageState::Delivered,
            ..
        }) => Some(()),
        _ => None,
    })
    .await;
    tokio::time::timeout(T, async {
        while !a_store.undelivered(&b_id).unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();

    // A retry of an already delivered message is stored once.
    let first = a_store.history(&b_id, None, 1000).unwrap()[0].clone();
    let conn = a.h.connect(b_id).await.unwrap();
    let (mut s, rs) = conn.quic().open_bi().await.unwrap();
    let mut out = vec![p2pcall_core::chat::CHAT];
    p2pcall_proto::chat::ChatFrame::Message {
        id: first.id,
        seq: first.seq,
        sent_ms: first.sent_ms,
        text: first.text.clone(),
    }
    .encode(&mut out);
    s.write_all(&out).await.unwrap();
    s.finish().unwrap();
    let mut reader = p2pcall_transport::framed::FrameReader::new(rs, 1 << 20);
    assert_eq!(
        p2pcall_proto::chat::ChatFrame::decode(reader.next().await.unwrap()).unwrap(),
        p2pcall_proto::chat::ChatFrame::Delivered { id: first.id }
    );
    assert_eq!(b_store.history(&a.h.id(), None, 1000).unwrap().len(), 20);

    // Bob reads: alice sees "read" on every message.
    assert_eq!(b.h.mark_read(a.h.id()).await.unwrap(), 20);
    tokio::time::timeout(T, async {
        while !a_store
            .history(&b_id, None, 100)
            .unwrap()
            .iter()
            .all(|m| m.state == MessageState::Read)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(b_store.pending_receipts(&a.h.id()).unwrap().is_empty());
    r.shutdown().await;
}

/// A small tmpfs (root only: CI runs as root); `None` with a note otherwise.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(mib: u32) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("SKIPPED: mounting a small tmpfs needs root");
            return None;
        }
        Some(Self(dir))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_space_is_refused_before_and_disk_full_stops_both_sides() {
    let Some(fs) = SmallFs::mount(24) else { return };
    let r = relay().await;
    let src = tempfile::tempdir().unwrap();
    let big = src.path().join("big.bin");
    write(&big, &pattern(32 << 20, 5));
    let medium = src.path().join("medium.bin");
    write(&medium, &pattern(16 << 20, 6));
    let a = peer(&r, &Identity::generate().unwrap(), mem(), true).await;
    let mut b = peer(&r, &Identity::generate().unwrap(), mem(), true).await;
    sees(&a.h, &b.h).await;
    let bid = b.h.id();

    // 32 MiB into 24 MiB: refused before any byte moves, with the figures.
    let (ah, f) = (a.h.clone(), big.clone());
    let sender = tokio::spawn(async move { ah.send_files(bid, &[f]).await });
    let o = until(&mut b.ev, |e| match e {
        EngineEvent::Transfer(TransferEvent::Offered(o)) => Some(o),
        _ => None,
    })
    .await;
    b.h.accept_offer(o.peer, o.id, fs.0.path().to_path_buf())
        .unwrap();
    let e = sender.await.unwrap().unwrap_err();
    assert!(
        matches!(&e, EngineError::Aborted { code: AbortCode::DiskFull, reason } if reason.contains("not enough space")),
        "{e}"
    );

    // 16 MiB fits, but the disk fills up during the transfer: both sides hear "disk full".
    let (ah, f) = (a.h.clone(), medium.clone());
    let sender = tokio::spawn(async move { ah.send_files(bid, &[f]).await });
    let o = until(&mut b.ev, |e| match e {
        EngineEvent::Transfer(TransferEvent::Offered(o)) => Some(o),
        _ => None,
    })
    .await;
    b.h.accept_offer(o.peer, o.id, fs.0.path().to_path_buf())
        .unwrap();
    until(&mut b.ev, |e| match e {
        EngineEvent::Transfer(TransferEvent::Progress(p)) if p.done_bytes >= 1 << 20 => Some(()),
        _ => None,
    })
    .await;
    // Something else takes the rest of the space.
    let filler = fs.0.path().join("filler");
    let _ = std::fs::write(&filler, vec![1u8; 24 << 20]);
    let e = sender.await.unwrap().unwrap_err();
    assert!(
        matches!(
            &e,
            EngineError::Aborted {
                code: AbortCode::DiskFull,
                ..
            }
        ),
        "{e}"
    );
    let reason = until(&mut b.ev, |e| match e {
        EngineEvent::Transfer(TransferEvent::Failed { reason, .. }) => Some(reason),
        _ => None,
    })
    .await;
    assert!(
        reason.contains("No space") || reason.contains("space"),
        "{reason}"
    );
    assert!(
        !fs.0.path().join("medium.bin").exists(),
        "no half-written final file"
    );
    r.shutdown().await;
}
