//! `p2pcall offers`, `accept`, `reject`: file offers answered one at a time, through the
//! running daemon (where offers wait for their answer).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use p2pcall_api::{Answer, Offer, Request};
use serde_json::json;

use crate::Cli;
use crate::ctx::*;
use crate::output::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall offers
  p2pcall accept 3f2a --to ~/incoming
  p2pcall reject 3f2a")]
pub(crate) struct AnswerArgs {
    /// The offer: its id as `p2pcall offers` lists it, or its first digits
    id: String,
    /// Receive into this folder (created if missing) [default: `download_dir` in the
    /// settings, else ~/Downloads]
    #[arg(long, value_name = "DIR")]
    to: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct RejectArgs {
    /// The offer: its id as `p2pcall offers` lists it, or its first digits
    id: String,
}

async fn daemon(cli: &Cli) -> Result<p2pcall_daemon::Client> {
    match engine_client(cli).await? {
        Some(c) => Ok(c),
        None => bail!(
            "no p2pcall daemon runs on this data dir: offers wait for an answer in a running daemon (`p2pcall daemon`); `p2pcall listen --accept-files DIR` accepts them unattended instead"
        ),
    }
}

pub(crate) async fn offers(cli: &Cli) -> Result<()> {
    let mut c = daemon(cli).await?;
    let Answer::Offers { offers } = c.call(Request::Offers).await? else {
        bail!("the p2pcall daemon answered something else than the offers");
    };
    if cli.json {
        outln!(
            "{}",
            serde_json::Value::Array(offers.iter().map(offer_json).collect())
        );
    } else if offers.is_empty() {
        outln!("no offer waits for an answer");
    } else {
        outln!("{:<34} {:<24} {:>10}  WHAT", "ID", "FROM", "SIZE");
        for o in &offers {
            outln!(
                "{:<34} {:<24} {:>10}  {} ({} files)",
                o.id,
                o.name.clone().unwrap_or_default(),
                human(o.total_bytes as f64),
                o.tops.join(", "),
                o.files
            );
        }
    }
    Ok(())
}

fn offer_json(o: &Offer) -> serde_json::Value {
    let peer = o.peer.parse().ok();
    json!({
        "id": o.id,
        "peer": peer.map(|p| peer_obj(&p, o.name.as_deref())),
        "files": o.files,
        "dirs": o.dirs,
        "total_bytes": o.total_bytes,
        "tops": o.tops,
    })
}

pub(crate) async fn accept(cli: &Cli, a: &AnswerArgs) -> Result<()> {
    let mut c = daemon(cli).await?;
    let dir =
        a.to.as_ref()
            .map(|d| std::path::absolute(d).map(|d| d.display().to_string()))
            .transpose()?;
    let request = Request::Accept {
        id: a.id.clone(),
        dir,
    };
    let Answer::Accepted { id, dir } = c.call(request).await? else {
        bail!("the p2pcall daemon answered something else than the acceptance");
    };
    if cli.json {
        outln!(
            "{}",
            json!({"event": "offer_accepted", "id": id, "dir": dir})
        );
    } else {
        outln!("accepted {id}: receiving into {dir} (the daemon runs the transfer)");
    }
    Ok(())
}

pub(crate) async fn reject(cli: &Cli, a: &RejectArgs) -> Result<()> {
    let mut c = daemon(cli).await?;
    let Answer::Rejected { id } = c.call(Request::Reject { id: a.id.clone() }).await? else {
        bail!("the p2pcall daemon answered something else than the rejection");
    };
    if cli.json {
        outln!("{}", json!({"event": "offer_rejected", "id": id}));
    } else {
        outln!("declined {id}: the sender is told");
    }
    Ok(())
}
