//! The engine side of the app: a tokio runtime on its own thread runs the engine (and a relay
//! when the app hosts one); the UI sends [`UiCmd`]s and receives [`AppEvent`]s, and is woken
//! by `request_repaint` for each. Nothing here blocks the UI thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use p2pcall_core::call::media::{Picture, VideoTap};
use p2pcall_core::call::{AudioSource, CallEvent, CallOptions, SpeakerChoice, VideoSource};
use p2pcall_core::chat::ChatEvent;
use p2pcall_core::engine::{Engine, EngineConfig, EngineEvent};
use p2pcall_core::settings::{Dirs, Settings};
use p2pcall_core::transfer::{OfferInfo, Progress, Summary, TransferEvent};
use p2pcall_core::{Message, MessageState, PeerId, PeerInfo, Store, identity};
use p2pcall_net::{Event, RelayConfig, RelayTransport};
use p2pcall_proto::call::CallId;
use p2pcall_proto::chat::MessageId;
use p2pcall_proto::group::MAX_MEMBERS;
use p2pcall_proto::transfer::TransferId;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::AppError;
use crate::link::{self, Link};
use p2pcall_api::CallChange;

/// Database file in the data dir.
pub const DB_FILE: &str = "p2pcall.db";
/// Messages per history page.
pub const PAGE: usize = 50;

/// How the app reaches other peers (chosen on first run, kept in the settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// A relay somewhere: `HOST[:PORT]`.
    Relay(String),
    /// Run a relay on this machine (listening on this address) and use it.
    HostRelay(String),
    /// No relay: find peers on the local network by mDNS.
    Lan,
}

/// What the UI asks of the engine.
#[derive(Debug, Clone)]
pub enum UiCmd {
    /// First run: save the name and network choice, create the identity, start.
    Setup {
        /// Display name.
        name: String,
        /// Where to find peers.
        network: Network,
    },
    /// Load the newest page of a conversation and mark it read.
    Open(PeerId),
    /// Load the page before message row `before`.
    Older {
        /// Conversation.
        peer: PeerId,
        /// Oldest row shown.
        before: i64,
    },
    /// Mark a conversation read (it is on screen).
    MarkRead(PeerId),
    /// Send a chat message (queued while the peer is offline).
    Send {
        /// To whom.
        peer: PeerId,
        /// Text.
        text: String,
    },
    /// Offer files and folders.
    SendFiles {
        /// To whom.
        peer: PeerId,
        /// What.
        paths: Vec<PathBuf>,
    },
    /// Ask the desktop's file chooser (the XDG portal) for files or folders to offer.
    PickFiles {
        /// To whom.
        peer: PeerId,
        /// Folders instead of files.
        folders: bool,
    },
    /// Accept an offer into the download folder.
    Accept {
        /// From whom.
        peer: PeerId,
        /// Which transfer.
        id: TransferId,
    },
    /// Decline an offer.
    Reject {
        /// From whom.
        peer: PeerId,
        /// Which transfer.
        id: TransferId,
    },
    /// Stop a running transfer.
    Cancel {
        /// With whom.
        peer: PeerId,
        /// Which transfer.
        id: TransferId,
    },
    /// Call a peer.
    Call(PeerId),
    /// Answer the ringing call.
    Answer(CallId),
    /// Decline the ringing call.
    Decline(CallId),
    /// End the call.
    Hangup,
    /// Stop (true) or resume sending audio.
    Mute(bool),
    /// Send (true) or stop sending video.
    Camera(bool),
    /// Invite one more participant into the call.
    AddToCall(PeerId),
    /// Send this screen or window (`screen:N`, `window:ID`), or the configured camera again.
    Share(Option<String>),
    /// List screens and windows that can be shared.
    ListScreens,
    /// Save these settings (a new name is announced at once; a new relay is used from the
    /// next start).
    SaveSettings(Box<Settings>),
    /// Tell the desktop (the window is not focused).
    Notify {
        /// Headline.
        title: String,
        /// Text.
        body: String,
    },
    /// Start the daemon again (after [`Status::DaemonStopped`]) and show its engine.
    RestartDaemon,
    /// Accept a message request: the sender becomes a contact.
    AcceptRequest(PeerId),
    /// Delete a message request.
    DeleteRequest(PeerId),
    /// Make our invitation ticket ([`AppEvent::Ticket`]).
    Invite,
    /// Add the peer of someone's ticket as a contact (and pin the relay it names).
    AddTicket {
        /// The ticket as pasted.
        ticket: String,
        /// Our user's name for the peer (`None`: the one the ticket suggests).
        name: Option<String>,
    },
    /// Our user compared safety numbers with this peer (true), or takes that back.
    Verify {
        /// Whom.
        peer: PeerId,
        /// The name it goes by now.
        name: String,
        /// Verified or not.
        verified: bool,
    },
}

/// Where the relay session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// First run: waiting for [`UiCmd::Setup`].
    NeedsSetup,
    /// Starting or reconnecting.
    Connecting(String),
    /// Registered with the relay.
    Online(RelayTransport),
    /// LAN-only mode: announcing and browsing by mDNS (no relay).
    OnLan,
    /// The relay refused us for good, or the engine could not start.
    Failed(String),
    /// The daemon whose engine the app showed stopped ([`UiCmd::RestartDaemon`]).
    DaemonStopped,
}

