use super::*;

fn peer(n: u8) -> PeerId {
    PeerId::from_bytes([n; 32])
}

#[test]
fn messages_are_queued_in_sequence_and_only_move_forward() {
    let s = Store::open_in_memory().unwrap();
    let (a, b) = (peer(1), peer(2));
    let m1 = s.queue_message(&a, "one", 10).unwrap();
    let m2 = s.queue_message(&a, "two", 11).unwrap();
    let other = s.queue_message(&b, "other", 12).unwrap();
    assert_eq!((m1.seq, m2.seq, other.seq), (1, 2, 1));
    assert_ne!(m1.id, m2.id);
    let pending: Vec<_> = s
        .undelivered(&a)
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(pending, ["one", "two"]);
    assert!(s.advance(&a, &m1.id, MessageState::Delivered).unwrap());
    assert!(
        !s.advance(&a, &m1.id, MessageState::Sent).unwrap(),
        "never backwards"
    );
    assert_eq!(s.undelivered(&a).unwrap().len(), 1);
    assert_eq!(
        s.apply_read(&a, &[m1.id, m2.id, MessageId::from_bytes([9; 16])])
            .unwrap(),
        vec![m1.id, m2.id]
    );
    assert!(s.undelivered(&a).unwrap().is_empty());
    let h = s.history(&a, None, 10).unwrap();
    assert!(h.iter().all(|m| m.state == MessageState::Read));
}

#[test]
fn a_retried_message_is_stored_once_and_receipts_flow() {
    let s = Store::open_in_memory().unwrap();
    let a = peer(1);
    s.choose_contact(&a, None, "a", 1).unwrap();
    s.choose_contact(&peer(2), None, "b", 1).unwrap();
    let first = s
        .receive_message(&a, &MessageId::from_bytes([7; 16]), 1, 100, "hi", 200)
        .unwrap();
    assert!(matches!(first, Received::New(ref m) if !m.request));
    assert_eq!(
        s.receive_message(&a, &MessageId::from_bytes([7; 16]), 1, 100, "hi", 300)
            .unwrap(),
        Received::Again
    );
    // The same id from another peer is another message.
    assert!(matches!(
        s.receive_message(&peer(2), &MessageId::from_bytes([7; 16]), 1, 100, "hi", 300)
            .unwrap(),
        Received::New(_)
    ));
    assert_eq!(s.unread_counts().unwrap().get(&a), Some(&1));
    assert!(s.peers_with_outbox().unwrap().is_empty());
    assert_eq!(s.mark_read(&a).unwrap(), 1);
    assert_eq!(s.mark_read(&a).unwrap(), 0);
    assert_eq!(
        s.pending_receipts(&a).unwrap(),
        vec![MessageId::from_bytes([7; 16])]
    );
    assert_eq!(s.peers_with_outbox().unwrap(), vec![a]);
    s.receipts_sent(&a, &[MessageId::from_bytes([7; 16])])
        .unwrap();
    assert!(s.pending_receipts(&a).unwrap().is_empty());
    assert_eq!(s.unread_counts().unwrap().get(&a), None);
}

#[test]
fn history_pages_back_in_order() {
    let s = Store::open_in_memory().unwrap();
    let a = peer(1);
    for i in 0..25 {
        if i % 2 == 0 {
            s.queue_message(&a, &format!("m{i}"), i).unwrap();
        } else {
            s.receive_message(
                &a,
                &MessageId::from_bytes([i as u8; 16]),
                i,
                i,
                &format!("m{i}"),
                i,
            )
            .unwrap();
        }
    }
    let newest = s.history(&a, None, 10).unwrap();
    let texts: Vec<_> = newest.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, (15..25).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let older = s.history(&a, Some(newest[0].rowid), 10).unwrap();
    assert_eq!(older[0].text, "m5");
    let oldest = s.history(&a, Some(older[0].rowid), 10).unwrap();
    assert_eq!(oldest.len(), 5);
    assert_eq!(oldest[0].text, "m0");
    assert!(s.history(&peer(3), None, 10).unwrap().is_empty());
}

