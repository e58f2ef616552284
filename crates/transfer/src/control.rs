//! The control stream of a transfer, both ends, as sans-IO state machines.
//!
//! A transfer has one control stream (opened by the sender) and data streams. On the control
//! stream the sender offers a manifest; the receiver accepts (listing the chunks it already
//! holds, for a resume), rejects, or aborts; while data flows the receiver reports each file
//! placed (`FileDone`) and finally `Complete`; either side may `Abort` with a code. What the
//! drivers do around it (scanning, reading and writing files, the store) stays in the
//! driver; these machines decide which frame goes out, when progress is due, and how each
//! way of ending leaves the transfer:
//!
//! ```text
//! sender:    Offered --Accept--> Sending --Complete--> Ended(Done)
//!               | Reject, Abort, stop, stream lost        | Abort, stop, worker failed,
//!               +----------------> Ended <-----------------+ stream lost, bad frame
//! receiver:  Receiving --data complete--> Ended(Done)
//!               | sender's Abort, stop, data failed, stream lost, bad frame --> Ended
//! ```
//!
//! Every end carries a [`Disposition`]: finished, resumable (interrupted: the verified
//! chunks stay and the same transfer continues later), cancelled (partial data removed),
//! rejected or failed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use p2pcall_proto::DecodeError;
use p2pcall_proto::transfer::{AbortCode, Entry, HaveChunk, TransferFrame, TransferId};

/// How a transfer stands once it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Every file is in place.
    Done,
    /// Stopped for now: the same transfer resumes from the verified chunks.
    Resumable,
    /// The offer is still open: the same send offers it again under its id.
    StillOffered,
    /// Cancelled: partial data is removed.
    Cancelled,
    /// The receiver declined.
    Rejected,
    /// Failed for good.
    Failed,
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// What the transfer's record becomes.
    pub disposition: Disposition,
    /// Why it ended (`None` when it finished).
    pub failure: Option<Failure>,
}

/// Why a transfer did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The receiver declined, with its reason.
    Rejected(String),
    /// One side aborted with a code.
    Aborted {
        /// Why, in a word.
        code: AbortCode,
        /// Why, for people.
        reason: String,
    },
    /// The other side broke the protocol.
    Protocol(String),
    /// The stream or connection failed.
    Stream(String),
}

impl Failure {
    /// The reason alone, as the side that ended the transfer gave it.
    pub fn reason(&self) -> &str {
        match self {
            Self::Rejected(r) | Self::Protocol(r) | Self::Stream(r) => r,
            Self::Aborted { reason, .. } => reason,
        }
    }

    /// The abort code the ending is recorded with.
    pub fn code(&self) -> AbortCode {
        match self {
            Self::Aborted { code, .. } => *code,
            Self::Protocol(_) => AbortCode::Protocol,
            Self::Rejected(_) => AbortCode::Cancelled,
            Self::Stream(_) => AbortCode::Io,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rejected(r) => write!(f, "declined: {r}"),
            Self::Aborted { code, reason } => write!(f, "{reason} ({code})"),
            Self::Protocol(r) => write!(f, "protocol error: {r}"),
            Self::Stream(r) => write!(f, "the connection failed: {r}"),
        }
    }
}

/// Why the local side stops a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The user cancelled: partial data goes.
    Cancel,
    /// Ctrl-C, shutdown: partial data stays for a resume.
    Interrupt,
    /// A newer attempt of the same transfer took over (receiver only): no frame is sent, the
    /// new attempt talks to the sender.
    Superseded,
}

/// What a driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    /// Sender: the receiver accepted; send every file's chunks but these.
    Accepted {
        /// Chunks the receiver already holds (verified in an earlier attempt).
        have: Vec<HaveChunk>,
    },
    /// Sender: the receiver placed a file.
    FileDone {
        /// The manifest entry.
        entry: u32,
    },
    /// Time to report progress.
    Progress,
    /// The transfer is over; the driver stops its data streams and records the ending.
    Ended(Ending),
}

