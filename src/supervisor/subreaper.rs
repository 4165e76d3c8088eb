//! Following a plugin's descendants without cgroups: the host is a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`), so a descendant whose parent dies is reparented to the host instead
//! of init, and the host reaps it. Which plugin it belonged to is worked out from `/proc`
//! (`supervisor::procfs`), in this order:
//!
//! 1. **recorded**: it is a generation's root, or a descendant seen before (pid and start time);
//! 2. **group or session**: it is in a process group or session that a recorded process of the
//!    generation formed (never the host's own), and started after the generation's root;
//! 3. **ancestry**: its parent belongs to a generation (a plugin's process tree while its parents
//!    live);
//! 4. **environment**: it was started with the `TORU_PLUGIN_SOCKET` of one of this host's plugins
//!    (the newest generation of that plugin that started before it; none: a stray).
//!
//! A *generation* is one run of a plugin's process. Each look ([`Reaper::sweep`], on every
//! SIGCHLD, when a plugin becomes ready, before each stop signal and after each exit) records what
//! running generations own, kills (SIGKILL) what belongs to an ended generation, what is a stray,
//! and any other orphan the host adopted, and reaps the host's exited children. Children the host
//! spawned itself — plugin roots while their generation runs, and unclaimed children shaped like a
//! spawn of the host (leader of their own group, or in the host's group, in the host's session,
//! such as `--metadata` runs) — are left to whoever waits for them.
//!
//! What the generations own is written to `<runtime-dir>/descendants.json` (with the boot id), so
//! a host started after a `kill -9` finds the previous run's processes — by the record, and by the
//! environment on every process of the machine — and kills them before any plugin starts.
//!
//! Limits: a descendant that clears its environment, leaves the plugin's group and session, and
//! whose parent dies before any look saw it, is an orphan nobody claims: killed when adopted, but
//! while its parent lives it is found only through that parent. Callers: `supervisor::descendants`.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::procfs::{self, ProcInfo};

/// The record of what the generations own, in the runtime dir.
pub(crate) const RECORD: &str = "descendants.json";
/// Descendants remembered per generation (beyond it, the group, session and environment rules
/// still find them).
const MAX_KNOWN: usize = 4096;
/// How deep a process tree is followed up to its owner.
const MAX_DEPTH: usize = 256;

/// One process for good: a pid is reused only by a process that starts later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Proc {
    pub pid: u32,
    pub start: u64,
}

impl From<&ProcInfo> for Proc {
    fn from(p: &ProcInfo) -> Proc {
        Proc {
            pid: p.pid,
            start: p.start,
        }
    }
}

/// One run of a plugin's process and what it owns.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Generation {
    plugin: String,
    socket: PathBuf,
    root: Proc,
    /// Until its root has exited and been reaped. Not recorded: a record read at start describes
    /// ended generations only.
    #[serde(skip)]
    running: bool,
    known: BTreeSet<Proc>,
    groups: BTreeSet<u32>,
    sessions: BTreeSet<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    boot_id: String,
    generations: Vec<Generation>,
}

/// Whose a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Generation `i` (by index into the generations).
    Gen(usize),
    /// One of this host's plugins by its environment, but no known generation.
    Stray,
    /// Adopted by the host and claimed by no generation (or a descendant of such an orphan).
    Orphan,
    /// Not ours, as far as can be told.
    None,
}

/// Which processes may be judged by their environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The host's descendants (while it runs: every plugin process is one).
    Host,
    /// Every process on the machine (at start: the previous run's are init's now).
    Everything,
}

/// The subreaper's state: the generations and what they own.
#[derive(Debug)]
pub(crate) struct Reaper {
    host: u32,
    host_sid: u32,
    host_pgid: u32,
    sockets_dir: PathBuf,
    record: PathBuf,
    boot_id: String,
    gens: RefCell<Vec<Generation>>,
    written: RefCell<String>,
}

