//! The receiving side of a transfer.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use p2pcall_proto::PeerId;
use p2pcall_proto::transfer::{
    AbortCode, DATA_HEADER_LEN, DataHeader, DataKind, Entry, EntryKind, HaveChunk, MAX_FRAME,
    TransferFrame, TransferId,
};
use p2pcall_store::{ChunkRecord, Store, TransferState, now_ms};
use p2pcall_transfer::control::{
    ControlEvent, Disposition, Earlier, Ending, OfferAction, ReceiverControl, Stop, offer_action,
};
use p2pcall_transfer::{
    ChunkError, Cv, FileProgress, Meter, Plan, chunk_cv, sanitize, unique_name,
};
use p2pcall_transport::framed::FrameReader;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    Decision, OfferInfo, PROGRESS_EVERY, Progress, Summary, TransferEvent, abort_code, emit,
    encode, fsops,
};
use super::{Transfers, set_state};

/// Verified chunks are recorded at least this often (bytes per file). Recording does not
/// wait for the data to reach the disk: every recorded chunk is checked against the disk
/// again before a retry claims it, so a chunk lost to a power cut is simply fetched again,
/// and a killed process (whose written data stays in the page cache) loses at most this much.
const RECORD_BYTES: u64 = 8 << 20;
/// Placed files recorded per transaction.
const DONE_BATCH: usize = 256;
/// Stream error code for a data stream that breaks the protocol.
const DATA_REFUSED: u32 = 3;

type Fail = (AbortCode, String);

fn protocol(e: impl std::fmt::Display) -> Fail {
    (AbortCode::Protocol, e.to_string())
}

fn io_fail(what: &str, e: &std::io::Error) -> Fail {
    (abort_code(e), format!("{what}: {e}"))
}

struct RecvFile {
    rel: String,
    progress: FileProgress,
    dir: PathBuf,
    name: String,
    temp: PathBuf,
    file: Option<File>,
    /// Temp file created in this attempt: its holes are zeros.
    fresh: bool,
    /// Already in place from an interrupted attempt (verified by the sender's hashes).
    placed: Option<PathBuf>,
    mode: u32,
    mtime: i64,
    unrecorded: Vec<ChunkRecord>,
    unrecorded_bytes: u64,
    done: bool,
}

/// A transfer being received.
pub(crate) struct Receiving {
    rowid: i64,
    chunk: u32,
    files: Vec<Option<Mutex<RecvFile>>>,
    store: Arc<Store>,
    ctrl: mpsc::UnboundedSender<TransferFrame>,
    remaining: AtomicU64,
    files_done: AtomicU64,
    bytes: AtomicU64,
    zeros: Vec<u8>,
    hashes: Mutex<Vec<(String, Cv)>>,
    failed: Mutex<Option<Fail>>,
    /// Files placed but not yet recorded (recorded in batches: one transaction per
    /// [`DONE_BATCH`] files; a file placed but not recorded when the process dies is found in
    /// place and confirmed by the sender's hashes on the next attempt).
    done_pending: Mutex<Vec<u32>>,
}

impl std::fmt::Debug for Receiving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiving")
            .field("rowid", &self.rowid)
            .finish_non_exhaustive()
    }
}

impl Receiving {
    fn fail(&self, f: Fail) {
        let mut slot = self.failed.lock();
        if slot.is_none() {
            *slot = Some(f.clone());
            let _ = self.ctrl.send(TransferFrame::Abort {
                code: f.0,
                reason: f.1,
            });
        }
    }

    /// Applies one data record (on a blocking thread).
    fn apply(&self, h: DataHeader, data: Option<&[u8]>) -> Result<(), Fail> {
        let slot = self
            .files
            .get(h.entry as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| protocol(format!("data for entry {}, which is not a file", h.entry)))?;
        let mut f = slot.lock();
        if self.failed.lock().is_some() {
            // This attempt is over (failed, cancelled or superseded): write nothing more.
            return Ok(());
        }
        if f.done {
            return Err(protocol(format!("data for {} after its end", f.rel)));
        }
        match h.kind {
            DataKind::Chunk | DataKind::Zero => self.chunk(&mut f, h, data),
            DataKind::End => self.end(&mut f, h),
        }
    }

    fn open(&self, f: &mut RecvFile) -> Result<(), Fail> {
        if f.file.is_none() {
            let (file, fresh) = fsops::open_temp(&f.temp, f.progress.size())
                .map_err(|e| io_fail(&format!("cannot create {}", f.temp.display()), &e))?;
            f.file = Some(file);
            f.fresh = fresh;
        }
        Ok(())
    }

