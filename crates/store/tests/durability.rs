//! A message reported stored survives `kill -9` of the process at any moment.
//!
//! The test re-runs its own binary as a child that writes messages as fast as it can and
//! prints each id after the write returned; the parent kills it with SIGKILL after a varying
//! number of lines, reopens the database and checks that every reported message is there and
//! the file passes SQLite's integrity check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use p2pcall_proto::PeerId;
use p2pcall_proto::chat::MessageId;
use p2pcall_proto::id::hex;
use p2pcall_store::Store;

const CHILD_ENV: &str = "P2PCALL_STORE_CHILD_DB";

#[test]
fn child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let s = Store::open(std::path::Path::new(&path)).unwrap();
    let peer = PeerId::from_bytes([5; 32]);
    s.choose_contact(&peer, None, "five", 0).unwrap();
    for i in 0u64.. {
        if i % 2 == 0 {
            let m = s.queue_message(&peer, &format!("out {i}"), i).unwrap();
            println!("out {}", m.id);
        } else {
            let id: [u8; 16] = rand::random();
            s.receive_message(
                &peer,
                &MessageId::from_bytes(id),
                i,
                i,
                &format!("in {i}"),
                i,
            )
            .unwrap();
            println!("in {}", hex(&id));
        }
    }
}

#[test]
fn reported_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let mut reported = Vec::new();
    for round in 0..6 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let kill_after = 5 + round * 37;
        let mut n = 0;
        while let Some(Ok(line)) = lines.next() {
            if let Some(id) = line
                .strip_prefix("out ")
                .or_else(|| line.strip_prefix("in "))
            {
                reported.push(id.to_string());
                n += 1;
                if n == kill_after {
                    child.kill().unwrap();
                    break;
                }
            }
        }
        child.wait().unwrap();
        let s = Store::open(&path).unwrap();
        assert!(s.integrity_ok().unwrap(), "round {round}");
        let peer = PeerId::from_bytes([5; 32]);
        let stored: std::collections::HashSet<String> = s
            .history(&peer, None, usize::MAX)
            .unwrap()
            .iter()
            .map(|m| m.id.to_string())
            .collect();
        for id in &reported {
            assert!(
                stored.contains(id),
                "round {round}: message {id} was reported stored but is gone"
            );
        }
        // Outgoing sequence numbers stay unique and increasing across crashes.
        let mut seqs: Vec<u64> = s
            .history(&peer, None, usize::MAX)
            .unwrap()
            .iter()
            .filter(|m| m.outgoing)
            .map(|m| m.seq)
            .collect();
        let sorted = {
            let mut v = seqs.clone();
            v.sort_unstable();
            v.dedup();
            v
        };
        seqs.dedup();
        assert_eq!(seqs, sorted);
    }
    assert!(reported.len() > 100);
}
