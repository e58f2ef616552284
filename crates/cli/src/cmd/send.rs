//! `p2pcall send`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use p2pcall_api::{Answer, Request};
use p2pcall_core::engine::EngineEvent;
use p2pcall_core::transfer::{Progress, Summary, TransferEvent};

use crate::Cli;
use crate::ctx::*;
use crate::exit;
use crate::output::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall send alice report.pdf photos/
  p2pcall send alice big.iso        # Ctrl-C, then the same command resumes it")]
pub(crate) struct SendArgs {
    /// The peer: fingerprint (or its first 4+ digits), full id, or display name
    peer: String,
    /// Files and folders to send (folders with everything in them)
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub(crate) async fn send(cli: &Cli, a: &SendArgs) -> Result<()> {
    for p in &a.paths {
        std::fs::symlink_metadata(p).with_context(|| format!("cannot send {}", p.display()))?;
    }
    if let Some(c) = engine_client(cli).await? {
        return send_through(cli, a, c).await;
    }
    let Dialed {
        engine,
        mut events,
        peer,
        ..
    } = dial(cli, &a.peer).await?;
    let bar = progress_bar(cli);
    let h = engine.clone();
    let paths = a.paths.clone();
    let mut job = tokio::spawn(async move { h.send_files(peer, &paths).await });
    let mut id = None;
    let mut interrupted = false;
    // One signal listener for the whole loop: a signal between two listeners is lost.
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let result = loop {
        tokio::select! {
            r = &mut job => break r?,
            _ = &mut stop, if !interrupted => {
                // Ctrl-C interrupts (both sides keep what was verified); it does not cancel.
                interrupted = true;
                // Interrupted where it runs (both sides record the verified chunks); if it is
                // not running (not accepted yet, or between its set-up steps), withdrawing it
                // is enough: the transfer stays open here and the same `send` offers it
                // again under its id.
                if !id.is_some_and(|id| engine.interrupt_transfer(peer, id)) {
                    job.abort();
                    let reason = if id.is_none() { "interrupted before the peer answered" } else { "interrupted" };
                    break Err(p2pcall_core::EngineError::Aborted { code: p2pcall_proto::transfer::AbortCode::Interrupted, reason: reason.into() });
                }
            }
            e = events.recv() => match e {
                Some(EngineEvent::Transfer(TransferEvent::Progress(p))) if p.outgoing && p.peer == peer => {
                    id = Some(p.id);
                    show(bar.as_ref(), &p);
                }
                Some(_) => {}
                None => break Err(p2pcall_core::StreamError::Ended("the engine stopped".into()).into()),
            },
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    engine.shutdown().await;
    let s = result.map_err(|e| -> anyhow::Error {
        use p2pcall_core::EngineError as E;
        use p2pcall_proto::transfer::AbortCode as C;
        // After Ctrl-C, however the transfer ended (the receiver's own abort, the
        // connection closing under it) it was interrupted, unless the peer refused it.
        let resumable = (interrupted && !matches!(&e, E::Rejected(_)))
            || matches!(
                &e,
                E::Aborted {
                    code: C::Interrupted | C::Io,
                    ..
                } | E::Stream(_)
                    | E::Net(p2pcall_net::NetError::Connection(_))
            );
        if resumable {
            exit::Fail::Interrupted(e.to_string()).into()
        } else {
            e.into()
        }
    })?;
    print_summary(cli, &s);
    Ok(())
}

/// The progress bar (none with `--json`: progress lines instead).
fn progress_bar(cli: &Cli) -> Option<indicatif::ProgressBar> {
    (!cli.json).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                // Decimal units, as the receiver prints them (kB, MB, GB).
                "{msg} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_message("waiting for the peer to accept");
        b
    })
}

fn show(bar: Option<&indicatif::ProgressBar>, p: &Progress) {
    match bar {
        Some(b) => {
            b.set_length(p.total_bytes);
            b.set_position(p.done_bytes);
            b.set_message(format!("{}/{} files", p.files_done, p.files));
        }
        None => outln!("{}", progress_json(p)),
    }
}

fn print_summary(cli: &Cli, s: &Summary) {
    if cli.json {
        outln!("{}", summary_json(s));
    } else {
        outln!("{}", transfer_text(&TransferEvent::Finished(s.clone())));
        if !s.skipped.is_empty() {
            outln!(
                "skipped (symlinks or special files): {}",
                path_list(&s.skipped)
            );
        }
    }
}

/// `send` through the engine running on this data dir: the request is answered when the
/// transfer ends; progress comes on a second connection's events; Ctrl-C interrupts the
/// transfer through a third (both sides keep what was verified).
async fn send_through(cli: &Cli, a: &SendArgs, mut c: p2pcall_daemon::Client) -> Result<()> {
    let peer = a.peer.clone();
    let Answer::Resolved { peer: who, contact } = c.call(Request::Resolve { peer }).await? else {
        bail!("the p2pcall daemon answered something else than the peer");
    };
    if !contact && let Ok(id) = who.id.parse() {
        crate::output::stranger_note(&id, &who.name);
    }
    let paths = (a.paths.iter())
        .map(|p| std::path::absolute(p).map(|p| p.display().to_string()))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut events = engine_client(cli)
        .await?
        .context("the p2pcall daemon stopped")?;
    events.call(Request::Subscribe).await?;
    let bar = progress_bar(cli);
    let request = Request::SendFiles {
        peer: who.id.clone(),
        paths,
    };
    let call = c.call(request);
    tokio::pin!(call);
    let mut id: Option<String> = None;
    let mut interrupted = false;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let result = loop {
        tokio::select! {
            r = &mut call => break r.map_err(anyhow::Error::from),
            _ = &mut stop, if !interrupted => {
                interrupted = true;
                let Some(id) = id.clone() else {
                    // Not accepted yet: dropping the request withdraws nothing in the daemon,
                    // so say it plainly; the same command offers it again.
                    break Err(exit::Fail::Interrupted("interrupted before the peer answered (the daemon keeps offering it)".into()).into());
                };
                let mut ctl = engine_client(cli).await?.context("the p2pcall daemon stopped")?;
                ctl.call(Request::InterruptTransfer { peer: who.id.clone(), id }).await?;
            }
            e = events.next_event() => {
                if let p2pcall_api::Event::TransferProgress(p) = e?
                    && p.outgoing
                    && p.peer == who.id
                    && id.as_ref().is_none_or(|i| *i == p.id)
                    && let Some(p) = p2pcall_daemon::progress_from_api(&p)
                {
                    id = Some(p.id.to_string());
                    show(bar.as_ref(), &p);
                }
            }
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let Answer::Transferred(s) = result? else {
        bail!("the p2pcall daemon answered something else than the finished transfer");
    };
    let s = p2pcall_daemon::summary_from_api(&s)
        .context("the p2pcall daemon sent an unreadable summary")?;
    print_summary(cli, &s);
    Ok(())
}
