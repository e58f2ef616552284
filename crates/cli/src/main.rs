//! `p2pcall`: the command-line front end (relay server, peer commands, demo).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use p2pcall_core::settings::Dirs;

#[macro_use]
mod exit;
#[macro_use]
mod output;
mod calls;
mod cmd;
mod ctx;
mod session;

use cmd::{
    call::CallArgs, chat::ChatArgs, demo::DemoArgs, history::HistoryArgs, listen::ListenArgs,
    ping::PingArgs, relay::RelayArgs, send::SendArgs, speedtest::SpeedtestArgs, transfers,
};

/// What `--help` prints after the options: how to start, and the exit codes.
const AFTER_HELP: &str = concat!(
    "Try it on one machine:  p2pcall demo\n",
    "Or with two identities:  p2pcall relay --listen 127.0.0.1:7700\n",
    "  p2pcall --data-dir /tmp/a --relay 127.0.0.1 listen\n",
    "  p2pcall --data-dir /tmp/b --relay 127.0.0.1 ping <fingerprint of a>\n",
    "Without a relay, on one network:  p2pcall --lan listen  /  p2pcall --lan peers\n\n",
    exit_codes_help!()
);

/// Where the options every command takes are listed in each command's `--help`.
const GLOBAL: &str = "Global options (before or after the command)";

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
pub(crate) struct Cli {
    /// Directory for the identity key and settings [default: the platform's data and
    /// config dirs]
    #[arg(long, global = true, help_heading = GLOBAL, env = "P2PCALL_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Relay address, HOST[:PORT] (port 7700 if omitted) [default: `relay` in the settings]
    #[arg(long, global = true, help_heading = GLOBAL, env = "P2PCALL_RELAY", value_name = "ADDR")]
    pub(crate) relay: Option<String>,
    /// Relay access token (for `relay`: the token peers must present)
    #[arg(long, global = true, help_heading = GLOBAL, env = "P2PCALL_TOKEN", value_name = "TOKEN")]
    pub(crate) token: Option<String>,
    /// Display name shown to other peers, for this run (`p2pcall name NEW` keeps one)
    /// [default: settings, then $USER]
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// Trust this key for the relay from now on (64 hex digits, as the relay prints it),
    /// instead of the one pinned when it was first used [default: `relay_key` in the
    /// settings, else the pinned one]
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "KEY")]
    pub(crate) accept_relay_key: Option<p2pcall_core::PeerId>,
    /// Reach the relay over its TCP+TLS fallback only (networks that block UDP)
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub(crate) tcp: bool,
    /// Never use direct paths: all traffic goes through the relay (still end-to-end
    /// encrypted; hides your addresses from peers)
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub(crate) relay_only: bool,
    /// LAN only: find peers on this network by mDNS, with no relay at all (overrides
    /// --relay) [default: `lan_only` in the settings]
    #[arg(long, global = true, help_heading = GLOBAL, conflicts_with_all = ["tcp", "relay_only"])]
    pub(crate) lan: bool,
    /// With --lan: announce and browse on this interface only (repeatable; `lo` for peers on
    /// this machine) [default: `lan_interfaces` in the settings, else all but loopback]
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "IFACE")]
    pub(crate) lan_interface: Vec<String>,
    /// Do not ask the home router for a port mapping (UPnP-IGD, NAT-PMP, PCP)
    #[arg(
        long,
        global = true, help_heading = GLOBAL,
        env = "P2PCALL_NO_PORT_MAPPING",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub(crate) no_port_mapping: bool,
    /// Machine-readable output: one JSON object (or JSON lines for streams of events)
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub(crate) json: bool,
    /// What to do [default: `app`, the desktop window]
    #[command(subcommand)]
    pub(crate) cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Open the desktop app (also what `p2pcall` alone does)
    App,
    /// Run a relay server
    Relay(RelayArgs),
    /// Print this installation's peer id (created on first run)
    #[command(after_help = "Example:
  p2pcall id        # the fingerprint to give others, your name, the full id")]
    Id,
    /// Show the display name other peers see, or set it (kept in the settings)
    Name(cmd::name::NameArgs),
    /// List the peers online on the relay
    #[command(after_help = "Examples:
  p2pcall peers
  p2pcall --lan peers
  p2pcall --json peers | jq -r '.[].name'")]
    Peers,
    /// Stay online: accept connections, receive messages and files, print events until Ctrl-C
    Listen(ListenArgs),
    /// Make someone a contact (from their ticket, or by fingerprint), under your own name
    /// for them
    Add(cmd::contacts::AddArgs),
    /// Messages from people who are not your contacts: list, accept, delete
    Requests(cmd::requests::RequestsArgs),
    /// Print your invitation ticket (a line of text and its QR code): whoever adds it can
    /// reach you, through your relay, its key pinned
    Invite(cmd::invite::InviteArgs),
    /// List your contacts: your names for them, fingerprints, verified marks
    #[command(after_help = "Examples:
  p2pcall contacts
  p2pcall --json contacts | jq -r '.[].name'")]
    Contacts,
    /// File offers waiting for an answer in the running daemon
    Offers,
    /// Accept a waiting file offer (the running daemon receives it)
    Accept(cmd::offers::AnswerArgs),
    /// Decline a waiting file offer (the sender is told)
    Reject(cmd::offers::RejectArgs),
    /// Answer the call ringing in the running daemon, and stay in it until it ends
    Answer(cmd::ring::AnswerCallArgs),
    /// Decline the call ringing in the running daemon (the caller is told)
    Decline(cmd::ring::DeclineArgs),
    /// Run this identity's engine in the foreground: other commands and the app use it
    #[command(
        after_help = "Other commands on the same data dir talk to it over the local API
