//! The local API over a Unix socket ([`p2pcall_api`] messages): the engine's side
//! ([`ApiServer`], fed events by a [`Hub`]) and the clients' side ([`Client`]).
//!
//! Whoever runs the engine of a data dir (`p2pcall daemon`, `listen`, the app) serves the
//! socket of that data dir ([`socket_path`]); a command finds it there and asks the engine
//! instead of starting its own. Only the user who owns the socket may use it (mode 0600, and
//! the connecting process's uid is checked). A client that sends garbage gets an error reply
//! or is dropped; one that stops reading loses events (it is told how many), and the engine
//! never waits for it.
#![forbid(unsafe_code)]

mod callconv;
mod client;
mod convert;
mod hub;
mod server;
pub mod tools;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use callconv::{call_event_from_api, media, path_from_api};
pub use client::{Client, VideoFeed};
pub use convert::{
    contact, engine_error, event_from_api, message_from_api, message_request, offer_from_api,
    peer_from_api, progress_from_api, relay_pin, summary_from_api,
};
pub use hub::{Hub, Ringing};
pub use server::{ApiServer, Served};

/// Where the engine of `data_dir` serves the API: in `$XDG_RUNTIME_DIR/p2pcall/` (named by a
/// hash of the data dir), or in the data dir itself without a runtime dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    let dir = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    match std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
    {
        Some(run) => {
            let h = blake3::hash(dir.as_os_str().as_bytes());
            run.join("p2pcall")
                .join(format!("{}.sock", &h.to_hex()[..16]))
        }
        None => dir.join("api.sock"),
    }
}

/// Local API failures.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The socket cannot be created.
    #[error("cannot serve the local API at {}: {source}", path.display())]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection to the engine failed.
    #[error("the connection to the p2pcall daemon failed: {0}")]
    Io(#[from] std::io::Error),
    /// The engine sent something that is not an API message.
    #[error("the p2pcall daemon sent something unreadable: {0}")]
    Api(#[from] p2pcall_api::ApiError),
    /// The engine went away.
    #[error("the p2pcall daemon stopped")]
    Stopped,
    /// The engine speaks another API version.
    #[error(
        "the p2pcall daemon speaks API version {theirs}, this program {ours}: restart the daemon with this version"
    )]
    Version {
        /// Ours.
        ours: u32,
        /// The engine's.
        theirs: u32,
    },
    /// The engine refused the request.
    #[error(transparent)]
    Refused(#[from] p2pcall_api::RpcError),
    /// The engine answered with something that does not fit the request.
    #[error("the p2pcall daemon answered {0} to a different question")]
    Unexpected(String),
}
