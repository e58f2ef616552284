//! `p2pcall chat`.

use anyhow::Result;
use clap::Args;
use p2pcall_core::MessageState;

use crate::Cli;
use crate::ctx::*;
use crate::output::*;

#[derive(Args, Debug)]
pub(crate) struct ChatArgs {
    /// The peer: fingerprint (or its first 4+ digits), full id, or display name (online or
    /// known from earlier)
    peer: String,
    /// The message (up to 16 KiB)
    text: String,
}

pub(crate) async fn chat(cli: &Cli, a: &ChatArgs) -> Result<()> {
    let (engine, mut events) = start_engine(cli, true).await?;
    let online = match wait_online(&engine, &mut events).await {
        Ok(_) => engine.wait_presence(RELAY_WAIT).await.is_ok(),
        Err(e) => {
            eprintln!("warning: {e:#}; the message will be queued");
            false
        }
    };
    let peer = if online {
        engine.resolve_peer(&a.peer)?
    } else {
        resolve_known(engine.store(), &a.peer)?
    };
    let m = engine.send_message(peer, &a.text).await?;
    if cli.json {
        println!("{}", message_json(&m));
    } else {
        match m.state {
            MessageState::Queued | MessageState::Sent => {
                let name = engine.peer_name(&peer);
                if engine.peer_offline(&peer) || !online {
                    println!(
                        "queued: {name} is offline; it is delivered when {name} is online (keep `p2pcall listen` running)"
                    );
                } else {
                    println!(
                        "queued: {name} is not reachable now; it is delivered when you are both online (keep `p2pcall listen` running)"
                    );
                }
            }
            s => println!("{} to {}", s.as_str(), peer.fingerprint()),
        }
    }
    engine.shutdown().await;
    Ok(())
}