/// What the engine tells the UI.
#[derive(Debug, Clone)]
pub enum AppEvent {
    /// The engine runs as this peer.
    Started {
        /// Our key.
        me: PeerId,
        /// Our display name.
        name: String,
        /// Where accepted files go.
        downloads: PathBuf,
        /// The relay this app hosts: its UDP address (others use this machine's address and
        /// that port).
        hosting: Option<SocketAddr>,
        /// The daemon whose engine the app shows (its process id); `None`: the app's own.
        daemon: Option<u32>,
    },
    /// Relay session state.
    Status(Status),
    /// Everyone online now.
    Online(Vec<PeerInfo>),
    /// Peers we have talked to (name, last seen) and unread counts.
    Contacts {
        /// Known peers, their last names, and whether our user verified their key.
        known: Vec<(PeerId, String, bool)>,
        /// The contacts among them (peers our user chose).
        chosen: Vec<PeerId>,
        /// Unread incoming messages per peer.
        unread: HashMap<PeerId, u64>,
    },
    /// A page of history, oldest first.
    History {
        /// Conversation.
        peer: PeerId,
        /// The messages.
        messages: Vec<Message>,
        /// An older page than the ones shown (else the newest).
        older: bool,
        /// More pages exist before these.
        more: bool,
    },
    /// A message was written or arrived.
    Message(Message),
    /// One of our messages changed state.
    MessageState {
        /// Conversation.
        peer: PeerId,
        /// Which.
        id: MessageId,
        /// Its new state.
        state: MessageState,
    },
    /// A peer offers files.
    Offer(OfferInfo),
    /// A transfer started or moved on.
    Progress(Progress),
    /// A transfer finished.
    Finished(Summary),
    /// A transfer stopped.
    TransferFailed {
        /// With whom.
        peer: PeerId,
        /// Which.
        id: TransferId,
        /// Why.
        reason: String,
    },
    /// The settings as saved.
    Settings(Box<Settings>),
    /// Placing or answering a call failed before it started (it is gone).
    CallFailed(String),
    /// A call event (incoming, ringing, started, statistics, ended…).
    Call(CallEvent),
    /// Screens and windows that can be shared: (`--video` name, description), or why none.
    Screens(Result<Vec<(String, String)>, String>),
    /// Cameras, microphones and speakers: (the settings' value, description), or why none.
    Devices {
        /// `camera:/dev/videoN`.
        cameras: Result<Vec<(String, String)>, String>,
        /// `mic:hw:C,D`.
        microphones: Result<Vec<(String, String)>, String>,
        /// `hw:C,D` (as the speaker setting takes it).
        speakers: Result<Vec<(String, String)>, String>,
    },
    /// Message requests: senders who are not contacts, and how many messages wait from each.
    Requests(HashMap<PeerId, u64>),
    /// Our invitation ticket (`p2pcall:…`), or why there is none yet.
    Ticket(Result<String, String>),
    /// A contact was added from a ticket.
    Invited {
        /// Our user's name for it.
        name: String,
        /// The relay's key the ticket names is not the one pinned (which stays): what to
        /// tell the user.
        warning: Option<String>,
    },
    /// Something the user should read (a failed command).
    Error(String),
}

/// The newest picture of one side of a call, RGBA.
#[derive(Debug, Default, Clone)]
pub struct Frame {
    /// Width, height.
    pub size: [usize; 2],
    /// `4 × width × height` bytes.
    pub rgba: Vec<u8>,
    /// Counts frames (a new one since the last look when it changed).
    pub seq: u64,
}

/// The newest local and remote pictures (written by the capture and render threads).
#[derive(Debug, Default)]
pub struct Videos {
    /// What we send.
    pub local: Frame,
    /// What each participant sends.
    pub remote: std::collections::BTreeMap<PeerId, Frame>,
}

/// Where the bridge keeps and finds things.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Data dir and settings file.
    pub dirs: Dirs,
    /// UDP bind address of the engine.
    pub bind: SocketAddr,
    /// The `p2pcall` program, to start a daemon with (the `keep_online` setting, and
    /// restarting a daemon that stopped); `None`: the app never starts one.
    pub daemon_exe: Option<PathBuf>,
}

/// The UI's end of the bridge.
#[derive(Debug)]
pub struct Bridge {
    cmd: mpsc::UnboundedSender<UiCmd>,
    events: std_mpsc::Receiver<AppEvent>,
    videos: Arc<Mutex<Videos>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Bridge {
    /// Closing the window stops the engine: connections are closed so peers learn at once
    /// (bounded by the engine's own shutdown wait).
    fn drop(&mut self) {
        let (closed, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.cmd, closed));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Bridge {
    /// Starts the engine thread; `wake` is called after every event (the UI repaints).
    pub fn start(
        cfg: BridgeConfig,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> Result<Bridge, AppError> {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = std_mpsc::channel();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(AppError::Runtime)?;
        let out = Out {
            tx: ev_tx,
            wake: Arc::new(wake),
            videos: Arc::new(Mutex::new(Videos::default())),
        };
        let videos = out.videos.clone();
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || rt.block_on(run(cfg, cmd_rx, out)))
            .map_err(AppError::Runtime)?;
        Ok(Bridge {
            cmd: cmd_tx,
            events: ev_rx,
            videos,
            thread: Some(thread),
        })
    }

    /// The newest call pictures.
    pub fn videos(&self) -> &Arc<Mutex<Videos>> {
        &self.videos
    }

    /// Sends a command (never blocks).
    pub fn send(&self, c: UiCmd) {
        let _ = self.cmd.send(c);
    }

    /// Events that arrived since the last call.
    pub fn poll(&self) -> Vec<AppEvent> {
        self.events.try_iter().collect()
    }
}

#[derive(Clone)]
struct Out {
    tx: std_mpsc::Sender<AppEvent>,
    wake: Arc<dyn Fn() + Send + Sync>,
    videos: Arc<Mutex<Videos>>,
}

impl Out {
    fn emit(&self, e: AppEvent) {
        let _ = self.tx.send(e);
        (self.wake)();
    }

    /// Frames of a call into [`Videos`], converted once (I420 → RGBA) on the thread that
    /// has them; the UI uploads them as textures.
    fn tap(&self) -> VideoTap {
        VideoTap::new(self.shower())
    }

    /// What shows one picture of a call (for the engine's tap, or a daemon's video feed).
    fn shower(&self) -> impl Fn(Picture, &p2pcall_media_io::Frame) + Send + Sync + 'static {
        let (videos, wake) = (self.videos.clone(), self.wake.clone());
        // One spare buffer per picture: frames are converted outside the lock the window
        // thread takes, then swapped in (no allocation per frame, no wait for the UI).
        let spare: Arc<Mutex<HashMap<Option<PeerId>, Vec<u8>>>> = Arc::default();
        move |which, f| {
            let key = match which {
                Picture::Local => None,
                Picture::Remote(p) => Some(p),
            };
            let mut buf = spare.lock().remove(&key).unwrap_or_default();
            p2pcall_media_io::convert::to_rgba(f, &mut buf);
            {
                let mut v = videos.lock();
                let p = match key {
                    None => &mut v.local,
                    // A call has at most MAX_MEMBERS − 1 others.
                    Some(k) if v.remote.len() >= MAX_MEMBERS && !v.remote.contains_key(&k) => {
                        return;
                    }
                    Some(k) => v.remote.entry(k).or_default(),
                };
                std::mem::swap(&mut p.rgba, &mut buf);
                p.size = [f.width, f.height];
                p.seq += 1;
            }
            spare.lock().insert(key, buf);
            wake();
        }
    }
}

/// The engine the app shows and what the app hosts for it.
struct Running {
    link: Link,
    downloads: PathBuf,
    settings: Settings,
    /// The incoming call rings on the speaker until it is answered, declined or over.
    ringer: Mutex<Option<p2pcall_core::call::ring::Ringer>>,
    relay: Option<p2pcall_relay::Relay>,
    /// The local API for other programs of this identity (the CLI's commands use this
    /// engine while the window is open); dropped before the engine stops.
    api: Option<p2pcall_daemon::ApiServer>,
    hub: Arc<p2pcall_daemon::Hub>,
    /// One engine per data dir: held while the app runs its own.
    _lock: Option<p2pcall_core::lock::EngineLock>,
    /// Reads a daemon's events and pictures (`None` for our own engine).
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for p in &self.pumps {
            p.abort();
        }
    }
}

