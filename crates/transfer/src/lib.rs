//! File transfer logic without I/O: what the sender and receiver decide, as plain functions
//! and state machines the driver (in `p2pcall-core`) feeds with bytes and `now`.
//!
//! * [`tree`]: a file's BLAKE3 hash from independently verified chunks. Each chunk's chaining
//!   value is checked on arrival and the file hash is merged from them, so every byte is
//!   hashed once and the result is the ordinary BLAKE3 of the file (what `b3sum` prints).
//! * [`sanitize`]: the receiver's checks of an offered manifest, one error per rule, and
//!   collision-free names.
//! * [`resume`]: which chunks of which file are verified; what remains to send.
//! * [`meter`]: progress, rate and ETA on a caller-supplied clock.
//! * [`control`]: the control stream of both ends (offer, accept or reject, files placed,
//!   complete, abort, stop, supersede) and how each way of ending leaves the transfer.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod control;
pub mod meter;
pub mod resume;
pub mod sanitize;
pub mod tree;

pub use meter::Meter;
pub use resume::{ChunkError, FileProgress};
pub use sanitize::{Plan, PlannedEntry, SanitizeError, sanitize, unique_name, without_exec};
pub use tree::{Cv, chunk_count, chunk_cv, chunk_len, file_hash};
