//! Isolation (issue 12, `docs/ISOLATION.md`): the `hostile` plugin attacks its confinement, one
//! mode per test, beside a well-behaved plugin (`hostile-ok`). Each attack must be refused or
//! contained — what the attacker saw is the outcome it writes into its data folder — while the
//! host answers `/api/health` throughout (a thread asks it over and over during the attack), the
//! other plugin stays ready (the same process, started once), and, where the limit is a cgroup's,
//! the right event (`limit`, `oom`) is recorded.
//!
//! The attacker is added only once `hostile-ok` is ready (installed, then `toru rescan`), so the
//! folder it aims at exists and the other plugin's baseline is known.
//!
//! What is in force depends on the machine: a root host runs each plugin as its own uid (the
//! tests that need that — own uid, `network = "none"`, `/etc/shadow` — print `skipped: needs
//! root` otherwise); Landlock and seccomp need the kernel's support, and cgroup limits a delegated
//! cgroup v2 subtree with controllers. Each test reads what is in force from
//! `GET /api/plugins/{id}/security` and expects what that promises: a refusal where a protection
//! is enforced, and where only an rlimit contains an attack (no cgroup controllers), the rlimit's
//! error (`EAGAIN`, `ENOMEM`) with the plugin still ready, instead of the cgroup's event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};
use support::package::PackageDir;
use support::{Bins, Host, HostOpts, PluginSrc, TempDir, eventually, is_root, try_http};

/// Quick restarts, so a plugin killed by a limit is back within seconds. The heartbeats keep their
/// defaults (5 s, 3 misses): an attacker is single-threaded and answers no ping while its attack
/// runs, which on a loaded machine can take seconds.
const FAST: &str =
    "[supervisor]\nbackoff_base_ms = 50\nshutdown_grace_ms = 1000\nterm_grace_ms = 500\n";

/// The uids plugins get by default (`uid_min` itself is the `--metadata` user).
const PLUGIN_UIDS: std::ops::RangeInclusive<u64> = 70001..=79999;

fn hostile(mode: &str) -> PluginSrc {
    PluginSrc::Built {
        bin: "hostile",
        as_name: format!("hostile-{mode}"),
    }
}

/// The real uid of process `pid` (its `/proc` entry may be root's: a process that changed its
/// credentials can be non-dumpable).
fn real_uid(pid: u64) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no Uid in {status}"))
}

/// Whether process `pid` runs under qemu-user (its `/proc/PID/exe` is the emulator).
fn emulated(pid: u64) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|exe| {
            exe.file_name()
                .map(|n| n.to_string_lossy().starts_with("qemu-"))
        })
        .unwrap_or(false)
}

fn skip(test: &str, why: &str) {
    eprintln!("{test}: skipped: {why}");
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_json(h: &Host, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok(&h.cli(&a, None))).unwrap()
}

/// `id` as `toru plugins --json` lists it, if it does.
fn plugin(h: &Host, id: &str) -> Option<Value> {
    cli_json(h, &["plugins"])
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .cloned()
}

/// Wait until `id` is ready; its listing then.
fn ready(h: &Host, id: &str) -> Value {
    eventually(&format!("{id} ready"), || {
        plugin(h, id).filter(|p| p["state"] == "ready")
    })
}

/// `id`'s events, oldest first.
fn events(h: &Host, id: &str) -> Vec<Value> {
    let mut v = cli_json(h, &["events", id, "--limit", "500"])
        .as_array()
        .unwrap()
        .clone();
    v.reverse();
    v
}

fn count(evs: &[Value], kind: &str) -> usize {
    evs.iter().filter(|e| e["kind"] == kind).count()
}

/// The outcome `id` wrote (`<id>.outcome` in its data folder), once it is there.
fn outcome(h: &Host, id: &str) -> Value {
    let file = format!("{id}.outcome");
    eventually(&file, || serde_json::from_str(&h.read_report(&file)?).ok())
}

/// An admin token (a password is set first: the host asks for one before tokens).
fn token(h: &Host) -> String {
    ok(&h.cli(&["passwd"], Some("correct horse battery\n")));
    ok(&h.cli(&["token", "create", "tests"], None))
        .trim()
        .to_string()
}