/// What reaches the bridge's loop from the engine.
enum Inbound {
    /// An engine event.
    Event(EngineEvent),
    /// The daemon whose engine the app showed went away.
    DaemonStopped,
}

async fn run(cfg: BridgeConfig, mut cmds: mpsc::UnboundedReceiver<UiCmd>, out: Out) {
    let mut settings = match Settings::load(&cfg.dirs.settings) {
        Ok(s) => s,
        Err(e) => {
            out.emit(AppEvent::Status(Status::Failed(e.to_string())));
            Settings::default()
        }
    };
    out.emit(AppEvent::Settings(Box::new(settings.clone())));
    let mut running: Option<Running> = None;
    let notify_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ev_tx, mut ev_rx) = mpsc::channel::<Inbound>(256);
    let network_chosen = settings.relay.is_some()
        || settings.host_relay == Some(true)
        || settings.lan_only == Some(true);
    if settings.name.is_some() && network_chosen {
        running = start(&cfg, &settings, &out, &ev_tx, false).await;
    } else {
        out.emit(AppEvent::Status(Status::NeedsSetup));
    }
    loop {
        tokio::select! {
            c = cmds.recv() => {
                let Some(c) = c else { break };
                match (c, &running) {
                    (UiCmd::Setup { name, network }, None) => {
                        setup(&mut settings, name, network);
                        if let Err(e) = settings.save(&cfg.dirs.settings) {
                            out.emit(AppEvent::Error(format!("cannot save the settings: {e}")));
                        }
                        out.emit(AppEvent::Settings(Box::new(settings.clone())));
                        running = start(&cfg, &settings, &out, &ev_tx, false).await;
                    }
                    (UiCmd::Setup { .. }, Some(_)) => {}
                    (UiCmd::RestartDaemon, None) => {
                        running = start(&cfg, &settings, &out, &ev_tx, true).await;
                    }
                    (UiCmd::SaveSettings(new), _) => {
                        settings = *new;
                        match settings.save(&cfg.dirs.settings) {
                            Ok(()) => out.emit(AppEvent::Settings(Box::new(settings.clone()))),
                            Err(e) => out.emit(AppEvent::Error(format!("cannot save the settings: {e}"))),
                        }
                        if let Some(r) = &mut running {
                            let name = settings.name.clone().unwrap_or_default();
                            if r.settings.name != settings.name && !name.is_empty() {
                                let link = r.link.clone();
                                spawn_result(&out, async move { link.set_name(name).await });
                            }
                            r.settings = settings.clone();
                        }
                    }
                    (UiCmd::Notify { title, body }, _) => notify(&out, title, body, &notify_failed),
                    (c, Some(r)) => command(r, c, &out),
                    (_, None) => out.emit(AppEvent::Error("not connected yet".into())),
                }
            }
            Some(e) = ev_rx.recv() => match e {
                Inbound::Event(e) => {
                    if let Some(r) = &running {
                        event(r, e, &out);
                    }
                }
                Inbound::DaemonStopped => {
                    running = None;
                    set_status(&out, Status::DaemonStopped);
                }
            },
        }
    }
    if let Some(mut r) = running {
        drop(r.api.take());
        r.link.shutdown().await;
    }
}

fn set_status(out: &Out, s: Status) {
    out.emit(AppEvent::Status(s));
}

/// The first run's choices into the settings.
fn setup(settings: &mut Settings, name: String, network: Network) {
    settings.name = Some(name.trim().to_string());
    match network {
        Network::Relay(r) => {
            settings.relay = Some(r.trim().to_string());
            settings.host_relay = None;
            settings.lan_only = None;
        }
        Network::HostRelay(listen) => {
            settings.host_relay = Some(true);
            settings.relay_listen = Some(listen.trim().to_string());
            settings.lan_only = None;
        }
        Network::Lan => {
            settings.lan_only = Some(true);
            settings.host_relay = None;
        }
    }
}