#[derive(Debug)]
struct Core {
    events: VecDeque<ControlEvent>,
    transmit: VecDeque<TransferFrame>,
    progress_every: Duration,
    next_progress: Option<Instant>,
    ended: bool,
}

impl Core {
    fn new(progress_every: Duration) -> Self {
        Self {
            events: VecDeque::new(),
            transmit: VecDeque::new(),
            progress_every,
            next_progress: None,
            ended: false,
        }
    }

    fn start_progress(&mut self, now: Instant) {
        self.next_progress = Some(now + self.progress_every);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(at) = self.next_progress
            && !self.ended
            && now >= at
        {
            self.next_progress = Some(now + self.progress_every);
            self.events.push_back(ControlEvent::Progress);
        }
    }

    fn end(&mut self, disposition: Disposition, failure: Option<Failure>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.next_progress = None;
        self.events.push_back(ControlEvent::Ended(Ending {
            disposition,
            failure,
        }));
    }

    fn abort(&mut self, code: AbortCode, reason: String) {
        self.transmit
            .push_back(TransferFrame::Abort { code, reason });
    }
}

/// The polling half every control machine shares: frames out, events, timers.
macro_rules! polls {
    () => {
        /// A frame for the other side, if one is due.
        pub fn poll_transmit(&mut self) -> Option<TransferFrame> {
            self.core.transmit.pop_front()
        }

        /// The next thing to do.
        pub fn poll_event(&mut self) -> Option<ControlEvent> {
            self.core.events.pop_front()
        }

        /// When `handle_timeout` is due (progress ticks while data flows).
        pub fn poll_timeout(&self) -> Option<Instant> {
            self.core.next_progress
        }

        /// Time passed.
        pub fn handle_timeout(&mut self, now: Instant) {
            self.core.handle_timeout(now);
        }

        /// Whether the transfer has ended.
        pub fn is_ended(&self) -> bool {
            self.core.ended
        }
    };
}

/// The sender's side of the control stream.
#[derive(Debug)]
pub struct SenderControl {
    core: Core,
    accepted: bool,
}

impl SenderControl {
    /// A transfer offered at `now`: the `Offer` is queued.
    pub fn new(
        id: TransferId,
        chunk_size: u32,
        entries: Vec<Entry>,
        progress_every: Duration,
    ) -> Self {
        let mut core = Core::new(progress_every);
        core.transmit.push_back(TransferFrame::Offer {
            id,
            chunk_size,
            entries,
        });
        Self {
            core,
            accepted: false,
        }
    }

    polls!();

