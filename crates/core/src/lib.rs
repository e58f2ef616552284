//! The headless p2pcall engine used by the CLI and the desktop app.
//!
//! * [`identity`]: the installation's Ed25519 key in the data dir (mode 0600).
//! * [`settings`]: TOML settings in the platform config dir.
//! * [`engine`]: commands in ([`EngineHandle`] methods), events out ([`EngineEvent`], in the
//!   order they happened: one FIFO, `events`).
//!
//! Inside, the layers only look down: `context` (endpoint, store, one connection per peer)
//! at the bottom; one service per feature above it (`presence`, [`chat`], [`transfer`],
//! [`call`]), each emitting its own events; `services` routes what peers open to them;
//! [`engine`] starts them and its [`EngineHandle`] delegates each command to one.
//!
//! * [`invite`]: tickets to give, contacts added from tickets received.
//! * [`requests`]: messages from people who are not contacts, kept apart.
//! * [`speedtest`]: throughput and integrity test over one stream.
//! * [`call`]: calls (signaling, media pipeline, statistics).
//! * [`devices`]: cameras, microphones, speakers and screens, or why there are none.
//! * [`chat`]: persistent chat with delivery and read receipts.
//! * [`transfer`]: file and folder-tree transfer with verification and resume.
#![forbid(unsafe_code)]

pub mod bulk;
pub mod call;
pub mod chat;
mod context;
pub use p2pcall_devices::list as devices;
pub mod engine;
mod error;
mod events;
pub mod identity;
pub mod invite;
pub mod lock;
mod presence;
pub mod requests;
mod services;
pub mod settings;
pub mod speedtest;
pub mod transfer;

pub use engine::{
    Engine, EngineConfig, EngineError, EngineEvent, EngineHandle, PingReport, StreamError,
};
pub use error::causes;
pub use p2pcall_net::{Path, RelayTransport};
pub use p2pcall_proto::relay::PeerInfo;
pub use p2pcall_proto::{PeerId, SafetyNumber};
pub use p2pcall_store::{Contact, Message, MessageRequest, MessageState, Store, Trust};
pub use presence::{Resolved, STRANGER_DIGITS};
