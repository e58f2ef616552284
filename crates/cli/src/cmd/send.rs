//! `p2pcall send`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use p2pcall_core::engine::EngineEvent;
use p2pcall_core::transfer::TransferEvent;

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
    let Dialed {
        engine,
        mut events,
        peer,
        ..
    } = dial(cli, &a.peer).await?;
    let bar = (!cli.json).then(|| {
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
    });
    let h = engine.clone();
    let paths = a.paths.clone();
    let mut job = tokio::spawn(async move { h.send_files(peer, &paths).await });
    let mut id = None;
    let mut interrupted = false;
    let result = loop {
        tokio::select! {
            r = &mut job => break r?,
            _ = shutdown_signal(), if !interrupted => {
                // Ctrl-C interrupts (both sides keep what was verified); it does not cancel.
                interrupted = true;
                if let Some(id) = id {
                    engine.interrupt_transfer(peer, id);
                } else {
                    // Not accepted yet: withdrawing the offer is enough (the transfer stays
                    // open here, and the same `send` offers it again under its id).
                    job.abort();
                    break Err(p2pcall_core::EngineError::Aborted { code: p2pcall_proto::transfer::AbortCode::Interrupted, reason: "interrupted before the peer answered".into() });
                }
            }
            e = events.recv() => match e {
                Some(EngineEvent::Transfer(TransferEvent::Progress(p))) if p.outgoing && p.peer == peer => {
                    id = Some(p.id);
                    if let Some(b) = &bar {
                        b.set_length(p.total_bytes);
                        b.set_position(p.done_bytes);
                        b.set_message(format!("{}/{} files", p.files_done, p.files));
                    } else {
                        outln!("{}", progress_json(&p));
                    }
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
        let resumable = matches!(
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
    if cli.json {
        outln!("{}", summary_json(&s));
    } else {
        outln!("{}", transfer_text(&TransferEvent::Finished(s.clone())));
        if !s.skipped.is_empty() {
            outln!(
                "skipped (symlinks or special files): {}",
                path_list(&s.skipped)
            );
        }
    }
    Ok(())
}
