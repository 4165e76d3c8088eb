//! Every descendant of a plugin goes when the plugin stops, and nothing a previous run of the host
//! left behind survives its next start. The one place that knows how descendants are found; the
//! plugin task (`supervisor::plugin`) calls it at each step of a process's life, `lib.rs` at the
//! host's start and stop.
//!
//! How, chosen at start by `[supervisor] descendants` (`auto` tries them in this order):
//! - **cgroup** (`supervisor::cgroup`): a cgroup v2 per plugin; a plugin's processes cannot leave
//!   it. Needs the right to create cgroups (root, or a delegated cgroup).
//! - **subreaper** (`supervisor::subreaper`): the host is a child subreaper and works out from
//!   `/proc` which plugin each adopted process belonged to.
//! - **process group** only: what every mode also does (each plugin leads its own group, which is
//!   signalled as a whole, and dies with the host by `PR_SET_PDEATHSIG`); a descendant that leaves
//!   the group escapes. For hosts run inside another program (in-process tests).
//!
//! In every mode a stop signals the group and the plugin's other descendants; once the plugin's
//! process has exited, the rest are SIGKILLed and awaited (up to [`EXIT_WAIT`]) before the exit is
//! reported, so `stopped` means gone. At start, before any plugin runs, the leftovers of a previous
//! run recorded in the runtime dir (`cgroup`, `descendants.json`) are killed, whichever mode
//! recorded them.
//!
//! Limits: in cgroup mode, [`Descendants::prepare_spawn`] also writes the plugin's
//! [`CgroupLimits`] into its cgroup, and [`Descendants::limit_watch`] reports when the kernel
//! enforced one ([`LimitHit`]); [`Descendants::limit_support`] says which limits are possible
//! (none outside cgroup mode) and why not.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cgroup::{self, CgroupError, CgroupTree};
pub(crate) use super::cgroup::{CgroupLimits, LimitHit, LimitSupport, LimitWatch};
use super::subreaper::{self, Reaper, Scope};
use crate::config::{Config, DescendantTracking};
use crate::error_chain::error_chain;

/// Longest wait for SIGKILLed descendants to exit (a process in uninterruptible sleep dies only
/// when it wakes). Past it the host goes on and says so in its log.
pub(crate) const EXIT_WAIT: Duration = Duration::from_secs(5);
/// Rounds of killing at start: a leftover may fork while it is being killed.
const LEFTOVER_ROUNDS: usize = 5;

