//! The glue for one plugin: a local task that owns the process, feeds the [`Policy`] with what
//! happens (exit, ready, hang, lost connection, commands, the policy's own deadline) and performs
//! the actions it returns (spawn, shutdown message, signals, events, persisted state). Decisions
//! and timers are the policy's; this file does the I/O.
//!
//! Work happens only when something arrives: the child's exit (tokio reaps on SIGCHLD, no polling),
//! a frame, a command, or the policy's deadline. The only wait that retries is the connect to a
//! freshly spawned plugin's socket, bounded by the socket timeout.
//!
//! The process's descendants are `Ctx::descendants`' business: told of each spawn, asked to
//! signal the whole plugin, and, once the process has exited, to kill and await the rest before the
//! exit is fed to the policy. The plugin's socket is removed at each exit.
//!
//! Safe mode (`crate::safe_mode`) reaches a plugin through the [`Ctx`]: its [`HoldRule`] is asked
//! before every spawn (a held plugin is not spawned), and while it tracks runs the store's run
//! record lists the plugin from before its spawn (that write is durable before the process
//! exists) until its process is gone, through the journal so the changes keep their order.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;

use chrono::Utc;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use toru_plugin_api::LogLevel;
use toru_plugin_api::protocol::{Init, PluginMetadata, ProtocolVersion, empty_config};

use super::conn::ConnError;
use super::descendants::Descendants;
use super::isolation::Security;
use super::link::{PluginLink, Watch};
use super::logs::{LogRing, MAX_LINE_BYTES, guess_level};
use super::policy::{Action, Exit, Input, Policy, Signal};
use super::process;
use super::view::{LogStream, PluginState};
use crate::config::Config;
use crate::license::gate::{self, Verdict};
use crate::store::{Event, EventKind, NewEvent, PluginRecord, RunChange, Store};

/// A command from the rest of the host.
#[derive(Debug)]
pub enum Command {
    /// Enable and start.
    Enable(oneshot::Sender<()>),
    /// Stop and disable.
    Disable(oneshot::Sender<()>),
    /// Stop and start.
    Restart(oneshot::Sender<()>),
    /// Stop for good (host shutdown, binary removed); acknowledged once the process is gone.
    Retire(oneshot::Sender<()>),
    /// Check its licence again (installed, removed, maybe expired).
    Licence(oneshot::Sender<()>),
    /// Safe mode was left: start it if it is held.
    Release(oneshot::Sender<()>),
}

/// Which plugins safe mode holds: `crate::safe_mode` decides, the plugin task asks before every
/// spawn (`true`: hold this id, do not spawn it).
#[derive(Clone)]
pub struct HoldRule(Rc<dyn Fn(&str) -> bool>);

impl HoldRule {
    /// A rule answering with `holds`.
    pub fn new(holds: impl Fn(&str) -> bool + 'static) -> HoldRule {
        HoldRule(Rc::new(holds))
    }

    /// Whether plugin `id` is held now.
    pub fn holds(&self, id: &str) -> bool {
        (self.0)(id)
    }
}

impl std::fmt::Debug for HoldRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HoldRule")
    }
}

/// What the supervisor and the HTTP layer may read of a plugin.
#[derive(Debug)]
pub struct Shared {
    /// Metadata id.
    pub id: String,
    /// Metadata as printed.
    pub metadata: PluginMetadata,
    /// Protocol it is driven with.
    pub protocol: ProtocolVersion,
    /// The executable.
    pub binary: PathBuf,
    /// The socket path.
    pub socket: PathBuf,
    /// Lifecycle policy, owner of the state and the persisted flags (enabled, auto-disabled);
    /// written only by the plugin task.
    pub policy: RefCell<Policy>,
    /// Current process id.
    pub pid: Cell<Option<u32>>,
    /// When the current process became ready (wall clock).
    pub ready_since: Cell<Option<chrono::DateTime<Utc>>>,
    /// The link to the current process (from spawn until it is stopped, lost or gone).
    pub(crate) link: RefCell<Option<Rc<PluginLink>>>,
    /// Its log.
    pub ring: Rc<LogRing>,
    /// The newest stored event.
    pub last_event: RefCell<Option<Event>>,
    /// Commands to the plugin task.
    pub commands: mpsc::Sender<Command>,
    /// Its confinement as worked out for its newest start.
    pub(crate) security: RefCell<Option<Security>>,
    /// What was in force at its newest start (`None`: never started by this host).
    pub(crate) report: RefCell<Option<crate::confine::Report>>,
    /// It runs from an installed package (only those can need a licence).
    pub(crate) is_package: bool,
    /// The licence claims its newest start was given in `init`.
    pub(crate) licence: RefCell<Option<crate::license::Claims>>,
}