fn security(h: &Host, tok: &str, id: &str) -> Value {
    let r = h.http(
        "GET",
        &format!("/api/plugins/{id}/security"),
        &[("Authorization", &format!("Bearer {tok}"))],
        None,
    );
    assert_eq!(
        r.status,
        200,
        "GET /api/plugins/{id}/security: {}",
        r.text()
    );
    r.json()
}

/// The state of protection `name` in a security answer (`enforced`, `degraded`, `off`; `absent`
/// when it is not listed).
fn protection(sec: &Value, name: &str) -> String {
    sec["protections"]
        .as_array()
        .unwrap_or_else(|| panic!("no protections in {sec}"))
        .iter()
        .find(|p| p["name"] == name)
        .map_or("absent", |p| p["state"].as_str().unwrap())
        .to_string()
}

fn enforced(sec: &Value, name: &str) -> bool {
    protection(sec, name) == "enforced"
}

/// The errno name an outcome's `error` starts with.
fn errno(o: &Value) -> &str {
    o["error"]
        .as_str()
        .and_then(|e| e.split_whitespace().next())
        .unwrap_or_else(|| panic!("no error in {o}"))
}

/// A thread asking `/api/health` again and again until [`HealthWatch::finish`]: the host must
/// answer every time, whatever a plugin is doing meanwhile.
struct HealthWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, Vec<String>)>,
}

impl HealthWatch {
    fn start(h: &Host) -> HealthWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, addr) = (stop.clone(), h.addr);
        let thread = std::thread::spawn(move || {
            let (mut answered, mut failures) = (0u64, Vec::new());
            while !flag.load(Ordering::SeqCst) {
                match try_http(addr, "GET", "/api/health", &[], None) {
                    Ok(r) if r.status == 200 => answered += 1,
                    Ok(r) => failures.push(format!("{}: {}", r.status, r.text())),
                    Err(e) => failures.push(e.to_string()),
                }
                // Pacing only (not waiting for anything): leave the 2 cores to the attack.
                std::thread::sleep(Duration::from_millis(20));
            }
            (answered, failures)
        });
        HealthWatch { stop, thread }
    }

    /// Stop asking; panics if any answer was not `200` (or none came).
    fn finish(self, h: &Host) {
        self.stop.store(true, Ordering::SeqCst);
        let (answered, failures) = self.thread.join().unwrap();
        assert!(
            failures.is_empty(),
            "/api/health failed during the attack: {failures:?}\nlog:\n{}",
            h.log()
        );
        assert!(answered > 0, "no /api/health answer during the attack");
        assert_eq!(h.http("GET", "/api/health", &[], None).status, 200);
    }
}

/// A host running `hostile-ok` (ready, its outcome written), with an admin token.
struct Scene {
    h: Host,
    tok: String,
    /// `hostile-ok`'s pid before the attack.
    ok_pid: u64,
    /// `hostile-ok`'s security answer (the host's protections, as any plugin gets them).
    ok_sec: Value,
    /// `hostile-ok`'s outcome: what it saw of its confinement from inside.
    ok_seen: Value,
}

impl Scene {
    fn start(config: &str) -> Scene {
        let h = Host::start(HostOpts {
            plugins: vec![hostile("ok")],
            config: Some(format!("{FAST}{config}")),
            ..Default::default()
        });
        let ok_pid = ready(&h, "hostile-ok")["pid"].as_u64().unwrap();
        let ok_seen = outcome(&h, "hostile-ok");
        assert_eq!(ok_seen["refused"], false, "{ok_seen}");
        let tok = token(&h);
        let ok_sec = security(&h, &tok, "hostile-ok");
        Scene {
            h,
            tok,
            ok_pid,
            ok_sec,
            ok_seen,
        }
    }

    /// Add `hostile-<mode>` to the running host (install, rescan) while `/api/health` is watched;
    /// `until` says when the attack is over (its outcome, or an event). The watch is finished,
    /// and `hostile-ok` checked, after it.
    fn attack<T>(&self, mode: &str, until: impl FnOnce(&Host) -> T) -> T {
        let watch = HealthWatch::start(&self.h);
        support::install(&self.h.plugins_dir, &hostile(mode));
        ok(&self.h.cli(&["rescan"], None));
        let done = until(&self.h);
        watch.finish(&self.h);
        self.other_unharmed();
        done
    }

