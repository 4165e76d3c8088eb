//! The steps of `toru plugin check`, each done with the host's own code: `--metadata` through
//! `supervisor::discovery::read_metadata`, a package through `package::archive` and the manifest's
//! checks, the spawn through `supervisor::process::spawn` (the plugin's folders and environment
//! from `supervisor::isolation`, with isolation off), the first connection through
//! `supervisor::watch::connect_when_bound`, everything said to the plugin through a
//! `supervisor::link::PluginLink` whose KV requests a real temporary `Store` serves, and what the
//! plugin leaves behind through `supervisor::descendants` (the checker is the plugin's child
//! subreaper, as the host is without cgroups, so a process that left the plugin's group is found
//! and killed too). The timeouts are the config's, as the host's are.
//!
//! [`Check::step`] runs one step and returns a [`Verdict`]; the order and what is skipped after a
//! failure are the checklist's (`steps`). A step that waits on the plugin also waits on its
//! process: an exit there ends the step with the exit and the plugin's last stderr lines.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use toru_plugin_api::protocol::{BodyEncoding, HttpRequest, ProtocolVersion, empty_config};

use super::sandbox::{Proc, Sandbox};
use super::steps::Step;
use crate::config::{Config, DescendantTracking};
use crate::error_chain::error_chain;
use crate::package::archive;
use crate::package::manifest::{HOST_TRIPLE, Manifest};
use crate::package::sign;
use crate::settings::Schema;
use crate::store::Store;
use crate::supervisor::conn::{ConnError, Tally};
use crate::supervisor::descendants::{CgroupLimits, Descendants};
use crate::supervisor::discovery::{self, METADATA_TIMED_OUT};
use crate::supervisor::isolation::{self, HostIsolation};
use crate::supervisor::link::{ConfigAnswer, InitError, Ping, PluginLink, Watch};
use crate::supervisor::logs::LogRing;
use crate::supervisor::plugin::init_message;
use crate::supervisor::process::{self, Discovered};
use crate::supervisor::view::ForwardError;
use crate::supervisor::watch::{self, SocketWatch};

/// Longest wait for the reason a connection ended once a request saw it closed: the reader task
/// reports it before the request fails, so this only bounds a wait that should not happen.
const LOST_REASON_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest wait for the process to end once its connection closed mid-step: a crash closes the
/// socket before its exit is seen, by far more under emulation (qemu-user) or load than natively.
/// A process still running after this closed its connection on its own.
const EXIT_AFTER_CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How a step went, as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// As the host expects.
    Pass(String),
    /// Not as the host expects.
    Fail(String),
    /// Not checked (not applicable).
    Skip(String),
    /// Not as the host expects, and the process has ended.
    Ended(String),
}

/// The file under check.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The path as given, for messages.
    pub(crate) shown: String,
    /// The absolute path (not resolving symlinks: a plugin may read its own name).
    pub(crate) path: PathBuf,
    /// A package (`.toru` or gzip data) rather than an executable.
    pub(crate) package: bool,
}

impl Target {
    /// `file`, given on the command line.
    pub(crate) fn new(file: &Path) -> Target {
        let path = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        let gzip = std::fs::File::open(&path)
            .and_then(|mut f| {
                let mut magic = [0u8; 2];
                std::io::Read::read_exact(&mut f, &mut magic).map(|()| magic)
            })
            .is_ok_and(|m| m == [0x1f, 0x8b]);
        Target {
            shown: file.display().to_string(),
            package: gzip || path.extension().is_some_and(|e| e == "toru"),
            path,
        }
    }
}

/// A package unpacked into the sandbox, the executable for this device chosen.
#[derive(Debug)]
struct Unpacked {
    manifest: Manifest,
    /// Its `[entry]` for this device.
    entry: String,
    /// Where that is, unpacked.
    entry_path: PathBuf,
    /// Files unpacked.
    files: usize,
    /// Its settings schema, parsed.
    schema: Option<Schema>,
}

/// Everything one check holds; see the module doc.
#[derive(Debug)]
pub(crate) struct Check {
    config: Config,
    target: Target,
    sandbox: Sandbox,
    isolation: HostIsolation,
    store: Store,
    ring: Rc<LogRing>,
    /// A package, unpacked, or why it cannot be (checked at `manifest`).
    unpacked: Option<Result<Unpacked, String>>,
    found: Option<Discovered>,
    /// The settings `init` and `config` carry: a package's defaults, else `{}`.
    settings: Value,
    socket: PathBuf,
    watch: Option<SocketWatch>,
    proc: Option<Proc>,
    stream: Option<UnixStream>,
    link: Option<Rc<PluginLink>>,
    /// The host's watch of the connection (heartbeats and its end), from `ready` on.
    lost: Option<JoinHandle<Option<Watch>>>,
    /// What the plugin sent of its own accord, from `ready` on.
    tally: Option<Rc<Tally>>,
    shutdown_sent: Option<Instant>,
    /// Finds and kills what the plugin leaves behind.
    descendants: Rc<Descendants>,
    /// Reaps the processes the checker adopts as their subreaper.
    reaping: JoinHandle<()>,
    /// What the plugin left behind was killed and counted.
    buried: bool,
}