/// Host-wide things every plugin task needs.
#[derive(Debug)]
pub struct Ctx {
    /// Configuration.
    pub config: Config,
    /// The store.
    pub store: Store,
    /// Instance id given to plugins.
    pub instance_id: String,
    /// Woken on every plugin state change (READY settling, STATUS lines).
    pub changed: Rc<Notify>,
    /// Finds and stops every descendant of a plugin.
    pub(crate) descendants: Rc<Descendants>,
    /// Works out each plugin's confinement.
    pub(crate) isolation: super::isolation::HostIsolation,
    /// Safe mode's rule, asked before every spawn (`None`: nothing is held).
    pub hold: RefCell<Option<HoldRule>>,
    /// Keep the run record's list of starting and running plugins (safe mode is on).
    pub track_runs: Cell<bool>,
    /// Where 1.1 plugins' `mqtt` requests go (`None`: the bridge is off).
    pub(crate) mqtt: RefCell<Option<Rc<dyn super::mqtt_port::PluginMqtt>>>,
}

impl Ctx {
    /// Whether safe mode holds plugin `id` now.
    fn held(&self, id: &str) -> bool {
        self.hold.borrow().as_ref().is_some_and(|r| r.holds(id))
    }
}

/// Events from helper tasks of one process generation.
#[derive(Debug)]
enum ProcEvent {
    Ready,
    /// Its cgroup recorded an OOM kill or a refused fork.
    LimitHit(super::descendants::LimitHit),
    StartFailed(String),
    Hung(u32),
    ConnLost(String),
}

/// A write to the store, done in order by the plugin's journal task.
enum Job {
    Event(NewEvent, chrono::DateTime<Utc>),
    Persist(PluginRecord, NewEvent, oneshot::Sender<()>),
    /// A change of its place in the run record; answered once durable when a sender is given.
    Run(RunChange, Option<oneshot::Sender<()>>),
}

/// Write a plugin's events and state changes in the order they happened, without making the
/// restart path wait for each commit (only persisted state changes are awaited, by their caller).
/// Jobs queued together are submitted together, in order, so they share one group commit.
async fn journal(shared: Rc<Shared>, store: Store, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = jobs.try_recv() {
            batch.push(more);
        }
        // Local tasks first run in spawn order, so the writes reach the store in this order.
        let handles: Vec<_> = batch
            .into_iter()
            .map(|job| tokio::task::spawn_local(write_job(shared.clone(), store.clone(), job)))
            .collect();
        for h in handles {
            let _ = h.await;
        }
    }
}

