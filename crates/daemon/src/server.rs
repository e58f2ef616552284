//! The engine's side of the socket: one task per client, one per request in flight.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use p2pcall_api::{Answer, ErrorKind, Frame, Lines, Media, Request, RpcError, VERSION};
use p2pcall_core::call::CallOptions;
use p2pcall_core::engine::EngineHandle;
use p2pcall_core::{EngineError, PeerId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::callconv::options;
use crate::convert::{engine_error, message, offer, peer, summary};
use crate::{DaemonError, Hub, tools};

/// Requests of one client answered at once; more are refused until one finishes.
const MAX_IN_FLIGHT: usize = 16;
/// Replies and events queued toward one client.
const OUT_QUEUE: usize = 256;
/// Video frames waiting for a feed's socket, at most.
const FEED_BACKLOG: usize = 2;
/// A reply that a client does not take within this is dropped (with the client).
const REPLY_WAIT: Duration = Duration::from_secs(10);
/// Longest wait a `peers` request may ask for.
const MAX_PRESENCE_WAIT: Duration = Duration::from_secs(60);
/// Most messages one history page holds.
const MAX_PAGE: u32 = 1000;

/// What the API serves.
#[derive(Debug)]
pub struct Served {
    /// The engine.
    pub engine: EngineHandle,
    /// Its events, for subscribers (fed by whoever reads the engine's events).
    pub hub: Arc<Hub>,
    /// The data dir it runs on.
    pub data_dir: PathBuf,
    /// Where accepted files go when the client names no folder.
    pub downloads: PathBuf,
}

/// The socket being served; dropping it stops serving and removes the socket.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    accept: JoinHandle<()>,
    /// Dropped with the server: every client's connection ends (as if the engine's process
    /// had exited).
    _stop: tokio::sync::watch::Sender<()>,
}

impl ApiServer {
    /// Serves `served` at `path` (a stale socket there is replaced: whoever calls this holds
    /// the data dir's engine lock).
    pub fn start(path: PathBuf, served: Served) -> Result<Self, DaemonError> {
        let bind = |source| DaemonError::Bind {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(bind)?;
            if dir.file_name().is_some_and(|n| n == "p2pcall") {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(bind)?;
            }
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(bind)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
        let owner = std::fs::metadata(&path).map_err(bind)?.uid();
        let (stop, stopped) = tokio::sync::watch::channel(());
        let accept = tokio::spawn(accept(listener, owner, Arc::new(served), stopped));
        Ok(Self {
            path,
            accept,
            _stop: stop,
        })
    }

    /// The socket.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept(
    listener: UnixListener,
    owner: u32,
    served: Arc<Served>,
    stopped: tokio::sync::watch::Receiver<()>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, for instance: try again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        match stream.peer_cred() {
            Ok(c) if c.uid() == owner => {
                tokio::spawn(serve(served.clone(), stream, stopped.clone()));
            }
            Ok(c) => tracing::warn!(uid = c.uid(), "refused a local API client of another user"),
            Err(e) => tracing::warn!("refused a local API client: {e}"),
        }
    }
}

/// Serves one client until it goes away or sends something that is not a line of ours.
async fn serve(
    served: Arc<Served>,
    stream: UnixStream,
    mut stopped: tokio::sync::watch::Receiver<()>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(b) = out_rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let mut conn = Conn {
        served,
        out,
        greeted: false,
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        events: None,
        policy: None,
        feeding: false,
    };
    let mut lines = Lines::default();
    let mut buf = vec![0u8; 64 << 10];
    'read: loop {
        let n = tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            // The server is gone: so is this client's connection, at once.
            _ = stopped.changed() => {
                writer.abort();
                break;
            }
        };
        lines.push(&buf[..n]);
        loop {
            match lines.next_line() {
                Ok(Some(line)) => {
                    if conn.line(&line).await.is_err() {
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = conn
                        .reply(0, Err(RpcError::new(ErrorKind::BadRequest, e.to_string())))
                        .await;
                    break 'read;
                }
            }
        }
    }
    for t in [conn.events.take(), conn.policy.take()]
        .into_iter()
        .flatten()
    {
        t.abort();
    }
    drop(conn);
    let _ = tokio::time::timeout(REPLY_WAIT, writer).await;
}

