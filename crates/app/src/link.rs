//! The engine the app shows: one it runs itself, or the one a daemon (`p2pcall daemon`)
//! runs for this data dir, reached over the local API. The bridge asks both the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use p2pcall_api::{Answer, CallChange, Request};
use p2pcall_core::call::CallOptions;
use p2pcall_core::engine::EngineHandle;
use p2pcall_core::{Message, PeerId, PeerInfo, Store};
use p2pcall_daemon::Client;
use p2pcall_proto::call::CallId;
use p2pcall_proto::transfer::TransferId;
use parking_lot::Mutex;

/// How long the app waits for a daemon it started to serve its socket.
pub const DAEMON_START: Duration = Duration::from_secs(10);

/// An engine to ask.
#[derive(Clone)]
pub(crate) enum Link {
    /// Ours, in this process.
    Own(EngineHandle),
    /// A daemon's, over the local API.
    Daemon(Arc<Remote>),
}

/// A daemon's engine as the app knows it.
pub(crate) struct Remote {
    /// Its data dir (each request opens a connection to its socket).
    pub data_dir: PathBuf,
    /// The data dir's database, read here (history, contacts, unread counts).
    pub store: Arc<Store>,
    /// Its process.
    pub pid: u32,
    /// Its key.
    pub me: PeerId,
    /// Who is online, kept from its presence events.
    pub online: Mutex<Vec<PeerInfo>>,
}

impl Remote {
    /// Asks the daemon on a connection of its own (requests may take long: a transfer).
    pub(crate) async fn ask(&self, request: Request) -> Result<Answer, String> {
        let mut c = connect(&self.data_dir).await?;
        c.call(request).await.map_err(|e| e.to_string())
    }

