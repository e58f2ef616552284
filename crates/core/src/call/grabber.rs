//! Screen grabs on their own thread, one frame ahead of the encoder.
//!
//! At 1080p a grab (MIT-SHM read, cursor, BGRX → I420) takes ~4 ms and a screen-content
//! encode ~16 ms, most of it single-threaded inside openh264; one after the other that is
//! ~49 fps. The grabber thread grabs at the capture rate and leaves the newest result in a
//! one-frame mailbox (an older frame not yet taken is replaced: the encoder always gets the
//! latest screen); the capture thread takes one result per tick. Measured with
//! `cargo run --release -p p2pcall-bench -- screen`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

use p2pcall_media_io::Frame;
use p2pcall_screen::{Capturer, Grab};

/// How long [`Grabber::next`] waits before it returns "unchanged" anyway (so the capture
/// thread still sees its commands and its stop flag when the grabber is stuck).
const TAKE_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
struct Slot {
    /// The newest frame not taken yet, when it was grabbed and how long that took.
    frame: Option<(Frame, Instant, Duration)>,
    /// Grabs done so far (frames or unchanged).
    ticks: u64,
    /// The capturer failed (the thread has ended).
    error: Option<p2pcall_screen::ScreenError>,
}

#[derive(Debug)]
struct Shared {
    slot: Mutex<Slot>,
    ready: Condvar,
    interval_ns: AtomicU64,
    /// Pending `set_max_size` (`u64::MAX`: none).
    max_size: AtomicU64,
    paused: AtomicBool,
    stop: AtomicBool,
}

/// A capturer running on its own thread; dropping it stops the thread.
#[derive(Debug)]
pub(crate) struct Grabber {
    shared: Arc<Shared>,
    seen: u64,
}

impl Grabber {
    /// Starts grabbing `cap` every `interval`.
    pub fn start(mut cap: Capturer, interval: Duration) -> std::io::Result<Grabber> {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::default()),
            ready: Condvar::new(),
            interval_ns: AtomicU64::new(interval.as_nanos() as u64),
            max_size: AtomicU64::new(u64::MAX),
            paused: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("screen-grab".into())
            .spawn(move || {
                let mut next = Instant::now();
                while !s.stop.load(Ordering::Relaxed) {
                    let interval = Duration::from_nanos(s.interval_ns.load(Ordering::Relaxed));
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep(next - now);
                    }
                    next += interval;
                    // Fell far behind (suspended, overloaded): do not burst to catch up.
                    if Instant::now() > next + interval * 4 {
                        next = Instant::now() + interval;
                    }
                    if s.paused.load(Ordering::Relaxed) {
                        continue;
                    }
                    let size = s.max_size.swap(u64::MAX, Ordering::Relaxed);
                    if size != u64::MAX {
                        cap.set_max_size((size >> 32) as u32, size as u32);
                    }
                    let at = Instant::now();
                    let grab = cap.grab();
                    let mut slot = s.slot.lock();
                    match grab {
                        Ok(Grab::Frame(f)) => slot.frame = Some((f, at, at.elapsed())),
                        Ok(Grab::Unchanged) => {}
                        Err(e) => {
                            slot.error = Some(e);
                            s.ready.notify_all();
                            return;
                        }
                    }
                    slot.ticks += 1;
                    s.ready.notify_all();
                }
            })?;
        Ok(Grabber { shared, seen: 0 })
    }

    /// The result of the next grab (waits for it): the newest frame grabbed since the last
    /// call with its grab time and how long the grab took, or `None` when the screen did not
    /// change.
    #[allow(clippy::type_complexity)]
    pub fn next(
        &mut self,
    ) -> Result<Option<(Frame, Instant, Duration)>, p2pcall_screen::ScreenError> {
        let mut slot = self.shared.slot.lock();
        let deadline = Instant::now() + TAKE_TIMEOUT;
        while slot.ticks == self.seen && slot.error.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.shared.ready.wait_for(&mut slot, left);
        }
        if let Some(e) = slot.error.take() {
            return Err(e);
        }
        self.seen = slot.ticks;
        Ok(slot.frame.take())
    }

    /// Grabs every `interval` from now on.
    pub fn set_interval(&self, interval: Duration) {
        self.shared
            .interval_ns
            .store(interval.as_nanos() as u64, Ordering::Relaxed);
    }

    /// [`Capturer::set_max_size`] before the next grab.
    pub fn set_max_size(&self, max_width: u32, max_height: u32) {
        let packed = (u64::from(max_width) << 32) | u64::from(max_height);
        self.shared.max_size.store(packed, Ordering::Relaxed);
    }

    /// Stops (true) or resumes grabbing.
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::Relaxed);
    }
}

impl Drop for Grabber {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}
