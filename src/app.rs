//! [`App`]: what the request handlers, the control socket and the auth flows share while the host
//! runs, with the version and how the store is opened for a config. Built by `run` (in `lib.rs`);
//! used by `http`, `auth` and `admin`. Owns nothing itself: it only bundles the handles, so that
//! the modules above it need not import `lib.rs`.

use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::install::Packages;
use crate::safe_mode::SafeMode;
use crate::store::{OpenError, Store, StoreOptions};
use crate::supervisor::Supervisor;

/// The host's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Open the store `config` names (used by startup and by the CLI when no daemon runs).
pub(crate) fn open_store(config: &Config) -> Result<Store, OpenError> {
    let opts = StoreOptions {
        kv_quota_bytes: config.kv_quota_bytes,
        events_per_plugin: config.events_per_plugin,
        legacy_config: Some(config.plugins_dir.join(".metadata").join("config.json")),
        ..StoreOptions::default()
    };
    Store::open(&config.data_dir, opts)
}

/// Everything the request handlers share. Lives on the runtime thread (`Rc<App>`).
#[derive(Debug)]
pub(crate) struct App {
    /// The configuration in force.
    pub config: Config,
    /// The store.
    pub store: Store,
    /// The supervisor.
    pub supervisor: Supervisor,
    /// Package transactions, trusted keys and settings.
    pub packages: Packages,
    /// Safe mode (held plugins, the count of unclean exits).
    pub safe_mode: SafeMode,
    /// Whole-device updates (RAUC).
    pub updates: crate::update::Updates,
    /// The MQTT bridge (its state for the API, metrics and UI).
    pub mqtt: crate::mqtt::Bridge,
    /// When the host started (monotonic).
    pub started: Instant,
    /// When the host started (wall clock).
    pub started_at: DateTime<Utc>,
}
