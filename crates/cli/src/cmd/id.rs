//! `p2pcall id`.

use anyhow::Result;
use p2pcall_core::identity;
use serde_json::json;

use crate::Cli;
use crate::ctx::*;

pub(crate) fn id(cli: &Cli) -> Result<()> {
    let ctx = load(cli)?;
    let (identity, created) = identity::load_or_create(&ctx.dirs.data)?;
    let me = identity.id();
    let name = display_name(cli, &ctx.settings);
    if cli.json {
        outln!(
            "{}",
            json!({"id": me.to_hex(), "fingerprint": me.fingerprint().to_string(), "name": name, "created": created, "data_dir": ctx.dirs.data})
        );
    } else {
        if created {
            eprintln!("created a new identity in {}", ctx.dirs.data.display());
        }
        outln!("{}", me.fingerprint());
        outln!("name: {name}");
        outln!("full id: {}", me.to_hex());
    }
    Ok(())
}