    /// Keeps the online list current from a presence event.
    pub(crate) fn presence(&self, e: &p2pcall_net::PresenceEvent) {
        use p2pcall_net::PresenceEvent as P;
        let mut online = self.online.lock();
        match e {
            P::Joined(p) | P::Updated(p) => {
                online.retain(|x| x.id != p.id);
                online.push(p.clone());
            }
            P::Left(id) => online.retain(|x| x.id != *id),
            P::Snapshot(list) => online.clone_from(list),
        }
        online.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

/// A connection to the daemon of `data_dir`.
pub(crate) async fn connect(data_dir: &Path) -> Result<Client, String> {
    match Client::connect(data_dir, "app").await {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err("the p2pcall daemon stopped".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn unexpected(a: &Answer) -> String {
    format!("the p2pcall daemon answered {a:?}")
}

impl Link {
    /// The local database.
    pub(crate) fn store(&self) -> Arc<Store> {
        match self {
            Self::Own(e) => e.store().clone(),
            Self::Daemon(r) => r.store.clone(),
        }
    }

    /// Our key.
    pub(crate) fn id(&self) -> PeerId {
        match self {
            Self::Own(e) => e.id(),
            Self::Daemon(r) => r.me,
        }
    }

    /// Who is online.
    pub(crate) fn online_peers(&self) -> Vec<PeerInfo> {
        match self {
            Self::Own(e) => e.online_peers(),
            Self::Daemon(r) => r.online.lock().clone(),
        }
    }

    pub(crate) async fn send_message(&self, peer: PeerId, text: &str) -> Result<Message, String> {
        match self {
            Self::Own(e) => e.send_message(peer, text).await.map_err(|e| e.to_string()),
            Self::Daemon(r) => {
                let request = Request::SendMessage {
                    peer: peer.to_hex(),
                    text: text.into(),
                };
                match r.ask(request).await? {
                    Answer::Sent { message, .. } => p2pcall_daemon::message_from_api(&message)
                        .ok_or_else(|| "the p2pcall daemon sent an unreadable message".into()),
                    a => Err(unexpected(&a)),
                }
            }
        }
    }

    /// Adds the peer of a ticket as a contact: its key, and what became of its relay.
    pub(crate) async fn add_ticket(
        &self,
        ticket: &str,
        name: Option<String>,
    ) -> Result<(PeerId, Option<p2pcall_api::RelayPin>), String> {
        let t: p2pcall_core::invite::Ticket = ticket.parse().map_err(|e| format!("{e}"))?;
        match self {
            Self::Own(e) => {
                let invited = e.add_ticket(t, name).await.map_err(|e| e.to_string())?;
                Ok((invited.peer, p2pcall_daemon::relay_pin(&invited.relay)))
            }
            Self::Daemon(r) => {
                let request = Request::AddTicket {
                    ticket: t.encode(),
                    name,
                };
                match r.ask(request).await? {
                    Answer::Invited { relay, .. } => Ok((t.peer, relay)),
                    a => Err(unexpected(&a)),
                }
            }
        }
    }

    /// Accepts (the sender becomes a contact) or deletes a message request.
    pub(crate) async fn answer_request(&self, peer: PeerId, accept: bool) -> Result<(), String> {
        match self {
            Self::Own(e) if accept => e.accept_request(peer, None).await.map(drop),
            Self::Own(e) => e.delete_request(peer).await.map(drop),
            Self::Daemon(r) => {
                let peer = peer.to_hex();
                let request = if accept {
                    Request::AcceptRequest { peer, name: None }
                } else {
                    Request::DeleteRequest { peer }
                };
                return r.ask(request).await.map(drop);
            }
        }
        .map_err(|e| e.to_string())
    }

    pub(crate) async fn send_files(&self, peer: PeerId, paths: &[PathBuf]) -> Result<(), String> {
        match self {
            Self::Own(e) => e
                .send_files(peer, paths)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Self::Daemon(r) => {
                let paths = (paths.iter())
                    .map(|p| std::path::absolute(p).map(|p| p.display().to_string()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
                let request = Request::SendFiles {
                    peer: peer.to_hex(),
                    paths,
                };
                r.ask(request).await.map(drop)
            }
        }
    }

    pub(crate) async fn accept_offer(
        &self,
        peer: PeerId,
        id: TransferId,
        dir: PathBuf,
    ) -> Result<(), String> {
        match self {
            Self::Own(e) => e.accept_offer(peer, id, dir).map_err(|e| e.to_string()),
            Self::Daemon(r) => {
                let request = Request::Accept {
                    id: id.to_string(),
                    dir: Some(dir.display().to_string()),
                };
                r.ask(request).await.map(drop)
            }
        }
    }

    pub(crate) async fn reject_offer(&self, peer: PeerId, id: TransferId) -> Result<(), String> {
        match self {
            Self::Own(e) => e
                .reject_offer(peer, id, "declined by the user")
                .map_err(|e| e.to_string()),
            Self::Daemon(r) => r
                .ask(Request::Reject { id: id.to_string() })
                .await
                .map(drop),
        }
    }

    pub(crate) async fn cancel_transfer(&self, peer: PeerId, id: TransferId) -> Result<(), String> {
        match self {
            Self::Own(e) => {
                e.cancel_transfer(peer, id);
                Ok(())
            }
            Self::Daemon(r) => {
                let request = Request::CancelTransfer {
                    peer: peer.to_hex(),
                    id: id.to_string(),
                };
                r.ask(request).await.map(drop)
            }
        }
    }

    pub(crate) async fn mark_read(&self, peer: PeerId) -> Result<(), String> {
        match self {
            Self::Own(e) => e.mark_read(peer).await.map(drop).map_err(|e| e.to_string()),
            Self::Daemon(r) => r
                .ask(Request::MarkRead {
                    peer: peer.to_hex(),
                })
                .await
                .map(drop),
        }
    }

    pub(crate) async fn set_name(&self, name: String) -> Result<(), String> {
        match self {
            Self::Own(e) => e.set_name(name).await.map_err(|e| e.to_string()),
            Self::Daemon(r) => r.ask(Request::SetName { name }).await.map(drop),
        }
    }

    /// Places a call (a daemon runs its media, and shows its pictures on the video feed).
    pub(crate) async fn call(&self, peer: PeerId, opts: CallOptions) -> Result<(), String> {
        match self {
            Self::Own(e) => e
                .call(peer, opts)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Self::Daemon(r) => {
                let request = Request::Call {
                    peer: peer.to_hex(),
                    media: p2pcall_daemon::media(&opts),
                    also: Vec::new(),
                };
                r.ask(request).await.map(drop)
            }
        }
    }

    pub(crate) async fn answer(&self, call: CallId, opts: CallOptions) -> Result<(), String> {
        match self {
            Self::Own(e) => e.answer(call, opts).await.map_err(|e| e.to_string()),
            Self::Daemon(r) => {
                let request = Request::AnswerCall {
                    id: Some(call.to_string()),
                    media: p2pcall_daemon::media(&opts),
                };
                r.ask(request).await.map(drop)
            }
        }
    }

    pub(crate) async fn reject_call(&self, call: CallId) -> Result<(), String> {
        match self {
            Self::Own(e) => e.reject_call(call).await.map_err(|e| e.to_string()),
            Self::Daemon(r) => r
                .ask(Request::DeclineCall {
                    id: Some(call.to_string()),
                })
                .await
                .map(drop),
        }
    }

    pub(crate) async fn hangup(&self) -> Result<(), String> {
        match self {
            Self::Own(e) => e.hangup().await.map_err(|e| e.to_string()),
            Self::Daemon(r) => r.ask(Request::Hangup).await.map(drop),
        }
    }

    /// Mutes, turns the camera on or off, or changes the video source.
    pub(crate) async fn change_call(&self, c: CallChange) -> Result<(), String> {
        match self {
            Self::Own(e) => p2pcall_daemon::tools::change_call(e, c)
                .await
                .map_err(|e| e.to_string()),
            Self::Daemon(r) => r.ask(Request::ChangeCall(c)).await.map(drop),
        }
    }

    /// Stops our own engine (a daemon's goes on).
    pub(crate) async fn shutdown(&self) {
        if let Self::Own(e) = self {
            e.shutdown().await;
        }
    }
}

/// Starts `p2pcall daemon` for `dirs` in the background (its own process group, so it
/// outlives the window and a Ctrl-C in the terminal that started the app; its output goes
/// to `daemon.log` in the data dir), and waits until it serves its socket.
pub async fn start_daemon(exe: &Path, dirs: &p2pcall_core::settings::Dirs) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let data_dir = dirs.data.as_path();
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let log_path = data_dir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(exe);
    // The platform's dirs are the program's default; a data dir given explicitly holds
    // its settings too.
    if dirs.settings == data_dir.join(p2pcall_core::settings::SETTINGS_FILE) {
        cmd.arg("--data-dir").arg(data_dir);
    }
    let mut child = cmd
        .arg("daemon")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {} daemon: {e}", exe.display()))?;
    let deadline = tokio::time::Instant::now() + DAEMON_START;
    loop {
        if let Ok(Some(_)) = Client::connect(data_dir, "app").await {
            // Reaped by whoever outlives it; nothing waits for it here.
            std::thread::spawn(move || child.wait());
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the p2pcall daemon exited ({status}) before it served its socket; see {}",
                log_path.display()
            ));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "the p2pcall daemon did not serve its socket within {} s; see {}",
                DAEMON_START.as_secs(),
                log_path.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
