//! `p2pcall history`.

use anyhow::Result;
use clap::Args;
use p2pcall_api::Request;
use serde_json::json;

use crate::Cli;
use crate::ctx::*;
use crate::output::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall history alice
  p2pcall history alice -n 20 --before 118")]
pub(crate) struct HistoryArgs {
    /// The peer: fingerprint (or its first 4+ digits), full id, or display name
    peer: String,
    /// Most messages to show (the newest)
    #[arg(long, short = 'n', default_value_t = 50)]
    limit: usize,
    /// Show messages older than this message number (from an earlier page's "before")
    #[arg(long, value_name = "N")]
    before: Option<i64>,
}

pub(crate) async fn history(cli: &Cli, a: &HistoryArgs) -> Result<()> {
    let ctx = load(cli)?;
    let store = open_store(&ctx)?;
    let peer = resolve_known(&store, &a.peer)?;
    let page = store.history(&peer, a.before, a.limit)?;
    let known = store
        .contacts()?
        .into_iter()
        .find(|c| c.peer == peer)
        .map(|c| c.shown_name().to_string())
        .filter(|n| !n.is_empty());
    let name = known
        .clone()
        .unwrap_or_else(|| peer.fingerprint().to_string());
    if cli.json {
        outln!(
            "{}",
            json!({
                "peer": peer_obj(&peer, known.as_deref()),
                "messages": page.iter().map(message_json).collect::<Vec<_>>(),
                "before": page.first().map(|m| m.rowid),
            })
        );
    } else {
        if page.is_empty() {
            outln!("no messages with {name} ({})", peer.fingerprint());
        }
        for m in &page {
            let who = if m.outgoing { "me" } else { name.as_str() };
            let state = if m.outgoing {
                format!(" [{}]", m.state.as_str())
            } else if m.request {
                " [message request: `p2pcall requests` to accept or delete]".to_string()
            } else {
                String::new()
            };
            outln!(
                "{:>6}  {}  {who}: {}{state}",
                m.rowid,
                since(m.received_ms.unwrap_or(m.sent_ms)),
                m.text
            );
        }
        if page.len() == a.limit
            && let Some(first) = page.first()
        {
            outln!(
                "(older: p2pcall history {} --before {})",
                a.peer,
                first.rowid
            );
        }
    }
    // Reading sends read receipts: through the engine running on this data dir, or now if
    // the relay is reachable, else by the next `listen`.
    if let Some(mut c) = engine_client(cli).await? {
        let peer = peer.to_hex();
        c.call(Request::MarkRead { peer }).await?;
        return Ok(());
    }
    let reachable = cli.relay.is_some()
        || ctx.settings.relay.is_some()
        || lan_config(cli, &ctx.settings).is_some();
    if store.mark_read(&peer)? > 0 && reachable {
        drop(store);
        if let Ok((engine, mut events)) = start_engine(cli, true).await {
            if wait_online(&engine, &mut events).await.is_ok()
                && engine.wait_presence(RELAY_WAIT).await.is_ok()
            {
                let _ = tokio::time::timeout(RELAY_WAIT, engine.flush_chat(peer)).await;
            }
            engine.shutdown().await;
        }
    }
    Ok(())
}