/// One client's state.
struct Conn {
    served: Arc<Served>,
    out: mpsc::Sender<Vec<u8>>,
    greeted: bool,
    in_flight: Arc<Semaphore>,
    /// Forwards the client's events once it subscribed.
    events: Option<JoinHandle<()>>,
    /// Answers offers and calls as the client's policy says, while it is connected.
    policy: Option<JoinHandle<()>>,
    /// The connection carries video frames (and nothing else) from now on.
    feeding: bool,
}

/// The client is to be dropped.
struct Disconnect;

impl Conn {
    async fn reply(&self, id: u64, result: Result<Answer, RpcError>) -> Result<(), Disconnect> {
        let b = Frame::Reply { id, result }.encode();
        match tokio::time::timeout(REPLY_WAIT, self.out.send(b)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Disconnect),
        }
    }

    async fn line(&mut self, line: &[u8]) -> Result<(), Disconnect> {
        // Only video goes out on a feed: any answer would end up amid it.
        if self.feeding {
            return Err(Disconnect);
        }
        let (id, request) = match Frame::decode(line) {
            Ok(Frame::Request { id, request }) => (id, request),
            Ok(_) => {
                let e = RpcError::new(
                    ErrorKind::BadRequest,
                    "only requests are sent to the engine",
                );
                return self.reply(0, Err(e)).await;
            }
            Err(e) => {
                return self
                    .reply(0, Err(RpcError::new(ErrorKind::BadRequest, e.to_string())))
                    .await;
            }
        };
        match request {
            Request::Hello { version, client } => {
                if self.greeted {
                    let e = RpcError::new(ErrorKind::BadRequest, "hello was said already");
                    return self.reply(id, Err(e)).await;
                }
                if version != VERSION {
                    let e = RpcError::new(
                        ErrorKind::Version,
                        format!("this engine speaks API version {VERSION}, the client {version}"),
                    );
                    let _ = self.reply(id, Err(e)).await;
                    return Err(Disconnect);
                }
                tracing::debug!(%client, "local API client");
                self.greeted = true;
                let pid = std::process::id();
                self.reply(id, Ok(Answer::Hello { version, pid })).await
            }
            _ if !self.greeted => {
                let e = RpcError::new(ErrorKind::BadRequest, "say hello first");
                self.reply(id, Err(e)).await
            }
            Request::VideoFeed
                if self.events.is_some() || self.in_flight.available_permits() != MAX_IN_FLIGHT =>
            {
                let e = RpcError::new(
                    ErrorKind::BadRequest,
                    "video goes on a connection of its own: ask for it right after hello",
                );
                self.reply(id, Err(e)).await
            }
            Request::Subscribe => {
                if self.events.is_none() {
                    let mut rx = self.served.hub.subscribe();
                    let out = self.out.clone();
                    self.events = Some(tokio::spawn(async move {
                        while let Some(ev) = rx.recv().await {
                            if out.send(Frame::Event(ev).encode()).await.is_err() {
                                break;
                            }
                        }
                    }));
                }
                self.reply(id, Ok(Answer::Subscribed)).await
            }
            Request::VideoFeed => {
                self.reply(id, Ok(Answer::Done)).await?;
                let (mut rx, out) = (self.served.hub.video_feed(), self.out.clone());
                self.feeding = true;
                self.events = Some(tokio::spawn(async move {
                    while let Some(f) = rx.recv().await {
                        // A picture is up to 3 MB: past two waiting for the socket, newer
                        // ones are dropped (the client shows the newest it gets).
                        if out.max_capacity() - out.capacity() >= FEED_BACKLOG {
                            continue;
                        }
                        if out.send(f.to_vec()).await.is_err() {
                            break;
                        }
                    }
                }));
                Ok(())
            }
            Request::Policy {
                accept_files,
                answer,
                from,
            } => {
                let result = match from.parse::<p2pcall_core::Trust>() {
                    Ok(from) => self.install_policy(accept_files, answer, from).await,
                    Err(e) => Err(RpcError::new(ErrorKind::BadRequest, e)),
                };
                self.reply(id, result.map(|()| Answer::Done)).await
            }
            request => {
                let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                    let e = RpcError::new(
                        ErrorKind::Failure,
                        format!("more than {MAX_IN_FLIGHT} requests at once: wait for answers"),
                    );
                    return self.reply(id, Err(e)).await;
                };
                let (served, out) = (self.served.clone(), self.out.clone());
                tokio::spawn(async move {
                    let result = answer(&served, request).await;
                    let b = Frame::Reply { id, result }.encode();
                    let _ = tokio::time::timeout(REPLY_WAIT, out.send(b)).await;
                    drop(permit);
                });
                Ok(())
            }
        }
    }
}

