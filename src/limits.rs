//! The resource limits a plugin runs with: their names, how a value is written (in the config file,
//! a manifest's `[limits]`, the admin's overrides) and which one is in force. Pure: no I/O, no
//! processes; `supervisor` turns the resolved figures into rlimits and cgroup files.
//!
//! | key | meaning | values |
//! |---|---|---|
//! | `open_files` | `RLIMIT_NOFILE` | a count, 16 ..= 1 048 576 |
//! | `processes` | `RLIMIT_NPROC` (own uid only) and the cgroup's `pids.max` | a count 1 ..= 1 000 000, or `"unlimited"` |
//! | `address_space` | `RLIMIT_AS` | bytes (≥ 16 MiB): `536870912`, `"512M"`, `"2G"`, or `"unlimited"` |
//! | `memory` | the cgroup's `memory.max` | bytes (≥ 4 MiB), `"N%"` of the device's memory, or `"unlimited"` |
//! | `cpu` | the cgroup's `cpu.max`, in cores | `0.5`, `2`, `"1.5"` (0.01 ..= 1024), or `"unlimited"` |
//!
//! Precedence per key: the admin's override, else the manifest's request, else the host's default.
//!
//! Also what a manifest's `[permissions]` may ask for ([`Permissions`]): supplementary `groups`,
//! `syscalls` lifted from the seccomp deny list, `network` (`none`, `local`, `any`) and a `reason`
//! shown to the admin. Groups and system calls are in force only once the admin grants them.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// One limit's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Key {
    /// Open file descriptors.
    OpenFiles,
    /// Processes (and threads).
    Processes,
    /// Virtual address space in bytes.
    AddressSpace,
    /// Memory (cgroup) in bytes.
    Memory,
    /// CPU time in cores.
    Cpu,
}

impl Key {
    /// Every key, in the order they are shown.
    pub const ALL: [Key; 5] = [
        Key::OpenFiles,
        Key::Processes,
        Key::AddressSpace,
        Key::Memory,
        Key::Cpu,
    ];

    /// Its spelling in files and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Key::OpenFiles => "open_files",
            Key::Processes => "processes",
            Key::AddressSpace => "address_space",
            Key::Memory => "memory",
            Key::Cpu => "cpu",
        }
    }

    /// The key spelled `s`.
    pub fn parse(s: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn expected(self) -> &'static str {
        match self {
            Key::OpenFiles => "a count between 16 and 1048576",
            Key::Processes => "a count between 1 and 1000000, or \"unlimited\"",
            Key::AddressSpace => {
                "bytes (at least 16M) like 536870912, \"512M\" or \"2G\", or \"unlimited\""
            }
            Key::Memory => {
                "bytes (at least 4M) like \"256M\", a share of the device's memory like \"50%\", or \"unlimited\""
            }
            Key::Cpu => "cores between 0.01 and 1024 like 0.5 or \"2\", or \"unlimited\"",
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One limit's value as written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LimitValue {
    /// No limit.
    Unlimited,
    /// A count or a number of bytes.
    Num(u64),
    /// A share of the device's memory, 1 ..= 100.
    Percent(u32),
    /// Cores.
    Cores(f64),
}

impl LimitValue {
    /// As JSON the way the API and the store write it: a number, `"50%"`, or `"unlimited"`.
    pub fn to_json(self) -> Value {
        match self {
            LimitValue::Unlimited => Value::from("unlimited"),
            LimitValue::Num(n) => Value::from(n),
            LimitValue::Percent(p) => Value::from(format!("{p}%")),
            LimitValue::Cores(c) => Value::from(c),
        }
    }
}

/// A value that is not one `key` accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {shown} is not {expected}")]
pub struct LimitError {
    /// The key.
    pub key: String,
    /// The value as written.
    pub shown: String,
    /// What is accepted.
    pub expected: String,
}

fn refuse(key: Key, v: &Value) -> LimitError {
    LimitError {
        key: key.as_str().to_string(),
        shown: v.to_string(),
        expected: key.expected().to_string(),
    }
}

/// Bytes written as digits with an optional `K`, `M`, `G` or `T` (binary multiples; `KiB`, `MiB`,
/// `MB`… are read the same), or `None`.
fn bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// Read `v` as a value of `key`.
pub fn parse(key: Key, v: &Value) -> Result<LimitValue, LimitError> {
    let bad = || refuse(key, v);
    let unlimited = v.as_str().is_some_and(|s| s.trim() == "unlimited");
    match key {
        Key::OpenFiles => v
            .as_u64()
            .filter(|n| (16..=1_048_576).contains(n))
            .map(LimitValue::Num)
            .ok_or_else(bad),
        Key::Processes if unlimited => Ok(LimitValue::Unlimited),
        Key::Processes => v
            .as_u64()
            .filter(|n| (1..=1_000_000).contains(n))
            .map(LimitValue::Num)
            .ok_or_else(bad),
        Key::AddressSpace | Key::Memory if unlimited => Ok(LimitValue::Unlimited),
        Key::AddressSpace | Key::Memory => {
            if key == Key::Memory
                && let Some(p) = v.as_str().and_then(|s| s.trim().strip_suffix('%'))
            {
                return p
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|p| (1..=100).contains(p))
                    .map(LimitValue::Percent)
                    .ok_or_else(bad);
            }
            let floor = if key == Key::Memory {
                4 << 20
            } else {
                16 << 20
            };
            v.as_u64()
                .or_else(|| v.as_str().and_then(bytes))
                .filter(|n| *n >= floor)
                .map(LimitValue::Num)
                .ok_or_else(bad)
        }
        Key::Cpu if unlimited => Ok(LimitValue::Unlimited),
        Key::Cpu => v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse::<f64>().ok()))
            .filter(|c| c.is_finite() && (0.01..=1024.0).contains(c))
            .map(LimitValue::Cores)
            .ok_or_else(bad),
    }
}

