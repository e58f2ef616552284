//! A peer command's engine: its own for the command's duration, or the one already running
//! on the data dir (`p2pcall daemon`, a `listen`, the app), reached over the local API.
//! Either way the command sees the same facts (the API's types) and the same engine events,
//! so that it prints the same lines and exits with the same codes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use p2pcall_api::{Answer, CallChange, Request};
use p2pcall_core::PeerId;
use p2pcall_core::call::CallOptions;
use p2pcall_core::engine::{EngineEvent, EngineHandle};
use p2pcall_daemon::{Client, tools};
use p2pcall_proto::id::CallId;
use tokio::sync::mpsc::Receiver;

use crate::Cli;
use crate::ctx::*;

/// The engine a peer command works through, and the peer it works with.
pub(crate) struct Session {
    /// The peer.
    pub(crate) peer: PeerId,
    via: Via,
}

enum Via {
    Own {
        engine: EngineHandle,
        events: Receiver<EngineEvent>,
    },
    Daemon {
        /// Requests.
        rpc: Box<Client>,
        /// Events (a second connection, so that they arrive while a request waits).
        events: Box<Client>,
    },
}

/// The engine for another task (the call's console, a speed test running while events are
/// read): the engine itself, or a connection of its own to the daemon.
pub(crate) enum Control {
    Own(EngineHandle),
    Daemon(Client),
}

impl Control {
    pub(crate) async fn change(&mut self, c: CallChange) -> Result<()> {
        match self {
            Self::Own(e) => tools::change_call(e, c).await?,
            Self::Daemon(c2) => {
                c2.call(Request::ChangeCall(c)).await?;
            }
        }
        Ok(())
    }

    /// A speed test of `bytes` to `peer`.
    pub(crate) async fn speedtest(
        mut self,
        peer: PeerId,
        bytes: u64,
    ) -> Result<p2pcall_api::Speed> {
        Ok(match &mut self {
            Self::Own(engine) => tools::speedtest(engine, peer, bytes).await?,
            Self::Daemon(rpc) => {
                let request = Request::Speedtest {
                    peer: peer.to_hex(),
                    bytes,
                };
                let Answer::Speed(s) = rpc.call(request).await? else {
                    bail!("the p2pcall daemon answered something else than the speed");
                };
                s
            }
        })
    }

    pub(crate) async fn hangup(&mut self) -> Result<()> {
        match self {
            Self::Own(e) => e.hangup().await?,
            Self::Daemon(c) => {
                c.call(Request::Hangup).await?;
            }
        }
        Ok(())
    }
}

/// Finds the peer the user means through the daemon.
async fn resolve_through(rpc: &mut Client, query: &str) -> Result<PeerId> {
    let Answer::Resolved { peer: p, contact } =
        rpc.call(Request::Resolve { peer: query.into() }).await?
    else {
        bail!("the p2pcall daemon answered something else than the peer");
    };
    let peer =
        p.id.parse()
            .context("the p2pcall daemon sent an unreadable id")?;
    if !contact {
        crate::output::stranger_note(&peer, &p.name);
    }
    Ok(peer)
}

impl Session {
    /// Finds the peer the user means (the command's own engine first comes online).
    pub(crate) async fn open(cli: &Cli, query: &str) -> Result<Session> {
        if let Some(mut rpc) = engine_client(cli).await? {
            let peer = resolve_through(&mut rpc, query).await?;
            return Self::through(cli, rpc, peer).await;
        }
        let (engine, mut events) = start_engine(cli, true).await?;
        wait_online(&engine, &mut events).await?;
        engine.wait_presence(RELAY_WAIT).await?;
        let peer = resolve_noting(&engine, query)?;
        Ok(Session {
            peer,
            via: Via::Own { engine, events },
        })
    }

    /// A session with `peer` through the daemon `rpc` reaches (its events subscribed).
    pub(crate) async fn through(cli: &Cli, rpc: Client, peer: PeerId) -> Result<Session> {
        let mut events = connect_again(cli).await?;
        events.call(Request::Subscribe).await?;
        Ok(Session {
            peer,
            via: Via::Daemon {
                rpc: Box::new(rpc),
                events: Box::new(events),
            },
        })
    }

    /// The daemon's requests connection (`None` with an engine of its own).
    pub(crate) fn rpc(&mut self) -> Option<&mut Client> {
        match &mut self.via {
            Via::Daemon { rpc, .. } => Some(rpc),
            Via::Own { .. } => None,
        }
    }

    /// [`Session::open`], then connects to the peer; returns the connection and when it
    /// was up.
    pub(crate) async fn connect(
        cli: &Cli,
        query: &str,
    ) -> Result<(Session, p2pcall_api::Connection, Instant)> {
        let mut s = Self::open(cli, query).await?;
        let c = s.connection().await?;
        Ok((s, c, Instant::now()))
    }

