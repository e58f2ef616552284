//! LAN-only mode: presence by mDNS / DNS-SD instead of a relay.
//!
//! The endpoint announces `_p2pcall._udp.local.` with its socket's port, its interface
//! addresses and a TXT record naming its key ([`p2pcall_proto::lan::LanRecord`]), and browses
//! for the same type. A peer found this way gets its addresses attributed to its route (so its
//! QUIC packets reach quinn) and its best address as the route's path of last resort, which
//! stands in for the relay: a connection starts there, probes then pick the fastest direct
//! path as usual, and a direct path that dies falls back to it. Nothing from mDNS is trusted
//! beyond that: the handshake proves the key, the name is a hint as on the relay.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use p2pcall_proto::PeerId;
use p2pcall_proto::lan::{LanRecord, SERVICE_TYPE};
use p2pcall_proto::relay::PeerInfo;
use tokio::sync::watch;

use crate::NetError;
use crate::config::LanConfig;
use crate::event::{Event, PresenceEvent};
use crate::inner::Inner;

/// How long after starting the first presence snapshot waits for answers (mDNS resolves a
/// LAN in well under a second; queries repeat at 1 s, 2 s, ...).
pub const LAN_SETTLE: Duration = Duration::from_millis(1500);
/// How often peers without an answer of late are asked whether they are still there
/// (RFC 6762 §10.4): a peer that crashed sends no goodbye, and its records live 75 minutes.
const VERIFY_EVERY: Duration = Duration::from_secs(30);
/// How long a verification waits for the answer before dropping the peer.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(3);
/// Most LAN peers tracked (a hostile host can announce any number).
const MAX_LAN_PEERS: usize = 1024;
/// Most addresses taken from one announcement.
const MAX_ADDRS: usize = 8;
/// How long closing waits for the goodbye announcement to leave.
const GOODBYE_WAIT: Duration = Duration::from_millis(500);

/// The running mDNS responder and browser of an endpoint.
pub(crate) struct Lan {
    daemon: ServiceDaemon,
    fullname: String,
    /// The display name to announce (changes re-register).
    pub(crate) name: watch::Sender<String>,
}

impl Lan {
    /// Sends the goodbye (peers see us leave at once) and stops the daemon.
    pub(crate) async fn close(&self) {
        if let Ok(rx) = self.daemon.unregister(&self.fullname) {
            let _ = tokio::time::timeout(GOODBYE_WAIT, rx.recv_async()).await;
        }
        let _ = self.daemon.shutdown();
    }

    /// Asks whether `peer`'s announcement is still answered; if not, it is dropped.
    pub(crate) fn verify(&self, fullname: String) {
        let _ = self.daemon.verify(fullname, VERIFY_TIMEOUT);
    }
}

fn lan_err(e: mdns_sd::Error) -> NetError {
    NetError::Lan(e.to_string())
}

/// Starts the daemon, announces us and browses. Returns the handle and the task to spawn.
pub(crate) fn start(
    inner: &Arc<Inner>,
    cfg: &LanConfig,
) -> Result<(Lan, mdns_sd::Receiver<ServiceEvent>), NetError> {
    let daemon = ServiceDaemon::new_with_port(cfg.mdns_port).map_err(lan_err)?;
    let set_up = || -> Result<_, NetError> {
        if cfg.interfaces.is_empty() {
            daemon
                .disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
                .map_err(lan_err)?;
        } else {
            daemon.disable_interface(IfKind::All).map_err(lan_err)?;
            let names: Vec<IfKind> = cfg
                .interfaces
                .iter()
                .map(|n| IfKind::Name(n.clone()))
                .collect();
            daemon.enable_interface(names).map_err(lan_err)?;
        }
        let browse = daemon.browse(SERVICE_TYPE).map_err(lan_err)?;
        let name = inner.name.lock().clone();
        let info = service_info(inner, &name)?;
        let fullname = info.get_fullname().to_string();
        daemon.register(info).map_err(lan_err)?;
        Ok((browse, name, fullname))
    };
    let (browse, name, fullname) = match set_up() {
        Ok(v) => v,
        Err(e) => {
            // Do not leave the daemon's thread behind.
            let _ = daemon.shutdown();
            return Err(e);
        }
    };
    Ok((
        Lan {
            daemon,
            fullname,
            name: watch::Sender::new(name),
        },
        browse,
    ))
}