#[test]
fn the_schema_is_migrated_once_and_newer_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/p2pcall.db");
    {
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        s.queue_message(&peer(1), "kept", 1).unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.history(&peer(1), None, 5).unwrap()[0].text, "kept");
    s.db()
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    drop(s);
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::TooNew { found: 99, .. })
    ));
}

#[test]
fn transfer_resume_state_round_trips_and_is_dropped_when_finished() {
    let s = Store::open_in_memory().unwrap();
    let a = peer(1);
    let t = s
        .create_transfer(
            &a,
            false,
            &TransferId::from_bytes([3; 16]),
            5000,
            2,
            &[],
            Some(Path::new("/tmp/in")),
            1,
        )
        .unwrap();
    assert_eq!(t.state, TransferState::Offered);
    let again = s
        .create_transfer(
            &a,
            false,
            &TransferId::from_bytes([3; 16]),
            5000,
            2,
            &[],
            None,
            2,
        )
        .unwrap();
    assert_eq!(again.rowid, t.rowid);
    assert_eq!(again.dest.as_deref(), Some(Path::new("/tmp/in")));
    let chunks = [
        ChunkRecord {
            entry: 1,
            index: 0,
            cv: [1; 32],
        },
        ChunkRecord {
            entry: 1,
            index: 1,
            cv: [2; 32],
        },
        ChunkRecord {
            entry: 2,
            index: 0,
            cv: [3; 32],
        },
    ];
    s.record_chunks(t.rowid, &chunks).unwrap();
    s.record_chunks(t.rowid, &chunks[..1]).unwrap();
    assert_eq!(s.chunks(t.rowid).unwrap(), chunks);
    s.forget_chunks(t.rowid, &[(1, 1)], &[]).unwrap();
    assert_eq!(s.chunks(t.rowid).unwrap().len(), 2);
    s.files_done(t.rowid, &[2]).unwrap();
    assert_eq!(s.done_files(t.rowid).unwrap(), HashSet::from([2]));
    assert_eq!(s.chunks(t.rowid).unwrap(), chunks[..1]);
    let names = HashMap::from([("photos".to_string(), "photos (1)".to_string())]);
    s.set_top_names(t.rowid, &names).unwrap();
    assert_eq!(s.top_names(t.rowid).unwrap(), names);
    s.set_transfer_state(t.rowid, TransferState::Done, None, 3)
        .unwrap();
    assert!(s.chunks(t.rowid).unwrap().is_empty());
    assert_eq!(
        s.transfer(&a, false, &TransferId::from_bytes([3; 16]))
            .unwrap()
            .unwrap()
            .state,
        TransferState::Done
    );

    let out = s
        .create_transfer(
            &a,
            true,
            &TransferId::from_bytes([4; 16]),
            1,
            1,
            &[PathBuf::from("/x/y"), PathBuf::from("/z")],
            None,
            4,
        )
        .unwrap();
    assert_eq!(out.sources, [PathBuf::from("/x/y"), PathBuf::from("/z")]);
    assert_eq!(s.open_outgoing(Some(&a)).unwrap(), vec![out.clone()]);
    assert!(s.open_outgoing(Some(&peer(9))).unwrap().is_empty());
    s.set_transfer_state(out.rowid, TransferState::Cancelled, Some("user"), 5)
        .unwrap();
    assert!(s.open_outgoing(None).unwrap().is_empty());
}

#[test]
fn verification_is_kept_per_key_and_survives_name_changes() {
    let s = Store::open_in_memory().unwrap();
    let (a, b) = (peer(1), peer(2));
    s.touch_contact(&a, "ann", 10).unwrap();
    s.set_verified(&a, "ann", true, 20).unwrap();
    // A peer never seen before can be verified (it becomes a contact).
    s.set_verified(&b, "bo", true, 30).unwrap();
    s.touch_contact(&a, "ann (laptop)", 40).unwrap();
    let c = s.contacts().unwrap();
    let get = |p: &PeerId| c.iter().find(|x| x.peer == *p).unwrap();
    assert_eq!(get(&a).verified_ms, Some(20));
    assert_eq!(get(&a).name, "ann (laptop)");
    assert_eq!(get(&b).verified_ms, Some(30));
    s.set_verified(&b, "bo", false, 50).unwrap();
    let c = s.contacts().unwrap();
    assert_eq!(c.iter().find(|x| x.peer == b).unwrap().verified_ms, None);
}

