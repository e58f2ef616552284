//! `p2pcall listen`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use p2pcall_api::{Answer, Request};
use p2pcall_core::engine::EngineEvent;
use p2pcall_core::transfer::TransferEvent;
use p2pcall_net::Event;

use crate::Cli;
use crate::calls;
use crate::ctx::*;
use crate::output::*;
use crate::session::Control;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall listen                               # online until Ctrl-C; offers and calls declined
  p2pcall listen --accept-files ~/Downloads --answer --video testsrc
  p2pcall listen --accept-files ~/Downloads --from verified
  p2pcall --json listen | jq 'select(.event == \"message\")'")]
pub(crate) struct ListenArgs {
    /// Accept every file offer into DIR without asking (unattended use); without it, offers
    /// are declined with a message telling the sender why
    #[arg(long, value_name = "DIR")]
    accept_files: Option<PathBuf>,
    /// Answer incoming calls (one at a time; others get "busy"); without it calls are
    /// declined
    #[arg(long)]
    answer: bool,
    /// Whose files --accept-files accepts and whose calls --answer answers: contacts (people
    /// you chose), verified (contacts whose safety number you compared) or anyone; others
    /// are declined (attached to a daemon: left waiting for `accept`/`answer`)
    #[arg(long, default_value = "contacts", value_name = "WHO")]
    from: p2pcall_core::Trust,
    #[command(flatten)]
    media: calls::MediaArgs,
}

pub(crate) async fn listen(cli: &Cli, a: &ListenArgs) -> Result<()> {
    if let Some(c) = engine_client(cli).await? {
        return attached(cli, a, c).await;
    }
    // What calls are answered with: checked once (a default device this machine lacks is
    // left out, and each call says so).
    let mut answer_with = a.media.options();
    if a.answer {
        answer_with.check()?;
        for n in &answer_with.notes {
            errln!("warning: {n}");
        }
    }
    if let Some(dir) = &a.accept_files {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the folder for received files {}",
                dir.display()
            )
        })?;
    }
    let (engine, mut events) = start_engine_with(cli, true, true).await?;
    // Other commands on this data dir use this engine meanwhile (if the socket cannot be
    // served, listening goes on without it).
    let (api, hub) = match serve_api(cli, &engine) {
        Ok((api, hub)) => (Some(api), hub),
        Err(e) => {
            errln!("warning: {e:#}; other commands cannot use this engine while `listen` runs");
            (None, std::sync::Arc::default())
        }
    };
    if !cli.json {
        outln!(
            "listening as {}{} (Ctrl-C to stop){}",
            engine.id().fingerprint(),
            if engine.endpoint().is_lan() {
                " on the LAN (mDNS, no relay)"
            } else {
                ""
            },
            a.accept_files
                .as_ref()
                .map(|d| format!("; accepting files into {}", d.display()))
                .unwrap_or_default()
        );
    }
    let mut last_progress: std::collections::HashMap<p2pcall_proto::transfer::TransferId, Instant> =
        Default::default();
    let mut stats_file = calls::StatsFile::default();
    let mut console = None;
    // One signal listener for the whole loop: a signal between two listeners is lost.
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            e = events.recv() => match e {
                Some(e) => {
                    hub.publish(&e);
                    if let EngineEvent::Transfer(TransferEvent::Progress(p)) = &e {
                        // At most one progress line per transfer and second.
                        let now = Instant::now();
                        let due = last_progress.get(&p.id).is_none_or(|t| now - *t >= Duration::from_secs(1));
                        if !due {
                            continue;
                        }
                        last_progress.insert(p.id, now);
                    }
                    print_event(cli.json, &e);
                    if let EngineEvent::Net(Event::Presence(_)) = &e {
                        warn_lookalikes(&engine.store().contacts().unwrap_or_default(), &e);
                    }
                    match &e {
                        EngineEvent::Net(Event::RelayRefused { reason, detail }) => {
                            bail!("the relay refused us: {reason} ({detail})");
                        }
                        EngineEvent::Call(c) => {
                            stats_file.note(c);
                            match c {
                                p2pcall_core::call::CallEvent::Incoming { call, peer, .. } => {
                                    let r = if a.answer && engine.trust(*peer).await.is_ok_and(|t| t >= a.from) {
                                        console.get_or_insert_with(|| calls::spawn_console(Control::Own(engine.clone())));
                                        engine.answer(*call, answer_with.clone()).await
                                    } else {
                                        engine.reject_call(*call).await
                                    };
                                    if let Err(err) = r {
                                        errln!("call: {err}");
                                    }
                                }
                                p2pcall_core::call::CallEvent::Ended { .. } => {
                                    if let Some(path) = &a.media.stats_json {
                                        stats_file.write(path, "callee", c)?;
                                        stats_file = calls::StatsFile::default();
                                    }
                                }
                                _ => {}
                            }
                        }
                        EngineEvent::Transfer(TransferEvent::Offered(o)) => answer_offer(&engine, a, o).await,
                        _ => {}
                    }
                }
                None => break,
            },
        }
    }
    drop(api);
    engine.shutdown().await;
    Ok(())
}

