//! Exit codes: every failure a script may want to tell apart has its own, listed in
//! `--help` ([`HELP`]).

use p2pcall_core::EngineError;
use p2pcall_net::NetError;
use p2pcall_proto::transfer::AbortCode;
use std::net::SocketAddr;

/// Any other failure.
pub const FAILURE: u8 = 1;
/// The relay reports the peer offline.
pub const PEER_OFFLINE: u8 = 3;
/// Nothing listens at the relay's address.
pub const RELAY_UNREACHABLE: u8 = 4;
/// The network stayed silent until a timeout (relay or peer).
pub const TIMEOUT: u8 = 5;
/// The relay refused us (token, capacity, a newer login with our key).
pub const RELAY_REFUSED: u8 = 6;
/// The peer declined (a file offer, a call).
pub const DECLINED: u8 = 7;
/// Interrupted (Ctrl-C, the peer stopped, the connection was lost): the same command
/// resumes.
pub const INTERRUPTED: u8 = 8;
/// No peer matches what was typed.
pub const NO_SUCH_PEER: u8 = 9;
/// The p2pcall daemon this command was using stopped.
pub const DAEMON_STOPPED: u8 = 10;
/// Someone else answered for the peer (another key than the peer's).
pub const WRONG_PEER_KEY: u8 = 11;

/// The list `--help` prints (a macro, so that it can be `concat!`ed into the help text).
macro_rules! exit_codes_help {
    () => {
        "Exit codes:
  0  success
  1  any other failure
  2  the command line is wrong
  3  the peer is offline (the relay does not see it)
  4  the relay is unreachable (nothing listens at its address)
  5  timed out: the relay or the peer stayed silent
  6  the relay refused us (token, capacity, a newer login with this key), or another key
     than the one pinned for it answered at its address
  7  the peer declined (a file offer, a call)
  8  interrupted (Ctrl-C, the peer stopped, the connection was lost): run the same
     command again to resume
  9  no peer matches what was typed
 10  the p2pcall daemon this command was using stopped
 11  someone else answered for the peer (another key than its own): the relay or the
     network may be routing you to an impostor; nothing was sent to it"
    };
}

/// Failures the command line finds itself (the engine's have their own types).
#[derive(Debug, thiserror::Error)]
pub enum Fail {
    /// Nothing listens at the relay's address.
    #[error(
        "the relay at {addr} is unreachable: {detail}; check the address and port (`--relay HOST[:PORT]`), and that the relay is running"
    )]
    RelayUnreachable {
        /// The address tried.
        addr: SocketAddr,
        /// What UDP and TCP answered.
        detail: String,
    },
    /// No answer from the relay in time.
    #[error(
        "could not reach the relay within {secs} s: {last}; check the address, and that UDP or TCP to it is allowed"
    )]
    RelayTimeout {
        /// How long we waited.
        secs: u64,
        /// The last reason given.
        last: String,
    },
    /// The relay refused the session.
    #[error("the relay refused us: {0}")]
    RelayRefused(String),
    /// Another key than the pinned one answered at the relay's address.
    #[error(
        "the relay at {addr} presented the key {presented}, but {pinned} is pinned for it: nothing was sent to it. Another server may be answering at that address (another network, a spoofed name). If the relay's operator really changed its key, run the command again with --accept-relay-key {presented}"
    )]
    RelayKeyMismatch {
        /// Where.
        addr: SocketAddr,
        /// The key pinned for it.
        pinned: p2pcall_core::PeerId,
        /// The key it presented.
        presented: p2pcall_core::PeerId,
    },
    /// The peer declined.
    #[error("{0}")]
    Declined(String),
    /// The peer's software did not answer in time.
    #[error("{0}")]
    PeerSilent(String),
    /// A transfer stopped and can be resumed.
    #[error("{0}; run the same command again to resume from the verified chunks")]
    Interrupted(String),
}

/// The exit code for `e` (the first cause in its chain that has one).
pub fn code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Fail>() {
            return match f {
                Fail::RelayUnreachable { .. } => RELAY_UNREACHABLE,
                Fail::RelayTimeout { .. } => TIMEOUT,
                Fail::RelayRefused(_) | Fail::RelayKeyMismatch { .. } => RELAY_REFUSED,
                Fail::Interrupted(_) => INTERRUPTED,
                Fail::Declined(_) => DECLINED,
                Fail::PeerSilent(_) => TIMEOUT,
            };
        }
        if let Some(e) = cause.downcast_ref::<EngineError>() {
            return engine_code(e);
        }
        if let Some(e) = cause.downcast_ref::<p2pcall_daemon::DaemonError>() {
            return daemon_code(e);
        }
        if let Some(n) = cause.downcast_ref::<NetError>() {
            return net_code(n);
        }
    }
    FAILURE
}

fn engine_code(e: &EngineError) -> u8 {
    match e {
        EngineError::PeerOffline { .. } => PEER_OFFLINE,
        EngineError::PeerNotFound { .. }
        | EngineError::NotAContact { .. }
        | EngineError::Ambiguous { .. } => NO_SUCH_PEER,
        EngineError::Rejected(_) => DECLINED,
        EngineError::NoPresence(_) => TIMEOUT,
        EngineError::Aborted {
            code: AbortCode::Interrupted | AbortCode::Io,
            ..
        } => INTERRUPTED,
        EngineError::Stream(_) => INTERRUPTED,
        EngineError::Net(n) => net_code(n),
        _ => FAILURE,
    }
}

fn daemon_code(e: &p2pcall_daemon::DaemonError) -> u8 {
    use p2pcall_api::ErrorKind as K;
    use p2pcall_daemon::DaemonError as D;
    match e {
        D::Stopped | D::Io(_) => DAEMON_STOPPED,
        D::Refused(r) => match r.kind {
            K::PeerNotFound | K::Ambiguous => NO_SUCH_PEER,
            K::PeerOffline => PEER_OFFLINE,
            K::Declined => DECLINED,
            K::Interrupted => INTERRUPTED,
            K::NoPresence | K::Timeout => TIMEOUT,
            K::WrongPeerKey => WRONG_PEER_KEY,
            K::BadRequest
            | K::Version
            | K::NoSuchOffer
            | K::NoSuchCall
            | K::BadMedia
            | K::Failure => FAILURE,
        },
        _ => FAILURE,
    }
}

fn net_code(n: &NetError) -> u8 {
    match n {
        NetError::Timeout(_) => TIMEOUT,
        NetError::Refused { .. } => RELAY_REFUSED,
        NetError::Connection(_) => INTERRUPTED,
        NetError::PeerKeyMismatch { .. } => WRONG_PEER_KEY,
        _ => FAILURE,
    }
}
