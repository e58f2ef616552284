//! `p2pcall`: the command-line front end (relay server, peer commands, demo).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use p2pcall_core::chat::ChatEvent;
use p2pcall_core::engine::{Engine, EngineConfig, EngineEvent, EngineHandle};
use p2pcall_core::settings::{Dirs, Settings};
use p2pcall_core::transfer::{Progress, Summary, TransferEvent, id_hex};
use p2pcall_core::{Message, MessageState, Path, PeerId, PeerInfo, Store, identity};
use p2pcall_nat::classify::Mapping;
use p2pcall_net::{Event, PresenceEvent, RelayConfig, RelayTransport};
use serde_json::json;

mod calls;
#[macro_use]
mod exit;
mod transfers;

/// How long commands wait for the relay and the peer list.
const RELAY_WAIT: Duration = Duration::from_secs(10);
/// Database file in the data dir.
const DB_FILE: &str = "p2pcall.db";

/// What `--help` prints after the options: how to start, and the exit codes.
const AFTER_HELP: &str = concat!(
    "Try it on one machine:  p2pcall demo\n",
    "Or with two identities:  p2pcall relay --listen 127.0.0.1:7700\n",
    "  p2pcall --data-dir /tmp/a --relay 127.0.0.1 listen\n",
    "  p2pcall --data-dir /tmp/b --relay 127.0.0.1 ping <fingerprint of a>\n",
    "Without a relay, on one network:  p2pcall --lan listen  /  p2pcall --lan peers\n\n",
    exit_codes_help!()
);

#[derive(Parser, Debug)]
#[command(
    name = "p2pcall",
    version,
    about = "End-to-end encrypted peer-to-peer calls, chat and file transfer",
    long_about = "End-to-end encrypted peer-to-peer calls, chat and file transfer.\n\n\
        Peers register with a relay (presence and signaling), then talk over one QUIC \
        connection per pair that the relay cannot decrypt; it moves to a direct path when \
        one exists.\n\nLogs: RUST_LOG=debug p2pcall ...",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Directory for the identity key and settings [default: the platform's data and
    /// config dirs]
    #[arg(long, global = true, env = "P2PCALL_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Relay address, HOST[:PORT] (port 7700 if omitted) [default: `relay` in the settings]
    #[arg(long, global = true, env = "P2PCALL_RELAY", value_name = "ADDR")]
    relay: Option<String>,
    /// Relay access token (for `relay`: the token peers must present)
    #[arg(long, global = true, env = "P2PCALL_TOKEN", value_name = "TOKEN")]
    token: Option<String>,
    /// Display name shown to other peers [default: settings, then $USER]
    #[arg(long, global = true, value_name = "NAME")]
    name: Option<String>,
    /// Reach the relay over its TCP+TLS fallback only (networks that block UDP)
    #[arg(long, global = true)]
    tcp: bool,
    /// Never use direct paths: all traffic goes through the relay (still end-to-end
    /// encrypted; hides your addresses from peers)
    #[arg(long, global = true)]
    relay_only: bool,
    /// LAN only: find peers on this network by mDNS, with no relay at all (overrides
    /// --relay) [default: `lan_only` in the settings]
    #[arg(long, global = true, conflicts_with_all = ["tcp", "relay_only"])]
    lan: bool,
    /// With --lan: announce and browse on this interface only (repeatable; `lo` for peers on
    /// this machine) [default: `lan_interfaces` in the settings, else all but loopback]
    #[arg(long, global = true, value_name = "IFACE")]
    lan_interface: Vec<String>,
    /// Do not ask the home router for a port mapping (UPnP-IGD, NAT-PMP, PCP)
    #[arg(long, global = true, env = "P2PCALL_NO_PORT_MAPPING")]
    no_port_mapping: bool,
    /// Machine-readable output: one JSON object (or JSON lines for streams of events)
    #[arg(long, global = true)]
    json: bool,
    /// What to do [default: `app`, the desktop window]
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Open the desktop app (also what `p2pcall` alone does)
    App,
    /// Run a relay server
    Relay(RelayArgs),
    /// Print this installation's peer id (created on first run)
    Id,
    /// List the peers online on the relay
    Peers,
    /// Stay online: accept connections, receive messages and files, print events until Ctrl-C
    Listen(ListenArgs),
    /// Open the end-to-end encrypted connection to a peer and measure RTT
    Ping(PingArgs),
    /// Send data to a peer on one stream and measure throughput; the peer verifies every byte
    Speedtest(SpeedtestArgs),
    /// In-process relay and two peers: register, connect, ping, stream; print what happened
    Demo(DemoArgs),
    /// Report this network's NAT behaviour as seen through the relay, and our candidates
    Netcheck,
    /// Send a chat message (queued and delivered later if the peer is offline)
    Chat(ChatArgs),
    /// Show the conversation with a peer (and send read receipts)
    History(HistoryArgs),
    /// Send files and folders; the peer sees the offer and accepts or rejects it
    Send(SendArgs),
    /// List unfinished transfers (what `send` resumes, partial files of incoming ones), or
    /// clean them up
    Transfers(transfers::TransfersArgs),
    /// Call a peer (audio and video; headless: synthetic or file sources, recordings, stats)
    Call(CallArgs),
    /// List cameras, microphones, speakers and screens, or say why there are none
    Devices,
}

#[derive(Args, Debug)]
struct CallArgs {
    /// The peer: fingerprint (or its first 4+ digits), full id, or display name
    peer: String,
    #[command(flatten)]
    media: calls::MediaArgs,
}

#[derive(Args, Debug)]
struct ListenArgs {
    /// Accept every file offer into DIR without asking (unattended use); without it, offers
    /// are declined with a message telling the sender why
    #[arg(long, value_name = "DIR")]
    accept_files: Option<PathBuf>,
    /// Answer incoming calls (one at a time; others get "busy"); without it calls are
    /// declined
    #[arg(long)]
    answer: bool,
    #[command(flatten)]
    media: calls::MediaArgs,
}

#[derive(Args, Debug)]
struct ChatArgs {
    /// The peer: fingerprint (or its first 4+ digits), full id, or display name (online or
    /// known from earlier)
    peer: String,
    /// The message (up to 16 KiB)
    text: String,
}