/// Shows the engine of this data dir: a daemon's that runs (one is started first with
/// `daemon`, or with the `keep_online` setting), else one of our own. Failures become a
/// `Failed` status.
async fn start(
    cfg: &BridgeConfig,
    s: &Settings,
    out: &Out,
    forward: &mpsc::Sender<Inbound>,
    daemon: bool,
) -> Option<Running> {
    out.emit(AppEvent::Status(Status::Connecting("starting".into())));
    match try_start(cfg, s, out, forward, daemon).await {
        Ok(r) => {
            let daemon = match &r.link {
                Link::Daemon(d) => Some(d.pid),
                Link::Own(_) => None,
            };
            out.emit(AppEvent::Started {
                me: r.link.id(),
                name: s.name.clone().unwrap_or_default(),
                downloads: r.downloads.clone(),
                hosting: r.relay.as_ref().map(|x| x.udp_addr),
                daemon,
            });
            contacts(&r.link, out);
            match &r.link {
                Link::Own(e) if e.endpoint().is_lan() => set_status(out, Status::OnLan),
                Link::Daemon(_) => out.emit(AppEvent::Online(r.link.online_peers())),
                Link::Own(_) => {}
            }
            Some(r)
        }
        Err(e) => {
            out.emit(AppEvent::Status(Status::Failed(e)));
            None
        }
    }
}

async fn try_start(
    cfg: &BridgeConfig,
    s: &Settings,
    out: &Out,
    forward: &mpsc::Sender<Inbound>,
    daemon: bool,
) -> Result<Running, String> {
    if let Some(r) = attach(cfg, s, out, forward).await? {
        return Ok(r);
    }
    // A relay hosted by the app lives in its window: no daemon for that.
    let background = daemon || (s.keep_online == Some(true) && s.host_relay != Some(true));
    if let (true, Some(exe)) = (background, &cfg.daemon_exe) {
        link::start_daemon(exe, &cfg.dirs).await?;
        return attach(cfg, s, out, forward)
            .await?
            .ok_or_else(|| "the p2pcall daemon stopped right after it started".into());
    }
    own_engine(cfg, s, forward).await
}

/// Shows the engine of the daemon serving this data dir, if one does.
async fn attach(
    cfg: &BridgeConfig,
    s: &Settings,
    out: &Out,
    forward: &mpsc::Sender<Inbound>,
) -> Result<Option<Running>, String> {
    use p2pcall_api::{Answer, Request};
    let Ok(Some(mut c)) = p2pcall_daemon::Client::connect(&cfg.dirs.data, "app").await else {
        return Ok(None);
    };
    let fail = |e: p2pcall_daemon::DaemonError| e.to_string();
    let Answer::Status(status) = c.call(Request::Status).await.map_err(fail)? else {
        return Err("the p2pcall daemon answered something else than its status".into());
    };
    let Answer::Peers { peers } = c.call(Request::Peers { wait_ms: 0 }).await.map_err(fail)? else {
        return Err("the p2pcall daemon answered something else than the peers".into());
    };
    c.call(Request::Subscribe).await.map_err(fail)?;
    let db = cfg.dirs.data.join(DB_FILE);
    let store = Store::open(&db).map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    let remote = Arc::new(link::Remote {
        data_dir: cfg.dirs.data.clone(),
        store: Arc::new(store),
        pid: status.pid,
        me: status
            .id
            .parse()
            .map_err(|_| "the daemon sent an unreadable id")?,
        online: Mutex::new(
            peers
                .iter()
                .filter_map(p2pcall_daemon::peer_from_api)
                .collect(),
        ),
    });
    set_status(
        out,
        match status.relay.as_deref() {
            _ if status.lan => Status::OnLan,
            Some(t) => Status::Online(
                p2pcall_daemon::tools::transport_from_api(t).unwrap_or(RelayTransport::Udp),
            ),
            None => Status::Connecting("the daemon is connecting to the relay".into()),
        },
    );
    let feed = p2pcall_daemon::Client::connect(&cfg.dirs.data, "app video")
        .await
        .ok()
        .flatten();
    let mut pumps = vec![tokio::spawn(pump_events(
        c,
        remote.clone(),
        out.clone(),
        forward.clone(),
    ))];
    if let Some(feed) = feed {
        pumps.push(tokio::spawn(pump_video(feed, out.clone())));
    }
    Ok(Some(Running {
        link: Link::Daemon(remote),
        downloads: s.downloads(&cfg.dirs),
        settings: s.clone(),
        ringer: Mutex::new(None),
        relay: None,
        api: None,
        hub: Arc::default(),
        _lock: None,
        pumps,
    }))
}

/// A daemon's events, as the app's own engine would give them (relay state as a status).
async fn pump_events(
    mut c: p2pcall_daemon::Client,
    remote: Arc<link::Remote>,
    out: Out,
    forward: mpsc::Sender<Inbound>,
) {
    use p2pcall_api::Event as E;
    loop {
        let e = match c.next_event().await {
            Ok(e) => e,
            Err(_) => {
                let _ = forward.send(Inbound::DaemonStopped).await;
                return;
            }
        };
        match &e {
            E::RelayConnected { transport } => set_status(
                &out,
                Status::Online(
                    p2pcall_daemon::tools::transport_from_api(transport)
                        .unwrap_or(RelayTransport::Udp),
                ),
            ),
            E::RelayDisconnected {
                reason,
                retry_in_ms,
            } => set_status(
                &out,
                Status::Connecting(format!(
                    "{reason}; retrying in {:.0} s",
                    (*retry_in_ms).max(500) as f64 / 1e3
                )),
            ),
            E::RelayRefused { reason, detail } => set_status(
                &out,
                Status::Failed(format!("the relay refused us: {reason} ({detail})")),
            ),
            _ => {}
        }
        let Some(e) = p2pcall_daemon::event_from_api(&e) else {
            continue;
        };
        if let EngineEvent::Net(Event::Presence(p)) = &e {
            remote.presence(p);
        }
        if forward.send(Inbound::Event(e)).await.is_err() {
            return;
        }
    }
}

