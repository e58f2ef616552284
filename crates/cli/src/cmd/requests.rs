//! `p2pcall requests`: messages from people who are not contacts, kept apart until the user
//! accepts them (the sender becomes a contact) or deletes them.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use p2pcall_api::{Answer, Request};
use serde_json::json;

use crate::Cli;
use crate::ctx::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall requests                      # who wrote without being a contact
  p2pcall requests accept 3f2a --name Sam   # Sam becomes a contact; the messages join the chat
  p2pcall requests delete 3f2a")]
pub(crate) struct RequestsArgs {
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// List the message requests (what `p2pcall requests` alone does)
    List,
    /// Make the sender a contact; its messages join your conversation with it
    Accept {
        /// The sender: 4+ hex digits of its fingerprint (as the list shows it), or its id
        peer: String,
        /// Your name for it [default: the name it announces]
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Delete the sender's messages (it may write again, within the same limits)
    Delete {
        /// The sender, as for `accept`
        peer: String,
    },
}

pub(crate) async fn requests(cli: &Cli, a: &RequestsArgs) -> Result<()> {
    let request = match &a.action {
        None | Some(Action::List) => Request::MessageRequests,
        Some(Action::Accept { peer, name }) => Request::AcceptRequest {
            peer: peer.clone(),
            name: name.as_deref().map(crate::cmd::name::checked).transpose()?,
        },
        Some(Action::Delete { peer }) => Request::DeleteRequest { peer: peer.clone() },
    };
    let answer = match engine_client(cli).await? {
        Some(mut c) => c.call(request).await?,
        None => on_store(cli, request)?,
    };
    match answer {
        Answer::MessageRequests { requests } => list(cli, &requests),
        Answer::Contacts { contacts } => {
            let [c] = contacts.as_slice() else {
                bail!("the contact was not stored");
            };
            crate::output::emit(
                cli.json,
                || {
                    format!(
                        "{:?} is your contact; their messages are in your chat",
                        c.name
                    )
                },
                || json!({"id": c.id, "name": c.name, "accepted": true}),
            );
        }
        Answer::Count { n } => crate::output::emit(
            cli.json,
            || format!("deleted {n} messages"),
            || json!({"deleted": n}),
        ),
        other => bail!("the p2pcall daemon answered {other:?}"),
    }
    Ok(())
}

/// The same requests on the data dir's database, when no engine runs.
fn on_store(cli: &Cli, request: Request) -> Result<Answer> {
    let ctx = load(cli)?;
    let store = open_store(&ctx)?;
    let list = store.message_requests()?;
    let find = |q: &str| p2pcall_core::requests::find(&list, q);
    Ok(match request {
        Request::AcceptRequest { peer, name } => {
            let p = find(&peer)?;
            let announced = (list.iter().find(|r| r.peer == p)).map_or("", |r| r.name.as_str());
            let now = p2pcall_store::now_ms();
            store.accept_request(&p, name.as_deref(), announced, now)?;
            let contacts = crate::cmd::contacts::contact_of(&store, &p)?;
            Answer::Contacts {
                contacts: contacts.into_iter().collect(),
            }
        }
        Request::DeleteRequest { peer } => Answer::Count {
            n: store.delete_request(&find(&peer)?)? as u64,
        },
        _ => Answer::MessageRequests {
            requests: list.iter().map(p2pcall_daemon::message_request).collect(),
        },
    })
}

fn list(cli: &Cli, requests: &[p2pcall_api::MessageRequest]) {
    let fingerprint = crate::output::fingerprint_of;
    if cli.json {
        let all: Vec<_> = (requests.iter())
            .map(|r| json!({"id": r.peer, "fingerprint": fingerprint(&r.peer), "name": r.name, "messages": r.messages, "first_ms": r.first_ms, "last_text": r.last_text}))
            .collect();
        outln!("{}", serde_json::Value::Array(all));
        return;
    }
    if requests.is_empty() {
        outln!("no message requests");
        return;
    }
    outln!(
        "{:<26} {:<20} {:>8}  NEWEST",
        "FINGERPRINT",
        "ANNOUNCES",
        "MESSAGES"
    );
    for r in requests {
        let newest: String = r.last_text.chars().take(40).collect();
        outln!(
            "{:<26} {:<20} {:>8}  {newest}",
            fingerprint(&r.peer),
            r.name,
            r.messages
        );
    }
}
