//! `p2pcall peers`.

use anyhow::Result;

use crate::Cli;
use crate::ctx::*;
use crate::output::*;

pub(crate) async fn peers(cli: &Cli) -> Result<()> {
    let (engine, mut events) = start_engine(cli, true).await?;
    wait_online(&engine, &mut events).await?;
    let list = engine.wait_presence(RELAY_WAIT).await?;
    if cli.json {
        outln!(
            "{}",
            serde_json::Value::Array(list.iter().map(peer_json).collect())
        );
    } else if list.is_empty() {
        outln!("nobody else is online");
    } else {
        outln!("{:<24} {:<26} ONLINE FOR", "NAME", "FINGERPRINT");
        for p in &list {
            outln!(
                "{:<24} {:<26} {}",
                p.name,
                p.id.fingerprint().to_string(),
                since(p.online_since_ms)
            );
        }
    }
    engine.shutdown().await;
    Ok(())
}