impl Reaper {
    /// Make the host a child subreaper. `runtime_dir` holds the record and (in `plugins/`) the
    /// plugin sockets.
    pub(crate) fn new(runtime_dir: &Path) -> io::Result<Reaper> {
        crate::sys::set_child_subreaper()?;
        Ok(Reaper::for_leftovers(runtime_dir))
    }

    /// A reaper that only judges and kills (the host is not made a subreaper): for a record left by
    /// a previous run when this one tracks descendants another way.
    pub(crate) fn for_leftovers(runtime_dir: &Path) -> Reaper {
        let (host_sid, host_pgid) = crate::sys::own_session_and_group();
        Reaper {
            host: std::process::id(),
            host_sid,
            host_pgid,
            sockets_dir: runtime_dir.join("plugins"),
            record: runtime_dir.join(RECORD),
            boot_id: procfs::boot_id().unwrap_or_default(),
            gens: RefCell::new(Vec::new()),
            written: RefCell::new(String::new()),
        }
    }

    /// A plugin's process `pid` was spawned, listening on `socket`.
    pub(crate) fn started(&self, plugin: &str, pid: u32, socket: &Path) {
        let Some(info) = procfs::read(pid) else {
            return;
        };
        let mut gens = self.gens.borrow_mut();
        gens.push(Generation {
            plugin: plugin.to_string(),
            socket: socket.to_path_buf(),
            root: Proc::from(&info),
            running: true,
            known: BTreeSet::new(),
            groups: [pid].into_iter().collect(),
            sessions: BTreeSet::new(),
        });
        drop(gens);
        self.write_record();
    }

    /// Send `sig` to every live process of `plugin`'s running generations (after a look, so
    /// descendants that left the process group are included).
    pub(crate) fn signal(&self, plugin: &str, sig: libc::c_int) {
        let owners = self.sweep(Scope::Host).owners;
        let gens = self.gens.borrow();
        for (p, owner) in owners {
            if let Owner::Gen(i) = owner
                && gens[i].running
                && gens[i].plugin == plugin
                && !p.zombie
            {
                crate::sys::signal_process(p.pid, sig);
            }
        }
    }

    /// The process `pid` of `plugin` has exited and been reaped: its generation has ended, and
    /// whatever it owns is killed. Returns the processes killed.
    pub(crate) fn ended(&self, plugin: &str, pid: u32) -> Vec<Proc> {
        for g in self.gens.borrow_mut().iter_mut() {
            if g.plugin == plugin && g.root.pid == pid {
                g.running = false;
            }
        }
        self.sweep(Scope::Host).killed
    }

    /// Read the previous run's record (if it is from this boot): its generations have ended.
    pub(crate) fn load_record(&self) {
        let Ok(text) = std::fs::read_to_string(&self.record) else {
            return;
        };
        match serde_json::from_str::<Record>(&text) {
            Ok(r) if r.boot_id == self.boot_id => {
                self.gens.borrow_mut().extend(r.generations);
            }
            Ok(_) => log::debug!("{} is from another boot", self.record.display()),
            Err(e) => log::warn!("ignoring {}: {e}", self.record.display()),
        }
        // The file exists: removed once nothing is left to record, rewritten when that changes.
        *self.written.borrow_mut() = text;
    }