impl Check {
    /// A check of `target` with the host's `config` (its folders are replaced by the sandbox's,
    /// and isolation is off: the plugin runs as the current user). Opens a temporary store.
    pub(crate) fn new(config: &Config, target: Target, sandbox: Sandbox) -> Result<Check, String> {
        let mut config = config.clone();
        config.data_dir = sandbox.data_dir();
        config.runtime_dir = sandbox.runtime_dir();
        config.plugins_dir = sandbox.data_dir().join("plugins");
        config.isolation.enabled = false;
        // A cgroup would bring the device's limits: a subreaper finds descendants without them.
        config.supervisor.descendants = DescendantTracking::Subreaper;
        for dir in [&config.data_dir, &config.runtime_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let store = crate::app::open_store(&config)
            .map_err(|e| format!("cannot open a temporary store: {}", error_chain(&e)))?;
        let ring = Rc::new(LogRing::new(
            "check",
            config.log_ring_lines,
            config.log_lines_per_sec,
        ));
        let instance = store.instance_id();
        let with = |how| {
            let mut c = config.clone();
            c.supervisor.descendants = how;
            Descendants::setup(&c, &instance)
        };
        // No subreaper here (qemu-user refuses one): a cgroup of the check's own, without limits
        // (root); else process groups only, as the host does then, and the exit step says so.
        let descendants = match with(DescendantTracking::Subreaper) {
            Ok(d) => d,
            Err(_) => match with(DescendantTracking::Cgroup) {
                Ok(d) => d,
                Err(_) => with(DescendantTracking::ProcessGroup)
                    .map_err(|e| format!("cannot track the plugin's processes: {e}"))?,
            },
        };
        let descendants = Rc::new(descendants);
        let reaper = descendants.clone();
        let reaping = tokio::task::spawn_local(async move { reaper.watch().await });
        Ok(Check {
            isolation: HostIsolation::new(&config),
            config,
            target,
            sandbox,
            store,
            ring,
            unpacked: None,
            found: None,
            settings: empty_config(),
            socket: PathBuf::new(),
            watch: None,
            proc: None,
            stream: None,
            link: None,
            lost: None,
            tally: None,
            shutdown_sent: None,
            descendants,
            reaping,
            buried: false,
        })
    }

    /// The protocol the plugin announced, once `--metadata` was read.
    pub(crate) fn protocol(&self) -> Option<ProtocolVersion> {
        self.found.as_ref().map(|f| f.protocol)
    }

    /// Frames the plugin sent that the host could not read, so far.
    pub(crate) fn rejected_frames(&self) -> u64 {
        self.tally.as_ref().map_or(0, |t| t.rejected.get())
    }

    /// `verdict` of a step during which the plugin sent frames the host could not read
    /// (`rejected_frames` was `before` when it began): a pass becomes a failure.
    pub(crate) fn with_rejected_frames(&self, verdict: Verdict, before: u64) -> Verdict {
        let Some(t) = &self.tally else {
            return verdict;
        };
        let n = t.rejected.get().saturating_sub(before);
        match verdict {
            Verdict::Pass(d) if n > 0 => Verdict::Fail(format!(
                "{d}, but the plugin also sent {n} frame(s) the host cannot read ({}); the host \
                 logs and drops them — every frame must be one JSON object (PROTOCOL.md §2)",
                t.first_rejected.borrow().as_deref().unwrap_or("?")
            )),
            v => v,
        }
    }

    /// Run `step`.
    pub(crate) async fn step(&mut self, step: Step) -> Verdict {
        match step {
            Step::Signature => self.signature(),
            Step::Metadata => self.metadata().await,
            Step::Manifest => self.manifest(),
            Step::Start => self.start().await,
            Step::Socket => self.socket().await,
            Step::Init => self.init(),
            Step::Ready => self.ready().await,
            Step::Heartbeat => self.heartbeat().await,
            Step::Http => self.http().await,
            Step::Kv => self.kv(),
            Step::Settings => self.settings().await,
            Step::Shutdown => self.shutdown().await,
            Step::Exit => self.exit().await,
        }
    }

    /// Stop whatever is left: the host's watch, the connection, the plugin's processes, the
    /// store. The sandbox (folders) goes when the check is dropped.
    pub(crate) async fn finish(mut self) {
        if let Some(lost) = self.lost.take() {
            lost.abort();
        }
        self.link = None;
        self.stream = None;
        self.sandbox.kill_group();
        if let Some(p) = &mut self.proc {
            // Killed just now if it was still running: reaped at once.
            let _ = tokio::time::timeout(LOST_REASON_TIMEOUT, p.ended()).await;
        }
        self.bury().await;
        self.descendants.finish().await;
        self.reaping.abort();
        self.store.close();
    }

    /// Once the plugin's process has ended: kill what it left behind, as the host does (its group,
    /// and what left the group); how many processes outlived it. Once.
    async fn bury(&mut self) -> usize {
        let (Some(found), Some(proc)) = (&self.found, &self.proc) else {
            return 0;
        };
        if std::mem::replace(&mut self.buried, true) {
            return 0;
        }
        self.descendants
            .ended(&found.metadata.id, proc.pid, true)
            .await
    }

    // ── the steps ─────────────────────────────────────────────────────────────────────────

    fn signature(&self) -> Verdict {
        if !self.target.package {
            return Verdict::Skip("not a package".into());
        }
        let sig = sign::signature_path(&self.target.path);
        let shown = format!("{}.minisig", self.target.shown);
        match std::fs::read(&sig) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Verdict::Skip(format!(
                "unsigned (no {shown}): a device installs it only with [packages] \
                 allow_unsigned = true"
            )),
            Err(e) => Verdict::Skip(format!("cannot read {shown}: {e}")),
            Ok(bytes) if bytes.len() > sign::MAX_SIGNATURE_BYTES => Verdict::Skip(format!(
                "{shown} is over {} bytes: not a signature a device reads",
                sign::MAX_SIGNATURE_BYTES
            )),
            Ok(bytes) => match sign::signature_key_id(&String::from_utf8_lossy(&bytes)) {
                Ok(key) => Verdict::Skip(format!(
                    "signed by key {key} (not verified here: a device installs it if it trusts \
                     that key, `toru trust add`)"
                )),
                Err(e) => Verdict::Skip(format!("{shown} is not a signature a device reads: {e}")),
            },
        }
    }