    fn chunk(&self, f: &mut RecvFile, h: DataHeader, data: Option<&[u8]>) -> Result<(), Fail> {
        let index = u64::from(h.index);
        f.progress.check_header(index, h.len).map_err(protocol)?;
        if f.placed.take().is_some() {
            // The sender disagrees with what we found in place: that file is not ours.
            // Receive this one afresh under a free name.
            self.bytes
                .fetch_sub(f.progress.verified_bytes(), Ordering::Relaxed);
            f.progress = FileProgress::new(f.progress.size(), self.chunk);
            let _ = self.store.forget_chunks(self.rowid, &[], &[h.entry]);
        }
        self.open(f)?;
        let bytes: &[u8] = match (data, h.kind) {
            (Some(d), DataKind::Chunk) => d,
            (None, DataKind::Zero) => &self.zeros[..h.len as usize],
            _ => return Err(protocol("record payload does not match its type")),
        };
        if f.progress.has(index) {
            return Ok(());
        }
        f.progress
            .verify(index, bytes, &h.hash)
            .map_err(|e| match e {
                ChunkError::Mismatch { .. } => protocol(format!(
                    "{}: {e} (corrupted in transit or by the sender)",
                    f.rel
                )),
                e => protocol(e),
            })?;
        let offset = f.progress.offset_of(index);
        let file = f.file.as_ref().ok_or_else(|| protocol("no file"))?;
        let write = match h.kind {
            DataKind::Chunk => true,
            // A hole in a fresh file is zeros already; an older file may hold stale bytes.
            _ => {
                !f.fresh && {
                    let mut cur = vec![0u8; h.len as usize];
                    file.read_exact_at(&mut cur, offset).is_err()
                        || cur[..] != self.zeros[..cur.len()]
                }
            }
        };
        if write {
            file.write_all_at(bytes, offset)
                .map_err(|e| io_fail(&format!("cannot write {}", f.temp.display()), &e))?;
        }
        f.unrecorded.push(ChunkRecord {
            entry: h.entry,
            index,
            cv: h.hash,
        });
        f.unrecorded_bytes += u64::from(h.len);
        self.bytes.fetch_add(u64::from(h.len), Ordering::Relaxed);
        if f.unrecorded_bytes >= RECORD_BYTES {
            self.record(f)?;
        }
        Ok(())
    }

    /// Records written chunks as verified (see [`RECORD_BYTES`]).
    fn record(&self, f: &mut RecvFile) -> Result<(), Fail> {
        if f.unrecorded.is_empty() {
            return Ok(());
        }
        self.store
            .record_chunks(self.rowid, &f.unrecorded)
            .map_err(|e| (AbortCode::Io, e.to_string()))?;
        f.unrecorded.clear();
        f.unrecorded_bytes = 0;
        Ok(())
    }

    fn end(&self, f: &mut RecvFile, h: DataHeader) -> Result<(), Fail> {
        let root = match f.progress.finish(&h.hash) {
            Ok(r) => r,
            Err(e @ ChunkError::HashMismatch) => {
                // Refuse the file: its data is gone, a retry fetches it again.
                let _ = std::fs::remove_file(&f.temp);
                let _ = self.store.forget_chunks(self.rowid, &[], &[h.entry]);
                return Err(protocol(format!("{}: {e}; the file was refused", f.rel)));
            }
            Err(e) => return Err(protocol(format!("{}: {e}", f.rel))),
        };
        let fin = match f.placed.clone() {
            Some(p) => p,
            None => {
                self.open(f)?;
                let file = f.file.take().ok_or_else(|| protocol("no file"))?;
                let ctx = |what: &str, e: &std::io::Error| {
                    io_fail(&format!("{what} {}", f.temp.display()), e)
                };
                fsops::set_meta(&file, f.mode, f.mtime)
                    .map_err(|e| ctx("cannot set metadata of", &e))?;
                drop(file);
                fsops::place(&f.temp, &f.dir, &f.name)
                    .map_err(|e| ctx("cannot move into place", &e))?
            }
        };
        tracing::debug!(file = %fin.display(), "received and verified");
        f.unrecorded.clear();
        let batch = {
            let mut p = self.done_pending.lock();
            p.push(h.entry);
            if p.len() >= DONE_BATCH {
                std::mem::take(&mut *p)
            } else {
                Vec::new()
            }
        };
        if !batch.is_empty() {
            self.store
                .files_done(self.rowid, &batch)
                .map_err(|e| (AbortCode::Io, e.to_string()))?;
        }
        f.done = true;
        {
            let mut hs = self.hashes.lock();
            hs.push((f.rel.clone(), root));
        }
        self.files_done.fetch_add(1, Ordering::Relaxed);
        let _ = self.ctrl.send(TransferFrame::FileDone { entry: h.entry });
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.record_done()?;
            let _ = self.ctrl.send(TransferFrame::Complete);
        }
        Ok(())
    }

    /// Records the files placed since the last batch.
    fn record_done(&self) -> Result<(), Fail> {
        let b = self.done_pending.lock().drain(..).collect::<Vec<_>>();
        self.store
            .files_done(self.rowid, &b)
            .map_err(|e| (AbortCode::Io, e.to_string()))
    }

    /// Cancellation: removes every partial file.
    fn discard(&self) {
        for f in self.files.iter().flatten() {
            let mut f = f.lock();
            if !f.done {
                f.file = None;
                let _ = std::fs::remove_file(&f.temp);
            }
        }
    }

    /// Interruption: records what was verified and placed, for the next attempt.
    fn checkpoint(&self) {
        let _ = self.record_done();
        for f in self.files.iter().flatten() {
            let mut f = f.lock();
            if !f.done {
                let _ = self.record(&mut f);
            }
        }
    }
}