    /// `hostile-ok` still ready: the same process, started once, never crashed.
    fn other_unharmed(&self) {
        let p = ready(&self.h, "hostile-ok");
        assert_eq!(p["pid"].as_u64(), Some(self.ok_pid), "{p}");
        let evs = events(&self.h, "hostile-ok");
        assert_eq!(count(&evs, "started"), 1, "{evs:?}");
        assert_eq!(count(&evs, "crashed"), 0, "{evs:?}");
    }

    /// The attacker `id` survived its attack: ready, never crashed.
    fn still_ready(&self, id: &str) {
        ready(&self.h, id);
        let evs = events(&self.h, id);
        assert_eq!(count(&evs, "crashed"), 0, "{evs:?}");
    }

    /// Whether the kernel says a seccomp filter is in force (`Seccomp: 2` in the other plugin's
    /// `/proc/self/status`; the security answer must then say so too, checked by
    /// `security_reports_the_uid_folders_and_protections_of_a_plugin`).
    fn seccomp_filtered(&self) -> bool {
        self.ok_seen["detail"]["seccomp"] == 2
    }

    /// Whether the attacker should not reach the files of the host and the other plugins: it
    /// has its own uid (root host) or Landlock is in force — as the security answer says, or as
    /// the other plugin found (it could not list the host's data dir).
    fn files_confined(&self) -> bool {
        enforced(&self.ok_sec, "user")
            || enforced(&self.ok_sec, "landlock")
            || self.ok_seen["detail"]["data_dir_listable"] == false
    }
}

