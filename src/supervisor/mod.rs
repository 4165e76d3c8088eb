//! The supervisor: discovers plugins, starts them, watches them, restarts them, stops them.
//!
//! - [`policy`]: the per-plugin lifecycle policy, a state machine without I/O: restarts and
//!   backoff, the stop escalation (shutdown → SIGTERM → SIGKILL), the lost-connection grace, and
//!   the persisted flags (enabled, auto-disabled). It owns every timer; unit-tested with paused
//!   time and no processes.
//! - [`plugin`]: one local task per plugin that owns its process, feeds the policy what happens
//!   and performs its actions.
//! - [`process`]: spawning (clean environment, own process group, death signal) and `--metadata`.
//! - [`descendants`]: every descendant of a plugin stopped with it and leftovers of a previous run
//!   killed at start, by a cgroup per plugin ([`cgroup`]) or the host as child subreaper
//!   ([`subreaper`], reading [`procfs`]).
//! - `link`: [`PluginReply`] and the plugin link, which hides 1.0 (a connection per message) vs
//!   1.1 behind init, request, shutdown and watch; the only place the two are told apart.
//! - [`conn`]: the 1.1 persistent connection on the shared multiplexer; plugin KV served here.
//! - [`logs`]: the bounded per-plugin log ring.
//!
//! [`Supervisor`] is the handle the HTTP layer and `main` use. Everything runs on the runtime thread.

mod cgroup;
pub(crate) mod conn;
pub(crate) mod descendants;
mod link;
pub(crate) mod logs;
pub(crate) mod plugin;
pub(crate) mod policy;
pub(crate) mod process;
mod procfs;
mod subreaper;
pub(crate) mod view;
pub(crate) mod watch;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;

use serde_json::json;
use tokio::sync::{Notify, mpsc, oneshot};
use toru_plugin_api::{HttpRequest, LogLevel};

use crate::config::Config;
use crate::store::{EventKind, NewEvent, Store};
use logs::LogRing;
use plugin::{Command, Ctx, Shared};

