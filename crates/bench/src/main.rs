//! p2pcall benchmarks. Each prints its numbers beside a baseline measured in the same run.
//!
//! * `relay-forward`: 1200-byte packets between N pairs through the relay's UDP data path
//!   and through two relays of a cluster, against a batched forwarder (recvmmsg + GSO, a
//!   thread per core) and a one-at-a-time one (recv_from + send_to) in the same setup.
//! * `cluster-presence`: N simulated peers over R relays of a cluster; single presence
//!   changes timed to the other relays' subscribers against the relay's own subscriber.
//! * `relay-capacity`: registers N peers (with `--park`: parked) with a relay *process* and reports its memory per
//!   peer, and the relay CPU time per presence change fanned out to S subscribers.
//! * `p2p-throughput`: one QUIC stream peer to peer over the relay path and the direct path,
//!   against raw quinn on loopback.
//! * `codec-speed`: H264 and Opus per frame on this machine, against the frame budget.
//! * `file-transfer`: a 1 GiB folder tree (one large file, many small ones) through the
//!   p2pcall engine against raw quinn moving as many bytes on one stream.
//! * `video-feed`: a call between two daemons shown in another process (the app's view of
//!   a daemon): pictures and bytes on the feed, the daemon's CPU against the same call
//!   unwatched.
//! * `daemon`: `peers` through a running `p2pcall daemon` (API round trip and the whole
//!   command) against the same command on an engine of its own; presence events through the
//!   daemon to an API subscriber against a raw relay subscriber; the daemon's idle CPU and RSS.
//! * `group-call`: four `p2pcall daemon`s in a group call on this machine (pictures/s from
//!   each participant, concealment, upload against what the layers and audio need) and its
//!   CPU per participant beside a one-to-one call's; a fourth joining a call of three (its
//!   answer to every participant's first picture against 1 s + 2 RTT).
//! * `screen`: 1080p screen sharing of scrolling text under Xvfb (capture → encode →
//!   packetize → loopback UDP at 60 fps) and of an idle screen, against capture alone and
//!   encode alone.

