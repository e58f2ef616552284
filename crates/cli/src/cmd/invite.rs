//! `p2pcall invite`: the ticket that lets someone add this identity as a contact (and pin
//! its relay), as a line of text and a QR code; `p2pcall add TICKET` is the other side.

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use clap::Args;
use p2pcall_core::invite::{Ticket, TicketRelay};
use p2pcall_core::settings::relay_name;
use p2pcall_core::{PeerId, identity};
use serde_json::json;

use crate::Cli;
use crate::ctx::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall invite                      # show the ticket and its QR code; send the line to a friend
  p2pcall add p2pcall:aeaq...         # what the friend runs with it
  p2pcall invite --relay-addr relay.example.org:7700   # the address others reach your relay at
  p2pcall --json invite | jq -r .ticket")]
pub(crate) struct InviteArgs {
    /// The relay address others reach (when this machine reaches it by another one, such as
    /// 127.0.0.1) [default: `--relay`, else `relay` in the settings]
    #[arg(long, value_name = "HOST:PORT")]
    relay_addr: Option<String>,
    /// Print the QR code even when standard output is not a terminal
    #[arg(long, conflicts_with = "no_qr")]
    qr: bool,
    /// Print the line of text alone
    #[arg(long)]
    no_qr: bool,
}

pub(crate) async fn invite(cli: &Cli, a: &InviteArgs) -> Result<()> {
    let ctx = load(cli)?;
    let (me, _) = identity::load_or_create(&ctx.dirs.data)?;
    let name = crate::cmd::name::checked(&display_name(cli, &ctx.settings))
        .context("the ticket suggests your display name: set one with `p2pcall name NEW`")?;
    let relay = if lan_config(cli, &ctx.settings).is_some() {
        None
    } else {
        Some(ticket_relay(cli, &ctx, a).await?)
    };
    let ticket = Ticket {
        peer: me.id(),
        name,
        relay,
    };
    if cli.json {
        let r = ticket.relay.as_ref();
        outln!(
            "{}",
            json!({"ticket": ticket.encode(), "id": ticket.peer.to_hex(), "fingerprint": ticket.peer.fingerprint().to_string(), "name": ticket.name, "relay": r.map(|r| &r.addr), "relay_key": r.map(|r| r.key.to_hex())})
        );
        return Ok(());
    }
    outln!("{}", ticket.encode());
    if a.qr || (!a.no_qr && std::io::stdout().is_terminal()) {
        for line in qr_lines(&ticket.qr_text())? {
            outln!("{line}");
        }
    }
    eprintln!(
        "Whoever adds this ticket (`p2pcall add TICKET`, or paste it in the app) reaches you as {:?}{}.",
        ticket.name,
        match &ticket.relay {
            Some(r) => format!(
                " through the relay {} (its key pinned from the ticket)",
                r.addr
            ),
            None => " on this network (LAN only: the ticket names no relay)".into(),
        }
    );
    Ok(())
}

/// The relay the ticket names and its key: the one given or pinned, else the one the relay
/// presents now (connecting once pins it).
async fn ticket_relay(cli: &Cli, ctx: &Ctx, a: &InviteArgs) -> Result<TicketRelay> {
    let Some(spec) = cli.relay.clone().or_else(|| ctx.settings.relay.clone()) else {
        bail!(
            "no relay configured: a ticket names the relay others reach you through. Pass --relay HOST[:PORT] or set `relay` in {} (or --lan for a ticket for this network)",
            ctx.dirs.settings.display()
        );
    };
    let pinned_as = relay_name(&spec);
    let key = match given_relay_key(cli, ctx)? {
        Some(k) => k,
        None => match pinned(ctx, &pinned_as)? {
            Some(k) => k,
            None => learn_relay_key(cli, ctx, &pinned_as).await?,
        },
    };
    let addr = relay_name(a.relay_addr.as_deref().unwrap_or(&spec));
    if !p2pcall_core::invite::valid_relay_addr(&addr) {
        bail!("{addr:?} is not a relay address a ticket can hold (HOST:PORT)");
    }
    if a.relay_addr.is_none() && only_here(&addr) {
        eprintln!(
            "warning: the ticket names the relay as {addr}, which only this machine reaches; give --relay-addr HOST:PORT as others reach it"
        );
    }
    Ok(TicketRelay { addr, key })
}

fn pinned(ctx: &Ctx, relay: &str) -> Result<Option<PeerId>> {
    Ok(open_store(ctx)?.relay_key(relay)?)
}

/// Connects to the relay once (the running engine has done so already), which pins its key.
async fn learn_relay_key(cli: &Cli, ctx: &Ctx, relay: &str) -> Result<PeerId> {
    if engine_client(cli).await?.is_none() {
        let (engine, mut events) = start_engine(cli, false).await?;
        let online = wait_online(&engine, &mut events).await;
        engine.shutdown().await;
        online?;
    }
    pinned(ctx, relay)?.with_context(|| {
        format!(
            "the relay {relay} has not presented a key yet: the engine running on this data dir uses another relay; stop it, or give the key with --accept-relay-key KEY"
        )
    })
}

/// Loopback and unspecified addresses, which nobody else can use.
fn only_here(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// The QR code of `text` in Unicode half blocks, light modules drawn (for the usual dark
/// terminal), with its quiet zone.
pub(crate) fn qr_lines(text: &str) -> Result<Vec<String>> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M)
        .context("the ticket does not fit a QR code")?;
    let picture = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    Ok(picture.lines().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machine_reaches_loopback() {
        assert!(only_here("127.0.0.1:7700"));
        assert!(only_here("[::1]:7700"));
        assert!(only_here("0.0.0.0:7700"));
        assert!(only_here("localhost:7700"));
        assert!(!only_here("192.0.2.7:7700"));
        assert!(!only_here("relay.example.org:7700"));
    }

    #[test]
    fn the_qr_code_holds_the_ticket() {
        let t = Ticket {
            peer: PeerId::from_bytes([0xab; 32]),
            name: "Alice Liddell".into(),
            relay: Some(TicketRelay {
                addr: "relay.example.org:7700".into(),
                key: PeerId::from_bytes([0xcd; 32]),
            }),
        };
        let code =
            qrcode::QrCode::with_error_correction_level(t.qr_text(), qrcode::EcLevel::M).unwrap();
        // Alphanumeric mode keeps a typical ticket at version 7: 45 modules a side, 53 with
        // the quiet zone, 27 terminal lines.
        assert_eq!(code.version(), qrcode::Version::Normal(7));
        let lines = qr_lines(&t.qr_text()).unwrap();
        assert_eq!(lines.len(), 27);
        assert!(lines.iter().all(|l| l.chars().count() == 53));
    }
}