async fn write_job(shared: Rc<Shared>, store: Store, job: Job) {
    match job {
        Job::Event(ev, at) => match store.record_event_at(&shared.id, ev, at).await {
            Ok(stored) => {
                let mut last = shared.last_event.borrow_mut();
                if last
                    .as_ref()
                    .is_some_and(|l| l.kind == stored.kind && l.message == stored.message)
                {
                    *last = Some(stored);
                }
            }
            Err(e) => log::error!("[{}] cannot store event: {e}", shared.id),
        },
        Job::Persist(rec, ev, done) => {
            if let Err(e) = store.set_plugin(&shared.id, rec, Some(ev)).await {
                log::error!("[{}] cannot save enabled state: {e}", shared.id);
            }
            let _ = done.send(());
        }
        Job::Run(change, done) => {
            if let Err(e) = store.run_plugin(&shared.id, change).await {
                log::warn!("[{}] cannot update the run record: {e}", shared.id);
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
    }
}

struct Task {
    shared: Rc<Shared>,
    ctx: Rc<Ctx>,
    journal: mpsc::UnboundedSender<Job>,
    child: Option<Child>,
    generation: u64,
    events: mpsc::UnboundedSender<(u64, ProcEvent)>,
    spawned_at: Option<Instant>,
    retire_acks: Vec<oneshot::Sender<()>>,
    retired: bool,
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn wait_child(child: &mut Option<Child>) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// Run one plugin until it is retired.
pub async fn run(shared: Rc<Shared>, ctx: Rc<Ctx>, mut commands: mpsc::Receiver<Command>) {
    let (events, mut events_rx) = mpsc::unbounded_channel();
    let (jobs, jobs_rx) = mpsc::unbounded_channel();
    let journal_task =
        tokio::task::spawn_local(journal(shared.clone(), ctx.store.clone(), jobs_rx));
    let mut t = Task {
        shared,
        ctx,
        journal: jobs,
        child: None,
        generation: 0,
        events,
        spawned_at: None,
        retire_acks: Vec::new(),
        retired: false,
    };
    t.apply(Input::Loaded).await;
    loop {
        let deadline = t.deadline();
        tokio::select! {
            Some(cmd) = commands.recv() => t.command(cmd).await,
            status = wait_child(&mut t.child) => t.exited(status).await,
            Some((generation, ev)) = events_rx.recv() => {
                if generation == t.generation {
                    t.proc_event(ev).await;
                }
            }
            _ = sleep_opt(deadline) => t.apply(Input::Tick).await,
        }
        if t.retired && t.child.is_none() {
            break;
        }
    }
    // Every event is stored before the retirement is acknowledged (the host closes the store next).
    let acks = std::mem::take(&mut t.retire_acks);
    drop(t);
    let _ = journal_task.await;
    for ack in acks {
        let _ = ack.send(());
    }
}

impl Task {
    fn id(&self) -> &str {
        &self.shared.id
    }

    fn host_log(&self, level: LogLevel, msg: &str) {
        self.shared.ring.push(LogStream::Host, level, msg);
    }

    fn deadline(&self) -> Option<Instant> {
        self.shared.policy.borrow().deadline()
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Enable(ack) => {
                self.apply(Input::Enable).await;
                let _ = ack.send(());
            }
            Command::Disable(ack) => {
                self.apply(Input::Disable).await;
                let _ = ack.send(());
            }
            Command::Restart(ack) => {
                self.apply(Input::Restart).await;
                let _ = ack.send(());
            }
            Command::Retire(ack) => {
                self.retired = true;
                self.retire_acks.push(ack);
                self.apply(Input::Retire).await;
            }
            Command::Licence(ack) => {
                self.licence_check().await;
                let _ = ack.send(());
            }
            Command::Release(ack) => {
                if !self.retired {
                    self.apply(Input::Released).await;
                }
                let _ = ack.send(());
            }
        }
    }

    /// Tell the run record (while safe mode tracks runs) that this plugin is starting, ready or
    /// gone, in order with its other store writes; `wait` returns once the change is durable.
    async fn track(&self, change: RunChange, wait: bool) {
        if !self.ctx.track_runs.get() {
            return;
        }
        let (done, durable) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        if self.journal.send(Job::Run(change, done)).is_ok()
            && let Some(durable) = durable
        {
            let _ = durable.await;
        }
    }

    /// Judge its licence now and tell the policy: no valid one stops it (or keeps it waiting);
    /// a valid one starts one that waits; a running process started with other claims restarts,
    /// so its `init` carries the licence in force.
    async fn licence_check(&mut self) {
        if self.retired {
            return;
        }
        let verdict = gate::check(&self.ctx.store, &self.shared.id, self.shared.is_package);
        if let Verdict::Needed(r) = verdict {
            let reason = r.to_string();
            let state = self.shared.policy.borrow().state();
            if matches!(
                state,
                PluginState::Starting | PluginState::Ready | PluginState::Hung
            ) {
                self.host_log(LogLevel::Warn, &format!("stopping: {reason}"));
            }
            let code = r.code().to_owned();
            self.apply(Input::LicenceRevoked { code, reason }).await;
            return;
        }
        let changed = self.shared.licence.borrow().as_ref() != verdict.claims();
        if self.child.is_some() && changed {
            self.host_log(LogLevel::Info, "restarting with its new licence");
            self.apply(Input::Restart).await;
        } else {
            self.apply(Input::LicenceValid).await;
        }
    }

    /// Feed the policy and perform what it returns (a failed spawn feeds it again).
    async fn apply(&mut self, input: Input) {
        let mut queue = vec![input];
        while let Some(input) = queue.pop() {
            let before = self.shared.policy.borrow().state();
            let actions = self
                .shared
                .policy
                .borrow_mut()
                .handle(input, Instant::now());
            for action in actions {
                if let Some(next) = self.perform(action).await {
                    queue.push(next);
                }
            }
            if self.shared.policy.borrow().state() != before {
                self.ctx.changed.notify_waiters();
            }
        }
    }

    async fn perform(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::Spawn => {
                if self.retired {
                    return None;
                }
                // Safe mode first: a held plugin is not even judged for its licence.
                if self.ctx.held(&self.shared.id) {
                    self.host_log(
                        LogLevel::Warn,
                        "held: the host runs in safe mode (leave it to start this plugin)",
                    );
                    return Some(Input::Held);
                }
                // The gate: a package that needs a licence starts only with a valid one.
                let verdict = gate::check(&self.ctx.store, &self.shared.id, self.shared.is_package);
                if let Verdict::Needed(r) = &verdict {
                    let reason = r.to_string();
                    self.host_log(LogLevel::Warn, &format!("not started: {reason}"));
                    return Some(Input::LicenceMissing {
                        code: r.code().to_owned(),
                        reason,
                    });
                }
                *self.shared.licence.borrow_mut() = verdict.claims().cloned();
                // Named in the run record before the process exists: a host that dies during
                // this start names this plugin.
                self.track(RunChange::Starting, true).await;
                match self.spawn().await {
                    Ok(()) => None,
                    Err(reason) => {
                        self.track(RunChange::Gone, false).await;
                        Some(Input::Failed { reason })
                    }
                }
            }
            Action::SendShutdown => {
                if self.child.is_none() {
                    return Some(Input::Exited(Exit {
                        description: "not running".into(),
                        ..Exit::default()
                    }));
                }
                self.send_shutdown();
                None
            }
            Action::Signal { signal, note } => {
                if let Some(note) = note {
                    self.host_log(LogLevel::Warn, note);
                }
                if let Some(pid) = self.shared.pid.get() {
                    let sig = match signal {
                        Signal::Term => libc::SIGTERM,
                        Signal::Kill => libc::SIGKILL,
                    };
                    self.ctx.descendants.signal(&self.shared.id, pid, sig);
                }
                None
            }
            Action::Persist {
                enabled,
                auto_disabled,
            } => {
                let (kind, message) = match (enabled, &auto_disabled) {
                    (true, _) => (EventKind::Enabled, "enabled".to_string()),
                    (false, Some(why)) => (EventKind::Disabled, why.clone()),
                    (false, None) => (EventKind::Disabled, "disabled by a user".to_string()),
                };
                let event = NewEvent {
                    kind,
                    message,
                    details: json!({ "automatic": auto_disabled.is_some() }),
                };
                let rec = PluginRecord {
                    enabled,
                    auto_disabled,
                };
                let (done, wait) = oneshot::channel();
                if self
                    .journal
                    .send(Job::Persist(rec, event.clone(), done))
                    .is_ok()
                {
                    let _ = wait.await;
                }
                self.remember_event(event);
                None
            }
            Action::Record {
                kind,
                message,
                details,
            } => {
                self.record(kind, message, details);
                None
            }
        }
    }

    fn remember_event(&self, ev: NewEvent) {
        *self.shared.last_event.borrow_mut() = Some(Event {
            seq: 0,
            plugin: self.id().to_string(),
            at: crate::clock::now(),
            kind: ev.kind,
            message: ev.message,
            details: ev.details,
        });
    }

    /// Record an event without waiting for its commit: the restart path must not wait on fsync.
    /// The journal task writes events in order; the view's `last_event` is updated at once.
    fn record(&self, kind: EventKind, message: String, details: serde_json::Value) {
        let level = match kind {
            EventKind::Crashed | EventKind::Hung | EventKind::Disabled => log::Level::Warn,
            _ => log::Level::Info,
        };
        log::log!(level, "[{}] {kind}: {message}", self.id());
        let ev = NewEvent {
            kind,
            message,
            details,
        };
        self.remember_event(ev.clone());
        let _ = self.journal.send(Job::Event(ev, crate::clock::now()));
    }

    /// The plugin's cgroup refused it memory (the kernel's OOM killer killed it) or a process:
    /// recorded with the figures; a refused fork stops the plugin (SIGKILL to all of it), and
    /// either way its exit is a crash for the policy.
    async fn limit_hit(&mut self, hit: super::descendants::LimitHit) {
        use super::descendants::LimitHit;
        use crate::limits::human_bytes;
        let pid = self.shared.pid.get().unwrap_or(0);
        match hit {
            LimitHit::Oom {
                limit_bytes,
                peak_bytes,
                kills,
            } => {
                let limit = limit_bytes.map_or("its".into(), human_bytes);
                let peak =
                    peak_bytes.map_or(String::new(), |p| format!(" (peak {})", human_bytes(p)));
                let message = format!("out of memory: killed at its {limit} limit{peak}");
                self.host_log(LogLevel::Error, &message);
                self.record(
                    EventKind::Oom,
                    message,
                    json!({"limit_bytes": limit_bytes, "peak_bytes": peak_bytes, "kills": kills}),
                );
            }
            LimitHit::Pids { limit, peak } => {
                let message = format!("process limit reached: {limit} processes; stopped");
                self.host_log(LogLevel::Error, &message);
                self.record(
                    EventKind::Limit,
                    message,
                    json!({"limit": "processes", "value": limit, "peak": peak}),
                );
            }
        }
        // The OOM killer took the whole cgroup already (memory.oom.group); a fork refusal did
        // not: stop it all now. The exit that follows is fed to the policy as a crash.
        if pid != 0 {
            self.ctx
                .descendants
                .signal(&self.shared.id, pid, libc::SIGKILL);
        }
    }

    /// Say in the plugin's log which protections this start lacks, the first time and whenever
    /// that changes.
    fn log_degraded(&self, report: &crate::confine::Report) {
        let missing = report.missing();
        let said = self
            .shared
            .report
            .borrow()
            .as_ref()
            .map(crate::confine::Report::missing);
        if !missing.is_empty() && said.as_ref() != Some(&missing) {
            self.host_log(
                LogLevel::Warn,
                &format!("protection missing: {}", missing.join("; ")),
            );
        }
    }

    async fn spawn(&mut self) -> Result<(), String> {
        self.generation += 1;
        let generation = self.generation;
        let socket = self.shared.socket.clone();
        let isolation = &self.ctx.isolation;
        let sec = isolation
            .resolve(&self.ctx.store, &self.shared.id, &self.shared.binary)
            .await?;
        isolation
            .prepare_dirs(&sec)
            .map_err(|e| format!("cannot prepare the plugin's folders: {e}"))?;
        process::remove_socket(&socket);
        let cgroup = self
            .ctx
            .descendants
            .prepare_spawn(&self.shared.id, &isolation.cgroup_limits(&sec))
            .await
            .map_err(|e| format!("cannot prepare the plugin's cgroup: {e}"))?;
        // Watched from before the spawn (the cgroup is new for each generation).
        let limit_watch = self.ctx.descendants.limit_watch(&self.shared.id);
        // Watch for the socket before the plugin exists, so its bind cannot be missed.
        let watch = super::watch::SocketWatch::for_socket(&socket);
        let pids = self.ctx.descendants.limit_support().pids;
        let prepared = crate::confine::prepare(isolation.plan(&sec, pids));
        let report = prepared.report().clone();
        let env = [
            ("TORU_PLUGIN_DATA", sec.data_dir.as_os_str()),
            ("TMPDIR", sec.tmp_dir.as_os_str()),
        ];
        let mut child = process::spawn(
            &self.shared.binary,
            &socket,
            cgroup.as_deref(),
            &env,
            prepared,
        )
        .await
        .map_err(|e| format!("cannot start {}: {e}", self.shared.binary.display()))?;
        let pid = child.id().unwrap_or(0);
        self.log_degraded(&report);
        *self.shared.security.borrow_mut() = Some(sec);
        *self.shared.report.borrow_mut() = Some(report);
        self.shared.pid.set(Some(pid));
        self.ctx.descendants.started(&self.shared.id, pid, &socket);
        self.spawned_at = Some(Instant::now());
        if let Some(out) = child.stdout.take() {
            tokio::task::spawn_local(pipe_lines(out, LogStream::Stdout, self.shared.ring.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::task::spawn_local(pipe_lines(err, LogStream::Stderr, self.shared.ring.clone()));
        }
        self.child = Some(child);
        let link = Rc::new(PluginLink::new(
            self.shared.protocol,
            &self.shared.id,
            &socket,
            &self.ctx.store,
            &self.shared.ring,
            self.ctx.config.max_frame_len,
            self.ctx.mqtt.borrow().clone(),
        ));
        *self.shared.link.borrow_mut() = Some(link.clone());
        self.record(
            EventKind::Started,
            format!("started (pid {pid})"),
            json!({ "pid": pid }),
        );
        if let Some(mut watch) = limit_watch {
            let events = self.events.clone();
            tokio::task::spawn_local(async move {
                // Ends when the generation's events channel closes with the task, or at the
                // first hit: the plugin is stopped then, and the next start watches anew.
                tokio::select! {
                    hit = watch.next() => {
                        let _ = events.send((generation, ProcEvent::LimitHit(hit)));
                    }
                    () = events.closed() => {}
                }
            });
        }
        tokio::task::spawn_local(start_sequence(
            self.shared.clone(),
            self.ctx.clone(),
            link,
            generation,
            self.events.clone(),
            watch,
        ));
        Ok(())
    }

    async fn proc_event(&mut self, ev: ProcEvent) {
        match ev {
            ProcEvent::Ready => {
                self.ctx.descendants.observe();
                self.shared.ready_since.set(Some(crate::clock::now()));
                self.apply(Input::Ready).await;
                self.track(RunChange::Ready, false).await;
                let proto = self.shared.protocol.as_str();
                self.record(
                    EventKind::Ready,
                    format!("ready (protocol {proto})"),
                    json!({}),
                );
            }
            ProcEvent::LimitHit(hit) => self.limit_hit(hit).await,
            ProcEvent::StartFailed(reason) => {
                self.host_log(LogLevel::Error, &reason);
                self.apply(Input::StartFailed { reason }).await;
            }
            ProcEvent::Hung(missed) => self.apply(Input::Hung { missed }).await,
            ProcEvent::ConnLost(reason) => {
                // Requests fail fast from now on ("not connected"); a stop took the link already.
                *self.shared.link.borrow_mut() = None;
                self.apply(Input::ConnectionLost { reason }).await;
            }
        }
    }

    /// Deliver the shutdown message through the link (in its own task: the escalation runs on
    /// the policy's timers meanwhile). New requests no longer reach the link.
    fn send_shutdown(&mut self) {
        let pid = self.shared.pid.get().unwrap_or(0);
        let grace = self.ctx.config.supervisor.shutdown_grace;
        let link = self.shared.link.borrow_mut().take();
        let ring = self.shared.ring.clone();
        tokio::task::spawn_local(async move {
            let result = match link {
                Some(link) => link.shutdown(grace).await,
                None => Err(ConnError::Closed),
            };
            if let Err(e) = result {
                ring.push(
                    LogStream::Host,
                    LogLevel::Debug,
                    &format!("shutdown message not delivered ({e}); will signal pid {pid}"),
                );
            }
        });
    }

    async fn exited(&mut self, status: std::io::Result<std::process::ExitStatus>) {
        let pid = self.shared.pid.get().unwrap_or(0);
        self.child = None;
        self.generation += 1;
        self.shared.pid.set(None);
        self.shared.ready_since.set(None);
        *self.shared.link.borrow_mut() = None;
        let uptime_ms = self.spawned_at.take().map_or(0, |t| {
            u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
        });
        // Whatever the leader did, its group and every other descendant go too, before the exit
        // is reported: `stopped` means gone.
        let left = self
            .ctx
            .descendants
            .ended(&self.shared.id, pid, self.retired)
            .await;
        if left > 0 {
            // Its own misbehaviour: said in its log, not a host error.
            self.host_log(
                LogLevel::Warn,
                &format!("{left} process(es) it left behind were killed"),
            );
        }
        process::remove_socket(&self.shared.socket);
        self.track(RunChange::Gone, false).await;
        let (description, code, signal) = match &status {
            Ok(s) => process::describe_exit(s),
            Err(e) => (format!("wait failed: {e}"), None, None),
        };
        let exit = Exit {
            description,
            code,
            signal,
            uptime_ms,
            stderr_tail: self.shared.ring.stderr_tail(10),
        };
        self.apply(Input::Exited(exit)).await;
    }
}

/// What protects a plugin (resolved as `sec`), one entry per protection:
/// `{"name", "state": "enforced"|"degraded"|"off", "detail"}` (docs/API.md): as a start now
/// makes them (the kernel probed, the plan of `sec`), the cgroup from what the host's cgroup
/// offers.
pub(crate) fn protections(ctx: &Ctx, sec: &Security) -> serde_json::Value {
    use crate::confine::Protection;
    // What a start now applies: the same as the running process unless an admin changed its
    // limits or grants since (its restart may still be under way).
    let pids = ctx.descendants.limit_support().pids;
    let report = crate::confine::prepare(ctx.isolation.plan(sec, pids))
        .report()
        .clone();
    let entry = |name: &str, p: &Protection| {
        let (state, detail) = match p {
            Protection::Enforced(d) => ("enforced", d),
            Protection::Degraded(d) => ("degraded", d),
            Protection::Off(d) => ("off", d),
        };
        json!({"name": name, "state": state, "detail": detail})
    };
    let mut out = Vec::new();
    for (name, p) in report.entries() {
        let p = match (name, p) {
            // The reason isolation is off, in the host's words.
            ("user", Protection::Off(_)) => Protection::Off(
                sec.off
                    .clone()
                    .unwrap_or_else(|| super::isolation::NOT_ROOT.to_string()),
            ),
            _ => p.clone(),
        };
        out.push(entry(name, &p));
    }
    let support = ctx.descendants.limit_support();
    let l = &sec.limits;
    let mut set = Vec::new();
    let mut missing = Vec::new();
    for (on, what, figure) in [
        (
            support.memory,
            "memory",
            l.memory.map_or("max".into(), crate::limits::human_bytes),
        ),
        (
            support.pids,
            "pids",
            l.processes.map_or("max".into(), |n| n.to_string()),
        ),
        (
            support.cpu,
            "cpu",
            l.cpu.map_or("max".into(), |c| format!("{c} cores")),
        ),
    ] {
        if on {
            set.push(format!("{what} {figure}"));
        } else {
            missing.push(what);
        }
    }
    let cgroup = if missing.is_empty() {
        Protection::Enforced(set.join(", "))
    } else {
        let why = support.reason.clone().unwrap_or_default();
        let mut d = format!("no {} limit: {why}", missing.join("/"));
        if !set.is_empty() {
            d = format!("{}; {d}", set.join(", "));
        }
        Protection::Degraded(d)
    };
    out.push(entry("cgroup", &cgroup));
    serde_json::Value::Array(out)
}

/// Copy a child's output into the ring, line by line, cutting over-long lines.
pub(crate) async fn pipe_lines(
    mut src: impl AsyncRead + Unpin,
    stream: LogStream,
    ring: Rc<LogRing>,
) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match src.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[..pos]).into_owned();
            ring.push(stream, guess_level(stream, &line), &line);
            buf.drain(..=pos);
        }
        if buf.len() > MAX_LINE_BYTES {
            let line = String::from_utf8_lossy(&buf).into_owned();
            ring.push(stream, guess_level(stream, &line), &line);
            buf.clear();
        }
    }
    if !buf.is_empty() {
        let line = String::from_utf8_lossy(&buf).into_owned();
        ring.push(stream, guess_level(stream, &line), &line);
    }
}