    async fn metadata(&mut self) -> Verdict {
        let shown = self.target.shown.clone();
        let binary = if self.target.package {
            let dest = self.sandbox.package_dir();
            let unpacked = unpack(&self.target.path, &dest, &self.config);
            let entry = unpacked.as_ref().ok().map(|u| u.entry_path.clone());
            self.unpacked = Some(unpacked);
            match entry {
                Some(p) => p,
                None => return Verdict::Skip("the package cannot be used: see manifest".into()),
            }
        } else {
            if let Err(why) = runnable(&self.target.path, &shown) {
                return Verdict::Fail(why);
            }
            self.target.path.clone()
        };
        let started = Instant::now();
        let timeout = self.config.supervisor.metadata_timeout;
        match discovery::read_metadata(&binary, timeout, &self.isolation).await {
            Ok(found) => {
                let m = &found.metadata;
                let protocol = match &m.protocol {
                    Some(p) => format!("protocol {p}"),
                    None => "protocol 1.0 (no \"protocol\" field)".to_string(),
                };
                let mut detail = format!(
                    "{} {} \"{}\", route {}, {protocol} ({} ms)",
                    m.id,
                    m.version,
                    m.name,
                    m.route,
                    started.elapsed().as_millis()
                );
                if !self.target.package
                    && self.target.path.extension().is_none_or(|e| e != "binary")
                {
                    detail
                        .push_str("; note: in a plugins folder the host runs only *.binary files");
                }
                self.found = Some(found);
                Verdict::Pass(detail)
            }
            Err(why) => {
                let name = binary
                    .file_name()
                    .map_or_else(|| shown.clone(), |n| n.to_string_lossy().into_owned());
                Verdict::Fail(metadata_failure(&name, &binary, &why, timeout))
            }
        }
    }

    fn manifest(&mut self) -> Verdict {
        let Some(unpacked) = &self.unpacked else {
            return Verdict::Skip("not a package: a bare executable has no manifest".into());
        };
        let u = match unpacked {
            Ok(u) => u,
            Err(why) => return Verdict::Fail(why.clone()),
        };
        if let Err(e) = u.manifest.check_host(&crate::install::host_version()) {
            return Verdict::Fail(e.to_string());
        }
        let Some(found) = &self.found else {
            return Verdict::Skip("no --metadata to compare with".into());
        };
        if let Err(e) = u.manifest.agrees_with(&found.metadata) {
            return Verdict::Fail(format!(
                "the manifest and --metadata must agree: {e} (a device refuses the package)"
            ));
        }
        if let Some(schema) = &u.schema {
            self.settings = schema.defaults();
        }
        let settings = match &u.schema {
            Some(_) => format!("settings defaults {}", self.settings),
            None => "no settings".to_string(),
        };
        Verdict::Pass(format!(
            "{} {}: entry {} for {HOST_TRIPLE}, {} file(s), min_host {}, {settings}; agrees \
             with --metadata",
            u.manifest.id, u.manifest.version, u.entry, u.files, u.manifest.min_host
        ))
    }