/// Final components of an entry: its top-level name replaced by the chosen one.
fn target(components: &[String], names: &HashMap<String, String>) -> Vec<String> {
    let mut c = components.to_vec();
    if let Some(n) = names.get(&c[0]) {
        c[0] = n.clone();
    }
    c
}

struct Prepared {
    files: Vec<Option<Mutex<RecvFile>>>,
    have: Vec<HaveChunk>,
    remaining: u64,
    resumed: u64,
    dirs: Vec<(PathBuf, u32)>,
    placed: Vec<PathBuf>,
}

/// The names the offer's top-level entries take in `dest`, and whether they were chosen by
/// an earlier attempt (which may have left data). A first attempt picks free names, so
/// nothing of it can be on disk yet.
fn top_names(
    store: &Store,
    rowid: i64,
    dest: &Path,
    plan: &Plan,
) -> Result<(HashMap<String, String>, bool), Fail> {
    let mut names = store
        .top_names(rowid)
        .map_err(|e| (AbortCode::Io, e.to_string()))?;
    if !names.is_empty() {
        // The names an earlier attempt chose, for exactly these top-level entries (the
        // manifest is the accepted one); anything else would write under an unchecked name.
        let same =
            names.len() == plan.tops.len() && plan.tops.iter().all(|t| names.contains_key(t));
        if !same {
            return Err((
                AbortCode::Protocol,
                "the offer's top-level names differ from the accepted ones".into(),
            ));
        }
        return Ok((names, true));
    }
    for top in &plan.tops {
        let n = unique_name(top, |n| fsops::exists(&dest.join(n)))
            .ok_or_else(|| (AbortCode::Io, format!("no free name for {top}")))?;
        names.insert(top.clone(), n);
    }
    store
        .set_top_names(rowid, &names)
        .map_err(|e| (AbortCode::Io, e.to_string()))?;
    Ok((names, false))
}

/// Checks the chunks the last attempt recorded against the partial file on disk: the good
/// ones count as verified in `progress`; returns the indexes of the others.
fn reverify(
    file: &File,
    progress: &mut FileProgress,
    recorded: Vec<ChunkRecord>,
    chunk: u32,
    size: u64,
) -> Vec<u64> {
    let mut buf = Vec::new();
    let mut bad = Vec::new();
    for r in recorded {
        let len = progress.len_of(r.index);
        buf.resize(len as usize, 0);
        let ok = len > 0
            && file
                .read_exact_at(&mut buf, progress.offset_of(r.index))
                .is_ok()
            && chunk_cv(&buf, r.index, chunk, size) == r.cv;
        if ok {
            progress.record(r.index, r.cv);
        } else {
            bad.push(r.index);
        }
    }
    bad
}

/// Hashes the file a previous attempt may have put in place at `path` (of the expected
/// size) into `progress`; true if it is whole. Otherwise `progress` starts over.
fn hash_placed(path: &Path, progress: &mut FileProgress, chunk: u32, size: u64) -> bool {
    let Ok(file) = fsops::open_existing(path) else {
        return false;
    };
    if !file.metadata().is_ok_and(|m| m.len() == size) {
        return false;
    }
    let mut buf = Vec::new();
    for index in 0..progress.count() {
        buf.resize(progress.len_of(index) as usize, 0);
        if file
            .read_exact_at(&mut buf, progress.offset_of(index))
            .is_err()
        {
            break;
        }
        progress.record(index, chunk_cv(&buf, index, chunk, size));
    }
    if progress.is_complete() {
        return true;
    }
    *progress = FileProgress::new(size, chunk);
    false
}

