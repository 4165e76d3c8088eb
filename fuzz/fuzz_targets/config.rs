//! The config file parser (`Config::apply_toml`, the TOML subset of `src/config.rs`) on arbitrary
//! text. Properties:
//! - a file that parses renders back (every key, written as this target's own renderer writes
//!   TOML) to a file that parses to the same `Config`, without deprecations, and renders the same;
//! - a file that is refused is refused with a line: a syntax error says `line N:` and a refused
//!   key names the key, whose last part is written on line N (N within the file).
#![no_main]

use std::fmt::Write as _;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use toru::config::{Config, ConfigError};

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(o, "\\u{:04x}", u32::from(c));
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn path(p: &Path) -> String {
    quote(p.to_str().expect("paths from a TOML file are UTF-8"))
}

fn list(items: impl Iterator<Item = String>) -> String {
    format!(
        "[{}]",
        items.map(|s| quote(&s)).collect::<Vec<_>>().join(", ")
    )
}

/// Every setting a config file can hold, in the keys `docs` and `src/config.rs` name.
fn render(c: &Config) -> String {
    let ms = |d: std::time::Duration| d.as_millis();
    let h = &c.http;
    let s = &c.supervisor;
    let mut o = String::new();
    let _ = writeln!(o, "listen = {}", quote(&c.listen.to_string()));
    let _ = writeln!(o, "data_dir = {}", path(&c.data_dir));
    let _ = writeln!(o, "plugins_dir = {}", path(&c.plugins_dir));
    let _ = writeln!(o, "runtime_dir = {}", path(&c.runtime_dir));
    let _ = writeln!(
        o,
        "log_level = {}",
        quote(&c.log_level.as_str().to_lowercase())
    );
    let _ = writeln!(o, "kv_quota_bytes = {}", c.kv_quota_bytes);
    let _ = writeln!(o, "events_per_plugin = {}", c.events_per_plugin);
    let _ = writeln!(o, "max_frame_len = {}", c.max_frame_len);
    let _ = writeln!(o, "log_ring_lines = {}", c.log_ring_lines);
    let _ = writeln!(o, "log_lines_per_sec = {}", c.log_lines_per_sec);
    let _ = writeln!(o, "[http]");
    let _ = writeln!(o, "max_connections = {}", h.max_connections);
    let _ = writeln!(o, "header_timeout_ms = {}", ms(h.header_timeout));
    let _ = writeln!(o, "keepalive_timeout_ms = {}", ms(h.keepalive_timeout));
    let _ = writeln!(o, "max_header_bytes = {}", h.max_header_bytes);
    let _ = writeln!(o, "max_api_body_bytes = {}", h.max_api_body_bytes);
    let _ = writeln!(o, "max_plugin_body_bytes = {}", h.max_plugin_body_bytes);
    let _ = writeln!(
        o,
        "max_buffered_reply_bytes = {}",
        h.max_buffered_reply_bytes
    );
    let _ = writeln!(o, "plugin_timeout_ms = {}", ms(h.plugin_timeout));
    let _ = writeln!(
        o,
        "allowed_hosts = {}",
        list(h.allowed_hosts.iter().cloned())
    );
    let _ = writeln!(
        o,
        "trusted_proxies = {}",
        list(h.trusted_proxies.iter().map(|p| p.to_string()))
    );
    let _ = writeln!(o, "session_idle_ms = {}", ms(h.session_idle));
    let _ = writeln!(o, "session_absolute_ms = {}", ms(h.session_absolute));
    let _ = writeln!(o, "[supervisor]");
    let _ = writeln!(o, "metadata_timeout_ms = {}", ms(s.metadata_timeout));
    let _ = writeln!(o, "socket_timeout_ms = {}", ms(s.socket_timeout));
    let _ = writeln!(o, "ready_timeout_ms = {}", ms(s.ready_timeout));
    let _ = writeln!(o, "heartbeat_interval_ms = {}", ms(s.heartbeat_interval));
    let _ = writeln!(o, "heartbeat_misses = {}", s.heartbeat_misses);
    let _ = writeln!(o, "shutdown_grace_ms = {}", ms(s.shutdown_grace));
    let _ = writeln!(o, "term_grace_ms = {}", ms(s.term_grace));
    let _ = writeln!(o, "backoff_base_ms = {}", ms(s.backoff_base));
    let _ = writeln!(o, "healthy_after_ms = {}", ms(s.healthy_after));
    let i = &c.isolation;
    let _ = writeln!(o, "[isolation]");
    let _ = writeln!(o, "enabled = {}", i.enabled);
    let _ = writeln!(o, "uid_min = {}", i.uid_min);
    let _ = writeln!(o, "uid_max = {}", i.uid_max);
    let _ = writeln!(o, "landlock = {}", i.landlock);
    let _ = writeln!(o, "seccomp = {}", i.seccomp);
    let _ = writeln!(o, "[limits]");
    for key in toru::limits::Key::ALL {
        let value = match c.limits.get(key) {
            None => continue,
            Some(toru::limits::LimitValue::Num(n)) => n.to_string(),
            Some(toru::limits::LimitValue::Percent(p)) => format!("\"{p}%\""),
            Some(toru::limits::LimitValue::Unlimited) => "\"unlimited\"".to_string(),
            Some(toru::limits::LimitValue::Cores(c)) => format!("\"{c}\""),
        };
        let _ = writeln!(o, "{key} = {value}");
    }
    let p = &c.packages;
    let _ = writeln!(o, "[packages]");
    let _ = writeln!(o, "probation_secs = {}", p.probation.as_secs());
    let _ = writeln!(o, "allow_unsigned = {}", p.allow_unsigned);
    let _ = writeln!(o, "max_package_bytes = {}", p.max_package_bytes);
    let _ = writeln!(o, "max_unpacked_bytes = {}", p.max_unpacked_bytes);
    if let Some(d) = &p.dir {
        let _ = writeln!(o, "dir = {}", path(d));
    }
    let m = &c.safe_mode;
    let _ = writeln!(o, "[safe_mode]");
    let _ = writeln!(o, "after_unclean = {}", m.after_unclean);
    let _ = writeln!(o, "clean_secs = {}", m.clean_after.as_secs());
    let _ = writeln!(o, "keep = {}", list(m.keep.iter().cloned()));
    let u = &c.update;
    let _ = writeln!(o, "[update]");
    let _ = writeln!(o, "enabled = {}", u.enabled);
    let _ = writeln!(o, "rauc = {}", quote(&u.rauc));
    let _ = writeln!(o, "health_timeout_ms = {}", ms(u.health_timeout));
    let _ = writeln!(
        o,
        "reboot_command = {}",
        list(u.reboot_command.iter().cloned())
    );
    let _ = writeln!(o, "boot_id_file = {}", path(&u.boot_id_file));
    let _ = writeln!(o, "max_bundle_bytes = {}", u.max_bundle_bytes);
    o
}