    async fn start(&mut self) -> Verdict {
        let Some(found) = &self.found else {
            return Verdict::Skip("no metadata".into());
        };
        let id = found.metadata.id.clone();
        let binary = found.binary.clone();
        self.socket = isolation::socket_path(&self.config.runtime_dir, &id);
        let sec = match self.isolation.resolve(&self.store, &id, &binary).await {
            Ok(sec) => sec,
            Err(why) => return Verdict::Fail(format!("cannot work out its folders: {why}")),
        };
        if let Err(e) = self.isolation.prepare_dirs(&sec) {
            return Verdict::Fail(format!("cannot prepare its folders: {e}"));
        }
        process::remove_socket(&self.socket);
        // Watched from before the spawn, as the host does, so the bind cannot be missed.
        self.watch = SocketWatch::for_socket(&self.socket);
        let prepared = crate::confine::prepare(self.isolation.plan(&sec, false));
        let env = [
            ("TORU_PLUGIN_DATA", sec.data_dir.as_os_str()),
            ("TMPDIR", sec.tmp_dir.as_os_str()),
        ];
        // Unlimited: the check is no place for the device's limits (a cgroup only tracks here).
        let cgroup = match self
            .descendants
            .prepare_spawn(&id, &CgroupLimits::default())
            .await
        {
            Ok(c) => c,
            Err(e) => return Verdict::Fail(format!("cannot prepare a cgroup for it: {e}")),
        };
        let spawned = process::spawn(&binary, &self.socket, cgroup.as_deref(), &env, prepared);
        let child = match spawned.await {
            Ok(c) => c,
            Err(e) => return Verdict::Fail(spawn_failure(&binary, &e)),
        };
        let proc = Proc::new(child, self.ring.clone());
        self.sandbox.hold_group(proc.pid);
        self.descendants.started(&id, proc.pid, &self.socket);
        let detail = format!(
            "pid {} in its own process group, working directory {}, environment PATH, LANG, \
             TORU_PLUGIN_SOCKET, TORU_PLUGIN_DATA, TMPDIR only",
            proc.pid,
            binary.parent().unwrap_or(Path::new("/")).display()
        );
        self.proc = Some(proc);
        Verdict::Pass(detail)
    }

    async fn socket(&mut self) -> Verdict {
        let Some(proc) = self.proc.as_mut() else {
            return Verdict::Skip("not started".into());
        };
        let limit = self.config.supervisor.socket_timeout;
        let started = Instant::now();
        let connect = watch::connect_when_bound(&self.socket, self.watch.take(), limit);
        let stream = tokio::select! {
            biased;
            s = connect => s,
            ended = proc.ended() => {
                let words = proc.last_words().await;
                return Verdict::Ended(format!(
                    "{} before its socket accepted a connection{words}",
                    ended.how
                ));
            }
        };
        let socket = self.socket.display();
        match stream {
            Some(s) => {
                self.stream = Some(s);
                Verdict::Pass(format!(
                    "{socket} accepted a connection after {} ms (limit {})",
                    started.elapsed().as_millis(),
                    secs(limit)
                ))
            }
            None if is_socket(&self.socket) => Verdict::Fail(format!(
                "a socket is at {socket} but accepted no connection within {} — does the plugin \
                 listen and accept on it?",
                secs(limit)
            )),
            None => Verdict::Fail(format!(
                "no socket at {socket} within {} — did the plugin bind $TORU_PLUGIN_SOCKET?",
                secs(limit)
            )),
        }
    }

    fn init(&mut self) -> Verdict {
        let Some(found) = &self.found else {
            return Verdict::Skip("no metadata".into());
        };
        let link = PluginLink::new(
            found.protocol,
            &found.metadata.id,
            &self.socket,
            &self.store,
            &self.ring,
            self.config.max_frame_len,
            None,
        );
        self.link = Some(Rc::new(link));
        match found.protocol {
            ProtocolVersion::V1_0 => Verdict::Pass(
                "1.0: the first connection is closed unused, init goes on a connection of its own"
                    .into(),
            ),
            ProtocolVersion::V1_1 => Verdict::Pass(format!(
                "1.1: init goes on this connection (settings {}, heartbeat every {} ms, frames up \
                 to {} bytes)",
                self.settings,
                self.config.supervisor.heartbeat_interval.as_millis(),
                self.config.max_frame_len
            )),
        }
    }