/// The pictures of the daemon's calls, shown as our own engine's would be.
async fn pump_video(c: p2pcall_daemon::Client, out: Out) {
    let Ok(mut feed) = c.video_feed().await else {
        return;
    };
    let show = out.shower();
    while let Ok((side, f)) = feed.next_frame().await {
        let which = match side {
            p2pcall_api::video::Side::Local => Picture::Local,
            p2pcall_api::video::Side::Remote(id) => Picture::Remote(PeerId::from_bytes(id)),
        };
        show(which, &f);
    }
}

/// Runs an engine of our own (and the relay the settings ask us to host), serving it to
/// the CLI.
async fn own_engine(
    cfg: &BridgeConfig,
    s: &Settings,
    forward: &mpsc::Sender<Inbound>,
) -> Result<Running, String> {
    let lock = p2pcall_core::lock::EngineLock::acquire(&cfg.dirs.data, "the desktop app")
        .map_err(|e| e.to_string())?;
    let (identity, _) = identity::load_or_create(&cfg.dirs.data).map_err(|e| e.to_string())?;
    let name = s.name.clone().unwrap_or_else(|| "anonymous".into());
    let mut relay = None;
    let mut ec = if let Some(lan) = s.lan() {
        let mut ec = EngineConfig::new(identity, name, None);
        ec.lan = Some(lan);
        ec
    } else {
        // The relay this app hosts is known by its key; another one's key is the one given
        // in the settings, else the one pinned when it was first used.
        let (addr, relay_key, relay_name) = if s.host_relay == Some(true) {
            let r = host_relay(s, &cfg.dirs.data).await?;
            let mut a = r.udp_addr;
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let key = r.id;
            relay = Some(r);
            (a, Some(key), None)
        } else {
            let spec = s.relay.as_deref().unwrap_or_default();
            let addr = p2pcall_core::settings::resolve_relay(spec)
                .await
                .map_err(|e| e.to_string())?;
            let key = s.relay_key().map_err(|e| e.to_string())?;
            (addr, key, Some(p2pcall_core::settings::relay_name(spec)))
        };
        let relay = RelayConfig {
            token: s.token.clone(),
            relay_key,
            alternates: s.alternate_relays(),
            park_after: s.park_after(),
            ..RelayConfig::new(addr)
        };
        let mut ec = EngineConfig::new(identity, name, Some(relay));
        ec.relay_name = relay_name;
        ec
    };
    let db = cfg.dirs.data.join(DB_FILE);
    let store = Store::open(&db).map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    ec.bind = cfg.bind;
    ec.store = Some(Arc::new(store));
    // On a LAN-only network nobody outside needs to reach us.
    ec.port_mapping = ec.lan.is_none() && s.port_mapping.unwrap_or(true);
    ec.auto_deliver = true;
    ec.partial_max_age = s.partial_max_age();
    ec.receive_executable = s.receive_executable == Some(true);
    let (engine, mut events) = Engine::start(ec).await.map_err(|e| e.to_string())?;
    let f = forward.clone();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if f.send(Inbound::Event(e)).await.is_err() {
                break;
            }
        }
    });
    let downloads = s.downloads(&cfg.dirs);
    let hub = Arc::new(p2pcall_daemon::Hub::default());
    let served = p2pcall_daemon::Served {
        engine: engine.clone(),
        hub: hub.clone(),
        data_dir: cfg.dirs.data.clone(),
        downloads: downloads.clone(),
    };
    // Without it the app works on; only other programs cannot use this engine.
    let api = p2pcall_daemon::ApiServer::start(p2pcall_daemon::socket_path(&cfg.dirs.data), served)
        .inspect_err(|e| tracing::warn!("{e}"))
        .ok();
    Ok(Running {
        link: Link::Own(engine),
        downloads,
        settings: s.clone(),
        ringer: Mutex::new(None),
        relay,
        api,
        hub,
        _lock: Some(lock),
        pumps: Vec::new(),
    })
}

/// Starts the relay the settings ask this machine to host.
async fn host_relay(s: &Settings, data: &std::path::Path) -> Result<p2pcall_relay::Relay, String> {
    let listen = s.relay_listen.as_deref().unwrap_or("0.0.0.0:7700");
    let listen: SocketAddr = listen
        .parse()
        .map_err(|e| format!("relay address {listen:?}: {e} (use IP:PORT)"))?;
    // Its key stays across restarts: the clients that pinned it keep trusting it.
    let (key, _) =
        identity::load_or_create(&data.join("hosted-relay")).map_err(|e| e.to_string())?;
    p2pcall_relay::Relay::start(&key, p2pcall_relay::RelayConfig::new(listen))
        .await
        .map_err(|e| {
            format!("cannot host a relay on {listen}: {e} (is another relay running there?)")
        })
}

/// Runs `f` on the store on a blocking thread (SQLite may be syncing a write; the runtime's
/// workers never wait for it); `f` reports through `out`.
fn with_store(link: &Link, out: &Out, f: impl FnOnce(&Store, &Out) + Send + 'static) {
    let (store, out) = (link.store(), out.clone());
    tokio::task::spawn_blocking(move || f(&store, &out));
}

fn contacts(link: &Link, out: &Out) {
    with_store(link, out, emit_contacts);
}

fn emit_contacts(store: &Store, out: &Out) {
    let all = store.contacts().unwrap_or_default();
    let chosen = (all.iter())
        .filter(|c| c.chosen_ms.is_some())
        .map(|c| c.peer)
        .collect();
    let known = (all.into_iter())
        // The user's name for a contact; the announced one for anyone else.
        .map(|c| (c.peer, c.shown_name().to_string(), c.verified_ms.is_some()))
        .collect();
    let unread = store.unread_counts().unwrap_or_default();
    out.emit(AppEvent::Contacts {
        known,
        chosen,
        unread,
    });
    let requests = store.message_requests().unwrap_or_default();
    out.emit(AppEvent::Requests(
        requests.iter().map(|r| (r.peer, r.messages)).collect(),
    ));
}

