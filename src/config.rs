//! Configuration: defaults that fit a device, overridden by the config file (TOML), then by `TORU_*`
//! environment variables, then by command-line flags. Parsing only; nothing here touches the disk
//! except reading the config file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything the host needs to start.
#[derive(Debug, Clone)]
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
}

/// HTTP limits (all configurable) and auth settings.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let runtime_dir = std::env::var_os("RUNTIME_DIRECTORY")
            .map(|v| {
                // systemd may pass several, colon-separated; ours is the first.
                let s = v.to_string_lossy().into_owned();
                PathBuf::from(s.split(':').next().unwrap_or("/run/toru"))
            })
            .unwrap_or_else(|| PathBuf::from("/run/toru"));
        let plugins_dir = if Path::new("/usr/lib/toru/plugins").is_dir() {
            PathBuf::from("/usr/lib/toru/plugins")
        } else {
            PathBuf::from("/var/lib/toru/plugins")
        };
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            data_dir: PathBuf::from("/var/lib/toru"),
            plugins_dir,
            runtime_dir,
            log_level: log::LevelFilter::Info,
            kv_quota_bytes: 1024 * 1024,
            events_per_plugin: 200,
            max_frame_len: toru_plugin_api::codec::MAX_FRAME_LEN,
            log_ring_lines: 1000,
            log_lines_per_sec: 200,
            http: HttpConfig::default(),
            supervisor: SupervisorConfig::default(),
        }
    }
}

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
    /// A value is not valid.
    #[error("invalid value for {name}: {value:?} ({expected})")]
    Value {
        /// The option.
        name: String,
        /// The value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

/// The config file's shape (every key optional; unknown keys are an error, to catch typos).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    plugins_dir: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    log_level: Option<String>,
    kv_quota_bytes: Option<u64>,
    events_per_plugin: Option<u64>,
    max_frame_len: Option<usize>,
    log_ring_lines: Option<usize>,
    log_lines_per_sec: Option<u32>,
    http: Option<FileHttp>,
    supervisor: Option<FileSupervisor>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSupervisor {
    metadata_timeout_ms: Option<u64>,
    socket_timeout_ms: Option<u64>,
    ready_timeout_ms: Option<u64>,
    heartbeat_interval_ms: Option<u64>,
    heartbeat_misses: Option<u32>,
    shutdown_grace_ms: Option<u64>,
    term_grace_ms: Option<u64>,
    backoff_base_ms: Option<u64>,
    healthy_after_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    max_connections: Option<usize>,
    header_timeout_secs: Option<u64>,
    keepalive_timeout_secs: Option<u64>,
    max_header_bytes: Option<usize>,
    max_api_body_bytes: Option<usize>,
    max_plugin_body_bytes: Option<usize>,
    plugin_timeout_secs: Option<u64>,
    allowed_hosts: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
    session_idle_secs: Option<u64>,
    session_absolute_secs: Option<u64>,
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
        let file = flags
            .config
            .clone()
            .or_else(|| env("TORU_CONFIG").map(PathBuf::from));
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let f: FileConfig = parse_toml(&text)
                .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
                .map_err(|message| ConfigError::Parse {
                    path: path.clone(),
                    message,
                })?;
            c.apply_file(f)?;
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

    fn apply_file(&mut self, f: FileConfig) -> Result<(), ConfigError> {
        if let Some(v) = f.listen {
            self.listen = parse_listen("listen", &v)?;
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
            self.log_level = parse_level("log_level", &v)?;
        }
        if let Some(v) = f.kv_quota_bytes {
            self.kv_quota_bytes = v;
        }
        if let Some(v) = f.events_per_plugin {
            self.events_per_plugin = v.max(1);
        }
        if let Some(v) = f.max_frame_len {
            if !(1024..=64 * 1024 * 1024).contains(&v) {
                return Err(ConfigError::Value {
                    name: "max_frame_len".into(),
                    value: v.to_string(),
                    expected: "between 1024 and 67108864 bytes",
                });
            }
            self.max_frame_len = v;
        }
        if let Some(v) = f.log_ring_lines {
            self.log_ring_lines = v.clamp(10, 100_000);
        }
        if let Some(v) = f.log_lines_per_sec {
            self.log_lines_per_sec = v.max(1);
        }
        if let Some(sv) = f.supervisor {
            let ms = |v: u64| Duration::from_millis(v.max(1));
            let d = &mut self.supervisor;
            let pairs = [
                (sv.metadata_timeout_ms, &mut d.metadata_timeout),
                (sv.socket_timeout_ms, &mut d.socket_timeout),
                (sv.ready_timeout_ms, &mut d.ready_timeout),
                (sv.heartbeat_interval_ms, &mut d.heartbeat_interval),
                (sv.shutdown_grace_ms, &mut d.shutdown_grace),
                (sv.term_grace_ms, &mut d.term_grace),
                (sv.backoff_base_ms, &mut d.backoff_base),
                (sv.healthy_after_ms, &mut d.healthy_after),
            ];
            for (v, slot) in pairs {
                if let Some(v) = v {
                    *slot = ms(v);
                }
            }
            if let Some(v) = sv.heartbeat_misses {
                d.heartbeat_misses = v.max(1);
            }
        }
        if let Some(h) = f.http {
            let secs = Duration::from_secs;
            let d = &mut self.http;
            if let Some(v) = h.max_connections {
                d.max_connections = v.max(1);
            }
            if let Some(v) = h.header_timeout_secs {
                d.header_timeout = secs(v.max(1));
            }
            if let Some(v) = h.keepalive_timeout_secs {
                d.keepalive_timeout = secs(v.max(1));
            }
            if let Some(v) = h.max_header_bytes {
                d.max_header_bytes = v.max(1024);
            }
            if let Some(v) = h.max_api_body_bytes {
                d.max_api_body_bytes = v;
            }
            if let Some(v) = h.max_plugin_body_bytes {
                d.max_plugin_body_bytes = v;
            }
            if let Some(v) = h.plugin_timeout_secs {
                d.plugin_timeout = secs(v.max(1));
            }
            if let Some(v) = h.allowed_hosts {
                d.allowed_hosts = v;
            }
            if let Some(v) = h.trusted_proxies {
                d.trusted_proxies = v
                    .iter()
                    .map(|s| {
                        s.parse().map_err(|_| ConfigError::Value {
                            name: "http.trusted_proxies".into(),
                            value: s.clone(),
                            expected: "IP addresses",
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
            if let Some(v) = h.session_idle_secs {
                d.session_idle = secs(v.max(60));
            }
            if let Some(v) = h.session_absolute_secs {
                d.session_absolute = secs(v.max(60));
            }
        }
        Ok(())
    }
}

/// Parse the TOML the config file uses into a JSON value (then deserialized with the same
/// `deny_unknown_fields` rules): `[table]` headers, `key = value` with basic or literal strings,
/// integers, booleans and one-line arrays, `#` comments. Other TOML (dates, floats, inline tables,
/// dotted keys, multi-line strings) is refused with the line number. A full TOML parser costs
/// ~80 KiB of the device binary for a file of a dozen flat keys.
pub fn parse_toml(text: &str) -> Result<serde_json::Value, String> {
    use serde_json::{Map, Value};
    let mut root = Map::new();
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
    }
    Ok(Value::Object(root))
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
                        let ch = u32::from_str_radix(&hex, 16)
                            .ok()
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
        let v = parse_toml(
            "# comment\nlisten = \"0.0.0.0:8080\" # trailing\nlog_level = 'info'\nkv_quota_bytes = 1_048_576\n\n[http]\nallowed_hosts = [\"a.local\", \"b#c\"]\nmax_connections = 64\n[supervisor]\nheartbeat_misses = 3\n",
        )
        .unwrap();
        assert_eq!(v["listen"], "0.0.0.0:8080");
        assert_eq!(v["log_level"], "info");
        assert_eq!(v["kv_quota_bytes"], 1_048_576);
        assert_eq!(
            v["http"]["allowed_hosts"],
            serde_json::json!(["a.local", "b#c"])
        );
        assert_eq!(v["http"]["max_connections"], 64);
        assert_eq!(v["supervisor"]["heartbeat_misses"], 3);
        assert_eq!(parse_toml("a = \"x\\\"y\\u00e9\"").unwrap()["a"], "x\"yé");
        for (bad, needle) in [
            ("listen", "line 1: expected key = value"),
            ("a = 1.5", "line 1: unsupported value"),
            ("a = \"open", "unterminated"),
            ("[http\n", "table header"),
            ("a = 1\na = 2", "line 2: key \"a\" appears twice"),
            ("a = [1,\n2]", "one line"),
            ("a.b = 1", "invalid key"),
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
}