/// Creates folders, finds partial data from an earlier attempt and re-verifies it.
fn prepare(
    store: &Store,
    rowid: i64,
    id: &TransferId,
    dest: &Path,
    plan: &Plan,
    entries: &[Entry],
    chunk: u32,
) -> Result<Prepared, Fail> {
    let (names, resuming) = top_names(store, rowid, dest, plan)?;
    let done = store
        .done_files(rowid)
        .map_err(|e| (AbortCode::Io, e.to_string()))?;
    let mut recorded: HashMap<u32, Vec<ChunkRecord>> = HashMap::new();
    for c in store
        .chunks(rowid)
        .map_err(|e| (AbortCode::Io, e.to_string()))?
    {
        recorded.entry(c.entry).or_default().push(c);
    }
    let hex = id.to_string();
    let mut p = Prepared {
        files: Vec::with_capacity(plan.entries.len()),
        have: Vec::new(),
        remaining: 0,
        resumed: 0,
        dirs: Vec::new(),
        placed: (plan.tops.iter())
            .map(|t| dest.join(names.get(t).unwrap_or(t)))
            .collect(),
    };
    let mut bad: Vec<(u32, u64)> = Vec::new();
    let mut wipe: Vec<u32> = Vec::new();
    let mut found: Vec<ChunkRecord> = Vec::new();
    let mut ensured: std::collections::HashSet<Vec<String>> = Default::default();
    for (i, (pe, e)) in plan.entries.iter().zip(entries).enumerate() {
        let comps = target(&pe.components, &names);
        let i = i as u32;
        let (parent, name) = comps.split_at(comps.len() - 1);
        let dir = if ensured.contains(parent) {
            parent.iter().fold(dest.to_path_buf(), |d, c| d.join(c))
        } else {
            let d = fsops::ensure_dirs(dest, parent)
                .map_err(|e| io_fail("cannot create the folder", &e))?;
            ensured.insert(parent.to_vec());
            d
        };
        let EntryKind::File { size } = pe.kind else {
            let d = fsops::ensure_dirs(&dir, name)
                .map_err(|e| io_fail("cannot create the folder", &e))?;
            p.dirs.push((d, pe.mode));
            p.files.push(None);
            continue;
        };
        let mut f = RecvFile {
            rel: e.path.clone(),
            progress: FileProgress::new(size, chunk),
            temp: dir.join(format!(".p2pcall-{}-{i}.part", &hex[..16])),
            dir,
            name: name[0].clone(),
            file: None,
            fresh: false,
            placed: None,
            mode: pe.mode,
            mtime: e.mtime,
            unrecorded: Vec::new(),
            unrecorded_bytes: 0,
            done: done.contains(&i),
        };
        if f.done {
            p.resumed += size;
            p.files.push(None);
            continue;
        }
        p.remaining += 1;
        let fin = f.dir.join(&f.name);
        let recs = recorded.remove(&i).unwrap_or_default();
        if resuming && fsops::exists(&f.temp) {
            match fsops::open_existing(&f.temp) {
                Ok(file) => {
                    for index in reverify(&file, &mut f.progress, recs, chunk, size) {
                        bad.push((i, index));
                    }
                }
                Err(_) => wipe.push(i),
            }
        } else if resuming {
            if !recs.is_empty() {
                wipe.push(i);
            }
            // Placed by the last attempt just before it was interrupted? Offer its hashes;
            // the sender sends the file again if they differ.
            if hash_placed(&fin, &mut f.progress, chunk, size) {
                f.placed = Some(fin);
                found.extend(f.progress.verified().map(|(index, cv)| ChunkRecord {
                    entry: i,
                    index,
                    cv: *cv,
                }));
            }
        }
        for (index, cv) in f.progress.verified() {
            p.have.push(HaveChunk {
                entry: i,
                index: index as u32,
                cv: *cv,
            });
        }
        p.resumed += f.progress.verified_bytes();
        p.files.push(Some(Mutex::new(f)));
    }
    store
        .forget_chunks(rowid, &bad, &wipe)
        .map_err(|e| (AbortCode::Io, e.to_string()))?;
    // Chunks found in place are recorded so that a further interruption keeps them.
    store
        .record_chunks(rowid, &found)
        .map_err(|e| (AbortCode::Io, e.to_string()))?;
    Ok(p)
}

/// Most transfer control streams one peer may have open at once.
const MAX_OFFERS_PER_PEER: usize = 4;

/// One of a peer's [`MAX_OFFERS_PER_PEER`] slots, released when dropped.
struct OfferSlot {
    svc: Arc<Transfers>,
    peer: PeerId,
}

impl OfferSlot {
    fn take(svc: &Arc<Transfers>, peer: PeerId) -> Option<Self> {
        let mut m = svc.registry.offer_slots.lock();
        let n = m.entry(peer).or_default();
        if *n >= MAX_OFFERS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(Self {
            svc: svc.clone(),
            peer,
        })
    }
}

