//! `p2pcall chat`.

use anyhow::{Context, Result, bail};
use clap::Args;
use p2pcall_api::{Answer, Request};
use p2pcall_core::{Message, MessageState};

use crate::Cli;
use crate::ctx::*;
use crate::output::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall chat alice see you at eight
  p2pcall chat 3f2a-91c0 \"quotes keep   spaces\"
  echo 'from a script' | p2pcall chat alice -")]
pub(crate) struct ChatArgs {
    /// The peer: fingerprint (or its first 4+ digits), full id, or display name (online or
    /// known from earlier)
    peer: String,
    /// The message, up to 16 KiB: the words after the peer, joined by spaces; `-` reads it
    /// from standard input
    #[arg(required = true, value_name = "TEXT")]
    text: Vec<String>,
}

/// Largest message read from standard input (the engine refuses longer ones with a clear
/// error; reading stops one byte past it).
const MAX_STDIN: u64 = 16 * 1024 + 1;

/// The message the words say: joined by spaces, or standard input for a lone `-`.
fn message_text(words: &[String]) -> Result<String> {
    if let [dash] = words
        && dash == "-"
    {
        use std::io::Read;
        let mut text = String::new();
        std::io::stdin()
            .lock()
            .take(MAX_STDIN)
            .read_to_string(&mut text)
            .context("reading the message from standard input")?;
        let text = text.strip_suffix('\n').unwrap_or(&text).to_string();
        anyhow::ensure!(!text.is_empty(), "standard input held no message");
        return Ok(text);
    }
    Ok(words.join(" "))
}

pub(crate) async fn chat(cli: &Cli, a: &ChatArgs) -> Result<()> {
    let text = message_text(&a.text)?;
    if let Some(mut c) = engine_client(cli).await? {
        let Answer::Resolved { peer, contact } = c
            .call(Request::Resolve {
                peer: a.peer.clone(),
            })
            .await?
        else {
            bail!("the p2pcall daemon answered something else than the peer");
        };
        if !contact && let Ok(id) = peer.id.parse() {
            stranger_note(&id, &peer.name);
        }
        let request = Request::SendMessage {
            peer: peer.id,
            text,
        };
        let Answer::Sent {
            message,
            name,
            offline,
        } = c.call(request).await?
        else {
            bail!("the p2pcall daemon answered something else than the message sent");
        };
        let m = p2pcall_daemon::message_from_api(&message)
            .context("the p2pcall daemon sent an unreadable message")?;
        report(cli, &m, &name, offline);
        return Ok(());
    }
    let (engine, mut events) = start_engine(cli, true).await?;
    let online = match wait_online(&engine, &mut events).await {
        Ok(_) => engine.wait_presence(RELAY_WAIT).await.is_ok(),
        Err(e) => {
            errln!("warning: {e:#}; the message will be queued");
            false
        }
    };
    let peer = if online {
        resolve_noting(&engine, &a.peer)?
    } else {
        resolve_known(engine.store(), &a.peer)?
    };
    let m = engine.send_message(peer, &text).await?;
    let offline = engine.peer_offline(&peer) || !online;
    report(cli, &m, &engine.peer_name(&peer), offline);
    engine.shutdown().await;
    Ok(())
}

/// What became of the message: its state, or why it waits.
fn report(cli: &Cli, m: &Message, name: &str, offline: bool) {
    if cli.json {
        outln!("{}", message_json(m));
        return;
    }
    match m.state {
        MessageState::Queued | MessageState::Sent if offline => outln!(
            "queued: {name} is offline; it is delivered when {name} is online (keep `p2pcall daemon` or `p2pcall listen` running)"
        ),
        MessageState::Queued | MessageState::Sent => outln!(
            "queued: {name} is not reachable now; it is delivered when you are both online (keep `p2pcall daemon` or `p2pcall listen` running)"
        ),
        s => outln!("{} to {}", s.as_str(), m.peer.fingerprint()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_after_the_peer_are_the_message() {
        let words: Vec<String> = ["hello", "world"].map(String::from).into();
        assert_eq!(message_text(&words).expect("text"), "hello world");
        let one = vec!["two  spaces".to_string()];
        assert_eq!(message_text(&one).expect("text"), "two  spaces");
        // A dash among other words is text.
        let dash: Vec<String> = ["a", "-", "b"].map(String::from).into();
        assert_eq!(message_text(&dash).expect("text"), "a - b");
    }
}