fn history(link: &Link, peer: PeerId, before: Option<i64>, out: &Out) {
    with_store(link, out, move |store, out| {
        match store.history(&peer, before, PAGE + 1) {
            Ok(mut m) => {
                let more = m.len() > PAGE;
                if more {
                    m.remove(0);
                }
                out.emit(AppEvent::History {
                    peer,
                    messages: m,
                    older: before.is_some(),
                    more,
                });
            }
            Err(e) => out.emit(AppEvent::Error(format!("cannot read the history: {e}"))),
        }
    });
}

fn command(r: &Running, c: UiCmd, out: &Out) {
    let link = r.link.clone();
    match c {
        UiCmd::Setup { .. }
        | UiCmd::SaveSettings(_)
        | UiCmd::Notify { .. }
        | UiCmd::RestartDaemon => {}
        UiCmd::Open(peer) => {
            history(&link, peer, None, out);
            mark_read(link, peer, out.clone());
        }
        UiCmd::Older { peer, before } => history(&link, peer, Some(before), out),
        UiCmd::MarkRead(peer) => mark_read(link, peer, out.clone()),
        UiCmd::Send { peer, text } => {
            let out = out.clone();
            tokio::spawn(async move {
                match link.send_message(peer, &text).await {
                    Ok(m) => out.emit(AppEvent::Message(m)),
                    Err(e) => out.emit(AppEvent::Error(e)),
                }
            });
        }
        UiCmd::SendFiles { peer, paths } => {
            // Progress, completion and failure arrive as transfer events; a failure before
            // the transfer starts (unreadable path, declined) only here.
            spawn_reporting(
                out,
                async move { link.send_files(peer, &paths).await },
                |e| AppEvent::Error(format!("sending files: {e}")),
            );
        }
        UiCmd::PickFiles { peer, folders } => {
            tokio::spawn(pick_and_send(link, peer, folders, out.clone()));
        }
        UiCmd::Accept { peer, id } => {
            let dir = r.downloads.clone();
            spawn_result(out, async move { link.accept_offer(peer, id, dir).await });
        }
        UiCmd::Reject { peer, id } => {
            spawn_result(out, async move { link.reject_offer(peer, id).await });
        }
        UiCmd::Cancel { peer, id } => {
            spawn_result(out, async move { link.cancel_transfer(peer, id).await });
        }
        UiCmd::Call(peer) => match call_options(&r.settings, out) {
            Ok(opts) => spawn_reporting(out, async move { link.call(peer, opts).await }, |e| {
                AppEvent::CallFailed(format!("the call failed: {e}"))
            }),
            Err(e) => out.emit(AppEvent::CallFailed(format!("cannot call: {e}"))),
        },
        UiCmd::Answer(call) => {
            set_ringer(r, None);
            match call_options(&r.settings, out) {
                Ok(opts) => {
                    spawn_reporting(out, async move { link.answer(call, opts).await }, |e| {
                        AppEvent::CallFailed(format!("cannot answer: {e}"))
                    })
                }
                Err(e) => out.emit(AppEvent::CallFailed(format!("cannot answer: {e}"))),
            }
        }
        UiCmd::Decline(call) => {
            set_ringer(r, None);
            spawn_result(out, async move { link.reject_call(call).await });
        }
        UiCmd::Hangup => spawn_result(out, async move { link.hangup().await }),
        UiCmd::Mute(muted) => change_call(out, link, CallChange::Mute { muted }),
        UiCmd::Camera(on) => change_call(out, link, CallChange::Camera { on }),
        UiCmd::AddToCall(peer) => change_call(
            out,
            link,
            CallChange::Add {
                peer: peer.to_hex(),
            },
        ),
        UiCmd::Share(src) => {
            let spec = src.unwrap_or_else(|| video_spec(&r.settings));
            match spec.parse::<VideoSource>() {
                Ok(v) => {
                    let source = match v {
                        VideoSource::File(p) => {
                            std::path::absolute(&p).unwrap_or(p).display().to_string()
                        }
                        v => v.to_string(),
                    };
                    change_call(out, link, CallChange::Source { source });
                }
                Err(e) => out.emit(AppEvent::Error(e)),
            }
        }
        UiCmd::Invite
        | UiCmd::AddTicket { .. }
        | UiCmd::AcceptRequest(_)
        | UiCmd::DeleteRequest(_) => people(r, c, out),
        UiCmd::Verify {
            peer,
            name,
            verified,
        } => {
            with_store(&link, out, move |store, out| {
                let now = p2pcall_store::now_ms();
                match store.set_verified(&peer, &name, verified, now) {
                    Ok(()) => emit_contacts(store, out),
                    Err(e) => out.emit(AppEvent::Error(format!(
                        "cannot save the verification: {e}"
                    ))),
                }
            });
        }
        UiCmd::ListScreens => {
            let out = out.clone();
            tokio::task::spawn_blocking(move || list_devices(&out));
        }
    }
}

/// Invitations and message requests.
fn people(r: &Running, c: UiCmd, out: &Out) {
    let link = r.link.clone();
    match c {
        UiCmd::Invite => out.emit(AppEvent::Ticket(invite(r).map(|t| t.encode()))),
        UiCmd::AcceptRequest(peer) | UiCmd::DeleteRequest(peer) => {
            let accept = matches!(c, UiCmd::AcceptRequest(_));
            let out2 = out.clone();
            spawn_result(out, async move {
                link.answer_request(peer, accept).await?;
                contacts(&link, &out2);
                history(&link, peer, None, &out2);
                Ok(())
            });
        }
        UiCmd::AddTicket { ticket, name } => {
            let out = out.clone();
            tokio::spawn(async move {
                match link.add_ticket(&ticket, name).await {
                    Ok((peer, pin)) => with_store(&link, &out, move |store, out| {
                        emit_contacts(store, out);
                        let name = (store.contacts().unwrap_or_default().into_iter())
                            .find(|c| c.peer == peer)
                            .map_or_else(
                                || peer.fingerprint().to_string(),
                                |c| c.shown_name().to_string(),
                            );
                        out.emit(AppEvent::Invited {
                            name,
                            warning: pin.and_then(|p| relay_warning(&p)),
                        });
                    }),
                    Err(e) => out.emit(AppEvent::Error(e)),
                }
            });
        }
        _ => {}
    }
}