/// `N` of a message that starts `line N:`.
fn line_of(message: &str) -> Option<usize> {
    message
        .strip_prefix("line ")?
        .split_once(':')?
        .0
        .parse()
        .ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.toml");
    let lines: Vec<&str> = text.lines().collect();
    let mut parsed = Config::default();
    match parsed.apply_toml(file, text) {
        Ok(()) => {
            parsed.deprecations.clear();
            let rendered = render(&parsed);
            let mut again = Config::default();
            if let Err(e) = again.apply_toml(file, &rendered) {
                panic!("the rendered config is refused: {e}\n{rendered}");
            }
            assert!(again.deprecations.is_empty(), "{:?}", again.deprecations);
            assert_eq!(again, parsed, "{rendered}");
            assert_eq!(render(&again), rendered);
        }
        Err(ConfigError::Parse { message, .. }) => {
            let n = line_of(&message).unwrap_or_else(|| panic!("no line in {message:?}"));
            assert!((1..=lines.len()).contains(&n), "{message:?}");
        }
        Err(ConfigError::FileValue { line, key, .. }) => {
            assert!((1..=lines.len()).contains(&line), "{key} on line {line}");
            let last = key.rsplit('.').next().unwrap_or(&key);
            assert!(
                lines[line - 1].contains(last),
                "{key} is not on line {line}: {:?}",
                lines[line - 1]
            );
        }
        Err(e) => panic!("a config text refused without a line: {e}"),
    }
});
