//! User settings, as TOML in the platform config dir (or in `--data-dir` when given).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Settings file name.
pub const SETTINGS_FILE: &str = "config.toml";
/// Partial files older than this are removed by default (the `partial_max_age_days`
/// setting changes it).
pub const DEFAULT_PARTIAL_MAX_AGE: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);
/// A relay's port when an address names none (UDP and TCP).
pub const DEFAULT_RELAY_PORT: u16 = 7700;

/// Persisted settings. Every field has a default, so an empty or partial file is valid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Display name shown to other peers.
    pub name: Option<String>,
    /// Relay address (`host:port`; port 7700 if omitted).
    pub relay: Option<String>,
    /// Other relays of the same network (a relay cluster), `host:port` each: every relay is
    /// probed at start and the first to answer is used; when it fails, another [default:
    /// none, besides those the relay's cluster listed last time].
    pub relays: Option<Vec<String>>,
    /// Relay access token.
    pub token: Option<String>,
    /// Ask the home router for a port mapping (UPnP-IGD, NAT-PMP, PCP) [default: true].
    pub port_mapping: Option<bool>,
    /// The desktop app runs a relay on this machine (on `relay_listen`) and uses it.
    pub host_relay: Option<bool>,
    /// LAN only: find peers on the local network by mDNS, with no relay at all (`relay` and
    /// `host_relay` are then ignored) [default: false].
    pub lan_only: Option<bool>,
    /// Interfaces LAN-only mode announces and browses on, by name [default: every interface
    /// except loopback; name `lo` to include it].
    pub lan_interfaces: Option<Vec<String>>,
    /// Where a relay hosted by the app listens [default: 0.0.0.0:7700].
    pub relay_listen: Option<String>,
    /// Folder accepted files go to [default: the platform's download dir].
    pub download_dir: Option<PathBuf>,
    /// The app's video source for calls, as `--video` takes it [default: camera].
    pub video: Option<String>,
    /// The app's audio source for calls, as `--audio` takes it [default: mic].
    pub audio: Option<String>,
    /// The app's speaker, as `--speaker` takes it [default: auto].
    pub speaker: Option<String>,
    /// The app's largest video size for calls, `WIDTHxHEIGHT` [default: 640x360].
    pub video_size: Option<String>,
    /// The app's video frame rate for calls [default: 30].
    pub video_fps: Option<u32>,
    /// The app's video bitrate cap for calls, kbit/s [default: 1000].
    pub video_kbps: Option<u32>,
    /// The app keeps this identity online after its window closes: it runs the engine in a
    /// background `p2pcall daemon` and shows that [default: false].
    pub keep_online: Option<bool>,
    /// The relay's key (64 hex digits) [default: the key it presented the first time,
    /// pinned in the data dir's database].
    pub relay_key: Option<String>,
    /// Received files keep the sender's execute bits [default: false: no received file is
    /// executable until the user makes it so].
    pub receive_executable: Option<bool>,
    /// The app accepts file offers from verified peers without asking [default: false].
    pub auto_accept_verified: Option<bool>,
    /// The app shows desktop notifications while its window is not focused [default: true].
    pub notifications: Option<bool>,
    /// The app's theme: `system`, `dark` or `light` [default: system].
    pub theme: Option<String>,
    /// Partial files of an incoming transfer nobody resumed for this many days are removed
    /// (`0` keeps them until `p2pcall transfers clean`) [default: 30].
    pub partial_max_age_days: Option<u64>,
    /// The relay session parks after this many seconds with nothing on it: the relay keeps
    /// the registration without a connection and wakes it for a signal (`0`: never park)
    /// [default: 60].
    pub park_after_secs: Option<u64>,
}

impl Settings {
    /// Where accepted files go: `download_dir`, else `~/Downloads`, else `downloads` in the
    /// data dir.
    pub fn downloads(&self, dirs: &Dirs) -> PathBuf {
        self.download_dir.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join("Downloads"))
                .unwrap_or_else(|| dirs.data.join("downloads"))
        })
    }

    /// The other relays the settings name (`relays`), with their ports spelled out; their keys
    /// are the ones pinned for them, if any.
    pub fn alternate_relays(&self) -> Vec<p2pcall_net::RelayCandidate> {
        (self.relays.iter().flatten())
            .map(|r| p2pcall_net::RelayCandidate {
                addr: relay_name(r),
                key: None,
            })
            .collect()
    }

    /// How long an idle relay session waits before it parks (`park_after_secs`).
    pub fn park_after(&self) -> Option<std::time::Duration> {
        match self.park_after_secs {
            Some(0) => None,
            Some(s) => Some(std::time::Duration::from_secs(s)),
            None => Some(p2pcall_net::PARK_AFTER),
        }
    }

    /// The relay key the settings give (`relay_key`), if any.
    pub fn relay_key(&self) -> Result<Option<p2pcall_proto::PeerId>, SettingsError> {
        (self.relay_key.as_deref())
            .map(|k| k.trim().parse().map_err(|_| SettingsError::RelayKey))
            .transpose()
    }

    /// How long abandoned partial files are kept (`None`: until removed by hand).
    pub fn partial_max_age(&self) -> Option<std::time::Duration> {
        match self.partial_max_age_days {
            Some(0) => None,
            Some(d) => Some(std::time::Duration::from_secs(d.saturating_mul(24 * 3600))),
            None => Some(DEFAULT_PARTIAL_MAX_AGE),
        }
    }
}

/// Where the data dir and the settings live.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Data dir: identity key (later: chat store, transfers).
    pub data: PathBuf,
    /// Settings file.
    pub settings: PathBuf,
}