(docs/api.md) instead of starting an engine of their own; it delivers queued messages as soon
as their peer is reachable. To keep it running: the systemd user unit p2pcall.service
(README). Ctrl-C or SIGTERM stops it."
    )]
    Daemon,
    /// Open the end-to-end encrypted connection to a peer and measure RTT
    Ping(PingArgs),
    /// Send data to a peer on one stream and measure throughput; the peer verifies every byte
    Speedtest(SpeedtestArgs),
    /// In-process relay and two peers: register, connect, ping, stream; print what happened
    Demo(DemoArgs),
    /// Report this network's NAT behaviour as seen through the relay, and our candidates
    #[command(after_help = "Example:
  p2pcall --relay relay.example.org netcheck")]
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
    #[command(after_help = "Example:
  p2pcall devices   # ids to pass to `call --video` / `--audio` / `--speaker`")]
    Devices,
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return output::argument_error(&e),
    };
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
                errln!("error: {}", output::error_text(&e));
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
    let result = rt.block_on(run(cli));
    // Dropping a runtime waits for every blocking task without end (a device read, a render
    // thread being joined): the command is done, so give them two seconds and exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let code = exit::code(&e);
            if json {
                outln!("{}", output::error_json(&e, code));
            } else {
                errln!("error: {}", output::error_text(&e));
            }
            std::process::ExitCode::from(code)
        }
    }
}

/// The command's name, for what other processes are told about the engine this one runs.
pub(crate) fn command_name(cli: &Cli) -> &'static str {
    match &cli.cmd {
        None | Some(Cmd::App) => "app",
        Some(Cmd::Relay(_)) => "relay",
        Some(Cmd::Id) => "id",
        Some(Cmd::Name(_)) => "name",
        Some(Cmd::Peers) => "peers",
        Some(Cmd::Listen(_)) => "listen",
        Some(Cmd::Daemon) => "daemon",
        Some(Cmd::Add(_)) => "add",
        Some(Cmd::Invite(_)) => "invite",
        Some(Cmd::Requests(_)) => "requests",
        Some(Cmd::Contacts) => "contacts",
        Some(Cmd::Offers) => "offers",
        Some(Cmd::Accept(_)) => "accept",
        Some(Cmd::Reject(_)) => "reject",
        Some(Cmd::Answer(_)) => "answer",
        Some(Cmd::Decline(_)) => "decline",
        Some(Cmd::Ping(_)) => "ping",
        Some(Cmd::Speedtest(_)) => "speedtest",
        Some(Cmd::Demo(_)) => "demo",
        Some(Cmd::Netcheck) => "netcheck",
        Some(Cmd::Chat(_)) => "chat",
        Some(Cmd::History(_)) => "history",
        Some(Cmd::Send(_)) => "send",
        Some(Cmd::Transfers(_)) => "transfers",
        Some(Cmd::Call(_)) => "call",
        Some(Cmd::Devices) => "devices",
    }
}

async fn run(cli: Cli) -> Result<()> {
    let Some(cmd) = &cli.cmd else {
        bail!("the desktop app runs on the main thread, not here");
    };
    match cmd {
        Cmd::App => bail!("the desktop app runs on the main thread, not here"),
        Cmd::Demo(a) => cmd::demo::demo(&cli, a).await,
        Cmd::Relay(a) => cmd::relay::relay(&cli, a).await,
        Cmd::Id => cmd::id::id(&cli),
        Cmd::Name(a) => cmd::name::name(&cli, a).await,
        Cmd::Peers => cmd::peers::peers(&cli).await,
        Cmd::Listen(a) => cmd::listen::listen(&cli, a).await,
        Cmd::Daemon => cmd::daemon::daemon(&cli).await,
        Cmd::Add(a) => cmd::contacts::add(&cli, a).await,
        Cmd::Invite(a) => cmd::invite::invite(&cli, a).await,
        Cmd::Requests(a) => cmd::requests::requests(&cli, a).await,
        Cmd::Contacts => cmd::contacts::contacts(&cli),
        Cmd::Offers => cmd::offers::offers(&cli).await,
        Cmd::Accept(a) => cmd::offers::accept(&cli, a).await,
        Cmd::Reject(a) => cmd::offers::reject(&cli, a).await,
        Cmd::Answer(a) => cmd::ring::answer(&cli, a).await,
        Cmd::Decline(a) => cmd::ring::decline(&cli, a).await,
        Cmd::Chat(a) => cmd::chat::chat(&cli, a).await,
        Cmd::History(a) => cmd::history::history(&cli, a).await,
        Cmd::Send(a) => cmd::send::send(&cli, a).await,
        Cmd::Transfers(a) => transfers::run(&*ctx::open_store(&ctx::load(&cli)?)?, cli.json, a),
        Cmd::Ping(a) => cmd::ping::ping(&cli, a).await,
        Cmd::Speedtest(a) => cmd::speedtest::speedtest(&cli, a).await,
        Cmd::Netcheck => cmd::netcheck::netcheck(&cli).await,
        Cmd::Call(a) => cmd::call::call(&cli, a).await,
        Cmd::Devices => {
            calls::devices(cli.json);
            Ok(())
        }
    }
}
