//! The Toru host: supervises plugin executables and serves their web UI on one thread.
//!
//! ## Layout
//! Modules depend one way, top to bottom; none imports a module above it (no circles):
//!
//! ```text
//! main.rs (binary)        arguments, signals, listener, exit code
//! lib.rs                  prepare + run: wires everything below together
//! update_cmd              `toru system update|reboot` (on admin's control socket client)
//! admin · store_cmd       the CLI's commands and the daemon's control socket · `toru store …`
//! pack_cmd                `toru key generate` · `toru plugin pack` (offline, on package/)
//! check                   `toru plugin check`: a plugin through the host's steps (offline, on
//!                         supervisor/, store/, package/)
//! plugin_new              `toru plugin new` (offline: writes a plugin folder from templates)
//! http/                   web UI and REST API (the only module that names hyper), layered
//!                         resp → conn/request → router → handlers → dispatch (see its doc)
//! auth/                   passwords (one KDF at a time), setup code, tokens, sessions, throttle
//! app                     App: the handles the above share (config, store, supervisor, packages)
//! install                 package transactions (receive, check, switch, probation, rollback,
//!                         remove, recovery at start), trusted keys, settings, licences
//! mqtt/                   the MQTT bridge (the only module that names rumqttc): topics, payloads
//!                         and the coalescing outbox (pure) · the glue (on supervisor/, store/)
//! license                 instance-bound licences: format, verification, issuing (pure) and
//!                         the gate the supervisor asks before every spawn (reads the store)
//! safe_mode               after K unclean host exits in a row, start with third-party plugins
//!                         held: policy (pure) · glue (the store's run record, the supervisor's
//!                         hold rule, the clean-run reset, leaving)
//! update                  whole-device A/B updates through RAUC: bundle upload and check,
//!                         install, and the start-up health gate (policy: a state machine) that
//!                         marks the new slot good or bad (the only code that runs `rauc`)
//! package · settings      the package format (manifest, archive, signatures, pack) · the
//!                         settings schema and its validator (leaves)
//! supervisor/             discovery, spawn, policy state machine (no I/O), link (1.0 vs 1.1
//!                         hidden behind init/request/shutdown), conn (1.1 on toru_plugin_api::mux),
//!                         descendants (a cgroup per plugin or the host as subreaper)
//! confine/                what one plugin process may do (user, rlimits, Landlock, seccomp,
//!                         network namespace) and applying it between fork and exec (through sys)
//! store/                  the redb file (the only module that names redb); kv: the one KV service
//!                         for the plugin socket and the REST API; maintenance: repair/reset
//! package/                the plugin package format (no I/O beyond the files it is given):
//!                         manifest · archive (streaming extraction) · sign (minisign) · pack
//! config · role · notify · sys · fault · clock · settings    leaves: the host's settings,
//!                         roles, sd_notify, unsafe, test faults, which clock answers what, plugin
//!                         settings (schema, validator, secrets)
//! ```
//!
//! Everything is `pub(crate)` unless `main` needs it, so the compiler reports dead code; the
//! benchmarks (`bench/`) and the fuzz targets (`fuzz/`) reach the few internals they drive through
//! the hidden [`internals`].
//! The protocol types, frame codec and request multiplexer are `toru_plugin_api`'s (shared with
//! the SDKs; the host uses it without the SDK runner).
//!
//! ## Starting and stopping
//! `main` parses arguments and loads the [`config`], installs the signal handlers, calls [`prepare`]
//! (directories, runtime-dir lock, store and its data-dir lock, how plugin descendants are
//! tracked), binds the HTTP listener and hands it to [`run`] with a shutdown future (SIGTERM/SIGINT)
//! and a channel of rescan requests (SIGHUP). `run` owns everything from there until the shutdown
//! future resolves: before any plugin starts it kills what plugins of a previous run left (processes
//! recorded in the runtime dir, stale plugin sockets) and judges how the previous run ended
//! (safe mode: an unclean exit is counted, and enough in a row hold third-party plugins); it starts the HTTP server and the control
//! socket, then discovers the plugins beside them (READY=1 once that settles); its loop only waits —
//! rescans run on their own tasks — so a stop is acted on at once, cancelling any discovery under
//! way. After the last plugin stopped it removes this run's cgroups and records, and records the
//! clean stop in the store (a run whose record is never closed was an unclean exit).
//!
//! ## How a request flows
//! HTTP connection → `http` (limits, auth) → handler → `Supervisor::forward_http` → the plugin's
//! `PluginLink` (1.1: one multiplexed connection; 1.0: one connection per message) → a reply
//! checked once (status 200–599, body bytes) → response.

