//! The sending side of a transfer.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use p2pcall_net::PeerConnection;
use p2pcall_proto::PeerId;
use p2pcall_proto::transfer::{
    AbortCode, DataHeader, DataKind, EntryKind, HaveChunk, MAX_FRAME, TransferFrame, TransferId,
};
use p2pcall_store::{TransferState, now_ms};
use p2pcall_transfer::control::{ControlEvent, Disposition, Ending, Failure, SenderControl, Stop};
use p2pcall_transfer::{Cv, Meter, chunk_count, chunk_cv, chunk_len, file_hash};
use p2pcall_transport::framed::FrameReader;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::{
    CHUNK_SIZE, DATA, DATA_STREAMS, OFFER, PROGRESS_EVERY, Progress, Summary, TransferEvent, emit,
    encode, fsops,
};
use super::{Transfers, set_state};
use crate::error::{EngineError, StreamError};

struct Job {
    entry: u32,
    rel: String,
    source: PathBuf,
    size: u64,
    have: HashMap<u64, Cv>,
}

/// Counters shared by the workers.
#[derive(Default)]
struct Counters {
    bytes: AtomicU64,
    resumed: AtomicU64,
    files_done: AtomicU64,
}

/// Removes the transfer from the "being sent" set when dropped.
struct Sending<'a> {
    svc: &'a Transfers,
    key: (PeerId, TransferId),
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        let t = &self.svc.registry;
        t.sending.lock().remove(&self.key);
        t.drop_cancel(self.key, true);
        t.ended.notify_waiters();
    }
}

fn io_err(e: impl Into<StreamError>) -> EngineError {
    EngineError::Stream(e.into())
}

pub(super) async fn send_files(
    svc: &Transfers,
    peer: PeerId,
    paths: &[PathBuf],
) -> Result<Summary, EngineError> {
    let paths: Vec<PathBuf> = paths
        .iter()
        .map(|p| {
            std::path::absolute(p).map_err(|source| EngineError::Source {
                path: p.clone(),
                source,
            })
        })
        .collect::<Result<_, _>>()?;
    let scan = {
        let paths = paths.clone();
        tokio::task::spawn_blocking(move || fsops::scan(&paths))
            .await
            .map_err(io_err)?
            .map_err(|(path, source)| EngineError::Source { path, source })?
    };
    if scan.entries.is_empty() {
        return Err(EngineError::NothingToSend(
            "only symlinks or special files were given".into(),
        ));
    }
    let open = svc.ctx.db(move |s| s.open_outgoing(Some(&peer))).await?;
    let id: TransferId = (open.into_iter())
        .find(|t| t.sources == paths)
        .map_or_else(|| TransferId::from_bytes(rand::random()), |t| t.id);
    let key = (peer, id);
    // The same transfer already running here (e.g. resumed when the peer came back): wait
    // for its outcome instead of sending it twice.
    let (tx, running) = {
        let mut m = svc.registry.sending.lock();
        match m.get(&key) {
            Some(rx) => (None, Some(rx.clone())),
            None => {
                let (tx, rx) = watch::channel(None);
                m.insert(key, rx);
                (Some(tx), None)
            }
        }
    };
    if let Some(mut rx) = running {
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| StreamError::Ended("the running transfer vanished".into()))?
            .clone();
        return outcome
            .unwrap_or(Outcome::Other("no outcome".into()))
            .into();
    }
    let _guard = Sending { svc, key };
    let r = send_inner(svc, peer, paths, scan, id).await;
    if let Some(tx) = tx {
        tx.send_replace(Some(Outcome::of(&r)));
    }
    r
}

/// How a send ended, for other callers waiting on the same transfer.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Done(Box<Summary>),
    Rejected(String),
    Aborted(AbortCode, String),
    Other(String),
}

impl Outcome {
    fn of(r: &Result<Summary, EngineError>) -> Self {
        match r {
            Ok(s) => Self::Done(Box::new(s.clone())),
            Err(EngineError::Rejected(r)) => Self::Rejected(r.clone()),
            Err(EngineError::Aborted { code, reason }) => Self::Aborted(*code, reason.clone()),
            Err(e) => Self::Other(e.to_string()),
        }
    }
}