#[derive(Args, Debug)]
struct HistoryArgs {
    /// The peer: fingerprint (or its first 4+ digits), full id, or display name
    peer: String,
    /// Most messages to show (the newest)
    #[arg(long, short = 'n', default_value_t = 50)]
    limit: usize,
    /// Show messages older than this message number (from an earlier page's "before")
    #[arg(long, value_name = "N")]
    before: Option<i64>,
}

#[derive(Args, Debug)]
struct SendArgs {
    /// The peer: fingerprint (or its first 4+ digits), full id, or display name
    peer: String,
    /// Files and folders to send (folders with everything in them)
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct RelayArgs {
    /// Address for everything: UDP (QUIC control + packet relay) and the TCP+TLS fallback
    #[arg(long, default_value = "0.0.0.0:7700", value_name = "ADDR")]
    listen: SocketAddr,
    /// UDP address, if not --listen
    #[arg(long, value_name = "ADDR")]
    udp: Option<SocketAddr>,
    /// TCP+TLS fallback address, if not --listen
    #[arg(long, value_name = "ADDR", conflicts_with = "no_tcp")]
    tcp_listen: Option<SocketAddr>,
    /// Disable the TCP+TLS fallback
    #[arg(long)]
    no_tcp: bool,
    /// Second UDP address answering address reflection [default: UDP port + 1]
    #[arg(long, value_name = "ADDR", conflicts_with = "no_reflect")]
    reflect: Option<SocketAddr>,
    /// Disable the second reflection port
    #[arg(long)]
    no_reflect: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (and /healthz)
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Most peers online at once
    #[arg(long, default_value_t = 50_000)]
    max_peers: usize,
    /// Relayed packets per second per peer
    #[arg(long, default_value_t = 10_000.0)]
    packet_rate: f64,
    /// Relayed Mbit/s per peer
    #[arg(long, default_value_t = 100.0)]
    mbit_rate: f64,
}

#[derive(Args, Debug)]
struct PingArgs {
    /// The peer: fingerprint (or its first 4+ digits), full id, or display name
    peer: String,
    /// Number of pings
    #[arg(long, short = 'c', default_value_t = 4)]
    count: u32,
    /// Milliseconds between pings
    #[arg(long, short = 'i', default_value_t = 1000)]
    interval: u64,
    /// Keep pinging until Ctrl-C (ignores --count) and show path changes as they happen
    #[arg(long)]
    watch: bool,
}

#[derive(Args, Debug)]
struct SpeedtestArgs {
    /// The peer: fingerprint (or its first 4+ digits), full id, or display name
    peer: String,
    /// Bytes to send
    #[arg(long, default_value_t = 256 << 20)]
    bytes: u64,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Bytes to stream from one peer to the other
    #[arg(long, default_value_t = 64 << 20)]
    bytes: u64,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The window runs on this thread (the windowing system wants the main one); the app
    // starts its own engine runtime.
    if matches!(cli.cmd, None | Some(Cmd::App)) {
        let r = Dirs::resolve(cli.data_dir.as_deref())
            .map_err(anyhow::Error::from)
            .and_then(|d| p2pcall_app::run(d).map_err(anyhow::Error::from));
        return match r {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let code = exit::code(&e);
            if json {
                println!(
                    "{}",
                    json!({"event": "error", "error": format!("{e:#}"), "exit_code": code})
                );
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let Some(cmd) = &cli.cmd else {
        bail!("the desktop app runs on the main thread, not here");
    };
    match cmd {
        Cmd::App => bail!("the desktop app runs on the main thread, not here"),
        Cmd::Demo(a) => demo(&cli, a).await,
        Cmd::Relay(a) => relay(&cli, a).await,
        Cmd::Id => id(&cli),
        Cmd::Peers => peers(&cli).await,
        Cmd::Listen(a) => listen(&cli, a).await,
        Cmd::Chat(a) => chat(&cli, a).await,
        Cmd::History(a) => history(&cli, a).await,
        Cmd::Send(a) => send(&cli, a).await,
        Cmd::Transfers(a) => transfers::run(&*open_store(&load(&cli)?)?, cli.json, a),
        Cmd::Ping(a) => ping(&cli, a).await,
        Cmd::Speedtest(a) => speedtest(&cli, a).await,
        Cmd::Netcheck => netcheck(&cli).await,
        Cmd::Call(a) => call(&cli, a).await,
        Cmd::Devices => {
            calls::devices(cli.json);
            Ok(())
        }
    }
}

struct Context_ {
    dirs: Dirs,
    settings: Settings,
}

fn load(cli: &Cli) -> Result<Context_> {
    let dirs = Dirs::resolve(cli.data_dir.as_deref())?;
    let settings = Settings::load(&dirs.settings)?;
    Ok(Context_ { dirs, settings })
}

fn display_name(cli: &Cli, s: &Settings) -> String {
    cli.name
        .clone()
        .or_else(|| s.name.clone())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "anonymous".into())
}

async fn resolve_relay(spec: &str) -> Result<SocketAddr> {
    Ok(p2pcall_core::settings::resolve_relay(spec).await?)
}

/// The local database in the data dir.
fn open_store(ctx: &Context_) -> Result<std::sync::Arc<Store>> {
    let path = ctx.dirs.data.join(DB_FILE);
    Ok(std::sync::Arc::new(Store::open(&path).with_context(
        || format!("cannot open the database {}", path.display()),
    )?))
}

async fn start_engine(
    cli: &Cli,
    presence: bool,
) -> Result<(EngineHandle, tokio::sync::mpsc::Receiver<EngineEvent>)> {
    start_engine_with(cli, presence, false).await
}

/// `auto_deliver`: deliver queued messages and resume transfers whenever a peer comes online
/// (for the long-running `listen`).
async fn start_engine_with(
    cli: &Cli,
    presence: bool,
    auto_deliver: bool,
) -> Result<(EngineHandle, tokio::sync::mpsc::Receiver<EngineEvent>)> {
    let ctx = load(cli)?;
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
                ..RelayConfig::new(addr)
            };
            EngineConfig::new(identity, name, Some(relay))
        }
    };
    cfg.direct_paths = !cli.relay_only;
    cfg.store = Some(open_store(&ctx)?);
    cfg.auto_deliver = auto_deliver;
    cfg.partial_max_age = ctx.settings.partial_max_age();
    // On a LAN-only network nobody outside needs to reach us.
    cfg.port_mapping = cfg.lan.is_none()
        && !cli.relay_only
        && !cli.no_port_mapping
        && ctx.settings.port_mapping.unwrap_or(true);
    Ok(Engine::start(cfg).await?)
}

