//! The supervisor: discovers plugins, starts them, watches them, restarts them, stops them.
//!
//! - [`policy`]: the per-plugin lifecycle policy, a state machine without I/O: restarts and
//!   backoff, the stop escalation (shutdown → SIGTERM → SIGKILL), the lost-connection grace, and
//!   the persisted flags (enabled, auto-disabled). It owns every timer; unit-tested with paused
//!   time and no processes.
//! - [`plugin`]: one local task per plugin that owns its process, feeds the policy what happens
//!   and performs its actions.
//! - [`discovery`]: which files are plugins and which id and route each gets: `--metadata` runs
//!   (parallel, bounded, each in a process group killed whole, cancellable), and the identity
//!   rules (an id belongs to the file it was first bound to), decided without I/O.
//! - [`process`]: spawning (clean environment, own process group, death signal), listing files.
//! - [`descendants`]: every descendant of a plugin stopped with it and leftovers of a previous run
//!   killed at start, by a cgroup per plugin ([`cgroup`]) or the host as child subreaper
//!   ([`subreaper`], reading [`procfs`]).
//! - `link`: [`PluginReply`] and the plugin link, which hides 1.0 (a connection per message) vs
//!   1.1 behind init, request, configure, shutdown and watch; the only place the two are told
//!   apart.
//! - [`conn`]: the 1.1 persistent connection on the shared multiplexer; plugin KV served here.
//! - [`logs`]: the bounded per-plugin log ring.
//!
//! [`Supervisor`] is the handle the HTTP layer and `main` use. Everything runs on the runtime thread.
//!
//! ## A scan
//! [`Supervisor::rescan`] (at start, on SIGHUP, from the API) holds the scan lock, so scans run one
//! at a time, while the HTTP server and the plugins carry on. It probes (see [`discovery`]; the
//! only slow part, cancelled by [`Supervisor::shutdown`]) and then applies, in this order: skipped
//! binaries get a `metadata-invalid` event (once per reason), new bindings are persisted, plugins
//! whose claim is gone or was refused are retired, plugins whose file now prints other metadata are
//! retired and started again with it (keeping their log), and new ones start. A file that changed
//! but prints the same metadata keeps its plugin running; the new file runs from its next start.

mod cgroup;
pub(crate) mod conn;
pub(crate) mod descendants;
pub(crate) mod discovery;
pub(crate) mod isolation;
pub(crate) mod link;
pub(crate) mod logs;
pub(crate) mod mqtt_port;
pub(crate) mod plugin;
pub(crate) mod policy;
pub(crate) mod process;
mod procfs;
mod subreaper;
#[cfg(test)]
mod tests;
pub(crate) mod view;
pub(crate) mod watch;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, mpsc, oneshot};
use toru_plugin_api::{HttpRequest, LogLevel};

use crate::config::Config;
use crate::store::{EventKind, NewEvent, PluginBinding, Store};
use discovery::{Claim, Holder, Probe, ReadCache, claim_name, file_name};
use logs::LogRing;
use plugin::{Command, Ctx, Shared};

pub(crate) use plugin::HoldRule;

pub use link::PluginReply;
pub use view::{
    ConfigOutcome, ForwardError, Grants, InvalidPlugin, LogLine, LogPage, PluginState, PluginView,
    RescanReport, SecurityChange, SupervisorError,
};

/// Handle to the supervisor; cheap to clone, used on the runtime thread only.
#[derive(Clone, Debug)]
pub struct Supervisor {
    inner: Rc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ctx: Rc<Ctx>,
    plugins: RefCell<BTreeMap<String, Rc<Shared>>>,
    invalid: RefCell<Vec<InvalidPlugin>>,
    /// Metadata the last scan read successfully, by file, with the file's stamp then.
    read: RefCell<ReadCache>,
    /// Turns `true` once, when the host stops: refuses commands, cancels a scan's probing and keeps
    /// a scan from starting plugins.
    stopping: tokio::sync::watch::Sender<bool>,
    scanning: tokio::sync::Mutex<()>,
    /// Package ids a package transaction holds down: scans leave their package out, so the
    /// plugin stops and does not start until the transaction releases it.
    held: RefCell<BTreeSet<String>>,
    /// The log rings of held plugins, handed to the version that starts next.
    held_rings: RefCell<BTreeMap<String, Rc<LogRing>>>,
}

impl Supervisor {
    /// A supervisor with no plugins yet, for unit tests: plugin descendants are followed by
    /// process group only. The host builds it with [`Supervisor::with_descendants`].
    #[cfg(test)]
    pub(crate) fn new(config: Config, store: Store) -> Supervisor {
        let descendants = Rc::new(descendants::Descendants::process_group());
        Supervisor::with_descendants(config, store, descendants)
    }

