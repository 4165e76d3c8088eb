//! `manifest.toml`: the parsed, checked description of a package ([`Manifest::parse`]), the
//! choice of the executable for a device ([`Manifest::entry_for`]), the host-version check
//! ([`Manifest::check_host`]) and the agreement with what the executable prints for `--metadata`
//! ([`Manifest::agrees_with`]).
//!
//! Pure: no I/O. The identity fields (`id`, `name`, `author`, `route`, `protocol`) follow exactly
//! the rules the host applies to `--metadata` (`PluginMetadata::validate` in `toru_plugin_api`),
//! so a manifest that parses names a plugin the host would accept. Every path the manifest names
//! is a clean relative path ([`check_relative_path`]); the archive extractor applies the same rule
//! to every entry name. The format is specified for authors in `docs/PACKAGES.md`.

// Until the package service (issue 11, the lead's part) calls check_host, summary, some of this is used only by
// tests and fuzzing; the expectation turns into a warning once nothing is dead any more.
#![cfg_attr(
    not(test),
    expect(dead_code, reason = "the package service integrates these")
)]

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use toru_plugin_api::protocol::{MetadataError, PluginMetadata};

/// The target triple this host was built for, exactly as rustc names it (set by `build.rs` from
/// cargo's `TARGET`): the key [`Manifest::entry_for`] looks up first.
pub(crate) const HOST_TRIPLE: &str = env!("TORU_HOST_TRIPLE");
/// The `[entry]` key of an executable that runs on any device (a script).
pub(crate) const ANY_TARGET: &str = "any";
/// The manifest's name in the archive (its first entry).
pub(crate) const MANIFEST_NAME: &str = "manifest.toml";
/// Longest path the manifest may name (and the archive may hold), in bytes.
pub(crate) const MAX_PATH_BYTES: usize = 255;
/// Longest `version`, in bytes (it names a directory: `<packages-dir>/<id>/<version>/`).
pub(crate) const MAX_VERSION_BYTES: usize = 64;
/// Longest `description`, in characters.
pub(crate) const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Longest `icon`, in bytes (one emoji is up to ~30 bytes with joiners).
pub(crate) const MAX_ICON_BYTES: usize = 64;
/// Longest target triple, in bytes.
const MAX_TRIPLE_BYTES: usize = 64;

/// Why a manifest is refused, or does not fit this device or this executable. Every message names
/// the field and says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ManifestError {
    /// Not TOML, a field missing, of the wrong type, or unknown.
    #[error("manifest.toml: {0}")]
    Toml(String),
    /// A field breaks its rule.
    #[error("manifest.toml: {field}: {why}")]
    Field {
        /// The field (`version`, `entry.any`, `files[2]`, …).
        field: String,
        /// What is wrong with it.
        why: String,
    },
    /// The package has no executable for this device.
    #[error(
        "the package has no entry for this device ({triple}); it has: {}",
        has.join(", ")
    )]
    WrongTarget {
        /// The device's target triple.
        triple: String,
        /// The `[entry]` keys the package has.
        has: Vec<String>,
    },
    /// `min_host` excludes this host.
    #[error("the package needs Toru {need} (min_host), this host is {host}")]
    HostTooOld {
        /// The requirement.
        need: String,
        /// This host's version.
        host: String,
    },
    /// The manifest and `--metadata` disagree.
    #[error("manifest says {field} {manifest}, --metadata prints {metadata}")]
    Disagrees {
        /// The field.
        field: &'static str,
        /// The manifest's value, quoted (or `none`).
        manifest: String,
        /// The value `--metadata` printed, quoted (or `none`).
        metadata: String,
    },
}

fn field(field: impl Into<String>, why: impl Into<String>) -> ManifestError {
    ManifestError::Field {
        field: field.into(),
        why: why.into(),
    }
}