/// Our invitation ticket: our key and name, and the relay others reach us through with its
/// key (the relay we host, else the one pinned or given in the settings).
fn invite(r: &Running) -> Result<p2pcall_core::invite::Ticket, String> {
    use p2pcall_core::invite::{Ticket, TicketRelay};
    let s = &r.settings;
    let relay = if s.lan().is_some() {
        None
    } else if let Some(hosted) = &r.relay {
        if hosted.udp_addr.ip().is_unspecified() {
            return Err(format!(
                "your relay listens on every address of this machine: a ticket needs the one \
                 others reach. Set \"Listen on\" in the settings to it (such as \
                 192.168.1.10:{})",
                hosted.udp_addr.port()
            ));
        }
        Some(TicketRelay {
            addr: hosted.udp_addr.to_string(),
            key: hosted.id,
        })
    } else {
        let spec = s.relay.as_deref().unwrap_or_default();
        let name = p2pcall_core::settings::relay_name(spec);
        let key = match s.relay_key().map_err(|e| e.to_string())? {
            Some(k) => k,
            None => (r.link.store().relay_key(&name))
                .map_err(|e| e.to_string())?
                .ok_or("the relay has not been reached yet: invite once the window says online")?,
        };
        Some(TicketRelay { addr: name, key })
    };
    Ok(Ticket {
        peer: r.link.id(),
        name: s.name.clone().unwrap_or_else(|| "anonymous".into()),
        relay,
    })
}

/// What to tell the user when a ticket names another key for a pinned relay.
fn relay_warning(p: &p2pcall_api::RelayPin) -> Option<String> {
    p.conflict.as_ref().map(|pinned| {
        format!(
            "The ticket says the relay {} has the key {}, but {pinned} is pinned for it and \
             stays pinned. The ticket may have been changed on its way to you.",
            p.relay, p.key
        )
    })
}

fn change_call(out: &Out, link: Link, c: CallChange) {
    spawn_result(out, async move { link.change_call(c).await });
}

/// Asks the desktop's file chooser for files or folders and sends them to `peer`.
async fn pick_and_send(link: Link, peer: PeerId, folders: bool, out: Out) {
    let d = rfd::AsyncFileDialog::new().set_title(if folders {
        "Folders to send"
    } else {
        "Files to send"
    });
    let picked = if folders {
        d.pick_folders().await
    } else {
        d.pick_files().await
    };
    let paths: Vec<PathBuf> = picked
        .unwrap_or_default()
        .iter()
        .map(|f| f.path().to_path_buf())
        .collect();
    if paths.is_empty() {
        out.emit(AppEvent::Error(
            "nothing chosen (if no dialog appeared, this desktop has no file \
             chooser portal: drop files on the window or type their paths)"
                .into(),
        ));
        return;
    }
    if let Err(e) = link.send_files(peer, &paths).await {
        out.emit(AppEvent::Error(format!("sending files: {e}")));
    }
}

/// Reports the screens, cameras, microphones and speakers (or why there are none). Blocks:
/// listing devices opens them.
fn list_devices(out: &Out) {
    let d = p2pcall_core::devices::list_devices();
    let list = |l: &p2pcall_core::devices::DeviceList, none: &str, strip: &str| {
        if l.devices.is_empty() {
            Err(l.why_none.clone().unwrap_or_else(|| none.into()))
        } else {
            Ok(l.devices
                .iter()
                .map(|x| {
                    let id = x.id.strip_prefix(strip).unwrap_or(&x.id).to_string();
                    (id, x.name.clone())
                })
                .collect())
        }
    };
    out.emit(AppEvent::Screens(list(
        &d.screens,
        "no screen to share",
        "",
    )));
    out.emit(AppEvent::Devices {
        cameras: list(&d.cameras, "no camera", ""),
        microphones: list(&d.microphones, "no microphone", ""),
        speakers: list(&d.speakers, "no speaker", "speaker:"),
    });
}

fn set_ringer(r: &Running, ringer: Option<p2pcall_core::call::ring::Ringer>) {
    {
        let mut g = r.ringer.lock();
        *g = ringer;
    }
}

/// A desktop notification (D-Bus), off the runtime's threads; when there is no
/// notification service the first failure says so once.
fn notify(out: &Out, title: String, body: String, failed: &Arc<std::sync::atomic::AtomicBool>) {
    let (out, failed) = (out.clone(), failed.clone());
    tokio::task::spawn_blocking(move || {
        let r = notify_rust::Notification::new()
            .appname("p2pcall")
            .summary(&title)
            .body(&body)
            .show();
        if let Err(e) = r
            && !failed.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            out.emit(AppEvent::Error(format!(
                "desktop notifications are not available ({e}); you will see them in the window"
            )));
        }
    });
}

/// Runs an engine command; a failure becomes an error toast.
fn spawn_result(
    out: &Out,
    f: impl std::future::Future<Output = Result<(), String>> + Send + 'static,
) {
    spawn_reporting(out, f, AppEvent::Error);
}

/// Runs an engine command; a failure becomes the event `report` makes of it.
fn spawn_reporting(
    out: &Out,
    f: impl std::future::Future<Output = Result<(), String>> + Send + 'static,
    report: impl FnOnce(String) -> AppEvent + Send + 'static,
) {
    let out = out.clone();
    tokio::spawn(async move {
        if let Err(e) = f.await {
            out.emit(report(e));
        }
    });
}

/// `WIDTHxHEIGHT`, even numbers from 64x64 to 3840x2160.
pub fn parse_size(s: &str) -> Option<(usize, usize)> {
    let (w, h) = s.trim().split_once(['x', 'X'])?;
    let (w, h) = (
        w.trim().parse::<usize>().ok()?,
        h.trim().parse::<usize>().ok()?,
    );
    ((64..=3840).contains(&w) && (64..=2160).contains(&h)).then_some((w & !1, h & !1))
}