impl From<Outcome> for Result<Summary, EngineError> {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Done(s) => Ok(*s),
            Outcome::Rejected(r) => Err(EngineError::Rejected(r)),
            Outcome::Aborted(code, reason) => Err(EngineError::Aborted { code, reason }),
            Outcome::Other(e) => Err(StreamError::Ended(e).into()),
        }
    }
}

async fn send_inner(
    svc: &Transfers,
    peer: PeerId,
    paths: Vec<PathBuf>,
    scan: fsops::Scan,
    id: TransferId,
) -> Result<Summary, EngineError> {
    let key = (peer, id);
    let mut cancel = svc.registry.cancel_rx(key, true);
    let (files, dirs, total) = scan.totals();
    let rec = (svc.ctx)
        .db(move |s| s.create_transfer(&peer, true, &id, total, files, &paths, None, now_ms()))
        .await?;
    let rowid = rec.rowid;

    let conn = svc.ctx.connect(peer).await?;
    let mut ctl = SenderControl::new(id, CHUNK_SIZE, scan.entries.clone(), PROGRESS_EVERY);
    let (mut ctl_stream, mut reader) = open_offer(&conn, &mut ctl).await?;

    // The answer.
    let have = match await_answer(&mut ctl, &mut ctl_stream, &mut reader, &mut cancel).await {
        Ok(have) => have,
        Err(end) => {
            record_failure(svc, rowid, key, &end).await;
            let _ = ctl_stream.finish();
            return Err(engine_error(end));
        }
    };
    set_state(svc, rowid, TransferState::Active, None).await?;

    let jobs = jobs(&scan, have);
    let queue = Arc::new(Mutex::new(VecDeque::from(jobs)));
    let counters = Arc::new(Counters::default());
    let hashes = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    // Set when the transfer stops: each worker resets its stream, so that the data quinn
    // still holds for it (up to the 32 MiB connection window) is dropped rather than sent
    // before the `Abort` frame, which on a slow link took tens of seconds.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..DATA_STREAMS.min(files as usize) {
        // During a call, transfers get what the call's estimate leaves (crate::bulk).
        let gate = svc.bulk.of(conn.peer());
        workers.spawn(data_worker(
            conn.clone(),
            id,
            queue.clone(),
            counters.clone(),
            hashes.clone(),
            gate,
            stop_rx.clone(),
        ));
    }

    let mut meter = Meter::new(t0, total, 0);
    let mut last = 0u64;
    let progress = || {
        let b = counters.bytes.load(Ordering::Relaxed);
        meter.add(Instant::now(), b - last);
        last = b;
        let p = Progress {
            peer,
            id,
            outgoing: true,
            done_bytes: meter.done(),
            total_bytes: total,
            files_done: counters.files_done.load(Ordering::Relaxed),
            files,
            rate: meter.rate(),
            eta: meter.eta(),
        };
        emit(svc, TransferEvent::Progress(p));
    };
    let end = drive_sender(
        &mut ctl,
        &mut reader,
        &mut workers,
        &mut cancel,
        &counters,
        progress,
    )
    .await;
    end_workers(&mut workers, &stop_tx, end.failure.is_some()).await;
    // Tell the receiver why we stopped (an `Abort` the machine queued).
    while let Some(f) = ctl.poll_transmit() {
        let _ = ctl_stream.write_all(&encode(&f)).await;
    }
    let _ = ctl_stream.finish();
    if end.failure.is_some() {
        record_failure(svc, rowid, key, &end).await;
        return Err(engine_error(end));
    }
    set_state(svc, rowid, TransferState::Done, None).await?;
    let mut hashes = hashes.lock().clone();
    hashes.sort();
    let s = Summary {
        peer,
        id,
        outgoing: true,
        files,
        dirs,
        total_bytes: total,
        resumed_bytes: counters.resumed.load(Ordering::Relaxed),
        elapsed: t0.elapsed(),
        placed: Vec::new(),
        skipped: scan.skipped,
        hashes,
    };
    emit(svc, TransferEvent::Finished(s.clone()));
    Ok(s)
}

