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
    print_peers(cli, &list);
    Ok(())
}

fn print_peers(cli: &Cli, list: &[PeerInfo]) {
    if cli.json {
        outln!(
            "{}",
            serde_json::Value::Array(list.iter().map(peer_json).collect())
        );
    } else if list.is_empty() {
        outln!("nobody else is online");
    } else {
        outln!("{:<24} {:<26} ONLINE FOR", "NAME", "FINGERPRINT");
        for p in list {
            outln!(
                "{:<24} {:<26} {}",
                p.name,
                p.id.fingerprint().to_string(),
                since(p.online_since_ms)
            );
        }
    }
}
