//! `p2pcall daemon`: this identity's engine, for other commands and the app to use.

use anyhow::Result;
use p2pcall_net::Event;
use serde_json::json;

use crate::Cli;
use crate::ctx::*;
use crate::output::*;
use p2pcall_core::engine::EngineEvent;

pub(crate) async fn daemon(cli: &Cli) -> Result<()> {
    // Presence on, and queued messages and unfinished transfers go out whenever their peer
    // is reachable.
    let (engine, mut events) = start_engine_with(cli, true, true).await?;
    let (server, hub) = serve_api(cli, &engine)?;
    let me = engine.id();
    if cli.json {
        outln!(
            "{}",
            json!({"event": "daemon_started", "peer": peer_obj(&me, None), "socket": server.path(), "pid": std::process::id()})
        );
    } else {
        outln!(
            "p2pcall daemon for {} (pid {}): other commands and the app use it; local API at {} (Ctrl-C to stop)",
            me.fingerprint(),
            std::process::id(),
            server.path().display()
        );
    }
    // One signal listener for the whole loop: a signal between two listeners is lost.
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            e = events.recv() => match e {
                Some(e) => {
                    hub.publish(&e);
                    report(cli, &e);
                }
                None => break,
            },
        }
    }
    drop(server);
    engine.shutdown().await;
    Ok(())
}

/// The daemon's own log: how its relay session fares (clients see everything else).
fn report(cli: &Cli, e: &EngineEvent) {
    if let EngineEvent::Net(
        Event::RelayConnected { .. }
        | Event::RelayDisconnected { .. }
        | Event::RelayRefused { .. }
        | Event::RelayUnreachable { .. },
    ) = e
    {
        print_event(cli.json, e);
    }
}