    /// A frame from the receiver (or why it could not be decoded).
    pub fn handle_frame(&mut self, now: Instant, frame: Result<TransferFrame, DecodeError>) {
        if self.core.ended {
            return;
        }
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                return self
                    .core
                    .end(Disposition::Failed, Some(Failure::Protocol(e.to_string())));
            }
        };
        match (self.accepted, frame) {
            (false, TransferFrame::Accept { have }) => {
                self.accepted = true;
                self.core.start_progress(now);
                self.core.events.push_back(ControlEvent::Accepted { have });
            }
            (false, TransferFrame::Reject { reason }) => {
                self.core
                    .end(Disposition::Rejected, Some(Failure::Rejected(reason)));
            }
            (true, TransferFrame::FileDone { entry }) => {
                self.core.events.push_back(ControlEvent::FileDone { entry });
            }
            (true, TransferFrame::Complete) => self.core.end(Disposition::Done, None),
            (accepted, TransferFrame::Abort { code, reason }) => {
                // Before the answer an abort is final (the receiver could not take it); after
                // it, the code says whether the transfer can continue later.
                let disposition = match code {
                    _ if !accepted => Disposition::Failed,
                    AbortCode::Cancelled => Disposition::Cancelled,
                    AbortCode::Protocol => Disposition::Failed,
                    _ => Disposition::Resumable,
                };
                self.core
                    .end(disposition, Some(Failure::Aborted { code, reason }));
            }
            (accepted, other) => {
                let what = if accepted { "frame" } else { "answer" };
                self.core.end(
                    Disposition::Failed,
                    Some(Failure::Protocol(format!(
                        "unexpected {what} {}",
                        frame_name(&other)
                    ))),
                );
            }
        }
    }

    /// The control stream failed or ended before the transfer did.
    pub fn handle_stream_error(&mut self, error: String) {
        let disposition = if self.accepted {
            Disposition::Resumable
        } else {
            Disposition::StillOffered
        };
        self.core.end(disposition, Some(Failure::Stream(error)));
    }

    /// A data stream failed (reading a file, the connection).
    pub fn data_failed(&mut self, failure: Failure) {
        let disposition = match &failure {
            Failure::Protocol(_) => Disposition::Failed,
            _ => Disposition::Resumable,
        };
        self.core.end(disposition, Some(failure));
    }

    /// The user (or shutdown) stops the transfer; the receiver is told why.
    pub fn stop(&mut self, stop: Stop) {
        if self.core.ended {
            return;
        }
        let (code, reason) = match stop {
            Stop::Interrupt => (AbortCode::Interrupted, "interrupted"),
            Stop::Cancel | Stop::Superseded => (AbortCode::Cancelled, "cancelled by the user"),
        };
        let told = if self.accepted {
            reason.to_string()
        } else {
            format!("the sender {reason}")
        };
        self.core.abort(code, told);
        let disposition = match (code, self.accepted) {
            (AbortCode::Interrupted, false) => Disposition::StillOffered,
            (AbortCode::Interrupted, true) => Disposition::Resumable,
            _ => Disposition::Cancelled,
        };
        self.core.end(
            disposition,
            Some(Failure::Aborted {
                code,
                reason: reason.into(),
            }),
        );
    }
}

/// The receiver's side of the control stream, from the moment it accepted the offer.
#[derive(Debug)]
pub struct ReceiverControl {
    core: Core,
}

impl ReceiverControl {
    /// The offer was accepted at `now` holding `have`: `Accept` is queued, progress starts.
    pub fn accepted(now: Instant, have: Vec<HaveChunk>, progress_every: Duration) -> Self {
        let mut core = Core::new(progress_every);
        core.transmit.push_back(TransferFrame::Accept { have });
        core.start_progress(now);
        Self { core }
    }

    polls!();

    /// A frame from the sender (or why it could not be decoded): only `Abort` may come now.
    pub fn handle_frame(&mut self, frame: Result<TransferFrame, DecodeError>) {
        match frame {
            Ok(TransferFrame::Abort { code, reason }) => {
                let disposition = if code == AbortCode::Cancelled {
                    Disposition::Cancelled
                } else {
                    Disposition::Resumable
                };
                self.core.end(
                    disposition,
                    Some(Failure::Aborted {
                        code,
                        reason: format!("the sender stopped: {reason}"),
                    }),
                );
            }
            Ok(_) | Err(_) => self.core.end(
                Disposition::Failed,
                Some(Failure::Protocol("unexpected frame from the sender".into())),
            ),
        }
    }

    /// The control stream failed or ended: the sender went away for now.
    pub fn handle_stream_error(&mut self, error: &str) {
        self.core.end(
            Disposition::Resumable,
            Some(Failure::Stream(format!("interrupted: {error}"))),
        );
    }

    /// The data side placed a file: the sender hears of it.
    pub fn file_done(&mut self, entry: u32) {
        if !self.core.ended {
            self.core
                .transmit
                .push_back(TransferFrame::FileDone { entry });
        }
    }

    /// Every file is in place.
    pub fn complete(&mut self) {
        if !self.core.ended {
            self.core.transmit.push_back(TransferFrame::Complete);
            self.core.end(Disposition::Done, None);
        }
    }