/// A checked `manifest.toml`. Serialises (serde) with `version` and `min_host` as strings and the
/// `[settings]`, `[limits]` and `[permissions]` tables as JSON objects.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Manifest {
    /// Plugin id (the metadata rules).
    pub(crate) id: String,
    /// Human name.
    pub(crate) name: String,
    /// Semantic version; also the directory the version is installed in.
    pub(crate) version: semver::Version,
    /// Author (the publisher's name as shown; the key is what is trusted).
    pub(crate) author: String,
    /// One paragraph for the install dialog (may be empty).
    pub(crate) description: String,
    /// Usually one emoji (may be empty).
    pub(crate) icon: String,
    /// URL route, `/` plus one segment.
    pub(crate) route: String,
    /// Protocol version the plugin speaks; `None` is 1.0.
    pub(crate) protocol: Option<String>,
    /// Requirement on the host's version.
    pub(crate) min_host: semver::VersionReq,
    /// Target triple (or `any`) → relative path of the executable.
    pub(crate) entry: BTreeMap<String, String>,
    /// Relative path of the frontend bundle.
    pub(crate) frontend: Option<String>,
    /// More files to extract.
    pub(crate) files: Vec<String>,
    /// The settings schema (the `[settings]` table as JSON).
    pub(crate) settings: Option<Value>,
    /// Requested limits (free-form, for the isolation issue).
    pub(crate) limits: Option<Value>,
    /// Requested permissions (free-form, for the isolation issue).
    pub(crate) permissions: Option<Value>,
    /// Whether the plugin runs only with a licence for the device (`license = "required"`).
    pub(crate) license: LicenseRequirement,
}

/// The manifest's `license`: whether the plugin is started only with a valid licence for the
/// device (docs/LICENSES.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LicenseRequirement {
    /// No licence needed (a licence installed anyway still reaches the plugin in `init`).
    #[default]
    None,
    /// Started only with a valid licence for this device.
    Required,
}

/// The file as written: strings, checked into a [`Manifest`] by [`Manifest::parse`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    id: String,
    name: String,
    version: String,
    author: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    icon: String,
    route: String,
    protocol: Option<String>,
    min_host: String,
    entry: BTreeMap<String, String>,
    frontend: Option<String>,
    #[serde(default)]
    files: Vec<String>,
    settings: Option<toml::Table>,
    limits: Option<toml::Table>,
    permissions: Option<toml::Table>,
    #[serde(default)]
    license: LicenseRequirement,
}