/// LAN-only mode, if `--lan` or the settings ask for it (a `--relay` on the command line
/// wins over the settings' `lan_only`).
fn lan_config(cli: &Cli, s: &Settings) -> Option<p2pcall_net::LanConfig> {
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
async fn wait_online(
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

/// The relay transport for `--json` (`null` in LAN-only mode).
fn transport_name(t: Option<RelayTransport>) -> Option<String> {
    t.map(|t| format!("{t:?}").to_lowercase())
}

fn path_str(p: &Path) -> String {
    match p {
        Path::Relay => "relay".into(),
        Path::Direct(a) => format!("direct {a}"),
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn since(ms_epoch: u64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(ms_epoch) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn peer_json(p: &PeerInfo) -> serde_json::Value {
    json!({"name": p.name, "id": p.id.to_hex(), "fingerprint": p.id.fingerprint().to_string(), "online_since_ms": p.online_since_ms})
}

fn id(cli: &Cli) -> Result<()> {
    let ctx = load(cli)?;
    let (identity, created) = identity::load_or_create(&ctx.dirs.data)?;
    let me = identity.id();
    let name = display_name(cli, &ctx.settings);
    if cli.json {
        println!(
            "{}",
            json!({"id": me.to_hex(), "fingerprint": me.fingerprint().to_string(), "name": name, "created": created, "data_dir": ctx.dirs.data})
        );
    } else {
        if created {
            eprintln!("created a new identity in {}", ctx.dirs.data.display());
        }
        println!("{}", me.fingerprint());
        println!("name: {name}");
        println!("full id: {}", me.to_hex());
    }
    Ok(())
}

async fn peers(cli: &Cli) -> Result<()> {
    let (engine, mut events) = start_engine(cli, true).await?;
    wait_online(&engine, &mut events).await?;
    let list = engine.wait_presence(RELAY_WAIT).await?;
    if cli.json {
        println!(
            "{}",
            serde_json::Value::Array(list.iter().map(peer_json).collect())
        );
    } else if list.is_empty() {
        println!("nobody else is online");
    } else {
        println!("{:<24} {:<26} ONLINE FOR", "NAME", "FINGERPRINT");
        for p in &list {
            println!(
                "{:<24} {:<26} {}",
                p.name,
                p.id.fingerprint().to_string(),
                since(p.online_since_ms)
            );
        }
    }
    engine.shutdown().await;
    Ok(())
}

fn event_json(e: &EngineEvent) -> serde_json::Value {
    let n = match e {
        EngineEvent::PeerConnected { conn, incoming } => {
            return json!({"event": "connected", "incoming": incoming, "id": conn.peer().to_hex(), "fingerprint": conn.peer().fingerprint().to_string(), "name": conn.remote_name(), "path": path_str(&conn.path()), "safety_number": conn.safety_number().to_string()});
        }
        EngineEvent::Chat(ChatEvent::Received(m)) => {
            let mut v = message_json(m);
            v["event"] = json!("message");
            return v;
        }
        EngineEvent::Chat(ChatEvent::State { peer, id, state }) => {
            return json!({"event": "message_state", "peer": peer.fingerprint().to_string(), "id": hex(id), "state": state.as_str()});
        }
        EngineEvent::Transfer(t) => return transfer_json(t),
        EngineEvent::Call(c) => return calls::call_json(c),
        EngineEvent::Net(n) => n,
    };
    match n {
        Event::RelayConnected {
            observed,
            transport,
            relay,
        } => {
            json!({"event": "relay_connected", "observed": observed.to_string(), "transport": format!("{transport:?}").to_lowercase(), "relay": relay.fingerprint().to_string()})
        }
        Event::RelayDisconnected { reason, retry_in } => {
            json!({"event": "relay_disconnected", "reason": reason, "retry_in_ms": retry_in.as_millis() as u64})
        }
        Event::RelayRefused { reason, detail } => {
            json!({"event": "relay_refused", "reason": reason.to_string(), "detail": detail})
        }
        Event::RelayUnreachable { addr, detail } => {
            json!({"event": "relay_unreachable", "addr": addr.to_string(), "detail": detail})
        }
        Event::Presence(PresenceEvent::Snapshot(list)) => {
            json!({"event": "peers", "peers": list.iter().map(peer_json).collect::<Vec<_>>()})
        }
        Event::Presence(PresenceEvent::Joined(p)) => {
            json!({"event": "peer_joined", "peer": peer_json(p)})
        }
        Event::Presence(PresenceEvent::Updated(p)) => {
            json!({"event": "peer_updated", "peer": peer_json(p)})
        }
        Event::Presence(PresenceEvent::Left(id)) => {
            json!({"event": "peer_left", "id": id.to_hex(), "fingerprint": id.fingerprint().to_string()})
        }
        Event::PathChanged {
            peer, path, rtt, ..
        } => {
            json!({"event": "path_changed", "fingerprint": peer.fingerprint().to_string(), "path": path_str(path), "rtt_ms": rtt.map(ms)})
        }
        Event::ConnectionClosed { peer, reason } => {
            json!({"event": "disconnected", "fingerprint": peer.fingerprint().to_string(), "reason": reason})
        }
        Event::Signal { from, payload } => {
            json!({"event": "signal", "from": from.fingerprint().to_string(), "bytes": payload.len()})
        }
        Event::SignalFailed { to, reason } => {
            json!({"event": "signal_failed", "to": to.fingerprint().to_string(), "reason": format!("{reason:?}")})
        }
        Event::Incoming(c) => {
            json!({"event": "incoming", "fingerprint": c.peer().fingerprint().to_string()})
        }
    }
}

fn event_text(e: &EngineEvent) -> String {
    let n = match e {
        EngineEvent::PeerConnected { conn, incoming } => {
            return format!(
                "{} {} ({}) via {}; safety number: {}",
                if *incoming {
                    "connection from"
                } else {
                    "connected to"
                },
                conn.remote_name().unwrap_or_default(),
                conn.peer().fingerprint(),
                path_str(&conn.path()),
                conn.safety_number()
            );
        }
        EngineEvent::Chat(ChatEvent::Received(m)) => {
            return format!("message from {}: {}", m.peer.fingerprint(), m.text);
        }
        EngineEvent::Chat(ChatEvent::State { peer, state, .. }) => {
            return format!("message to {} is {}", peer.fingerprint(), state.as_str());
        }
        EngineEvent::Transfer(t) => return transfer_text(t),
        EngineEvent::Call(c) => return calls::call_text(c),
        EngineEvent::Net(n) => n,
    };
    match n {
        Event::RelayConnected {
            observed,
            transport,
            relay,
        } => format!(
            "online via relay {} over {transport:?}; the relay sees us as {observed}",
            relay.fingerprint()
        ),
        Event::RelayDisconnected { reason, retry_in } => format!(
            "relay connection lost ({reason}); retrying in {:.1}s",
            retry_in.as_secs_f64()
        ),
        Event::RelayUnreachable { addr, detail } => {
            format!("the relay at {addr} is unreachable: {detail}")
        }
        Event::RelayRefused { reason, detail } => {
            format!("the relay refused us: {reason} ({detail})")
        }
        Event::Presence(PresenceEvent::Snapshot(list)) => {
            format!("{} other peer(s) online", list.len())
        }
        Event::Presence(PresenceEvent::Joined(p)) => {
            format!("{} ({}) came online", p.name, p.id.fingerprint())
        }
        Event::Presence(PresenceEvent::Updated(p)) => {
            format!("{} is now called {}", p.id.fingerprint(), p.name)
        }
        Event::Presence(PresenceEvent::Left(id)) => {
            format!("{} went offline", id.fingerprint())
        }
        Event::PathChanged {
            peer, path, rtt, ..
        } => format!(
            "path to {} is now {}{}",
            peer.fingerprint(),
            path_str(path),
            rtt.map(|r| format!(" (rtt {:.2} ms)", ms(r)))
                .unwrap_or_default()
        ),
        Event::ConnectionClosed { peer, reason } => {
            format!("connection with {} closed: {reason}", peer.fingerprint())
        }
        Event::Signal { from, payload } => format!(
            "signal from {} ({} bytes)",
            from.fingerprint(),
            payload.len()
        ),
        Event::SignalFailed { to, reason } => {
            format!("signal to {} failed: {reason:?}", to.fingerprint())
        }
        Event::Incoming(c) => format!("incoming connection from {}", c.peer().fingerprint()),
    }
}

fn print_event(json: bool, e: &EngineEvent) {
    if json {
        println!("{}", event_json(e));
    } else {
        println!("{}", event_text(e));
    }
}

async fn listen(cli: &Cli, a: &ListenArgs) -> Result<()> {
    if a.answer {
        a.media.options().check()?;
    }
    if let Some(dir) = &a.accept_files {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the folder for received files {}",
                dir.display()
            )
        })?;
    }
    let (engine, mut events) = start_engine_with(cli, true, true).await?;
    if !cli.json {
        println!(
            "listening as {}{} (Ctrl-C to stop){}",
            engine.id().fingerprint(),
            if engine.endpoint().is_lan() {
                " on the LAN (mDNS, no relay)"
            } else {
                ""
            },
            a.accept_files
                .as_ref()
                .map(|d| format!("; accepting files into {}", d.display()))
                .unwrap_or_default()
        );
    }
    let mut last_progress: std::collections::HashMap<[u8; 16], Instant> = Default::default();
    let mut stats_file = calls::StatsFile::default();
    let mut console = None;
    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            e = events.recv() => match e {
                Some(e) => {
                    if let EngineEvent::Transfer(TransferEvent::Progress(p)) = &e {
                        // At most one progress line per transfer and second.
                        let now = Instant::now();
                        let due = last_progress.get(&p.id).is_none_or(|t| now - *t >= Duration::from_secs(1));
                        if !due {
                            continue;
                        }
                        last_progress.insert(p.id, now);
                    }
                    print_event(cli.json, &e);
                    match &e {
                        EngineEvent::Net(Event::RelayRefused { reason, detail }) => {
                            bail!("the relay refused us: {reason} ({detail})");
                        }
                        EngineEvent::Call(c) => {
                            stats_file.note(c);
                            match c {
                                p2pcall_core::call::CallEvent::Incoming { call, .. } => {
                                    let r = if a.answer {
                                        console.get_or_insert_with(|| calls::spawn_console(engine.clone()));
                                        engine.answer(*call, a.media.options()).await
                                    } else {
                                        engine.reject_call(*call).await
                                    };
                                    if let Err(err) = r {
                                        eprintln!("call: {err}");
                                    }
                                }
                                p2pcall_core::call::CallEvent::Ended { .. } => {
                                    if let Some(path) = &a.media.stats_json {
                                        stats_file.write(path, "callee", c)?;
                                        stats_file = calls::StatsFile::default();
                                    }
                                }
                                _ => {}
                            }
                        }
                        EngineEvent::Transfer(TransferEvent::Offered(o)) => {
                            let answer = match &a.accept_files {
                                Some(dir) => engine.accept_offer(o.peer, o.id, dir.clone()),
                                None => engine.reject_offer(
                                    o.peer,
                                    o.id,
                                    "the receiver does not accept files unattended (it can run `p2pcall listen --accept-files DIR`)",
                                ),
                            };
                            if let Err(err) = answer {
                                eprintln!("offer {}: {err}", id_hex(&o.id));
                            }
                        }
                        _ => {}
                    }
                }
                None => break,
            },
        }
    }
    engine.shutdown().await;
    Ok(())
}