fn service_info(inner: &Inner, name: &str) -> Result<ServiceInfo, NetError> {
    let id = inner.identity.id();
    let record = LanRecord {
        id,
        name: name.to_string(),
    };
    // The instance name only has to be unique on the link; the key is.
    let instance = id.fingerprint().to_string();
    let host = format!("p2pcall-{}.local.", &id.to_hex()[..16]);
    let txt = record.to_txt();
    let props: Vec<(&str, &str)> = txt.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Ok(ServiceInfo::new(
        SERVICE_TYPE,
        &instance,
        &host,
        "",
        inner.socket.local_port(),
        props.as_slice(),
    )
    .map_err(lan_err)?
    .enable_addr_auto())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Orders a peer's announced addresses: same subnet as one of ours first, IPv4 before IPv6;
/// drops what we cannot use (link-local IPv6 without scope, other family, loopback unless
/// that is all there is).
fn usable_addrs(inner: &Inner, ips: impl Iterator<Item = IpAddr>, port: u16) -> Vec<SocketAddr> {
    let ours: Vec<if_addrs::Interface> = if_addrs::get_if_addrs().unwrap_or_default();
    let same_subnet = |ip: &IpAddr| {
        ours.iter().any(|i| match (&i.addr, ip) {
            (if_addrs::IfAddr::V4(a), IpAddr::V4(b)) => {
                let m = u32::from(a.netmask);
                u32::from(a.ip) & m == u32::from(*b) & m
            }
            (if_addrs::IfAddr::V6(a), IpAddr::V6(b)) => {
                let m = u128::from(a.netmask);
                u128::from(a.ip) & m == u128::from(*b) & m
            }
            _ => false,
        })
    };
    let mut v: Vec<IpAddr> = ips
        .filter(|ip| match ip {
            IpAddr::V4(_) => true,
            IpAddr::V6(v6) => {
                !v6.is_unicast_link_local()
                    && inner.socket.family(SocketAddr::new(*ip, 0)).is_ipv6()
            }
        })
        .collect();
    if v.iter().any(|ip| !ip.is_loopback()) {
        v.retain(|ip| !ip.is_loopback());
    }
    v.sort_by_key(|ip| (!same_subnet(ip), ip.is_ipv6(), *ip));
    v.dedup();
    v.truncate(MAX_ADDRS);
    v.into_iter().map(|ip| SocketAddr::new(ip, port)).collect()
}

/// Follows the browser: peers found, renamed and gone become presence events (after the
/// first snapshot); our own name changes re-announce us.
pub(crate) async fn run(inner: Arc<Inner>, lan: Arc<Lan>, browse: mdns_sd::Receiver<ServiceEvent>) {
    let mut name_rx = lan.name.subscribe();
    let me = inner.identity.id();
    // mDNS instance full name -> peer.
    let mut instances: HashMap<String, PeerId> = HashMap::new();
    let mut snapshot_sent = false;
    let settle = tokio::time::sleep(LAN_SETTLE);
    tokio::pin!(settle);
    let mut verify = tokio::time::interval(VERIFY_EVERY);
    verify.tick().await;
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => break,
            () = &mut settle, if !snapshot_sent => {
                snapshot_sent = true;
                let list = inner.roster.list();
                inner.emit(Event::Presence(PresenceEvent::Snapshot(list))).await;
            }
            Ok(()) = name_rx.changed() => {
                let name = name_rx.borrow_and_update().clone();
                match service_info(&inner, &name) {
                    Ok(info) => { let _ = lan.daemon.register(info); }
                    Err(e) => tracing::warn!("cannot re-announce the new name: {e}"),
                }
            }
            _ = verify.tick() => {
                for f in instances.keys() {
                    lan.verify(f.clone());
                }
            }
            ev = browse.recv_async() => {
                let Ok(ev) = ev else { break };
                let e = match ev {
                    ServiceEvent::ServiceResolved(s) => {
                        let Ok(rec) = LanRecord::from_txt(
                            s.get_properties().iter().map(|p| (p.key(), p.val())),
                        ) else {
                            tracing::debug!(instance = s.get_fullname(), "ignoring a bad LAN announcement");
                            continue;
                        };
                        if rec.id == me {
                            continue;
                        }
                        let addrs = usable_addrs(
                            &inner,
                            s.get_addresses().iter().map(|a| a.to_ip_addr()),
                            s.get_port(),
                        );
                        let Some(&best) = addrs.first() else { continue };
                        if !instances.contains_key(s.get_fullname()) && instances.len() >= MAX_LAN_PEERS {
                            continue;
                        }
                        let Some(route) = inner.socket.route(rec.id) else { continue };
                        // An instance that now names another key: the old key left.
                        let old = instances.insert(s.get_fullname().to_string(), rec.id);
                        let mut left = None;
                        if let Some(old) = old.filter(|o| *o != rec.id)
                            && !instances.values().any(|p| *p == old)
                        {
                            left = Some(old);
                        }
                        inner.socket.set_lan(&route, best, &addrs);
                        tracing::debug!(peer = %rec.id, ?addrs, "found on the LAN");
                        let (joined, renamed) = inner.roster.update(|p| {
                            if let Some(l) = left {
                                p.remove(&l);
                            }
                            match p.get_mut(&rec.id) {
                                Some(known) if known.name == rec.name => (None, None),
                                Some(known) => {
                                    known.name.clone_from(&rec.name);
                                    (None, Some(known.clone()))
                                }
                                None => {
                                    let info = PeerInfo { id: rec.id, name: rec.name, online_since_ms: now_ms() };
                                    p.insert(info.id, info.clone());
                                    (Some(info), None)
                                }
                            }
                        });
                        if !snapshot_sent {
                            continue;
                        }
                        if let Some(l) = left {
                            inner.emit(Event::Presence(PresenceEvent::Left(l))).await;
                        }
                        match (joined, renamed) {
                            (Some(j), _) => PresenceEvent::Joined(j),
                            (_, Some(u)) => PresenceEvent::Updated(u),
                            _ => continue,
                        }
                    }
                    ServiceEvent::ServiceRemoved(_, fullname) => {
                        let Some(peer) = instances.remove(&fullname) else { continue };
                        if instances.values().any(|p| *p == peer) {
                            continue;
                        }
                        let was = inner.roster.remove(&peer);
                        tracing::debug!(%peer, "left the LAN");
                        if was.is_none() || !snapshot_sent {
                            continue;
                        }
                        PresenceEvent::Left(peer)
                    }
                    _ => continue,
                };
                inner.emit(Event::Presence(e)).await;
            }
        }
    }
}
