//! Engine events to the API's subscribers: never waiting for one.

use std::sync::Arc;

use p2pcall_api::video::{self, Side, VideoHeader};
use p2pcall_api::{ErrorKind, Event, RpcError};
use p2pcall_core::PeerId;
use p2pcall_core::call::CallEvent;
use p2pcall_core::call::media::{Picture, VideoTap};
use p2pcall_core::engine::EngineEvent;
use p2pcall_core::transfer::{OfferInfo, TransferEvent};
use p2pcall_proto::id::CallId;
use parking_lot::Mutex;
use tokio::sync::mpsc::{self, error::TrySendError};

/// Events buffered per subscriber; past it, events are dropped and counted, and the
/// subscriber is told how many ([`Event::Lagged`]).
pub const SUBSCRIBER_QUEUE: usize = 1024;

struct Subscriber {
    tx: mpsc::Sender<Event>,
    /// Events dropped since the last one delivered.
    dropped: u64,
}

/// The subscribers of one engine, and the file offers and the call waiting for an answer.
#[derive(Default)]
pub struct Hub {
    subs: Mutex<Vec<Subscriber>>,
    /// Oldest first; an offer leaves when it is answered, withdrawn, or its transfer runs.
    offers: Mutex<Vec<OfferInfo>>,
    /// The incoming call ringing now (until it starts or ends).
    ringing: Mutex<Option<Ringing>>,
    /// Clients that show the calls' video ([`p2pcall_api::Request::VideoFeed`]).
    feeds: Arc<Mutex<Vec<FeedTx>>>,
}

/// Where one video feed's encoded frames go.
type FeedTx = mpsc::Sender<Arc<Vec<u8>>>;

/// Video frames queued per feed: a client that falls behind misses frames (the newest
/// picture is all it shows), and the call never waits for it.
pub const FEED_QUEUE: usize = 4;

/// An incoming call waiting for an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ringing {
    /// The call.
    pub call: CallId,
    /// The caller.
    pub peer: PeerId,
    /// Its display name (a hint).
    pub name: Option<String>,
    /// Offers audio.
    pub audio: bool,
    /// Offers video.
    pub video: bool,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("subscribers", &self.subs.lock().len())
            .finish()
    }
}

impl Hub {
    /// Hands an engine event to every subscriber that can take it now (the front end that
    /// owns the engine's event receiver calls this for each event, in order).
    pub fn publish(&self, e: &EngineEvent) {
        if let EngineEvent::Call(c) = e {
            let mut ringing = self.ringing.lock();
            match c {
                CallEvent::Incoming {
                    call,
                    peer,
                    name,
                    audio,
                    video,
                    ..
                } => {
                    *ringing = Some(Ringing {
                        call: *call,
                        peer: *peer,
                        name: name.clone(),
                        audio: *audio,
                        video: *video,
                    });
                }
                CallEvent::Started { call, .. } | CallEvent::Ended { call, .. }
                    if ringing.as_ref().is_some_and(|r| r.call == *call) =>
                {
                    *ringing = None;
                }
                _ => {}
            }
        }
        if let EngineEvent::Transfer(t) = e {
            let mut offers = self.offers.lock();
            match t {
                TransferEvent::Offered(o) => offers.push(o.clone()),
                TransferEvent::Progress(p) => offers.retain(|o| o.id != p.id),
                TransferEvent::Finished(s) => offers.retain(|o| o.id != s.id),
                TransferEvent::Failed { id, .. } => offers.retain(|o| o.id != *id),
                TransferEvent::Resumed(_) => {}
            }
        }
        // Nothing to convert (and copy) while nobody listens.
        if self.subs.lock().is_empty() {
            return;
        }
        if let Some(ev) = crate::convert::event(e) {
            self.send(ev);
        }
    }

    /// The offers waiting for an answer, oldest first.
    pub fn offers(&self) -> Vec<OfferInfo> {
        self.offers.lock().clone()
    }

    /// The incoming call waiting for an answer, if any.
    pub fn ringing(&self) -> Option<Ringing> {
        self.ringing.lock().clone()
    }

    /// The ringing call, if `prefix` (when given) starts its id.
    pub fn ringing_call(&self, prefix: Option<&str>) -> Result<Ringing, RpcError> {
        let r = self
            .ringing
            .lock()
            .clone()
            .ok_or_else(|| RpcError::new(ErrorKind::NoSuchCall, "no call is ringing"))?;
        match prefix.map(|p| p.trim().to_ascii_lowercase()) {
            Some(p) if p.is_empty() || !r.call.to_string().starts_with(&p) => Err(RpcError::new(
                ErrorKind::NoSuchCall,
                format!("no ringing call {p:?}; the call ringing now is {}", r.call),
            )),
            _ => Ok(r),
        }
    }