mod abuse;
mod capacity;
mod cluster;
mod codec;
mod daemon;
mod feed;
mod files;
mod forward;
mod group;
mod procfs;
mod screen;
mod throughput;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "p2pcall-bench",
    about = "p2pcall benchmarks (run with --release)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Relay forwarding rate vs. a minimal UDP forwarder
    RelayForward {
        /// Sender/receiver pairs
        #[arg(long, default_value_t = 2)]
        pairs: usize,
        /// Seconds per measurement
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
    },
    /// Presence in a relay cluster: simulated peers over several relays, single changes timed
    /// to the other relays' subscribers vs. the relay's own
    ClusterPresence {
        /// Simulated peers, spread evenly
        #[arg(long, default_value_t = 100_000)]
        peers: usize,
        /// Relays in the cluster
        #[arg(long, default_value_t = 4)]
        relays: usize,
        /// Single changes (joins, then the same peers leaving)
        #[arg(long, default_value_t = 1000)]
        changes: usize,
    },
    /// Relay memory per peer and presence-change cost
    RelayCapacity {
        /// Peers to register
        #[arg(long, default_value_t = 10_000)]
        peers: usize,
        /// Presence subscribers among them
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// The relay binary (`p2pcall`)
        #[arg(long, default_value = "target/release/p2pcall")]
        relay_bin: String,
        /// Give up registering after this many seconds
        #[arg(long, default_value_t = 120)]
        max_secs: u64,
        /// Park every peer but the subscribers and the renaming ones right after its login
        #[arg(long)]
        park: bool,
    },
    /// The daemon's local API: latency of `peers` and of events, idle CPU, RSS
    Daemon {
        /// Peers online (relay sessions)
        #[arg(long, default_value_t = 100)]
        peers: usize,
        /// API round trips measured
        #[arg(long, default_value_t = 500)]
        calls: usize,
        /// Presence changes measured
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// The p2pcall binary
        #[arg(long, default_value = "target/release/p2pcall")]
        bin: String,
    },
    /// A call shown in another process: the daemon's video feed (pictures/s, MB/s) and the
    /// daemon's CPU with it vs. the same call without it
    VideoFeed {
        /// Video width
        #[arg(long, default_value_t = 640)]
        width: u32,
        /// Video height
        #[arg(long, default_value_t = 360)]
        height: u32,
        /// The p2pcall binary
        #[arg(long, default_value = "target/release/p2pcall")]
        bin: String,
    },
    /// Group calls: a call of four (pictures/s, concealment, CPU vs. one-to-one, upload)
    /// and joining a call of three
    GroupCall {
        /// The p2pcall binary
        #[arg(long, default_value = "target/release/p2pcall")]
        bin: String,
    },
    /// Stream throughput over relay and direct paths vs. raw quinn
    P2pThroughput {
        /// MiB per run
        #[arg(long, default_value_t = 512)]
        mib: u64,
    },
    /// H264 and Opus speed vs. the frame budget
    CodecSpeed {
        /// Frames per measurement
        #[arg(long, default_value_t = 120)]
        frames: u32,
    },
    /// A folder tree through `send` vs. raw quinn
    FileTransfer {
        /// Size of the one large file, MiB
        #[arg(long, default_value_t = 768)]
        large_mib: u64,
        /// Number of small files
        #[arg(long, default_value_t = 4096)]
        small: u64,
        /// Size of each small file, KiB
        #[arg(long, default_value_t = 64)]
        small_kib: u64,
        /// Folder for the tree and the copies [default: the system temp dir]
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// 1080p screen sharing (scrolling text, then idle) under Xvfb vs. capture and encode alone
    Screen {
        /// Seconds per phase (scrolling, idle)
        #[arg(long, default_value_t = 20.0)]
        secs: f64,
        /// Frame rate target
        #[arg(long, default_value_t = 60)]
        fps: u32,
        /// Bitrate, kbit/s [default: what calls use]
        #[arg(long, default_value_t = p2pcall_core::call::SCREEN_KBPS)]
        kbps: u32,
    },
    /// One session renaming itself 49 times a second with N presence subscribers: updates
    /// delivered and relay CPU, with the relay's coalescing and without (baseline)
    Renamer {
        /// Presence subscribers
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// Seconds of renaming
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// The relay binary (`p2pcall`)
        #[arg(long, default_value = "target/release/p2pcall")]
        relay_bin: String,
    },
    /// Probes a peer flooding Candidates and Punch gets sent, vs. an honest peer's
    ProbeFlood,
    /// (internal) The painter process of `screen`: scrolls text on DISPLAY until killed
    #[command(hide = true)]
    ScreenPainter {
        #[arg(long)]
        display: String,
        #[arg(long, default_value_t = 120)]
        hz: u32,
    },
}

/// A multi-threaded tokio runtime with `threads` workers.
pub(crate) fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
}

fn main() -> anyhow::Result<()> {
    // Logs of the in-process relays and peers, when asked for (RUST_LOG).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::RelayForward { pairs, secs } => forward::run(pairs, secs),
        Cmd::ClusterPresence {
            peers,
            relays,
            changes,
        } => cluster::run(peers, relays, changes),
        Cmd::RelayCapacity {
            peers,
            subscribers,
            relay_bin,
            max_secs,
            park,
        } => capacity::run(peers, subscribers, &relay_bin, max_secs, park),
        Cmd::Daemon {
            peers,
            calls,
            changes,
            bin,
        } => daemon::run(peers, calls, changes, &bin),
        Cmd::VideoFeed { width, height, bin } => feed::run(&bin, width, height),
        Cmd::GroupCall { bin } => group::run(&bin),
        Cmd::P2pThroughput { mib } => throughput::run(mib),
        Cmd::CodecSpeed { frames } => codec::run(frames),
        Cmd::FileTransfer {
            large_mib,
            small,
            small_kib,
            dir,
        } => files::run(large_mib, small, small_kib, dir),
        Cmd::Screen { secs, fps, kbps } => screen::run(secs, fps, kbps),
        Cmd::ScreenPainter { display, hz } => screen::paint(&display, hz),
        Cmd::Renamer {
            subscribers,
            secs,
            relay_bin,
        } => abuse::renamer(&relay_bin, subscribers, secs),
        Cmd::ProbeFlood => abuse::probe_flood(),
    }
}
