//! What every command shares: the data dir and settings, the engine, the relay, the peer.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use p2pcall_core::engine::{Engine, EngineConfig, EngineEvent, EngineHandle};
use p2pcall_core::settings::{Dirs, Settings};
use p2pcall_core::{PeerId, Store, identity};
use p2pcall_net::{Event, RelayConfig, RelayTransport};

use crate::Cli;
use crate::exit;

/// How long commands wait for the relay and the peer list.
pub(crate) const RELAY_WAIT: Duration = Duration::from_secs(10);

/// Database file in the data dir.
pub(crate) const DB_FILE: &str = "p2pcall.db";

pub(crate) struct Ctx {
    pub(crate) dirs: Dirs,
    pub(crate) settings: Settings,
}

pub(crate) fn load(cli: &Cli) -> Result<Ctx> {
    let dirs = Dirs::resolve(cli.data_dir.as_deref())?;
    let settings = Settings::load(&dirs.settings)?;
    Ok(Ctx { dirs, settings })
}

pub(crate) fn display_name(cli: &Cli, s: &Settings) -> String {
    cli.name
        .clone()
        .or_else(|| s.name.clone())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "anonymous".into())
}

pub(crate) async fn resolve_relay(spec: &str) -> Result<SocketAddr> {
    Ok(p2pcall_core::settings::resolve_relay(spec).await?)
}

/// The local database in the data dir.
pub(crate) fn open_store(ctx: &Ctx) -> Result<std::sync::Arc<Store>> {
    let path = ctx.dirs.data.join(DB_FILE);
    Ok(std::sync::Arc::new(Store::open(&path).with_context(
        || format!("cannot open the database {}", path.display()),
    )?))
}

pub(crate) async fn start_engine(
    cli: &Cli,
    presence: bool,
) -> Result<(EngineHandle, tokio::sync::mpsc::Receiver<EngineEvent>)> {
    start_engine_with(cli, presence, false).await
}

/// `auto_deliver`: deliver queued messages and resume transfers whenever a peer comes online
/// (for the long-running `listen`).
pub(crate) async fn start_engine_with(
    cli: &Cli,
    presence: bool,
    auto_deliver: bool,
) -> Result<(EngineHandle, tokio::sync::mpsc::Receiver<EngineEvent>)> {
    let ctx = load(cli)?;
    hold_engine_lock(&ctx, cli)?;
    let (identity, _) = identity::load_or_create(&ctx.dirs.data)?;
    let name = display_name(cli, &ctx.settings);
    let mut cfg = match lan_config(cli, &ctx.settings) {
        Some(lan) => {
            let mut c = EngineConfig::new(identity, name, None);
            c.lan = Some(lan);
            c
        }
        None => {
            let spec = cli.relay.clone().or_else(|| ctx.settings.relay.clone()).with_context(|| {
                format!(
                    "no relay configured: pass --relay HOST[:PORT] (or --lan, to find peers on this network without one), or set `relay = \"HOST:PORT\"` in {}",
                    ctx.dirs.settings.display()
                )
            })?;
            let addr = resolve_relay(&spec).await?;
            let relay = RelayConfig {
                token: cli.token.clone().or_else(|| ctx.settings.token.clone()),
                presence,
                force_tcp: cli.tcp,
                relay_key: given_relay_key(cli, &ctx)?,
                alternates: ctx.settings.alternate_relays(),
                park_after: ctx.settings.park_after(),
                ..RelayConfig::new(addr)
            };
            let mut c = EngineConfig::new(identity, name, Some(relay));
            c.relay_name = Some(p2pcall_core::settings::relay_name(&spec));
            c
        }
    };
    cfg.direct_paths = !cli.relay_only;
    cfg.store = Some(open_store(&ctx)?);
    cfg.auto_deliver = auto_deliver;
    cfg.partial_max_age = ctx.settings.partial_max_age();
    cfg.receive_executable = ctx.settings.receive_executable == Some(true);
    // On a LAN-only network nobody outside needs to reach us.
    cfg.port_mapping = cfg.lan.is_none()
        && !cli.relay_only
        && !cli.no_port_mapping
        && ctx.settings.port_mapping.unwrap_or(true);
    Ok(Engine::start(cfg).await?)
}