    /// The data side failed (a bad chunk, a full disk): the sender is told why.
    pub fn data_failed(&mut self, code: AbortCode, reason: String) {
        if self.core.ended {
            return;
        }
        self.core.abort(code, reason.clone());
        let disposition = match code {
            AbortCode::Cancelled => Disposition::Cancelled,
            AbortCode::Protocol => Disposition::Failed,
            _ => Disposition::Resumable,
        };
        self.core
            .end(disposition, Some(Failure::Aborted { code, reason }));
    }

    /// The user (or shutdown, or a newer attempt) stops the transfer.
    pub fn stop(&mut self, stop: Stop) {
        if self.core.ended {
            return;
        }
        let (code, reason, disposition) = match stop {
            Stop::Superseded => {
                let reason = "a new attempt of this transfer started".to_string();
                return self.core.end(
                    Disposition::Resumable,
                    Some(Failure::Aborted {
                        code: AbortCode::Io,
                        reason,
                    }),
                );
            }
            Stop::Interrupt => (
                AbortCode::Interrupted,
                "the receiver stopped; sending again resumes",
                Disposition::Resumable,
            ),
            Stop::Cancel => (
                AbortCode::Cancelled,
                "the receiver cancelled",
                Disposition::Cancelled,
            ),
        };
        self.core.abort(code, reason.into());
        self.core.end(
            disposition,
            Some(Failure::Aborted {
                code,
                reason: reason.into(),
            }),
        );
    }
}

fn frame_name(f: &TransferFrame) -> &'static str {
    match f {
        TransferFrame::Offer { .. } => "offer",
        TransferFrame::Accept { .. } => "accept",
        TransferFrame::Reject { .. } => "reject",
        TransferFrame::FileDone { .. } => "file-done",
        TransferFrame::Complete => "complete",
        TransferFrame::Abort { .. } => "abort",
    }
}

/// What the receiver does with an offer, given what it already knows of that transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferAction {
    /// An interrupted transfer we accepted before: continue it without asking.
    Resume,
    /// Received completely before: decline.
    AlreadyDone,
    /// New (or never accepted): ask the user.
    Ask,
    /// An earlier attempt exists for another manifest under the same id: forget it (its
    /// partial data and names) and ask the user about this one.
    Restart,
}

/// What an earlier attempt of an offered transfer left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Earlier {
    /// Nothing: a new transfer.
    None,
    /// Accepted into a folder and stopped before the end.
    AcceptedUnfinished,
    /// Finished.
    Done,
    /// Offered, declined, cancelled or failed.
    Other,
    /// Recorded for a manifest other than the one offered now (or for none: an attempt from
    /// before manifests were recorded), in any state.
    Changed,
}

/// The receiver's decision on an offer.
pub fn offer_action(earlier: Earlier) -> OfferAction {
    match earlier {
        Earlier::AcceptedUnfinished => OfferAction::Resume,
        Earlier::Done => OfferAction::AlreadyDone,
        Earlier::None | Earlier::Other => OfferAction::Ask,
        Earlier::Changed => OfferAction::Restart,
    }
}

