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

/// Events buffered between producers and a slow front end before superseded kinds are
/// dropped.
pub const SHED_BACKLOG: usize = 4096;
/// Capacity of the channel the front end reads.
const OUT_CAPACITY: usize = 1024;

/// An event a later one of the same kind may make redundant.
pub(crate) trait Event: Send + 'static {
    /// Whether a later event of the same kind supersedes this one (progress, statistics).
    fn superseded_later(&self) -> bool;
}

/// Where engine events go; cheap to clone.
#[derive(Debug)]
pub(crate) struct EventSink<E> {
    tx: mpsc::UnboundedSender<E>,
    backlog: Arc<AtomicUsize>,
    shed: Arc<AtomicU64>,
}

impl<E> Clone for EventSink<E> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            backlog: self.backlog.clone(),
            shed: self.shed.clone(),
        }
    }
}

/// One service's door into the sink: it emits its own event type, which the sink wraps
/// (`EngineEvent::Chat`, …), so a service needs to know nothing of the others.
pub(crate) struct Emitter<T>(Arc<dyn Fn(T) + Send + Sync>);

impl<T> Emitter<T> {
    /// Queues `e` behind every earlier event of any service; never waits.
    pub(crate) fn emit(&self, e: T) {
        (self.0)(e)
    }
}

impl<T> std::fmt::Debug for Emitter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Emitter")
    }
}

impl<E: Event> EventSink<E> {
    /// A sink and the receiver the front end drains (its forwarder task is spawned here).
    pub(crate) fn new() -> (Self, mpsc::Receiver<E>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<E>();
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
    pub(crate) fn emit(&self, e: E) {
        if e.superseded_later() && self.backlog.load(Ordering::Acquire) >= SHED_BACKLOG {
            self.shed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.backlog.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(e).is_err() {
            self.backlog.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// An emitter for one service's events, wrapped by `wrap`.
    pub(crate) fn emitter<T: 'static>(&self, wrap: fn(T) -> E) -> Emitter<T> {
        let sink = self.clone();
        Emitter(Arc::new(move |e| sink.emit(wrap(e))))
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

    #[derive(Debug)]
    enum Ev {
        News(u8),
        Progress,
    }

    impl Event for Ev {
        fn superseded_later(&self) -> bool {
            matches!(self, Ev::Progress)
        }
    }

    fn id_of(e: &Ev) -> Option<u8> {
        match e {
            Ev::News(n) => Some(*n),
            Ev::Progress => None,
        }
    }

    #[tokio::test]
    async fn events_arrive_in_order_even_when_the_reader_is_behind() {
        let (sink, mut rx) = EventSink::new();
        let news = sink.emitter(Ev::News);
        // Far more than the output channel holds, with nobody reading yet, from the sink
        // and from an emitter in turn.
        for n in 0..=250u8 {
            for k in 0..10 {
                if k % 2 == 0 {
                    sink.emit(Ev::News(n));
                } else {
                    news.emit(n);
                }
            }
        }
        let mut last = 0;
        for _ in 0..2510 {
            let e = rx.recv().await.expect("event");
            let n = id_of(&e).expect("news");
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
            sink.emit(Ev::News(1));
        }
        // Let the forwarder move what fits into the output channel.
        tokio::task::yield_now().await;
        for _ in 0..100 {
            sink.emit(Ev::Progress);
        }
        sink.emit(Ev::News(2));
        assert_eq!(sink.shed(), 100);
        let mut news = 0;
        let mut saw_last = false;
        while let Ok(Some(e)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), rx.recv()).await
        {
            assert!(id_of(&e).is_some(), "only news: {e:?}");
            news += 1;
            saw_last = id_of(&e) == Some(2);
        }
        assert_eq!(news, OUT_CAPACITY + SHED_BACKLOG + 11);
        assert!(saw_last, "the last event arrives last");
    }
}
