//! `p2pcall transfers`: unfinished transfers (what `send` resumes, and the partial files of
//! incoming ones), and `transfers clean` to give incoming ones up.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use p2pcall_core::Store;
use p2pcall_core::transfer::partials::{self, Cleaned, Unfinished};
use p2pcall_proto::transfer::TransferId;
use p2pcall_store::{TransferRecord, TransferState};
use serde_json::json;

use crate::output::{human, path_strings, peer_obj, since};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall transfers                       # unfinished transfers, both ways
  p2pcall transfers clean --older-than 7  # delete partial files older than a week")]
pub struct TransfersArgs {
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Give up unfinished incoming transfers: remove their partial files (and the folders
    /// they alone filled); a later offer of the same transfer asks again
    Clean {
        /// Only these transfers (ids as `transfers` lists them) [default: every unfinished
        /// incoming transfer]
        ids: Vec<String>,
        /// Only transfers nobody resumed for more than this many days
        #[arg(long, value_name = "DAYS")]
        older_than: Option<u64>,
    },
}

pub fn run(store: &Store, json: bool, a: &TransfersArgs) -> Result<()> {
    match &a.action {
        None => list(store, json),
        Some(Action::Clean { ids, older_than }) => clean(store, json, ids, *older_than),
    }
}

fn contact_name(store: &Store, r: &TransferRecord) -> Option<String> {
    store
        .contact_name(&r.peer)
        .ok()
        .flatten()
        .filter(|n| !n.is_empty())
}

fn name_of(store: &Store, r: &TransferRecord) -> String {
    contact_name(store, r).unwrap_or_else(|| r.peer.fingerprint().to_string())
}

fn peer_of(store: &Store, r: &TransferRecord) -> serde_json::Value {
    peer_obj(&r.peer, contact_name(store, r).as_deref())
}

fn state(r: &TransferRecord) -> &'static str {
    match r.state {
        TransferState::Offered => "offered",
        TransferState::Active => "interrupted",
        TransferState::Done => "done",
        TransferState::Rejected => "rejected",
        TransferState::Cancelled => "cancelled",
        TransferState::Failed => "failed",
    }
}

/// One transfer in a line: direction, id, peer, state, size, age.
fn line(store: &Store, r: &TransferRecord) -> String {
    format!(
        "{}  {}  {} {}  {} ({} files, {})  {} ago",
        if r.outgoing { "out" } else { "in " },
        r.id,
        if r.outgoing { "to" } else { "from" },
        name_of(store, r),
        state(r),
        r.files,
        human(r.total_bytes as f64),
        since(r.updated_ms),
    )
}

fn incoming_json(store: &Store, u: &Unfinished) -> serde_json::Value {
    let r = &u.record;
    json!({
        "id": r.id.to_string(), "peer": peer_of(store, r),
        "state": state(r), "total_bytes": r.total_bytes, "files": r.files,
        "dest": r.dest.as_ref().map(|d| d.display().to_string()),
        "partial_files": path_strings(&u.partials),
        "partial_bytes": u.partial_bytes, "updated_ms": r.updated_ms,
    })
}

fn list(store: &Store, json: bool) -> Result<()> {
    let incoming = partials::unfinished(store)?;
    let outgoing = store.open_outgoing(None)?;
    if json {
        outln!(
            "{}",
            json!({
                "event": "transfers",
                "incoming": incoming.iter().map(|u| incoming_json(store, u)).collect::<Vec<_>>(),
                "outgoing": outgoing.iter().map(|r| json!({
                    "id": r.id.to_string(), "peer": peer_of(store, r), "state": state(r), "total_bytes": r.total_bytes,
                    "files": r.files, "updated_ms": r.updated_ms,
                    "sources": path_strings(&r.sources),
                })).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    if incoming.is_empty() && outgoing.is_empty() {
        outln!("no unfinished transfers");
        return Ok(());
    }
    for u in &incoming {
        let r = &u.record;
        outln!(
            "{}; partial files: {} ({} on disk){}",
            line(store, r),
            u.partials.len(),
            human(u.partial_bytes as f64),
            r.dest
                .as_ref()
                .map(|d| format!(" in {}", d.display()))
                .unwrap_or_default(),
        );
    }
    for r in &outgoing {
        outln!(
            "{}: run `p2pcall send {} {}` again to resume",
            line(store, r),
            r.peer.fingerprint(),
            path_strings(&r.sources).join(" "),
        );
    }
    if !incoming.is_empty() {
        outln!(
            "`p2pcall transfers clean [ID...]` removes the partial files of incoming ones (they are removed anyway after `partial_max_age_days`, 30 by default)"
        );
    }
    Ok(())
}

fn clean(store: &Store, json: bool, ids: &[String], older_than: Option<u64>) -> Result<()> {
    let mut wanted = Vec::new();
    for s in ids {
        match s.parse::<TransferId>() {
            Ok(id) => wanted.push(id),
            Err(_) => bail!(
                "{s:?} is not a transfer id (32 hex digits, as `p2pcall transfers` lists them)"
            ),
        }
    }
    let c: Cleaned = match older_than {
        Some(days) => partials::clean_older_than(
            store,
            Duration::from_secs(days.saturating_mul(24 * 3600)),
            |r| !wanted.is_empty() && !wanted.contains(&r.id),
        )?,
        None => partials::clean(store, |r| wanted.is_empty() || wanted.contains(&r.id))?,
    };
    if json {
        outln!(
            "{}",
            json!({"event": "cleaned", "transfers": c.transfers, "files": c.files, "bytes": c.bytes})
        );
    } else {
        outln!(
            "gave up {} transfer(s): removed {} partial file(s), {} freed",
            c.transfers,
            c.files,
            human(c.bytes as f64)
        );
    }
    Ok(())
}
