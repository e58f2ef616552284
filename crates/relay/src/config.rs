//! The relay's settings.

use std::net::SocketAddr;
use std::time::Duration;

/// Relay settings. [`RelayConfig::new`] gives production defaults.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// UDP address: QUIC control plane, data path and first reflection port.
    pub listen: SocketAddr,
    /// TCP+TLS fallback address (`None`: disabled).
    pub tcp_listen: Option<SocketAddr>,
    /// Second UDP reflection address (`None`: disabled).
    pub reflect_listen: Option<SocketAddr>,
    /// Prometheus metrics address (`None`: disabled).
    pub metrics_listen: Option<SocketAddr>,
    /// Shared access token required in `Hello`.
    pub token: Option<String>,
    /// Most sessions at once.
    pub max_peers: usize,
    /// Relayed packets per second per peer.
    pub packet_rate: f64,
    /// Relayed bytes per second per peer.
    pub byte_rate: f64,
    /// Control frames (signals, renames, pings) per second per peer; a peer above twice
    /// this burst is disconnected as abusive.
    pub control_rate: f64,
    /// Signals per second per peer; above it, signals fail with `RateLimited` (the session
    /// stays up).
    pub signal_rate: f64,
    /// Time allowed from connection to `Hello`.
    pub handshake_timeout: Duration,
    /// A session with no control frame for this long is closed (clients ping every 10 s).
    pub idle_timeout: Duration,
    /// QUIC handshakes in progress at once (bounds half-open connections).
    pub max_incoming: usize,
    /// A peer's name change reaches the others at most this often (renames in between are
    /// coalesced; the last one goes out when the interval ends).
    pub rename_every: Duration,
    /// Most sessions from one source IP address (one client cannot take every slot; a
    /// carrier-grade NAT still fits many users).
    pub max_per_address: usize,
    /// QUIC handshakes in progress above which new ones must first prove their address
    /// (a stateless QUIC Retry); `0`: always.
    pub retry_above: usize,
    /// The cluster this relay joins (`None`: it works alone).
    pub cluster: Option<ClusterConfig>,
    /// How often a parked peer sends its keep-alive (it is forgotten after four periods
    /// without one).
    pub park_keepalive: Duration,
    /// How often a relay of a cluster tells its parked peers it is alive (they move to
    /// another relay after [`p2pcall_proto::relay::client::ParkedSession::silence`]).
    pub park_beacon: Duration,
    /// Sockets on the UDP port (`SO_REUSEPORT`, taken only if the port is free), each
    /// forwarding the flows the kernel gives it: one per core by default (at most 8), `1`:
    /// quinn's alone.
    pub udp_sockets: usize,
}

impl RelayConfig {
    /// Defaults for a relay on `listen`: TCP fallback on the same port number, second
    /// reflection port one above, no metrics.
    pub fn new(listen: SocketAddr) -> Self {
        let mut reflect = listen;
        reflect.set_port(if listen.port() == 0 {
            0
        } else {
            listen.port().wrapping_add(1)
        });
        Self {
            listen,
            tcp_listen: Some(listen),
            reflect_listen: Some(reflect),
            metrics_listen: None,
            token: None,
            max_peers: 50_000,
            // ~100 Mbit/s of 1200-byte packets per peer, more than one HD call needs.
            packet_rate: 10_000.0,
            byte_rate: 12.5e6,
            control_rate: 50.0,
            // Call setup and path coordination need a handful; 20/s is generous.
            signal_rate: 20.0,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(40),
            max_incoming: 4096,
            rename_every: Duration::from_secs(1),
            max_per_address: 256,
            retry_above: 64,
            cluster: None,
            park_keepalive: Duration::from_secs(15),
            park_beacon: Duration::from_millis(1_500),
            udp_sockets: std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
        }
    }
}

/// How this relay takes part in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS servers, `nats://HOST:PORT` each (any one of them is enough to join).
    pub servers: Vec<String>,
    /// This relay's region, as the operator names it.
    pub region: String,
    /// Where clients reach this relay, `host:port`.
    pub public_addr: String,
}

/// A relay's settings file (TOML, `p2pcall relay --config FILE`): the same settings as the
/// command line's flags, every one optional (the command line wins, then the file, then the
/// defaults of [`RelayConfig::new`]).
///
/// ```toml
/// listen = "0.0.0.0:7700"        # UDP and the TCP+TLS fallback
/// metrics = "127.0.0.1:9100"
/// token = "s3cret"
/// max_peers = 50000
/// max_per_address = 256
/// tcp = true                      # the TCP+TLS fallback (default: on)
/// reflect = true                  # the second reflection port (default: on, UDP port + 1)
/// cluster = "nats://10.0.0.5:4222,nats://10.0.0.6:4222"   # join a cluster of relays
/// region = "eu-west"
/// public_addr = "relay1.example.org:7700"
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayFile {
    /// Address for everything (UDP, and the TCP fallback unless `tcp_listen`).
    pub listen: Option<SocketAddr>,
    /// UDP address, if not `listen`.
    pub udp: Option<SocketAddr>,
    /// TCP+TLS fallback address, if not `listen`.
    pub tcp_listen: Option<SocketAddr>,
    /// The TCP+TLS fallback is served [default: true].
    pub tcp: Option<bool>,
    /// Second reflection address [default: UDP port + 1].
    pub reflect_listen: Option<SocketAddr>,
    /// The second reflection port is served [default: true].
    pub reflect: Option<bool>,
    /// Prometheus metrics and `/healthz` address.
    pub metrics: Option<SocketAddr>,
    /// Access token peers must present.
    pub token: Option<String>,
    /// Most peers online at once.
    pub max_peers: Option<usize>,
    /// Most peers online at once from one IP address.
    pub max_per_address: Option<usize>,
    /// Relayed packets per second per peer.
    pub packet_rate: Option<f64>,
    /// Relayed Mbit/s per peer.
    pub mbit_rate: Option<f64>,
    /// The cluster to join: NATS servers, `nats://HOST:PORT[,nats://…]`.
    pub cluster: Option<String>,
    /// This relay's region (told to the cluster).
    pub region: Option<String>,
    /// Where clients reach this relay, `HOST:PORT` (told to the cluster).
    pub public_addr: Option<String>,
}