/// Ends the data workers. A transfer that stopped resets their streams at once; a complete
/// one lets each finish (the receiver has every file: a worker may only still be recording
/// the hash of its last one, which a stop would lose from the summary).
async fn end_workers(
    workers: &mut tokio::task::JoinSet<Result<(), EngineError>>,
    stop: &watch::Sender<bool>,
    stopped: bool,
) {
    if stopped {
        stop.send_replace(true);
    }
    let _ = tokio::time::timeout(STOP_WAIT, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    workers.abort_all();
}

/// Opens the transfer's control stream and sends the offer the machine queued.
async fn open_offer(
    conn: &PeerConnection,
    ctl: &mut SenderControl,
) -> Result<(quinn::SendStream, FrameReader<quinn::RecvStream>), EngineError> {
    let (mut send, recv) = conn
        .quic()
        .open_bi()
        .await
        .map_err(|e| EngineError::Net(e.into()))?;
    let mut offer = vec![OFFER];
    if let Some(f) = ctl.poll_transmit() {
        f.encode(&mut offer);
    }
    send.write_all(&offer).await.map_err(io_err)?;
    Ok((send, FrameReader::new(recv, MAX_FRAME)))
}

/// Records a transfer that stopped (state and reason) and reports it.
async fn record_failure(
    svc: &Transfers,
    rowid: i64,
    (peer, id): (PeerId, TransferId),
    end: &Ending,
) {
    let Some(failure) = &end.failure else { return };
    let (state, resumable) = match end.disposition {
        Disposition::StillOffered => (TransferState::Offered, true),
        Disposition::Resumable => (TransferState::Active, true),
        Disposition::Cancelled => (TransferState::Cancelled, false),
        Disposition::Rejected => (TransferState::Rejected, false),
        Disposition::Failed | Disposition::Done => (TransferState::Failed, false),
    };
    let reason = failure.reason().to_string();
    let _ = set_state(svc, rowid, state, Some(reason.clone())).await;
    emit(
        svc,
        TransferEvent::Failed {
            peer,
            id,
            outgoing: true,
            reason,
            resumable,
        },
    );
}

/// Every file's job: what the receiver lacks of it (`have`: the chunks it holds), largest
/// files first.
fn jobs(scan: &fsops::Scan, have: Vec<HaveChunk>) -> Vec<Job> {
    let mut by_entry: HashMap<u32, HashMap<u64, Cv>> = HashMap::new();
    for c in have {
        by_entry
            .entry(c.entry)
            .or_default()
            .insert(u64::from(c.index), c.cv);
    }
    let mut jobs: Vec<Job> = scan
        .entries
        .iter()
        .zip(&scan.sources)
        .enumerate()
        .filter_map(|(i, (e, src))| match e.kind {
            EntryKind::File { size } => Some(Job {
                entry: i as u32,
                rel: e.path.clone(),
                source: src.clone(),
                size,
                have: by_entry.remove(&(i as u32)).unwrap_or_default(),
            }),
            EntryKind::Dir => None,
        })
        .collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(j.size));
    jobs
}

/// One data stream: takes jobs from the queue until it is empty or the transfer stops
/// (`stop`), then finishes the stream, or resets it when stopped or failed.
async fn data_worker(
    conn: p2pcall_net::PeerConnection,
    id: TransferId,
    queue: Arc<Mutex<VecDeque<Job>>>,
    counters: Arc<Counters>,
    hashes: Arc<Mutex<Vec<(String, Cv)>>>,
    gate: Arc<crate::bulk::BulkGate>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), EngineError> {
    let _writer = gate.writer();
    let mut s = conn
        .quic()
        .open_uni()
        .await
        .map_err(|e| EngineError::Net(e.into()))?;
    let sent = {
        let work = async {
            let mut head = vec![DATA];
            head.extend_from_slice(id.as_bytes());
            s.write_all(&head).await.map_err(io_err)?;
            let pool = super::Pool::default();
            // The queue's lock is taken and released in `next_job`, never held across the
            // writes below.
            let next_job = || queue.lock().pop_front();
            while let Some(job) = next_job() {
                let (rel, root) = send_file(job, &mut s, &counters, &pool, &gate).await?;
                hashes.lock().push((rel, root));
            }
            Ok::<(), EngineError>(())
        };
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => Some(r),
            _ = stop.wait_for(|s| *s) => None,
        }
    };
    match sent {
        Some(Ok(())) => {
            let _ = s.finish();
            Ok(())
        }
        Some(Err(e)) => {
            let _ = s.reset(DATA_STOPPED.into());
            Err(e)
        }
        None => {
            let _ = s.reset(DATA_STOPPED.into());
            Ok(())
        }
    }
}