    /// A supervisor with no plugins yet; call [`Supervisor::rescan`] to load them. Plugin
    /// descendants are found and stopped by `descendants`.
    pub(crate) fn with_descendants(
        config: Config,
        store: Store,
        descendants: Rc<descendants::Descendants>,
    ) -> Supervisor {
        let instance_id = store.instance_id();
        Supervisor {
            inner: Rc::new(Inner {
                ctx: Rc::new(Ctx {
                    store,
                    instance_id,
                    changed: Rc::new(Notify::new()),
                    isolation: isolation::HostIsolation::new(&config),
                    config,
                    descendants,
                    hold: RefCell::new(None),
                    track_runs: Cell::new(false),
                    mqtt: RefCell::new(None),
                }),
                plugins: RefCell::new(BTreeMap::new()),
                invalid: RefCell::new(Vec::new()),
                read: RefCell::new(BTreeMap::new()),
                stopping: tokio::sync::watch::Sender::new(false),
                scanning: tokio::sync::Mutex::new(()),
                held: RefCell::new(BTreeSet::new()),
                held_rings: RefCell::new(BTreeMap::new()),
            }),
        }
    }

    fn stopping(&self) -> bool {
        *self.inner.stopping.borrow()
    }

    fn shared(&self, id: &str) -> Option<Rc<Shared>> {
        self.inner.plugins.borrow().get(id).cloned()
    }

    fn view(s: &Shared) -> PluginView {
        let policy = s.policy.borrow();
        let now = tokio::time::Instant::now();
        PluginView {
            id: s.id.clone(),
            name: s.metadata.name.clone(),
            version: s.metadata.version.clone(),
            author: s.metadata.author.clone(),
            icon: s.metadata.icon.clone(),
            route: s.metadata.route.clone(),
            protocol: s.protocol.as_str(),
            binary: s.binary.display().to_string(),
            enabled: policy.enabled(),
            state: policy.state(),
            pid: s.pid.get(),
            restarts: policy.restarts(),
            consecutive_failures: policy.consecutive_failures(now),
            auto_disabled: policy.auto_disabled().map(str::to_owned),
            ready_since: s.ready_since.get(),
            last_event: s.last_event.borrow().clone(),
            log_dropped: s.ring.dropped(),
            license: s
                .licence
                .borrow()
                .as_ref()
                .map(crate::license::Claims::to_api),
            license_needed: policy.licence_needed().map(str::to_owned),
        }
    }