#[test]
fn a_presence_snapshot_is_recorded_in_one_go_and_names_follow() {
    let s = Store::open_in_memory().unwrap();
    s.touch_contacts(&[(peer(1), "alice"), (peer(2), "bob")], 1_000)
        .unwrap();
    s.touch_contacts(&[(peer(2), "robert"), (peer(3), "carol")], 2_000)
        .unwrap();
    let mut c = s.contacts().unwrap();
    c.sort_by_key(|c| c.peer.to_hex());
    let seen: Vec<_> = c
        .iter()
        .map(|c| (c.peer, c.name.as_str(), c.first_seen_ms, c.last_seen_ms))
        .collect();
    let mut want = vec![
        (peer(1), "alice", 1_000, 1_000),
        (peer(2), "robert", 1_000, 2_000),
        (peer(3), "carol", 2_000, 2_000),
    ];
    want.sort_by_key(|w| w.0.to_hex());
    assert_eq!(seen, want);
    // An empty snapshot is a no-op.
    s.touch_contacts(&[], 3_000).unwrap();
    assert_eq!(s.contacts().unwrap().len(), 3);
}

#[test]
fn a_contacts_name_is_the_users_and_the_network_never_changes_it() {
    let s = Store::open_in_memory().unwrap();
    let (a, b) = (peer(1), peer(2));
    // Seen on the network: not a contact.
    s.touch_contacts(&[(a, "bob"), (b, "mallory")], 10).unwrap();
    let get = |p: &PeerId| {
        s.contacts()
            .unwrap()
            .into_iter()
            .find(|x| x.peer == *p)
            .unwrap()
    };
    assert_eq!((get(&a).chosen_ms, get(&a).petname), (None, None));
    assert_eq!(get(&a).shown_name(), "bob");
    // Chosen without a name: the announced one becomes the user's.
    s.choose_contact(&a, None, "bob", 20).unwrap();
    assert_eq!(get(&a).chosen_ms, Some(20));
    assert_eq!(get(&a).petname.as_deref(), Some("bob"));
    // The network renames it: shown apart, the user's name stays.
    s.touch_contacts(&[(a, "bob\u{200B}"), (b, "bob")], 30)
        .unwrap();
    assert_eq!(get(&a).shown_name(), "bob");
    assert_eq!(get(&a).name, "bob\u{200B}");
    // Choosing again keeps the name and the date; giving a name renames.
    s.choose_contact(&a, None, "whatever", 40).unwrap();
    assert_eq!((get(&a).chosen_ms, get(&a).shown_name()), (Some(20), "bob"));
    s.choose_contact(&a, Some("Bob (work)"), "whatever", 50)
        .unwrap();
    assert_eq!(get(&a).shown_name(), "Bob (work)");
    // Someone never seen can be added by key.
    let c = peer(3);
    s.choose_contact(&c, Some("carol"), "c", 60).unwrap();
    assert_eq!(get(&c).petname.as_deref(), Some("carol"));
    assert_eq!(get(&b).chosen_ms, None, "merely seen stays a stranger");
}

