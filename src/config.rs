//! Configuration: defaults that fit a device, overridden by the config file (TOML), then by `TORU_*`
//! environment variables, then by command-line flags. Called by `main` once at start; the result is
//! read-only from then on.
//!
//! What it touches: it reads the config file (if one is named), asks whether
//! `/usr/lib/toru/plugins` exists (the default plugins dir on an image, else
//! `/var/lib/toru/plugins`) and resolves relative dirs against the working directory. The
//! environment comes in as a function, so tests need not change the process environment.
//!
//! ## Units and ranges
//! Every duration is an integer number of milliseconds in a key ending in `_ms`; sizes end in
//! `_bytes`. The HTTP timeouts were once whole seconds (`header_timeout_secs`, …): those keys are
//! still read, converted, and named in [`Config::deprecations`]; giving both spellings of one
//! setting is an error. A value outside its key's range is refused with the key and its line, never
//! clamped: a typo must not become a different setting.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything the host needs to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the web UI and API listen.
    pub listen: SocketAddr,
    /// Holds `toru.redb`, the lock file and the setup code.
    pub data_dir: PathBuf,
    /// Holds the plugin executables (`*.binary`).
    pub plugins_dir: PathBuf,
    /// Holds plugin sockets and the control socket (`0700`, never `/tmp`).
    pub runtime_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: log::LevelFilter,
    /// Per-plugin KV quota in bytes.
    pub kv_quota_bytes: u64,
    /// Events kept per plugin.
    pub events_per_plugin: u64,
    /// Longest frame read from a plugin.
    pub max_frame_len: usize,
    /// Log lines kept per plugin in memory.
    pub log_ring_lines: usize,
    /// Log lines accepted per plugin per second (the rest are counted as dropped).
    pub log_lines_per_sec: u32,
    /// HTTP server limits and auth settings.
    pub http: HttpConfig,
    /// Supervisor timings.
    pub supervisor: SupervisorConfig,
    /// Plugin packages: probation, limits, unsigned packages.
    pub packages: PackagesConfig,
    /// Whole-device updates through RAUC (`[update]`).
    pub update: UpdateConfig,
    /// How plugins are confined (`[isolation]`).
    pub isolation: IsolationConfig,
    /// Every plugin's resource limits unless its manifest or the admin says otherwise
    /// (`[limits]`, see `crate::limits`).
    pub limits: crate::limits::Limits,
    /// When the host starts in safe mode (`[safe_mode]`, docs/RELIABILITY.md#safe-mode).
    pub safe_mode: SafeModeConfig,
    /// The MQTT bridge (`[mqtt]`, docs/MQTT.md); off unless a broker `url` is given.
    pub mqtt: MqttConfig,
    /// Deprecated config-file keys that were used, one sentence each (file, line, the key to use
    /// instead). `main` logs them once the logger runs.
    pub deprecations: Vec<String>,
}

/// Plugin packages (`[packages]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PackagesConfig {
    /// A new version must stay ready this long after it became ready, or it is rolled back
    /// (`probation_secs`, default 30, at most 90: an install answers once its probation is over,
    /// within the HTTP server's request time limit of 120 s).
    pub probation: Duration,
    /// Packages without a signature are accepted (development only; the UI says so on every page).
    pub allow_unsigned: bool,
    /// Largest package file accepted (compressed), default 64 MiB.
    pub max_package_bytes: u64,
    /// Most bytes a package may expand to, default 256 MiB.
    pub max_unpacked_bytes: u64,
    /// Where installed packages live (`dir`); `None`: `<data-dir>/packages` (see
    /// [`Config::packages_dir`]). On the device the data dir is the writable, persistent place.
    pub dir: Option<PathBuf>,
}

impl Default for PackagesConfig {
    fn default() -> Self {
        PackagesConfig {
            probation: Duration::from_secs(30),
            allow_unsigned: false,
            max_package_bytes: 64 * 1024 * 1024,
            max_unpacked_bytes: 256 * 1024 * 1024,
            dir: None,
        }
    }
}

/// Safe mode (`[safe_mode]`; docs/RELIABILITY.md#safe-mode): after `after_unclean` unclean host
/// exits in a row (kill, crash, watchdog reset, power cut) the host starts with every plugin held
/// but those in `keep`, until an admin leaves safe mode or a later start follows a clean run.
#[derive(Debug, Clone, PartialEq)]
pub struct SafeModeConfig {
    /// Unclean exits in a row that start the host in safe mode (`after_unclean`, default 3; 0
    /// turns safe mode off: nothing is held and plugin starts are not tracked).
    pub after_unclean: u32,
    /// A run that lasts this long resets the count (`clean_secs`, default 600 s).
    pub clean_after: Duration,
    /// Plugin ids that are not third-party: they start in safe mode too (`keep`, default none;
    /// the image keeps its own `sysinfo` and `notes`).
    pub keep: Vec<String>,
}

impl Default for SafeModeConfig {
    fn default() -> Self {
        SafeModeConfig {
            after_unclean: 3,
            clean_after: Duration::from_secs(600),
            keep: Vec::new(),
        }
    }
}

/// The MQTT bridge (`[mqtt]`; docs/MQTT.md): state, events and Home Assistant discovery on a
/// broker, and optionally commands from it. Off while `broker` is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// The broker (`url = "mqtt://host:port"` or `"mqtts://host:port"`); `None`: the bridge is off.
    pub broker: Option<MqttBroker>,
    /// The MQTT client id (`client_id`); `None`: the instance id.
    pub client_id: Option<String>,
    /// The user name (`username`), if the broker wants one.
    pub username: Option<String>,
    /// A file holding the password (`password_file`, read when the bridge starts, a trailing
    /// newline removed), so the secret is not in the config file. Needs `username`.
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign the broker's certificate (`ca_file`, `mqtts://` only);
    /// `None`: the system's CA certificates.
    pub ca_file: Option<PathBuf>,
    /// Where the host's topics live (`topic_prefix`); `None`: `toru/<instance id>`.
    pub topic_prefix: Option<String>,
    /// Home Assistant's discovery prefix (`discovery_prefix`, default `homeassistant`).
    pub discovery_prefix: String,
    /// Commands from the broker are obeyed (`commands`, default false).
    pub commands: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: None,
            client_id: None,
            username: None,
            password_file: None,
            ca_file: None,
            topic_prefix: None,
            discovery_prefix: DEFAULT_DISCOVERY_PREFIX.to_string(),
            commands: false,
        }
    }
}

/// Home Assistant's default discovery prefix.
pub const DEFAULT_DISCOVERY_PREFIX: &str = "homeassistant";

/// A broker address from `[mqtt] url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttBroker {
    /// `mqtts://`: TLS.
    pub tls: bool,
    /// Host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    /// Port (default 1883, or 8883 with TLS).
    pub port: u16,
}