#![deny(unsafe_code)] // Only `sys` may (it says `allow`): unsafe lives in one module.

mod app;
pub(crate) mod auth;
mod clock;
pub mod config;
pub(crate) mod confine;
pub mod error_chain;
#[cfg(debug_assertions)]
mod fault;
pub(crate) mod http;
pub(crate) mod install;
pub(crate) mod license;
pub mod limits;
pub(crate) mod mqtt;
pub(crate) mod package;
pub mod role;
pub(crate) mod safe_mode;
pub(crate) mod settings;
pub(crate) mod store;
pub(crate) mod supervisor;
pub(crate) mod update;

use std::time::{Duration, Instant};

use crate::app::App;
use crate::config::Config;
use crate::store::Store;
use crate::supervisor::Supervisor;

pub use crate::app::VERSION;

pub mod admin;
pub mod check;
pub mod notify;
pub mod pack_cmd;
pub mod plugin_new;
pub mod store_cmd;
pub mod sys;
pub mod update_cmd;

/// Internals the benchmarks (`bench/`) and the fuzz targets (`fuzz/`) drive in-process. Not API:
/// hidden, and may change with any commit. Everything else in the crate is `pub(crate)` unless
/// `main` needs it, so the compiler reports dead code. (The config parser the fuzzer drives is
/// [`Config::apply_toml`], public already.)
#[doc(hidden)]
pub mod internals {
    pub use crate::store::{Store, StoreOptions};
    pub use crate::supervisor::conn::Conn;
    pub use crate::supervisor::logs::LogRing;

    /// Plugin settings: the schema subset, its validator and secrets.
    pub mod settings {
        pub use crate::settings::{FieldError, MAX_DEPTH, MAX_FIELD_ERRORS, Schema, SchemaError};
    }

    /// The package format's parsers on arbitrary input (fuzz target `package`): the manifest, the
    /// archive extractor and the signature reader.
    pub mod package {
        use std::path::Path;

        /// `Manifest::parse`: `Ok(id)` or the error's message.
        pub fn parse_manifest(text: &str) -> Result<String, String> {
            crate::package::manifest::Manifest::parse(text)
                .map(|m| m.id)
                .map_err(|e| e.to_string())
        }

        /// `archive::extract` of the file `package` into `dest` with small limits (1 MiB
        /// unpacked, 64 entries, a 16 KiB manifest): `Ok(files written)` or the error's message.
        pub fn extract_small(package: &Path, dest: &Path) -> Result<Vec<String>, String> {
            let limits = crate::package::archive::Limits {
                max_unpacked_bytes: 1024 * 1024,
                max_entries: 64,
                max_manifest_bytes: 16 * 1024,
            };
            crate::package::archive::extract(package, dest, &limits)
                .map(|x| x.files)
                .map_err(|e| crate::error_chain::error_chain(&e))
        }

        /// `sign::signature_key_id`, then `sign::verify` of `file` against the one key
        /// `public_key` (a `.pub` file's text): `Ok(key id)` or the error's message.
        pub fn verify_signature(
            file: &Path,
            sig_text: &str,
            public_key: &str,
        ) -> Result<String, String> {
            use crate::package::sign;
            sign::signature_key_id(sig_text).map_err(|e| e.to_string())?;
            let key = sign::PublicKey::parse(public_key).map_err(|e| e.to_string())?;
            sign::verify(file, sig_text, &[key])
                .map(|v| v.key_id)
                .map_err(|e| e.to_string())
        }
    }

    /// The HTTP gate's pure parts: the route table and the path, Host, origin and client checks.
    pub mod http {
        pub use crate::http::checks::{
            HostNames, client_ip, host_name, plugin_target, rest_ok, route_segment_ok, same_origin,
        };
        pub use crate::http::router::{ApiRoute, OpenRoute, PluginAction, Route, class_of};
    }
}

use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use crate::notify::Notifier;
use crate::store::OpenError;