impl Manifest {
    /// Parse and check `manifest.toml`. Refuses unknown top-level keys, missing required fields
    /// (`id`, `name`, `version`, `author`, `route`, `min_host`, `entry`), and any field that breaks
    /// its rule; the error names the field.
    pub(crate) fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let version = parse_version(&raw.version)?;
        let min_host = semver::VersionReq::parse(&raw.min_host).map_err(|e| {
            field(
                "min_host",
                format!(
                    "{:?} is not a semver requirement such as \">=0.1\": {e}",
                    raw.min_host
                ),
            )
        })?;
        let m = Manifest {
            id: raw.id,
            name: raw.name,
            version,
            author: raw.author,
            description: raw.description,
            icon: raw.icon,
            route: raw.route,
            protocol: raw.protocol,
            min_host,
            entry: raw.entry,
            frontend: raw.frontend,
            files: raw.files,
            settings: raw
                .settings
                .map(|t| table_to_json("settings", t))
                .transpose()?,
            limits: raw.limits.map(|t| table_to_json("limits", t)).transpose()?,
            permissions: raw
                .permissions
                .map(|t| table_to_json("permissions", t))
                .transpose()?,
            license: raw.license,
        };
        m.check_identity()?;
        m.check_paths()?;
        m.check_isolation()?;
        Ok(m)
    }

    /// The identity fields, by the host's own metadata rules.
    /// `[limits]` and `[permissions]` hold only what the host understands (`crate::limits`).
    fn check_isolation(&self) -> Result<(), ManifestError> {
        let refused = |e: crate::limits::LimitError| {
            let key = if e.key.starts_with("permissions.") {
                e.key.clone()
            } else {
                format!("limits.{}", e.key)
            };
            field(key, format!("{} is not {}", e.shown, e.expected))
        };
        if let Some(l) = &self.limits {
            crate::limits::Limits::from_json(l).map_err(refused)?;
        }
        if let Some(p) = &self.permissions {
            crate::limits::Permissions::from_json(p).map_err(refused)?;
        }
        Ok(())
    }

    fn check_identity(&self) -> Result<(), ManifestError> {
        self.to_metadata().validate().map_err(|e| match e {
            MetadataError::Id(_) => field("id", e.to_string()),
            MetadataError::Route(_) => field("route", e.to_string()),
            MetadataError::Name => field("name", e.to_string()),
            MetadataError::Author => field("author", e.to_string()),
            MetadataError::Protocol { plugin } => field(
                "protocol",
                format!(
                    "{plugin:?} is not a protocol this host speaks (\"1.0\" or \"{}\")",
                    toru_plugin_api::protocol::PROTOCOL_VERSION
                ),
            ),
            other => field("metadata", other.to_string()),
        })?;
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(field(
                "description",
                format!("longer than {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
        if self.icon.len() > MAX_ICON_BYTES {
            return Err(field(
                "icon",
                format!("longer than {MAX_ICON_BYTES} bytes (use one emoji)"),
            ));
        }
        Ok(())
    }

    /// `[entry]`, `frontend` and `files`: clean relative paths, no file also a directory of another.
    fn check_paths(&self) -> Result<(), ManifestError> {
        if self.entry.is_empty() {
            return Err(field(
                "entry",
                "names no executable: add e.g. `x86_64-unknown-linux-gnu = \"bin/plugin\"` or `any = \"plugin.py\"`",
            ));
        }
        let mut named: Vec<(String, &str)> = Vec::new();
        for (target, path) in &self.entry {
            if !is_target_key(target) {
                return Err(field(
                    format!("entry.{target}"),
                    "not a target triple (like \"aarch64-unknown-linux-musl\") or \"any\"",
                ));
            }
            named.push((format!("entry.{target}"), path));
        }
        if let Some(f) = &self.frontend {
            named.push(("frontend".into(), f));
        }
        let mut listed = BTreeSet::new();
        for (i, f) in self.files.iter().enumerate() {
            if !listed.insert(f.as_str()) {
                return Err(field(
                    format!("files[{i}]"),
                    format!("{f:?} is listed twice"),
                ));
            }
            named.push((format!("files[{i}]"), f));
        }
        for (name, path) in &named {
            check_relative_path(path)
                .map_err(|why| field(name.clone(), format!("{path:?} {why}")))?;
            if *path == MANIFEST_NAME {
                return Err(field(
                    name.clone(),
                    "manifest.toml is the manifest itself; it cannot be named as a file",
                ));
            }
        }
        // A named file cannot also be a directory holding another named file.
        let all = self.named_files();
        for (name, path) in &named {
            let prefix = format!("{path}/");
            if let Some(inner) = all.iter().find(|p| p.starts_with(&prefix)) {
                return Err(field(
                    name.clone(),
                    format!("{path:?} is a file, but {inner:?} needs it to be a directory"),
                ));
            }
        }
        Ok(())
    }

    /// The executable for a device with target `triple`: its own entry, else `any`.
    pub(crate) fn entry_for(&self, triple: &str) -> Result<&str, ManifestError> {
        self.entry
            .get(triple)
            .or_else(|| self.entry.get(ANY_TARGET))
            .map(String::as_str)
            .ok_or_else(|| ManifestError::WrongTarget {
                triple: triple.to_string(),
                has: self.entry.keys().cloned().collect(),
            })
    }

    /// Whether `min_host` admits a host of version `host`.
    pub(crate) fn check_host(&self, host: &semver::Version) -> Result<(), ManifestError> {
        if self.min_host.matches(host) {
            Ok(())
        } else {
            Err(ManifestError::HostTooOld {
                need: self.min_host.to_string(),
                host: host.to_string(),
            })
        }
    }

    /// Whether what the executable printed for `--metadata` is what the manifest says: id, name,
    /// version (as text), author, icon, route and protocol (absent = `"1.0"`). The first field
    /// that differs is named with both values.
    pub(crate) fn agrees_with(&self, md: &PluginMetadata) -> Result<(), ManifestError> {
        let q = |s: Option<&str>| s.map_or_else(|| "none".to_string(), |s| format!("{s:?}"));
        let version = self.version.to_string();
        let protocol = |p: Option<&str>| p.unwrap_or("1.0").to_string();
        let pairs: [(&'static str, Option<String>, Option<String>); 7] = [
            ("id", Some(self.id.clone()), Some(md.id.clone())),
            ("name", Some(self.name.clone()), Some(md.name.clone())),
            ("version", Some(version), Some(md.version.clone())),
            ("author", Some(self.author.clone()), md.author.clone()),
            ("icon", Some(self.icon.clone()), Some(md.icon.clone())),
            ("route", Some(self.route.clone()), Some(md.route.clone())),
            (
                "protocol",
                Some(protocol(self.protocol.as_deref())),
                Some(protocol(md.protocol.as_deref())),
            ),
        ];
        for (name, ours, theirs) in pairs {
            if ours != theirs {
                return Err(ManifestError::Disagrees {
                    field: name,
                    manifest: q(ours.as_deref()),
                    metadata: q(theirs.as_deref()),
                });
            }
        }
        Ok(())
    }

    /// Every path the manifest names: the entries of every target, `frontend` and `files`.
    pub(crate) fn named_files(&self) -> BTreeSet<String> {
        self.entry
            .values()
            .chain(self.frontend.iter())
            .chain(self.files.iter())
            .cloned()
            .collect()
    }

    /// Whether `path` is an executable (an `[entry]` value): extracted with mode `0755`.
    pub(crate) fn is_executable(&self, path: &str) -> bool {
        self.entry.values().any(|p| p == path)
    }

    /// What the executable should print for `--metadata`.
    pub(crate) fn to_metadata(&self) -> PluginMetadata {
        PluginMetadata {
            id: self.id.clone(),
            name: self.name.clone(),
            version: self.version.to_string(),
            author: Some(self.author.clone()),
            icon: self.icon.clone(),
            route: self.route.clone(),
            protocol: self.protocol.clone(),
        }
    }

    /// The manifest as the install dialog and the API show it: `{id, name, version, author,
    /// description, icon, route, protocol, min_host, frontend, permissions, limits, has_settings}`.
    pub(crate) fn summary(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "version": self.version.to_string(),
            "author": self.author,
            "description": self.description,
            "icon": self.icon,
            "route": self.route,
            "protocol": self.protocol.as_deref().unwrap_or("1.0"),
            "min_host": self.min_host.to_string(),
            "frontend": self.frontend,
            "permissions": self.permissions,
            "limits": self.limits,
            "has_settings": self.settings.is_some(),
        })
    }
}

/// `version`: semver, at most [`MAX_VERSION_BYTES`] (it names a directory).
fn parse_version(text: &str) -> Result<semver::Version, ManifestError> {
    if text.len() > MAX_VERSION_BYTES {
        return Err(field(
            "version",
            format!("longer than {MAX_VERSION_BYTES} bytes"),
        ));
    }
    semver::Version::parse(text).map_err(|e| {
        field(
            "version",
            format!("{text:?} is not a semantic version (MAJOR.MINOR.PATCH, e.g. \"0.2.0\"): {e}"),
        )
    })
}

/// `any`, or a target triple: 3 or 4 `-`-separated parts of `[a-z0-9_.]`.
fn is_target_key(key: &str) -> bool {
    if key == ANY_TARGET {
        return true;
    }
    let parts: Vec<&str> = key.split('-').collect();
    key.len() <= MAX_TRIPLE_BYTES
        && (3..=4).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        })
}