/// Errors reading settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// No home directory to derive platform dirs from.
    #[error("cannot find the platform's data and config directories; pass --data-dir")]
    NoDirs,
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A relay address that does not resolve.
    #[error("cannot resolve the relay address {spec:?}: {source}")]
    Relay {
        /// What was given.
        spec: String,
        /// Why.
        source: std::io::Error,
    },
    /// A relay address that resolves to no address.
    #[error("the relay address {spec:?} resolved to nothing")]
    RelayUnresolved {
        /// What was given.
        spec: String,
    },
    /// `relay_key` is not a key.
    #[error("relay_key in the settings is not a key (64 hex digits, as the relay prints it)")]
    RelayKey,
    /// The file is not valid TOML for these settings.
    #[error("{path} is not valid: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Parser message (names the line and key).
        source: toml::de::Error,
    },
    /// The settings could not be written as TOML.
    #[error("cannot write the settings as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
}

impl Dirs {
    /// `--data-dir D` keeps everything in D; otherwise the platform's dirs
    /// (`~/.local/share/p2pcall`, `~/.config/p2pcall/config.toml` on Linux).
    pub fn resolve(data_dir: Option<&Path>) -> Result<Self, SettingsError> {
        if let Some(d) = data_dir {
            return Ok(Self {
                data: d.to_path_buf(),
                settings: d.join(SETTINGS_FILE),
            });
        }
        let p = directories::ProjectDirs::from("", "", "p2pcall").ok_or(SettingsError::NoDirs)?;
        Ok(Self {
            data: p.data_dir().to_path_buf(),
            settings: p.config_dir().join(SETTINGS_FILE),
        })
    }
}

impl Settings {
    /// The LAN-only mode these settings ask for, if any.
    pub fn lan(&self) -> Option<p2pcall_net::LanConfig> {
        (self.lan_only == Some(true)).then(|| p2pcall_net::LanConfig {
            interfaces: self.lan_interfaces.clone().unwrap_or_default(),
            ..p2pcall_net::LanConfig::default()
        })
    }
}

/// A relay as the user names it, `HOST[:PORT]` or `[V6][:PORT]`, with its port spelled out
/// ([`DEFAULT_RELAY_PORT`] when it names none): what its key is pinned under, and what is
/// resolved to reach it.
pub fn relay_name(spec: &str) -> String {
    let spec = spec.trim();
    if spec.parse::<std::net::SocketAddr>().is_ok()
        || spec
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok())
    {
        spec.to_string()
    } else if spec.contains(':') && !spec.starts_with('[') {
        format!("[{spec}]:{DEFAULT_RELAY_PORT}")
    } else {
        format!("{spec}:{DEFAULT_RELAY_PORT}")
    }
}

/// Resolves a relay address, `HOST[:PORT]` or `[V6][:PORT]`, with [`DEFAULT_RELAY_PORT`]
/// when it names no port.
pub async fn resolve_relay(spec: &str) -> Result<std::net::SocketAddr, SettingsError> {
    let spec = spec.trim();
    let with_port = relay_name(spec);
    tokio::net::lookup_host(&with_port)
        .await
        .map_err(|source| SettingsError::Relay {
            spec: spec.to_string(),
            source,
        })?
        .next()
        .ok_or_else(|| SettingsError::RelayUnresolved {
            spec: spec.to_string(),
        })
}

impl Settings {
    /// Reads the settings file; a missing file is the defaults.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        match std::fs::read_to_string(path) {
            Ok(s) => toml::from_str(&s).map_err(|source| SettingsError::Parse {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(SettingsError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the settings file (its folder is created; the file is replaced atomically).
    pub fn save(&self, path: &Path) -> Result<(), SettingsError> {
        let io = |source| SettingsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = toml::to_string_pretty(self)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // It may hold the relay's access token: the owner's alone, from its first byte.
        let tmp = path.with_extension("toml.tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_default_and_unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(SETTINGS_FILE);
        assert_eq!(Settings::load(&p).unwrap(), Settings::default());
        std::fs::write(&p, "name = \"ada\"\nrelay = \"relay.example:7700\"\n").unwrap();
        let s = Settings::load(&p).unwrap();
        assert_eq!(s.name.as_deref(), Some("ada"));
        std::fs::write(&p, "nmae = \"typo\"\n").unwrap();
        let e = Settings::load(&p).unwrap_err();
        assert!(e.to_string().contains("nmae"), "{e}");
    }

    #[test]
    fn saved_settings_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(SETTINGS_FILE);
        // Even over a file that was readable by everyone.
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = Settings {
            token: Some("secret".into()),
            ..Settings::default()
        };
        s.save(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Settings::load(&p).unwrap().token.as_deref(), Some("secret"));
    }

    #[tokio::test]
    async fn relay_addresses_get_the_default_port() {
        let a = resolve_relay("127.0.0.1").await.unwrap();
        assert_eq!(a, "127.0.0.1:7700".parse().unwrap());
        let a = resolve_relay(" 127.0.0.1:9000 ").await.unwrap();
        assert_eq!(a.port(), 9000);
        let a = resolve_relay("::1").await.unwrap();
        assert_eq!(a, "[::1]:7700".parse().unwrap());
        let a = resolve_relay("[::1]:7800").await.unwrap();
        assert_eq!(a.port(), 7800);
        let e = resolve_relay("256.1.1.1:70000").await.unwrap_err();
        assert!(e.to_string().contains("256.1.1.1:70000"), "{e}");
    }

    #[test]
    fn saved_settings_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join(SETTINGS_FILE);
        let s = Settings {
            name: Some("ada \"the\" first".into()),
            host_relay: Some(true),
            lan_interfaces: Some(vec!["eth0".into(), "lo".into()]),
            download_dir: Some(dir.path().join("in")),
            ..Settings::default()
        };
        s.save(&p).unwrap();
        assert_eq!(Settings::load(&p).unwrap(), s);
    }
}