/// Moves frames for the sender's control machine while the workers send: the receiver's
/// frames, the workers' results, stops and progress ticks go in, until the transfer ends.
async fn drive_sender(
    ctl: &mut SenderControl,
    reader: &mut FrameReader<quinn::RecvStream>,
    workers: &mut tokio::task::JoinSet<Result<(), EngineError>>,
    cancel: &mut watch::Receiver<Option<String>>,
    counters: &Counters,
    mut progress: impl FnMut(),
) -> Ending {
    let mut workers_done = false;
    loop {
        while let Some(e) = ctl.poll_event() {
            match e {
                ControlEvent::FileDone { .. } => {
                    counters.files_done.fetch_add(1, Ordering::Relaxed);
                }
                ControlEvent::Progress => progress(),
                ControlEvent::Ended(end) => return end,
                ControlEvent::Accepted { .. } => {}
            }
        }
        let wake = ctl
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + PROGRESS_EVERY);
        tokio::select! {
            f = reader.next() => match f {
                Ok(raw) => ctl.handle_frame(Instant::now(), TransferFrame::decode(raw)),
                Err(e) => ctl.handle_stream_error(e.to_string()),
            },
            w = workers.join_next(), if !workers_done => match w {
                None => workers_done = true,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(EngineError::Protocol(e)))) => ctl.data_failed(Failure::Protocol(e)),
                Some(Ok(Err(e))) => ctl.data_failed(Failure::Stream(e.to_string())),
                Some(Err(e)) => ctl.data_failed(Failure::Stream(e.to_string())),
            },
            _ = cancel.changed() => ctl.stop(stop_kind(cancel)),
            () = tokio::time::sleep_until(wake.into()) => ctl.handle_timeout(Instant::now()),
        }
    }
}

/// Waits for the receiver's answer to the offer: what it already holds, or how it ended (a
/// rejection, an abort, a stop here, a lost stream).
async fn await_answer(
    ctl: &mut SenderControl,
    stream: &mut quinn::SendStream,
    reader: &mut FrameReader<quinn::RecvStream>,
    cancel: &mut watch::Receiver<Option<String>>,
) -> Result<Vec<HaveChunk>, Ending> {
    loop {
        while let Some(f) = ctl.poll_transmit() {
            let _ = stream.write_all(&encode(&f)).await;
        }
        while let Some(e) = ctl.poll_event() {
            match e {
                ControlEvent::Accepted { have } => return Ok(have),
                ControlEvent::Ended(end) => return Err(end),
                ControlEvent::FileDone { .. } | ControlEvent::Progress => {}
            }
        }
        tokio::select! {
            f = reader.next() => match f {
                Ok(raw) => ctl.handle_frame(Instant::now(), TransferFrame::decode(raw)),
                Err(e) => ctl.handle_stream_error(e.to_string()),
            },
            _ = cancel.changed() => ctl.stop(stop_kind(cancel)),
        }
    }
}

/// The error a send returns for how it ended.
fn engine_error(end: Ending) -> EngineError {
    match end.failure {
        Some(Failure::Rejected(r)) => EngineError::Rejected(r),
        Some(Failure::Aborted { code, reason }) => EngineError::Aborted { code, reason },
        Some(Failure::Protocol(r)) => EngineError::Protocol(r),
        Some(Failure::Stream(r)) => StreamError::Ended(r).into(),
        None => StreamError::Ended("the transfer ended without an outcome".into()).into(),
    }
}

/// Stream error code of a data stream the sender stopped (interrupted, cancelled, failed).
const DATA_STOPPED: u32 = 4;
/// How long a stopping transfer waits for its data streams to be reset.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the user stopped a transfer: interrupted (resumable) or cancelled.
fn stop_kind(cancel: &watch::Receiver<Option<String>>) -> Stop {
    if cancel.borrow().as_deref() == Some(super::INTERRUPTED) {
        Stop::Interrupt
    } else {
        Stop::Cancel
    }
}