/// The settings' speaker (the default one when none is set).
fn speaker_choice(s: &Settings) -> Result<SpeakerChoice, String> {
    s.speaker
        .as_deref()
        .map_or(Ok(SpeakerChoice::Auto), str::parse)
}

fn video_spec(s: &Settings) -> String {
    s.video.clone().unwrap_or_else(|| "camera".into())
}

/// The call's sources and sinks from the settings, checked: the default camera or
/// microphone this machine lacks is left out (the call says so when it starts: camera off,
/// or muted); a device, file or speaker the settings name that cannot be used is an error.
fn call_options(s: &Settings, out: &Out) -> Result<CallOptions, String> {
    let mut o = CallOptions {
        sinks: p2pcall_core::call::Sinks {
            tap: Some(out.tap()),
            speaker: SpeakerChoice::Auto,
            ..Default::default()
        },
        ..CallOptions::default()
    };
    match video_spec(s).parse::<VideoSource>() {
        Ok(v) => o.video = v,
        Err(e) => out.emit(AppEvent::Error(e)),
    }
    match s.audio.as_deref().unwrap_or("mic").parse::<AudioSource>() {
        Ok(a) => o.audio = a,
        Err(e) => out.emit(AppEvent::Error(e)),
    }
    match speaker_choice(s) {
        Ok(c) => o.sinks.speaker = c,
        Err(e) => out.emit(AppEvent::Error(e)),
    }
    if let Some((w, h)) = s.video_size.as_deref().and_then(parse_size) {
        (o.width, o.height) = (w, h);
    }
    if let Some(f) = s.video_fps {
        o.fps = f.clamp(1, 60);
    }
    if let Some(k) = s.video_kbps {
        o.video_kbps = k.clamp(100, 20_000);
    }
    if o.video.is_screen() {
        o.width = p2pcall_core::call::SCREEN_MAX_SIZE.0;
        o.height = p2pcall_core::call::SCREEN_MAX_SIZE.1;
    }
    o.check().map_err(|e| e.to_string())?;
    Ok(o)
}

fn mark_read(link: Link, peer: PeerId, out: Out) {
    tokio::spawn(async move {
        if link.mark_read(peer).await.is_ok() {
            contacts(&link, &out);
        }
    });
}

fn event(r: &Running, e: EngineEvent, out: &Out) {
    r.hub.publish(&e);
    match e {
        EngineEvent::Net(Event::RelayConnected { transport, .. }) => {
            out.emit(AppEvent::Status(Status::Online(transport)));
        }
        EngineEvent::Net(Event::RelayDisconnected { reason, retry_in }) => {
            out.emit(AppEvent::Status(Status::Connecting(format!(
                "{reason}; retrying in {:.0} s",
                retry_in.max(Duration::from_millis(500)).as_secs_f64()
            ))))
        }
        EngineEvent::Net(Event::RelayRefused { reason, detail }) => out.emit(AppEvent::Status(
            Status::Failed(format!("the relay refused us: {reason} ({detail})")),
        )),
        EngineEvent::Net(Event::Presence(_)) => {
            out.emit(AppEvent::Online(r.link.online_peers()));
            contacts(&r.link, out);
        }
        EngineEvent::Chat(ChatEvent::Received(m)) => {
            out.emit(AppEvent::Message(m));
            contacts(&r.link, out);
        }
        // Also what another program of this identity (the CLI) sent through this engine.
        EngineEvent::Chat(ChatEvent::Queued(m)) => out.emit(AppEvent::Message(m)),
        EngineEvent::Chat(ChatEvent::State { peer, id, state }) => {
            out.emit(AppEvent::MessageState { peer, id, state });
        }
        EngineEvent::Transfer(t) => match t {
            TransferEvent::Offered(o) if r.settings.auto_accept_verified == Some(true) => {
                let (link, downloads, out) = (r.link.clone(), r.downloads.clone(), out.clone());
                tokio::spawn(async move {
                    let store = link.store();
                    let peer = o.peer;
                    let verified = tokio::task::spawn_blocking(move || {
                        store.contacts().is_ok_and(|c| {
                            c.iter().any(|c| c.peer == peer && c.verified_ms.is_some())
                        })
                    })
                    .await
                    .unwrap_or(false);
                    // Accepted: progress events follow. Otherwise the user decides.
                    if !verified || link.accept_offer(o.peer, o.id, downloads).await.is_err() {
                        out.emit(AppEvent::Offer(o));
                    }
                });
            }
            TransferEvent::Offered(o) => out.emit(AppEvent::Offer(o)),
            TransferEvent::Resumed(_) => {}
            TransferEvent::Progress(p) => out.emit(AppEvent::Progress(p)),
            TransferEvent::Finished(s) => out.emit(AppEvent::Finished(s)),
            TransferEvent::Failed {
                peer, id, reason, ..
            } => out.emit(AppEvent::TransferFailed { peer, id, reason }),
        },
        EngineEvent::Call(c) => {
            match &c {
                CallEvent::Incoming { .. } => {
                    // A speaker setting that does not parse is reported when the call opens.
                    let speaker = speaker_choice(&r.settings).unwrap_or(SpeakerChoice::Auto);
                    set_ringer(r, p2pcall_core::call::ring::Ringer::start(&speaker));
                }
                CallEvent::Started { .. } | CallEvent::Ended { .. } => set_ringer(r, None),
                _ => {}
            }
            match &c {
                CallEvent::Ended { .. } => *out.videos.lock() = Videos::default(),
                CallEvent::Left { peer, .. } => drop(out.videos.lock().remote.remove(peer)),
                _ => {}
            }
            out.emit(AppEvent::Call(c));
        }
        EngineEvent::Net(_) | EngineEvent::PeerConnected { .. } => {}
    }
}