impl Conn {
    /// Replaces this client's policy (checking it first: a folder that cannot be created or
    /// media that cannot be opened are refused, and the old policy stays).
    async fn install_policy(
        &mut self,
        accept_files: Option<String>,
        answer: Option<Media>,
        from: p2pcall_core::Trust,
    ) -> Result<(), RpcError> {
        let dir = accept_files.map(PathBuf::from);
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).map_err(|e| {
                RpcError::new(
                    ErrorKind::BadRequest,
                    format!(
                        "cannot create the folder for received files {}: {e}",
                        d.display()
                    ),
                )
            })?;
        }
        let opts = match &answer {
            Some(m) => Some(checked_options(&self.served.hub, m).await?),
            None => None,
        };
        if let Some(old) = self.policy.take() {
            old.abort();
        }
        if dir.is_some() || opts.is_some() {
            let (served, rx) = (self.served.clone(), self.served.hub.subscribe());
            self.policy = Some(tokio::spawn(run_policy(served, rx, dir, opts, from)));
        }
        Ok(())
    }
}

/// Accepts offers into `dir` and answers calls with `opts`, as they come from peers the user
/// trusts at least as far as `from` (those of others wait for the user's answer).
async fn run_policy(
    served: Arc<Served>,
    mut events: mpsc::Receiver<p2pcall_api::Event>,
    dir: Option<PathBuf>,
    opts: Option<CallOptions>,
    from: p2pcall_core::Trust,
) {
    use p2pcall_api::{CallNote, Event};
    let engine = &served.engine;
    while let Some(ev) = events.recv().await {
        match ev {
            Event::OfferReceived(o) => {
                let Some(dir) = &dir else { continue };
                if !trusted(engine, &o.peer, from).await {
                    continue;
                }
                // Another client may have answered it already.
                let Ok(o) = served.hub.take_offer(&o.id) else {
                    continue;
                };
                if let Err(e) = engine.accept_offer(o.peer, o.id, dir.clone()) {
                    tracing::warn!(offer = %o.id, "accepting by policy: {e}");
                }
            }
            Event::Call(CallNote::Incoming { call, peer, .. }) => {
                let (Some(opts), Ok(call)) = (&opts, call.parse()) else {
                    continue;
                };
                if !trusted(engine, &peer, from).await {
                    continue;
                }
                if let Err(e) = engine.answer(call, opts.clone()).await {
                    tracing::warn!(%call, "answering by policy: {e}");
                }
            }
            _ => {}
        }
    }
}

/// Whether the peer (64 hex digits) is trusted at least as far as `from`.
async fn trusted(engine: &EngineHandle, peer: &str, from: p2pcall_core::Trust) -> bool {
    let Ok(peer) = peer.parse::<PeerId>() else {
        return false;
    };
    engine.trust(peer).await.is_ok_and(|t| t >= from)
}

