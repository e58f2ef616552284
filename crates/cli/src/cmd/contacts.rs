//! `p2pcall add` and `p2pcall contacts`: the people the user chose, under the user's own
//! names for them (what `chat NAME`, `send NAME`, `call NAME` find first).

use anyhow::{Context, Result, bail};
use clap::Args;
use p2pcall_api::{Answer, RelayPin, Request};
use p2pcall_core::identity;
use p2pcall_core::invite::{Ticket, add_ticket as add_ticket_to};
use serde_json::json;

use crate::Cli;
use crate::ctx::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall add p2pcall:aeaq... --name bob   # from the ticket bob's `p2pcall invite` printed
  p2pcall add 3f2a91c0 --name bob      # someone online, by 8+ hex digits of the fingerprint
  p2pcall add 3f2a91c0e5...            # the full id; the name it announces becomes yours for it
  p2pcall add bob --name 'Bob (work)'  # rename a contact")]
pub(crate) struct AddArgs {
    /// The peer: its ticket (`p2pcall:…`, from `p2pcall invite`), its full id, at least 8 hex
    /// digits of its fingerprint, or a contact's name
    peer: String,
    /// Your name for it [default: the name its ticket suggests, else the one it announces
    /// now; an existing contact keeps its name]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

pub(crate) async fn add(cli: &Cli, a: &AddArgs) -> Result<()> {
    let name = a
        .name
        .as_deref()
        .map(crate::cmd::name::checked)
        .transpose()?;
    if p2pcall_proto::ticket::looks_like_ticket(&a.peer) {
        return add_ticket(cli, &a.peer, name).await;
    }
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
            contact_of(&store, &peer)?.into_iter().collect()
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

/// `add TICKET`: the contact, its relay's key pinned, and that relay made the user's relay
/// when none is configured.
async fn add_ticket(cli: &Cli, text: &str, name: Option<String>) -> Result<()> {
    let ticket: Ticket = text.parse()?;
    let (contact, relay) = match engine_client(cli).await? {
        Some(mut c) => {
            let request = Request::AddTicket {
                ticket: ticket.encode(),
                name,
            };
            let Answer::Invited { contact, relay } = c.call(request).await? else {
                bail!("the p2pcall daemon answered something else than the contact");
            };
            (contact, relay)
        }
        None => {
            let ctx = load(cli)?;
            let (me, _) = identity::load_or_create(&ctx.dirs.data)?;
            let store = open_store(&ctx)?;
            let now = p2pcall_store::now_ms();
            let invited = add_ticket_to(&store, &me.id(), &ticket, name.as_deref(), now)?;
            let contact =
                contact_of(&store, &invited.peer)?.context("the contact was not stored")?;
            (contact, p2pcall_daemon::relay_pin(&invited.relay))
        }
    };
    let relay_set = use_relay(cli, relay.as_ref())?;
    if cli.json {
        let mut out = contact_json(&contact);
        out["relay"] = serde_json::to_value(&relay)?;
        out["relay_set"] = json!(relay_set.is_some());
        outln!("{out}");
        return Ok(());
    }
    outln!(
        "{} is your contact {:?}",
        fingerprint(&contact),
        contact.name
    );
    match &relay {
        None => outln!("the ticket names no relay: you reach each other on one network (--lan)"),
        Some(r) => match &r.conflict {
            None if r.new => outln!("pinned the key of the relay {}: {}", r.relay, r.key),
            None => outln!("the relay {} has this key pinned already", r.relay),
            Some(pinned) => errln!(
                "WARNING: the ticket says the relay {} has the key {}, but {pinned} is pinned for it and stays pinned. The ticket may have been changed on its way to you; if the relay's operator did change its key, check with them, then pass --accept-relay-key {} once",
                r.relay,
                r.key,
                r.key
            ),
        },
    }
    if let Some(path) = relay_set {
        outln!(
            "your relay is now {} (saved in {})",
            relay.map(|r| r.relay).unwrap_or_default(),
            path.display()
        );
    }
    Ok(())
}

/// Makes the ticket's relay the user's when none is configured (and the ticket's key was not
/// refused): where the settings were saved.
fn use_relay(cli: &Cli, relay: Option<&RelayPin>) -> Result<Option<std::path::PathBuf>> {
    let mut ctx = load(cli)?;
    let Some(r) = relay.filter(|r| r.conflict.is_none()) else {
        return Ok(None);
    };
    if cli.relay.is_some()
        || cli.lan
        || ctx.settings.relay.is_some()
        || ctx.settings.lan().is_some()
    {
        return Ok(None);
    }
    ctx.settings.relay = Some(r.relay.clone());
    ctx.settings.save(&ctx.dirs.settings)?;
    Ok(Some(ctx.dirs.settings))
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
/// `peer` among the user's contacts, if it is one.
pub(crate) fn contact_of(
    store: &p2pcall_core::Store,
    peer: &p2pcall_core::PeerId,
) -> Result<Option<p2pcall_api::Contact>> {
    let id = peer.to_hex();
    Ok(contacts_of(store)?.into_iter().find(|c| c.id == id))
}

fn contacts_of(store: &p2pcall_core::Store) -> Result<Vec<p2pcall_api::Contact>> {
    Ok(store
        .contacts()?
        .iter()
        .filter(|c| c.chosen_ms.is_some())
        .map(p2pcall_daemon::contact)
        .collect())
}

fn fingerprint(c: &p2pcall_api::Contact) -> String {
    crate::output::fingerprint_of(&c.id)
}

fn contact_json(c: &p2pcall_api::Contact) -> serde_json::Value {
    json!({"id": c.id, "fingerprint": fingerprint(c), "name": c.name, "announced": c.announced, "verified": c.verified, "last_seen_ms": c.last_seen_ms})
}