/// The settings `init` carries: the plugin's stored settings, `{}` when it has none. Read at each
/// start, so settings saved while a plugin is stopped reach it when it starts again. A plugin
/// whose settings cannot be read does not start with other ones: the start fails, saying why.
fn plugin_settings(store: &Store, id: &str) -> Result<serde_json::Value, String> {
    match store.plugin_settings(id) {
        Ok(None) => Ok(empty_config()),
        Ok(Some(v)) if v.is_object() => Ok(v),
        Ok(Some(_)) => Err("its stored settings are not a JSON object".into()),
        Err(e) => Err(format!(
            "cannot read its settings: {}",
            crate::error_chain::error_chain(&e)
        )),
    }
}

/// The `init` plugin `id` listening on `socket` gets, with its settings `config` and its verified
/// licence `license` (`None`: none; `toru plugin check` passes none), as 1.0 has it
/// ([`PluginLink::init`] adds the 1.1 fields). Its log file would be
/// `<runtime-dir>/logs/<id>.log`.
pub(crate) fn init_message(
    instance_id: &str,
    id: &str,
    socket: &std::path::Path,
    runtime_dir: &std::path::Path,
    config: serde_json::Value,
    license: Option<toru_plugin_api::License>,
) -> Init {
    let log_path = runtime_dir.join("logs").join(format!("{id}.log"));
    Init {
        instance_id: instance_id.to_string(),
        plugin_socket: socket.display().to_string(),
        log_path: log_path.display().to_string(),
        protocol: None,
        heartbeat_interval_ms: None,
        max_frame_len: None,
        config,
        license,
    }
}

