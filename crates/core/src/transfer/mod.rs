//! File and folder-tree transfer (see [`p2pcall_proto::transfer`] for the wire format and
//! [`p2pcall_transfer`] for the sans-IO logic: hashing, sanitising, resume bookkeeping).
//!
//! Sender: scans the paths (regular files and folders; symlinks and special files are
//! skipped and counted), offers the manifest on a control stream, waits for the answer, then
//! sends the missing chunks of several files at once on [`DATA_STREAMS`] data streams, each
//! chunk with its BLAKE3 chaining value and each file closed with its BLAKE3 hash.
//!
//! Receiver: sanitises the offer, asks its user (an [`TransferEvent::Offered`] event answered
//! with `EngineHandle::accept_offer` or `EngineHandle::reject_offer`), checks free space,
//! writes each file under a temporary name, verifies every chunk on arrival, records verified
//! chunks (SQLite, after `fdatasync`) so a retried transfer resumes, and moves a file into
//! place (never over an existing file) only after its hash matched.

mod fsops;
pub mod partials;
mod recv;
mod send;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use p2pcall_proto::PeerId;
use p2pcall_proto::transfer::{AbortCode, TransferFrame, TransferId};
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

use crate::bulk::Gates;
use crate::context::Context;
use crate::error::EngineError;
use crate::events::Emitter;

pub(crate) use recv::{serve_data, serve_offer};

/// Kind byte of a transfer control stream (bidirectional, opened by the sender).
pub const OFFER: u8 = p2pcall_proto::stream::StreamKind::TransferOffer.byte();
/// Kind byte of a transfer data stream (unidirectional, sender to receiver).
pub const DATA: u8 = p2pcall_proto::stream::StreamKind::TransferData.byte();
/// Chunk size: the unit of verification and resume.
pub const CHUNK_SIZE: u32 = 1 << 20;
/// Files sent at once, one data stream each.
pub const DATA_STREAMS: usize = 4;
/// Stop reason given to a receiving attempt that a retry replaces.
const SUPERSEDED: &str = "superseded";
/// Stop reason of an interruption (Ctrl-C, the engine shutting down): unlike a cancel, the
/// partial data stays and the same transfer resumes later.
const INTERRUPTED: &str = "interrupted";
/// How long [`Transfers::interrupt_all`] waits for transfers to record their state.
const INTERRUPT_WAIT: Duration = Duration::from_secs(3);
/// Progress events at most this often per transfer.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// What the receiver's user is asked.
#[derive(Debug, Clone)]
pub struct OfferInfo {
    /// Who offers.
    pub peer: PeerId,
    /// Transfer id.
    pub id: TransferId,
    /// Number of files.
    pub files: u64,
    /// Number of folders.
    pub dirs: u64,
    /// Sum of file sizes.
    pub total_bytes: u64,
    /// Top-level names.
    pub tops: Vec<String>,
    /// The first entries: relative path and size (`None` for folders).
    pub sample: Vec<(String, Option<u64>)>,
}

/// Progress of one transfer.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The other side.
    pub peer: PeerId,
    /// Transfer id.
    pub id: TransferId,
    /// We send.
    pub outgoing: bool,
    /// Bytes done (verified on the receiver; written to the connection on the sender),
    /// including bytes held from an earlier attempt.
    pub done_bytes: u64,
    /// Total bytes.
    pub total_bytes: u64,
    /// Files in place.
    pub files_done: u64,
    /// Files in total.
    pub files: u64,
    /// Smoothed rate, bytes/s.
    pub rate: Option<f64>,
    /// Estimated time left.
    pub eta: Option<Duration>,
}

/// A finished transfer.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The other side.
    pub peer: PeerId,
    /// Transfer id.
    pub id: TransferId,
    /// We sent.
    pub outgoing: bool,
    /// Files transferred.
    pub files: u64,
    /// Folders.
    pub dirs: u64,
    /// Sum of file sizes.
    pub total_bytes: u64,
    /// Bytes that were already there from an earlier attempt (not sent again).
    pub resumed_bytes: u64,
    /// Duration of this attempt.
    pub elapsed: Duration,
    /// Receiver: where the top-level entries landed.
    pub placed: Vec<PathBuf>,
    /// Sender: symlinks and special files skipped.
    pub skipped: Vec<PathBuf>,
    /// Each file's relative path and BLAKE3 hash.
    pub hashes: Vec<(String, [u8; 32])>,
}