    /// Look at the processes: record what running generations own, kill what ended generations
    /// own, strays and unclaimed orphans, and reap the host's exited children.
    pub(crate) fn sweep(&self, scope: Scope) -> Sweep {
        let procs = procfs::all();
        let by_pid: HashMap<u32, &ProcInfo> = procs.iter().map(|p| (p.pid, p)).collect();
        let owners: Vec<(ProcInfo, Owner)> = {
            let gens = self.gens.borrow();
            let mut judge = Judge {
                reaper: self,
                gens: &gens,
                by_pid: &by_pid,
                scope,
                memo: HashMap::new(),
            };
            procs.iter().map(|p| (*p, judge.owner(p, 0))).collect()
        };

        let mut killed = Vec::new();
        let mut alive_per_gen = vec![0usize; self.gens.borrow().len()];
        {
            let mut gens = self.gens.borrow_mut();
            for (p, owner) in &owners {
                let running_root = gens.iter().any(|g| g.running && g.root == Proc::from(p));
                let kill = match *owner {
                    Owner::Gen(i) => !gens[i].running,
                    Owner::Stray | Owner::Orphan => true,
                    Owner::None => false,
                };
                if let Owner::Gen(i) = *owner
                    && !p.zombie
                {
                    alive_per_gen[i] += 1;
                    let g = &mut gens[i];
                    if g.running && g.known.len() < MAX_KNOWN {
                        g.known.insert(Proc::from(p));
                    }
                    if g.running {
                        if p.pgid != self.host_pgid && p.pgid > 1 {
                            g.groups.insert(p.pgid);
                        }
                        if p.sid != self.host_sid && p.sid > 1 {
                            g.sessions.insert(p.sid);
                        }
                    }
                }
                if kill && !running_root && !p.zombie && procfs::is_running(p.pid, p.start) {
                    crate::sys::signal_process(p.pid, libc::SIGKILL);
                    killed.push(Proc::from(p));
                }
                let ours_to_reap = matches!(owner, Owner::Gen(_) | Owner::Stray | Owner::Orphan)
                    || !self.looks_like_own_spawn(p);
                if p.ppid == self.host && p.zombie && !running_root && ours_to_reap {
                    let _ = crate::sys::reap(p.pid);
                }
            }
            // Forget dead processes, and ended generations nothing of which is left.
            let live: BTreeSet<Proc> = owners
                .iter()
                .filter(|(p, _)| !p.zombie)
                .map(|(p, _)| Proc::from(p))
                .collect();
            let mut i = 0;
            gens.retain_mut(|g| {
                let keep = g.running || alive_per_gen[i] > 0;
                i += 1;
                g.known.retain(|p| live.contains(p));
                keep
            });
        }
        if !killed.is_empty() {
            log::info!(
                "killed {} process(es) left by stopped plugins: {:?}",
                killed.len(),
                killed.iter().map(|p| p.pid).collect::<Vec<_>>()
            );
        }
        self.write_record();
        Sweep { owners, killed }
    }

    /// A direct child of the host as the host spawns them: a group leader (or in the host's
    /// group), in the host's session. The host never kills such a child unless a generation or the
    /// environment claims it (someone waits for it), and leaves reaping it to that someone.
    fn looks_like_own_spawn(&self, p: &ProcInfo) -> bool {
        p.ppid == self.host
            && p.sid == self.host_sid
            && (p.pgid == p.pid || p.pgid == self.host_pgid)
    }

    /// Write the record if it changed; remove it when nothing is left to record.
    fn write_record(&self) {
        let gens = self.gens.borrow();
        if gens.is_empty() {
            if !self.written.borrow().is_empty() {
                let _ = std::fs::remove_file(&self.record);
                self.written.borrow_mut().clear();
            }
            return;
        }
        let record = Record {
            boot_id: self.boot_id.clone(),
            generations: gens.clone(),
        };
        let Ok(text) = serde_json::to_string(&record) else {
            return;
        };
        if *self.written.borrow() == text {
            return;
        }
        let tmp = self.record.with_extension("json.tmp");
        let written =
            std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, &self.record));
        match written {
            Ok(()) => *self.written.borrow_mut() = text,
            Err(e) => log::warn!("cannot write {}: {e}", self.record.display()),
        }
    }
}

/// What a look found.
#[derive(Debug)]
pub(crate) struct Sweep {
    owners: Vec<(ProcInfo, Owner)>,
    /// The processes it killed.
    pub killed: Vec<Proc>,
}