    /// Takes the waiting offer whose id starts with `prefix` (the only one).
    pub fn take_offer(&self, prefix: &str) -> Result<OfferInfo, RpcError> {
        let prefix = prefix.trim().to_ascii_lowercase();
        let mut offers = self.offers.lock();
        let hits: Vec<usize> = (offers.iter().enumerate())
            .filter(|(_, o)| !prefix.is_empty() && o.id.to_string().starts_with(&prefix))
            .map(|(i, _)| i)
            .collect();
        match hits.as_slice() {
            [i] => Ok(offers.remove(*i)),
            [] => Err(RpcError::new(
                ErrorKind::NoSuchOffer,
                format!("no waiting offer {prefix:?}; `p2pcall offers` lists them"),
            )),
            _ => Err(RpcError::new(
                ErrorKind::NoSuchOffer,
                format!("{prefix:?} starts several offers' ids; type more of it"),
            )),
        }
    }

    fn send(&self, ev: Event) {
        let mut subs = self.subs.lock();
        subs.retain_mut(|s| {
            if s.dropped > 0 {
                let lagged = Event::Lagged { dropped: s.dropped };
                match s.tx.try_send(lagged) {
                    Ok(()) => s.dropped = 0,
                    Err(TrySendError::Full(_)) => {
                        s.dropped += 1;
                        return true;
                    }
                    Err(TrySendError::Closed(_)) => return false,
                }
            }
            match s.tx.try_send(ev.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    s.dropped += 1;
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
    }

    /// A new video feed: every picture of the calls from now on, encoded as [`video`]
    /// frames.
    pub fn video_feed(&self) -> mpsc::Receiver<Arc<Vec<u8>>> {
        let (tx, rx) = mpsc::channel(FEED_QUEUE);
        self.feeds.lock().push(tx);
        rx
    }

    /// The tap the engine's calls hand their pictures to: encoded once per picture for the
    /// feeds, nothing at all while there is none.
    pub fn video_tap(&self) -> VideoTap {
        let feeds = self.feeds.clone();
        VideoTap::new(move |which, f| {
            if feeds.lock().is_empty() {
                return;
            }
            let (Ok(width), Ok(height)) = (u16::try_from(f.width), u16::try_from(f.height)) else {
                return;
            };
            let header = VideoHeader {
                side: match which {
                    Picture::Local => Side::Local,
                    Picture::Remote(p) => Side::Remote(*p.as_bytes()),
                },
                width,
                height,
            };
            if f.y.len() + f.u.len() + f.v.len() != header.body_len() {
                return;
            }
            let mut b = Vec::with_capacity(video::HEADER_LEN + header.body_len());
            b.extend_from_slice(&header.encode());
            for plane in [&f.y, &f.u, &f.v] {
                b.extend_from_slice(plane);
            }
            let b = Arc::new(b);
            feeds.lock().retain(|tx| match tx.try_send(b.clone()) {
                Ok(()) | Err(TrySendError::Full(_)) => true,
                Err(TrySendError::Closed(_)) => false,
            });
        })
    }

    /// A new subscriber's receiver.
    pub fn subscribe(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        self.subs.lock().push(Subscriber { tx, dropped: 0 });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline(n: u8) -> Event {
        Event::PeerLeft { id: n.to_string() }
    }

    #[test]
    fn a_subscriber_that_does_not_read_loses_events_and_is_told_how_many() {
        let hub = Hub::default();
        let mut slow = hub.subscribe();
        let mut fast = hub.subscribe();
        let total = SUBSCRIBER_QUEUE + 10;
        for i in 0..total {
            hub.send(offline((i % 250) as u8));
            // The fast one keeps up.
            while let Ok(e) = fast.try_recv() {
                assert!(!matches!(e, Event::Lagged { .. }));
            }
        }
        let mut got = 0;
        while slow.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, SUBSCRIBER_QUEUE);
        // The next event that fits is preceded by the count of those dropped.
        hub.send(offline(1));
        assert_eq!(slow.try_recv().ok(), Some(Event::Lagged { dropped: 10 }));
        assert_eq!(slow.try_recv().ok(), Some(offline(1)));
    }

    #[test]
    fn a_subscriber_that_went_away_is_forgotten() {
        let hub = Hub::default();
        drop(hub.subscribe());
        hub.send(offline(1));
        assert_eq!(hub.subs.lock().len(), 0);
    }
}