impl Summary {
    /// Bytes moved in this attempt per second.
    pub fn bytes_per_s(&self) -> f64 {
        (self.total_bytes - self.resumed_bytes) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Transfer events for the UI.
#[derive(Debug, Clone)]
pub enum TransferEvent {
    /// A peer offers files; answer with `accept_offer` or `reject_offer`.
    Offered(OfferInfo),
    /// An interrupted, already accepted transfer resumes (no question asked).
    Resumed(OfferInfo),
    /// Progress.
    Progress(Progress),
    /// Done.
    Finished(Summary),
    /// Stopped: rejected, cancelled, failed; `resumable` if a retry continues it.
    Failed {
        /// The other side.
        peer: PeerId,
        /// Transfer id.
        id: TransferId,
        /// We sent.
        outgoing: bool,
        /// What happened.
        reason: String,
        /// A retry continues from the verified chunks.
        resumable: bool,
    },
}

/// The receiver user's answer.
#[derive(Debug)]
pub(crate) enum Decision {
    Accept(PathBuf),
    Reject(String),
}

type Key = (PeerId, TransferId);
/// Stop signal of one side of a transfer: `Some(reason)` once stopped.
type StopTx = watch::Sender<Option<String>>;

/// Transfers in flight.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    offers: Mutex<HashMap<Key, oneshot::Sender<Decision>>>,
    receiving: Mutex<HashMap<Key, std::sync::Arc<recv::Receiving>>>,
    pub(crate) cancels: Mutex<HashMap<(Key, bool), StopTx>>,
    sending: Mutex<HashMap<Key, watch::Receiver<Option<send::Outcome>>>>,
    offer_slots: Mutex<HashMap<PeerId, usize>>,
    /// Notified whenever a transfer leaves `receiving` or `sending` (waiters check again,
    /// instead of polling).
    pub(crate) ended: tokio::sync::Notify,
}

/// Maps an I/O error to the abort code the other side sees.
pub(crate) fn abort_code(e: &std::io::Error) -> AbortCode {
    use std::io::ErrorKind::*;
    match e.kind() {
        StorageFull | QuotaExceeded | FileTooLarge => AbortCode::DiskFull,
        PermissionDenied | ReadOnlyFilesystem => AbortCode::Permission,
        _ => AbortCode::Io,
    }
}

pub(crate) fn encode(f: &TransferFrame) -> Vec<u8> {
    let mut b = Vec::with_capacity(f.encoded_len());
    f.encode(&mut b);
    b
}

/// Records a transfer's state (and why it stopped), on a blocking thread.
pub(crate) async fn set_state(
    svc: &Transfers,
    rowid: i64,
    state: p2pcall_store::TransferState,
    reason: Option<String>,
) -> Result<(), EngineError> {
    (svc.ctx)
        .db(move |s| s.set_transfer_state(rowid, state, reason.as_deref(), p2pcall_store::now_ms()))
        .await
}

/// Reports a transfer event (progress is shed when the front end lags: `crate::events`).
pub(crate) fn emit(svc: &Transfers, e: TransferEvent) {
    svc.events.emit(e);
}

impl Registry {
    fn cancel_rx(&self, key: Key, outgoing: bool) -> watch::Receiver<Option<String>> {
        let (tx, rx) = watch::channel(None);
        {
            let mut m = self.cancels.lock();
            m.insert((key, outgoing), tx);
        }
        rx
    }

    fn drop_cancel(&self, key: Key, outgoing: bool) {
        {
            let mut m = self.cancels.lock();
            m.remove(&(key, outgoing));
        }
    }
}

/// The transfer service: transfers in flight in both directions.
#[derive(Debug)]
pub(crate) struct Transfers {
    ctx: Arc<Context>,
    events: Emitter<TransferEvent>,
    registry: Registry,
    /// Per peer: how much of the connection transfers may use during a call.
    bulk: Arc<Gates>,
    /// Received files keep the sender's execute bits.
    keep_exec: bool,
}

impl Transfers {
    pub(crate) fn new(
        ctx: Arc<Context>,
        events: Emitter<TransferEvent>,
        bulk: Arc<Gates>,
        keep_exec: bool,
    ) -> Self {
        Self {
            ctx,
            events,
            registry: Registry::default(),
            bulk,
            keep_exec,
        }
    }

    /// Answers a pending offer: accept into a folder (created if missing), or decline.
    pub(crate) fn decide(
        &self,
        peer: PeerId,
        id: TransferId,
        d: Decision,
    ) -> Result<(), EngineError> {
        let tx = self
            .registry
            .offers
            .lock()
            .remove(&(peer, id))
            .ok_or_else(|| EngineError::NoSuchOffer(id))?;
        tx.send(d).map_err(|_| EngineError::NoSuchOffer(id))
    }

