//! The one ordered path of engine events to the front end.
//!
//! Every producer (the endpoint pump, chat, transfers, calls) hands its events to
//! [`EventSink::emit`], which never waits: events enter one FIFO and a forwarder task moves
//! them, in that order, into the bounded channel the front end reads. A front end that falls
//! behind makes the FIFO grow; past [`SHED_BACKLOG`] events, the ones a later event of the
//! same kind supersedes (transfer progress, call statistics) are dropped at the door, so a
//! stalled reader costs memory only for events that each carry news.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::engine::EngineEvent;

/// Events buffered between producers and a slow front end before superseded kinds are
/// dropped.
pub const SHED_BACKLOG: usize = 4096;
/// Capacity of the channel the front end reads.
const OUT_CAPACITY: usize = 1024;

/// Where engine events go; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct EventSink {
    tx: mpsc::UnboundedSender<EngineEvent>,
    backlog: Arc<AtomicUsize>,
    shed: Arc<AtomicU64>,
}

/// Whether a later event of the same kind makes this one redundant.
fn superseded_later(e: &EngineEvent) -> bool {
    matches!(
        e,
        EngineEvent::Transfer(crate::transfer::TransferEvent::Progress(_))
            | EngineEvent::Call(crate::call::CallEvent::Stats(_))
    )
}

impl EventSink {
    /// A sink and the receiver the front end drains (its forwarder task is spawned here).
    pub(crate) fn new() -> (Self, mpsc::Receiver<EngineEvent>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<EngineEvent>();
        let (out, out_rx) = mpsc::channel(OUT_CAPACITY);
        let backlog = Arc::new(AtomicUsize::new(0));
        let sink = Self {
            tx,
            backlog: backlog.clone(),
            shed: Arc::default(),
        };
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                backlog.fetch_sub(1, Ordering::AcqRel);
                if out.send(e).await.is_err() {
                    // The front end went away: keep draining so producers never notice.
                    while rx.recv().await.is_some() {
                        backlog.fetch_sub(1, Ordering::AcqRel);
                    }
                    return;
                }
            }
        });
        (sink, out_rx)
    }

    /// Queues an event behind every earlier one; never waits.
    pub(crate) fn emit(&self, e: EngineEvent) {
        if superseded_later(&e) && self.backlog.load(Ordering::Acquire) >= SHED_BACKLOG {
            self.shed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.backlog.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(e).is_err() {
            self.backlog.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Superseded events dropped because the front end fell behind.
    #[cfg(test)]
    pub(crate) fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ChatEvent;
    use crate::transfer::{Progress, TransferEvent};
    use p2pcall_proto::PeerId;

    fn state(n: u8) -> EngineEvent {
        EngineEvent::Chat(ChatEvent::State {
            peer: PeerId::from_bytes([1; 32]),
            id: [n; 16],
            state: p2pcall_store::MessageState::Read,
        })
    }

    fn progress() -> EngineEvent {
        EngineEvent::Transfer(TransferEvent::Progress(Progress {
            peer: PeerId::from_bytes([1; 32]),
            id: [0; 16],
            outgoing: true,
            done_bytes: 1,
            total_bytes: 2,
            files_done: 0,
            files: 1,
            rate: None,
            eta: None,
        }))
    }

    fn id_of(e: &EngineEvent) -> Option<u8> {
        match e {
            EngineEvent::Chat(ChatEvent::State { id, .. }) => Some(id[0]),
            _ => None,
        }
    }

    #[tokio::test]
    async fn events_arrive_in_order_even_when_the_reader_is_behind() {
        let (sink, mut rx) = EventSink::new();
        // Far more than the output channel holds, with nobody reading yet.
        for n in 0..=250u8 {
            for _ in 0..10 {
                sink.emit(state(n));
            }
        }
        let mut last = 0;
        for _ in 0..2510 {
            let e = rx.recv().await.expect("event");
            let n = id_of(&e).expect("a chat event");
            assert!(n >= last, "{n} after {last}");
            last = n;
        }
        assert_eq!(last, 250);
    }

    #[tokio::test]
    async fn a_stalled_reader_sheds_only_superseded_events() {
        let (sink, mut rx) = EventSink::new();
        // Fill the output channel and the backlog with news, then offer progress.
        for _ in 0..(OUT_CAPACITY + SHED_BACKLOG + 10) {
            sink.emit(state(1));
        }
        // Let the forwarder move what fits into the output channel.
        tokio::task::yield_now().await;
        for _ in 0..100 {
            sink.emit(progress());
        }
        sink.emit(state(2));
        assert_eq!(sink.shed(), 100);
        let mut news = 0;
        let mut saw_last = false;
        while let Ok(Some(e)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), rx.recv()).await
        {
            assert!(id_of(&e).is_some(), "only chat events: {e:?}");
            news += 1;
            saw_last = id_of(&e) == Some(2);
        }
        assert_eq!(news, OUT_CAPACITY + SHED_BACKLOG + 11);
        assert!(saw_last, "the last event arrives last");
    }
}