    /// Check plugin `id`'s licence again now (one was installed or removed): a plugin waiting
    /// for one starts, a running one without a valid one stops, a running one whose licence
    /// changed restarts with it. Unknown ids are ignored.
    pub(crate) async fn check_licence(&self, id: &str) {
        if let Some(s) = self.shared(id) {
            let (tx, rx) = oneshot::channel();
            if s.commands.send(Command::Licence(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }
    }

    /// [`Supervisor::check_licence`] for every plugin (periodically: expiry, keys no longer
    /// trusted).
    pub(crate) async fn check_licences(&self) {
        let ids: Vec<String> = self.inner.plugins.borrow().keys().cloned().collect();
        for id in ids {
            self.check_licence(&id).await;
        }
    }

    /// What safe mode asks of the supervisor, set once at start before any plugin starts:
    /// `track_runs` keeps the run record's list of starting and running plugins; `hold` is asked
    /// before every spawn (a held plugin waits in [`PluginState::Held`]).
    pub(crate) fn set_safe_mode(&self, track_runs: bool, hold: Option<HoldRule>) {
        self.inner.ctx.track_runs.set(track_runs);
        *self.inner.ctx.hold.borrow_mut() = hold;
    }

    /// Safe mode was left (its rule holds nothing now): every held plugin starts, if enabled.
    /// Returns once each has been told.
    pub(crate) async fn release_held(&self) {
        let all: Vec<Rc<Shared>> = self.inner.plugins.borrow().values().cloned().collect();
        for s in all {
            let (tx, rx) = oneshot::channel();
            if s.commands.send(Command::Release(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }
    }

    /// Stop plugin `id` and keep it stopped: scans leave its package out until
    /// [`Supervisor::release`]. Returns once the process is gone. For package transactions.
    pub(crate) async fn hold(&self, id: &str) {
        self.inner.held.borrow_mut().insert(id.to_owned());
        self.rescan().await;
    }

    /// Let scans see package `id` again and scan: its active version starts (if enabled).
    pub(crate) async fn release(&self, id: &str) -> RescanReport {
        self.inner.held.borrow_mut().remove(id);
        self.rescan().await
    }

    /// Where plugin `id`'s log stands (the sequence number of its newest line; 0: none), for
    /// [`Supervisor::probation`]: taken while it is held down, before the version on probation
    /// starts.
    pub(crate) fn log_mark(&self, id: &str) -> u64 {
        match self.shared(id) {
            Some(s) => s.ring.last_seq(),
            None => self
                .inner
                .held_rings
                .borrow()
                .get(id)
                .map_or(0, |r| r.last_seq()),
        }
    }

    /// Watch plugin `id`, just started, through its probation: it must become ready (within the
    /// start timeouts) and then stay ready for `period` — no exit, no missed heartbeats, no
    /// restart. `Err` says why it did not, with its last stderr lines written after `log_mark`
    /// (see [`Supervisor::log_mark`]: the version before wrote those up to it). A disabled plugin
    /// passes at once (it is not started; its next start is an ordinary one).
    pub(crate) async fn probation(
        &self,
        id: &str,
        period: Duration,
        log_mark: u64,
    ) -> Result<(), String> {
        let ctx = &self.inner.ctx;
        let cfg = &ctx.config.supervisor;
        let start_limit = cfg.socket_timeout + cfg.ready_timeout + Duration::from_secs(1);
        let ready_by = tokio::time::Instant::now() + start_limit;
        let mut watching: Option<(tokio::time::Instant, u64)> = None;
        loop {
            let changed = ctx.changed.clone();
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.stopping() {
                return Err("the host is stopping".into());
            }
            let Some(s) = self.shared(id) else {
                let why = self
                    .inner
                    .invalid
                    .borrow()
                    .iter()
                    .find(|i| {
                        let name = claim_name(&ctx.config.packages_dir(), Path::new(&i.binary));
                        name.strip_prefix(discovery::PACKAGE_CLAIM) == Some(id)
                            || i.binary.strip_prefix(discovery::PACKAGE_CLAIM) == Some(id)
                    })
                    .map(|i| i.reason.clone());
                return Err(match why {
                    Some(why) => format!("it was not started: {why}"),
                    None => "it was not started".into(),
                });
            };
            let (state, enabled, restarts) = {
                let p = s.policy.borrow();
                (p.state(), p.enabled(), p.restarts())
            };
            // Not started for want of a licence: installed, it waits for one (not a failure).
            // Held by safe mode: installed, it starts when safe mode is left.
            if !enabled || matches!(state, PluginState::LicenceNeeded | PluginState::Held) {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            match (state, watching) {
                (PluginState::Ready, None) => {
                    watching = Some((now + period, restarts));
                    continue;
                }
                (PluginState::Ready, Some((until, r0))) if restarts == r0 => {
                    if now >= until {
                        return Ok(());
                    }
                }
                (PluginState::Starting | PluginState::Stopped, None) => {
                    if now >= ready_by {
                        return Err(failure(
                            &s,
                            &format!("it did not become ready within {} s", start_limit.as_secs()),
                            log_mark,
                        ));
                    }
                }
                (state, _) => {
                    let what = match state {
                        PluginState::Hung => "it stopped answering heartbeats",
                        PluginState::Ready => "it restarted",
                        _ if watching.is_some() => "it failed after becoming ready",
                        _ => "it failed while starting",
                    };
                    return Err(failure(&s, what, log_mark));
                }
            }
            let wake = match watching {
                Some((until, _)) => until,
                None => ready_by,
            };
            let _ = tokio::time::timeout_at(wake, notified).await;
        }
    }

    /// Snapshots of every valid plugin, sorted by id.
    pub fn plugins(&self) -> Vec<PluginView> {
        self.inner
            .plugins
            .borrow()
            .values()
            .map(|s| Supervisor::view(s))
            .collect()
    }

    /// Snapshot of one plugin.
    pub fn plugin(&self, id: &str) -> Option<PluginView> {
        self.shared(id).map(|s| Supervisor::view(&s))
    }

    /// The id of the plugin whose route is `/<segment>`.
    pub fn plugin_id_for_route(&self, segment: &str) -> Option<String> {
        self.inner
            .plugins
            .borrow()
            .values()
            .find(|s| s.metadata.route_segment() == segment)
            .map(|s| s.id.clone())
    }

    /// Binaries skipped at the last scan, and why.
    pub fn invalid(&self) -> Vec<InvalidPlugin> {
        self.inner.invalid.borrow().clone()
    }

    /// The plugins directory (for `<plugins-dir>/<id>/bundle.js`).
    pub fn plugins_dir(&self) -> &Path {
        &self.inner.ctx.config.plugins_dir
    }

    async fn send(
        &self,
        id: &str,
        make: impl FnOnce(oneshot::Sender<()>) -> Command,
    ) -> Result<PluginView, SupervisorError> {
        if self.stopping() {
            return Err(SupervisorError::ShuttingDown);
        }
        let shared = self
            .shared(id)
            .ok_or_else(|| SupervisorError::NotFound(id.into()))?;
        let (tx, rx) = oneshot::channel();
        shared
            .commands
            .send(make(tx))
            .await
            .map_err(|_| SupervisorError::ShuttingDown)?;
        rx.await.map_err(|_| SupervisorError::ShuttingDown)?;
        Ok(Supervisor::view(&shared))
    }

    /// Enable and start a plugin (persisted, `enabled` event).
    pub async fn enable(&self, id: &str) -> Result<PluginView, SupervisorError> {
        self.send(id, Command::Enable).await
    }

    /// Stop and disable a plugin (persisted, `disabled` event).
    pub async fn disable(&self, id: &str) -> Result<PluginView, SupervisorError> {
        self.send(id, Command::Disable).await
    }

    /// What plugin `id` gets and what protects it (`GET /api/plugins/{id}/security`, the
    /// `security` of `toru plugins --json`): docs/API.md.
    pub async fn security(&self, id: &str) -> Result<serde_json::Value, SupervisorError> {
        let shared = self
            .shared(id)
            .ok_or_else(|| SupervisorError::NotFound(id.into()))?;
        let ctx = &self.inner.ctx;
        let sec = ctx
            .isolation
            .resolve(&ctx.store, id, &shared.binary)
            .await
            .map_err(SupervisorError::Isolation)?;
        let protections = plugin::protections(ctx, &sec);
        Ok(sec.to_json(protections))
    }

    /// Change plugin `id`'s limits and grants (admin), recorded as a `security-changed` event;
    /// a running plugin is restarted to apply them. Returns [`Supervisor::security`] afterwards.
    pub async fn set_security(
        &self,
        id: &str,
        change: SecurityChange,
    ) -> Result<serde_json::Value, SupervisorError> {
        use crate::limits::{Key, Limits, parse};
        let shared = self
            .shared(id)
            .ok_or_else(|| SupervisorError::NotFound(id.into()))?;
        let store = &self.inner.ctx.store;
        let mut overrides = store.security_overrides(id)?;
        let mut limits = if overrides.limits.is_null() {
            Limits::default()
        } else {
            Limits::from_json(&overrides.limits).unwrap_or_default()
        };
        let mut said = Vec::new();
        for (k, v) in &change.limits {
            let key = Key::parse(k).ok_or_else(|| {
                SupervisorError::InvalidLimit(format!(
                    "limits.{k}: not a limit (one of {})",
                    Key::ALL.map(Key::as_str).join(", ")
                ))
            })?;
            if v.is_null() {
                limits.set(key, None);
                said.push(format!("{key} back to the default"));
            } else {
                let value = parse(key, v)
                    .map_err(|e| SupervisorError::InvalidLimit(format!("limits.{e}")))?;
                limits.set(key, Some(value));
                said.push(format!("{key} = {}", value.to_json()));
            }
        }
        overrides.limits = limits.to_json();
        if let Some(g) = &change.grants {
            let check = |what: &str, names: &[String]| {
                names.iter().try_for_each(|n| {
                    let ok = (1..=32).contains(&n.len())
                        && n.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                        });
                    if ok {
                        Ok(())
                    } else {
                        Err(SupervisorError::InvalidLimit(format!(
                            "grants.{what}: {n:?} is not a name like \"gpio\""
                        )))
                    }
                })
            };
            check("groups", &g.groups)?;
            check("syscalls", &g.syscalls)?;
            overrides.groups = g.groups.iter().cloned().collect();
            overrides.syscalls = g.syscalls.iter().cloned().collect();
            said.push(format!(
                "granted groups [{}], system calls [{}]",
                g.groups.join(", "),
                g.syscalls.join(", ")
            ));
        }
        let message = if said.is_empty() {
            "security unchanged".to_string()
        } else {
            format!("security changed: {}", said.join("; "))
        };
        store
            .set_security_overrides(
                id,
                overrides,
                Some(NewEvent {
                    kind: EventKind::SecurityChanged,
                    message,
                    details: json!({"limits": change.limits}),
                }),
            )
            .await?;
        let running = shared.pid.get().is_some();
        if running {
            self.restart(id).await?;
        }
        self.security(id).await
    }

    /// Stop and start a plugin again (not counted as a failure).
    pub async fn restart(&self, id: &str) -> Result<PluginView, SupervisorError> {
        self.send(id, Command::Restart).await
    }

    /// Hand a plugin its new settings (a JSON object; the caller has stored them, so they also
    /// reach it in `init` at every later start), waiting at most the plugin timeout
    /// (`[http] plugin_timeout`) for its answer. A ready plugin that takes settings while it
    /// runs (1.1) answers: [`ConfigOutcome::Applied`] or [`ConfigOutcome::Rejected`]. One that
    /// takes them only at start (1.0, or a 1.1 plugin answering `unsupported`), or one that is
    /// starting (its init may hold the previous settings), is restarted:
    /// [`ConfigOutcome::Restarted`]. A plugin that is not running is left alone:
    /// [`ConfigOutcome::NotRunning`]. The plugin's log says which, never the values.
    // Called by the settings endpoint (issue 11), which is not written yet.
    pub async fn configure(
        &self,
        id: &str,
        config: serde_json::Value,
    ) -> Result<ConfigOutcome, SupervisorError> {
        if self.stopping() {
            return Err(SupervisorError::ShuttingDown);
        }
        let shared = self
            .shared(id)
            .ok_or_else(|| SupervisorError::NotFound(id.into()))?;
        let note = |level, msg: &str| shared.ring.push(view::LogStream::Host, level, msg);
        let state = shared.policy.borrow().state();
        let link = shared.link.borrow().clone();
        let answer = match (state, link) {
            (PluginState::Ready, Some(link)) => link
                .configure(config, self.inner.ctx.config.http.plugin_timeout)
                .await
                .map_err(|e| SupervisorError::SettingsNotDelivered {
                    id: id.into(),
                    reason: e.to_string(),
                })?,
            (PluginState::Starting, _) => link::ConfigAnswer::NeedsRestart,
            _ => {
                note(
                    LogLevel::Info,
                    "settings changed; they apply at its next start",
                );
                return Ok(ConfigOutcome::NotRunning);
            }
        };
        match answer {
            link::ConfigAnswer::Applied => {
                note(LogLevel::Info, "new settings applied");
                Ok(ConfigOutcome::Applied)
            }
            link::ConfigAnswer::Rejected(why) => {
                note(LogLevel::Warn, &format!("new settings refused: {why}"));
                Ok(ConfigOutcome::Rejected(why))
            }
            link::ConfigAnswer::NeedsRestart => {
                note(LogLevel::Info, "restarting to apply new settings");
                self.send(id, Command::Restart).await?;
                Ok(ConfigOutcome::Restarted)
            }
        }
    }

    /// Release `id` from the file it is bound to (`toru plugins unbind`), so that the next scan
    /// gives it to the file that claims it then, with its state, KV and events. Refused while the
    /// plugin runs from its bound file: remove or rename that file and rescan first. Returns the
    /// binding released.
    pub async fn unbind(&self, id: &str) -> Result<PluginBinding, SupervisorError> {
        if self.stopping() {
            return Err(SupervisorError::ShuttingDown);
        }
        if let Some(s) = self.shared(id) {
            return Err(SupervisorError::StillClaimed {
                id: id.into(),
                file: file_name(&s.binary),
            });
        }
        unbind_stored(&self.inner.ctx.store, id).await
    }

    /// Scan the plugins dir (see "A scan" above): start new enabled plugins, retire removed ones,
    /// restart replaced ones, leave the others running untouched. Returns an empty report when the
    /// host stops meanwhile.
    pub async fn rescan(&self) -> RescanReport {
        let _scan = self.inner.scanning.lock().await;
        let mut stopping = self.inner.stopping.subscribe();
        if *stopping.borrow_and_update() {
            return RescanReport::default();
        }
        let probes = tokio::select! {
            probes = self.probe() => probes,
            _ = stopping.wait_for(|s| *s) => {
                log::info!("discovery cancelled: the host is stopping");
                return RescanReport::default();
            }
        };
        self.apply(probes).await
    }

    /// The first half of a scan: list the binaries and read the metadata of those that changed.
    async fn probe(&self) -> Vec<Probe> {
        let ctx = &self.inner.ctx;
        let dir = &ctx.config.plugins_dir;
        if let Err(e) = std::fs::create_dir_all(dir) {
            log::error!("cannot create plugins dir {}: {e}", dir.display());
        }
        let mut binaries = process::list_binaries(dir).unwrap_or_else(|e| {
            log::error!("cannot read plugins dir {}: {e}", dir.display());
            Vec::new()
        });
        binaries.extend(self.package_entries());
        let cache = self.inner.read.borrow().clone();
        discovery::probe(
            binaries,
            &cache,
            ctx.config.supervisor.metadata_timeout,
            &ctx.isolation,
        )
        .await
    }

    /// The executables of the installed packages' active versions, except the held ones.
    fn package_entries(&self) -> Vec<PathBuf> {
        let ctx = &self.inner.ctx;
        let packages = ctx.store.packages().unwrap_or_else(|e| {
            log::error!("cannot read the installed packages: {e}");
            BTreeMap::new()
        });
        let held = self.inner.held.borrow();
        let root = ctx.config.packages_dir();
        packages
            .values()
            .filter(|p| !held.contains(&p.id))
            .filter_map(|p| {
                let v = p.active_version()?;
                Some(package_dir(&root, &p.id, &v.version).join(&v.entry))
            })
            .collect()
    }

    /// The second half of a scan: decide who gets which id and route, and act on it.
    async fn apply(&self, probes: Vec<Probe>) -> RescanReport {
        let ctx = self.inner.ctx.clone();
        let mut report = RescanReport::default();
        *self.inner.read.borrow_mut() = probes
            .iter()
            .filter_map(|p| {
                Some((
                    p.binary.clone(),
                    (p.stamp?, p.result.as_ref().ok()?.clone()),
                ))
            })
            .collect();
        let mut claims = Vec::new();
        let dir = &ctx.config.plugins_dir;
        let packages_root = ctx.config.packages_dir();
        for p in probes {
            let file = claim_name(&packages_root, &p.binary);
            match p.result {
                // A package's executable was checked at install; it still must claim the
                // package's id.
                Ok(found)
                    if file
                        .strip_prefix(discovery::PACKAGE_CLAIM)
                        .is_some_and(|id| id != found.metadata.id) =>
                {
                    report.invalid.push(InvalidPlugin {
                        binary: p.binary.display().to_string(),
                        reason: format!(
                            "the executable of {file} prints the id {:?}",
                            found.metadata.id
                        ),
                    })
                }
                Ok(found) => claims.push(Claim {
                    file,
                    found,
                    fresh: p.fresh,
                }),
                Err(reason) => report.invalid.push(InvalidPlugin {
                    binary: p.binary.display().to_string(),
                    reason,
                }),
            }
        }
        let bound = ctx.store.plugin_bindings().unwrap_or_else(|e| {
            log::error!("cannot read plugin bindings: {e}");
            BTreeMap::new()
        });
        let running: BTreeMap<String, Holder> = self
            .inner
            .plugins
            .borrow()
            .values()
            .map(|s| {
                let holder = Holder {
                    file: claim_name(&packages_root, &s.binary),
                    route: s.metadata.route.clone(),
                };
                (s.id.clone(), holder)
            })
            .collect();
        let resolution = discovery::resolve(claims, &bound, &running, crate::clock::now());
        for (file, reason) in resolution.refused {
            let binary = match file.strip_prefix(discovery::PACKAGE_CLAIM) {
                Some(_) => file,
                None => dir.join(file).display().to_string(),
            };
            report.invalid.push(InvalidPlugin { binary, reason });
        }
        report.invalid.sort_by(|a, b| a.binary.cmp(&b.binary));
        self.record_invalid(&report.invalid).await;

        for a in &resolution.accepted {
            if let Some(binding) = &a.bind {
                let id = &a.claim.found.metadata.id;
                match ctx.store.bind_plugin(id, Some(binding.clone()), None).await {
                    Ok(_) => log::info!("plugin id {id} bound to {}", binding.file),
                    // It still holds for this run: a running plugin counts as bound.
                    Err(e) => log::error!("cannot persist the binding of {id}: {e}"),
                }
            }
        }

        // Retire plugins whose claim is gone or refused, and those whose file prints other
        // metadata now (they start again below, keeping their log ring).
        let accepted: BTreeMap<&str, &Claim> = resolution
            .accepted
            .iter()
            .map(|a| (a.claim.found.metadata.id.as_str(), &a.claim))
            .collect();
        let current: Vec<Rc<Shared>> = self.inner.plugins.borrow().values().cloned().collect();
        let mut rings = BTreeMap::new();
        for s in current {
            let why = match accepted.get(s.id.as_str()) {
                None => "its binary is gone, or no longer claims it",
                Some(c) => {
                    let same = c.found.binary == s.binary
                        && c.found.metadata == s.metadata
                        && c.found.protocol == s.protocol;
                    if same {
                        if c.fresh {
                            log::info!(
                                "[{}] {} changed but prints the same metadata: the running process \
                                 stays, the new file runs from its next start",
                                s.id,
                                c.file
                            );
                        }
                        continue;
                    }
                    rings.insert(s.id.clone(), s.ring.clone());
                    "its binary was replaced"
                }
            };
            let (tx, rx) = oneshot::channel();
            if s.commands.send(Command::Retire(tx)).await.is_ok() {
                let _ = rx.await;
            }
            self.inner.plugins.borrow_mut().remove(&s.id);
            if self.inner.held.borrow().contains(&s.id) {
                self.inner
                    .held_rings
                    .borrow_mut()
                    .insert(s.id.clone(), s.ring.clone());
            }
            log::info!("[{}] retired: {why}", s.id);
            if rings.contains_key(&s.id) {
                report.replaced.push(s.id.clone());
            } else {
                report.removed.push(s.id.clone());
            }
        }

        // Start new ones (and the replaced ones again).
        let records = ctx.store.plugin_records().unwrap_or_else(|e| {
            log::error!("cannot read plugin states: {e}");
            BTreeMap::new()
        });
        let cfg = &ctx.config.supervisor;
        let timing = policy::Timing {
            backoff_base: cfg.backoff_base,
            healthy_after: cfg.healthy_after,
            shutdown_grace: cfg.shutdown_grace,
            term_grace: cfg.term_grace,
            lost_grace: policy::LOST_CONNECTION_GRACE,
        };
        for a in resolution.accepted {
            let d = a.claim.found;
            let id = d.metadata.id.clone();
            if self.inner.plugins.borrow().contains_key(&id) {
                continue;
            }
            // Checked with no await before the insert: `shutdown` retires every plugin inserted
            // before it set the flag, and none is inserted after.
            if self.stopping() {
                break;
            }
            let rec = records.get(&id);
            let enabled = rec.is_none_or(|r| r.enabled);
            let (tx, rx) = mpsc::channel(8);
            let last_event = ctx
                .store
                .events(Some(&id), 1)
                .ok()
                .and_then(|mut v| v.pop());
            let replaced = rings.remove(&id);
            let kept = self.inner.held_rings.borrow_mut().remove(&id);
            let ring = replaced.clone().or(kept).unwrap_or_else(|| {
                Rc::new(LogRing::new(
                    &id,
                    ctx.config.log_ring_lines,
                    ctx.config.log_lines_per_sec,
                ))
            });
            let shared = Rc::new(Shared {
                id: id.clone(),
                protocol: d.protocol,
                binary: d.binary.clone(),
                socket: isolation::socket_path(&ctx.config.runtime_dir, &id),
                policy: RefCell::new(policy::Policy::new(
                    timing,
                    enabled,
                    rec.and_then(|r| r.auto_disabled.clone()),
                )),
                pid: Cell::new(None),
                ready_since: Cell::new(None),
                link: RefCell::new(None),
                ring,
                last_event: RefCell::new(last_event),
                commands: tx,
                security: RefCell::new(None),
                report: RefCell::new(None),
                is_package: claim_name(&packages_root, &d.binary)
                    .starts_with(discovery::PACKAGE_CLAIM),
                licence: RefCell::new(None),
                metadata: d.metadata,
            });
            self.inner
                .plugins
                .borrow_mut()
                .insert(id.clone(), shared.clone());
            if replaced.is_none() {
                report.added.push(id.clone());
            }
            log::info!(
                "{} plugin {id} ({}, version {}, protocol {}){}",
                if replaced.is_some() {
                    "replaced"
                } else {
                    "found"
                },
                d.binary.display(),
                shared.metadata.version,
                d.protocol.as_str(),
                if enabled { "" } else { ", disabled" }
            );
            tokio::task::spawn_local(plugin::run(shared, ctx.clone(), rx));
        }
        ctx.changed.notify_waiters();
        report
    }

    /// Log and store a `metadata-invalid` event for each skipped binary, once per distinct reason;
    /// remember the list for [`Supervisor::invalid`].
    async fn record_invalid(&self, invalid: &[InvalidPlugin]) {
        let previous: Vec<InvalidPlugin> = self.inner.invalid.borrow().clone();
        for inv in invalid {
            let already = previous
                .iter()
                .any(|p| p.binary == inv.binary && p.reason == inv.reason);
            if already {
                continue;
            }
            log::error!("skipping plugin {}: {}", inv.binary, inv.reason);
            let ev = NewEvent {
                kind: EventKind::MetadataInvalid,
                message: inv.reason.clone(),
                details: json!({ "binary": inv.binary }),
            };
            let name = match inv.binary.strip_prefix(discovery::PACKAGE_CLAIM) {
                Some(id) => id.to_owned(),
                None => file_name(Path::new(&inv.binary)),
            };
            if let Err(e) = self.inner.ctx.store.record_event(&name, ev).await {
                log::error!("cannot store event: {e}");
            }
        }
        *self.inner.invalid.borrow_mut() = invalid.to_vec();
    }

    /// Wait until no plugin is `Starting` (each start settles: ready, backoff or disabled), or
    /// until `limit` passes.
    pub async fn settle(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.inner.ctx.changed.clone();
            let notified = changed.notified();
            let starting = self.inner.plugins.borrow().values().any(|s| {
                let state = s.policy.borrow().state();
                // A new plugin task may not have run yet: enabled and Stopped means "about to start".
                state == PluginState::Starting
                    || (state == PluginState::Stopped && s.policy.borrow().enabled())
            });
            if !starting {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Stop every plugin (shutdown → SIGTERM → SIGKILL) and wait until all are gone. A scan still
    /// probing is cancelled (its `--metadata` runs are killed), and no scan starts a plugin from
    /// now on.
    pub async fn shutdown(&self) {
        self.inner.stopping.send_replace(true);
        let all: Vec<Rc<Shared>> = self.inner.plugins.borrow().values().cloned().collect();
        let mut waits = Vec::new();
        for s in all {
            let (tx, rx) = oneshot::channel();
            if s.commands.send(Command::Retire(tx)).await.is_ok() {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.await;
        }
    }

    /// Notified (`notify_waiters`) whenever a plugin changes state or a scan changed the set of
    /// plugins: wait on it to follow [`Supervisor::plugins`] without polling (create the
    /// `Notified` before reading the states).
    pub(crate) fn changes(&self) -> Rc<Notify> {
        self.inner.ctx.changed.clone()
    }

    /// Where 1.1 plugins' `mqtt` requests go from now on (plugins started earlier keep answering
    /// that the bridge is off). `run` calls it before any plugin starts.
    pub(crate) fn set_mqtt(&self, port: Rc<dyn mqtt_port::PluginMqtt>) {
        *self.inner.ctx.mqtt.borrow_mut() = Some(port);
    }

    /// Hand `message` to plugin `id` if it runs and speaks 1.1, without waiting: `false` when it
    /// could not be (no such plugin, not connected, its queue full).
    pub(crate) fn deliver_mqtt(
        &self,
        id: &str,
        message: toru_plugin_api::protocol::MqttDelivery,
    ) -> bool {
        let Some(shared) = self.shared(id) else {
            return false;
        };
        let link = shared.link.borrow().clone();
        link.is_some_and(|l| {
            l.try_notify(toru_plugin_api::protocol::HostMessage::MqttMessage(message))
        })
    }

    /// A one-line summary for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let plugins = self.inner.plugins.borrow();
        let ready = plugins
            .values()
            .filter(|s| s.policy.borrow().state() == PluginState::Ready)
            .count();
        let disabled = plugins
            .values()
            .filter(|s| s.policy.borrow().state() == PluginState::Disabled)
            .count();
        format!(
            "{} plugins: {ready} ready, {disabled} disabled, {} other",
            plugins.len(),
            plugins.len() - ready - disabled
        )
    }

    /// Forward an HTTP request to a ready plugin and wait for its reply (deadline from config).
    /// The reply is checked (status 200–599, body decoded); a broken one is
    /// [`ForwardError::BadReply`].
    pub async fn forward_http(
        &self,
        id: &str,
        req: HttpRequest,
    ) -> Result<PluginReply, ForwardError> {
        let shared = self
            .shared(id)
            .ok_or_else(|| ForwardError::NotFound(id.into()))?;
        if !shared.policy.borrow().enabled() {
            return Err(ForwardError::Disabled(id.into()));
        }
        let state = shared.policy.borrow().state();
        if state != PluginState::Ready {
            return Err(ForwardError::Unavailable {
                id: id.into(),
                reason: format!(
                    "it is {}",
                    serde_json::to_value(state).map_or_else(
                        |_| "not ready".into(),
                        |v| v.as_str().unwrap_or("not ready").to_string()
                    )
                ),
            });
        }
        let link = shared
            .link
            .borrow()
            .clone()
            .ok_or_else(|| ForwardError::Unavailable {
                id: id.into(),
                reason: "not connected".into(),
            })?;
        link.request(req, self.inner.ctx.config.http.plugin_timeout)
            .await
    }

    /// A page of a plugin's log (page 1 = newest), optionally only lines at `level` or more severe.
    pub fn logs(
        &self,
        id: &str,
        page: usize,
        page_size: usize,
        level: Option<LogLevel>,
    ) -> Option<LogPage> {
        self.shared(id).map(|s| s.ring.page(page, page_size, level))
    }

    /// Lines with `seq > after`, waiting until at least one arrives (for live follow: long-poll or
    /// SSE). Returns `None` for an unknown plugin.
    pub async fn follow_logs(&self, id: &str, after: u64) -> Option<Vec<LogLine>> {
        let shared = self.shared(id)?;
        loop {
            let notified = shared.ring.notify.notified();
            let lines = shared.ring.since(after);
            if !lines.is_empty() {
                return Some(lines);
            }
            notified.await;
        }
    }
}

/// Why a plugin failed its probation: `what`, its last event, and its last stderr lines.
fn failure(s: &Shared, what: &str, log_mark: u64) -> String {
    let mut out = what.to_owned();
    if let Some(ev) = s.last_event.borrow().as_ref()
        && matches!(ev.kind, EventKind::Crashed | EventKind::Hung)
    {
        out.push_str(&format!(" ({})", ev.message));
    }
    let tail = s.ring.stderr_tail_after(5, log_mark);
    if !tail.is_empty() {
        out.push_str("; last stderr: ");
        out.push_str(&tail.join(" | "));
    }
    out
}

/// The folder of version `version` of package `id` under the packages dir.
pub(crate) fn package_dir(packages_dir: &Path, id: &str, version: &str) -> PathBuf {
    packages_dir.join(id).join(version)
}

/// Release `id` from the file it is bound to, in the store alone (the daemon's
/// [`Supervisor::unbind`] checks first that no plugin runs from that file; with the daemon stopped,
/// `toru plugins unbind` calls this directly). Records an `unbound` event.
pub(crate) async fn unbind_stored(
    store: &Store,
    id: &str,
) -> Result<PluginBinding, SupervisorError> {
    let Some(binding) = store.plugin_bindings()?.remove(id) else {
        return Err(SupervisorError::NotBound(id.into()));
    };
    let ev = NewEvent {
        kind: EventKind::Unbound,
        message: format!(
            "no longer bound to {}: the next scan gives the id to the file that claims it",
            binding.file
        ),
        details: json!({ "file": binding.file }),
    };
    store.bind_plugin(id, None, Some(ev)).await?;
    Ok(binding)
}