impl MqttBroker {
    /// Parse `mqtt://host[:port]` or `mqtts://host[:port]`; `Err` says what is expected.
    pub fn parse(url: &str) -> Result<MqttBroker, &'static str> {
        const EXPECTED: &str = "a broker address like \"mqtt://broker.local:1883\" or \"mqtts://broker.local:8883\" (no user, path or query)";
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            if !cfg!(feature = "mqtt-tls") {
                return Err(
                    "a plain mqtt:// broker: this toru was built without TLS (cargo feature mqtt-tls)",
                );
            }
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(EXPECTED);
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty()
            || rest
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "/@?#".contains(c))
        {
            return Err(EXPECTED);
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(EXPECTED)?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(EXPECTED);
            }
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':').ok_or(EXPECTED)?)),
            }
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => default_port,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or(EXPECTED)?,
        };
        if host.is_empty() || host.len() > 253 {
            return Err(EXPECTED);
        }
        Ok(MqttBroker {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

/// Whether `prefix` can lead MQTT topics: 1–200 bytes, no wildcard (`#`, `+`), no empty level
/// (no leading, trailing or doubled `/`), not a `$` (broker) topic, no control character.
pub fn mqtt_prefix_ok(prefix: &str) -> bool {
    (1..=200).contains(&prefix.len())
        && !prefix.starts_with('$')
        && !prefix
            .chars()
            .any(|c| c.is_control() || c == '#' || c == '+')
        && prefix.split('/').all(|level| !level.is_empty())
}

/// Whole-device A/B updates through RAUC (`[update]`; docs/UPDATES.md).
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateConfig {
    /// Updates are offered (`enabled`, default false: the image turns it on where RAUC and its
    /// slots are set up). Off, the update API answers that updates are not available here and the
    /// host never runs `rauc`.
    pub enabled: bool,
    /// The `rauc` command (`rauc`, a name looked up in `PATH` or a path).
    pub rauc: String,
    /// How long a new system may take after the host is ready until every plugin that was ready
    /// before the update is ready again (`health_timeout_ms`, default 300 000); past it the slot
    /// is marked bad and the device reboots into the old one.
    pub health_timeout: Duration,
    /// What reboots the device (`reboot_command`, default `["systemctl", "reboot"]`).
    pub reboot_command: Vec<String>,
    /// The file naming this boot (`boot_id_file`, default the kernel's
    /// `/proc/sys/kernel/random/boot_id`): a different id means the device rebooted.
    pub boot_id_file: PathBuf,
    /// The largest bundle accepted (`max_bundle_bytes`, default 2 GiB).
    pub max_bundle_bytes: u64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            enabled: false,
            rauc: "rauc".into(),
            health_timeout: Duration::from_secs(300),
            reboot_command: vec!["systemctl".into(), "reboot".into()],
            boot_id_file: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            max_bundle_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

/// How plugins are confined (`[isolation]`; docs/ISOLATION.md).
#[derive(Debug, Clone, PartialEq)]
pub struct IsolationConfig {
    /// Confine plugins (`enabled`, default true). `false`: plugins run as the host's user without
    /// Landlock, seccomp or network namespaces (rlimits and cgroup limits stay), for debugging
    /// and for measuring what confinement costs.
    pub enabled: bool,
    /// The uids (and gids) plugins get when the host runs as root: `uid_min` runs `--metadata`,
    /// each plugin id gets one of `uid_min + 1 ..= uid_max`, kept in the store.
    pub uid_min: u32,
    /// See `uid_min`.
    pub uid_max: u32,
    /// Restrict each plugin's file access with Landlock where the kernel offers it.
    pub landlock: bool,
    /// Refuse the system calls no plugin needs (seccomp).
    pub seccomp: bool,
}

impl Default for IsolationConfig {
    fn default() -> Self {
        IsolationConfig {
            enabled: true,
            uid_min: 70000,
            uid_max: 79999,
            landlock: true,
            seccomp: true,
        }
    }
}

/// HTTP limits (all configurable) and auth settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Connections served at once; beyond it, new connections get a fast 503.
    pub max_connections: usize,
    /// A client must send its request head within this time.
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this time.
    pub keepalive_timeout: Duration,
    /// Largest request head; larger → 431.
    pub max_header_bytes: usize,
    /// Largest API request body; larger → 413.
    pub max_api_body_bytes: usize,
    /// Largest body forwarded to a plugin route; larger → 413.
    pub max_plugin_body_bytes: usize,
    /// Bytes of response bodies held for clients that have not taken them yet, all connections
    /// together; a large reply beyond it → 503.
    pub max_buffered_reply_bytes: usize,
    /// How long a plugin has to answer a forwarded request → 504.
    pub plugin_timeout: Duration,
    /// Extra names accepted in `Host` (besides localhost, the hostname, `hostname.local` and the
    /// device's addresses).
    pub allowed_hosts: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// A session unused this long expires.
    pub session_idle: Duration,
    /// A session expires this long after login, used or not.
    pub session_absolute: Duration,
}

/// Supervisor timings (the spec's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// `--metadata` must finish within this.
    pub metadata_timeout: Duration,
    /// The socket must appear within this after spawn.
    pub socket_timeout: Duration,
    /// A 1.1 plugin must answer init with ready within this.
    pub ready_timeout: Duration,
    /// Heartbeat period for 1.1 plugins.
    pub heartbeat_interval: Duration,
    /// Heartbeats missed in a row before a plugin is hung.
    pub heartbeat_misses: u32,
    /// After shutdown, wait this long before SIGTERM.
    pub shutdown_grace: Duration,
    /// After SIGTERM, wait this long before SIGKILL.
    pub term_grace: Duration,
    /// Unit of the restart backoff (1 s: waits of 1, 2, 4, 8, 16 s). Tests shrink it.
    pub backoff_base: Duration,
    /// Ready this long and a plugin counts as healthy (60 s): its failure count resets and a
    /// failure after that restarts it at once.
    pub healthy_after: Duration,
    /// How every descendant of a plugin is found when it stops (`descendants`).
    pub descendants: DescendantTracking,
    /// The cgroup under which the plugins' cgroups are made (`cgroup`, a directory of the cgroup2
    /// hierarchy); `None`: the host's own cgroup.
    pub cgroup: Option<PathBuf>,
    /// Open files each plugin process may have (`RLIMIT_NOFILE`, `max_open_files`, default 1024).
    pub max_open_files: u64,
}

/// How the host finds every descendant of a plugin (`[supervisor] descendants`), so that none
/// outlives the plugin or the host. Each plugin runs in its own process group in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DescendantTracking {
    /// `auto`: a cgroup if one can be made, else the subreaper, else process groups only.
    #[default]
    Auto,
    /// `cgroup`: a cgroup (v2) per plugin; refuse to start if none can be made.
    Cgroup,
    /// `subreaper`: the host is a child subreaper and follows the plugins' processes itself;
    /// refuse to start if it cannot be one.
    Subreaper,
    /// `process-group`: only the plugin's process group is signalled (a descendant that leaves it
    /// escapes). For hosts run inside another program, such as in-process tests.
    ProcessGroup,
}

impl DescendantTracking {
    /// Its spelling in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            DescendantTracking::Auto => "auto",
            DescendantTracking::Cgroup => "cgroup",
            DescendantTracking::Subreaper => "subreaper",
            DescendantTracking::ProcessGroup => "process-group",
        }
    }

    fn parse(v: &str) -> Option<DescendantTracking> {
        [
            DescendantTracking::Auto,
            DescendantTracking::Cgroup,
            DescendantTracking::Subreaper,
            DescendantTracking::ProcessGroup,
        ]
        .into_iter()
        .find(|t| t.as_str() == v)
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_api_body_bytes: 1024 * 1024,
            max_plugin_body_bytes: 8 * 1024 * 1024,
            max_buffered_reply_bytes: 32 * 1024 * 1024,
            plugin_timeout: Duration::from_secs(30),
            allowed_hosts: Vec::new(),
            trusted_proxies: Vec::new(),
            session_idle: Duration::from_secs(12 * 3600),
            session_absolute: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            metadata_timeout: Duration::from_secs(5),
            socket_timeout: Duration::from_secs(2),
            ready_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_misses: 3,
            shutdown_grace: Duration::from_secs(5),
            term_grace: Duration::from_secs(2),
            backoff_base: Duration::from_secs(1),
            healthy_after: Duration::from_secs(60),
            descendants: DescendantTracking::Auto,
            cgroup: None,
            max_open_files: 1024,
        }
    }
}

impl Default for Config {
    /// The built-in defaults, without looking at the disk or the environment ([`Config::load`]
    /// applies `RUNTIME_DIRECTORY` and picks the plugins dir).
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            data_dir: PathBuf::from("/var/lib/toru"),
            plugins_dir: PathBuf::from("/var/lib/toru/plugins"),
            runtime_dir: PathBuf::from("/run/toru"),
            log_level: log::LevelFilter::Info,
            kv_quota_bytes: 1024 * 1024,
            events_per_plugin: 200,
            max_frame_len: toru_plugin_api::codec::MAX_FRAME_LEN,
            log_ring_lines: 1000,
            log_lines_per_sec: 200,
            http: HttpConfig::default(),
            supervisor: SupervisorConfig::default(),
            packages: PackagesConfig::default(),
            update: UpdateConfig::default(),
            isolation: IsolationConfig::default(),
            limits: crate::limits::builtin_defaults(),
            safe_mode: SafeModeConfig::default(),
            mqtt: MqttConfig::default(),
            deprecations: Vec::new(),
        }
    }
}

/// The plugins dir of an image (read-only, installed with the host), used when it exists.
const IMAGE_PLUGINS_DIR: &str = "/usr/lib/toru/plugins";

/// Why the configuration is unusable (a usage error: exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value from the environment or a flag is not valid.
    #[error("invalid value for {name}: {value:?} ({expected})")]
    Value {
        /// The environment variable or flag.
        name: String,
        /// The value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A value in the config file is not valid or out of its key's range.
    #[error("{path}, line {line}: {key} = {value} is refused: {expected}")]
    FileValue {
        /// The file.
        path: PathBuf,
        /// The line of the key (1-based).
        line: usize,
        /// The key, with its table: `http.max_connections`.
        key: String,
        /// The value as written.
        value: String,
        /// What the key accepts.
        expected: String,
    },
}