    /// Cancels a transfer in either direction; both sides are told, no half-written file
    /// stays in place, and the partial data is removed.
    pub(crate) fn cancel(&self, peer: PeerId, id: TransferId) -> bool {
        self.stop(peer, id, "cancelled by the user")
    }

    /// Interrupts a transfer in either direction (Ctrl-C on a `send`): both sides keep what
    /// was verified, and the same `send` resumes from there. Returns whether one was running.
    pub(crate) fn interrupt(&self, peer: PeerId, id: TransferId) -> bool {
        self.stop(peer, id, INTERRUPTED)
    }

    fn stop(&self, peer: PeerId, id: TransferId, reason: &str) -> bool {
        let m = self.registry.cancels.lock();
        let mut any = false;
        for outgoing in [true, false] {
            if let Some(tx) = m.get(&((peer, id), outgoing)) {
                tx.send_replace(Some(reason.into()));
                any = true;
            }
        }
        any
    }

    /// Interrupts every running transfer (the engine is shutting down) and waits, up to
    /// [`INTERRUPT_WAIT`], until each has recorded its verified chunks and told the peer.
    pub(crate) async fn interrupt_all(&self) {
        let t = &self.registry;
        {
            let m = t.cancels.lock();
            for tx in m.values() {
                tx.send_replace(Some(INTERRUPTED.into()));
            }
        }
        let idle = || t.receiving.lock().is_empty() && t.sending.lock().is_empty();
        let _ = tokio::time::timeout(INTERRUPT_WAIT, async {
            loop {
                let ended = t.ended.notified();
                if idle() {
                    return;
                }
                ended.await;
            }
        })
        .await;
    }

    /// Removes the partial files of incoming transfers untouched for `age` (never those
    /// being received). Blocks on the disk and the database.
    pub(crate) fn clean_partials(&self, age: Duration) -> Result<partials::Cleaned, EngineError> {
        partials::clean_older_than(&self.ctx.store, age, |r| self.is_receiving(r.peer, r.id))
    }

    /// Whether an incoming transfer is being received by this engine now.
    pub(crate) fn is_receiving(&self, peer: PeerId, id: TransferId) -> bool {
        self.registry.receiving.lock().contains_key(&(peer, id))
    }

    /// Sends files and folders to `peer`. Resumes an unfinished transfer of the same paths
    /// to the same peer. Progress arrives as [`TransferEvent::Progress`] events.
    pub(crate) async fn send(
        &self,
        peer: PeerId,
        paths: &[PathBuf],
    ) -> Result<Summary, EngineError> {
        send::send_files(self, peer, paths).await
    }

    /// Continues every unfinished outgoing transfer to `peer` (called when it comes back).
    pub(crate) async fn resume(self: &Arc<Self>, peer: PeerId) {
        let Ok(open) = self.ctx.db(move |s| s.open_outgoing(Some(&peer))).await else {
            return;
        };
        for t in open {
            let running = self.registry.sending.lock().contains_key(&(peer, t.id));
            if running || t.sources.is_empty() {
                continue;
            }
            let svc = self.clone();
            tokio::spawn(async move {
                if let Err(e) = send::send_files(&svc, peer, &t.sources).await {
                    tracing::info!(%peer, "resumed transfer stopped: {e}");
                }
            });
        }
    }
}

/// Reusable chunk buffers: a fresh 1 MiB allocation costs a page fault per 4 KiB, which
/// showed in the profile of a 1 GiB transfer; buffers come back here when quinn or the
/// writer is done with them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pool(Arc<Mutex<Vec<Vec<u8>>>>);

/// Buffers kept per pool.
const POOLED: usize = 8;

impl Pool {
    /// A buffer of `len` bytes (contents unspecified).
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let mut v = self.0.lock().pop().unwrap_or_default();
        v.resize(len, 0);
        v
    }

    /// Returns a buffer.
    pub(crate) fn put(&self, mut v: Vec<u8>) {
        v.clear();
        let mut p = self.0.lock();
        if p.len() < POOLED {
            p.push(v);
        }
    }

    /// Wraps a buffer as `Bytes` that go back to the pool when dropped.
    pub(crate) fn bytes(&self, buf: Vec<u8>) -> bytes::Bytes {
        bytes::Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: Pool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}
