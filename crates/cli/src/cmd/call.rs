//! `p2pcall call`.

use anyhow::{Context, Result};
use clap::Args;
use p2pcall_core::engine::EngineEvent;
use p2pcall_net::Event;

use crate::Cli;
use crate::ctx::*;
use crate::output::*;
use crate::{calls, exit};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall call alice --video camera --audio mic        # a real call
  p2pcall call alice --duration 10 --record-video in.y4m  # test pattern and tone, recorded
  p2pcall call alice --video screen --audio none       # share the screen
While a call runs, type: mute, unmute, camera off, camera on, source SRC, hangup")]
pub(crate) struct CallArgs {
    /// The peer: fingerprint (or its first 4+ digits), full id, or display name
    peer: String,
    #[command(flatten)]
    media: calls::MediaArgs,
}

pub(crate) async fn call(cli: &Cli, a: &CallArgs) -> Result<()> {
    a.media.options().check()?;
    let Dialed {
        engine,
        mut events,
        peer,
        ..
    } = dial(cli, &a.peer).await?;
    engine.call(peer, a.media.options()).await?;
    if !cli.json {
        outln!("calling {}…", peer.fingerprint());
    }
    let console = calls::spawn_console(engine.clone());
    let mut stats_file = calls::StatsFile::default();
    let mut end = None;
    loop {
        tokio::select! {
            _ = shutdown_signal() => { let _ = engine.hangup().await; }
            e = events.recv() => match e {
                Some(EngineEvent::Call(c)) => {
                    calls::print(cli.json, &EngineEvent::Call(c.clone()));
                    stats_file.note(&c);
                    if matches!(c, p2pcall_core::call::CallEvent::Ended { .. }) {
                        end = Some(c);
                        break;
                    }
                }
                Some(e @ EngineEvent::Net(Event::PathChanged { .. })) => print_event(cli.json, &e),
                Some(_) => {}
                None => break,
            },
        }
    }
    console.abort();
    engine.shutdown().await;
    let end = end.context("the engine stopped during the call")?;
    if let Some(path) = &a.media.stats_json {
        stats_file.write(path, "caller", &end)?;
    }
    match &end {
        p2pcall_core::call::CallEvent::Ended { reason, .. } if !calls::ended_normally(&end) => {
            use p2pcall_core::call::EndReason as R;
            let message = p2pcall_core::call::describe_end(reason).1;
            Err(match reason {
                R::Rejected { remote: true, .. } => exit::Fail::Declined(message).into(),
                R::Unreachable => exit::Fail::PeerSilent(message).into(),
                _ => anyhow::anyhow!(message),
            })
        }
        _ => Ok(()),
    }
}