/// The relay key the user gave (`--accept-relay-key`, else the settings' `relay_key`);
/// `None`: the one pinned for the relay.
pub(crate) fn given_relay_key(cli: &Cli, ctx: &Ctx) -> Result<Option<PeerId>> {
    if let Some(k) = cli.accept_relay_key {
        return Ok(Some(k));
    }
    (ctx.settings.relay_key()).with_context(|| format!("reading {}", ctx.dirs.settings.display()))
}

/// This process's hold on its data dir (released when it exits).
static ENGINE_LOCK: std::sync::OnceLock<p2pcall_core::lock::EngineLock> =
    std::sync::OnceLock::new();

/// One engine per identity: takes the data dir's engine lock for this process, or fails
/// saying which process runs the engine there.
fn hold_engine_lock(ctx: &Ctx, cli: &Cli) -> Result<()> {
    if ENGINE_LOCK.get().is_some() {
        return Ok(());
    }
    let what = format!("`p2pcall {}`", crate::command_name(cli));
    let lock = p2pcall_core::lock::EngineLock::acquire(&ctx.dirs.data, &what)?;
    let _ = ENGINE_LOCK.set(lock);
    Ok(())
}

/// A connection to the engine already running on this data dir (`p2pcall daemon`, a
/// `listen`, the app), if there is one: commands then ask it instead of starting their own.
pub(crate) async fn engine_client(cli: &Cli) -> Result<Option<p2pcall_daemon::Client>> {
    let dirs = Dirs::resolve(cli.data_dir.as_deref())?;
    let client = p2pcall_daemon::Client::connect(&dirs.data, "cli").await?;
    if let Some(c) = &client {
        // How an engine reaches the network is chosen when it starts: the running one
        // keeps its own choice.
        let own: Vec<&str> = [
            (cli.relay_only, "--relay-only"),
            (cli.tcp, "--tcp"),
            (cli.lan, "--lan"),
            (cli.accept_relay_key.is_some(), "--accept-relay-key"),
        ]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .collect();
        static WARNED: std::sync::Once = std::sync::Once::new();
        if !own.is_empty() {
            WARNED.call_once(|| {
                errln!(
                    "warning: {} ignored: the engine running on this data dir (pid {}) keeps the network settings it started with",
                    own.join(", "),
                    c.pid()
                );
            });
        }
    }
    Ok(client)
}

/// Serves the local API for the engine this process runs, so that other commands (and the
/// app) use it instead of starting their own. Feed the hub every engine event.
pub(crate) fn serve_api(
    cli: &Cli,
    engine: &EngineHandle,
) -> Result<(
    p2pcall_daemon::ApiServer,
    std::sync::Arc<p2pcall_daemon::Hub>,
)> {
    let ctx = load(cli)?;
    let hub = std::sync::Arc::new(p2pcall_daemon::Hub::default());
    let served = p2pcall_daemon::Served {
        engine: engine.clone(),
        hub: hub.clone(),
        data_dir: ctx.dirs.data.clone(),
        downloads: ctx.settings.downloads(&ctx.dirs),
    };
    let server =
        p2pcall_daemon::ApiServer::start(p2pcall_daemon::socket_path(&ctx.dirs.data), served)?;
    Ok((server, hub))
}