/// Wait for the socket, deliver init through the link; then watch the link (1.1 heartbeats and
/// connection).
async fn start_sequence(
    shared: Rc<Shared>,
    ctx: Rc<Ctx>,
    link: Rc<PluginLink>,
    generation: u64,
    events: mpsc::UnboundedSender<(u64, ProcEvent)>,
    watch: Option<super::watch::SocketWatch>,
) {
    let cfg = &ctx.config.supervisor;
    let report = |ev| {
        let _ = events.send((generation, ev));
    };
    // The socket must appear (and accept) within the socket timeout.
    let stream = super::watch::connect_when_bound(&shared.socket, watch, cfg.socket_timeout).await;
    let Some(stream) = stream else {
        report(ProcEvent::StartFailed(format!(
            "socket {} did not appear within {} ms",
            shared.socket.display(),
            cfg.socket_timeout.as_millis()
        )));
        return;
    };
    let config = match plugin_settings(&ctx.store, &shared.id) {
        Ok(config) => config,
        Err(why) => {
            report(ProcEvent::StartFailed(why));
            return;
        }
    };
    let init = init_message(
        &ctx.instance_id,
        &shared.id,
        &shared.socket,
        &ctx.config.runtime_dir,
        config,
        shared
            .licence
            .borrow()
            .as_ref()
            .map(crate::license::Claims::to_api),
    );
    if let Err(why) = link
        .init(stream, init, cfg.heartbeat_interval, cfg.ready_timeout)
        .await
    {
        report(ProcEvent::StartFailed(why.to_string()));
        return;
    }
    report(ProcEvent::Ready);
    match link
        .watch(cfg.heartbeat_interval, cfg.heartbeat_misses)
        .await
    {
        Some(Watch::Hung(missed)) => report(ProcEvent::Hung(missed)),
        Some(Watch::Lost(why)) => report(ProcEvent::ConnLost(why)),
        None => {}
    }
}