impl Drop for OfferSlot {
    fn drop(&mut self) {
        let mut m = self.svc.registry.offer_slots.lock();
        if let Some(n) = m.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

/// Serves a transfer control stream the peer opened (kind byte already read): reads the
/// offer, checks it, decides (resume, decline, or ask the user), prepares the destination,
/// then receives.
pub(crate) async fn serve_offer(
    svc: Arc<Transfers>,
    peer: PeerId,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    // A peer may have a few offers open at once (each may hold a 16 MiB manifest).
    let Some(_slot) = OfferSlot::take(&svc, peer) else {
        let _ = send.reset(DATA_REFUSED.into());
        return;
    };
    let mut reader = FrameReader::new(recv, MAX_FRAME);
    let Ok(Ok(TransferFrame::Offer {
        id,
        chunk_size,
        entries,
    })) = reader.next().await.map(TransferFrame::decode)
    else {
        let _ = send.reset(DATA_REFUSED.into());
        return;
    };
    let manifest = p2pcall_transfer::control::manifest_hash(
        peer.as_bytes(),
        id.as_bytes(),
        chunk_size,
        &entries,
    );
    let mut inc = Incoming {
        svc,
        peer,
        id,
        chunk: chunk_size,
        manifest,
        send,
        reader,
    };
    let plan = match sanitize(&entries) {
        Ok(p) => p,
        Err(e) => {
            let reason = format!("unsafe offer refused: {e}");
            tracing::warn!(%peer, "{reason}");
            inc.reply(TransferFrame::Reject {
                reason: reason.clone(),
            })
            .await;
            inc.failed(reason, false);
            return;
        }
    };
    if !inc.supersede_earlier().await {
        let _ = inc.send.reset(DATA_REFUSED.into());
        return;
    }
    let info = offer_info(peer, id, &plan, &entries);
    let Some((rec, dest)) = inc.decide(&plan, info).await else {
        return;
    };
    let Some((dest, p)) = inc.prepare_dest(rec.rowid, dest, &plan, &entries).await else {
        return;
    };
    inc.receive(rec, dest, &plan, p).await;
}

/// What the user is asked about an offer.
fn offer_info(peer: PeerId, id: TransferId, plan: &Plan, entries: &[Entry]) -> OfferInfo {
    OfferInfo {
        peer,
        id,
        files: plan.files,
        dirs: plan.dirs,
        total_bytes: plan.total_bytes,
        tops: plan.tops.clone(),
        sample: entries
            .iter()
            .take(20)
            .map(|e| {
                (
                    e.path.clone(),
                    match e.kind {
                        EntryKind::File { size } => Some(size),
                        EntryKind::Dir => None,
                    },
                )
            })
            .collect(),
    }
}

/// An offer being served: its control stream and who it is from.
struct Incoming {
    svc: Arc<Transfers>,
    peer: PeerId,
    id: TransferId,
    chunk: u32,
    /// What this offer holds ([`p2pcall_transfer::control::manifest_hash`]).
    manifest: [u8; 32],
    send: quinn::SendStream,
    reader: FrameReader<quinn::RecvStream>,
}

impl Incoming {
    /// Reports the transfer failed (or stopped, if `resumable`).
    fn failed(&self, reason: String, resumable: bool) {
        emit(
            &self.svc,
            TransferEvent::Failed {
                peer: self.peer,
                id: self.id,
                outgoing: false,
                reason,
                resumable,
            },
        );
    }

    /// Sends a final answer (a rejection, an abort) and closes our side.
    async fn reply(&mut self, f: TransferFrame) {
        let _ = self.send.write_all(&encode(&f)).await;
        let _ = self.send.finish();
    }

    /// A retry while the last attempt still looks alive (its connection not yet timed out):
    /// stops that attempt (its verified chunks are kept) and waits until it is gone; false if
    /// it did not go within 10 s.
    async fn supersede_earlier(&self) -> bool {
        let key = (self.peer, self.id);
        let t = &self.svc.registry;
        if let Some(tx) = t.cancels.lock().get(&(key, false))
            && t.receiving.lock().contains_key(&key)
        {
            tx.send_replace(Some(super::SUPERSEDED.into()));
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let gone = t.ended.notified();
                if !t.receiving.lock().contains_key(&key) {
                    return;
                }
                gone.await;
            }
        })
        .await
        .is_ok()
    }

    /// Resumes an accepted transfer, declines one received before, or asks the user; the
    /// transfer's record and the destination when it goes ahead.
    async fn decide(
        &mut self,
        plan: &Plan,
        info: OfferInfo,
    ) -> Option<(p2pcall_store::TransferRecord, PathBuf)> {
        let (peer, id, manifest) = (self.peer, self.id, self.manifest);
        let lookup = move |s: &Store| s.transfer(&peer, false, &id);
        let recorded = move |s: &Store| -> Result<_, p2pcall_store::StoreError> {
            let Some(t) = s.transfer(&peer, false, &id)? else {
                return Ok(None);
            };
            let m = s.transfer_manifest(t.rowid)?;
            Ok(Some((t, m)))
        };
        let existing = self.svc.ctx.db(recorded).await.ok().flatten();
        // Only the very offer the user accepted resumes (or counts as received): a sender
        // that changed anything under the same id asks again.
        let earlier = match &existing {
            None => Earlier::None,
            Some((t, m)) if *m != Some(manifest) && t.state != TransferState::Offered => {
                Earlier::Changed
            }
            Some((t, _)) if t.state == TransferState::Active && t.dest.is_some() => {
                Earlier::AcceptedUnfinished
            }
            Some((t, _)) if t.state == TransferState::Done => Earlier::Done,
            Some(_) => Earlier::Other,
        };
        let decision = match offer_action(earlier) {
            OfferAction::Resume => {
                emit(&self.svc, TransferEvent::Resumed(info));
                Decision::Accept(existing.and_then(|(t, _)| t.dest).unwrap_or_default())
            }
            OfferAction::AlreadyDone => {
                Decision::Reject("this transfer was already received completely".into())
            }
            OfferAction::Ask => self.ask(plan, info).await?,
            OfferAction::Restart => {
                let rowid = existing.map(|(t, _)| t.rowid).unwrap_or_default();
                tracing::info!(%peer, %id, "an offer changed since the last attempt: asking again");
                // The earlier attempt's partial files go with it.
                let restarted = (self.svc.ctx)
                    .db(move |s| -> Result<(), crate::EngineError> {
                        super::partials::clean(s, |r| r.rowid == rowid)?;
                        Ok(s.restart_transfer(rowid, now_ms())?)
                    })
                    .await;
                if restarted.is_err() {
                    let _ = self.send.reset(DATA_REFUSED.into());
                    return None;
                }
                self.ask(plan, info).await?
            }
        };
        let Ok(Some(rec)) = self.svc.ctx.db(lookup).await else {
            let _ = self.send.reset(DATA_REFUSED.into());
            return None;
        };
        match decision {
            Decision::Accept(dest) => Some((rec, dest)),
            Decision::Reject(reason) => {
                if rec.state != TransferState::Done {
                    let (rowid, why) = (rec.rowid, Some(reason.clone()));
                    let _ = set_state(&self.svc, rowid, TransferState::Rejected, why).await;
                }
                self.reply(TransferFrame::Reject {
                    reason: reason.clone(),
                })
                .await;
                self.failed(format!("declined: {reason}"), false);
                None
            }
        }
    }