async fn call(cli: &Cli, a: &CallArgs) -> Result<()> {
    a.media.options().check()?;
    let Dialed {
        engine,
        mut events,
        peer,
        ..
    } = dial(cli, &a.peer).await?;
    engine.call(peer, a.media.options()).await?;
    if !cli.json {
        println!("calling {}…", peer.fingerprint());
    }
    let console = calls::spawn_console(engine.clone());
    let mut stats_file = calls::StatsFile::default();
    let mut end = None;
    loop {
        tokio::select! {
            _ = shutdown_signal() => { let _ = engine.hangup().await; }
            e = events.recv() => match e {
                Some(EngineEvent::Call(c)) => {
                    calls::print(cli.json, &EngineEvent::Call(c.clone()));
                    stats_file.note(&c);
                    if matches!(c, p2pcall_core::call::CallEvent::Ended { .. }) {
                        end = Some(c);
                        break;
                    }
                }
                Some(e @ EngineEvent::Net(Event::PathChanged { .. })) => print_event(cli.json, &e),
                Some(_) => {}
                None => break,
            },
        }
    }
    console.abort();
    engine.shutdown().await;
    let end = end.context("the engine stopped during the call")?;
    if let Some(path) = &a.media.stats_json {
        stats_file.write(path, "caller", &end)?;
    }
    match &end {
        p2pcall_core::call::CallEvent::Ended { reason, .. } if !calls::ended_normally(&end) => {
            use p2pcall_core::call::EndReason as R;
            let message = p2pcall_core::call::describe_end(reason).1;
            Err(match reason {
                R::Rejected { remote: true, .. } => exit::Fail::Declined(message).into(),
                R::Unreachable => exit::Fail::PeerSilent(message).into(),
                _ => anyhow::anyhow!(message),
            })
        }
        _ => Ok(()),
    }
}

