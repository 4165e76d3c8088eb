//! What the rest of the host may see of the supervisor: plain snapshots, serializable as API JSON,
//! and its errors.

use chrono::{DateTime, Utc};
use serde::Serialize;
use toru_plugin_api::LogLevel;

use crate::store::Event;

/// The observable state of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// Enabled, not running (host starting or stopping).
    Stopped,
    /// Spawned, waiting for its socket or for `ready`.
    Starting,
    /// Serving requests.
    Ready,
    /// Failed; waiting before the next start.
    Backoff,
    /// Being stopped (shutdown → SIGTERM → SIGKILL).
    Stopping,
    /// Missed heartbeats; being killed.
    Hung,
    /// Not to run (by a user, or automatically after repeated failures).
    Disabled,
    /// Its package needs a licence for this device and has no valid one: not started, not
    /// restarted, no failures counted, until a valid licence is installed (docs/LICENSES.md).
    #[serde(rename = "licence-needed")]
    LicenceNeeded,
    /// The host runs in safe mode and this plugin is not one it keeps: not started, no failures
    /// counted, its enabled flag unchanged, until safe mode is left (docs/RELIABILITY.md).
    Held,
}

/// A snapshot of one plugin for the API and UI.
#[derive(Debug, Clone, Serialize)]
pub struct PluginView {
    /// Metadata id.
    pub id: String,
    /// Metadata name.
    pub name: String,
    /// Metadata version.
    pub version: String,
    /// Metadata author.
    pub author: Option<String>,
    /// Metadata icon.
    pub icon: String,
    /// Metadata route (`/hello`).
    pub route: String,
    /// `"1.0"` or `"1.1"`.
    pub protocol: &'static str,
    /// The executable.
    pub binary: String,
    /// Whether it should run.
    pub enabled: bool,
    /// Current state.
    pub state: PluginState,
    /// Process id while running.
    pub pid: Option<u32>,
    /// Restarts since the host started.
    pub restarts: u64,
    /// Failures in a row (reset after 60 s ready).
    pub consecutive_failures: u32,
    /// Why it was disabled automatically, if it was.
    pub auto_disabled: Option<String>,
    /// When the current process became ready.
    pub ready_since: Option<DateTime<Utc>>,
    /// The newest stored event.
    pub last_event: Option<Event>,
    /// Log lines dropped because the ring was full or the rate limit hit.
    pub log_dropped: u64,
    /// The verified claims of its licence, as its newest start got them in `init` (`None`: no
    /// licence, or not started with one).
    pub license: Option<toru_plugin_api::License>,
    /// Why it is `licence-needed` (wrong instance, expired, …); `None` in every other state.
    pub license_needed: Option<String>,
}

/// A `*.binary` that was skipped, and why.
#[derive(Debug, Clone, Serialize)]
pub struct InvalidPlugin {
    /// The executable.
    pub binary: String,
    /// Why it was skipped.
    pub reason: String,
}

impl InvalidPlugin {
    /// Whether it was skipped only because its `--metadata` run took too long (a loaded or slow
    /// device at boot): worth asking again later, unlike metadata that is wrong.
    pub fn timed_out(&self) -> bool {
        self.reason
            .starts_with(super::discovery::METADATA_TIMED_OUT)
    }
}

/// Result of a rescan.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RescanReport {
    /// Ids of plugins that appeared.
    pub added: Vec<String>,
    /// Ids of plugins retired: their binary disappeared, or no longer claims the id, or is refused.
    pub removed: Vec<String>,
    /// Ids of plugins whose binary was replaced with one printing other metadata: restarted with it.
    pub replaced: Vec<String>,
    /// Binaries skipped.
    pub invalid: Vec<InvalidPlugin>,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The plugin's stdout.
    Stdout,
    /// The plugin's stderr.
    Stderr,
    /// A 1.1 `log` frame.
    Protocol,
    /// Written by the supervisor about the plugin.
    Host,
}

/// One line of a plugin's log.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Sequence number (increasing, per plugin, across restarts).
    pub seq: u64,
    /// When it was captured.
    pub at: DateTime<Utc>,
    /// Severity (stderr lines are `warn`, stdout `info` unless they start with a level word).
    pub level: LogLevel,
    /// Origin.
    pub stream: LogStream,
    /// The text.
    pub message: String,
}