/// Carries out one request on the engine.
async fn answer(s: &Served, request: Request) -> Result<Answer, RpcError> {
    let engine = &s.engine;
    match request {
        Request::Hello { .. } | Request::Subscribe => Err(RpcError::new(
            ErrorKind::BadRequest,
            "hello and subscribe are answered by the connection",
        )),
        Request::Status => Ok(Answer::Status(p2pcall_api::Status {
            id: engine.id().to_hex(),
            name: engine.name(),
            relay: tools::relay_transport(engine).await,
            lan: engine.endpoint().is_lan(),
            data_dir: s.data_dir.display().to_string(),
            pid: std::process::id(),
        })),
        Request::Peers { wait_ms } => {
            let wait = Duration::from_millis(wait_ms).min(MAX_PRESENCE_WAIT);
            let list = if engine.endpoint().is_lan() {
                engine.online_peers()
            } else {
                engine
                    .wait_presence(wait)
                    .await
                    .map_err(|e| engine_error(&e))?
            };
            Ok(Answer::Peers {
                peers: list.iter().map(peer).collect(),
            })
        }
        Request::SendMessage { peer: who, text } => {
            let p = resolve(engine, &who)?;
            let m = engine
                .send_message(p, &text)
                .await
                .map_err(|e| engine_error(&e))?;
            Ok(Answer::Sent {
                message: message(&m),
                name: engine.peer_name(&p),
                offline: engine.peer_offline(&p),
            })
        }
        Request::History {
            peer: who,
            before,
            limit,
        } => {
            let p = resolve(engine, &who)?;
            let store = engine.store().clone();
            let limit = limit.min(MAX_PAGE) as usize;
            let page = tokio::task::spawn_blocking(move || store.history(&p, before, limit))
                .await
                .map_err(|e| RpcError::new(ErrorKind::Failure, e.to_string()))?
                .map_err(|e| engine_error(&e.into()))?;
            Ok(Answer::History {
                messages: page.iter().map(message).collect(),
            })
        }
        Request::Resolve { .. }
        | Request::AddContact { .. }
        | Request::AddTicket { .. }
        | Request::MessageRequests
        | Request::AcceptRequest { .. }
        | Request::DeleteRequest { .. }
        | Request::Contacts => people(engine, request).await,
        Request::Offers
        | Request::CancelTransfer { .. }
        | Request::Accept { .. }
        | Request::Reject { .. }
        | Request::SendFiles { .. }
        | Request::InterruptTransfer { .. } => transfers(s, request).await,
        Request::MarkRead { peer: who } => {
            let p = resolve(engine, &who)?;
            let n = engine.mark_read(p).await.map_err(|e| engine_error(&e))?;
            Ok(Answer::Count { n: n as u64 })
        }
        Request::Call { .. }
        | Request::Ringing
        | Request::AnswerCall { .. }
        | Request::DeclineCall { .. }
        | Request::Hangup
        | Request::ChangeCall(_) => calls(s, request).await,
        Request::Policy { .. } | Request::VideoFeed => Err(RpcError::new(
            ErrorKind::BadRequest,
            "policies and video feeds are set up by the connection",
        )),
        Request::SetName { name } => {
            let name = name.trim().to_string();
            if name.is_empty() || name.len() > 64 {
                return Err(RpcError::new(
                    ErrorKind::BadRequest,
                    "a display name has 1 to 64 bytes",
                ));
            }
            engine.set_name(name).await.map_err(|e| engine_error(&e))?;
            Ok(Answer::Done)
        }
        Request::Connect { .. }
        | Request::Ping { .. }
        | Request::Speedtest { .. }
        | Request::Netcheck => peer_tools(s, request).await,
    }
}

/// Who a name means, and the user's contacts.
async fn people(engine: &EngineHandle, request: Request) -> Result<Answer, RpcError> {
    let failed = |e: EngineError| engine_error(&e);
    match request {
        Request::Resolve { peer: who } => {
            let r = engine.resolve(&who).map_err(|e| engine_error(&e))?;
            Ok(Answer::Resolved {
                peer: p2pcall_api::Peer {
                    id: r.peer.to_hex(),
                    name: engine.peer_name(&r.peer),
                    online_since_ms: 0,
                },
                contact: r.contact,
            })
        }
        Request::AddContact { peer: who, name } => {
            let p = resolve(engine, &who)?;
            engine
                .add_contact(p, petname(name)?)
                .await
                .map_err(|e| engine_error(&e))?;
            contacts(engine, Some(p)).await
        }
        Request::AddTicket { ticket, name } => {
            let ticket = ticket
                .parse()
                .map_err(|e: p2pcall_core::invite::TicketError| {
                    RpcError::new(ErrorKind::BadRequest, e.to_string())
                })?;
            let invited = engine
                .add_ticket(ticket, petname(name)?)
                .await
                .map_err(|e| engine_error(&e))?;
            let contact = (chosen(engine, Some(invited.peer)).await?)
                .into_iter()
                .next()
                .ok_or_else(|| RpcError::new(ErrorKind::Failure, "the contact was not stored"))?;
            Ok(Answer::Invited {
                contact,
                relay: crate::convert::relay_pin(&invited.relay),
            })
        }
        Request::Contacts => contacts(engine, None).await,
        Request::MessageRequests => {
            let list = engine.message_requests().await.map_err(failed)?;
            Ok(Answer::MessageRequests {
                requests: list.iter().map(crate::convert::message_request).collect(),
            })
        }
        Request::AcceptRequest { peer: who, name } => {
            let p = engine.find_request(&who).await.map_err(failed)?;
            engine
                .accept_request(p, petname(name)?)
                .await
                .map_err(failed)?;
            contacts(engine, Some(p)).await
        }
        Request::DeleteRequest { peer: who } => {
            let p = engine.find_request(&who).await.map_err(failed)?;
            let n = engine.delete_request(p).await.map_err(failed)?;
            Ok(Answer::Count { n: n as u64 })
        }
        _ => Err(RpcError::new(
            ErrorKind::BadRequest,
            "not a request about contacts",
        )),
    }
}