/// Works out owners for one look, remembering each answer.
struct Judge<'a> {
    reaper: &'a Reaper,
    gens: &'a [Generation],
    by_pid: &'a HashMap<u32, &'a ProcInfo>,
    scope: Scope,
    memo: HashMap<u32, (Owner, bool)>,
}

impl Judge<'_> {
    fn owner(&mut self, p: &ProcInfo, depth: usize) -> Owner {
        self.resolve(p, depth).0
    }

    /// The owner of `p` and whether it descends from the host.
    fn resolve(&mut self, p: &ProcInfo, depth: usize) -> (Owner, bool) {
        if let Some(known) = self.memo.get(&p.pid) {
            return *known;
        }
        let answer = self.judge(p, depth);
        self.memo.insert(p.pid, answer);
        answer
    }

    fn judge(&mut self, p: &ProcInfo, depth: usize) -> (Owner, bool) {
        let r = self.reaper;
        let me = Proc::from(p);
        // 1. recorded.
        if let Some(i) = self
            .gens
            .iter()
            .rposition(|g| g.root == me || g.known.contains(&me))
        {
            return (Owner::Gen(i), p.ppid == r.host);
        }
        // 2. a group or session a generation formed.
        if let Some(i) = self.gens.iter().rposition(|g| {
            p.start >= g.root.start
                && ((g.groups.contains(&p.pgid) && self.still_formed_by(g, p.pgid))
                    || (g.sessions.contains(&p.sid) && self.still_formed_by(g, p.sid)))
        }) {
            return (Owner::Gen(i), p.ppid == r.host);
        }
        // 3. ancestry.
        let from_host = p.ppid == r.host;
        let parent = self.by_pid.get(&p.ppid).copied();
        let (parent_owner, parent_from_host) = match parent {
            Some(parent) if !from_host && depth < MAX_DEPTH && parent.start <= p.start => {
                self.resolve(parent, depth + 1)
            }
            _ => (Owner::None, false),
        };
        let descends = from_host || parent_from_host;
        if parent_owner != Owner::None {
            return (parent_owner, descends);
        }
        // 4. environment.
        if (descends || self.scope == Scope::Everything)
            && let Some(socket) = procfs::env_var(p.pid, toru_plugin_api::protocol::SOCKET_ENV)
        {
            let socket = PathBuf::from(socket);
            if socket.parent().and_then(Path::parent) == Some(r.sockets_dir.as_path()) {
                let newest = self
                    .gens
                    .iter()
                    .rposition(|g| g.socket == socket && g.root.start <= p.start);
                return (newest.map_or(Owner::Stray, Owner::Gen), descends);
            }
        }
        if from_host && !r.looks_like_own_spawn(p) {
            return (Owner::Orphan, true);
        }
        (Owner::None, descends)
    }

    /// Whether the group or session `id` recorded for `g` is still the one its process formed: the
    /// id is a pid, and if a process with that pid runs now it must be one of `g`'s (otherwise the
    /// pid was reused and the group or session is someone else's).
    fn still_formed_by(&self, g: &Generation, id: u32) -> bool {
        match self.by_pid.get(&id) {
            None => true,
            Some(leader) => {
                let leader = Proc::from(*leader);
                g.root == leader || g.known.contains(&leader)
            }
        }
    }
}