/// A connection opened for a command: the engine, its events, the peer, and timings.
struct Dialed {
    engine: EngineHandle,
    events: tokio::sync::mpsc::Receiver<EngineEvent>,
    peer: p2pcall_core::PeerId,
    conn: p2pcall_net::PeerConnection,
    /// `None` in LAN-only mode.
    transport: Option<RelayTransport>,
    /// How long the connection took to come up.
    setup: Duration,
    /// When it was up.
    connected: Instant,
}

/// Registers with the relay, finds the peer the user means, and connects to it.
async fn dial(cli: &Cli, query: &str) -> Result<Dialed> {
    let (engine, mut events) = start_engine(cli, true).await?;
    let transport = wait_online(&engine, &mut events).await?;
    engine.wait_presence(RELAY_WAIT).await?;
    let peer = engine.resolve_peer(query)?;
    let t0 = Instant::now();
    let conn = engine
        .connect(peer)
        .await
        .with_context(|| format!("connecting to {}", peer.fingerprint()))?;
    let connected = Instant::now();
    Ok(Dialed {
        engine,
        events,
        peer,
        conn,
        transport,
        setup: connected - t0,
        connected,
    })
}

/// Prints a path change; in JSON with its time since the connection came up.
fn print_path_change(json: bool, e: &EngineEvent, connected: Instant) {
    let EngineEvent::Net(Event::PathChanged { at, .. }) = e else {
        return;
    };
    if json {
        let mut v = event_json(e);
        v["since_connect_ms"] = json!(ms(at.saturating_duration_since(connected)));
        println!("{v}");
    } else {
        print_event(false, e);
    }
}

async fn speedtest(cli: &Cli, a: &SpeedtestArgs) -> Result<()> {
    let Dialed {
        engine,
        mut events,
        peer,
        conn,
        setup,
        connected,
        ..
    } = dial(cli, &a.peer).await?;
    if cli.json {
        println!(
            "{}",
            json!({"event": "connected", "fingerprint": peer.fingerprint().to_string(), "connect_ms": ms(setup), "path": path_str(&conn.path())})
        );
    } else {
        println!(
            "connected to {} in {:.1} ms via {}; sending {} bytes",
            peer.fingerprint(),
            ms(setup),
            path_str(&conn.path()),
            a.bytes
        );
    }
    let test = engine.speedtest(peer, a.bytes);
    tokio::pin!(test);
    let report = loop {
        tokio::select! {
            r = &mut test => break r?,
            e = events.recv() => match e {
                Some(e) => print_path_change(cli.json, &e, connected),
                None => bail!("engine stopped"),
            },
        }
    };
    let s = conn.stats();
    if cli.json {
        println!(
            "{}",
            json!({"event": "result", "bytes": report.bytes, "seconds": report.elapsed.as_secs_f64(), "mbit_s": report.mbit_per_s(), "verified": report.verified, "tx_relay": s.tx_relay, "tx_direct": s.tx_direct, "path": path_str(&s.path)})
        );
    } else {
        println!(
            "{} bytes in {:.2} s: {:.1} Mbit/s, {}; {} bytes via the relay, {} direct; path now {}",
            report.bytes,
            report.elapsed.as_secs_f64(),
            report.mbit_per_s(),
            if report.verified {
                "verified by the peer"
            } else {
                "NOT verified"
            },
            s.tx_relay,
            s.tx_direct,
            path_str(&s.path)
        );
    }
    engine.shutdown().await;
    if !report.verified {
        bail!("the peer received different data than was sent");
    }
    Ok(())
}

async fn ping(cli: &Cli, a: &PingArgs) -> Result<()> {
    let Dialed {
        engine,
        mut events,
        peer,
        conn,
        transport,
        setup,
        connected,
    } = dial(cli, &a.peer).await?;
    if cli.json {
        println!(
            "{}",
            json!({"event": "connected", "fingerprint": peer.fingerprint().to_string(), "name": conn.remote_name(), "connect_ms": ms(setup), "path": path_str(&conn.path()), "relay_transport": transport_name(transport), "safety_number": conn.safety_number().to_string()})
        );
    } else {
        println!(
            "connected to {} in {:.1} ms via {}",
            peer.fingerprint(),
            ms(setup),
            path_str(&conn.path())
        );
        println!(
            "safety number (compare with your peer): {}",
            conn.safety_number()
        );
    }
    let mut rtts = Vec::new();
    let mut lost = 0u32;
    let mut sent = 0u32;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    for seq in 0.. {
        if !a.watch && seq >= a.count {
            break;
        }
        if seq > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(a.interval)) => {}
                _ = &mut stop => break,
            }
        }
        sent += 1;
        while let Ok(e) = events.try_recv() {
            if let EngineEvent::Net(Event::PathChanged { peer: p, .. }) = &e
                && *p == peer
            {
                print_path_change(cli.json, &e, connected);
            }
        }
        let r = engine.ping(peer, seq).await?;
        match r.rtt {
            Some(rtt) => {
                rtts.push(rtt);
                if cli.json {
                    println!(
                        "{}",
                        json!({"event": "ping", "seq": seq, "rtt_ms": ms(rtt), "path": path_str(&r.path)})
                    );
                } else {
                    println!("seq={seq} rtt={:.3} ms path={}", ms(rtt), path_str(&r.path));
                }
            }
            None => {
                lost += 1;
                if cli.json {
                    println!(
                        "{}",
                        json!({"event": "ping", "seq": seq, "rtt_ms": null, "path": path_str(&r.path)})
                    );
                } else {
                    println!("seq={seq} lost path={}", path_str(&r.path));
                }
            }
        }
    }
    let min = rtts.iter().min().copied().map(ms);
    let max = rtts.iter().max().copied().map(ms);
    let avg = (!rtts.is_empty()).then(|| ms(rtts.iter().sum::<Duration>() / rtts.len() as u32));
    if cli.json {
        println!(
            "{}",
            json!({"event": "summary", "sent": sent, "received": rtts.len(), "lost": lost, "min_ms": min, "avg_ms": avg, "max_ms": max, "path": path_str(&conn.path()), "probes_sent": conn.stats().probes_sent})
        );
    } else {
        println!(
            "{} sent, {} received, {} lost; rtt min/avg/max = {}/{}/{} ms; path now {}",
            sent,
            rtts.len(),
            lost,
            min.map_or("-".into(), |v| format!("{v:.3}")),
            avg.map_or("-".into(), |v| format!("{v:.3}")),
            max.map_or("-".into(), |v| format!("{v:.3}")),
            path_str(&conn.path())
        );
    }
    engine.shutdown().await;
    if rtts.is_empty() && sent > 0 {
        return Err(exit::Fail::PeerSilent(format!(
            "none of the {sent} pings was answered within {} s",
            p2pcall_net::PING_TIMEOUT.as_secs()
        ))
        .into());
    }
    Ok(())
}