    async fn ready(&mut self) -> Verdict {
        let (Some(found), Some(link), Some(stream), Some(proc)) = (
            &self.found,
            self.link.clone(),
            self.stream.take(),
            self.proc.as_mut(),
        ) else {
            return Verdict::Skip("not connected".into());
        };
        let cfg = &self.config.supervisor;
        let init = init_message(
            &self.store.instance_id(),
            &found.metadata.id,
            &self.socket,
            &self.config.runtime_dir,
            self.settings.clone(),
            // A check runs without a licence: what a plugin does without one is what it checks.
            None,
        );
        let protocol = found.protocol;
        let started = Instant::now();
        let answer = tokio::select! {
            biased;
            r = link.init(stream, init, cfg.heartbeat_interval, cfg.ready_timeout) => r,
            ended = proc.ended() => {
                let words = proc.last_words().await;
                let when = match protocol {
                    ProtocolVersion::V1_0 => "before init was delivered",
                    ProtocolVersion::V1_1 => "after init, before ready",
                };
                return Verdict::Ended(format!("{} {when}{words}", ended.how));
            }
        };
        let limit = secs(cfg.ready_timeout);
        match (answer, protocol) {
            (Ok(()), ProtocolVersion::V1_0) => {
                self.descendants.observe();
                Verdict::Pass("1.0: ready once init is delivered".into())
            }
            (Ok(()), ProtocolVersion::V1_1) => {
                self.descendants.observe();
                self.tally = link.tally();
                let (interval, misses) = (cfg.heartbeat_interval, cfg.heartbeat_misses);
                let watching = link.clone();
                self.lost = Some(tokio::task::spawn_local(async move {
                    watching.watch(interval, misses).await
                }));
                Verdict::Pass(format!(
                    "ready {} ms after init (limit {limit})",
                    started.elapsed().as_millis()
                ))
            }
            (Err(InitError::NotDelivered(e)), _) => Verdict::Fail(format!(
                "init could not be delivered: {e} — a 1.0 plugin accepts one connection per \
                 message"
            )),
            (Err(InitError::NoReady(ConnError::Timeout(_))), _) => Verdict::Fail(format!(
                "no ready within {limit} after init — a 1.1 plugin answers init with ready once \
                 it can serve"
            )),
            (Err(InitError::NoReady(e)), _) => {
                match ended_after_close(proc, "after init, before ready").await {
                    Some(ended) => ended,
                    None => Verdict::Fail(format!("the connection ended before ready ({e})")),
                }
            }
            (Err(InitError::Refused(e)), _) => {
                Verdict::Fail(format!("answered init with an error instead of ready: {e}"))
            }
            (Err(InitError::Unexpected(what)), _) => {
                Verdict::Fail(format!("answered init with {what} instead of ready"))
            }
        }
    }

    async fn heartbeat(&mut self) -> Verdict {
        let (Some(link), Some(proc)) = (self.link.clone(), self.proc.as_mut()) else {
            return Verdict::Skip("not connected".into());
        };
        let cfg = &self.config.supervisor;
        let (interval, misses) = (cfg.heartbeat_interval, cfg.heartbeat_misses.max(1));
        let mut missed = Vec::new();
        for seq in 1..=u64::from(misses) {
            let started = Instant::now();
            let ping = tokio::select! {
                biased;
                p = link.ping(seq, interval) => p,
                ended = proc.ended() => {
                    let words = proc.last_words().await;
                    return Verdict::Ended(format!("{} while a ping waited{words}", ended.how));
                }
            };
            match ping {
                None => return Verdict::Skip("1.0: health is the process (no heartbeats)".into()),
                Some(Ping::Pong) => {
                    let after = if missed.is_empty() {
                        String::new()
                    } else {
                        format!(" after {} missed ({})", missed.len(), missed.join("; "))
                    };
                    return Verdict::Pass(format!(
                        "pong in {} ms{after} (the host pings every {}, and restarts a plugin \
                         that misses {misses} in a row)",
                        started.elapsed().as_millis(),
                        secs(interval)
                    ));
                }
                Some(Ping::Missed(why)) => missed.push(why),
                Some(Ping::Gone(e)) => {
                    if let Some(ended) = ended_after_close(proc, "while a ping waited").await {
                        return ended;
                    }
                    let why = self.lost_reason().await.unwrap_or_else(|| e.to_string());
                    return Verdict::Fail(format!("the connection ended: {why}"));
                }
            }
        }
        Verdict::Fail(format!(
            "no pong to {misses} pings in a row, {} each — the host restarts such a plugin as \
             hung; is its message loop blocked?",
            secs(interval)
        ))
    }