/// Accepts an offer into `--accept-files` if it comes from someone `--from` covers, else
/// declines it saying why.
async fn answer_offer(
    engine: &p2pcall_core::engine::EngineHandle,
    a: &ListenArgs,
    o: &p2pcall_core::transfer::OfferInfo,
) {
    let trusted = engine.trust(o.peer).await.is_ok_and(|t| t >= a.from);
    let answer = match &a.accept_files {
        Some(dir) if trusted => engine.accept_offer(o.peer, o.id, dir.clone()),
        Some(_) => engine.reject_offer(
            o.peer,
            o.id,
            match a.from {
                p2pcall_core::Trust::Verified => {
                    "the receiver accepts files unattended only from verified contacts"
                }
                _ => {
                    "the receiver accepts files unattended only from its contacts (it can add you: `p2pcall add`)"
                }
            },
        ),
        None => engine.reject_offer(
            o.peer,
            o.id,
            "the receiver does not accept files unattended (it can run `p2pcall listen --accept-files DIR`)",
        ),
    };
    if let Err(err) = answer {
        errln!("offer {}: {err}", o.id);
    }
}

/// `listen` while another process (`p2pcall daemon`, the app) runs this data dir's engine:
/// prints that engine's events until Ctrl-C, or until the engine stops (exit code 10).
/// `--accept-files`/`--answer` become the engine's policy while this runs; without them,
/// offers and calls wait for an answer from any client (`accept`, `answer`, the app).
async fn attached(cli: &Cli, a: &ListenArgs, mut c: p2pcall_daemon::Client) -> Result<()> {
    let Answer::Status(status) = c.call(Request::Status).await? else {
        bail!("the p2pcall daemon answered something else than its status");
    };
    let accept_files = (a.accept_files.as_ref())
        .map(|d| std::path::absolute(d).map(|d| d.display().to_string()))
        .transpose()?;
    let answer = a.answer.then(|| p2pcall_daemon::media(&a.media.options()));
    let console = if a.answer || accept_files.is_some() {
        c.call(Request::Policy {
            accept_files: accept_files.clone(),
            answer,
            from: a.from.as_policy().into(),
        })
        .await?;
        match a.answer {
            true => Some(calls::spawn_console(Control::Daemon(
                engine_client(cli)
                    .await?
                    .ok_or(p2pcall_daemon::DaemonError::Stopped)?,
            ))),
            false => None,
        }
    } else {
        None
    };
    c.call(Request::Subscribe).await?;
    if cli.json {
        outln!(
            "{}",
            serde_json::json!({"event": "attached", "id": status.id, "pid": status.pid, "accept_files": accept_files, "answer": a.answer})
        );
    } else {
        let me: p2pcall_core::PeerId = status.id.parse()?;
        outln!(
            "listening as {} through the p2pcall daemon (pid {}) (Ctrl-C to stop){}",
            me.fingerprint(),
            status.pid,
            accept_files
                .map(|d| format!("; accepting files into {d}"))
                .unwrap_or_default()
        );
    }
    let mut stats_file = calls::StatsFile::default();
    // The data dir's database, read here to tell contacts from lookalikes.
    let store = load(cli).and_then(|ctx| open_store(&ctx)).ok();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let r = loop {
        tokio::select! {
            _ = &mut stop => break Ok(()),
            e = c.next_event() => match e {
                Err(e) => break Err(e.into()),
                Ok(p2pcall_api::Event::Lagged { dropped }) => {
                    errln!("warning: {dropped} events were lost while this terminal was not reading");
                }
                Ok(e) => {
                    let Some(e) = p2pcall_daemon::event_from_api(&e) else { continue };
                    print_event(cli.json, &e);
                    if let (EngineEvent::Net(Event::Presence(_)), Some(store)) = (&e, &store) {
                        warn_lookalikes(&store.contacts().unwrap_or_default(), &e);
                    }
                    if let EngineEvent::Call(call) = &e {
                        stats_file.note(call);
                        if let (p2pcall_core::call::CallEvent::Ended { .. }, Some(path)) = (call, &a.media.stats_json) {
                            stats_file.write(path, "callee", call)?;
                            stats_file = calls::StatsFile::default();
                        }
                    }
                }
            },
        }
    };
    if let Some(t) = console {
        t.abort();
    }
    r
}