type Item = Result<(DataHeader, Option<Bytes>), std::io::Error>;

/// One chunk of zeros, to recognise holes of sparse files.
static ZEROS: [u8; CHUNK_SIZE as usize] = [0; CHUNK_SIZE as usize];

/// Sends one file's missing chunks and its end record; returns its path and hash.
async fn send_file(
    job: Job,
    s: &mut quinn::SendStream,
    counters: &Arc<Counters>,
    pool: &super::Pool,
    gate: &crate::bulk::BulkGate,
) -> Result<(String, Cv), EngineError> {
    let (tx, mut rx) = mpsc::channel::<Item>(4);
    let rel = job.rel.clone();
    let source = job.source.clone();
    let c2 = counters.clone();
    let pool = pool.clone();
    let producer = tokio::task::spawn_blocking(move || read_chunks(job, &tx, &c2, &pool));
    while let Some(item) = rx.recv().await {
        let (h, data) = item.map_err(|e| EngineError::Source {
            path: source.clone(),
            source: e,
        })?;
        s.write_all(&h.encode()).await.map_err(io_err)?;
        if let Some(mut d) = data {
            while !d.is_empty() {
                let n = gate.acquire(d.len().min(crate::bulk::GATED_WRITE)).await;
                s.write_chunk(d.split_to(n.min(d.len())))
                    .await
                    .map_err(io_err)?;
            }
        }
        counters
            .bytes
            .fetch_add(u64::from(h.len), Ordering::Relaxed);
        if h.kind == DataKind::End {
            let _ = producer.await;
            return Ok((rel, h.hash));
        }
    }
    Err(EngineError::Source {
        path: source,
        source: std::io::Error::other("reading stopped"),
    })
}

/// Reads, hashes and classifies every chunk of a file (on a blocking thread).
fn read_chunks(job: Job, tx: &mpsc::Sender<Item>, counters: &Counters, pool: &super::Pool) {
    let fail = |e: std::io::Error| {
        let _ = tx.blocking_send(Err(e));
    };
    let f = match fsops::open_existing(&job.source) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    match f.metadata() {
        Ok(m) if m.len() == job.size => {}
        Ok(_) => {
            return fail(std::io::Error::other(
                "the file changed size since it was offered",
            ));
        }
        Err(e) => return fail(e),
    }
    let count = chunk_count(job.size, CHUNK_SIZE);
    if count > u64::from(u32::MAX) {
        return fail(std::io::Error::other("the file is too large (over 4 PiB)"));
    }
    let mut cvs = Vec::with_capacity(count as usize);
    for index in 0..count {
        let len = chunk_len(job.size, CHUNK_SIZE, index);
        let mut buf = pool.take(len as usize);
        if let Err(e) = f.read_exact_at(&mut buf, index * u64::from(CHUNK_SIZE)) {
            return fail(e);
        }
        let cv = chunk_cv(&buf, index, CHUNK_SIZE, job.size);
        cvs.push(cv);
        if job.have.get(&index) == Some(&cv) {
            counters.bytes.fetch_add(u64::from(len), Ordering::Relaxed);
            counters
                .resumed
                .fetch_add(u64::from(len), Ordering::Relaxed);
            pool.put(buf);
            continue;
        }
        // Slice equality is a memcmp: fast even in debug builds.
        let zero = buf[..] == ZEROS[..buf.len()];
        let h = DataHeader {
            kind: if zero {
                DataKind::Zero
            } else {
                DataKind::Chunk
            },
            entry: job.entry,
            index: index as u32,
            len,
            hash: cv,
        };
        let data = (!zero).then(|| pool.bytes(buf));
        if tx.blocking_send(Ok((h, data))).is_err() {
            return;
        }
    }
    let end = DataHeader {
        kind: DataKind::End,
        entry: job.entry,
        index: count as u32,
        len: 0,
        hash: file_hash(&cvs),
    };
    let _ = tx.blocking_send(Ok((end, None)));
}
