//! `p2pcall name`: the display name other peers see.

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use crate::Cli;
use crate::ctx::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall name              # show it
  p2pcall name \"Ada L.\"     # keep a new one (peers see it from the next start)")]
pub(crate) struct NameArgs {
    /// The new name (up to 64 bytes); without it, the current one is shown
    name: Option<String>,
}

/// Longest display name the relay carries (bytes of UTF-8).
const MAX_NAME: usize = p2pcall_proto::relay::MAX_NAME;

/// A name as typed, checked: trimmed, not empty, at most [`MAX_NAME`] bytes.
pub(crate) fn checked(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() {
        bail!("a display name cannot be empty");
    }
    if name.len() > MAX_NAME {
        bail!(
            "a display name holds at most {MAX_NAME} bytes; {name:?} has {}",
            name.len()
        );
    }
    if name.chars().any(char::is_control) {
        bail!("a display name cannot hold control characters");
    }
    Ok(name.to_string())
}

pub(crate) async fn name(cli: &Cli, a: &NameArgs) -> Result<()> {
    let mut ctx = load(cli)?;
    let Some(new) = &a.name else {
        let name = display_name(cli, &ctx.settings);
        let source = if cli.name.is_some() {
            "--name"
        } else if ctx.settings.name.is_some() {
            "settings"
        } else {
            "default"
        };
        crate::output::emit(
            cli.json,
            || name.clone(),
            || json!({"name": name, "source": source}),
        );
        return Ok(());
    };
    let new = checked(new)?;
    ctx.settings.name = Some(new.clone());
    ctx.settings.save(&ctx.dirs.settings)?;
    // The engine running on this data dir announces it now, not at its next start.
    let announced = match crate::ctx::engine_client(cli).await? {
        Some(mut c) => {
            c.call(p2pcall_api::Request::SetName { name: new.clone() })
                .await?;
            true
        }
        None => false,
    };
    crate::output::emit(
        cli.json,
        || {
            format!(
                "display name set to {new:?} (saved in {}){}",
                ctx.dirs.settings.display(),
                if announced {
                    "; the running engine announces it now"
                } else {
                    ""
                }
            )
        },
        || json!({"name": new, "source": "settings", "announced": announced}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(checked("  Ada L. ").expect("ok"), "Ada L.");
        assert!(checked("   ").is_err());
        assert!(checked(&"x".repeat(MAX_NAME + 1)).is_err());
        assert!(checked(&"é".repeat(MAX_NAME / 2)).is_ok());
        assert!(checked("bob\u{7}").is_err());
    }
}