/// Whether `path` is a clean relative path: not empty, not absolute, no `..`, empty or `.`
/// component, no backslash or NUL, at most [`MAX_PATH_BYTES`] bytes. On refusal, says why (a
/// phrase that follows the path: `"/x" is absolute`).
pub(crate) fn check_relative_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return Err("is longer than 255 bytes");
    }
    if path.starts_with('/') {
        return Err("is absolute (paths are relative to the package)");
    }
    if path.contains('\\') {
        return Err("contains a backslash");
    }
    if path.contains('\0') {
        return Err("contains a NUL byte");
    }
    for comp in path.split('/') {
        match comp {
            "" => return Err("has an empty component (`//` or a trailing `/`)"),
            "." => return Err("has a `.` component"),
            ".." => return Err("has a `..` component (leaves the package)"),
            _ => {}
        }
    }
    Ok(())
}

/// `line N: message` from a TOML error (one line; the crate's own rendering spans several).
fn toml_error(text: &str, e: &toml::de::Error) -> ManifestError {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(1, |before| before.matches('\n').count() + 1);
            ManifestError::Toml(format!("line {line}: {msg}"))
        }
        None => ManifestError::Toml(msg),
    }
}

/// A TOML table as a JSON object: datetimes become their text; a NaN or infinite float (no JSON
/// form) is refused, naming the key.
fn table_to_json(name: &str, table: toml::Table) -> Result<Value, ManifestError> {
    toml_to_json(name, toml::Value::Table(table))
}