/// Why the configured way of tracking descendants is not available.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DescendantsError {
    /// `descendants = "cgroup"`, and no cgroup can be made.
    #[error("supervisor.descendants = \"cgroup\", but no cgroup can be made for the plugins")]
    Cgroup(#[source] CgroupError),
    /// `descendants = "subreaper"`, and the host cannot be a child subreaper.
    #[error("supervisor.descendants = \"subreaper\", but the host cannot be a child subreaper")]
    Subreaper(#[source] io::Error),
}

#[derive(Debug)]
enum How {
    Group,
    Cgroup(CgroupTree),
    Subreaper(Reaper),
}

/// The host's way of finding plugin descendants, and its state.
#[derive(Debug)]
pub(crate) struct Descendants {
    how: How,
    runtime_dir: PathBuf,
    /// Which cgroup limits are possible (decided at setup).
    limits: LimitSupport,
}

impl Descendants {
    /// Process groups only, with nothing recorded (for supervisors built without a runtime of
    /// their own, as unit tests do).
    #[cfg(test)]
    pub(crate) fn process_group() -> Descendants {
        Descendants {
            how: How::Group,
            runtime_dir: PathBuf::new(),
            limits: LimitSupport::none("no cgroup: process groups only".into()),
        }
    }

    /// Set up what `config` asks for. `instance` (the store's instance id) names this host's
    /// cgroup. Makes the calling process a child subreaper in that mode.
    pub(crate) fn setup(config: &Config, instance: &str) -> Result<Descendants, DescendantsError> {
        let sv = &config.supervisor;
        let cgroup = || CgroupTree::create(sv.cgroup.as_deref(), instance);
        let subreaper = || Reaper::new(&config.runtime_dir);
        let mut no_cgroup = format!(
            "no cgroup: supervisor.descendants = \"{}\"",
            sv.descendants.as_str()
        );
        let how = match sv.descendants {
            DescendantTracking::Cgroup => How::Cgroup(cgroup().map_err(DescendantsError::Cgroup)?),
            DescendantTracking::Subreaper => {
                How::Subreaper(subreaper().map_err(DescendantsError::Subreaper)?)
            }
            DescendantTracking::ProcessGroup => How::Group,
            // `Auto`, and any mode added later.
            _ => match cgroup() {
                Ok(tree) => How::Cgroup(tree),
                Err(why) => {
                    log::debug!("no cgroup for the plugins: {}", error_chain(&why));
                    no_cgroup = format!("no cgroup: {}", error_chain(&why));
                    match subreaper() {
                        Ok(r) => How::Subreaper(r),
                        Err(e) => {
                            log::warn!(
                                "plugin descendants: process groups only (no cgroup: {}; no \
                                 subreaper: {e}); a descendant that leaves its plugin's process \
                                 group can outlive the plugin",
                                error_chain(&why)
                            );
                            How::Group
                        }
                    }
                }
            },
        };
        let limits = match &how {
            How::Cgroup(tree) => tree.limit_support().clone(),
            _ => LimitSupport::none(no_cgroup),
        };
        Ok(Descendants {
            how,
            runtime_dir: config.runtime_dir.clone(),
            limits,
        })
    }

    /// One line for the log: how descendants are tracked.
    pub(crate) fn describe(&self) -> String {
        match &self.how {
            How::Group => "plugin descendants: process groups only".into(),
            How::Cgroup(t) => {
                let l = &self.limits;
                let on: Vec<&str> = [("memory", l.memory), ("pids", l.pids), ("cpu", l.cpu)]
                    .into_iter()
                    .filter_map(|(name, on)| on.then_some(name))
                    .collect();
                format!(
                    "plugin descendants: a cgroup each under {} (limits: {}{})",
                    t.dir().display(),
                    if on.is_empty() {
                        "none".to_string()
                    } else {
                        on.join(", ")
                    },
                    l.reason
                        .as_ref()
                        .map(|r| format!("; {r}"))
                        .unwrap_or_default()
                )
            }
            How::Subreaper(_) => "plugin descendants: the host is their child subreaper".into(),
        }
    }

    /// Whether a descendant that left its plugin's process group is found (not with process
    /// groups only).
    pub(crate) fn finds_escapes(&self) -> bool {
        !matches!(self.how, How::Group)
    }

    /// Kill what a previous run of the host left (recorded in the runtime dir, whichever mode
    /// recorded it), before any plugin starts. Records this run's cgroup.
    pub(crate) async fn clean_leftovers(&self) {
        let mut found = 0;
        let previous_cgroup = match &self.how {
            How::Cgroup(tree) => tree.record(&self.runtime_dir),
            _ => read_cgroup_record(&self.runtime_dir),
        };
        if let Some(dir) = previous_cgroup {
            found += CgroupTree::clear(&dir, false, EXIT_WAIT).await;
        }
        if let How::Cgroup(tree) = &self.how {
            found += CgroupTree::clear(tree.dir(), true, EXIT_WAIT).await;
        } else if !self.runtime_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_file(self.runtime_dir.join(cgroup::RECORD));
        }
        let record = self.runtime_dir.join(subreaper::RECORD);
        let leftovers_by_reaper = match &self.how {
            How::Subreaper(r) => Some(r),
            _ => None,
        };
        let standalone;
        let reaper = match leftovers_by_reaper {
            Some(r) => Some(r),
            // Another mode recorded processes last time: judge them without becoming a subreaper.
            None if record.exists() => {
                standalone = Reaper::for_leftovers(&self.runtime_dir);
                Some(&standalone)
            }
            None => None,
        };
        if let Some(reaper) = reaper {
            reaper.load_record();
            for _ in 0..LEFTOVER_ROUNDS {
                let killed = reaper.sweep(Scope::Everything).killed;
                if killed.is_empty() {
                    break;
                }
                found += killed.len();
                if !subreaper::wait_gone(&killed, EXIT_WAIT).await {
                    log::warn!("leftover processes survived SIGKILL for {EXIT_WAIT:?}");
                }
            }
        }
        if found > 0 {
            log::warn!("killed {found} process(es) left by plugins of a previous run");
        }
    }

    /// Get plugin `id`'s cgroup ready for a new process — emptied of a previous one's leftovers,
    /// made anew (so its counters and peaks are the new generation's), with `limits` written for
    /// the controllers there are ([`Descendants::limit_support`]) — and return its
    /// `cgroup.procs` for the spawn to join; `None` in the other modes (`limits` unused).
    pub(crate) async fn prepare_spawn(
        &self,
        id: &str,
        limits: &CgroupLimits,
    ) -> io::Result<Option<PathBuf>> {
        let How::Cgroup(tree) = &self.how else {
            return Ok(None);
        };
        let cg = tree.plugin(id);
        if cg.is_populated() {
            cg.kill();
            if !cg.wait_empty(EXIT_WAIT).await {
                log::warn!("[{id}] the previous process's descendants survive SIGKILL");
            }
        }
        // A cgroup that could not be emptied stays (logged) and is reused.
        cg.remove();
        cg.create()?;
        cg.set_limits(limits, tree.limit_support())?;
        Ok(Some(cg.procs_path()))
    }

    /// Which cgroup limits [`Descendants::prepare_spawn`] can set, or why not.
    pub(crate) fn limit_support(&self) -> LimitSupport {
        self.limits.clone()
    }

    /// A watch on plugin `id`'s cgroup that resolves when the kernel enforces one of its limits
    /// ([`LimitWatch::next`]); `None` without a cgroup (or, logged, when no watch can be set).
    /// Make it after [`Descendants::prepare_spawn`] and before the spawn; drop it to stop.
    pub(crate) fn limit_watch(&self, id: &str) -> Option<LimitWatch> {
        let How::Cgroup(tree) = &self.how else {
            return None;
        };
        match tree.plugin(id).limit_watch() {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!("[{id}] cannot watch the cgroup's limits: {e}");
                None
            }
        }
    }

    /// Plugin `id`'s process `pid` was spawned, listening on `socket`.
    pub(crate) fn started(&self, id: &str, pid: u32, socket: &Path) {
        if let How::Subreaper(r) = &self.how {
            r.started(id, pid, socket);
        }
    }

    /// Take note of the plugin processes now (the subreaper records their descendants while their
    /// ancestry is intact).
    pub(crate) fn observe(&self) {
        if let How::Subreaper(r) = &self.how {
            r.sweep(Scope::Host);
        }
    }

    /// Send `sig` to plugin `id` (process `pid`): its process group and its other descendants.
    pub(crate) fn signal(&self, id: &str, pid: u32, sig: libc::c_int) {
        super::process::signal_group(pid, sig);
        match &self.how {
            How::Group => {}
            How::Cgroup(tree) if sig == libc::SIGKILL => tree.plugin(id).kill(),
            How::Cgroup(tree) => tree.plugin(id).signal(sig),
            How::Subreaper(r) => r.signal(id, sig),
        }
    }

    /// Plugin `id`'s process `pid` has exited (and was reaped): SIGKILL what is left of it and wait
    /// (up to [`EXIT_WAIT`]) until it is gone. `retired`: the plugin will not run again here (its
    /// cgroup is removed). Returns how many processes outlived it and were killed here.
    pub(crate) async fn ended(&self, id: &str, pid: u32, retired: bool) -> usize {
        // Counted before anything is killed here: what outlived the plugin's process.
        let (left, gone) = match &self.how {
            How::Group => {
                super::process::signal_group(pid, libc::SIGKILL);
                (0, true)
            }
            How::Cgroup(tree) => {
                let cg = tree.plugin(id);
                let left = cg.pids().len();
                super::process::signal_group(pid, libc::SIGKILL);
                let gone = !cg.is_populated() || {
                    cg.kill();
                    cg.wait_empty(EXIT_WAIT).await
                };
                if retired {
                    cg.remove();
                }
                (left, gone)
            }
            How::Subreaper(r) => {
                let killed = r.ended(id, pid);
                super::process::signal_group(pid, libc::SIGKILL);
                (killed.len(), subreaper::wait_gone(&killed, EXIT_WAIT).await)
            }
        };
        if !gone {
            log::warn!("[{id}] descendants survive SIGKILL for {EXIT_WAIT:?}");
        }
        left
    }

    /// React to SIGCHLD until the future is dropped (the subreaper reaps and judges adopted
    /// processes); returns at once in the other modes.
    pub(crate) async fn watch(&self) {
        let How::Subreaper(r) = &self.how else {
            return;
        };
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot watch SIGCHLD (adopted processes will not be reaped): {e}");
                return;
            }
        };
        while sigchld.recv().await.is_some() {
            r.sweep(Scope::Host);
        }
    }

    /// At the host's stop, after every plugin has: kill anything left, wait for it, and remove
    /// this run's cgroups and records.
    pub(crate) async fn finish(&self) {
        match &self.how {
            How::Group => {}
            How::Cgroup(tree) => {
                let found = CgroupTree::clear(tree.dir(), false, EXIT_WAIT).await;
                if found > 0 {
                    log::warn!("killed {found} process(es) left in the plugins' cgroups");
                }
                let _ = std::fs::remove_file(self.runtime_dir.join(cgroup::RECORD));
            }
            How::Subreaper(r) => {
                let killed = r.sweep(Scope::Host).killed;
                if !subreaper::wait_gone(&killed, EXIT_WAIT).await {
                    log::warn!("processes left by plugins survive SIGKILL for {EXIT_WAIT:?}");
                }
                // Reap what just died (no SIGCHLD is awaited any more).
                r.sweep(Scope::Host);
            }
        }
    }
}

/// The instance cgroup a previous run recorded, if the record names one (see
/// [`CgroupTree::record`] for the checks).
fn read_cgroup_record(runtime_dir: &Path) -> Option<PathBuf> {
    if runtime_dir.as_os_str().is_empty() {
        return None;
    }
    cgroup::recorded(runtime_dir, None)
}
