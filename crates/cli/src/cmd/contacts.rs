//! `p2pcall add` and `p2pcall contacts`: the people the user chose, under the user's own
//! names for them (what `chat NAME`, `send NAME`, `call NAME` find first).

use anyhow::{Result, bail};
use clap::Args;
use p2pcall_api::{Answer, Request};
use serde_json::json;

use crate::Cli;
use crate::ctx::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall add 3f2a91c0 --name bob      # someone online, by 8+ hex digits of the fingerprint
  p2pcall add 3f2a91c0e5...            # the full id; the name it announces becomes yours for it
  p2pcall add bob --name 'Bob (work)'  # rename a contact")]
pub(crate) struct AddArgs {
    /// The peer: its full id, at least 8 hex digits of its fingerprint, or a contact's name
    peer: String,
    /// Your name for it [default: the name it announces now; an existing contact keeps its
    /// name]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

pub(crate) async fn add(cli: &Cli, a: &AddArgs) -> Result<()> {
    let name = a
        .name
        .as_deref()
        .map(crate::cmd::name::checked)
        .transpose()?;
    let contact = match engine_client(cli).await? {
        Some(mut c) => {
            let request = Request::AddContact {
                peer: a.peer.clone(),
                name,
            };
            let Answer::Contacts { contacts } = c.call(request).await? else {
                bail!("the p2pcall daemon answered something else than the contact");
            };
            contacts
        }
        None => {
            let (engine, mut events) = start_engine(cli, true).await?;
            if wait_online(&engine, &mut events).await.is_ok() {
                let _ = engine.wait_presence(RELAY_WAIT).await;
            }
            let peer = engine.resolve_peer(&a.peer)?;
            engine.add_contact(peer, name).await?;
            let store = engine.store().clone();
            engine.shutdown().await;
            contacts_of(&store)?
                .into_iter()
                .filter(|c| c.id == peer.to_hex())
                .collect()
        }
    };
    let [c] = contact.as_slice() else {
        bail!("the contact was not stored");
    };
    if cli.json {
        outln!("{}", contact_json(c));
    } else {
        outln!("{} is your contact {:?}", fingerprint(c), c.name);
    }
    Ok(())
}

pub(crate) fn contacts(cli: &Cli) -> Result<()> {
    let ctx = load(cli)?;
    let list = contacts_of(&*open_store(&ctx)?)?;
    if cli.json {
        outln!(
            "{}",
            serde_json::Value::Array(list.iter().map(contact_json).collect())
        );
    } else if list.is_empty() {
        outln!(
            "no contacts yet: `p2pcall add FINGERPRINT --name NAME`, or write to someone by fingerprint"
        );
    } else {
        outln!(
            "{:<24} {:<26} {:<9} ANNOUNCES",
            "NAME",
            "FINGERPRINT",
            "VERIFIED"
        );
        for c in &list {
            outln!(
                "{:<24} {:<26} {:<9} {}",
                c.name,
                fingerprint(c),
                if c.verified { "yes" } else { "no" },
                if c.announced == c.name {
                    ""
                } else {
                    c.announced.as_str()
                }
            );
        }
    }
    Ok(())
}

/// The user's contacts (chosen, not merely seen), most recently seen first.
fn contacts_of(store: &p2pcall_core::Store) -> Result<Vec<p2pcall_api::Contact>> {
    Ok(store
        .contacts()?
        .iter()
        .filter(|c| c.chosen_ms.is_some())
        .map(p2pcall_daemon::contact)
        .collect())
}

fn fingerprint(c: &p2pcall_api::Contact) -> String {
    c.id.parse::<p2pcall_core::PeerId>()
        .map(|p| p.fingerprint().to_string())
        .unwrap_or_else(|_| c.id.clone())
}

fn contact_json(c: &p2pcall_api::Contact) -> serde_json::Value {
    json!({"id": c.id, "fingerprint": fingerprint(c), "name": c.name, "announced": c.announced, "verified": c.verified, "last_seen_ms": c.last_seen_ms})
}
