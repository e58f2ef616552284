//! `p2pcall call`.

use anyhow::{Context, Result};
use clap::Args;
use p2pcall_core::engine::EngineEvent;
use p2pcall_net::Event;
use p2pcall_proto::id::CallId;

use crate::Cli;
use crate::ctx::*;
use crate::output::*;
use crate::session::Session;
use crate::{calls, exit};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall call alice --video camera --audio mic        # a real call
  p2pcall call alice --duration 10 --record-video in.y4m  # test pattern and tone, recorded
  p2pcall call alice --video screen --audio none       # share the screen
  p2pcall call alice bob carol                         # a group call of four
While a call runs, type: mute, unmute, camera off, camera on, source SRC, add PEER, hangup")]
pub(crate) struct CallArgs {
    /// The peer: fingerprint (or its first 4+ digits), full id, or display name; up to five
    /// peers for a group call (each is called over its own connection, media goes to every
    /// participant directly)
    #[arg(required = true, value_name = "PEER")]
    peers: Vec<String>,
    #[command(flatten)]
    media: calls::MediaArgs,
}

pub(crate) async fn call(cli: &Cli, a: &CallArgs) -> Result<()> {
    let most = p2pcall_proto::group::MAX_MEMBERS - 1;
    if a.peers.len() > most {
        anyhow::bail!(
            "a call has at most {} participants: name at most {most} peers",
            most + 1
        );
    }
    let mut opts = a.media.options();
    let mut session = Session::open(cli, &a.peers[0]).await?;
    let mut also = Vec::new();
    for q in &a.peers[1..] {
        let p = session.resolve(q).await?;
        if p == session.peer || also.contains(&p) {
            anyhow::bail!("{q:?} is named twice: name each peer once");
        }
        also.push(p);
    }
    if !session.through_daemon() {
        // The daemon opens the devices and files itself, and checks them there.
        opts.check()?;
    }
    let peer = session.peer;
    // Ctrl-C while the connection comes up hangs up there too (a daemon would ring the peer
    // after we are gone).
    let mut control = session.control(cli).await?;
    // One listener from here to the call's end (a signal between two would be lost).
    let mut stop: Stop = Box::pin(shutdown_signal());
    let placed = tokio::select! {
        c = session.call(opts, &also) => Some(c),
        () = &mut stop => None,
    };
    let Some(call) = placed else {
        let _ = control.hangup().await;
        session.close().await;
        return Err(exit::Fail::Interrupted("hung up before the call connected".into()).into());
    };
    let call = call?;
    if !cli.json {
        let all: Vec<String> = std::iter::once(peer)
            .chain(also)
            .map(|p| p.fingerprint().to_string())
            .collect();
        outln!("calling {}…", all.join(", "));
    }
    let stats = a.media.stats_json.as_deref();
    follow(cli, session, call, stats, "caller", stop).await
}

/// Ctrl-C, SIGTERM or a closed stdout: the listener a command keeps for its whole life.
pub(crate) type Stop = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Prints a call's events until it ends (typed commands change it, Ctrl-C hangs up), writes
/// its statistics to `stats_json`, and says how it ended in the exit code.
pub(crate) async fn follow(
    cli: &Cli,
    mut session: Session,
    call: CallId,
    stats_json: Option<&std::path::Path>,
    role: &str,
    mut stop: Stop,
) -> Result<()> {
    let peer = session.peer;
    let console = calls::spawn_console(session.control(cli).await?);
    let mut hangup = session.control(cli).await?;
    let mut stats_file = calls::StatsFile::default();
    let mut end = None;
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = &mut stop, if !stopping => {
                stopping = true;
                let _ = hangup.hangup().await;
            }
            e = session.next_event() => match e? {
                Some(EngineEvent::Call(c)) if calls::call_id(&c).is_none_or(|id| id == call) => {
                    calls::print(cli.json, &EngineEvent::Call(c.clone()));
                    stats_file.note(&c);
                    if matches!(c, p2pcall_core::call::CallEvent::Ended { .. }) {
                        end = Some(c);
                        break;
                    }
                }
                Some(e @ EngineEvent::Net(Event::PathChanged { peer: p, .. })) if p == peer => {
                    print_event(cli.json, &e);
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    console.abort();
    session.close().await;
    let end = end.context("the engine stopped during the call")?;
    if let Some(path) = stats_json {
        stats_file.write(path, role, &end)?;
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