/// The requests about calls: placing, answering, declining, changing, hanging up.
async fn calls(s: &Served, request: Request) -> Result<Answer, RpcError> {
    let engine = &s.engine;
    let failed = |e: EngineError| engine_error(&e);
    match request {
        Request::Call {
            peer: who,
            media,
            also,
        } => {
            let opts = checked_options(&s.hub, &media).await?;
            let p = resolve(engine, &who)?;
            let call = if also.is_empty() {
                engine.call(p, opts).await
            } else {
                let mut peers = vec![p];
                for who in &also {
                    peers.push(resolve(engine, who)?);
                }
                engine.call_group(peers, opts).await
            };
            let call = call.map_err(failed)?;
            Ok(Answer::Calling {
                call: call.to_string(),
                peer: p.to_hex(),
            })
        }
        Request::Ringing => Ok(Answer::Ringing {
            call: s.hub.ringing().map(|r| p2pcall_api::Ringing {
                call: r.call.to_string(),
                name: r.name.clone().unwrap_or_else(|| engine.peer_name(&r.peer)),
                peer: r.peer.to_hex(),
                audio: r.audio,
                video: r.video,
            }),
        }),
        Request::AnswerCall { id, media } => {
            let r = s.hub.ringing_call(id.as_deref())?;
            let opts = checked_options(&s.hub, &media).await?;
            engine.answer(r.call, opts).await.map_err(failed)?;
            Ok(Answer::Done)
        }
        Request::DeclineCall { id } => {
            let r = s.hub.ringing_call(id.as_deref())?;
            engine.reject_call(r.call).await.map_err(failed)?;
            Ok(Answer::Done)
        }
        Request::Hangup => engine.hangup().await.map(|()| Answer::Done).map_err(failed),
        Request::ChangeCall(change) => tools::change_call(engine, change)
            .await
            .map(|()| Answer::Done)
            .map_err(failed),
        _ => Err(RpcError::new(
            ErrorKind::BadRequest,
            "not a request about calls",
        )),
    }
}

/// Media options from a request, with every source and sink opened once (off the async
/// workers: opening a camera takes a while).
async fn checked_options(hub: &Hub, media: &Media) -> Result<CallOptions, RpcError> {
    let mut opts = options(media)?;
    opts = tokio::task::spawn_blocking(move || opts.check().map(|()| opts))
        .await
        .map_err(|e| RpcError::new(ErrorKind::Failure, e.to_string()))?
        .map_err(|e| engine_error(&e.into()))?;
    // Clients showing video (the app) get the call's pictures.
    opts.sinks.tap = Some(hub.video_tap());
    Ok(opts)
}

/// Connecting to a peer and measuring the path and the NAT.
async fn peer_tools(s: &Served, request: Request) -> Result<Answer, RpcError> {
    let engine = &s.engine;
    let failed = |e: EngineError| engine_error(&e);
    match request {
        Request::Connect { peer: who } => {
            let p = resolve(engine, &who)?;
            Ok(Answer::Connected(
                tools::connect(engine, p).await.map_err(failed)?,
            ))
        }
        Request::Ping { peer: who, seq } => {
            let p = resolve(engine, &who)?;
            Ok(Answer::Pong(
                tools::ping(engine, p, seq).await.map_err(failed)?,
            ))
        }
        Request::Speedtest { peer: who, bytes } => {
            let p = resolve(engine, &who)?;
            Ok(Answer::Speed(
                tools::speedtest(engine, p, bytes).await.map_err(failed)?,
            ))
        }
        Request::Netcheck => {
            let Ok(t) = engine.wait_relay(Duration::ZERO).await else {
                return Err(RpcError::new(
                    ErrorKind::Failure,
                    "netcheck measures the NAT through a relay's reflection ports, and the engine has no relay session (LAN-only mode, or not connected): pass --relay HOST",
                ));
            };
            Ok(Answer::Netcheck(
                tools::netcheck(engine, t).await.map_err(failed)?,
            ))
        }
        _ => Err(RpcError::new(ErrorKind::BadRequest, "not a peer tool")),
    }
}