    async fn connection(&mut self) -> Result<p2pcall_api::Connection> {
        let peer = self.peer;
        Ok(match &mut self.via {
            Via::Own { engine, .. } => tools::connect(engine, peer)
                .await
                .with_context(|| format!("connecting to {}", peer.fingerprint()))?,
            Via::Daemon { rpc, .. } => {
                let Answer::Connected(c) = rpc
                    .call(Request::Connect {
                        peer: peer.to_hex(),
                    })
                    .await
                    .with_context(|| format!("connecting to {}", peer.fingerprint()))?
                else {
                    bail!("the p2pcall daemon answered something else than the connection");
                };
                c
            }
        })
    }

    /// The next engine event (`None`: the command's own engine stopped); a daemon that
    /// stops is an error (exit code 10).
    pub(crate) async fn next_event(&mut self) -> Result<Option<EngineEvent>> {
        match &mut self.via {
            Via::Own { events, .. } => Ok(events.recv().await),
            Via::Daemon { events, .. } => loop {
                match events.next_event().await? {
                    p2pcall_api::Event::Lagged { dropped } => {
                        errln!("warning: {dropped} events of the p2pcall daemon were lost");
                    }
                    e => {
                        if let Some(e) = p2pcall_daemon::event_from_api(&e) {
                            return Ok(Some(e));
                        }
                    }
                }
            },
        }
    }

    /// Whether events come from a daemon (and are read with [`Session::next_event`]).
    pub(crate) fn through_daemon(&self) -> bool {
        matches!(self.via, Via::Daemon { .. })
    }

    pub(crate) async fn ping(&mut self, seq: u32) -> Result<p2pcall_api::Pong> {
        let peer = self.peer;
        Ok(match &mut self.via {
            Via::Own { engine, .. } => tools::ping(engine, peer, seq).await?,
            Via::Daemon { rpc, .. } => {
                let request = Request::Ping {
                    peer: peer.to_hex(),
                    seq,
                };
                let Answer::Pong(p) = rpc.call(request).await? else {
                    bail!("the p2pcall daemon answered something else than a pong");
                };
                p
            }
        })
    }

    /// Finds another peer the user means.
    pub(crate) async fn resolve(&mut self, query: &str) -> Result<PeerId> {
        match &mut self.via {
            Via::Own { engine, .. } => resolve_noting(engine, query),
            Via::Daemon { rpc, .. } => resolve_through(rpc, query).await,
        }
    }

    /// Places a call: to the session's peer, or a group call with `also` besides.
    pub(crate) async fn call(&mut self, opts: CallOptions, also: &[PeerId]) -> Result<CallId> {
        let peer = self.peer;
        Ok(match &mut self.via {
            Via::Own { engine, .. } if also.is_empty() => engine.call(peer, opts).await?,
            Via::Own { engine, .. } => {
                let peers = std::iter::once(peer).chain(also.iter().copied()).collect();
                engine.call_group(peers, opts).await?
            }
            Via::Daemon { rpc, .. } => {
                let request = Request::Call {
                    peer: peer.to_hex(),
                    media: p2pcall_daemon::media(&opts),
                    also: also.iter().map(PeerId::to_hex).collect(),
                };
                let Answer::Calling { call, .. } = rpc.call(request).await? else {
                    bail!("the p2pcall daemon answered something else than the call");
                };
                call.parse()
                    .context("the p2pcall daemon sent an unreadable call id")?
            }
        })
    }

    /// Another handle on the engine, for another task.
    pub(crate) async fn control(&self, cli: &Cli) -> Result<Control> {
        Ok(match &self.via {
            Via::Own { engine, .. } => Control::Own(engine.clone()),
            Via::Daemon { .. } => Control::Daemon(connect_again(cli).await?),
        })
    }

    /// Ends the command's own engine (the daemon's goes on).
    pub(crate) async fn close(self) {
        if let Via::Own { engine, .. } = self.via {
            engine.shutdown().await;
        }
    }
}

/// A further connection to the daemon a first one reached.
async fn connect_again(cli: &Cli) -> Result<Client> {
    engine_client(cli)
        .await?
        .ok_or(p2pcall_daemon::DaemonError::Stopped)
        .map_err(Into::into)
}

/// How long a connection took, from the API's microseconds.
pub(crate) fn setup(c: &p2pcall_api::Connection) -> Duration {
    Duration::from_micros(c.connect_us)
}

/// The `connected` event of a dialing command, in JSON.
pub(crate) fn connected_json(c: &p2pcall_api::Connection) -> serde_json::Value {
    use crate::output::{ms, peer_obj};
    let peer: Option<PeerId> = c.peer.id.parse().ok();
    serde_json::json!({
        "event": "connected",
        "peer": peer.map(|p| peer_obj(&p, Some(&c.peer.name))),
        "connect_ms": ms(setup(c)),
        "path": c.path,
        "relay_transport": c.relay_transport,
        "safety_number": c.safety_number,
    })
}