#[test]
fn security_reports_the_uid_folders_and_protections_of_a_plugin() {
    let s = Scene::start("");
    let (h, sec, o) = (&s.h, &s.ok_sec, &s.ok_seen);
    let env = &o["detail"]["env"];

    // Folders: the private one is TORU_PLUGIN_DATA, 0700, with its TMPDIR inside; both writable.
    let data = h.plugin_data("hostile-ok");
    assert_eq!(sec["folders"]["data"], data.to_str().unwrap(), "{sec}");
    assert_eq!(env["TORU_PLUGIN_DATA"], data.to_str().unwrap(), "{o}");
    assert_eq!(env["TMPDIR"], data.join("tmp").to_str().unwrap(), "{o}");
    assert_eq!(o["detail"]["data_writable"], true, "{o}");
    assert_eq!(o["detail"]["tmp_writable"], true, "{o}");
    let meta = std::fs::metadata(&data).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700, "{}", data.display());
    let socket = h.runtime_dir.join("plugins/hostile-ok/plugin.sock");
    assert_eq!(sec["folders"]["socket"], socket.to_str().unwrap(), "{sec}");
    assert_eq!(env["TORU_PLUGIN_SOCKET"], socket.to_str().unwrap(), "{o}");

    // Protections are listed with a state (those that apply here at least: the user, rlimits and
    // no_new_privs always); the unprivileged ones are always in force.
    let names: BTreeSet<&str> = sec["protections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let state = p["state"].as_str().unwrap();
            assert!(["enforced", "degraded", "off"].contains(&state), "{p}");
            p["name"].as_str().unwrap()
        })
        .collect();
    let expected = [
        "user",
        "landlock",
        "seccomp",
        "cgroup",
        "network",
        "rlimits",
        "no_new_privs",
    ];
    assert!(names.iter().all(|n| expected.contains(n)), "{sec}");
    for always in ["user", "rlimits", "no_new_privs"] {
        assert!(names.contains(always), "{always}: {sec}");
    }
    assert!(enforced(sec, "no_new_privs"), "{sec}");
    assert_eq!(o["detail"]["no_new_privs"], 1, "{o}");
    // What the kernel has in force, the answer says: a seccomp filter (docs/ISOLATION.md).
    if o["detail"]["seccomp"] == 2 {
        assert!(
            enforced(sec, "seccomp"),
            "Seccomp: 2 in the plugin's status, but {sec}"
        );
    }
    assert!(enforced(sec, "rlimits"), "{sec}");
    assert_eq!(sec["network"], "any", "{sec}");
    assert_eq!(sec["limits"]["open_files"]["value"], 1024, "{sec}");
    assert_eq!(sec["limits"]["open_files"]["source"], "default", "{sec}");

    let uid = o["detail"]["uid"].as_array().unwrap();
    if !is_root() {
        // Only Landlock keeps a plugin running as the host's user out of the host's data dir.
        if o["detail"]["data_dir_listable"] == false {
            assert!(
                enforced(sec, "landlock"),
                "the plugin cannot list the data dir, but {sec}"
            );
        }
        assert_eq!(sec["isolation"], "off", "{sec}");
        assert_eq!(sec["reason"], "the host does not run as root", "{sec}");
        assert_eq!(protection(sec, "user"), "off", "{sec}");
        let me = std::fs::metadata("/proc/self").unwrap().uid();
        assert!(uid.iter().all(|u| u == me), "{o}");
        skip(
            "security_reports_the_uid_folders_and_protections_of_a_plugin",
            "needs root (own uid and folder ownership; the rest was checked)",
        );
        return;
    }
    assert_eq!(sec["isolation"], "on", "{sec}");
    assert_eq!(sec["reason"], Value::Null, "{sec}");
    assert!(enforced(sec, "user"), "{sec}");
    let id = sec["user"]["uid"].as_u64().unwrap();
    assert!(PLUGIN_UIDS.contains(&id), "{sec}");
    assert_eq!(sec["user"]["gid"].as_u64(), Some(id), "{sec}");
    // Real, effective, saved and filesystem ids are all the plugin's; no group of the host's.
    assert!(uid.iter().all(|u| u.as_u64() == Some(id)), "{o}");
    let gid = o["detail"]["gid"].as_array().unwrap();
    assert!(gid.iter().all(|g| g.as_u64() == Some(id)), "{o}");
    assert_eq!(o["detail"]["groups"], json!([]), "{o}");
    let id32 = u32::try_from(id).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (id32, id32));
    let tmp = std::fs::metadata(data.join("tmp")).unwrap();
    assert_eq!((tmp.uid(), tmp.mode() & 0o777), (id32, 0o700));
    let sock_dir = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!((sock_dir.uid(), sock_dir.mode() & 0o777), (id32, 0o700));
    // The folders above it: traversal only.
    for dir in [&h.data_dir, &h.data_dir.join("plugin-data")] {
        let m = std::fs::metadata(dir).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o711), "{}", dir.display());
    }
}

/// Each plugin id has its own uid, kept in the store: the same after the host restarts.
#[test]
fn each_plugin_runs_as_its_own_uid_kept_across_restarts() {
    if !is_root() {
        return skip(
            "each_plugin_runs_as_its_own_uid_kept_across_restarts",
            "needs root",
        );
    }
    let opts = HostOpts {
        plugins: vec![hostile("ok"), hostile("read-shadow")],
        config: Some(FAST.into()),
        ..Default::default()
    };
    let mut h = Host::start(opts.clone());
    let uids = |h: &Host| -> Vec<u32> {
        ["hostile-ok", "hostile-read-shadow"]
            .iter()
            .map(|id| {
                let pid = ready(h, id)["pid"].as_u64().unwrap();
                real_uid(pid)
            })
            .collect()
    };
    let first = uids(&h);
    assert_ne!(first[0], first[1], "{first:?}");
    for u in &first {
        assert!(PLUGIN_UIDS.contains(&u64::from(*u)), "{first:?}");
    }
    h.stop();
    h.restart(HostOpts {
        plugins: vec![],
        ..opts
    });
    assert_eq!(uids(&h), first);
}