async fn relay(cli: &Cli, a: &RelayArgs) -> Result<()> {
    let ctx = load(cli)?;
    let (identity, _) = identity::load_or_create(&ctx.dirs.data)?;
    let udp = a.udp.unwrap_or(a.listen);
    let mut cfg = p2pcall_relay::RelayConfig::new(udp);
    cfg.tcp_listen = if a.no_tcp {
        None
    } else {
        Some(a.tcp_listen.unwrap_or(a.listen))
    };
    cfg.reflect_listen = if a.no_reflect {
        None
    } else {
        a.reflect.or(cfg.reflect_listen)
    };
    cfg.metrics_listen = a.metrics;
    cfg.token = cli.token.clone();
    cfg.max_peers = a.max_peers;
    cfg.packet_rate = a.packet_rate;
    cfg.byte_rate = a.mbit_rate * 1e6 / 8.0;
    let relay = p2pcall_relay::Relay::start(&identity, cfg)
        .await
        .context("starting the relay (is another relay already running on that port?)")?;
    if cli.json {
        println!(
            "{}",
            json!({"event": "relay_started", "udp": relay.udp_addr.to_string(), "tcp": relay.tcp_addr.map(|a| a.to_string()), "reflect": relay.reflect_addr.map(|a| a.to_string()), "metrics": relay.metrics_addr.map(|a| format!("http://{a}/metrics")), "fingerprint": relay.id.fingerprint().to_string(), "token_required": cli.token.is_some()})
        );
    } else {
        println!("relay {} listening", relay.id.fingerprint());
        println!("  UDP (QUIC + packet relay): {}", relay.udp_addr);
        if let Some(t) = relay.tcp_addr {
            println!("  TCP+TLS fallback:          {t}");
        }
        if let Some(r) = relay.reflect_addr {
            println!("  reflection:                {r}");
        }
        if let Some(m) = relay.metrics_addr {
            println!("  metrics:                   http://{m}/metrics");
        }
        if cli.token.is_some() {
            println!("  access token required");
        }
    }
    shutdown_signal().await;
    if !cli.json {
        println!("shutting down ({} peers online)", relay.online());
    }
    relay.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
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

async fn demo(cli: &Cli, a: &DemoArgs) -> Result<()> {
    if !cli.json {
        println!("starting an in-process relay and two peers (alice, bob) on loopback...");
    }
    let r = p2pcall_core::demo::run(a.bytes).await?;
    let rtts =
        |v: &[Option<Duration>]| -> Vec<Option<f64>> { v.iter().map(|r| r.map(ms)).collect() };
    if cli.json {
        println!(
            "{}",
            json!({
                "relay": r.relay.to_string(), "alice": r.alice, "bob": r.bob,
                "presence_ok": r.presence_ok, "signal_ok": r.signal_ok,
                "connect_ms": ms(r.connect_time), "first_path": path_str(&r.first_path),
                "rtts_first_ms": rtts(&r.rtts_first), "direct_after_ms": r.direct_after.map(ms),
                "final_path": path_str(&r.final_path), "rtts_final_ms": rtts(&r.rtts_final),
                "safety_number": r.safety_number, "bytes": r.bytes, "throughput_mbit": r.throughput_mbit,
                "chat_ok": r.chat_ok, "chat_ms": ms(r.chat_time),
                "files": r.files, "file_bytes": r.file_bytes, "files_ms": ms(r.files_time),
                "files_ok": r.files_ok, "placed": r.placed,
                "call_ok": r.call_ok, "call": r.call,
            })
        );
    } else {
        let fmt = |v: &[Option<Duration>]| {
            v.iter()
                .map(|r| r.map_or("lost".into(), |d| format!("{:.3}", ms(d))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!("relay on {}", r.relay);
        println!("alice {}  bob {}", r.alice, r.bob);
        println!(
            "presence: each sees the other: {}",
            if r.presence_ok { "yes" } else { "NO" }
        );
        println!(
            "signal through the relay: {}",
            if r.signal_ok {
                "delivered"
            } else {
                "NOT delivered"
            }
        );
        println!(
            "end-to-end connection up in {:.1} ms via {}",
            ms(r.connect_time),
            path_str(&r.first_path)
        );
        println!("  ping (ms): {}", fmt(&r.rtts_first));
        match r.direct_after {
            Some(d) => println!(
                "switched to {} {:.1} ms after dialing, without reconnecting",
                path_str(&r.final_path),
                ms(d)
            ),
            None => println!("stayed on {}", path_str(&r.final_path)),
        }
        println!("  ping (ms): {}", fmt(&r.rtts_final));
        println!("safety number: {}", r.safety_number);
        println!(
            "streamed {} MiB alice -> bob, verified: {:.0} Mbit/s",
            r.bytes >> 20,
            r.throughput_mbit
        );
        println!(
            "chat: 3 messages delivered in order, read receipts back: {} ({:.1} ms)",
            if r.chat_ok { "yes" } else { "NO" },
            ms(r.chat_time)
        );
        println!(
            "folder: {} files ({}) sent, accepted, verified by BLAKE3 on both sides: {} ({:.1} ms); bob saved it as {}",
            r.files,
            human(r.file_bytes as f64),
            if r.files_ok { "yes" } else { "NO" },
            ms(r.files_time),
            r.placed.join(", ")
        );
    }
    if !cli.json {
        match &r.call {
            Some(s) => {
                println!(
                    "call: {:.1} s of test pattern + tone both ways, answered by bob: {}",
                    s.elapsed_s,
                    if r.call_ok { "ok" } else { "INCOMPLETE" }
                );
                println!(
                    "  alice received {} video frames ({}), audio concealed {:.1}%, capture-to-render {} ms",
                    s.video_decoded,
                    s.resolution
                        .map(|(w, h)| format!("{w}x{h}"))
                        .unwrap_or_else(|| "-".into()),
                    s.recv
                        .iter()
                        .find(|x| x.kind == "audio")
                        .map_or(0.0, |a| a.concealed_pct),
                    s.video_latency_mean_ms
                        .map_or("-".into(), |l| format!("{l:.0}"))
                );
                println!(
                    "  whole call: {}",
                    calls::call_text(&p2pcall_core::call::CallEvent::Stats(Box::new(s.clone())))
                        .trim()
                );
            }
            None => println!("call: did not complete"),
        }
    }
    if !r.presence_ok || !r.signal_ok || !r.chat_ok || !r.files_ok || !r.call_ok {
        bail!(
            "demo incomplete: presence {} signal {} chat {} files {} call {}",
            r.presence_ok,
            r.signal_ok,
            r.chat_ok,
            r.files_ok,
            r.call_ok
        );
    }
    Ok(())
}

async fn netcheck(cli: &Cli) -> Result<()> {
    let (engine, mut events) = start_engine(cli, false).await?;
    if wait_online(&engine, &mut events).await?.is_none() {
        bail!(
            "netcheck measures the NAT through a relay's reflection ports; LAN-only mode has no relay: pass --relay HOST"
        );
    }
    let transport = engine.wait_relay(RELAY_WAIT).await?;
    let ep = engine.endpoint();
    let report = ep.netcheck().await?;
    let mapping = match report.mapping {
        Mapping::None => "none (public address)",
        Mapping::EndpointIndependent => "endpoint-independent",
        Mapping::EndpointDependent => "endpoint-dependent",
        Mapping::Unknown => "unknown",
    };
    let candidates: Vec<String> = ep
        .local_candidates()
        .iter()
        .map(ToString::to_string)
        .collect();
    let observed: Vec<String> = report.observed.iter().map(ToString::to_string).collect();
    let ipv6 = ep.has_global_ipv6();
    if cli.json {
        println!(
            "{}",
            json!({"udp": !report.udp_blocked, "relay_transport": format!("{transport:?}").to_lowercase(),
                   "mapping": mapping, "port_preserved": report.port_preserved, "observed": observed,
                   "ipv6": ipv6, "candidates": candidates})
        );
    } else {
        println!(
            "UDP:            {}",
            if report.udp_blocked {
                "blocked (relay reached over TCP)"
            } else {
                "works"
            }
        );
        println!("relay session:  {transport:?}");
        println!("NAT mapping:    {mapping}");
        println!(
            "port preserved: {}",
            if report.port_preserved { "yes" } else { "no" }
        );
        println!(
            "observed:       {}",
            if observed.is_empty() {
                "-".into()
            } else {
                observed.join(", ")
            }
        );
        println!("global IPv6:    {}", if ipv6 { "yes" } else { "no" });
        println!("candidates:     {}", candidates.join(", "));
    }
    engine.shutdown().await;
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn message_json(m: &Message) -> serde_json::Value {
    json!({
        "n": m.rowid, "peer": m.peer.fingerprint().to_string(), "outgoing": m.outgoing,
        "id": hex(&m.id), "seq": m.seq, "sent_ms": m.sent_ms, "received_ms": m.received_ms,
        "state": m.state.as_str(), "text": m.text,
    })
}

fn progress_json(p: &Progress) -> serde_json::Value {
    json!({
        "event": "transfer_progress", "id": id_hex(&p.id), "peer": p.peer.fingerprint().to_string(),
        "outgoing": p.outgoing, "done_bytes": p.done_bytes, "total_bytes": p.total_bytes,
        "files_done": p.files_done, "files": p.files,
        "rate_bytes_per_s": p.rate.map(|r| r.round()), "eta_s": p.eta.map(|e| e.as_secs_f64().round()),
    })
}

fn summary_json(s: &Summary) -> serde_json::Value {
    json!({
        "event": "transfer_done", "id": id_hex(&s.id), "peer": s.peer.fingerprint().to_string(),
        "outgoing": s.outgoing, "files": s.files, "folders": s.dirs, "total_bytes": s.total_bytes,
        "resumed_bytes": s.resumed_bytes, "elapsed_ms": ms(s.elapsed),
        "mb_per_s": s.bytes_per_s() / 1e6,
        "placed": s.placed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "skipped": s.skipped.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "blake3": s.hashes.iter().map(|(p, h)| json!({"path": p, "blake3": hex(h)})).collect::<Vec<_>>(),
    })
}

fn transfer_json(t: &TransferEvent) -> serde_json::Value {
    match t {
        TransferEvent::Offered(o) | TransferEvent::Resumed(o) => json!({
            "event": if matches!(t, TransferEvent::Offered(_)) { "transfer_offer" } else { "transfer_resumed" },
            "id": id_hex(&o.id), "peer": o.peer.fingerprint().to_string(), "files": o.files,
            "folders": o.dirs, "total_bytes": o.total_bytes, "names": o.tops,
        }),
        TransferEvent::Progress(p) => progress_json(p),
        TransferEvent::Finished(s) => summary_json(s),
        TransferEvent::Failed {
            peer,
            id,
            outgoing,
            reason,
            resumable,
        } => json!({
            "event": "transfer_failed", "id": id_hex(id), "peer": peer.fingerprint().to_string(),
            "outgoing": outgoing, "reason": reason, "resumable": resumable,
        }),
    }
}

/// Bytes for people: 1.5 GB, 320 kB.
fn human(b: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn transfer_text(t: &TransferEvent) -> String {
    match t {
        TransferEvent::Offered(o) | TransferEvent::Resumed(o) => format!(
            "{} {} offers {} file(s), {} folder(s), {}: {} [transfer {}]",
            if matches!(t, TransferEvent::Offered(_)) {
                "offer:"
            } else {
                "resuming:"
            },
            o.peer.fingerprint(),
            o.files,
            o.dirs,
            human(o.total_bytes as f64),
            o.tops.join(", "),
            id_hex(&o.id)
        ),
        TransferEvent::Progress(p) => format!(
            "transfer {}: {} of {} ({}/{} files){}",
            &id_hex(&p.id)[..8],
            human(p.done_bytes as f64),
            human(p.total_bytes as f64),
            p.files_done,
            p.files,
            p.rate
                .map(|r| format!(", {}/s", human(r)))
                .unwrap_or_default()
        ),
        TransferEvent::Finished(s) => format!(
            "transfer {} done: {} file(s), {} in {:.1} s ({}/s){}{}",
            &id_hex(&s.id)[..8],
            s.files,
            human(s.total_bytes as f64),
            s.elapsed.as_secs_f64(),
            human(s.bytes_per_s()),
            if s.resumed_bytes > 0 {
                format!(", {} resumed", human(s.resumed_bytes as f64))
            } else {
                String::new()
            },
            if s.placed.is_empty() {
                String::new()
            } else {
                format!(
                    "; saved as {}",
                    s.placed
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
        TransferEvent::Failed {
            id,
            reason,
            resumable,
            ..
        } => format!(
            "transfer {} stopped: {reason}{}",
            &id_hex(id)[..8],
            if *resumable {
                " (send it again to resume)"
            } else {
                ""
            }
        ),
    }
}

/// Finds a peer among those known from earlier (for offline work).
fn resolve_known(store: &Store, query: &str) -> Result<PeerId> {
    if let Ok(id) = query.parse::<PeerId>() {
        return Ok(id);
    }
    let contacts = store.contacts()?;
    let mut hits: Vec<_> = contacts.iter().filter(|c| c.peer.matches(query)).collect();
    if hits.is_empty() {
        hits = contacts.iter().filter(|c| c.name == query).collect();
    }
    match hits.as_slice() {
        [one] => Ok(one.peer),
        [] => bail!(
            "no known peer matches {query:?}; peers become known once seen online (run `p2pcall peers`), or pass the full 64-digit id"
        ),
        many => bail!(
            "{query:?} matches several peers: {}; type more of the fingerprint",
            many.iter()
                .map(|c| format!("{} ({})", c.name, c.peer.fingerprint()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

async fn chat(cli: &Cli, a: &ChatArgs) -> Result<()> {
    let (engine, mut events) = start_engine(cli, true).await?;
    let online = match wait_online(&engine, &mut events).await {
        Ok(_) => engine.wait_presence(RELAY_WAIT).await.is_ok(),
        Err(e) => {
            eprintln!("warning: {e:#}; the message will be queued");
            false
        }
    };
    let peer = if online {
        engine.resolve_peer(&a.peer)?
    } else {
        resolve_known(engine.store(), &a.peer)?
    };
    let m = engine.send_message(peer, &a.text).await?;
    if cli.json {
        println!("{}", message_json(&m));
    } else {
        match m.state {
            MessageState::Queued | MessageState::Sent => {
                let name = engine.peer_name(&peer);
                if engine.peer_offline(&peer) || !online {
                    println!(
                        "queued: {name} is offline; it is delivered when {name} is online (keep `p2pcall listen` running)"
                    );
                } else {
                    println!(
                        "queued: {name} is not reachable now; it is delivered when you are both online (keep `p2pcall listen` running)"
                    );
                }
            }
            s => println!("{} to {}", s.as_str(), peer.fingerprint()),
        }
    }
    engine.shutdown().await;
    Ok(())
}

async fn history(cli: &Cli, a: &HistoryArgs) -> Result<()> {
    let ctx = load(cli)?;
    let store = open_store(&ctx)?;
    let peer = resolve_known(&store, &a.peer)?;
    let page = store.history(&peer, a.before, a.limit)?;
    let name = store
        .contacts()?
        .into_iter()
        .find(|c| c.peer == peer)
        .map_or_else(|| peer.fingerprint().to_string(), |c| c.name);
    if cli.json {
        println!(
            "{}",
            json!({
                "peer": peer.fingerprint().to_string(), "name": name,
                "messages": page.iter().map(message_json).collect::<Vec<_>>(),
                "before": page.first().map(|m| m.rowid),
            })
        );
    } else {
        if page.is_empty() {
            println!("no messages with {name} ({})", peer.fingerprint());
        }
        for m in &page {
            let who = if m.outgoing { "me" } else { name.as_str() };
            let state = if m.outgoing {
                format!(" [{}]", m.state.as_str())
            } else {
                String::new()
            };
            println!(
                "{:>6}  {}  {who}: {}{state}",
                m.rowid,
                since(m.received_ms.unwrap_or(m.sent_ms)),
                m.text
            );
        }
        if page.len() == a.limit
            && let Some(first) = page.first()
        {
            println!(
                "(older: p2pcall history {} --before {})",
                a.peer, first.rowid
            );
        }
    }
    // Reading sends read receipts: now if the relay is reachable, else by the next `listen`.
    let reachable = cli.relay.is_some()
        || ctx.settings.relay.is_some()
        || lan_config(cli, &ctx.settings).is_some();
    if store.mark_read(&peer)? > 0 && reachable {
        drop(store);
        if let Ok((engine, mut events)) = start_engine(cli, true).await {
            if wait_online(&engine, &mut events).await.is_ok()
                && engine.wait_presence(RELAY_WAIT).await.is_ok()
            {
                let _ = tokio::time::timeout(RELAY_WAIT, engine.flush_chat(peer)).await;
            }
            engine.shutdown().await;
        }
    }
    Ok(())
}

async fn send(cli: &Cli, a: &SendArgs) -> Result<()> {
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
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
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
                        println!("{}", progress_json(&p));
                    }
                }
                Some(_) => {}
                None => break Err(p2pcall_core::EngineError::Stream("engine stopped".into())),
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
        println!("{}", summary_json(&s));
    } else {
        println!("{}", transfer_text(&TransferEvent::Finished(s.clone())));
        if !s.skipped.is_empty() {
            println!(
                "skipped (symlinks or special files): {}",
                s.skipped
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}