/// LAN-only mode, if `--lan` or the settings ask for it (a `--relay` on the command line
/// wins over the settings' `lan_only`).
pub(crate) fn lan_config(cli: &Cli, s: &Settings) -> Option<p2pcall_net::LanConfig> {
    let mut lan = if cli.lan {
        Some(p2pcall_net::LanConfig {
            interfaces: s.lan_interfaces.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else if cli.relay.is_none() {
        s.lan()
    } else {
        None
    }?;
    if !cli.lan_interface.is_empty() {
        lan.interfaces.clone_from(&cli.lan_interface);
    }
    Some(lan)
}

/// Waits for the relay session, turning a refusal into a clear error. `None` in LAN-only
/// mode (no relay; presence comes by mDNS).
pub(crate) async fn wait_online(
    engine: &EngineHandle,
    events: &mut tokio::sync::mpsc::Receiver<EngineEvent>,
) -> Result<Option<RelayTransport>> {
    if engine.endpoint().is_lan() {
        return Ok(None);
    }
    let deadline = tokio::time::Instant::now() + RELAY_WAIT;
    let mut last = String::from("no answer");
    loop {
        tokio::select! {
            r = engine.wait_relay(Duration::from_millis(50)) => if let Ok(t) = r { return Ok(Some(t)) },
            e = events.recv() => match e {
                Some(EngineEvent::Net(Event::RelayRefused { reason, detail })) => {
                    return Err(exit::Fail::RelayRefused(format!("{reason} ({detail})")).into());
                }
                Some(EngineEvent::Net(Event::RelayUnreachable { addr, detail })) => {
                    return Err(exit::Fail::RelayUnreachable { addr, detail }.into());
                }
                Some(EngineEvent::Net(Event::RelayKeyMismatch { addr, pinned, presented })) => {
                    return Err(exit::Fail::RelayKeyMismatch { addr, pinned, presented }.into());
                }
                Some(EngineEvent::Net(Event::RelayDisconnected { reason, .. })) => last = reason,
                Some(_) => {}
                None => bail!("engine stopped"),
            },
            _ = tokio::time::sleep_until(deadline) => {
                return Err(exit::Fail::RelayTimeout { secs: RELAY_WAIT.as_secs(), last }.into());
            }
        }
    }
}

/// A connection opened for a command: the engine, its events, the peer.
pub(crate) struct Dialed {
    pub(crate) engine: EngineHandle,
    pub(crate) events: tokio::sync::mpsc::Receiver<EngineEvent>,
    pub(crate) peer: p2pcall_core::PeerId,
}

/// The peer the user means, with a note when it is not a contact.
pub(crate) fn resolve_noting(engine: &EngineHandle, query: &str) -> Result<PeerId> {
    let r = engine.resolve(query)?;
    if !r.contact {
        crate::output::stranger_note(&r.peer, &engine.peer_name(&r.peer));
    }
    Ok(r.peer)
}

/// Registers with the relay, finds the peer the user means, and connects to it.
pub(crate) async fn dial(cli: &Cli, query: &str) -> Result<Dialed> {
    let (engine, mut events) = start_engine(cli, true).await?;
    wait_online(&engine, &mut events).await?;
    engine.wait_presence(RELAY_WAIT).await?;
    let peer = resolve_noting(&engine, query)?;
    engine
        .connect(peer)
        .await
        .with_context(|| format!("connecting to {}", peer.fingerprint()))?;
    Ok(Dialed {
        engine,
        events,
        peer,
    })
}

/// Resolves on Ctrl-C, SIGTERM, or once standard output is closed (nobody reads what the
/// command prints any more): every long-running command stops on it.
pub(crate) async fn shutdown_signal() {
    tokio::select! {
        () = interrupted() => {}
        () = crate::output::stdout_closed() => {}
    }
}

async fn interrupted() {
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Finds a peer among those known from earlier (for offline work), by the rules of
/// `EngineHandle::resolve`: a contact by the user's name for it or a fingerprint prefix,
/// anyone else only by the full id or 8+ hex digits.
pub(crate) fn resolve_known(store: &Store, query: &str) -> Result<PeerId> {
    if let Ok(id) = query.parse::<PeerId>() {
        return Ok(id);
    }
    let known = store.contacts()?;
    let chosen: Vec<_> = known.iter().filter(|c| c.chosen_ms.is_some()).collect();
    let mut hits: Vec<_> = (chosen.iter().copied())
        .filter(|c| c.shown_name().to_lowercase() == query.trim().to_lowercase())
        .collect();
    if hits.is_empty() {
        hits = chosen
            .iter()
            .copied()
            .filter(|c| c.peer.matches(query))
            .collect();
    }
    let digits = query.chars().filter(char::is_ascii_hexdigit).count();
    if hits.is_empty() && digits >= p2pcall_core::STRANGER_DIGITS {
        hits = known.iter().filter(|c| c.peer.matches(query)).collect();
    }
    match hits.as_slice() {
        [one] => Ok(one.peer),
        [] => bail!(
            "no contact matches {query:?}; `p2pcall contacts` lists them (someone who is not a contact: at least 8 hex digits of the fingerprint, or the full 64-digit id)"
        ),
        many => bail!(
            "{query:?} matches several peers: {}; type more of the fingerprint",
            many.iter()
                .map(|c| format!("{} ({})", c.shown_name(), c.peer.fingerprint()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A size as typed: `1000`, `64MiB`, `1.5GB`, `512 kB` (decimal units are powers of 1000,
/// binary ones of 1024; case does not matter).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 1000, 64MiB, 1.5GB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use kB, MB, GB, KiB, MiB or GiB)"
            ));
        }
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is not a size of at least one byte"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_and_without_units() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("512 kB"), Ok(512_000));
        assert_eq!(parse_size("2gib"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("").is_err());
    }
}