/// A root host whose folders lie under a folder other users cannot pass (a checkout under
/// `/root`, mode 0700) cannot give plugins uids of their own: they still run, as the host's user,
/// and the security answer says isolation is off and which folder is why.
#[test]
fn behind_a_private_folder_plugins_run_as_the_host_and_say_why() {
    use std::os::unix::fs::PermissionsExt;
    if !is_root() {
        return skip(
            "behind_a_private_folder_plugins_run_as_the_host_and_say_why",
            "needs root",
        );
    }
    let root = support::temp_dir("private");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
    let h = Host::start(HostOpts {
        root: Some(root.clone()),
        plugins: vec![hostile("ok")],
        config: Some(FAST.into()),
        ..Default::default()
    });
    let pid = ready(&h, "hostile-ok")["pid"].as_u64().unwrap();
    assert_eq!(real_uid(pid), 0, "runs as the host's user");
    let sec = security(&h, &token(&h), "hostile-ok");
    assert_eq!(sec["isolation"], "off", "{sec}");
    let reason = sec["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not reachable by other users") && reason.contains("mode 700"),
        "{sec}"
    );
    assert_eq!(protection(&sec, "user"), "off", "{sec}");
}

#[test]
fn reading_the_store_file_is_refused() {
    let s = Scene::start("");
    if !s.files_confined() {
        return skip(
            "reading_the_store_file_is_refused",
            "needs root or Landlock (neither is in force here)",
        );
    }
    let o = s.attack("read-store", |h| outcome(h, "hostile-read-store"));
    let store = s.h.data_dir.join("toru.redb");
    assert_eq!(o["detail"]["path"], store.to_str().unwrap(), "{o}");
    assert_eq!(o["refused"], true, "{o}");
    assert_eq!(errno(&o), "EACCES", "{o}");
    s.still_ready("hostile-read-store");
}

#[test]
fn writing_into_another_plugins_folders_is_refused() {
    let s = Scene::start("");
    if !s.files_confined() {
        return skip(
            "writing_into_another_plugins_folders_is_refused",
            "needs root or Landlock (neither is in force here)",
        );
    }
    let o = s.attack("write-other", |h| outcome(h, "hostile-write-other"));
    assert_eq!(o["refused"], true, "{o}");
    // Both: the other's data folder and its install folder (here the plugins dir).
    for place in ["data", "install"] {
        let e = o["detail"][place]["error"].as_str().unwrap_or("none");
        assert!(
            e.starts_with("EACCES") || e.starts_with("EROFS"),
            "{place}: {o}"
        );
    }
    let other = s.h.plugin_data("hostile-ok");
    assert_eq!(
        o["detail"]["data"]["path"]
            .as_str()
            .map(Path::new)
            .and_then(Path::parent),
        Some(other.as_path()),
        "{o}"
    );
    for dir in [&other, &s.h.plugins_dir] {
        let planted: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("hostile-was-here")
            })
            .collect();
        assert!(planted.is_empty(), "{planted:?} in {}", dir.display());
    }
    s.still_ready("hostile-write-other");
}

#[test]
fn reading_etc_shadow_is_refused() {
    if !is_root() {
        return skip(
            "reading_etc_shadow_is_refused",
            "needs root (the plugin must run as another uid than the test's)",
        );
    }
    let s = Scene::start("");
    let o = s.attack("read-shadow", |h| outcome(h, "hostile-read-shadow"));
    assert_eq!(o["refused"], true, "{o}");
    assert_eq!(errno(&o), "EACCES", "{o}");
    s.still_ready("hostile-read-shadow");
}