/// Some limits, by key (a layer: the defaults, a manifest's request, the admin's overrides).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits(BTreeMap<Key, LimitValue>);

impl Limits {
    /// The value set for `key`.
    pub fn get(&self, key: Key) -> Option<LimitValue> {
        self.0.get(&key).copied()
    }

    /// Set (`Some`) or clear (`None`) `key`.
    pub fn set(&mut self, key: Key, value: Option<LimitValue>) {
        match value {
            Some(v) => self.0.insert(key, v),
            None => self.0.remove(&key),
        };
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Read a JSON object of limits (a manifest's `[limits]`, the store's overrides). Unknown keys
    /// and bad values are refused, naming the key; `null` values are skipped.
    pub fn from_json(v: &Value) -> Result<Limits, LimitError> {
        let mut out = Limits::default();
        let Some(obj) = v.as_object() else {
            return Err(LimitError {
                key: "limits".into(),
                shown: v.to_string(),
                expected: "a table of limits".into(),
            });
        };
        for (k, v) in obj {
            let key = Key::parse(k).ok_or_else(|| LimitError {
                key: k.clone(),
                shown: v.to_string(),
                expected: format!("a known limit ({})", Key::ALL.map(Key::as_str).join(", ")),
            })?;
            if !v.is_null() {
                out.set(key, Some(parse(key, v)?));
            }
        }
        Ok(out)
    }

    /// As a JSON object (the store's form).
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_json()))
                .collect(),
        )
    }
}

/// Where a limit in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The host's `[limits]`.
    Default,
    /// The package's manifest.
    Manifest,
    /// The admin's override.
    Admin,
}

/// The limits in force for one plugin, as figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved {
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// `RLIMIT_NPROC` / `pids.max`; `None`: unlimited.
    pub processes: Option<u64>,
    /// `RLIMIT_AS` in bytes; `None`: unlimited.
    pub address_space: Option<u64>,
    /// `memory.max` in bytes; `None`: unlimited.
    pub memory: Option<u64>,
    /// `cpu.max` in cores; `None`: unlimited.
    pub cpu: Option<f64>,
    /// Where each came from, in [`Key::ALL`] order.
    pub sources: [Source; 5],
}

impl Resolved {
    /// The figure for `key` as JSON (`null`: unlimited; cores for `cpu`).
    pub fn value_json(&self, key: Key) -> Value {
        match key {
            Key::OpenFiles => Value::from(self.open_files),
            Key::Processes => self.processes.map_or(Value::Null, Value::from),
            Key::AddressSpace => self.address_space.map_or(Value::Null, Value::from),
            Key::Memory => self.memory.map_or(Value::Null, Value::from),
            Key::Cpu => self.cpu.map_or(Value::Null, Value::from),
        }
    }

    /// `{"open_files": {"value": 1024, "source": "default"}, …}`.
    pub fn to_json(&self) -> Value {
        Value::Object(
            Key::ALL
                .iter()
                .zip(self.sources)
                .map(|(k, s)| {
                    (
                        k.as_str().to_string(),
                        serde_json::json!({ "value": self.value_json(*k), "source": s }),
                    )
                })
                .collect(),
        )
    }
}