#[test]
fn strangers_messages_are_requests_bounded_until_accepted_or_deleted() {
    let s = Store::open_in_memory().unwrap();
    let (friend, stranger) = (peer(1), peer(2));
    s.choose_contact(&friend, None, "friend", 1).unwrap();
    s.touch_contact(&stranger, "stranger", 1).unwrap();
    let id = |i: u64| {
        MessageId::from_bytes([
            (i % 256) as u8,
            (i / 256) as u8,
            9,
            9,
            9,
            9,
            9,
            9,
            9,
            9,
            9,
            9,
            9,
            9,
            9,
            9,
        ])
    };
    let got = |p: &PeerId, i: u64| {
        s.receive_message(p, &id(i), i, i, &format!("m{i}"), 10 + i)
            .unwrap()
    };
    // A contact's messages are the conversation; a stranger's are a request, up to a bound.
    assert!(matches!(got(&friend, 0), Received::New(m) if !m.request));
    for i in 0..MAX_REQUEST_MESSAGES_PER_PEER as u64 {
        assert!(
            matches!(got(&stranger, i), Received::New(m) if m.request),
            "{i}"
        );
    }
    assert_eq!(got(&stranger, 0), Received::Again);
    assert_eq!(got(&stranger, 999), Received::RequestsFull);
    // Requests count no unread messages and send no read receipts.
    assert_eq!(s.unread_counts().unwrap().get(&stranger), None);
    assert_eq!(s.mark_read(&stranger).unwrap(), 0);
    assert!(s.pending_receipts(&stranger).unwrap().is_empty());
    let list = s.message_requests().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].peer, stranger);
    assert_eq!(list[0].name, "stranger");
    assert_eq!(list[0].messages, MAX_REQUEST_MESSAGES_PER_PEER as u64);
    assert_eq!(
        list[0].last_text,
        format!("m{}", MAX_REQUEST_MESSAGES_PER_PEER - 1)
    );
    // Too many senders: a new one waits, one already waiting is not affected by the cap.
    for p in 3..(3 + MAX_REQUEST_PEERS as u8 - 1) {
        assert!(matches!(got(&peer(p), 1), Received::New(_)), "{p}");
    }
    assert_eq!(got(&peer(200), 1), Received::RequestsFull);
    // Deleted: gone, and room for someone else.
    assert_eq!(s.delete_request(&peer(3)).unwrap(), 1);
    assert!(matches!(got(&peer(200), 1), Received::New(_)));
    // Accepted: a contact, its messages in the conversation (unread, as new ones).
    assert_eq!(
        s.accept_request(&stranger, Some("Sam"), "stranger", 50)
            .unwrap(),
        20
    );
    assert_eq!(s.trust(&stranger).unwrap(), Trust::Contact);
    assert_eq!(s.unread_counts().unwrap().get(&stranger), Some(&20));
    assert!(matches!(got(&stranger, 1000), Received::New(m) if !m.request));
    assert!(
        s.message_requests()
            .unwrap()
            .iter()
            .all(|r| r.peer != stranger)
    );
}

#[test]
fn a_relays_cluster_is_remembered_per_relay_and_replaced_whole() {
    let s = Store::open_in_memory().unwrap();
    let r = |n: u8| ClusterRelay {
        addr: format!("relay{n}.example:7700"),
        key: peer(n),
        region: format!("r{n}"),
    };
    s.set_cluster_relays("relay1.example:7700", &[r(2), r(3)], 1)
        .unwrap();
    s.set_cluster_relays("other:7700", &[r(9)], 1).unwrap();
    assert_eq!(
        s.cluster_relays("relay1.example:7700").unwrap(),
        vec![r(2), r(3)]
    );
    // The relay's next list replaces the last (relay 3 left the cluster).
    s.set_cluster_relays("relay1.example:7700", &[r(4), r(2)], 2)
        .unwrap();
    assert_eq!(
        s.cluster_relays("relay1.example:7700").unwrap(),
        vec![r(2), r(4)]
    );
    assert_eq!(s.cluster_relays("other:7700").unwrap(), vec![r(9)]);
    assert!(s.cluster_relays("unknown:7700").unwrap().is_empty());
    // Bounded, whatever a relay lists.
    let many: Vec<_> = (0..200u8).map(r).collect();
    s.set_cluster_relays("relay1.example:7700", &many, 3)
        .unwrap();
    assert_eq!(
        s.cluster_relays("relay1.example:7700").unwrap().len(),
        MAX_CLUSTER_RELAYS
    );
}