    async fn http(&mut self) -> Verdict {
        let (Some(link), Some(proc)) = (self.link.clone(), self.proc.as_mut()) else {
            return Verdict::Skip("not connected".into());
        };
        let req = HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            headers: [
                ("X-Toru-User".to_string(), "toru-check".to_string()),
                ("X-Toru-Role".to_string(), "admin".to_string()),
            ]
            .into(),
            body: None,
            body_encoding: BodyEncoding::Utf8,
        };
        let limit = self.config.http.plugin_timeout;
        let started = Instant::now();
        let reply = tokio::select! {
            biased;
            r = link.request(req, limit) => r,
            ended = proc.ended() => {
                let words = proc.last_words().await;
                return Verdict::Ended(format!("{} while answering GET /{words}", ended.how));
            }
        };
        match reply {
            Ok(reply) => {
                let (status, headers, body) = reply.into_parts();
                let kind = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    .map_or("no Content-Type".to_string(), |(_, v)| v.clone());
                Verdict::Pass(format!(
                    "GET / answered {status} ({kind}, {} bytes) in {} ms",
                    body.len(),
                    started.elapsed().as_millis()
                ))
            }
            Err(ForwardError::Timeout(_)) => Verdict::Fail(format!(
                "no answer to GET / within {} ([http] plugin_timeout); the browser would get 504",
                secs(limit)
            )),
            Err(ForwardError::BadReply { reason, .. }) => Verdict::Fail(format!(
                "the answer to GET / is not one the host accepts: {reason}; the browser would \
                 get 502"
            )),
            Err(ForwardError::Unavailable { reason, .. }) => {
                if let Some(ended) = ended_after_close(proc, "while answering GET /").await {
                    return ended;
                }
                let why = self.lost_reason().await.unwrap_or(reason);
                Verdict::Fail(format!("GET / could not be forwarded: {why}"))
            }
            Err(e) => Verdict::Fail(format!("GET / could not be forwarded: {e}")),
        }
    }

    fn kv(&self) -> Verdict {
        if self.protocol() == Some(ProtocolVersion::V1_0) {
            return Verdict::Skip("1.0 has no KV".into());
        }
        let Some(t) = &self.tally else {
            return Verdict::Skip("not connected".into());
        };
        let (asked, refused) = (t.kv_requests.get(), t.kv_refused.get());
        let first = t.first_kv_refusal.borrow().clone().unwrap_or_default();
        match (asked, refused) {
            (0, _) => Verdict::Skip(
                "made no KV request (by then: init, ready, GET /); nothing to check".into(),
            ),
            (n, r) if r >= n => Verdict::Fail(format!(
                "all {n} of its KV requests were refused; the first: {first}"
            )),
            (n, 0) => Verdict::Pass(format!(
                "{n} KV request(s) so far, served from a temporary store"
            )),
            (n, r) => Verdict::Pass(format!(
                "{n} KV request(s) so far, served from a temporary store; {r} refused (the \
                 first: {first})"
            )),
        }
    }

    async fn settings(&mut self) -> Verdict {
        let (Some(link), Some(proc)) = (self.link.clone(), self.proc.as_mut()) else {
            return Verdict::Skip("not connected".into());
        };
        if self.found.as_ref().map(|f| f.protocol) == Some(ProtocolVersion::V1_0) {
            return Verdict::Skip(
                "1.0: settings come only with init; the host restarts it to apply new ones".into(),
            );
        }
        let limit = self.config.http.plugin_timeout;
        let defaults = matches!(&self.unpacked, Some(Ok(u)) if u.schema.is_some());
        let answer = tokio::select! {
            biased;
            a = link.configure(self.settings.clone(), limit) => a,
            ended = proc.ended() => {
                let words = proc.last_words().await;
                return Verdict::Ended(format!("{} while taking new settings{words}", ended.how));
            }
        };
        let sent = format!("config {}", self.settings);
        match answer {
            Ok(ConfigAnswer::Applied) => Verdict::Pass(format!(
                "{sent} answered ok: it applies settings while it runs"
            )),
            Ok(ConfigAnswer::NeedsRestart) => Verdict::Pass(format!(
                "{sent} answered unsupported: the host will restart it to apply settings"
            )),
            Ok(ConfigAnswer::Rejected(why)) if defaults => Verdict::Fail(format!(
                "{sent} (its manifest's defaults) answered error: {why} — a plugin must take its \
                 own defaults"
            )),
            Ok(ConfigAnswer::Rejected(why)) => Verdict::Pass(format!(
                "{sent} answered error ({why}): the host keeps the previous settings and shows \
                 the refusal"
            )),
            Err(ConnError::Timeout(_)) => Verdict::Fail(format!(
                "no answer to {sent} within {} — answer ok, or error unsupported to be \
                 restarted instead",
                secs(limit)
            )),
            Err(ConnError::Invalid(what)) => Verdict::Fail(format!("{sent}: {what}")),
            Err(e) => {
                if let Some(ended) = ended_after_close(proc, "while taking new settings").await {
                    return ended;
                }
                let why = self.lost_reason().await.unwrap_or_else(|| e.to_string());
                Verdict::Fail(format!("{sent} could not be delivered: {why}"))
            }
        }
    }

    async fn shutdown(&mut self) -> Verdict {
        let (Some(link), Some(protocol)) = (self.link.take(), self.protocol()) else {
            return Verdict::Skip("not connected".into());
        };
        let grace = self.config.supervisor.shutdown_grace;
        let started = Instant::now();
        self.shutdown_sent = Some(started);
        // Not raced with the exit: a plugin acks, then exits, and the ack may be read after the
        // exit is seen. A plugin that exits without one ends the connection, which ends the wait.
        match (link.shutdown(grace).await, protocol) {
            (Ok(()), ProtocolVersion::V1_0) => {
                Verdict::Pass("1.0: shutdown delivered on its own connection (no answer)".into())
            }
            (Ok(()), ProtocolVersion::V1_1) => Verdict::Pass(format!(
                "shutdown_ack in {} ms",
                started.elapsed().as_millis()
            )),
            (Err(ConnError::Timeout(_)), _) => Verdict::Fail(format!(
                "no shutdown_ack within {} ([supervisor] shutdown_grace)",
                secs(grace)
            )),
            (Err(ConnError::Closed), ProtocolVersion::V1_1) => Verdict::Fail(
                "it closed the connection without a shutdown_ack — answer shutdown with \
                 shutdown_ack, then exit 0 (PROTOCOL.md)"
                    .into(),
            ),
            (Err(e), _) => Verdict::Fail(format!("shutdown could not be delivered: {e}")),
        }
    }

    async fn exit(&mut self) -> Verdict {
        let (Some(found), Some(proc)) = (&self.found, self.proc.as_mut()) else {
            return Verdict::Skip("not started".into());
        };
        let id = found.metadata.id.clone();
        let cfg = &self.config.supervisor;
        let sent = self.shutdown_sent.unwrap_or_else(Instant::now);
        let (grace, term) = (cfg.shutdown_grace, cfg.term_grace);
        let verdict = match tokio::time::timeout_at(sent + grace, proc.ended()).await {
            Ok(ended) => {
                let ms = sent.elapsed().as_millis();
                match ended.code {
                    Some(0) => Verdict::Pass(format!("exited with code 0, {ms} ms after shutdown")),
                    _ => {
                        let words = proc.last_words().await;
                        Verdict::Fail(format!(
                            "{} {ms} ms after shutdown — exit 0 after shutdown (PROTOCOL.md){words}",
                            ended.how
                        ))
                    }
                }
            }
            Err(_) => {
                // What the host does next: SIGTERM to all of it, then SIGKILL.
                let late = format!("still running {} after shutdown", secs(grace));
                self.descendants.signal(&id, proc.pid, libc::SIGTERM);
                match tokio::time::timeout(term, proc.ended()).await {
                    Ok(ended) => Verdict::Fail(format!(
                        "{late}; the host's SIGTERM then ended it ({})",
                        ended.how
                    )),
                    Err(_) => {
                        self.descendants.signal(&id, proc.pid, libc::SIGKILL);
                        let _ = proc.ended().await;
                        Verdict::Fail(format!(
                            "{late}, and {} after SIGTERM; killed with SIGKILL, as the host would",
                            secs(term)
                        ))
                    }
                }
            }
        };
        let unseen = if self.descendants.finds_escapes() {
            ""
        } else {
            " (processes it started that left its process group cannot be found here: no \
             subreaper and no cgroup; the device finds them)"
        };
        let verdict = match verdict {
            Verdict::Pass(d) => Verdict::Pass(format!("{d}{unseen}")),
            v => v,
        };
        match (self.bury().await, verdict) {
            (0, v) => v,
            (n, Verdict::Pass(d)) => Verdict::Fail(format!(
                "{d}, but {n} process(es) it started outlived it (the host kills them) — stop \
                 what you start before exiting"
            )),
            (n, Verdict::Fail(d)) => {
                Verdict::Fail(format!("{d}; {n} process(es) it started outlived it"))
            }
            (_, v) => v,
        }
    }

    /// Why the connection ended, as the host's watch saw it (1.1 after `ready`).
    async fn lost_reason(&mut self) -> Option<String> {
        let lost = self.lost.as_mut()?;
        match tokio::time::timeout(LOST_REASON_TIMEOUT, lost).await {
            Ok(Ok(Some(Watch::Lost(why)))) => {
                self.lost = None;
                Some(if why == "EOF" {
                    "the plugin closed it".to_string()
                } else {
                    why
                })
            }
            Ok(Ok(Some(Watch::Hung(n)))) => {
                self.lost = None;
                Some(format!("{n} heartbeats in a row went unanswered"))
            }
            _ => None,
        }
    }
}

