//! `p2pcall answer` and `decline`: the incoming call ringing in the running daemon,
//! answered one at a time (`listen --answer` is the automatic policy).

use anyhow::{Context, Result, bail};
use clap::Args;
use p2pcall_api::{Answer, Request};
use serde_json::json;

use crate::Cli;
use crate::calls;
use crate::ctx::*;
use crate::session::Session;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall answer                          # the call ringing now, test pattern and tone
  p2pcall answer --video camera --audio mic
  p2pcall answer 5be1 --record-video in.y4m --duration 30
While the call runs, type: mute, unmute, camera off, camera on, source SRC, add PEER, hangup")]
pub(crate) struct AnswerCallArgs {
    /// The call: its id (or first digits) as `listen` or the app show it [default: the one
    /// ringing]
    id: Option<String>,
    #[command(flatten)]
    media: calls::MediaArgs,
}

#[derive(Args, Debug)]
#[command(after_help = "Example:
  p2pcall decline")]
pub(crate) struct DeclineArgs {
    /// The call: its id (or first digits) [default: the one ringing]
    id: Option<String>,
}

async fn daemon(cli: &Cli) -> Result<p2pcall_daemon::Client> {
    match engine_client(cli).await? {
        Some(c) => Ok(c),
        None => bail!(
            "no p2pcall daemon runs on this data dir: calls ring in a running daemon (`p2pcall daemon`) or the app; `p2pcall listen --answer` answers them unattended instead"
        ),
    }
}

/// The call ringing, if `id` (when given) starts its id.
async fn ringing(c: &mut p2pcall_daemon::Client, id: Option<&str>) -> Result<p2pcall_api::Ringing> {
    let Answer::Ringing { call } = c.call(Request::Ringing).await? else {
        bail!("the p2pcall daemon answered something else than the ringing call");
    };
    match (call, id) {
        (None, _) => Err(
            p2pcall_daemon::DaemonError::Refused(p2pcall_api::RpcError::new(
                p2pcall_api::ErrorKind::NoSuchCall,
                "no call is ringing",
            ))
            .into(),
        ),
        (Some(r), Some(id)) if !r.call.starts_with(&id.trim().to_ascii_lowercase()) => bail!(
            "no ringing call {id:?}; the call ringing now is {} from {}",
            r.call,
            r.name
        ),
        (Some(r), _) => Ok(r),
    }
}

pub(crate) async fn answer(cli: &Cli, a: &AnswerCallArgs) -> Result<()> {
    let mut c = daemon(cli).await?;
    let r = ringing(&mut c, a.id.as_deref()).await?;
    let peer = r
        .peer
        .parse()
        .context("the p2pcall daemon sent an unreadable id")?;
    let call = r
        .call
        .parse()
        .context("the p2pcall daemon sent an unreadable call id")?;
    let stop: super::call::Stop = Box::pin(shutdown_signal());
    // Subscribed before answering, so that the call's start is not missed.
    let mut session = Session::through(cli, c, peer).await?;
    let request = Request::AnswerCall {
        id: Some(r.call.clone()),
        media: p2pcall_daemon::media(&a.media.options()),
    };
    if let Some(rpc) = session.rpc() {
        rpc.call(request).await?;
    }
    if !cli.json {
        outln!("answered the call from {} ({})", r.name, peer.fingerprint());
    }
    let stats = a.media.stats_json.as_deref();
    super::call::follow(cli, session, call, stats, "callee", stop).await
}

pub(crate) async fn decline(cli: &Cli, a: &DeclineArgs) -> Result<()> {
    let mut c = daemon(cli).await?;
    let r = ringing(&mut c, a.id.as_deref()).await?;
    c.call(Request::DeclineCall {
        id: Some(r.call.clone()),
    })
    .await?;
    if cli.json {
        outln!("{}", json!({"event": "call_declined", "call": r.call}));
    } else {
        outln!("declined the call from {}: the caller is told", r.name);
    }
    Ok(())
}