/// The limits in force: per key the admin's, else the manifest's, else the default's (which must
/// set `open_files`; a missing default is unlimited). `memory_total` (bytes) turns a share into a
/// figure.
pub fn resolve(
    defaults: &Limits,
    manifest: &Limits,
    admin: &Limits,
    memory_total: u64,
) -> Resolved {
    let mut sources = [Source::Default; 5];
    let mut pick = |i: usize, key: Key| {
        if let Some(v) = admin.get(key) {
            sources[i] = Source::Admin;
            Some(v)
        } else if let Some(v) = manifest.get(key) {
            sources[i] = Source::Manifest;
            Some(v)
        } else {
            defaults.get(key)
        }
    };
    let num = |v: Option<LimitValue>| match v {
        Some(LimitValue::Num(n)) => Some(n),
        Some(LimitValue::Percent(p)) => Some(memory_total.saturating_mul(u64::from(p)) / 100),
        Some(LimitValue::Cores(c)) => Some(c as u64),
        _ => None,
    };
    let open_files = num(pick(0, Key::OpenFiles)).unwrap_or(DEFAULT_OPEN_FILES);
    let processes = num(pick(1, Key::Processes));
    let address_space = num(pick(2, Key::AddressSpace));
    let memory = num(pick(3, Key::Memory));
    let cpu = match pick(4, Key::Cpu) {
        Some(LimitValue::Cores(c)) => Some(c),
        Some(LimitValue::Num(n)) => Some(n as f64),
        _ => None,
    };
    Resolved {
        open_files,
        processes,
        address_space,
        memory,
        cpu,
        sources,
    }
}

/// How much network a plugin asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Its own empty network namespace (only loopback, down): no network at all.
    None,
    /// The host's network; the plugin says it talks only to the local network (not enforced).
    Local,
    /// The host's network.
    #[default]
    Any,
}

impl Network {
    /// Its spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Local => "local",
            Network::Any => "any",
        }
    }
}

/// A manifest's `[permissions]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Permissions {
    /// Supplementary groups asked for (`gpio`, `i2c`, `dialout`, `video` …).
    pub groups: Vec<String>,
    /// Denied system calls asked for.
    pub syscalls: Vec<String>,
    /// Network asked for.
    pub network: Network,
    /// Why, in the author's words.
    pub reason: Option<String>,
}