fn toml_to_json(path: &str, v: toml::Value) -> Result<Value, ManifestError> {
    Ok(match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| field(path, format!("{f} has no JSON form")))?,
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(
            a.into_iter()
                .enumerate()
                .map(|(i, v)| toml_to_json(&format!("{path}[{i}]"), v))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => Value::Object(
            t.into_iter()
                .map(|(k, v)| {
                    let inner = toml_to_json(&format!("{path}.{k}"), v)?;
                    Ok((k, inner))
                })
                .collect::<Result<_, ManifestError>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "hello-rust"
name = "Hello (Rust)"
version = "0.2.0"
author = "Toru"
description = "Template plugin"
icon = "👋"
route = "/hello-rust"
protocol = "1.1"
min_host = ">=0.1"
frontend = "bundle.js"
files = ["share/readme.txt"]

[entry]
x86_64-unknown-linux-gnu = "bin/x86_64-unknown-linux-gnu/hello-rust"
aarch64-unknown-linux-musl = "bin/aarch64-unknown-linux-musl/hello-rust"

[settings]
type = "object"
[settings.properties.greeting]
type = "string"
default = "hello"

[permissions]
groups = ["gpio"]
"#;

    fn with(line_from: &str, line_to: &str) -> String {
        assert!(GOOD.contains(line_from), "{line_from}");
        GOOD.replacen(line_from, line_to, 1)
    }

    fn refused(text: &str) -> String {
        Manifest::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_manifest_parses_with_every_field() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.id, "hello-rust");
        assert_eq!(m.version, semver::Version::new(0, 2, 0));
        assert_eq!(m.protocol.as_deref(), Some("1.1"));
        assert_eq!(
            m.entry_for("aarch64-unknown-linux-musl").unwrap(),
            "bin/aarch64-unknown-linux-musl/hello-rust"
        );
        assert_eq!(
            m.settings.as_ref().unwrap()["properties"]["greeting"]["default"],
            "hello"
        );
        assert_eq!(m.permissions.as_ref().unwrap()["groups"][0], "gpio");
        assert_eq!(
            m.named_files().into_iter().collect::<Vec<_>>(),
            vec![
                "bin/aarch64-unknown-linux-musl/hello-rust",
                "bin/x86_64-unknown-linux-gnu/hello-rust",
                "bundle.js",
                "share/readme.txt"
            ]
        );
        assert!(m.is_executable("bin/x86_64-unknown-linux-gnu/hello-rust"));
        assert!(!m.is_executable("bundle.js"));
        let s = m.summary();
        assert_eq!(s["version"], "0.2.0");
        assert_eq!(s["min_host"], ">=0.1");
        assert_eq!(s["has_settings"], true);
        let full = serde_json::to_value(&m).unwrap();
        assert_eq!(full["version"], "0.2.0");
        assert_eq!(full["entry"]["any"], Value::Null);
    }

    #[test]
    fn optional_fields_may_be_left_out() {
        let m = Manifest::parse(
            "id = \"x\"\nname = \"X\"\nversion = \"1.0.0\"\nauthor = \"a\"\nroute = \"/x\"\n\
             min_host = \"*\"\n[entry]\nany = \"x.py\"\n",
        )
        .unwrap();
        assert_eq!(m.protocol, None);
        assert_eq!(m.description, "");
        assert_eq!(m.settings, None);
        assert_eq!(m.entry_for(HOST_TRIPLE).unwrap(), "x.py");
        assert_eq!(m.license, LicenseRequirement::None);
    }

    #[test]
    fn license_is_none_or_required_and_kept_in_the_json() {
        let m = Manifest::parse(&with(
            "min_host = \">=0.1\"",
            "license = \"required\"\nmin_host = \">=0.1\"",
        ))
        .unwrap();
        assert_eq!(m.license, LicenseRequirement::Required);
        assert_eq!(serde_json::to_value(&m).unwrap()["license"], "required");
        let e = refused(&with(
            "min_host = \">=0.1\"",
            "license = \"sometimes\"\nmin_host = \">=0.1\"",
        ));
        assert!(e.contains("license") || e.contains("sometimes"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_refused_naming_it_and_its_line() {
        let e = refused(&format!("{GOOD}\n").replacen("icon =", "colour = \"red\"\nicon =", 1));
        assert!(e.contains("unknown field `colour`"), "{e}");
        assert!(e.contains("line 7"), "{e}");
    }

    #[test]
    fn a_missing_required_field_is_named() {
        let e = refused(&with("min_host = \">=0.1\"\n", ""));
        assert!(e.contains("missing field `min_host`"), "{e}");
    }

    #[test]
    fn bad_semver_is_refused_naming_the_field_and_the_value() {
        let e = refused(&with("version = \"0.2.0\"", "version = \"0.2\""));
        assert!(
            e.starts_with("manifest.toml: version: \"0.2\" is not a semantic version"),
            "{e}"
        );
        let e = refused(&with("min_host = \">=0.1\"", "min_host = \"newest\""));
        assert!(
            e.contains("min_host: \"newest\" is not a semver requirement"),
            "{e}"
        );
        let long = format!("version = \"1.0.0-{}\"", "a".repeat(70));
        assert!(refused(&with("version = \"0.2.0\"", &long)).contains("longer than 64"));
    }

    #[test]
    fn identity_fields_follow_the_metadata_rules() {
        assert!(refused(&with("id = \"hello-rust\"", "id = \"Hello\"")).contains("id: invalid id"));
        assert!(
            refused(&with("route = \"/hello-rust\"", "route = \"/a/b\""))
                .contains("route: invalid route")
        );
        assert!(refused(&with("name = \"Hello (Rust)\"", "name = \"\"")).contains("name:"));
        let e = refused(&with("protocol = \"1.1\"", "protocol = \"2.0\""));
        assert!(e.contains("protocol: \"2.0\" is not a protocol"), "{e}");
        let e = refused(&with(
            "icon = \"👋\"",
            &format!("icon = \"{}\"", "x".repeat(65)),
        ));
        assert!(e.contains("icon:"), "{e}");
    }

    #[test]
    fn unsafe_or_conflicting_paths_are_refused_naming_the_field() {
        let cases = [
            (
                "frontend = \"bundle.js\"",
                "frontend = \"/etc/passwd\"",
                "frontend: \"/etc/passwd\" is absolute",
            ),
            (
                "frontend = \"bundle.js\"",
                "frontend = \"../x\"",
                "frontend: \"../x\" has a `..` component",
            ),
            (
                "frontend = \"bundle.js\"",
                "frontend = \"a//b\"",
                "has an empty component",
            ),
            (
                "frontend = \"bundle.js\"",
                "frontend = \"./b\"",
                "has a `.` component",
            ),
            (
                "frontend = \"bundle.js\"",
                "frontend = \"a\\\\b\"",
                "contains a backslash",
            ),
            (
                "frontend = \"bundle.js\"",
                "frontend = \"\"",
                "frontend: \"\" is empty",
            ),
            (
                "frontend = \"bundle.js\"",
                "frontend = \"manifest.toml\"",
                "is the manifest itself",
            ),
            (
                "files = [\"share/readme.txt\"]",
                "files = [\"a\", \"a\"]",
                "files[1]: \"a\" is listed twice",
            ),
            (
                "files = [\"share/readme.txt\"]",
                "files = [\"bin\"]",
                "files[0]: \"bin\" is a file, but",
            ),
        ];
        for (from, to, want) in cases {
            let e = refused(&with(from, to));
            assert!(e.contains(want), "{to}: {e}");
        }
        let long = format!("files = [\"{}\"]", "a".repeat(256));
        assert!(
            refused(&with("files = [\"share/readme.txt\"]", &long)).contains("longer than 255")
        );
        let e = refused(&with(
            "x86_64-unknown-linux-gnu = ",
            "\"../../bin\" = \"x\"\nx86_64-unknown-linux-gnu = ",
        ));
        assert!(e.contains("entry.../../bin: not a target triple"), "{e}");
        let e = refused(&GOOD.replace(
            "x86_64-unknown-linux-gnu = \"bin/x86_64-unknown-linux-gnu/hello-rust\"\naarch64-unknown-linux-musl = \"bin/aarch64-unknown-linux-musl/hello-rust\"\n",
            "",
        ));
        assert!(e.contains("entry: names no executable"), "{e}");
    }

    #[test]
    fn a_settings_float_without_a_json_form_is_refused() {
        let e = refused(&format!("{GOOD}\n[limits]\nmemory = \"lots\"\n"));
        assert!(e.contains("limits.memory"), "{e}");
        let e = refused(&GOOD.replace("groups = [\"gpio\"]", "network = \"lan\""));
        assert!(e.contains("permissions.network"), "{e}");
        let m =
            Manifest::parse(&format!("{GOOD}\n[limits]\nmemory = \"64M\"\ncpu = 0.5\n")).unwrap();
        assert_eq!(m.limits.unwrap()["cpu"], 0.5);
        let e = refused(&format!("{GOOD}\n[limits]\ncpu = nan\n"));
        assert!(e.contains("limits.cpu: NaN has no JSON form"), "{e}");
    }

    #[test]
    fn wrong_target_lists_what_the_package_has_and_the_device() {
        let m = Manifest::parse(GOOD).unwrap();
        let e = m
            .entry_for("armv7-unknown-linux-gnueabihf")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "the package has no entry for this device (armv7-unknown-linux-gnueabihf); it has: \
             aarch64-unknown-linux-musl, x86_64-unknown-linux-gnu"
        );
    }

    #[test]
    fn min_host_too_new_is_refused_with_both_versions() {
        let m = Manifest::parse(&with("min_host = \">=0.1\"", "min_host = \">=0.3\"")).unwrap();
        assert!(m.check_host(&semver::Version::new(0, 3, 1)).is_ok());
        assert_eq!(
            m.check_host(&semver::Version::new(0, 1, 0))
                .unwrap_err()
                .to_string(),
            "the package needs Toru >=0.3 (min_host), this host is 0.1.0"
        );
    }

    #[test]
    fn metadata_disagreement_names_the_field_and_both_values() {
        let m = Manifest::parse(GOOD).unwrap();
        let mut md = m.to_metadata();
        assert!(m.agrees_with(&md).is_ok());
        md.version = "0.1.0".into();
        assert_eq!(
            m.agrees_with(&md).unwrap_err().to_string(),
            "manifest says version \"0.2.0\", --metadata prints \"0.1.0\""
        );
        let mut md = m.to_metadata();
        md.author = None;
        assert_eq!(
            m.agrees_with(&md).unwrap_err().to_string(),
            "manifest says author \"Toru\", --metadata prints none"
        );
        let mut md = m.to_metadata();
        md.protocol = None;
        assert_eq!(
            m.agrees_with(&md).unwrap_err().to_string(),
            "manifest says protocol \"1.1\", --metadata prints \"1.0\""
        );
    }

    #[test]
    fn the_host_triple_is_a_triple() {
        assert!(is_target_key(HOST_TRIPLE), "{HOST_TRIPLE}");
        assert!(HOST_TRIPLE.contains("linux"), "{HOST_TRIPLE}");
    }
}