/// Once a step saw the plugin's connection close: the plugin's end, said as the step's `Ended`
/// verdict (`how` ended it `during` what), if the process ends within
/// [`EXIT_AFTER_CLOSE_TIMEOUT`]; `None` while it still runs.
async fn ended_after_close(proc: &mut Proc, during: &str) -> Option<Verdict> {
    let ended = tokio::time::timeout(EXIT_AFTER_CLOSE_TIMEOUT, proc.ended())
        .await
        .ok()?;
    let words = proc.last_words().await;
    Some(Verdict::Ended(format!("{} {during}{words}", ended.how)))
}

/// Unpack `package` into `dest` as the host does (its limits), and pick this device's entry.
fn unpack(package: &Path, dest: &Path, config: &Config) -> Result<Unpacked, String> {
    let limits = archive::Limits {
        max_unpacked_bytes: config.packages.max_unpacked_bytes,
        ..archive::Limits::default()
    };
    let x = archive::extract(package, dest, &limits).map_err(|e| error_chain(&e))?;
    let entry = x
        .manifest
        .entry_for(HOST_TRIPLE)
        .map_err(|e| e.to_string())?
        .to_owned();
    let schema = x
        .manifest
        .settings
        .as_ref()
        .map(Schema::parse)
        .transpose()
        .map_err(|e| format!("manifest.toml: settings.{e}"))?;
    Ok(Unpacked {
        entry_path: dest.join(&entry),
        entry,
        files: x.files.len(),
        schema,
        manifest: x.manifest,
    })
}

