//! `p2pcall peers`.

use anyhow::{Result, bail};
use p2pcall_api::{Answer, Request};
use p2pcall_core::PeerInfo;

use crate::Cli;
use crate::ctx::*;
use crate::output::*;

pub(crate) async fn peers(cli: &Cli) -> Result<()> {
    let list = match engine_client(cli).await? {
        Some(mut c) => {
            let wait_ms = RELAY_WAIT.as_millis() as u64;
            let Answer::Peers { peers } = c.call(Request::Peers { wait_ms }).await? else {
                bail!("the p2pcall daemon answered something else than the peer list");
            };
            peers
                .iter()
                .filter_map(p2pcall_daemon::peer_from_api)
                .collect()
        }
        None => {
            let (engine, mut events) = start_engine(cli, true).await?;
            wait_online(&engine, &mut events).await?;
            let list = engine.wait_presence(RELAY_WAIT).await?;
            engine.shutdown().await;
            list
        }
    };
    // The user's contacts, to flag strangers that go by a contact's name.
    let contacts = load(cli)
        .and_then(|ctx| open_store(&ctx))
        .and_then(|s| Ok(s.contacts()?))
        .unwrap_or_default();
    print_peers(cli, &list, &contacts);
    Ok(())
}

fn print_peers(cli: &Cli, list: &[PeerInfo], contacts: &[p2pcall_core::Contact]) {
    let looks = |p: &PeerInfo| lookalike_of(contacts, &p.id, &p.name);
    if cli.json {
        outln!(
            "{}",
            serde_json::Value::Array(
                list.iter()
                    .map(|p| {
                        let mut v = peer_json(p);
                        v["looks_like_contact"] = serde_json::json!(looks(p));
                        v
                    })
                    .collect()
            )
        );
    } else if list.is_empty() {
        outln!("nobody else is online");
    } else {
        outln!("{:<24} {:<26} ONLINE FOR", "NAME", "FINGERPRINT");
        for p in list {
            outln!(
                "{:<24} {:<26} {}{}",
                p.name,
                p.id.fingerprint().to_string(),
                since(p.online_since_ms),
                looks(p)
                    .map(|c| format!("   WARNING: not your contact, looks like {c}"))
                    .unwrap_or_default()
            );
        }
    }
}