/// What binds an accepted offer to its content: the BLAKE3 of the sender's key, the
/// transfer id, the chunk size and every entry (path, kind, size, mode, time), with a
/// context string of its own. A resume goes ahead only for the same hash; a sender that
/// changes anything under the same id makes a new offer the user must accept.
pub fn manifest_hash(
    sender: &[u8; 32],
    id: &[u8; 16],
    chunk_size: u32,
    entries: &[p2pcall_proto::transfer::Entry],
) -> [u8; 32] {
    use p2pcall_proto::transfer::EntryKind;
    let mut h = blake3::Hasher::new_derive_key("p2pcall 2026 transfer manifest v1");
    h.update(sender);
    h.update(id);
    h.update(&chunk_size.to_le_bytes());
    h.update(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        h.update(&(e.path.len() as u64).to_le_bytes());
        h.update(e.path.as_bytes());
        match e.kind {
            EntryKind::Dir => h.update(&[0]),
            EntryKind::File { size } => h.update(&[1]).update(&size.to_le_bytes()),
        };
        h.update(&e.mode.to_le_bytes());
        h.update(&e.mtime.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_millis(200);

    /// An action on a machine and the disposition it must end in.
    type Case<'a, M> = (Box<dyn Fn(&mut M) + 'a>, Disposition);
    /// The same, with the abort code the receiver sends (if any).
    type ReceiverCase<'a> = (
        Box<dyn Fn(&mut ReceiverControl) + 'a>,
        Disposition,
        Option<AbortCode>,
    );

    fn sender() -> SenderControl {
        SenderControl::new(TransferId::from_bytes([7; 16]), 1 << 20, Vec::new(), EVERY)
    }

    fn events(e: impl FnMut() -> Option<ControlEvent>) -> Vec<ControlEvent> {
        std::iter::from_fn(e).collect()
    }

    fn ended(e: &[ControlEvent]) -> Ending {
        match e.last() {
            Some(ControlEvent::Ended(end)) => end.clone(),
            other => panic!("expected an end, got {other:?}"),
        }
    }

    #[test]
    fn the_sender_offers_then_sends_what_the_receiver_lacks_until_complete() {
        let t0 = Instant::now();
        let mut s = sender();
        assert!(matches!(
            s.poll_transmit(),
            Some(TransferFrame::Offer { id, .. }) if id == TransferId::from_bytes([7; 16])
        ));
        assert_eq!(s.poll_timeout(), None, "no progress before the answer");
        let have = vec![HaveChunk {
            entry: 0,
            index: 3,
            cv: [1; 32],
        }];
        s.handle_frame(t0, Ok(TransferFrame::Accept { have: have.clone() }));
        assert_eq!(
            events(|| s.poll_event()),
            vec![ControlEvent::Accepted { have }]
        );
        // Progress every 200 ms on the virtual clock.
        assert_eq!(s.poll_timeout(), Some(t0 + EVERY));
        s.handle_timeout(t0 + EVERY / 2);
        assert!(s.poll_event().is_none());
        s.handle_timeout(t0 + EVERY);
        assert_eq!(s.poll_event(), Some(ControlEvent::Progress));
        s.handle_frame(t0, Ok(TransferFrame::FileDone { entry: 0 }));
        s.handle_frame(t0, Ok(TransferFrame::Complete));
        let e = events(|| s.poll_event());
        assert_eq!(e[0], ControlEvent::FileDone { entry: 0 });
        assert_eq!(
            ended(&e),
            Ending {
                disposition: Disposition::Done,
                failure: None
            }
        );
        assert_eq!(s.poll_timeout(), None);
        assert!(s.poll_transmit().is_none());
    }

    #[test]
    fn a_rejected_offer_ends_with_the_receivers_reason() {
        let mut s = sender();
        s.handle_frame(
            Instant::now(),
            Ok(TransferFrame::Reject {
                reason: "no room".into(),
            }),
        );
        let e = ended(&events(|| s.poll_event()));
        assert_eq!(e.disposition, Disposition::Rejected);
        assert_eq!(e.failure, Some(Failure::Rejected("no room".into())));
    }

    #[test]
    fn a_sender_interrupted_before_the_answer_keeps_the_offer_open() {
        let mut s = sender();
        let _ = s.poll_transmit();
        s.stop(Stop::Interrupt);
        assert_eq!(
            s.poll_transmit(),
            Some(TransferFrame::Abort {
                code: AbortCode::Interrupted,
                reason: "the sender interrupted".into()
            })
        );
        assert_eq!(
            ended(&events(|| s.poll_event())).disposition,
            Disposition::StillOffered
        );
        // Stopping twice, or a late answer, changes nothing.
        s.stop(Stop::Cancel);
        s.handle_frame(Instant::now(), Ok(TransferFrame::Complete));
        assert!(s.poll_event().is_none() && s.poll_transmit().is_none());
    }

    #[test]
    fn how_a_running_send_ends_decides_whether_it_resumes() {
        let t0 = Instant::now();
        let accepted = || {
            let mut s = sender();
            s.handle_frame(t0, Ok(TransferFrame::Accept { have: Vec::new() }));
            let _ = events(|| s.poll_event());
            s
        };
        let cases: Vec<Case<'_, SenderControl>> = vec![
            (
                Box::new(|s| s.stop(Stop::Interrupt)),
                Disposition::Resumable,
            ),
            (Box::new(|s| s.stop(Stop::Cancel)), Disposition::Cancelled),
            (
                Box::new(|s| s.handle_stream_error("reset".into())),
                Disposition::Resumable,
            ),
            (
                Box::new(|s| s.data_failed(Failure::Stream("closed".into()))),
                Disposition::Resumable,
            ),
            (
                Box::new(|s| {
                    s.handle_frame(
                        t0,
                        Ok(TransferFrame::Abort {
                            code: AbortCode::DiskFull,
                            reason: "full".into(),
                        }),
                    )
                }),
                Disposition::Resumable,
            ),
            (
                Box::new(|s| {
                    s.handle_frame(
                        t0,
                        Ok(TransferFrame::Abort {
                            code: AbortCode::Cancelled,
                            reason: "no".into(),
                        }),
                    )
                }),
                Disposition::Cancelled,
            ),
            (
                Box::new(|s| {
                    s.handle_frame(
                        t0,
                        Ok(TransferFrame::Reject {
                            reason: "late".into(),
                        }),
                    )
                }),
                Disposition::Failed,
            ),
            (
                Box::new(|s| s.handle_frame(t0, Err(DecodeError::UnknownFrameType(0x7f)))),
                Disposition::Failed,
            ),
        ];
        for (i, (act, want)) in cases.into_iter().enumerate() {
            let mut s = accepted();
            act(&mut s);
            assert_eq!(
                ended(&events(|| s.poll_event())).disposition,
                want,
                "case {i}"
            );
            assert!(s.is_ended());
        }
    }

    #[test]
    fn the_receiver_reports_files_and_completes() {
        let t0 = Instant::now();
        let mut r = ReceiverControl::accepted(t0, Vec::new(), EVERY);
        assert_eq!(
            r.poll_transmit(),
            Some(TransferFrame::Accept { have: Vec::new() })
        );
        r.file_done(2);
        r.handle_timeout(t0 + EVERY);
        r.complete();
        assert_eq!(
            r.poll_transmit(),
            Some(TransferFrame::FileDone { entry: 2 })
        );
        assert_eq!(r.poll_transmit(), Some(TransferFrame::Complete));
        let e = events(|| r.poll_event());
        assert_eq!(e[0], ControlEvent::Progress);
        assert_eq!(ended(&e).disposition, Disposition::Done);
        // Nothing after the end.
        r.file_done(3);
        r.stop(Stop::Cancel);
        assert!(r.poll_transmit().is_none() && r.poll_event().is_none());
    }

    #[test]
    fn how_a_receive_ends_decides_what_stays_on_disk() {
        let t0 = Instant::now();
        let abort = |code| {
            Ok(TransferFrame::Abort {
                code,
                reason: "why".into(),
            })
        };
        let cases: Vec<ReceiverCase<'_>> = vec![
            (
                Box::new(|r| r.stop(Stop::Cancel)),
                Disposition::Cancelled,
                Some(AbortCode::Cancelled),
            ),
            (
                Box::new(|r| r.stop(Stop::Interrupt)),
                Disposition::Resumable,
                Some(AbortCode::Interrupted),
            ),
            // A newer attempt talks to the sender itself: nothing is sent.
            (
                Box::new(|r| r.stop(Stop::Superseded)),
                Disposition::Resumable,
                None,
            ),
            (
                Box::new(|r| r.data_failed(AbortCode::DiskFull, "full".into())),
                Disposition::Resumable,
                Some(AbortCode::DiskFull),
            ),
            (
                Box::new(|r| r.data_failed(AbortCode::Protocol, "bad chunk".into())),
                Disposition::Failed,
                Some(AbortCode::Protocol),
            ),
            (
                Box::new(move |r| r.handle_frame(abort(AbortCode::Interrupted))),
                Disposition::Resumable,
                None,
            ),
            (
                Box::new(move |r| r.handle_frame(abort(AbortCode::Cancelled))),
                Disposition::Cancelled,
                None,
            ),
            (
                Box::new(|r| r.handle_frame(Ok(TransferFrame::Complete))),
                Disposition::Failed,
                None,
            ),
            (
                Box::new(|r| r.handle_stream_error("reset")),
                Disposition::Resumable,
                None,
            ),
        ];
        for (i, (act, want, told)) in cases.into_iter().enumerate() {
            let mut r = ReceiverControl::accepted(t0, Vec::new(), EVERY);
            let _ = r.poll_transmit();
            act(&mut r);
            let sent = r.poll_transmit();
            assert_eq!(
                sent.as_ref().map(|f| match f {
                    TransferFrame::Abort { code, .. } => Some(*code),
                    _ => None,
                }),
                told.map(Some),
                "case {i}: {sent:?}"
            );
            assert_eq!(
                ended(&events(|| r.poll_event())).disposition,
                want,
                "case {i}"
            );
            assert_eq!(r.poll_timeout(), None);
        }
    }

    #[test]
    fn an_offer_is_resumed_declined_or_asked_by_what_came_before() {
        assert_eq!(
            offer_action(Earlier::AcceptedUnfinished),
            OfferAction::Resume
        );
        assert_eq!(offer_action(Earlier::Done), OfferAction::AlreadyDone);
        assert_eq!(offer_action(Earlier::None), OfferAction::Ask);
        assert_eq!(offer_action(Earlier::Other), OfferAction::Ask);
        assert_eq!(offer_action(Earlier::Changed), OfferAction::Restart);
    }

    #[test]
    fn the_manifest_hash_changes_with_anything_the_user_accepted() {
        use p2pcall_proto::transfer::{Entry, EntryKind};
        let entries = vec![
            Entry {
                path: "photos".into(),
                kind: EntryKind::Dir,
                mode: 0o755,
                mtime: 1,
            },
            Entry {
                path: "photos/a.jpg".into(),
                kind: EntryKind::File { size: 1000 },
                mode: 0o644,
                mtime: 2,
            },
        ];
        let (key, id) = ([1u8; 32], [2u8; 16]);
        let base = manifest_hash(&key, &id, 1 << 20, &entries);
        assert_eq!(base, manifest_hash(&key, &id, 1 << 20, &entries));
        let mut changed = vec![
            manifest_hash(&[3u8; 32], &id, 1 << 20, &entries),
            manifest_hash(&key, &[4u8; 16], 1 << 20, &entries),
            manifest_hash(&key, &id, 1 << 21, &entries),
            manifest_hash(&key, &id, 1 << 20, &entries[..1]),
        ];
        let mut e = entries.clone();
        e[1].path = "photos/b.jpg".into();
        changed.push(manifest_hash(&key, &id, 1 << 20, &e));
        let mut e = entries.clone();
        e[1].kind = EntryKind::File { size: 1001 };
        changed.push(manifest_hash(&key, &id, 1 << 20, &e));
        let mut e = entries.clone();
        e[0].path = "other".into();
        e[1].path = "other/a.jpg".into();
        changed.push(manifest_hash(&key, &id, 1 << 20, &e));
        for (i, c) in changed.iter().enumerate() {
            assert_ne!(*c, base, "change {i}");
        }
    }
}