/// Whether `path` can be run as a plugin: a file with an execute bit.
fn runnable(path: &Path, shown: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "{shown} is not executable: run `chmod +x {shown}` (the host runs only executable files)"
        ));
    }
    Ok(())
}

/// The `metadata` step's failure, from `read_metadata`'s reason.
fn metadata_failure(name: &str, binary: &Path, why: &str, timeout: Duration) -> String {
    if why.starts_with(METADATA_TIMED_OUT) {
        return format!(
            "`{name} --metadata` did not print its metadata and exit within {} \
             ([supervisor] metadata_timeout)",
            secs(timeout)
        );
    }
    if let Some(rest) = why.strip_prefix("--metadata ") {
        return format!("`{name} --metadata` {rest}");
    }
    if why.starts_with("cannot run") {
        return match interpreter(binary) {
            Some(i) if !Path::new(&i).exists() => {
                format!("{why} — its #! interpreter {i} does not exist here")
            }
            _ => why.to_string(),
        };
    }
    format!("`{name} --metadata` printed metadata the host refuses: {why}")
}

/// Why spawning `binary` failed, for a newcomer.
fn spawn_failure(binary: &Path, e: &std::io::Error) -> String {
    match interpreter(binary) {
        Some(i) if e.kind() == std::io::ErrorKind::NotFound && !Path::new(&i).exists() => {
            format!("cannot start it: its #! interpreter {i} does not exist here")
        }
        _ => format!("cannot start {}: {e}", binary.display()),
    }
}

/// The interpreter a script's `#!` line names.
fn interpreter(binary: &Path) -> Option<String> {
    let mut head = [0u8; 256];
    let n = std::io::Read::read(&mut std::fs::File::open(binary).ok()?, &mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|b| *b == b'\n').next()?;
    let text = String::from_utf8_lossy(line);
    text.split_whitespace().next().map(str::to_string)
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// `2 s`, `1.5 s`, `500 ms`.
pub(crate) fn secs(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(secs(Duration::from_millis(500)), "500 ms");
        assert_eq!(secs(Duration::from_secs(2)), "2 s");
        assert_eq!(secs(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn metadata_failures_name_the_file_and_the_rule() {
        let t = Duration::from_secs(5);
        let b = Path::new("/nonexistent/x.binary");
        assert_eq!(
            metadata_failure("x.binary", b, "--metadata exited with code 3", t),
            "`x.binary --metadata` exited with code 3"
        );
        assert!(
            metadata_failure("x.binary", b, &format!("{METADATA_TIMED_OUT} 5000 ms"), t)
                .contains("within 5 s ([supervisor] metadata_timeout)")
        );
        assert!(
            metadata_failure("x.binary", b, "invalid id \"A\"", t)
                .starts_with("`x.binary --metadata` printed metadata the host refuses: invalid id")
        );
    }
}