/// Why the host could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Another instance holds the data dir.
    #[error("toru is already running on this data dir ({0})")]
    AlreadyRunning(std::path::PathBuf),
    /// Another instance holds the runtime dir (its sockets would be taken over).
    #[error(
        "toru is already running with the runtime dir {0} (its lock is held): give each instance its own --runtime-dir"
    )]
    RuntimeDirInUse(std::path::PathBuf),
    /// The runtime dir's lock file could not be opened or locked.
    #[error("cannot lock the runtime dir ({path})")]
    RuntimeDirLock {
        /// The lock file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Plugin descendants cannot be tracked the way the config asks.
    #[error("cannot track plugin descendants")]
    Descendants(#[source] supervisor::descendants::DescendantsError),
    /// The store could not be opened at all.
    #[error("cannot open the store")]
    Store(#[source] OpenError),
    /// A directory could not be prepared.
    #[error("cannot prepare {path}")]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

impl RunError {
    /// The process exit code for this error: 3 when another instance runs (on the same data dir
    /// or runtime dir), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::AlreadyRunning(_) | RunError::RuntimeDirInUse(_) => 3,
            _ => 1,
        }
    }
}

/// Create `dir` (and parents) and make it private (`0700`).
pub fn private_dir(dir: &Path) -> Result<(), RunError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| RunError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// The host before it serves: its directories exist, the runtime dir and the data dir are locked
/// (the store is open), and it knows how it tracks plugin descendants. [`prepare`] runs before
/// `main` binds the HTTP port, so a second instance on the same data dir or runtime dir fails with
/// [`RunError::AlreadyRunning`] or [`RunError::RuntimeDirInUse`] (exit code 3) even when the port
/// is taken too, and before it touches a socket of the running one.
#[derive(Debug)]
pub struct Prepared {
    config: Config,
    store: Store,
    descendants: supervisor::descendants::Descendants,
    /// Holds the runtime dir's lock while the host runs (released when the file is closed).
    _runtime_lock: std::fs::File,
}

/// The lock file in the runtime dir.
const RUNTIME_LOCK: &str = "toru.lock";

/// Lock the runtime dir for this host: a POSIX record lock on `<runtime-dir>/toru.lock`
/// (`sys::try_lock_process`), which belongs to this process alone — a plugin forked but not yet
/// exec'd when the host is killed does not hold it, so a host restarted at once gets it — and goes
/// with it however it ends. Held for the life of the returned file.
fn lock_runtime_dir(dir: &Path) -> Result<std::fs::File, RunError> {
    let path = dir.join(RUNTIME_LOCK);
    let err = |source| RunError::RuntimeDirLock {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(err)?;
    match sys::try_lock_process(&file) {
        Ok(true) => Ok(file),
        Ok(false) => Err(RunError::RuntimeDirInUse(dir.to_path_buf())),
        Err(e) => Err(err(e)),
    }
}

/// Create the runtime and data dirs (`0700`), lock the runtime dir, open the store (which locks the
/// data dir) and set up how plugin descendants are tracked.
pub fn prepare(config: Config) -> Result<Prepared, RunError> {
    private_dir(&config.runtime_dir)?;
    let runtime_lock = lock_runtime_dir(&config.runtime_dir)?;
    private_dir(&config.runtime_dir.join("plugins"))?;
    private_dir(&config.runtime_dir.join("logs"))?;
    private_dir(&config.data_dir)?;
    let store = app::open_store(&config).map_err(|e| match e {
        OpenError::Locked(p) => RunError::AlreadyRunning(p),
        other => RunError::Store(other),
    })?;
    if let store::StoreHealth::Degraded { reason, .. } = store.health() {
        log::error!("store degraded: {reason}");
    }
    supervisor::isolation::HostIsolation::new(&config)
        .prepare_host_dirs()
        .map_err(|source| RunError::Dir {
            path: config.data_dir.clone(),
            source,
        })?;
    let descendants = supervisor::descendants::Descendants::setup(&config, &store.instance_id())
        .map_err(RunError::Descendants)?;
    Ok(Prepared {
        config,
        store,
        descendants,
        _runtime_lock: runtime_lock,
    })
}

/// Serve on `listener` until `shutdown` resolves, rescanning the plugins dir once per message on
/// `rescans` (`main` turns SIGTERM/SIGINT into `shutdown` and SIGHUP into a rescan; a test can drive
/// both directly). Must run inside a `LocalSet` on a `current_thread` runtime.
///
/// The HTTP server and the control socket serve from the start; the first discovery runs beside
/// them (every `--metadata` at once, bounded), so a plugin that hangs in `--metadata` delays
/// nothing but readiness. A message with `STATUS=discovering plugins` and the bound address as
/// `X_TORU_LISTEN=ip:port` goes to `notifier` as soon as the server runs; `READY=1` follows once
/// the first discovery is over and the plugins it found have settled (at most the metadata timeout
/// per eight hanging binaries, plus the start timeouts), with the address again, so whoever
/// started the host with `--listen …:0` learns the port from either message. The address is also written to
/// `<runtime-dir>/http.addr` for scripts; both files are removed on a clean stop. When `shutdown`
/// resolves, discovery still running is cancelled and its `--metadata` runs are killed.
pub async fn run(
    prepared: Prepared,
    listener: tokio::net::TcpListener,
    notifier: Notifier,
    shutdown: impl Future<Output = ()>,
    mut rescans: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), RunError> {
    let Prepared {
        config,
        store,
        descendants,
        _runtime_lock,
    } = prepared;
    let bound = listener.local_addr().map_err(|source| RunError::Listen {
        addr: config.listen,
        source,
    })?;
    let addr_file = config.runtime_dir.join("http.addr");
    if let Err(e) = std::fs::write(&addr_file, format!("{bound}\n")) {
        log::warn!("cannot write {}: {e}", addr_file.display());
    }
    log::info!("toru {VERSION} listening on http://{bound}/");

    // Before any plugin starts: nothing a previous run's plugins left may run beside the new ones,
    // and no stale socket may be mistaken for a new plugin's (the runtime dir is ours alone now).
    let descendants = Rc::new(descendants);
    log::info!("{}", descendants.describe());
    descendants.clean_leftovers().await;
    let stale = supervisor::isolation::remove_stale_sockets(&config.runtime_dir);
    if stale > 0 {
        log::info!("removed {stale} stale plugin socket(s)");
    }
    let reaper_task = {
        let d = descendants.clone();
        tokio::task::spawn_local(async move { d.watch().await })
    };
    // Before any plugin starts: the licensing identity (made on the first start) and the clock's
    // high-water mark, so the first licence checks judge at max(now, last seen).
    match license::gate::ensure_instance(&store).await {
        Some(i) => log::info!("licensing id {}", i.licensing_id),
        None => log::error!("no licensing id: plugins that need a licence will not start"),
    }
    if let Err(e) = store.advance_last_seen(crate::clock::now()).await {
        log::warn!("cannot record the time: {e}");
    }
    let supervisor =
        Supervisor::with_descendants(config.clone(), store.clone(), descendants.clone());
    // Before any plugin starts: how did the previous run end? Enough unclean exits in a row and
    // third-party plugins are held (the supervisor asks safe mode before every spawn).
    let safe_mode = safe_mode::SafeMode::new(&config, store.clone(), supervisor.clone());
    safe_mode.begin().await;
    let clean_run_task = tokio::task::spawn_local(safe_mode.clone().watch_clean_run());
    // Before any plugin starts: an update the last run left on probation is rolled back.
    let packages = install::Packages::new(config.clone(), store.clone(), supervisor.clone());
    packages.recover().await;
    let updates = update::Updates::new(config.clone(), store.clone(), supervisor.clone());
    let started = Instant::now();
    // Off without `[mqtt] url`; connects on its own tasks, never holding up the start.
    let mqtt = mqtt::Bridge::start(&config.mqtt, store.clone(), supervisor.clone(), started);
    // Before any plugin starts: 1.1 plugins' `mqtt` requests go to the bridge (which answers that
    // it is off when it is).
    supervisor.set_mqtt(Rc::new(mqtt.clone()));
    let app = Rc::new(App {
        config: config.clone(),
        store: store.clone(),
        supervisor: supervisor.clone(),
        packages,
        safe_mode: safe_mode.clone(),
        updates: updates.clone(),
        mqtt: mqtt.clone(),
        started,
        started_at: crate::clock::now(),
    });
    if let Err(e) = auth::ensure_setup_code(&app).await {
        log::error!("cannot prepare the setup code: {e}");
    }
    let licence_task = tokio::task::spawn_local(watch_licences(store.clone(), supervisor.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_task = {
        let app = app.clone();
        let mut rx = stop_rx.clone();
        tokio::task::spawn_local(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = http::serve(listener, app, stop).await {
                log::error!("HTTP server failed: {e}");
            }
        })
    };
    let control_task = match admin::bind_control(&app) {
        Ok(listener) => Some(tokio::task::spawn_local(admin::serve_control(
            app.clone(),
            listener,
            stop_rx.clone(),
        ))),
        Err(e) => {
            log::error!(
                "cannot bind the control socket (toru CLI commands will not reach the daemon): {e}"
            );
            None
        }
    };
    // Serving already: whoever started the host learns the address before discovery ends.
    notifier.send(&format!(
        "STATUS=discovering plugins\nX_TORU_LISTEN={bound}"
    ));

    // The first discovery runs beside the HTTP server and the control socket; READY=1 follows it.
    // Polled by the loop below until it is done; dropped unfinished if the host stops first, which
    // kills its `--metadata` runs.
    let mut first_discovery = Box::pin({
        let supervisor = supervisor.clone();
        let cfg = config.supervisor.clone();
        async move {
            let report = supervisor.rescan().await;
            log::info!(
                "{} plugins found, {} skipped",
                report.added.len(),
                report.invalid.len()
            );
            retry_timed_out_metadata(&supervisor, &report);
            supervisor
                .settle(cfg.socket_timeout + cfg.ready_timeout)
                .await;
        }
    });
    let mut ready = false;
    // The whole-device update's health gate, started at READY (see `update`).
    let mut update_gate: Option<tokio::task::JoinHandle<()>> = None;
    let mut watchdog = notifier.watchdog_period().map(watchdog_timer);
    let notifier = Rc::new(notifier);
    #[cfg(debug_assertions)]
    fault::spawn_from_env(&|k| std::env::var(k).ok(), Rc::clone(&notifier));

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            () = &mut first_discovery, if !ready => {
                ready = true;
                notifier.send(&format!(
                    "READY=1\nSTATUS={}\nX_TORU_LISTEN={bound}",
                    supervisor.status_line()
                ));
                log::info!("ready: {}", supervisor.status_line());
                update_gate = Some(tokio::task::spawn_local(updates.clone().run_gate()));
            }
            // Once every sender is dropped `recv` yields `None`: the branch is skipped from then on.
            // Each rescan runs on its own task (one at a time, by the supervisor's scan lock), so
            // this loop keeps answering the shutdown future and the watchdog meanwhile.
            Some(()) = rescans.recv() => {
                let supervisor = supervisor.clone();
                tokio::task::spawn_local(async move {
                    let r = supervisor.rescan().await;
                    log::info!(
                        "rescan: {} added, {} removed, {} replaced, {} skipped",
                        r.added.len(),
                        r.removed.len(),
                        r.replaced.len(),
                        r.invalid.len()
                    );
                    retry_timed_out_metadata(&supervisor, &r);
                });
            }
            _ = async {
                match watchdog.as_mut() {
                    Some(w) => { w.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                // Sent from the event loop itself: a stalled loop sends nothing.
                notifier.send(&format!("WATCHDOG=1\nSTATUS={}", supervisor.status_line()));
            }
        }
    }
    // An unfinished first discovery is cancelled here; a rescan task sees the supervisor stop.
    drop(first_discovery);
    notifier.send("STOPPING=1\nSTATUS=stopping plugins");
    licence_task.abort();
    clean_run_task.abort();
    if let Some(gate) = update_gate {
        gate.abort();
    }
    supervisor.shutdown().await;
    // After the plugins' last states went out: `offline`, then a clean disconnect (bounded).
    mqtt.stop().await;
    reaper_task.abort();
    descendants.finish().await;
    // Every plugin is gone: this run ends cleanly (a kill before this line counts as unclean).
    safe_mode.stop().await;
    let _ = stop_tx.send(true);
    let _ = http_task.await;
    if let Some(t) = control_task {
        let _ = t.await;
    }
    store.close();
    let _ = std::fs::remove_file(&addr_file);
    log::info!("stopped");
    Ok(())
}

/// How often the host records the time it has seen and checks every plugin's licence again
/// (expiry, a publisher key no longer trusted).
const LICENCE_CHECK_PERIOD: Duration = Duration::from_secs(60);

/// Every [`LICENCE_CHECK_PERIOD`]: move the store's `last_seen` forward to now (never back), then
/// check every plugin's licence at max(now, last seen). Runs until aborted at shutdown.
async fn watch_licences(store: Store, supervisor: Supervisor) {
    let mut timer = tokio::time::interval(LICENCE_CHECK_PERIOD);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    timer.tick().await; // the first tick is immediate: `run` recorded the time already
    loop {
        timer.tick().await;
        if let Err(e) = store.advance_last_seen(crate::clock::now()).await {
            log::warn!("cannot record the time: {e}");
        }
        supervisor.check_licences().await;
    }
}

/// Delays between rescans after a `--metadata` run timed out (a device still busy booting, a slow
/// SD card): the file is asked again instead of staying "invalid" until someone rescans.
const METADATA_RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(300),
];

/// If `report` skipped a binary only because its `--metadata` run timed out, rescan later (see
/// [`METADATA_RETRY_DELAYS`]) until none times out. Metadata that is wrong is not retried: it
/// waits for the file to change and a rescan.
fn retry_timed_out_metadata(supervisor: &Supervisor, report: &supervisor::RescanReport) {
    if !report
        .invalid
        .iter()
        .any(supervisor::InvalidPlugin::timed_out)
    {
        return;
    }
    log::warn!(
        "a --metadata run timed out; asking again in {:?}",
        METADATA_RETRY_DELAYS[0]
    );
    let supervisor = supervisor.clone();
    tokio::task::spawn_local(async move {
        for delay in METADATA_RETRY_DELAYS {
            tokio::time::sleep(delay).await;
            let r = supervisor.rescan().await;
            if !r.invalid.iter().any(supervisor::InvalidPlugin::timed_out) {
                return;
            }
        }
        log::error!("--metadata still times out after every retry; rescan (SIGHUP) to try again");
    });
}

/// The watchdog's ping timer. After the loop was held up (or the monotonic clock jumped, as it does
/// for a VM that was paused), one ping says it runs again: the missed ones are skipped, not sent
/// in a burst (a year's worth would spin the loop for a minute).
fn watchdog_timer(period: std::time::Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval(period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    timer
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A monotonic jump (a paused VM resumed) used to release every missed watchdog ping at once:
    /// a year at a 15 s period is two million `WATCHDOG=1` datagrams sent back to back.
    #[tokio::test(start_paused = true)]
    async fn a_monotonic_jump_releases_one_watchdog_ping_not_a_burst() {
        use std::task::{Context, Waker};
        let period = std::time::Duration::from_secs(15);
        let mut timer = watchdog_timer(period);
        timer.tick().await; // the first tick is immediate
        tokio::time::advance(std::time::Duration::from_secs(365 * 24 * 3600)).await;
        let mut cx = Context::from_waker(Waker::noop());
        let mut ready = 0;
        while timer.poll_tick(&mut cx).is_ready() {
            ready += 1;
            assert!(ready < 100, "a burst of missed pings");
        }
        assert_eq!(ready, 1);
    }

    /// `run` in-process, as a caller other than `main` drives it: a listener it did not bind
    /// (port 0), and a shutdown future that resolves once a request was answered.
    #[tokio::test]
    async fn run_serves_the_given_listener_and_stops_when_shutdown_resolves() {
        let root = std::env::temp_dir().join(format!("toru-run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut config = Config {
            data_dir: root.join("data"),
            plugins_dir: root.join("plugins"),
            runtime_dir: root.join("run"),
            ..Config::default()
        };
        // In-process: the test binary must not become a subreaper or make cgroups.
        config.supervisor.descendants = config::DescendantTracking::ProcessGroup;
        std::fs::create_dir_all(&config.plugins_dir).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let prepared = prepare(config).unwrap();
        let notifier = Notifier::from_env(&|_| None);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (rescan_tx, rescans) = tokio::sync::mpsc::channel(1);
        let shutdown = async move {
            let _ = stop_rx.await;
        };
        let client = async move {
            // Held to the end: a closed channel would only disable rescans, not stop the host.
            let _rescan_tx = rescan_tx;
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).await.unwrap();
            stop_tx.send(()).unwrap();
            reply
        };
        let local = tokio::task::LocalSet::new();
        let (served, reply) = local
            .run_until(async {
                tokio::join!(run(prepared, listener, notifier, shutdown, rescans), client)
            })
            .await;
        served.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(
            !root.join("run").join("http.addr").exists(),
            "removed on a clean stop"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