/// 10 000 forks: held at the process limit, by the cgroup's `pids.max` (a `limit` event; the
/// plugin is stopped and restarted like after a crash) or, without cgroup controllers, by
/// `RLIMIT_NPROC` of the plugin's own uid (the fork fails with `EAGAIN`, the plugin stays ready).
#[test]
fn a_fork_bomb_is_held_at_the_process_limit() {
    let s = Scene::start("[limits]\nprocesses = 64\n");
    let cgroup = enforced(&s.ok_sec, "cgroup");
    if !cgroup && !is_root() {
        return skip(
            "a_fork_bomb_is_held_at_the_process_limit",
            "needs root (RLIMIT_NPROC counts a plugin's own uid) or a cgroup with the pids controller",
        );
    }
    if cgroup {
        let ev = s.attack("fork", |h| {
            // If this times out with the plugin's outcome saying EAGAIN: RLIMIT_NPROC is checked
            // before the cgroup's pids.max, so with equal figures the rlimit refuses the fork
            // and the cgroup never records `max` (no event).
            eventually(
                "a limit event (see the comment above if the fork got EAGAIN)",
                || {
                    events(h, "hostile-fork")
                        .into_iter()
                        .find(|e| e["kind"] == "limit")
                },
            )
        });
        assert_eq!(ev["details"]["limit"], "processes", "{ev}");
        assert_eq!(ev["details"]["value"], 64, "{ev}");
        let msg = ev["message"].as_str().unwrap();
        assert!(
            msg.starts_with("process limit reached: 64 processes"),
            "{ev}"
        );
        // Treated as a crash: restarted.
        eventually("hostile-fork restarted", || {
            let evs = events(&s.h, "hostile-fork");
            (count(&evs, "started") >= 2).then_some(())
        });
    } else {
        let o = s.attack("fork", |h| outcome(h, "hostile-fork"));
        assert_eq!(o["refused"], true, "{o}");
        assert_eq!(errno(&o), "EAGAIN", "{o}");
        let forked = o["detail"]["forked"].as_u64().unwrap();
        assert!(forked < 64, "{o}");
        s.still_ready("hostile-fork");
    }
    let sec = security(&s.h, &s.tok, "hostile-fork");
    assert_eq!(sec["limits"]["processes"]["value"], 64, "{sec}");
    assert_eq!(sec["limits"]["processes"]["source"], "default", "{sec}");
}

/// 1 GiB touched in 16 MiB steps: held at the memory limit by the cgroup's `memory.max` (killed,
/// an `oom` event with the figure), or, without cgroup controllers, by `RLIMIT_AS` (the mapping
/// fails with `ENOMEM` below the limit, the plugin stays ready).
#[test]
fn a_memory_hog_is_held_at_its_limit() {
    const MIB: u64 = 1 << 20;
    let s = Scene::start("[limits]\naddress_space = \"512M\"\nmemory = \"256M\"\n");
    let cgroup = enforced(&s.ok_sec, "cgroup");
    if !cgroup && emulated(s.ok_pid) {
        // qemu-user does not pass RLIMIT_AS on: it would limit the emulator's own allocations.
        return skip(
            "a_memory_hog_is_held_at_its_limit",
            "needs a cgroup with the memory controller under qemu-user (it ignores RLIMIT_AS)",
        );
    }
    if cgroup {
        let ev = s.attack("alloc", |h| {
            eventually("an oom event", || {
                events(h, "hostile-alloc")
                    .into_iter()
                    .find(|e| e["kind"] == "oom")
            })
        });
        assert_eq!(ev["details"]["limit_bytes"], 256 * MIB, "{ev}");
        let msg = ev["message"].as_str().unwrap();
        assert!(
            msg.starts_with("out of memory: killed at its 256.0 MiB limit"),
            "{ev}"
        );
        eventually("hostile-alloc restarted", || {
            let evs = events(&s.h, "hostile-alloc");
            (count(&evs, "started") >= 2).then_some(())
        });
    } else {
        let o = s.attack("alloc", |h| outcome(h, "hostile-alloc"));
        assert_eq!(o["refused"], true, "{o}");
        assert_eq!(errno(&o), "ENOMEM", "{o}");
        let bytes = o["detail"]["bytes"].as_u64().unwrap();
        assert!(bytes < 512 * MIB, "{o}");
        s.still_ready("hostile-alloc");
    }
    let sec = security(&s.h, &s.tok, "hostile-alloc");
    assert_eq!(sec["limits"]["address_space"]["value"], 512 * MIB, "{sec}");
    assert_eq!(sec["limits"]["memory"]["value"], 256 * MIB, "{sec}");
}

/// 100 000 opens: `EMFILE` at the open-files limit (`[limits] open_files`), the plugin ready.
#[test]
fn opening_files_stops_at_the_open_files_limit() {
    let s = Scene::start("[limits]\nopen_files = 200\n");
    let o = s.attack("open-files", |h| outcome(h, "hostile-open-files"));
    assert_eq!(o["refused"], true, "{o}");
    assert_eq!(errno(&o), "EMFILE", "{o}");
    // Some descriptors are already open: its socket, pipes, under qemu-user the emulator's own.
    let opened = o["detail"]["opened"].as_u64().unwrap();
    assert!((100..200).contains(&opened), "{o}");
    s.still_ready("hostile-open-files");
}