/// Wait until every process in `procs` has exited, up to `limit`; whether they all did. Each is
/// awaited through a pidfd (readable at its exit); where the kernel or an emulator offers none,
/// it is rechecked on a short doubling timer.
pub(crate) async fn wait_gone(procs: &[Proc], limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    for p in procs {
        let fd = crate::sys::pidfd_open(p.pid)
            .and_then(|fd| crate::sys::register_async(std::fs::File::from(fd)));
        let mut pause = Duration::from_millis(1);
        while procfs::is_running(p.pid, p.start) {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            match &fd {
                Ok(fd) => {
                    // Readable once the process has exited; the loop condition confirms it.
                    let _ = tokio::time::timeout_at(deadline, fd.readable()).await;
                }
                Err(_) => {
                    tokio::time::sleep(pause.min(deadline - now)).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reaper(gens: Vec<Generation>) -> Reaper {
        Reaper {
            host: 100,
            host_sid: 90,
            host_pgid: 95,
            sockets_dir: PathBuf::from("/run/toru/plugins"),
            record: PathBuf::from("/nonexistent/descendants.json"),
            boot_id: String::new(),
            gens: RefCell::new(gens),
            written: RefCell::new(String::new()),
        }
    }

    fn generation(root: u32, start: u64, running: bool) -> Generation {
        Generation {
            plugin: "p".into(),
            socket: PathBuf::from("/run/toru/plugins/p/plugin.sock"),
            root: Proc { pid: root, start },
            running,
            known: BTreeSet::new(),
            groups: [root].into_iter().collect(),
            sessions: BTreeSet::new(),
        }
    }

    fn proc(pid: u32, ppid: u32, pgid: u32, sid: u32, start: u64) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            pgid,
            sid,
            start,
            zombie: false,
        }
    }

    fn owners(r: &Reaper, procs: &[ProcInfo]) -> Vec<Owner> {
        let by_pid: HashMap<u32, &ProcInfo> = procs.iter().map(|p| (p.pid, p)).collect();
        let gens = r.gens.borrow();
        let mut j = Judge {
            reaper: r,
            gens: &gens,
            by_pid: &by_pid,
            scope: Scope::Host,
            memo: HashMap::new(),
        };
        procs.iter().map(|p| j.owner(p, 0)).collect()
    }

    #[test]
    fn a_plugin_tree_belongs_to_its_generation_by_root_group_and_ancestry() {
        let r = reaper(vec![generation(200, 1000, true)]);
        let procs = [
            proc(200, 100, 200, 90, 1000), // the root: spawned by the host, own group
            proc(201, 200, 200, 90, 1001), // a child in its group
            proc(202, 200, 202, 202, 1002), // a child that called setsid: found by ancestry
            proc(203, 202, 202, 202, 1003), // its child
            proc(300, 1, 300, 300, 5),     // someone else's
        ];
        assert_eq!(
            owners(&r, &procs),
            [
                Owner::Gen(0),
                Owner::Gen(0),
                Owner::Gen(0),
                Owner::Gen(0),
                Owner::None
            ]
        );
    }

    #[test]
    fn an_orphan_is_claimed_by_the_session_its_generation_formed_else_it_is_an_orphan() {
        let mut g = generation(200, 1000, false);
        g.sessions.insert(202);
        let r = reaper(vec![g]);
        let procs = [
            // The setsid child's own child, adopted by the host after its parent died.
            proc(203, 100, 202, 202, 1003),
            // An adopted process nobody claims (not shaped like a spawn of the host).
            proc(204, 100, 204, 204, 1004),
            // A child the host spawned itself (a `--metadata` run): left alone.
            proc(205, 100, 205, 90, 1005),
        ];
        assert_eq!(
            owners(&r, &procs),
            [Owner::Gen(0), Owner::Orphan, Owner::None]
        );
    }

    #[test]
    fn a_reused_group_id_is_not_claimed() {
        let mut g = generation(200, 1000, false);
        g.groups.insert(250);
        let r = reaper(vec![g]);
        let procs = [
            // Pid 250 now names another process that leads its own group: not the recorded one.
            proc(250, 1, 250, 250, 2000),
            proc(251, 250, 250, 250, 2001),
        ];
        assert_eq!(owners(&r, &procs), [Owner::None, Owner::None]);
    }

    #[test]
    fn a_process_older_than_a_generation_is_not_in_its_group() {
        let r = reaper(vec![generation(200, 1000, true)]);
        // Group 200 from before the root started (the pid was reused by the root since).
        let procs = [proc(260, 1, 200, 260, 10)];
        assert_eq!(owners(&r, &procs), [Owner::None]);
    }
}