/// The config file's shape (every key optional; unknown keys are an error, to catch typos).
/// Numbers are read as TOML's `i64` and range-checked by [`FileRules`], so a negative number is
/// refused with its key and line like any other value out of range.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    plugins_dir: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    log_level: Option<String>,
    kv_quota_bytes: Option<i64>,
    events_per_plugin: Option<i64>,
    max_frame_len: Option<i64>,
    log_ring_lines: Option<i64>,
    log_lines_per_sec: Option<i64>,
    http: Option<FileHttp>,
    supervisor: Option<FileSupervisor>,
    packages: Option<FilePackages>,
    update: Option<FileUpdate>,
    isolation: Option<FileIsolation>,
    limits: Option<serde_json::Map<String, serde_json::Value>>,
    safe_mode: Option<FileSafeMode>,
    mqtt: Option<FileMqtt>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMqtt {
    url: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    topic_prefix: Option<String>,
    discovery_prefix: Option<String>,
    commands: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSafeMode {
    after_unclean: Option<i64>,
    clean_secs: Option<i64>,
    keep: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIsolation {
    enabled: Option<bool>,
    uid_min: Option<i64>,
    uid_max: Option<i64>,
    landlock: Option<bool>,
    seccomp: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpdate {
    enabled: Option<bool>,
    rauc: Option<String>,
    health_timeout_ms: Option<i64>,
    reboot_command: Option<Vec<String>>,
    boot_id_file: Option<PathBuf>,
    max_bundle_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePackages {
    probation_secs: Option<i64>,
    allow_unsigned: Option<bool>,
    max_package_bytes: Option<i64>,
    max_unpacked_bytes: Option<i64>,
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSupervisor {
    metadata_timeout_ms: Option<i64>,
    socket_timeout_ms: Option<i64>,
    ready_timeout_ms: Option<i64>,
    heartbeat_interval_ms: Option<i64>,
    heartbeat_misses: Option<i64>,
    shutdown_grace_ms: Option<i64>,
    term_grace_ms: Option<i64>,
    backoff_base_ms: Option<i64>,
    healthy_after_ms: Option<i64>,
    descendants: Option<String>,
    cgroup: Option<PathBuf>,
    max_open_files: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    max_connections: Option<i64>,
    header_timeout_ms: Option<i64>,
    keepalive_timeout_ms: Option<i64>,
    max_header_bytes: Option<i64>,
    max_api_body_bytes: Option<i64>,
    max_plugin_body_bytes: Option<i64>,
    max_buffered_reply_bytes: Option<i64>,
    plugin_timeout_ms: Option<i64>,
    allowed_hosts: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
    session_idle_ms: Option<i64>,
    session_absolute_ms: Option<i64>,
    // Deprecated spellings in whole seconds (read, converted, reported).
    header_timeout_secs: Option<i64>,
    keepalive_timeout_secs: Option<i64>,
    plugin_timeout_secs: Option<i64>,
    session_idle_secs: Option<i64>,
    session_absolute_secs: Option<i64>,
}

/// One millisecond to one day: the range of every supervisor and HTTP timing. The upper bound keeps
/// `Instant + duration` far from overflow.
const TIMING_MS: (i64, i64) = (1, 24 * 3600 * 1000);
/// HTTP timeouts: at least a second (as when they were whole seconds), at most a day.
const HTTP_TIMEOUT_MS: (i64, i64) = (1000, 24 * 3600 * 1000);
/// Session lifetimes: at least a minute, at most a year.
const SESSION_MS: (i64, i64) = (60 * 1000, 366 * 24 * 3600 * 1000);
/// Counts and sizes that must be positive.
const POSITIVE: (i64, i64) = (1, i64::MAX);
/// Sizes where zero is allowed.
const NON_NEGATIVE: (i64, i64) = (0, i64::MAX);
/// The largest `usize` as an `i64` (smaller on 32-bit targets).
const USIZE_MAX: i64 = if usize::BITS < 64 {
    usize::MAX as i64
} else {
    i64::MAX
};
/// Positive, and fits a `usize`.
const POSITIVE_USIZE: (i64, i64) = (1, USIZE_MAX);
/// Non-negative, and fits a `usize`.
const NON_NEGATIVE_USIZE: (i64, i64) = (0, USIZE_MAX);
/// Positive, and fits a `u32`.
const POSITIVE_U32: (i64, i64) = (1, u32::MAX as i64);
/// Longest `[packages] probation_secs`: an install or update answers when its probation is over,
/// and the HTTP server cuts a request after 120 s (`http::conn::MAX_REQUEST_TIME`); 90 s leaves
/// room for the upload, the checks and the start before the probation begins.
pub(crate) const MAX_PROBATION_SECS: i64 = 90;
/// `[safe_mode] after_unclean`: 0 (off) to 1000.
const AFTER_UNCLEAN: (i64, i64) = (0, 1000);
/// `[safe_mode] clean_secs`: a second (for tests) to a week.
const CLEAN_SECS: (i64, i64) = (1, 7 * 24 * 3600);

/// Whether `id` could be a plugin id (`^[a-z0-9][a-z0-9-]{0,62}$`, the protocol's rule).
fn plugin_id_ok(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Range checks with the file and the line of each key, for [`ConfigError::FileValue`].
struct FileRules<'a> {
    path: &'a Path,
    lines: &'a HashMap<String, usize>,
    deprecations: Vec<String>,
}

impl FileRules<'_> {
    fn line(&self, key: &str) -> usize {
        self.lines.get(key).copied().unwrap_or(0)
    }

    fn refuse(&self, key: &str, value: impl ToString, expected: impl Into<String>) -> ConfigError {
        ConfigError::FileValue {
            path: self.path.to_path_buf(),
            line: self.line(key),
            key: key.to_string(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// `v` if it lies in `range` and fits `T`, else a refusal naming `key`.
    fn int<T: TryFrom<i64>>(
        &self,
        key: &str,
        v: i64,
        (min, max): (i64, i64),
    ) -> Result<T, ConfigError> {
        let fits = T::try_from(v).ok().filter(|_| (min..=max).contains(&v));
        fits.ok_or_else(|| {
            let expected = if max == i64::MAX {
                format!("at least {min}")
            } else {
                format!("between {min} and {max}")
            };
            self.refuse(key, v, expected)
        })
    }

    /// The file's keys as [`FileConfig`]. Each key is first read alone, so that an unknown key or
    /// a value of the wrong type is refused with its key and line (serde's own error has neither).
    fn file_config(
        &self,
        root: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<FileConfig, ConfigError> {
        use serde_json::{Map, Value};
        let alone = |table: Option<&str>, key: &str, v: &Value| {
            let entry = Value::Object(Map::from_iter([(key.to_string(), v.clone())]));
            let doc = match table {
                None => entry,
                Some(t) => Value::Object(Map::from_iter([(t.to_string(), entry)])),
            };
            serde_json::from_value::<FileConfig>(doc)
                .map(drop)
                .map_err(|e| {
                    let full = table.map_or_else(|| key.to_string(), |t| format!("{t}.{key}"));
                    let shown = match v {
                        Value::Object(_) => "[table]".to_string(),
                        other => other.to_string(),
                    };
                    self.refuse(&full, shown, e.to_string())
                })
        };
        for (key, v) in root {
            match v {
                // The table's name alone first (an unknown table), then each of its keys.
                Value::Object(table) => {
                    alone(None, key, &Value::Object(Map::new()))?;
                    for (k, v) in table {
                        alone(Some(key), k, v)?;
                    }
                }
                v => alone(None, key, v)?,
            }
        }
        // Every key was read alone above, so this cannot fail; should it, the first line is named.
        serde_json::from_value(Value::Object(root.clone())).map_err(|e| ConfigError::FileValue {
            path: self.path.to_path_buf(),
            line: 1,
            key: "(file)".to_string(),
            value: String::new(),
            expected: e.to_string(),
        })
    }

    /// A duration from `key_ms`, or from its deprecated whole-second spelling `key_secs`.
    fn millis(
        &mut self,
        (key_ms, ms): (&str, Option<i64>),
        (key_secs, secs): (&str, Option<i64>),
        range: (i64, i64),
    ) -> Result<Option<Duration>, ConfigError> {
        let ms = match (ms, secs) {
            (Some(_), Some(_)) => {
                return Err(self.refuse(
                    key_secs,
                    secs.unwrap_or_default(),
                    format!(
                        "{key_ms} (line {}) sets the same; keep only it",
                        self.line(key_ms)
                    ),
                ));
            }
            (Some(v), None) => self.int::<u64>(key_ms, v, range)?,
            (None, Some(v)) => {
                let (min, max) = range;
                let in_secs = ((min + 999) / 1000, max / 1000);
                let v = self.int::<u64>(key_secs, v, in_secs)? * 1000;
                let new_key = key_ms.rsplit('.').next().unwrap_or(key_ms);
                self.deprecations.push(format!(
                    "{}, line {}: {key_secs} is deprecated (durations are in milliseconds): \
                     write {new_key} = {v}",
                    self.path.display(),
                    self.line(key_secs)
                ));
                v
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(Duration::from_millis(ms)))
    }
}

/// Settings given on the command line (flags win over everything).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config FILE`
    pub config: Option<PathBuf>,
    /// `--listen ADDR`
    pub listen: Option<String>,
    /// `--data-dir DIR`
    pub data_dir: Option<PathBuf>,
    /// `--plugins-dir DIR`
    pub plugins_dir: Option<PathBuf>,
    /// `--runtime-dir DIR`
    pub runtime_dir: Option<PathBuf>,
    /// `--log-level LEVEL`
    pub log_level: Option<String>,
}

fn parse_listen(name: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| ConfigError::Value {
        name: name.into(),
        value: v.into(),
        expected: "an address like 0.0.0.0:8080 or 127.0.0.1:8080",
    })
}

fn parse_level(name: &str, v: &str) -> Result<log::LevelFilter, ConfigError> {
    v.parse().map_err(|_| ConfigError::Value {
        name: name.into(),
        value: v.into(),
        expected: "one of off, error, warn, info, debug, trace",
    })
}

impl Config {
    /// Build the configuration: defaults ← file (`--config`, `TORU_CONFIG`) ← `TORU_*` ← flags.
    /// `env` is passed in so tests need not touch the process environment.
    pub fn load(
        flags: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        if let Some(v) = env("RUNTIME_DIRECTORY") {
            // systemd may pass several, colon-separated; ours is the first.
            if let Some(first) = v.split(':').next().filter(|d| !d.is_empty()) {
                c.runtime_dir = PathBuf::from(first);
            }
        }
        if Path::new(IMAGE_PLUGINS_DIR).is_dir() {
            c.plugins_dir = PathBuf::from(IMAGE_PLUGINS_DIR);
        }
        let file = flags
            .config
            .clone()
            .or_else(|| env("TORU_CONFIG").map(PathBuf::from));
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            c.apply_toml(&path, &text)?;
        }
        // Environment, then flags.
        if let Some(v) = env("TORU_LISTEN") {
            c.listen = parse_listen("TORU_LISTEN", &v)?;
        }
        if let Some(v) = env("TORU_DATA_DIR") {
            c.data_dir = v.into();
        }
        if let Some(v) = env("TORU_PLUGINS_DIR") {
            c.plugins_dir = v.into();
        }
        if let Some(v) = env("TORU_RUNTIME_DIR") {
            c.runtime_dir = v.into();
        }
        if let Some(v) = env("TORU_LOG_LEVEL") {
            c.log_level = parse_level("TORU_LOG_LEVEL", &v)?;
        }
        if let Some(v) = &flags.listen {
            c.listen = parse_listen("--listen", v)?;
        }
        if let Some(v) = &flags.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &flags.plugins_dir {
            c.plugins_dir = v.clone();
        }
        if let Some(v) = &flags.runtime_dir {
            c.runtime_dir = v.clone();
        }
        if let Some(v) = &flags.log_level {
            c.log_level = parse_level("--log-level", v)?;
        }
        // Plugins run with their own directory as working directory: every path must be absolute.
        if let Ok(cwd) = std::env::current_dir() {
            for dir in [&mut c.data_dir, &mut c.plugins_dir, &mut c.runtime_dir] {
                if dir.is_relative() {
                    *dir = cwd.join(&*dir);
                }
            }
        }
        Ok(c)
    }

    /// Where installed packages live: `[packages] dir`, else `<data-dir>/packages`. Holds one
    /// folder per package id with one per kept version, and `.staging/` for uploads being checked.
    pub fn packages_dir(&self) -> PathBuf {
        self.packages
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("packages"))
    }

    /// Apply a config file's `text` over `self` (`path` names the file in errors), and add the
    /// deprecated keys it used to [`Config::deprecations`]. Every refusal names its line: a syntax
    /// error is [`ConfigError::Parse`] (`line N: …`); an unknown key, a value of the wrong type or
    /// out of its range is [`ConfigError::FileValue`] with the key. Nothing else is read.
    pub fn apply_toml(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let toml = parse_toml(text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let mut rules = FileRules {
            path,
            lines: &toml.lines,
            deprecations: Vec::new(),
        };
        let f = rules.file_config(&toml.value)?;
        self.apply_file(f, &mut rules)?;
        self.deprecations.append(&mut rules.deprecations);
        Ok(())
    }

    fn apply_file(&mut self, f: FileConfig, rules: &mut FileRules<'_>) -> Result<(), ConfigError> {
        let file_value = |key: &str, e: ConfigError| match e {
            ConfigError::Value {
                value, expected, ..
            } => rules.refuse(key, format!("{value:?}"), expected),
            other => other,
        };
        if let Some(v) = f.listen {
            self.listen = parse_listen("listen", &v).map_err(|e| file_value("listen", e))?;
        }
        if let Some(v) = f.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = f.plugins_dir {
            self.plugins_dir = v;
        }
        if let Some(v) = f.runtime_dir {
            self.runtime_dir = v;
        }
        if let Some(v) = f.log_level {
            self.log_level =
                parse_level("log_level", &v).map_err(|e| file_value("log_level", e))?;
        }
        if let Some(v) = f.kv_quota_bytes {
            self.kv_quota_bytes = rules.int("kv_quota_bytes", v, NON_NEGATIVE)?;
        }
        if let Some(v) = f.events_per_plugin {
            self.events_per_plugin = rules.int("events_per_plugin", v, POSITIVE)?;
        }
        if let Some(v) = f.max_frame_len {
            self.max_frame_len = rules.int("max_frame_len", v, (1024, 64 * 1024 * 1024))?;
        }
        if let Some(v) = f.log_ring_lines {
            self.log_ring_lines = rules.int("log_ring_lines", v, (10, 100_000))?;
        }
        if let Some(v) = f.log_lines_per_sec {
            self.log_lines_per_sec = rules.int("log_lines_per_sec", v, POSITIVE_U32)?;
        }
        if let Some(sv) = f.supervisor {
            let d = &mut self.supervisor;
            let timings = [
                (
                    "metadata_timeout_ms",
                    sv.metadata_timeout_ms,
                    &mut d.metadata_timeout,
                ),
                (
                    "socket_timeout_ms",
                    sv.socket_timeout_ms,
                    &mut d.socket_timeout,
                ),
                (
                    "ready_timeout_ms",
                    sv.ready_timeout_ms,
                    &mut d.ready_timeout,
                ),
                (
                    "heartbeat_interval_ms",
                    sv.heartbeat_interval_ms,
                    &mut d.heartbeat_interval,
                ),
                (
                    "shutdown_grace_ms",
                    sv.shutdown_grace_ms,
                    &mut d.shutdown_grace,
                ),
                ("term_grace_ms", sv.term_grace_ms, &mut d.term_grace),
                ("backoff_base_ms", sv.backoff_base_ms, &mut d.backoff_base),
                (
                    "healthy_after_ms",
                    sv.healthy_after_ms,
                    &mut d.healthy_after,
                ),
            ];
            for (key, v, slot) in timings {
                if let Some(v) = v {
                    let key = format!("supervisor.{key}");
                    *slot = Duration::from_millis(rules.int(&key, v, TIMING_MS)?);
                }
            }
            if let Some(v) = sv.max_open_files {
                d.max_open_files = rules.int("supervisor.max_open_files", v, (16, 1 << 20))?;
                self.limits.set(
                    crate::limits::Key::OpenFiles,
                    Some(crate::limits::LimitValue::Num(d.max_open_files)),
                );
                rules.deprecations.push(format!(
                    "{}, line {}: supervisor.max_open_files is deprecated: write [limits] \
                     open_files = {}",
                    rules.path.display(),
                    rules.line("supervisor.max_open_files"),
                    d.max_open_files
                ));
            }
            if let Some(v) = sv.heartbeat_misses {
                d.heartbeat_misses = rules.int("supervisor.heartbeat_misses", v, POSITIVE_U32)?;
            }
            if let Some(v) = sv.descendants {
                d.descendants = DescendantTracking::parse(&v).ok_or_else(|| {
                    rules.refuse(
                        "supervisor.descendants",
                        format!("{v:?}"),
                        "one of \"auto\", \"cgroup\", \"subreaper\", \"process-group\"",
                    )
                })?;
            }
            if let Some(v) = sv.cgroup {
                if !v.is_absolute() {
                    return Err(rules.refuse(
                        "supervisor.cgroup",
                        format!("{:?}", v.display().to_string()),
                        "an absolute path in the cgroup2 hierarchy, like \"/sys/fs/cgroup/toru\"",
                    ));
                }
                d.cgroup = Some(v);
            }
        }
        if let Some(i) = f.isolation {
            let d = &mut self.isolation;
            if let Some(v) = i.uid_min {
                d.uid_min = rules.int("isolation.uid_min", v, (1000, i64::from(u32::MAX - 2)))?;
            }
            if let Some(v) = i.uid_max {
                d.uid_max = rules.int("isolation.uid_max", v, (1001, i64::from(u32::MAX - 1)))?;
            }
            if d.uid_max <= d.uid_min {
                return Err(rules.refuse(
                    "isolation.uid_max",
                    d.uid_max,
                    format!("greater than isolation.uid_min ({})", d.uid_min),
                ));
            }
            if let Some(v) = i.landlock {
                d.landlock = v;
            }
            if let Some(v) = i.enabled {
                d.enabled = v;
            }
            if let Some(v) = i.seccomp {
                d.seccomp = v;
            }
        }
        if let Some(l) = f.limits {
            for (k, v) in l {
                let full = format!("limits.{k}");
                let key = crate::limits::Key::parse(&k).ok_or_else(|| {
                    rules.refuse(
                        &full,
                        v.to_string(),
                        "one of open_files, processes, address_space, memory, cpu",
                    )
                })?;
                let value = crate::limits::parse(key, &v)
                    .map_err(|e| rules.refuse(&full, e.shown, e.expected))?;
                if let (crate::limits::Key::OpenFiles, crate::limits::LimitValue::Num(n)) =
                    (key, value)
                {
                    self.supervisor.max_open_files = n;
                }
                self.limits.set(key, Some(value));
            }
        }
        if let Some(sm) = f.safe_mode {
            let d = &mut self.safe_mode;
            if let Some(v) = sm.after_unclean {
                d.after_unclean = rules
                    .int("safe_mode.after_unclean", v, AFTER_UNCLEAN)
                    .map_err(|_| {
                        rules.refuse(
                            "safe_mode.after_unclean",
                            v,
                            "between 0 and 1000: the unclean exits in a row that start the host \
                             in safe mode (0 turns safe mode off)",
                        )
                    })?;
            }
            if let Some(v) = sm.clean_secs {
                let secs: u64 = rules
                    .int("safe_mode.clean_secs", v, CLEAN_SECS)
                    .map_err(|_| {
                        rules.refuse(
                            "safe_mode.clean_secs",
                            v,
                            "between 1 and 604800 (a week): how long a run must last to reset the \
                         count of unclean exits",
                        )
                    })?;
                d.clean_after = Duration::from_secs(secs);
            }
            if let Some(v) = sm.keep {
                let mut keep: Vec<String> = Vec::new();
                for id in v {
                    if !plugin_id_ok(&id) {
                        return Err(rules.refuse(
                            "safe_mode.keep",
                            format!("{id:?}"),
                            "plugin ids (lowercase letters, digits and '-', like \"sysinfo\")",
                        ));
                    }
                    if !keep.contains(&id) {
                        keep.push(id);
                    }
                }
                d.keep = keep;
            }
        }
        if let Some(p) = f.packages {
            let d = &mut self.packages;
            if let Some(v) = p.probation_secs {
                let key = "packages.probation_secs";
                let secs: u64 = rules.int(key, v, (0, MAX_PROBATION_SECS)).map_err(|_| {
                    rules.refuse(
                        key,
                        v,
                        format!(
                            "between 0 and {MAX_PROBATION_SECS}: an install or update answers \
                             once its probation is over, and must answer within the HTTP \
                             server's request time limit (120 s)"
                        ),
                    )
                })?;
                d.probation = Duration::from_secs(secs);
            }
            if let Some(v) = p.allow_unsigned {
                d.allow_unsigned = v;
            }
            if let Some(v) = p.max_package_bytes {
                d.max_package_bytes =
                    rules.int("packages.max_package_bytes", v, (1024, 1024 * 1024 * 1024))?;
            }
            if let Some(v) = p.dir {
                if !v.is_absolute() {
                    return Err(rules.refuse(
                        "packages.dir",
                        format!("{:?}", v.display().to_string()),
                        "an absolute path",
                    ));
                }
                d.dir = Some(v);
            }
            if let Some(v) = p.max_unpacked_bytes {
                d.max_unpacked_bytes = rules.int(
                    "packages.max_unpacked_bytes",
                    v,
                    (1024, 16 * 1024 * 1024 * 1024),
                )?;
            }
        }
        if let Some(u) = f.update {
            self.apply_update(u, rules)?;
        }
        if let Some(m) = f.mqtt {
            self.apply_mqtt(m, rules)?;
        }
        if let Some(h) = f.http {
            let d = &mut self.http;
            if let Some(v) = h.max_connections {
                d.max_connections = rules.int("http.max_connections", v, POSITIVE_USIZE)?;
            }
            let timeouts = [
                (
                    ("http.header_timeout_ms", h.header_timeout_ms),
                    ("http.header_timeout_secs", h.header_timeout_secs),
                    HTTP_TIMEOUT_MS,
                    &mut d.header_timeout,
                ),
                (
                    ("http.keepalive_timeout_ms", h.keepalive_timeout_ms),
                    ("http.keepalive_timeout_secs", h.keepalive_timeout_secs),
                    HTTP_TIMEOUT_MS,
                    &mut d.keepalive_timeout,
                ),
                (
                    ("http.plugin_timeout_ms", h.plugin_timeout_ms),
                    ("http.plugin_timeout_secs", h.plugin_timeout_secs),
                    HTTP_TIMEOUT_MS,
                    &mut d.plugin_timeout,
                ),
                (
                    ("http.session_idle_ms", h.session_idle_ms),
                    ("http.session_idle_secs", h.session_idle_secs),
                    SESSION_MS,
                    &mut d.session_idle,
                ),
                (
                    ("http.session_absolute_ms", h.session_absolute_ms),
                    ("http.session_absolute_secs", h.session_absolute_secs),
                    SESSION_MS,
                    &mut d.session_absolute,
                ),
            ];
            for (ms, secs, range, slot) in timeouts {
                if let Some(v) = rules.millis(ms, secs, range)? {
                    *slot = v;
                }
            }
            if let Some(v) = h.max_header_bytes {
                d.max_header_bytes = rules.int("http.max_header_bytes", v, (1024, USIZE_MAX))?;
            }
            if let Some(v) = h.max_api_body_bytes {
                d.max_api_body_bytes =
                    rules.int("http.max_api_body_bytes", v, NON_NEGATIVE_USIZE)?;
            }
            if let Some(v) = h.max_plugin_body_bytes {
                d.max_plugin_body_bytes =
                    rules.int("http.max_plugin_body_bytes", v, NON_NEGATIVE_USIZE)?;
            }
            if let Some(v) = h.max_buffered_reply_bytes {
                d.max_buffered_reply_bytes =
                    rules.int("http.max_buffered_reply_bytes", v, POSITIVE_USIZE)?;
            }
            if let Some(v) = h.allowed_hosts {
                d.allowed_hosts = v;
            }
            if let Some(v) = h.trusted_proxies {
                d.trusted_proxies = v
                    .iter()
                    .map(|s| {
                        s.parse().map_err(|_| {
                            rules.refuse("http.trusted_proxies", format!("{s:?}"), "IP addresses")
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// The `[update]` table over the defaults.
    fn apply_mqtt(&mut self, m: FileMqtt, rules: &FileRules<'_>) -> Result<(), ConfigError> {
        let d = &mut self.mqtt;
        if let Some(v) = m.url {
            d.broker = Some(
                MqttBroker::parse(&v).map_err(|e| rules.refuse("mqtt.url", format!("{v:?}"), e))?,
            );
        }
        if let Some(v) = m.client_id {
            let ok = (1..=128).contains(&v.len())
                && v.chars()
                    .all(|c| c.is_ascii_graphic() && c != '#' && c != '+');
            if !ok {
                return Err(rules.refuse(
                    "mqtt.client_id",
                    format!("{v:?}"),
                    "1 to 128 printable ASCII characters, no spaces (default: the instance id)",
                ));
            }
            d.client_id = Some(v);
        }
        if let Some(v) = m.username {
            if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
                return Err(rules.refuse(
                    "mqtt.username",
                    format!("{v:?}"),
                    "a user name of 1 to 256 characters",
                ));
            }
            d.username = Some(v);
        }
        for (key, v, slot) in [
            ("mqtt.password_file", m.password_file, &mut d.password_file),
            ("mqtt.ca_file", m.ca_file, &mut d.ca_file),
        ] {
            if let Some(v) = v {
                if !v.is_absolute() {
                    return Err(rules.refuse(
                        key,
                        format!("{:?}", v.display().to_string()),
                        "an absolute path",
                    ));
                }
                *slot = Some(v);
            }
        }
        let prefix = |key: &str, v: String| {
            if mqtt_prefix_ok(&v) {
                Ok(v)
            } else {
                Err(rules.refuse(
                    key,
                    format!("{v:?}"),
                    "MQTT topic levels like \"toru/kitchen\": no wildcard (# +), no empty level \
                     (no leading, trailing or doubled /), not starting with $, at most 200 bytes",
                ))
            }
        };
        if let Some(v) = m.topic_prefix {
            d.topic_prefix = Some(prefix("mqtt.topic_prefix", v)?);
        }
        if let Some(v) = m.discovery_prefix {
            d.discovery_prefix = prefix("mqtt.discovery_prefix", v)?;
        }
        if let Some(v) = m.commands {
            d.commands = v;
        }
        if let (Some(pw), None) = (&d.password_file, &d.username) {
            return Err(rules.refuse(
                "mqtt.password_file",
                format!("{:?}", pw.display().to_string()),
                "a password goes with a user name: set mqtt.username too",
            ));
        }
        if let (Some(ca), Some(MqttBroker { tls: false, .. })) = (&d.ca_file, &d.broker) {
            return Err(rules.refuse(
                "mqtt.ca_file",
                format!("{:?}", ca.display().to_string()),
                "a CA file is for a TLS broker: give an mqtts:// url",
            ));
        }
        Ok(())
    }

    fn apply_update(&mut self, u: FileUpdate, rules: &FileRules<'_>) -> Result<(), ConfigError> {
        let d = &mut self.update;
        if let Some(v) = u.enabled {
            d.enabled = v;
        }
        if let Some(v) = u.rauc {
            if v.trim().is_empty() {
                return Err(rules.refuse("update.rauc", "\"\"", "the rauc command"));
            }
            d.rauc = v;
        }
        if let Some(v) = u.health_timeout_ms {
            d.health_timeout =
                Duration::from_millis(rules.int("update.health_timeout_ms", v, TIMING_MS)?);
        }
        if let Some(v) = u.reboot_command {
            if v.first().is_none_or(|c| c.trim().is_empty()) {
                return Err(rules.refuse(
                    "update.reboot_command",
                    format!("{v:?}"),
                    "a command and its arguments, like [\"systemctl\", \"reboot\"]",
                ));
            }
            d.reboot_command = v;
        }
        if let Some(v) = u.boot_id_file {
            if !v.is_absolute() {
                return Err(rules.refuse(
                    "update.boot_id_file",
                    format!("{:?}", v.display().to_string()),
                    "an absolute path",
                ));
            }
            d.boot_id_file = v;
        }
        if let Some(v) = u.max_bundle_bytes {
            d.max_bundle_bytes = rules.int("update.max_bundle_bytes", v, (1024 * 1024, 1 << 40))?;
        }
        Ok(())
    }
}

/// A parsed config file: the value, and the line of every key (`listen`, `http.max_connections`)
/// and table header (`http`).
#[derive(Debug)]
struct ParsedToml {
    value: serde_json::Map<String, serde_json::Value>,
    lines: HashMap<String, usize>,
}

/// Parse the TOML the config file uses into a JSON value (then deserialized with the same
/// `deny_unknown_fields` rules): `[table]` headers, `key = value` with basic or literal strings,
/// integers, booleans and one-line arrays, `#` comments. Other TOML (dates, floats, inline tables,
/// dotted keys, multi-line strings) is refused with the line number. A full TOML parser costs
/// ~80 KiB of the device binary for a file of a dozen flat keys.
fn parse_toml(text: &str) -> Result<ParsedToml, String> {
    use serde_json::{Map, Value};
    let mut root = Map::new();
    let mut lines = HashMap::new();
    let mut table: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let err = |m: &str| format!("line {line_no}: {m}");
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .map(str::trim)
                .filter(|t| is_bare_key(t))
                .ok_or_else(|| err("expected a table header like [http]"))?;
            if root.contains_key(name) {
                return Err(err(&format!("table [{name}] appears twice")));
            }
            root.insert(name.to_string(), Value::Object(Map::new()));
            lines.insert(name.to_string(), line_no);
            table = Some(name.to_string());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err("expected key = value"))?;
        let key = key.trim();
        if !is_bare_key(key) {
            return Err(err(&format!("invalid key {key:?}")));
        }
        let value = parse_value(value.trim()).map_err(|m| err(&m))?;
        let target = match &table {
            None => &mut root,
            Some(t) => match root.get_mut(t) {
                Some(Value::Object(m)) => m,
                _ => return Err(err("internal: table missing")),
            },
        };
        if target.insert(key.to_string(), value).is_some() {
            return Err(err(&format!("key {key:?} appears twice")));
        }
        let full = match &table {
            None => key.to_string(),
            Some(t) => format!("{t}.{key}"),
        };
        lines.insert(full, line_no);
    }
    Ok(ParsedToml { value: root, lines })
}

fn is_bare_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The line without a `#` comment (a `#` inside a string is kept).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (Some('"'), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') => return &line[..i],
            _ => {}
        }
        escaped = false;
    }
    line
}

fn parse_value(v: &str) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    if let Some(inner) = v.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or("arrays must open and close on one line")?;
        let mut items = Vec::new();
        let mut rest = inner.trim();
        while !rest.is_empty() {
            let (item, after) = take_scalar(rest)?;
            items.push(item);
            rest = after.trim_start();
            match rest.strip_prefix(',') {
                Some(r) => rest = r.trim_start(),
                None if rest.is_empty() => {}
                None => return Err(format!("expected ',' in array before {rest:?}")),
            }
        }
        return Ok(Value::Array(items));
    }
    let (value, rest) = take_scalar(v)?;
    if !rest.trim().is_empty() {
        return Err(format!("unexpected {:?} after the value", rest.trim()));
    }
    Ok(value)
}

/// One string, integer or boolean at the start of `v`; returns it and the rest.
fn take_scalar(v: &str) -> Result<(serde_json::Value, &str), String> {
    use serde_json::Value;
    if let Some(body) = v.strip_prefix('\'') {
        let end = body.find('\'').ok_or("unterminated string")?;
        return Ok((Value::String(body[..end].to_string()), &body[end + 1..]));
    }
    if let Some(body) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Ok((Value::String(out), &body[i + 1..])),
                '\\' => match chars.next().map(|(_, e)| e) {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('u') => {
                        let hex: String = (0..4)
                            .filter_map(|_| chars.next().map(|(_, h)| h))
                            .collect();
                        // Four hex digits: `from_str_radix` alone would also take a sign.
                        let ch = Some(&hex)
                            .filter(|h| h.len() == 4 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                            .and_then(char::from_u32)
                            .ok_or_else(|| format!("invalid escape \\u{hex}"))?;
                        out.push(ch);
                    }
                    other => return Err(format!("unsupported escape \\{}", other.unwrap_or(' '))),
                },
                c => out.push(c),
            }
        }
        return Err("unterminated string".into());
    }
    let end = v
        .find(|c: char| c == ',' || c == ']' || c.is_whitespace())
        .unwrap_or(v.len());
    let (word, rest) = v.split_at(end);
    let value = match word {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => {
            let digits = word.replace('_', "");
            let n: i64 = digits.parse().map_err(|_| {
                format!("unsupported value {word:?} (use a \"string\", an integer or true/false)")
            })?;
            Value::from(n)
        }
    };
    Ok((value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn flags_win_over_env_over_file() {
        let dir = std::env::temp_dir().join(format!("toru-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("toru.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/file\"\nplugins_dir = \"/fp\"\n[http]\nmax_connections = 5\n",
        )
        .unwrap();
        let flags = Overrides {
            config: Some(file),
            listen: Some("127.0.0.1:3".into()),
            ..Default::default()
        };
        let c = Config::load(
            &flags,
            &env_of(&[("TORU_LISTEN", "127.0.0.1:2"), ("TORU_DATA_DIR", "/env")]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 3);
        assert_eq!(c.data_dir, PathBuf::from("/env"));
        assert_eq!(c.plugins_dir, PathBuf::from("/fp"));
        assert_eq!(c.http.max_connections, 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn toml_subset() {
        let t = parse_toml(
            "# comment\nlisten = \"0.0.0.0:8080\" # trailing\nlog_level = 'info'\nkv_quota_bytes = 1_048_576\n\n[http]\nallowed_hosts = [\"a.local\", \"b#c\"]\nmax_connections = 64\n[supervisor]\nheartbeat_misses = 3\n",
        )
        .unwrap();
        let v = t.value;
        assert_eq!(t.lines["http.max_connections"], 8);
        assert_eq!(t.lines["listen"], 2);
        assert_eq!(v["listen"], "0.0.0.0:8080");
        assert_eq!(v["log_level"], "info");
        assert_eq!(v["kv_quota_bytes"], 1_048_576);
        assert_eq!(
            v["http"]["allowed_hosts"],
            serde_json::json!(["a.local", "b#c"])
        );
        assert_eq!(v["http"]["max_connections"], 64);
        assert_eq!(v["supervisor"]["heartbeat_misses"], 3);
        assert_eq!(
            parse_toml("a = \"x\\\"y\\u00e9\"").unwrap().value["a"],
            "x\"yé"
        );
        for (bad, needle) in [
            ("listen", "line 1: expected key = value"),
            ("a = 1.5", "line 1: unsupported value"),
            ("a = \"open", "unterminated"),
            ("[http\n", "table header"),
            ("a = 1\na = 2", "line 2: key \"a\" appears twice"),
            ("a = [1,\n2]", "one line"),
            ("a.b = 1", "invalid key"),
            ("a = \"\\u+041\"", "invalid escape"),
            ("a = \"\\u04\"", "invalid escape"),
        ] {
            let e = parse_toml(bad).unwrap_err();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let flags = Overrides {
            listen: Some("nope".into()),
            ..Default::default()
        };
        let e = Config::load(&flags, &env_of(&[])).unwrap_err();
        assert!(e.to_string().contains("--listen"), "{e}");
        let flags = Overrides {
            log_level: Some("loud".into()),
            ..Default::default()
        };
        assert!(Config::load(&flags, &env_of(&[])).is_err());
    }

    #[test]
    fn unknown_key_in_file_is_rejected() {
        let dir = std::env::temp_dir().join(format!("toru-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("toru.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let flags = Overrides {
            config: Some(file),
            ..Default::default()
        };
        let e = Config::load(&flags, &env_of(&[])).unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Load `text` as the config file (a fresh temp file per call).
    fn load_text(text: &str) -> Result<Config, ConfigError> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let file = std::env::temp_dir().join(format!("toru-cfg-{}-{n}.toml", std::process::id()));
        std::fs::write(&file, text).unwrap();
        let flags = Overrides {
            config: Some(file.clone()),
            ..Default::default()
        };
        let result = Config::load(&flags, &env_of(&[]));
        std::fs::remove_file(&file).unwrap();
        result
    }

    #[test]
    fn out_of_range_values_are_refused_with_key_and_line() {
        let cases = [
            ("events_per_plugin = 0", "events_per_plugin", 1),
            ("kv_quota_bytes = -1", "kv_quota_bytes", 1),
            ("max_frame_len = 10", "max_frame_len", 1),
            ("log_ring_lines = 5", "log_ring_lines", 1),
            ("log_ring_lines = 100001", "log_ring_lines", 1),
            ("log_lines_per_sec = 0", "log_lines_per_sec", 1),
            ("log_lines_per_sec = 4294967296", "log_lines_per_sec", 1),
            ("listen = \"nope\"", "listen", 1),
            ("log_level = \"loud\"", "log_level", 1),
            (
                "[supervisor]\nheartbeat_interval_ms = 0",
                "supervisor.heartbeat_interval_ms",
                2,
            ),
            (
                "[supervisor]\n\nbackoff_base_ms = 86400001",
                "supervisor.backoff_base_ms",
                3,
            ),
            (
                "[supervisor]\nheartbeat_misses = 0",
                "supervisor.heartbeat_misses",
                2,
            ),
            (
                "[supervisor]\nhealthy_after_ms = -60000",
                "supervisor.healthy_after_ms",
                2,
            ),
            (
                "[supervisor]\ndescendants = \"cgroups\"",
                "supervisor.descendants",
                2,
            ),
            ("[supervisor]\ncgroup = \"toru\"", "supervisor.cgroup", 2),
            ("[http]\nmax_connections = 0", "http.max_connections", 2),
            (
                "[http]\nheader_timeout_ms = 999",
                "http.header_timeout_ms",
                2,
            ),
            (
                "[http]\nkeepalive_timeout_secs = 0",
                "http.keepalive_timeout_secs",
                2,
            ),
            (
                "[http]\nplugin_timeout_ms = 86400001",
                "http.plugin_timeout_ms",
                2,
            ),
            ("[http]\nsession_idle_ms = 1000", "http.session_idle_ms", 2),
            (
                "[http]\nsession_absolute_secs = 59",
                "http.session_absolute_secs",
                2,
            ),
            ("[http]\nmax_header_bytes = 100", "http.max_header_bytes", 2),
            (
                "[http]\nmax_api_body_bytes = -5",
                "http.max_api_body_bytes",
                2,
            ),
            (
                "[http]\nmax_plugin_body_bytes = -5",
                "http.max_plugin_body_bytes",
                2,
            ),
            (
                "[http]\nmax_buffered_reply_bytes = 0",
                "http.max_buffered_reply_bytes",
                2,
            ),
            (
                "[http]\ntrusted_proxies = [\"nope\"]",
                "http.trusted_proxies",
                2,
            ),
            (
                "[packages]\nprobation_secs = 91",
                "packages.probation_secs",
                2,
            ),
            (
                "[packages]\nprobation_secs = -1",
                "packages.probation_secs",
                2,
            ),
            (
                "[safe_mode]\nafter_unclean = -1",
                "safe_mode.after_unclean",
                2,
            ),
            (
                "[safe_mode]\nafter_unclean = 1001",
                "safe_mode.after_unclean",
                2,
            ),
            ("[safe_mode]\nclean_secs = 0", "safe_mode.clean_secs", 2),
            (
                "[safe_mode]\n\nclean_secs = 604801",
                "safe_mode.clean_secs",
                3,
            ),
            (
                "[safe_mode]\nkeep = [\"sysinfo\", \"Notes\"]",
                "safe_mode.keep",
                2,
            ),
            ("[safe_mode]\nkeep = [\"\"]", "safe_mode.keep", 2),
        ];
        for (text, want_key, want_line) in cases {
            let e = load_text(text).expect_err(text);
            let shown = e.to_string();
            match e {
                ConfigError::FileValue { key, line, .. } => {
                    assert_eq!(
                        (key.as_str(), line),
                        (want_key, want_line),
                        "{text}: {shown}"
                    );
                }
                other => panic!("{text}: not a FileValue refusal: {other}"),
            }
            assert!(
                shown.contains(&format!("line {want_line}: {want_key} = ")),
                "{text}: {shown}"
            );
        }
    }

    /// Unknown keys, unknown tables and values of the wrong type used to be refused with serde's
    /// sentence alone ("unknown field `lisen`…"), naming neither the key's table nor its line.
    #[test]
    fn unknown_keys_and_wrong_types_name_their_key_and_line() {
        let cases = [
            ("\nlisen = \"127.0.0.1:1\"", "lisen", 2),
            ("listen = 5", "listen", 1),
            (
                "[http]\nmax_connections = \"many\"",
                "http.max_connections",
                2,
            ),
            ("[http]\n\nbogus = 1", "http.bogus", 3),
            ("\n[bogus]\nx = 1", "bogus", 2),
            ("[listen]", "listen", 1),
            ("http = 1", "http", 1),
            ("[http]\nallowed_hosts = [1]", "http.allowed_hosts", 2),
            (
                "[supervisor]\nheartbeat_misses = true",
                "supervisor.heartbeat_misses",
                2,
            ),
        ];
        for (text, want_key, want_line) in cases {
            match load_text(text).expect_err(text) {
                ConfigError::FileValue { key, line, .. } => {
                    assert_eq!((key.as_str(), line), (want_key, want_line), "{text}");
                }
                other => panic!("{text}: not a FileValue refusal: {other}"),
            }
        }
    }

    #[test]
    fn values_at_the_bounds_are_kept_exactly() {
        let c = load_text(
            "log_ring_lines = 10\nevents_per_plugin = 1\n[supervisor]\nbackoff_base_ms = 1\n\
             [http]\nheader_timeout_ms = 1000\nmax_header_bytes = 1024\nsession_idle_ms = 60000\n\
             max_buffered_reply_bytes = 1\n",
        )
        .unwrap();
        assert_eq!(c.log_ring_lines, 10);
        assert_eq!(c.events_per_plugin, 1);
        assert_eq!(c.supervisor.backoff_base, Duration::from_millis(1));
        assert_eq!(c.http.header_timeout, Duration::from_millis(1000));
        assert_eq!(c.http.max_header_bytes, 1024);
        assert_eq!(c.http.session_idle, Duration::from_secs(60));
        assert_eq!(c.http.max_buffered_reply_bytes, 1);
        assert!(c.deprecations.is_empty());
    }

    /// The probation was documented as at most 90 s while the parser took up to 3600: a
    /// probation longer than the HTTP request time limit (120 s) outlives the install request, and
    /// the UI's confirmation was cut before the outcome.
    #[test]
    fn probation_defaults_to_30_s_and_is_at_most_90() {
        assert_eq!(
            Config::default().packages.probation,
            Duration::from_secs(30)
        );
        assert_eq!(
            load_text("").unwrap().packages.probation,
            Duration::from_secs(30)
        );
        for secs in [0, 1, 90] {
            let c = load_text(&format!("[packages]\nprobation_secs = {secs}\n")).unwrap();
            assert_eq!(c.packages.probation, Duration::from_secs(secs));
        }
        for secs in [91, 120, 3600] {
            let e = load_text(&format!("\n[packages]\nprobation_secs = {secs}\n")).unwrap_err();
            let shown = e.to_string();
            assert!(
                matches!(&e, ConfigError::FileValue { key, line: 3, .. } if key == "packages.probation_secs"),
                "{shown}"
            );
            assert!(
                shown.contains(&format!(
                    "probation_secs = {secs} is refused: between 0 and 90"
                )) && shown.contains("request time limit"),
                "{shown}"
            );
        }
    }

    // Reads an `mqtts://` url, which a build without TLS refuses.
    #[cfg(feature = "mqtt-tls")]
    #[test]
    fn mqtt_is_off_by_default_and_each_key_is_checked_by_name() {
        let d = load_text("").unwrap().mqtt;
        assert_eq!(d, MqttConfig::default());
        assert!(d.broker.is_none());
        assert_eq!(d.discovery_prefix, "homeassistant");
        let c = load_text(
            "[mqtt]\nurl = \"mqtts://broker.local\"\nclient_id = \"kitchen-1\"\nusername = \"toru\"\n\
             password_file = \"/etc/toru/mqtt.pw\"\nca_file = \"/etc/toru/ca.pem\"\n\
             topic_prefix = \"site/kitchen\"\ndiscovery_prefix = \"ha\"\ncommands = true\n",
        )
        .unwrap()
        .mqtt;
        assert_eq!(
            c.broker,
            Some(MqttBroker {
                tls: true,
                host: "broker.local".into(),
                port: 8883
            })
        );
        assert_eq!(c.client_id.as_deref(), Some("kitchen-1"));
        assert_eq!(c.topic_prefix.as_deref(), Some("site/kitchen"));
        assert_eq!(c.discovery_prefix, "ha");
        assert!(c.commands);
        let b = |u: &str| MqttBroker::parse(u);
        assert_eq!(b("mqtt://10.0.0.2").unwrap().port, 1883);
        assert_eq!(b("mqtt://h:1884/").unwrap().port, 1884);
        let v6 = b("mqtt://[::1]:1885").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1885));
        for bad in [
            "http://h",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://u:p@h",
            "mqtt://h/path",
            "mqtt://[::1",
            "mqtt://h x",
        ] {
            assert!(b(bad).is_err(), "{bad}");
        }
        for (text, key) in [
            ("[mqtt]\nurl = \"tcp://h\"", "mqtt.url"),
            ("[mqtt]\nclient_id = \"a b\"", "mqtt.client_id"),
            ("[mqtt]\nusername = \"\"", "mqtt.username"),
            ("[mqtt]\npassword_file = \"pw\"", "mqtt.password_file"),
            ("[mqtt]\npassword_file = \"/pw\"", "mqtt.password_file"),
            ("[mqtt]\ntopic_prefix = \"a/#\"", "mqtt.topic_prefix"),
            ("[mqtt]\ntopic_prefix = \"/a\"", "mqtt.topic_prefix"),
            ("[mqtt]\ntopic_prefix = \"a//b\"", "mqtt.topic_prefix"),
            (
                "[mqtt]\ndiscovery_prefix = \"$SYS\"",
                "mqtt.discovery_prefix",
            ),
            (
                "[mqtt]\nurl = \"mqtt://h\"\nca_file = \"/ca.pem\"",
                "mqtt.ca_file",
            ),
            ("[mqtt]\ncommand = true", "mqtt.command"),
        ] {
            let e = load_text(text).unwrap_err();
            assert!(
                matches!(&e, ConfigError::FileValue { key: k, .. } if k == key),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn safe_mode_is_read_with_its_defaults_and_refusals_say_what_the_key_means() {
        let d = load_text("").unwrap().safe_mode;
        assert_eq!(d, SafeModeConfig::default());
        assert_eq!(
            (d.after_unclean, d.clean_after, d.keep.len()),
            (3, Duration::from_secs(600), 0)
        );
        let c = load_text(
            "[safe_mode]\nafter_unclean = 0\nclean_secs = 1\nkeep = [\"sysinfo\", \"notes\", \"sysinfo\"]\n",
        )
        .unwrap()
        .safe_mode;
        assert_eq!(c.after_unclean, 0);
        assert_eq!(c.clean_after, Duration::from_secs(1));
        assert_eq!(c.keep, ["sysinfo", "notes"], "in order, once each");
        let e = load_text("[safe_mode]\nafter_unclean = 5000\n").unwrap_err();
        assert!(e.to_string().contains("0 turns safe mode off"), "{e}");
        let e = load_text("[safe_mode]\nkeep = [\"a b\"]\n").unwrap_err();
        assert!(e.to_string().contains("plugin ids"), "{e}");
        let e = load_text("[safe_mode]\nkept = []\n").unwrap_err();
        assert!(
            matches!(&e, ConfigError::FileValue { key, .. } if key == "safe_mode.kept"),
            "{e}"
        );
    }

    #[test]
    fn descendant_tracking_is_read_by_its_name() {
        assert_eq!(
            load_text("").unwrap().supervisor.descendants,
            DescendantTracking::Auto
        );
        for mode in ["auto", "cgroup", "subreaper", "process-group"] {
            let c = load_text(&format!("[supervisor]\ndescendants = \"{mode}\"\n")).unwrap();
            assert_eq!(c.supervisor.descendants.as_str(), mode);
        }
        let c = load_text("[supervisor]\ncgroup = \"/sys/fs/cgroup/toru\"\n").unwrap();
        assert_eq!(
            c.supervisor.cgroup.as_deref(),
            Some(Path::new("/sys/fs/cgroup/toru"))
        );
    }

    #[test]
    fn deprecated_second_keys_still_work_and_are_reported() {
        let c = load_text("[http]\n\nplugin_timeout_secs = 3\nsession_idle_secs = 120\n").unwrap();
        assert_eq!(c.http.plugin_timeout, Duration::from_secs(3));
        assert_eq!(c.http.session_idle, Duration::from_secs(120));
        assert_eq!(c.deprecations.len(), 2, "{:?}", c.deprecations);
        assert!(
            c.deprecations[0].contains("line 3: http.plugin_timeout_secs is deprecated")
                && c.deprecations[0].contains("plugin_timeout_ms = 3000"),
            "{:?}",
            c.deprecations
        );
        let c = load_text("[http]\nplugin_timeout_ms = 1500\n").unwrap();
        assert_eq!(c.http.plugin_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn both_spellings_of_one_duration_are_refused() {
        let e =
            load_text("[http]\nplugin_timeout_ms = 2000\nplugin_timeout_secs = 2\n").unwrap_err();
        assert!(
            matches!(&e, ConfigError::FileValue { key, line: 3, .. } if key == "http.plugin_timeout_secs"),
            "{e}"
        );
        assert!(e.to_string().contains("plugin_timeout_ms (line 2)"), "{e}");
    }

    #[test]
    fn update_section_is_read_and_its_values_checked() {
        let d = Config::default().update;
        assert!(!d.enabled, "the image turns updates on");
        assert_eq!(d.rauc, "rauc");
        assert_eq!(d.health_timeout, Duration::from_secs(300));
        assert_eq!(d.reboot_command, ["systemctl", "reboot"]);
        assert_eq!(
            d.boot_id_file,
            PathBuf::from("/proc/sys/kernel/random/boot_id")
        );
        assert_eq!(d.max_bundle_bytes, 2 << 30);
        let c = load_text(
            "[update]\nenabled = true\nrauc = \"/usr/bin/rauc\"\nhealth_timeout_ms = 1500\n\
             reboot_command = [\"/bin/sh\", \"-c\", \"touch /x\"]\nboot_id_file = \"/tmp/boot\"\n\
             max_bundle_bytes = 1048576\n",
        )
        .unwrap();
        let u = c.update;
        assert!(u.enabled);
        assert_eq!(u.rauc, "/usr/bin/rauc");
        assert_eq!(u.health_timeout, Duration::from_millis(1500));
        assert_eq!(u.reboot_command, ["/bin/sh", "-c", "touch /x"]);
        assert_eq!(u.boot_id_file, PathBuf::from("/tmp/boot"));
        assert_eq!(u.max_bundle_bytes, 1 << 20);
        for (text, key) in [
            (
                "[update]\nhealth_timeout_ms = 0",
                "update.health_timeout_ms",
            ),
            ("[update]\nreboot_command = []", "update.reboot_command"),
            (
                "[update]\nreboot_command = [\" \"]",
                "update.reboot_command",
            ),
            (
                "[update]\nboot_id_file = \"boot_id\"",
                "update.boot_id_file",
            ),
            (
                "[update]\nmax_bundle_bytes = 1000",
                "update.max_bundle_bytes",
            ),
            ("[update]\nrauc = \"\"", "update.rauc"),
            ("[update]\nhealth_timeout = 300", "update.health_timeout"),
        ] {
            match load_text(text).expect_err(text) {
                ConfigError::FileValue {
                    key: k, line: 2, ..
                } => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other}"),
            }
        }
    }

    #[test]
    fn defaults_read_neither_disk_nor_environment_and_load_applies_runtime_directory() {
        assert_eq!(Config::default().runtime_dir, PathBuf::from("/run/toru"));
        let c = Config::load(
            &Overrides::default(),
            &env_of(&[("RUNTIME_DIRECTORY", "/run/a:/run/b")]),
        )
        .unwrap();
        assert_eq!(c.runtime_dir, PathBuf::from("/run/a"));
    }
}