    /// Records the offer and waits for the user's answer (or for the sender to withdraw).
    async fn ask(&mut self, plan: &Plan, info: OfferInfo) -> Option<Decision> {
        let (peer, id) = (self.peer, self.id);
        let (total, files) = (plan.total_bytes, plan.files);
        let manifest = self.manifest;
        let created = (self.svc.ctx)
            .db(move |s| {
                let t = s.create_transfer(&peer, false, &id, total, files, &[], None, now_ms())?;
                s.set_transfer_manifest(t.rowid, &manifest)
            })
            .await;
        if created.is_err() {
            let _ = self.send.reset(DATA_REFUSED.into());
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.svc.registry.offers.lock().insert((peer, id), tx);
        emit(&self.svc, TransferEvent::Offered(info));
        let d = tokio::select! {
            d = rx => d.ok(),
            // The sender gave up (closed or aborted) before we answered.
            _ = self.reader.next() => None,
        };
        self.svc.registry.offers.lock().remove(&(peer, id));
        if d.is_none() {
            let lookup = move |s: &Store| s.transfer(&peer, false, &id);
            if let Ok(Some(t)) = self.svc.ctx.db(lookup).await {
                let why = Some("withdrawn".to_string());
                let _ = set_state(&self.svc, t.rowid, TransferState::Cancelled, why).await;
            }
            self.failed("the sender withdrew the offer".into(), false);
        }
        d
    }

    /// Folders, free space, partial data of an earlier attempt (on a blocking thread); the
    /// sender hears why when the destination cannot take the transfer.
    async fn prepare_dest(
        &mut self,
        rowid: i64,
        dest: PathBuf,
        plan: &Plan,
        entries: &[Entry],
    ) -> Option<(PathBuf, Prepared)> {
        let store = self.svc.ctx.store.clone();
        let (id, chunk) = (self.id, self.chunk);
        let (mut plan2, entries) = (plan.clone(), entries.to_vec());
        // No received file is executable unless the user chose to keep execute bits.
        if !self.svc.keep_exec {
            for e in &mut plan2.entries {
                if matches!(e.kind, EntryKind::File { .. }) {
                    e.mode = p2pcall_transfer::without_exec(e.mode);
                }
            }
        }
        let prepared = tokio::task::spawn_blocking(move || -> Result<(PathBuf, Prepared), Fail> {
            std::fs::create_dir_all(&dest)
                .map_err(|e| io_fail(&format!("cannot create {}", dest.display()), &e))?;
            let dest = dest
                .canonicalize()
                .map_err(|e| io_fail(&format!("cannot open {}", dest.display()), &e))?;
            let p = prepare(&store, rowid, &id, &dest, &plan2, &entries, chunk)?;
            let need = plan2.total_bytes.saturating_sub(p.resumed);
            let free =
                fsops::free_space(&dest).map_err(|e| io_fail("cannot check free space", &e))?;
            if need > free {
                return Err((
                    AbortCode::DiskFull,
                    format!(
                        "not enough space in {}: {need} bytes needed, {free} free",
                        dest.display()
                    ),
                ));
            }
            Ok((dest, p))
        })
        .await
        .unwrap_or_else(|e| Err((AbortCode::Io, e.to_string())));
        match prepared {
            Ok(x) => Some(x),
            Err((code, reason)) => {
                let why = Some(reason.clone());
                let _ = set_state(&self.svc, rowid, TransferState::Failed, why).await;
                self.reply(TransferFrame::Abort {
                    code,
                    reason: reason.clone(),
                })
                .await;
                self.failed(reason, false);
                None
            }
        }
    }

    /// Receives into `dest` until the transfer ends, then records how it ended.
    async fn receive(
        mut self,
        rec: p2pcall_store::TransferRecord,
        dest: PathBuf,
        plan: &Plan,
        p: Prepared,
    ) {
        let Self {
            ref svc,
            peer,
            id,
            chunk,
            ..
        } = self;
        let store = svc.ctx.store.clone();
        let key = (peer, id);
        let send = &mut self.send;
        let reader = &mut self.reader;
        let (rowid, d) = (rec.rowid, dest.clone());
        let _ = svc.ctx.db(move |s| s.set_transfer_dest(rowid, &d)).await;
        let _ = set_state(svc, rowid, TransferState::Active, None).await;

        let (ctrl, mut ctrl_rx) = mpsc::unbounded_channel();
        let resumed = p.resumed;
        let files_total = plan.files;
        let rx = Arc::new(Receiving {
            rowid: rec.rowid,
            chunk,
            files: p.files,
            store: store.clone(),
            ctrl: ctrl.clone(),
            remaining: AtomicU64::new(p.remaining),
            files_done: AtomicU64::new(plan.files - p.remaining),
            bytes: AtomicU64::new(resumed),
            zeros: vec![0u8; chunk as usize],
            hashes: Mutex::new(Vec::new()),
            failed: Mutex::new(None),
            done_pending: Mutex::new(Vec::new()),
        });
        {
            let mut m = svc.registry.receiving.lock();
            m.insert(key, rx.clone());
        }
        let cancel = svc.registry.cancel_rx(key, false);
        let t0 = Instant::now();
        let mut ctl = ReceiverControl::accepted(t0, p.have, PROGRESS_EVERY);
        if p.remaining == 0 {
            ctl.complete();
        }
        let mut meter = Meter::new(t0, plan.total_bytes, resumed);
        let mut last = resumed;
        let progress = |meter: &mut Meter, last: &mut u64| {
            let b = rx.bytes.load(Ordering::Relaxed);
            meter.add(Instant::now(), b.saturating_sub(*last));
            *last = b;
            emit(
                svc,
                TransferEvent::Progress(Progress {
                    peer,
                    id,
                    outgoing: false,
                    done_bytes: meter.done(),
                    total_bytes: plan.total_bytes,
                    files_done: rx.files_done.load(Ordering::Relaxed),
                    files: files_total,
                    rate: meter.rate(),
                    eta: meter.eta(),
                }),
            );
        };
        let ending = drive_receiver(&mut ctl, send, reader, &mut ctrl_rx, cancel, || {
            progress(&mut meter, &mut last)
        })
        .await;
        let _ = send.finish();
        {
            let mut f = rx.failed.lock();
            if f.is_none() {
                *f = Some(match &ending.failure {
                    None => (AbortCode::Io, "finished".into()),
                    Some(failure) => (failure.code(), failure.reason().to_string()),
                });
            }
        }
        let summary = Summary {
            peer,
            id,
            outgoing: false,
            files: plan.files,
            dirs: plan.dirs,
            total_bytes: plan.total_bytes,
            resumed_bytes: resumed,
            elapsed: t0.elapsed(),
            placed: p.placed,
            skipped: Vec::new(),
            hashes: Vec::new(),
        };
        conclude(svc, rx, rec.rowid, ending, p.dirs, summary).await;
        svc.registry.drop_cancel(key, false);
        svc.registry.receiving.lock().remove(&key);
        svc.registry.ended.notify_waiters();
    }
}

/// Records how a receive ended. Done: folder modes set, state done, `Finished` (with
/// `summary` and the files' hashes). Otherwise the verified chunks are kept (resumable) or
/// the partial data removed, and `Failed`.
async fn conclude(
    svc: &Transfers,
    rx: Arc<Receiving>,
    rowid: i64,
    ending: Ending,
    dirs: Vec<(PathBuf, u32)>,
    mut summary: Summary,
) {
    match (ending.disposition, ending.failure) {
        (Disposition::Done, _) | (_, None) => {
            let _ = tokio::task::spawn_blocking(move || {
                // Folder modes last (a read-only folder would have blocked its content).
                for (d, mode) in dirs.iter().rev() {
                    let _ = fsops::set_dir_mode(d, *mode);
                }
            })
            .await;
            let _ = set_state(svc, rowid, TransferState::Done, None).await;
            summary.hashes = rx.hashes.lock().clone();
            summary.hashes.sort();
            emit(svc, TransferEvent::Finished(summary));
        }
        (disposition, Some(failure)) => {
            let resumable = disposition == Disposition::Resumable;
            let state = match disposition {
                Disposition::Resumable => TransferState::Active,
                Disposition::Cancelled => TransferState::Cancelled,
                _ => TransferState::Failed,
            };
            let _ = tokio::task::spawn_blocking(move || {
                if resumable {
                    rx.checkpoint()
                } else {
                    rx.discard()
                }
            })
            .await;
            let reason = failure.reason().to_string();
            let _ = set_state(svc, rowid, state, Some(reason.clone())).await;
            emit(
                svc,
                TransferEvent::Failed {
                    peer: summary.peer,
                    id: summary.id,
                    outgoing: false,
                    reason,
                    resumable,
                },
            );
        }
    }
}

/// Moves bytes for the receiver's control machine until the transfer ends: frames it queues go
/// to the sender; the sender's frames, the data side's reports, stops and progress ticks go in.
async fn drive_receiver(
    ctl: &mut ReceiverControl,
    send: &mut quinn::SendStream,
    reader: &mut FrameReader<quinn::RecvStream>,
    data: &mut mpsc::UnboundedReceiver<TransferFrame>,
    mut cancel: watch::Receiver<Option<String>>,
    mut progress: impl FnMut(),
) -> Ending {
    loop {
        while let Some(f) = ctl.poll_transmit() {
            if send.write_all(&encode(&f)).await.is_err() {
                // After `Complete` the files are in place; the sender learns on its retry.
                ctl.handle_stream_error("the connection closed");
            }
        }
        while let Some(e) = ctl.poll_event() {
            match e {
                ControlEvent::Progress => progress(),
                ControlEvent::Ended(end) => return end,
                ControlEvent::Accepted { .. } | ControlEvent::FileDone { .. } => {}
            }
        }
        let wake = ctl
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + PROGRESS_EVERY);
        tokio::select! {
            f = data.recv() => match f {
                Some(TransferFrame::Complete) => ctl.complete(),
                Some(TransferFrame::FileDone { entry }) => ctl.file_done(entry),
                Some(TransferFrame::Abort { code, reason }) => ctl.data_failed(code, reason),
                Some(_) => {}
                None => ctl.data_failed(AbortCode::Io, "internal channel closed".into()),
            },
            f = reader.next() => match f {
                Ok(raw) => ctl.handle_frame(TransferFrame::decode(raw)),
                Err(e) => ctl.handle_stream_error(&e.to_string()),
            },
            _ = cancel.changed() => {
                let why = cancel.borrow().clone();
                ctl.stop(match why.as_deref() {
                    Some(super::SUPERSEDED) => Stop::Superseded,
                    Some(super::INTERRUPTED) => Stop::Interrupt,
                    _ => Stop::Cancel,
                });
            }
            () = tokio::time::sleep_until(wake.into()) => ctl.handle_timeout(Instant::now()),
        }
    }
}