/// A name fit for a group or a system call: 1 to 32 of `a-z 0-9 _ -`, not starting with `-`.
fn plain_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Permissions {
    /// Read a manifest's `[permissions]` (as JSON). Unknown keys and bad values are refused with
    /// the key: `permissions.network: "lan" is not one of "none", "local", "any"`.
    pub fn from_json(v: &Value) -> Result<Permissions, LimitError> {
        let err = |key: &str, v: &Value, expected: &str| LimitError {
            key: format!("permissions.{key}"),
            shown: v.to_string(),
            expected: expected.to_string(),
        };
        let mut out = Permissions::default();
        let Some(obj) = v.as_object() else {
            return Err(err("", v, "a table"));
        };
        for (k, v) in obj {
            match k.as_str() {
                "groups" | "syscalls" => {
                    let names = v
                        .as_array()
                        .and_then(|a| {
                            a.iter()
                                .map(|n| n.as_str().filter(|n| plain_name(n)).map(String::from))
                                .collect::<Option<Vec<_>>>()
                        })
                        .ok_or_else(|| err(k, v, "a list of names like [\"gpio\"]"))?;
                    if k == "groups" {
                        out.groups = names;
                    } else {
                        out.syscalls = names;
                    }
                }
                "network" => {
                    out.network = match v.as_str() {
                        Some("none") => Network::None,
                        Some("local") => Network::Local,
                        Some("any") => Network::Any,
                        _ => return Err(err(k, v, "one of \"none\", \"local\", \"any\"")),
                    }
                }
                "reason" => {
                    out.reason = Some(
                        v.as_str()
                            .filter(|r| r.len() <= 1024)
                            .map(String::from)
                            .ok_or_else(|| err(k, v, "a text of at most 1024 bytes"))?,
                    );
                }
                _ => {
                    return Err(err(
                        k,
                        v,
                        "a known permission (groups, syscalls, network, reason)",
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// `open_files` when nothing says otherwise.
pub const DEFAULT_OPEN_FILES: u64 = 1024;

/// The host's defaults when the config file says nothing: 1024 open files, 256 processes, no
/// address-space limit, half the device's memory, no CPU limit.
pub fn builtin_defaults() -> Limits {
    let mut l = Limits::default();
    l.set(Key::OpenFiles, Some(LimitValue::Num(DEFAULT_OPEN_FILES)));
    l.set(Key::Processes, Some(LimitValue::Num(256)));
    l.set(Key::AddressSpace, Some(LimitValue::Unlimited));
    l.set(Key::Memory, Some(LimitValue::Percent(50)));
    l.set(Key::Cpu, Some(LimitValue::Unlimited));
    l
}

/// `n` bytes for people: `256.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_read_with_units_and_refused_with_the_key() {
        assert_eq!(
            parse(Key::Memory, &json!("256M")),
            Ok(LimitValue::Num(256 << 20))
        );
        assert_eq!(
            parse(Key::Memory, &json!("1GiB")),
            Ok(LimitValue::Num(1 << 30))
        );
        assert_eq!(
            parse(Key::Memory, &json!("50%")),
            Ok(LimitValue::Percent(50))
        );
        assert_eq!(
            parse(Key::Memory, &json!("unlimited")),
            Ok(LimitValue::Unlimited)
        );
        assert_eq!(parse(Key::Cpu, &json!(0.5)), Ok(LimitValue::Cores(0.5)));
        assert_eq!(parse(Key::Cpu, &json!("2")), Ok(LimitValue::Cores(2.0)));
        assert_eq!(parse(Key::Processes, &json!(64)), Ok(LimitValue::Num(64)));
        assert_eq!(
            parse(Key::AddressSpace, &json!(1 << 30)),
            Ok(LimitValue::Num(1 << 30))
        );
        for (k, v) in [
            (Key::Memory, json!("1M")),
            (Key::Memory, json!("0%")),
            (Key::Memory, json!("101%")),
            (Key::Memory, json!("12Q")),
            (Key::Memory, json!(-1)),
            (Key::OpenFiles, json!("unlimited")),
            (Key::OpenFiles, json!(3)),
            (Key::Cpu, json!(0)),
            (Key::Cpu, json!("fast")),
            (Key::Processes, json!(0)),
            (Key::AddressSpace, json!("18446744073709551615T")),
        ] {
            let e = parse(k, &v).unwrap_err();
            assert_eq!(e.key, k.as_str());
            assert!(e.to_string().starts_with(k.as_str()), "{e}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_and_nulls_skipped() {
        let e = Limits::from_json(&json!({"memroy": "1G"})).unwrap_err();
        assert!(e.to_string().contains("memroy"), "{e}");
        let l = Limits::from_json(&json!({"memory": null, "cpu": 1})).unwrap();
        assert_eq!(l.get(Key::Memory), None);
        assert_eq!(l.get(Key::Cpu), Some(LimitValue::Cores(1.0)));
        assert_eq!(Limits::from_json(&l.to_json()).unwrap(), l);
    }

    #[test]
    fn the_admin_wins_over_the_manifest_over_the_defaults() {
        let defaults = builtin_defaults();
        let manifest = Limits::from_json(&json!({"memory": "64M", "processes": 8})).unwrap();
        let admin = Limits::from_json(&json!({"processes": 16})).unwrap();
        let r = resolve(&defaults, &manifest, &admin, 1 << 30);
        assert_eq!(r.memory, Some(64 << 20));
        assert_eq!(r.processes, Some(16));
        assert_eq!(r.open_files, 1024);
        assert_eq!(r.address_space, None);
        assert_eq!(r.cpu, None);
        assert_eq!(
            r.sources,
            [
                Source::Default,
                Source::Admin,
                Source::Default,
                Source::Manifest,
                Source::Default
            ]
        );
        let none = resolve(&defaults, &Limits::default(), &Limits::default(), 1 << 30);
        assert_eq!(none.memory, Some(512 << 20), "50% of 1 GiB");
        assert_eq!(
            none.to_json()["memory"],
            json!({"value": 512 << 20, "source": "default"})
        );
    }

    #[test]
    fn permissions_are_read_and_refused_with_the_key() {
        let p = Permissions::from_json(&json!({
            "groups": ["gpio", "i2c"], "network": "none", "reason": "reads sensors"
        }))
        .unwrap();
        assert_eq!(p.groups, ["gpio", "i2c"]);
        assert_eq!(p.network, Network::None);
        for (v, key) in [
            (json!({"network": "lan"}), "permissions.network"),
            (json!({"groups": ["GPIO"]}), "permissions.groups"),
            (json!({"groups": "gpio"}), "permissions.groups"),
            (json!({"syscalls": ["a/b"]}), "permissions.syscalls"),
            (json!({"root": true}), "permissions.root"),
        ] {
            assert_eq!(Permissions::from_json(&v).unwrap_err().key, key);
        }
    }

    #[test]
    fn bytes_read_for_people() {
        assert_eq!(human_bytes(256 << 20), "256.0 MiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