pub use link::PluginReply;
pub use view::{
    ForwardError, InvalidPlugin, LogLine, LogPage, PluginState, PluginView, RescanReport,
    SupervisorError,
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
    shutting_down: Cell<bool>,
    scanning: tokio::sync::Mutex<()>,
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
                    config,
                    store,
                    instance_id,
                    changed: Rc::new(Notify::new()),
                    descendants,
                }),
                plugins: RefCell::new(BTreeMap::new()),
                invalid: RefCell::new(Vec::new()),
                shutting_down: Cell::new(false),
                scanning: tokio::sync::Mutex::new(()),
            }),
        }
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
        if self.inner.shutting_down.get() {
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

    /// Stop and start a plugin again (not counted as a failure).
    pub async fn restart(&self, id: &str) -> Result<PluginView, SupervisorError> {
        self.send(id, Command::Restart).await
    }

    /// Look for new and removed binaries: starts new enabled plugins, retires removed ones, leaves
    /// the others running untouched.
    pub async fn rescan(&self) -> RescanReport {
        let _scan = self.inner.scanning.lock().await;
        let ctx = self.inner.ctx.clone();
        let dir = &ctx.config.plugins_dir;
        if let Err(e) = std::fs::create_dir_all(dir) {
            log::error!("cannot create plugins dir {}: {e}", dir.display());
        }
        let binaries = match process::list_binaries(dir) {
            Ok(b) => b,
            Err(e) => {
                log::error!("cannot read plugins dir {}: {e}", dir.display());
                Vec::new()
            }
        };
        let mut report = RescanReport::default();
        let mut seen_ids = BTreeSet::new();
        let mut seen_routes = BTreeSet::new();
        let mut found = Vec::new();
        // Binaries of plugins already running keep their metadata: no need to run them again.
        let known: BTreeMap<std::path::PathBuf, Rc<Shared>> = self
            .inner
            .plugins
            .borrow()
            .values()
            .map(|s| (s.binary.clone(), s.clone()))
            .collect();
        for binary in binaries {
            let result = match known.get(&binary) {
                Some(s) => Ok(process::Discovered {
                    binary: binary.clone(),
                    metadata: s.metadata.clone(),
                    protocol: s.protocol,
                }),
                None => {
                    process::read_metadata(&binary, ctx.config.supervisor.metadata_timeout).await
                }
            };
            let result = result.and_then(|d| {
                if seen_ids.contains(&d.metadata.id) {
                    Err(format!("duplicate plugin id {:?}", d.metadata.id))
                } else if seen_routes.contains(&d.metadata.route) {
                    Err(format!("duplicate route {:?}", d.metadata.route))
                } else {
                    Ok(d)
                }
            });
            match result {
                Ok(d) => {
                    seen_ids.insert(d.metadata.id.clone());
                    seen_routes.insert(d.metadata.route.clone());
                    found.push(d);
                }
                Err(reason) => report.invalid.push(InvalidPlugin {
                    binary: binary.display().to_string(),
                    reason,
                }),
            }
        }
        // Record newly invalid binaries (once per distinct reason).
        let previous: Vec<InvalidPlugin> = self.inner.invalid.borrow().clone();
        for inv in &report.invalid {
            let already = previous
                .iter()
                .any(|p| p.binary == inv.binary && p.reason == inv.reason);
            if !already {
                log::error!("skipping plugin {}: {}", inv.binary, inv.reason);
                let name = Path::new(&inv.binary)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let ev = NewEvent {
                    kind: EventKind::MetadataInvalid,
                    message: inv.reason.clone(),
                    details: json!({ "binary": inv.binary }),
                };
                if let Err(e) = ctx.store.record_event(&name, ev).await {
                    log::error!("cannot store event: {e}");
                }
            }
        }
        *self.inner.invalid.borrow_mut() = report.invalid.clone();

        // Retire plugins whose binary is gone.
        let removed: Vec<Rc<Shared>> = self
            .inner
            .plugins
            .borrow()
            .values()
            .filter(|s| !found.iter().any(|d| d.metadata.id == s.id))
            .cloned()
            .collect();
        for s in removed {
            report.removed.push(s.id.clone());
            let (tx, rx) = oneshot::channel();
            if s.commands.send(Command::Retire(tx)).await.is_ok() {
                let _ = rx.await;
            }
            self.inner.plugins.borrow_mut().remove(&s.id);
            log::info!("[{}] retired: its binary is gone", s.id);
        }

        // Start new ones.
        let records = ctx.store.plugin_records().unwrap_or_else(|e| {
            log::error!("cannot read plugin states: {e}");
            BTreeMap::new()
        });
        let sockets = ctx.config.runtime_dir.join("plugins");
        let cfg = &ctx.config.supervisor;
        let timing = policy::Timing {
            backoff_base: cfg.backoff_base,
            healthy_after: cfg.healthy_after,
            shutdown_grace: cfg.shutdown_grace,
            term_grace: cfg.term_grace,
            lost_grace: policy::LOST_CONNECTION_GRACE,
        };
        for d in found {
            if self.inner.plugins.borrow().contains_key(&d.metadata.id) {
                continue;
            }
            let id = d.metadata.id.clone();
            let rec = records.get(&id);
            let enabled = rec.is_none_or(|r| r.enabled);
            let (tx, rx) = mpsc::channel(8);
            let last_event = ctx
                .store
                .events(Some(&id), 1)
                .ok()
                .and_then(|mut v| v.pop());
            let shared = Rc::new(Shared {
                id: id.clone(),
                protocol: d.protocol,
                binary: d.binary.clone(),
                socket: sockets.join(format!("{id}.sock")),
                policy: RefCell::new(policy::Policy::new(
                    timing,
                    enabled,
                    rec.and_then(|r| r.auto_disabled.clone()),
                )),
                pid: Cell::new(None),
                ready_since: Cell::new(None),
                link: RefCell::new(None),
                ring: Rc::new(LogRing::new(
                    &id,
                    ctx.config.log_ring_lines,
                    ctx.config.log_lines_per_sec,
                )),
                last_event: RefCell::new(last_event),
                commands: tx,
                metadata: d.metadata,
            });
            self.inner
                .plugins
                .borrow_mut()
                .insert(id.clone(), shared.clone());
            report.added.push(id.clone());
            log::info!(
                "found plugin {id} ({}, protocol {}){}",
                d.binary.display(),
                d.protocol.as_str(),
                if enabled { "" } else { ", disabled" }
            );
            tokio::task::spawn_local(plugin::run(shared, ctx.clone(), rx));
        }
        ctx.changed.notify_waiters();
        report
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

    /// Stop every plugin (shutdown → SIGTERM → SIGKILL) and wait until all are gone.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.set(true);
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