/// Serves a data stream (kind byte already read).
pub(crate) async fn serve_data(svc: Arc<Transfers>, peer: PeerId, mut recv: quinn::RecvStream) {
    let mut id = [0u8; 16];
    if recv.read_exact(&mut id).await.is_err() {
        return;
    }
    let Some(rx) = svc
        .registry
        .receiving
        .lock()
        .get(&(peer, TransferId::from_bytes(id)))
        .cloned()
    else {
        let _ = recv.stop(DATA_REFUSED.into());
        return;
    };
    // Records are applied on a blocking thread while the next ones are read.
    let (tx, mut work) = mpsc::channel::<(DataHeader, Option<Vec<u8>>)>(4);
    let rx2 = rx.clone();
    let pool = super::Pool::default();
    let pool2 = pool.clone();
    let writer = tokio::task::spawn_blocking(move || {
        while let Some((h, data)) = work.blocking_recv() {
            let r = rx2.apply(h, data.as_deref());
            if let Some(d) = data {
                pool2.put(d);
            }
            if let Err(f) = r {
                rx2.fail(f);
                return;
            }
        }
    });
    let mut head = [0u8; DATA_HEADER_LEN];
    loop {
        match recv.read_exact(&mut head).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => break,
            Err(_) => break,
        }
        let h = match DataHeader::decode(&head) {
            Ok(h) => h,
            Err(e) => {
                rx.fail(protocol(e));
                break;
            }
        };
        let data = if h.kind == DataKind::Chunk {
            if h.len > rx.chunk {
                rx.fail(protocol(format!(
                    "a chunk of {} bytes exceeds the chunk size",
                    h.len
                )));
                break;
            }
            let mut buf = pool.take(h.len as usize);
            if recv.read_exact(&mut buf).await.is_err() {
                break;
            }
            Some(buf)
        } else {
            if h.kind == DataKind::Zero && h.len > rx.chunk {
                rx.fail(protocol("a zero chunk exceeds the chunk size"));
                break;
            }
            None
        };
        if tx.send((h, data)).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
    if rx.failed.lock().is_some() {
        let _ = recv.stop(DATA_REFUSED.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_renames_only_the_top() {
        let names = HashMap::from([("a".to_string(), "a (1)".to_string())]);
        assert_eq!(target(&["a".into(), "b".into()], &names), ["a (1)", "b"]);
        assert_eq!(target(&["c".into()], &names), ["c"]);
    }
}