/// A page of log lines, newest last.
#[derive(Debug, Clone, Serialize)]
pub struct LogPage {
    /// The lines.
    pub lines: Vec<LogLine>,
    /// Lines matching the filter in the ring.
    pub total: usize,
    /// 1-based page number (page 1 = newest lines).
    pub page: usize,
    /// Lines per page.
    pub page_size: usize,
    /// Lines dropped since the host started (ring full or rate limit).
    pub dropped: u64,
}

/// Why a request could not be forwarded to a plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// No plugin with that id or route.
    #[error("no plugin {0:?}")]
    NotFound(String),
    /// The plugin is disabled.
    #[error("plugin {0:?} is disabled")]
    Disabled(String),
    /// The plugin is not ready (starting, backoff, down) or the connection failed.
    #[error("plugin {id:?} is unavailable: {reason}")]
    Unavailable {
        /// Plugin id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The plugin answered with something that is not a valid reply.
    #[error("plugin {id:?} sent a broken reply: {reason}")]
    BadReply {
        /// Plugin id.
        id: String,
        /// Why.
        reason: String,
    },
    /// No reply within the deadline (30 s); the plugin keeps running.
    #[error("plugin {0:?} did not answer in time")]
    Timeout(String),
    /// The request cannot be expressed to this plugin (e.g. a binary body for a 1.0 plugin).
    #[error("{0}")]
    BadRequest(String),
}

/// Why a management action failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// No such plugin.
    #[error("no plugin {0:?}")]
    NotFound(String),
    /// Persisting the change failed.
    #[error("could not save the change")]
    Store(#[from] crate::store::StoreError),
    /// The supervisor is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// `unbind` of an id whose bound file still runs it.
    #[error(
        "plugin {id:?} runs from {file}, the file it is bound to; remove or rename that file and rescan first"
    )]
    StillClaimed {
        /// Plugin id.
        id: String,
        /// The file it is bound to.
        file: String,
    },
    /// `unbind` of an id that is not bound to any file.
    #[error("plugin id {0:?} is not bound to any file")]
    NotBound(String),
    /// `configure`: the running plugin did not answer its new settings (no answer in time, the
    /// connection went away, or a reply that is no answer). It keeps running; it gets the
    /// settings at its next start.
    #[error("plugin {id:?} did not take its new settings: {reason}")]
    SettingsNotDelivered {
        /// Plugin id.
        id: String,
        /// What went wrong.
        reason: String,
    },
    /// A limit or a grant that is not acceptable (`limits.memory: "lots" is not bytes …`).
    #[error("{0}")]
    InvalidLimit(String),
    /// The plugin's confinement cannot be worked out (its uid range is used up, …).
    #[error("cannot work out the plugin's confinement: {0}")]
    Isolation(String),
}

/// A change to a plugin's limits or grants ([`super::Supervisor::set_security`]).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityChange {
    /// Limits to set; `null` clears the admin's override (back to the manifest or the default).
    #[serde(default)]
    pub limits: serde_json::Map<String, serde_json::Value>,
    /// Granted permissions, replacing the previous grants when present.
    #[serde(default)]
    pub grants: Option<Grants>,
}

/// What the admin grants a plugin.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Supplementary groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// System calls lifted from the deny list.
    #[serde(default)]
    pub syscalls: Vec<String>,
}

/// What [`super::Supervisor::configure`] did with a plugin's new settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "message")]
pub enum ConfigOutcome {
    /// The running plugin (1.1) answered `ok`: the settings are in effect.
    Applied,
    /// The running plugin (1.1) refused them, saying why; it keeps its previous settings.
    Rejected(String),
    /// The plugin takes settings only when it starts (protocol 1.0, or it answered
    /// `unsupported`), or it was starting: it was restarted (not counted as a failure).
    Restarted,
    /// It is not running (stopped, disabled, waiting to restart, being stopped): it gets the
    /// settings at its next start.
    NotRunning,
}