/// The requests about file transfers: offers and their answers, sending, interrupting.
async fn transfers(s: &Served, request: Request) -> Result<Answer, RpcError> {
    let engine = &s.engine;
    match request {
        Request::Offers => Ok(Answer::Offers {
            offers: (s.hub.offers().iter())
                .map(|o| offer(o, Some(engine.peer_name(&o.peer))))
                .collect(),
        }),
        Request::Accept { id, dir } => {
            let o = s.hub.take_offer(&id)?;
            let dir = dir.map_or_else(|| s.downloads.clone(), PathBuf::from);
            engine
                .accept_offer(o.peer, o.id, dir.clone())
                .map_err(|e| engine_error(&e))?;
            Ok(Answer::Accepted {
                id: o.id.to_string(),
                dir: dir.display().to_string(),
            })
        }
        Request::Reject { id } => {
            let o = s.hub.take_offer(&id)?;
            engine
                .reject_offer(o.peer, o.id, "declined by the user")
                .map_err(|e| engine_error(&e))?;
            Ok(Answer::Rejected {
                id: o.id.to_string(),
            })
        }
        Request::SendFiles { peer: who, paths } => {
            let p = resolve(engine, &who)?;
            let paths: Vec<PathBuf> = paths.into_iter().map(PathBuf::from).collect();
            let s = engine
                .send_files(p, &paths)
                .await
                .map_err(|e| engine_error(&e))?;
            Ok(Answer::Transferred(summary(&s)))
        }
        Request::InterruptTransfer { peer: who, id } => {
            let p = resolve(engine, &who)?;
            let id = id.parse().map_err(|e: p2pcall_proto::id::ParseIdError| {
                RpcError::new(ErrorKind::BadRequest, e.to_string())
            })?;
            let n = u64::from(engine.interrupt_transfer(p, id));
            Ok(Answer::Count { n })
        }
        Request::CancelTransfer { peer: who, id } => {
            let p = resolve(engine, &who)?;
            let id = id.parse().map_err(|e: p2pcall_proto::id::ParseIdError| {
                RpcError::new(ErrorKind::BadRequest, e.to_string())
            })?;
            Ok(Answer::Count {
                n: u64::from(engine.cancel_transfer(p, id)),
            })
        }
        _ => Err(RpcError::new(
            ErrorKind::BadRequest,
            "not a request about transfers",
        )),
    }
}

/// The user's contacts (only `only`, if given).
async fn contacts(engine: &EngineHandle, only: Option<PeerId>) -> Result<Answer, RpcError> {
    Ok(Answer::Contacts {
        contacts: chosen(engine, only).await?,
    })
}

/// The user's contacts (or the one of them that is `only`).
async fn chosen(
    engine: &EngineHandle,
    only: Option<PeerId>,
) -> Result<Vec<p2pcall_api::Contact>, RpcError> {
    let store = engine.store().clone();
    let all = tokio::task::spawn_blocking(move || store.contacts())
        .await
        .map_err(|e| RpcError::new(ErrorKind::Failure, e.to_string()))?
        .map_err(|e| engine_error(&e.into()))?;
    Ok((all.iter())
        .filter(|c| c.chosen_ms.is_some() && only.is_none_or(|p| p == c.peer))
        .map(crate::convert::contact)
        .collect())
}

/// A name the user gives a contact: trimmed, 1 to 64 bytes, no control characters.
fn petname(name: Option<String>) -> Result<Option<String>, RpcError> {
    let name = name.map(|n| n.trim().to_string());
    if name.as_ref().is_some_and(|n| {
        n.is_empty() || n.len() > p2pcall_proto::relay::MAX_NAME || n.chars().any(char::is_control)
    }) {
        return Err(RpcError::new(
            ErrorKind::BadRequest,
            "a contact's name has 1 to 64 bytes and no control characters",
        ));
    }
    Ok(name)
}

fn resolve(engine: &EngineHandle, who: &str) -> Result<PeerId, RpcError> {
    engine.resolve_peer(who).map_err(|e| engine_error(&e))
}