/// Why a relay settings file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RelayFileError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid TOML for these settings (the message names the line and key).
    #[error("{path} is not a valid relay settings file: {source}")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// The parser's message.
        source: toml::de::Error,
    },
}

impl RelayFile {
    /// Reads a settings file.
    pub fn load(path: &std::path::Path) -> Result<Self, RelayFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| RelayFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| RelayFileError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Overlays `over` (the command line's values) on this file's: the result holds, for
    /// each setting, the command line's if given, else the file's.
    pub fn overlaid(self, over: Self) -> Self {
        Self {
            listen: over.listen.or(self.listen),
            udp: over.udp.or(self.udp),
            tcp_listen: over.tcp_listen.or(self.tcp_listen),
            tcp: over.tcp.or(self.tcp),
            reflect_listen: over.reflect_listen.or(self.reflect_listen),
            reflect: over.reflect.or(self.reflect),
            metrics: over.metrics.or(self.metrics),
            token: over.token.or(self.token),
            max_peers: over.max_peers.or(self.max_peers),
            max_per_address: over.max_per_address.or(self.max_per_address),
            packet_rate: over.packet_rate.or(self.packet_rate),
            mbit_rate: over.mbit_rate.or(self.mbit_rate),
            cluster: over.cluster.or(self.cluster),
            region: over.region.or(self.region),
            public_addr: over.public_addr.or(self.public_addr),
        }
    }

    /// The relay configuration these settings describe (defaults for what they leave out).
    pub fn config(&self) -> RelayConfig {
        let listen = self
            .listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 7700)));
        let mut cfg = RelayConfig::new(self.udp.unwrap_or(listen));
        cfg.tcp_listen = (self.tcp != Some(false)).then(|| self.tcp_listen.unwrap_or(listen));
        cfg.reflect_listen = if self.reflect == Some(false) {
            None
        } else {
            self.reflect_listen.or(cfg.reflect_listen)
        };
        cfg.metrics_listen = self.metrics;
        cfg.token.clone_from(&self.token);
        if let Some(n) = self.max_peers {
            cfg.max_peers = n;
        }
        if let Some(n) = self.max_per_address {
            cfg.max_per_address = n;
        }
        if let Some(r) = self.packet_rate {
            cfg.packet_rate = r;
        }
        if let Some(m) = self.mbit_rate {
            cfg.byte_rate = m * 1e6 / 8.0;
        }
        cfg.cluster = self.cluster.as_ref().map(|servers| ClusterConfig {
            servers: (servers.split(','))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            region: self.region.clone().unwrap_or_default(),
            // Empty: the bound UDP address, unless it is 0.0.0.0 (see `cluster`).
            public_addr: self.public_addr.clone().unwrap_or_default(),
        });
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_wins_over_the_file_which_wins_over_the_defaults() {
        let file: RelayFile = toml::from_str(
            r#"
            listen = "0.0.0.0:7800"
            metrics = "127.0.0.1:9100"
            token = "from-file"
            max_per_address = 16
            tcp = false
            "#,
        )
        .unwrap();
        let flags = RelayFile {
            token: Some("from-flag".into()),
            max_peers: Some(10),
            ..RelayFile::default()
        };
        let cfg = file.overlaid(flags).config();
        assert_eq!(cfg.listen, "0.0.0.0:7800".parse().unwrap());
        assert_eq!(cfg.tcp_listen, None);
        assert_eq!(cfg.reflect_listen, Some("0.0.0.0:7801".parse().unwrap()));
        assert_eq!(cfg.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(cfg.token.as_deref(), Some("from-flag"));
        assert_eq!((cfg.max_peers, cfg.max_per_address), (10, 16));
        // Nothing given: the defaults.
        let d = RelayFile::default().config();
        assert_eq!(d.listen, "0.0.0.0:7700".parse().unwrap());
        assert_eq!(d.tcp_listen, Some(d.listen));
        assert_eq!(d.max_per_address, 256);
        // The settings file the project ships (deploy/relay.toml) is one.
        let shipped: RelayFile =
            toml::from_str(include_str!("../../../deploy/relay.toml")).unwrap();
        assert_eq!(shipped.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        // A misspelt key is refused, naming it.
        let bad = toml::from_str::<RelayFile>("max_peer = 3").unwrap_err();
        assert!(bad.to_string().contains("max_peer"), "{bad}");
    }
}