/// `network = "none"`: a packaged plugin that asks for it cannot reach a loopback port that an
/// unpackaged one (network `any`) reaches.
#[test]
fn network_none_cannot_connect_to_loopback() {
    if !is_root() {
        return skip(
            "network_none_cannot_connect_to_loopback",
            "needs root (network = \"none\" is degraded without it)",
        );
    }
    let s = Scene::start("[packages]\nallow_unsigned = true\nprobation_secs = 0\n");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    // The control: with the host's network it connects.
    let reached = s.attack(&format!("connect-{port}"), |h| {
        outcome(h, &format!("hostile-connect-{port}"))
    });
    assert_eq!(reached["refused"], false, "{reached}");
    listener.accept().unwrap();

    let work = TempDir::new("iso-net").unwrap();
    let bins = Bins::locate().unwrap();
    let pkg = work.join("hostile-net.toru");
    PackageDir::hostile(
        &bins,
        &work.join("src"),
        "hostile-net",
        "connect",
        "[permissions]\nnetwork = \"none\"\nreason = \"tests\"\n",
        &json!({ "port": port }),
    )
    .unwrap()
    .pack_ok(&bins, None, &pkg)
    .unwrap();
    let watch = HealthWatch::start(&s.h);
    ok(&s.h.cli(&["plugin", "install", pkg.to_str().unwrap()], None));
    let o = outcome(&s.h, "hostile-net");
    watch.finish(&s.h);
    s.other_unharmed();
    assert_eq!(o["refused"], true, "{o}");
    assert!(
        ["ENETUNREACH", "ECONNREFUSED", "ENETDOWN"].contains(&errno(&o)),
        "{o}"
    );
    listener.set_nonblocking(true).unwrap();
    let e = listener.accept().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
    let sec = security(&s.h, &s.tok, "hostile-net");
    assert_eq!(sec["network"], "none", "{sec}");
    assert!(enforced(&sec, "network"), "{sec}");
    s.still_ready("hostile-net");
}

/// `ptrace` of the host (its parent) and `PTRACE_TRACEME` are refused (seccomp: `EPERM`); the
/// host is not stopped.
#[test]
fn ptrace_is_refused() {
    let s = Scene::start("");
    if !s.seccomp_filtered() {
        return skip("ptrace_is_refused", "needs seccomp (not in force here)");
    }
    let o = s.attack("ptrace", |h| outcome(h, "hostile-ptrace"));
    assert_eq!(o["refused"], true, "{o}");
    assert_eq!(
        o["detail"]["parent"].as_u64(),
        Some(u64::from(s.h.pid())),
        "{o}"
    );
    for call in ["attach", "traceme"] {
        let e = o["detail"][call].as_str().unwrap_or("none");
        assert!(e.starts_with("EPERM"), "{call}: {o}");
    }
    s.still_ready("hostile-ptrace");
}

#[test]
fn mount_is_refused() {
    let s = Scene::start("");
    let o = s.attack("mount", |h| outcome(h, "hostile-mount"));
    assert_eq!(o["refused"], true, "{o}");
    assert_eq!(errno(&o), "EPERM", "{o}");
    let target = s.h.plugin_data("hostile-mount").join("mnt");
    assert_eq!(o["detail"]["target"], target.to_str().unwrap(), "{o}");
    s.still_ready("hostile-mount");
}

/// A new user namespace (where the plugin would be root) is refused (seccomp: `EPERM`).
#[test]
fn unshare_of_a_user_namespace_is_refused() {
    let s = Scene::start("");
    if !s.seccomp_filtered() {
        return skip(
            "unshare_of_a_user_namespace_is_refused",
            "needs seccomp (not in force here)",
        );
    }
    let o = s.attack("unshare", |h| outcome(h, "hostile-unshare"));
    assert_eq!(o["refused"], true, "{o}");
    assert_eq!(errno(&o), "EPERM", "{o}");
    s.still_ready("hostile-unshare");
}
