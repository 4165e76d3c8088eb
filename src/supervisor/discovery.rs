//! Discovery: which `*.binary` files are plugins, and which plugin id and route each may have.
//!
//! A scan has two halves; the supervisor's `rescan` runs one, then applies the other's outcome.
//!
//! **Probing** ([`probe`]) runs `--metadata` of every file that changed since its metadata was last
//! read (its [`FileStamp`]: device, inode, size, mtime and ctime), at most
//! [`MAX_PARALLEL_METADATA`] at once, each on its own local task. Each run is the leader of its own
//! process group (the plugins' clean environment, `PR_SET_PDEATHSIG`), and the group is killed
//! whole when the run ends, however it ends: the leader exits (what it left behind goes, so nothing
//! holds the output pipe open), the output passes [`MAX_METADATA_BYTES`], the timeout passes, or
//! the probe is dropped — a host that stops cancels a scan by dropping its probe. Probing changes
//! nothing, so abandoning it at any await is safe.
//!
//! **Resolving** ([`resolve`]) is pure. An id belongs to the claimant it was first bound to
//! (`PluginBinding` in the store: the file name the id was first registered from). Given the valid
//! claims, the stored bindings and the running plugins, it decides:
//! - an id bound to a file goes to that file; a claim from any other file is refused, naming the
//!   bound one. When the bound file no longer claims the id (removed, renamed, or it claims another
//!   id now), every claim is refused, and the message says how an admin hands the id over:
//!   `toru plugins unbind ID`, then a rescan. A running plugin counts as bound to its file for the
//!   rest of the host's run, even if the store could not persist the binding.
//! - an id nobody holds goes to its only claimant; of several, to the one named after it
//!   (`ID.binary`); when none is, all are refused, each naming the others. Never by sort order.
//! - of several claims on one route, the plugin serving it keeps it; otherwise the one whose id was
//!   bound first; when none was bound before the others, all are refused.
//!
//! The accepted claims whose id had no stored binding come back with one to persist.
//!
//! An installed package's active executable claims under the name `package:<id>` ([`claim_name`]);
//! the package transaction binds the id to that name (with the publisher's key) when it switches
//! versions, so the rules above hold for packages unchanged: a `*.binary` file cannot take a
//! packaged id, and a package cannot take an id a file holds.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;
use toru_plugin_api::protocol::PluginMetadata;

use super::process::{self, Discovered, MAX_METADATA_BYTES};
use crate::store::PluginBinding;

/// Most `--metadata` runs at once. They are short-lived and mostly wait; the bound keeps a plugins
/// dir full of hanging binaries from starting hundreds of processes at once.
pub(crate) const MAX_PARALLEL_METADATA: usize = 8;

/// What identifies a file's content without reading it: a file replaced (renamed over, rewritten,
/// touched, chmodded) gets a new stamp, so its metadata is read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of `path` (following symlinks), `None` if it cannot be read.
    pub(crate) fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// How the claim of an installed package is named (`package:<id>`): in bindings, refusals and
/// the running plugins' holders, where a file's claim has its file name.
pub(crate) const PACKAGE_CLAIM: &str = "package:";

/// The name `binary`'s claim goes by: `package:<id>` for the executable of an installed package
/// (`<packages-dir>/<id>/<version>/…`), else its file name.
pub(crate) fn claim_name(packages_dir: &Path, binary: &Path) -> String {
    let packaged = binary
        .strip_prefix(packages_dir)
        .ok()
        .and_then(|rest| rest.components().next())
        .map(|id| id.as_os_str().to_string_lossy().into_owned());
    match packaged {
        Some(id) => format!("{PACKAGE_CLAIM}{id}"),
        None => file_name(binary),
    }
}

/// The file name of `path` (`hello-rust.binary`), which bindings record.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// How the reason for a `--metadata` run that timed out starts (`InvalidPlugin::timed_out`).
pub(crate) const METADATA_TIMED_OUT: &str = "--metadata did not finish within";

/// What probing one file found.
#[derive(Debug)]
pub(crate) struct Probe {
    /// The file.
    pub binary: PathBuf,
    /// Its stamp before `--metadata` ran (a change during the run shows at the next scan).
    pub stamp: Option<FileStamp>,
    /// Its metadata, or why it is not a plugin.
    pub result: Result<Discovered, String>,
    /// Whether `--metadata` ran now (`false`: the file had not changed since it last did).
    pub fresh: bool,
}

/// Metadata read by earlier scans, by file, with the stamp the file had then.
pub(crate) type ReadCache = BTreeMap<PathBuf, (FileStamp, Discovered)>;

/// Probe `binaries`: the ones `cache` holds with an unchanged stamp keep their metadata, the others
/// run `--metadata` (at most [`MAX_PARALLEL_METADATA`] at once, each within `timeout`). Results are
/// in the order of `binaries`. Must run inside a `LocalSet`; dropping the future kills every run
/// still going, with its process group.
pub(crate) async fn probe(
    binaries: Vec<PathBuf>,
    cache: &ReadCache,
    timeout: Duration,
    isolation: &super::isolation::HostIsolation,
) -> Vec<Probe> {
    let mut done: Vec<Option<Probe>> = Vec::with_capacity(binaries.len());
    let mut waiting = std::collections::VecDeque::new();
    for (i, binary) in binaries.into_iter().enumerate() {
        let stamp = FileStamp::of(&binary);
        match (stamp, cache.get(&binary)) {
            (Some(now), Some((then, found))) if now == *then => done.push(Some(Probe {
                binary,
                stamp,
                result: Ok(found.clone()),
                fresh: false,
            })),
            _ => {
                done.push(None);
                waiting.push_back((i, binary, stamp));
            }
        }
    }
    // Dropped with this future: every task still running is aborted, which drops its run.
    let mut runs = JoinSet::new();
    let mut by_task = BTreeMap::new();
    loop {
        while runs.len() < MAX_PARALLEL_METADATA {
            let Some((i, binary, stamp)) = waiting.pop_front() else {
                break;
            };
            let path = binary.clone();
            let iso = isolation.clone();
            let task = runs.spawn_local(async move { read_metadata(&path, timeout, &iso).await });
            by_task.insert(task.id(), (i, binary, stamp));
        }
        let Some(joined) = runs.join_next_with_id().await else {
            break;
        };
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(e) => (e.id(), Err(format!("--metadata could not be read: {e}"))),
        };
        if let Some((i, binary, stamp)) = by_task.remove(&id) {
            done[i] = Some(Probe {
                binary,
                stamp,
                result,
                fresh: true,
            });
        }
    }
    done.into_iter().flatten().collect()
}

/// Kills a `--metadata` run's process group when dropped (and when asked earlier).
struct GroupKill(u32);

impl GroupKill {
    fn kill(&self) {
        process::signal_group(self.0, libc::SIGKILL);
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run `binary --metadata` within `timeout` and an output cap, in its own process group that is
/// killed whole when the run ends (see the module doc), and validate what it printed.
pub(crate) async fn read_metadata(
    binary: &Path,
    timeout: Duration,
    isolation: &super::isolation::HostIsolation,
) -> Result<Discovered, String> {
    let plan = isolation.metadata_plan(binary);
    let mut child = process::spawn_metadata(binary, crate::confine::prepare(plan))
        .await
        .map_err(|e| format!("cannot run --metadata: {e}"))?;
    let pid = child
        .id()
        .ok_or_else(|| "--metadata exited before it could be watched".to_string())?;
    // Declared after `child`, so dropped before it: the group is killed while its leader is not
    // yet reaped, so the group id cannot have been reused.
    let group = GroupKill(pid);
    let mut stdout = child.stdout.take().ok_or_else(|| "no stdout".to_string())?;
    let read = async {
        let mut out = Vec::new();
        (&mut stdout)
            .take(MAX_METADATA_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| format!("reading --metadata output: {e}"))?;
        if out.len() > MAX_METADATA_BYTES {
            return Err(format!(
                "--metadata printed more than {MAX_METADATA_BYTES} bytes"
            ));
        }
        Ok(out)
    };
    let exited = async {
        let status = child
            .wait()
            .await
            .map_err(|e| format!("waiting for --metadata: {e}"))?;
        // The leader is done: what it left in its group goes now, and with it the last writer of
        // the pipe, so the read ends. (The leader is reaped by now; its group id could only be
        // reused once the group is empty, and then there is nothing left to hit.)
        group.kill();
        if status.success() {
            Ok(())
        } else {
            Err(format!("--metadata {}", process::describe_exit(&status).0))
        }
    };
    let out = match tokio::time::timeout(timeout, async { tokio::try_join!(read, exited) }).await {
        Ok(r) => r?.0,
        Err(_) => {
            return Err(format!("{METADATA_TIMED_OUT} {} ms", timeout.as_millis()));
        }
    };
    let metadata = PluginMetadata::parse(&out).map_err(|e| e.to_string())?;
    let protocol = metadata.validate().map_err(|e| e.to_string())?;
    Ok(Discovered {
        binary: binary.to_path_buf(),
        metadata,
        protocol,
    })
}

/// A valid claim: a file whose metadata asks for an id and a route.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    /// The claimant: the file's name in the plugins dir (a package would add its publisher's key).
    pub file: String,
    /// What its `--metadata` said.
    pub found: Discovered,
    /// Whether the metadata was read now (the file is new or changed) rather than remembered.
    pub fresh: bool,
}

impl Claim {
    fn id(&self) -> &str {
        &self.found.metadata.id
    }

    fn route(&self) -> &str {
        &self.found.metadata.route
    }
}

/// A plugin the host runs now: the file it runs from and the route it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    /// Its file name.
    pub file: String,
    /// Its route.
    pub route: String,
}

/// A claim that gets its id and route.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    /// The claim.
    pub claim: Claim,
    /// The binding to persist when the id had none stored.
    pub bind: Option<PluginBinding>,
}

/// What [`resolve`] decided.
#[derive(Debug, Default)]
pub(crate) struct Resolution {
    /// Claims that get their id and route, in file order.
    pub accepted: Vec<Accepted>,
    /// Refused claims: the file name and why.
    pub refused: Vec<(String, String)>,
}

/// Decide which claim gets each id and each route (the rules are in the module doc). `claims` are
/// the valid ones of one scan; `bound` the stored bindings by id; `running` the plugins running
/// now by id; `now` stamps new bindings.
pub(crate) fn resolve(
    claims: Vec<Claim>,
    bound: &BTreeMap<String, PluginBinding>,
    running: &BTreeMap<String, Holder>,
    now: DateTime<Utc>,
) -> Resolution {
    let mut out = Resolution::default();
    let winners = resolve_ids(claims, bound, running, &mut out.refused);
    let mut by_route: BTreeMap<String, Vec<Winner>> = BTreeMap::new();
    for w in winners {
        by_route
            .entry(w.claim.route().to_owned())
            .or_default()
            .push(w);
    }
    for (route, contenders) in by_route {
        resolve_route(&route, contenders, running, now, &mut out);
    }
    out.accepted.sort_by(|a, b| a.claim.file.cmp(&b.claim.file));
    out.refused.sort();
    out
}

/// A claim that got its id, with the time the id was bound (`None`: by this scan).
#[derive(Debug)]
struct Winner {
    claim: Claim,
    since: Option<DateTime<Utc>>,
}

/// The claim each id goes to; the others go to `refused` with the reason.
fn resolve_ids(
    claims: Vec<Claim>,
    bound: &BTreeMap<String, PluginBinding>,
    running: &BTreeMap<String, Holder>,
    refused: &mut Vec<(String, String)>,
) -> Vec<Winner> {
    let mut by_id: BTreeMap<String, Vec<Claim>> = BTreeMap::new();
    for c in claims {
        by_id.entry(c.id().to_owned()).or_default().push(c);
    }
    let mut winners = Vec::new();
    for (id, claims) in by_id {
        let stored = bound.get(&id);
        let owner = stored
            .map(|b| b.file.as_str())
            .or_else(|| running.get(&id).map(|h| h.file.as_str()));
        if let Some(owner) = owner {
            let owner_claims = claims.iter().any(|c| c.file == owner);
            for c in claims {
                if c.file == owner {
                    let since = stored.map(|b| b.since);
                    winners.push(Winner { claim: c, since });
                    continue;
                }
                let reason = if owner_claims {
                    format!("plugin id {id:?} belongs to {owner}, the file it was first found in")
                } else {
                    format!(
                        "plugin id {id:?} belongs to {owner}, which no longer claims it; if {} \
                         replaces it, run `toru plugins unbind {id}` and rescan",
                        c.file
                    )
                };
                refused.push((c.file, reason));
            }
            continue;
        }
        // Nobody holds the id: its only claimant, else the file named after it, else nobody.
        let named = format!("{id}.binary");
        let winner = match claims.as_slice() {
            [only] => Some(only.file.clone()),
            _ => claims
                .iter()
                .find(|c| c.file == named)
                .map(|c| c.file.clone()),
        };
        let files: Vec<String> = claims.iter().map(|c| c.file.clone()).collect();
        for c in claims {
            if winner.as_ref() == Some(&c.file) {
                winners.push(Winner {
                    claim: c,
                    since: None,
                });
                continue;
            }
            let reason = if winner.is_some() {
                format!("plugin id {id:?} belongs to {named}, the file named after it")
            } else {
                let others: Vec<&str> = files
                    .iter()
                    .filter(|f| **f != c.file)
                    .map(String::as_str)
                    .collect();
                format!(
                    "plugin id {id:?} is also claimed by {}, and none of them is named {named}: \
                     remove all but one",
                    others.join(", ")
                )
            };
            refused.push((c.file, reason));
        }
    }
    winners
}

/// Which of the `contenders` for `route` keeps it: the one serving it, else the one bound first,
/// else none. Accepted and refused claims go to `out`.
fn resolve_route(
    route: &str,
    contenders: Vec<Winner>,
    running: &BTreeMap<String, Holder>,
    now: DateTime<Utc>,
    out: &mut Resolution,
) {
    let serving = contenders.iter().position(|w| {
        running
            .get(w.claim.id())
            .is_some_and(|h| h.route == route && h.file == w.claim.file)
    });
    let keeper = if contenders.len() == 1 {
        Some(0)
    } else if serving.is_some() {
        serving
    } else {
        let oldest = contenders.iter().filter_map(|w| w.since).min();
        let first: Vec<usize> = contenders
            .iter()
            .enumerate()
            .filter(|(_, w)| w.since.is_some() && w.since == oldest)
            .map(|(i, _)| i)
            .collect();
        (first.len() == 1).then(|| first[0])
    };
    let names: Vec<String> = contenders
        .iter()
        .map(|w| format!("{} ({})", w.claim.id(), w.claim.file))
        .collect();
    for (i, w) in contenders.into_iter().enumerate() {
        if Some(i) == keeper {
            let bind = w.since.is_none().then(|| PluginBinding {
                file: w.claim.file.clone(),
                since: now,
                key_id: None,
            });
            out.accepted.push(Accepted {
                claim: w.claim,
                bind,
            });
            continue;
        }
        let reason = match keeper {
            Some(k) => format!("route {route:?} belongs to plugin {}", names[k]),
            None => {
                let others: Vec<&str> = names
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, n)| n.as_str())
                    .collect();
                format!(
                    "route {route:?} is also claimed by {}, and none of them held it first: \
                     remove all but one",
                    others.join(", ")
                )
            }
        };
        out.refused.push((w.claim.file, reason));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use toru_plugin_api::protocol::ProtocolVersion;

    fn claim(file: &str, id: &str, route: &str) -> Claim {
        Claim {
            file: file.into(),
            found: Discovered {
                binary: PathBuf::from("/plugins").join(file),
                metadata: PluginMetadata {
                    id: id.into(),
                    name: "n".into(),
                    version: "1".into(),
                    author: None,
                    icon: "x".into(),
                    route: route.into(),
                    protocol: Some("1.1".into()),
                },
                protocol: ProtocolVersion::V1_1,
            },
            fresh: true,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn bound(pairs: &[(&str, &str, i64)]) -> BTreeMap<String, PluginBinding> {
        pairs
            .iter()
            .map(|(id, file, since)| {
                (
                    id.to_string(),
                    PluginBinding {
                        file: file.to_string(),
                        since: at(*since),
                        key_id: None,
                    },
                )
            })
            .collect()
    }

    fn running(triples: &[(&str, &str, &str)]) -> BTreeMap<String, Holder> {
        triples
            .iter()
            .map(|(id, file, route)| {
                (
                    id.to_string(),
                    Holder {
                        file: file.to_string(),
                        route: route.to_string(),
                    },
                )
            })
            .collect()
    }

    /// (file, gets a new binding) of the accepted claims.
    fn outcome(r: &Resolution) -> Vec<(String, bool)> {
        r.accepted
            .iter()
            .map(|a| (a.claim.file.clone(), a.bind.is_some()))
            .collect()
    }

    fn accepted(r: &Resolution) -> Vec<&str> {
        r.accepted.iter().map(|a| a.claim.file.as_str()).collect()
    }

    fn reason<'a>(r: &'a Resolution, file: &str) -> &'a str {
        r.refused
            .iter()
            .find(|(f, _)| f == file)
            .map(|(_, why)| why.as_str())
            .unwrap_or_else(|| panic!("{file} not refused: {r:?}"))
    }

    #[test]
    fn a_bound_id_stays_with_its_file_whatever_the_order() {
        let b = bound(&[("hello", "hello.binary", 1)]);
        for claims in [
            vec![
                claim("aaa.binary", "hello", "/a"),
                claim("hello.binary", "hello", "/hello"),
            ],
            vec![
                claim("hello.binary", "hello", "/hello"),
                claim("zzz.binary", "hello", "/z"),
            ],
        ] {
            let thief = claims
                .iter()
                .find(|c| c.file != "hello.binary")
                .unwrap()
                .file
                .clone();
            let r = resolve(claims, &b, &BTreeMap::new(), at(9));
            assert_eq!(outcome(&r), [("hello.binary".to_string(), false)]);
            assert!(
                reason(&r, &thief).contains("belongs to hello.binary"),
                "{r:?}"
            );
        }
        // Running but not yet persisted (the store refused the write): the same.
        let r = resolve(
            vec![
                claim("aaa.binary", "hello", "/a"),
                claim("hello.binary", "hello", "/hello"),
            ],
            &BTreeMap::new(),
            &running(&[("hello", "hello.binary", "/hello")]),
            at(9),
        );
        assert_eq!(outcome(&r), [("hello.binary".to_string(), true)]);
    }

    #[test]
    fn a_bound_id_whose_file_is_gone_goes_to_nobody_until_unbound() {
        let b = bound(&[("hello", "hello.binary", 1)]);
        let r = resolve(
            vec![claim("moved.binary", "hello", "/hello")],
            &b,
            &BTreeMap::new(),
            at(9),
        );
        assert!(r.accepted.is_empty());
        assert!(reason(&r, "moved.binary").contains("toru plugins unbind hello"));
        // Unbound, the only claimant gets it and a binding.
        let r = resolve(
            vec![claim("moved.binary", "hello", "/hello")],
            &BTreeMap::new(),
            &BTreeMap::new(),
            at(9),
        );
        assert_eq!(outcome(&r), [("moved.binary".to_string(), true)]);
        assert_eq!(r.accepted[0].bind.as_ref().unwrap().since, at(9));
    }

    #[test]
    fn a_new_id_goes_to_the_file_named_after_it_or_to_nobody() {
        let none = BTreeMap::new();
        let r = resolve(
            vec![
                claim("aaa.binary", "hello", "/a"),
                claim("hello.binary", "hello", "/hello"),
            ],
            &none,
            &none_running(),
            at(9),
        );
        assert_eq!(accepted(&r), ["hello.binary"]);
        assert!(reason(&r, "aaa.binary").contains("named after it"));

        let r = resolve(
            vec![
                claim("one.binary", "x", "/one"),
                claim("two.binary", "x", "/two"),
            ],
            &none,
            &none_running(),
            at(9),
        );
        assert!(r.accepted.is_empty());
        assert!(reason(&r, "one.binary").contains("two.binary"));
        assert!(reason(&r, "two.binary").contains("one.binary"));
    }

    fn none_running() -> BTreeMap<String, Holder> {
        BTreeMap::new()
    }

    #[test]
    fn a_contested_route_stays_with_who_serves_it_or_was_bound_first() {
        let b = bound(&[("a", "a.binary", 5), ("b", "b.binary", 1)]);
        let claims = || vec![claim("a.binary", "a", "/r"), claim("b.binary", "b", "/r")];
        // Serving it wins over an older binding.
        let r = resolve(claims(), &b, &running(&[("a", "a.binary", "/r")]), at(9));
        assert_eq!(accepted(&r), ["a.binary"]);
        assert!(reason(&r, "b.binary").contains("belongs to plugin a (a.binary)"));
        // Else the older binding.
        let r = resolve(claims(), &b, &none_running(), at(9));
        assert_eq!(accepted(&r), ["b.binary"]);
        // A newcomer never takes a route from a bound plugin, whatever its name sorts as.
        let r = resolve(
            vec![
                claim("0.binary", "zero", "/r"),
                claim("b.binary", "b", "/r"),
            ],
            &b,
            &none_running(),
            at(9),
        );
        assert_eq!(outcome(&r), [("b.binary".to_string(), false)]);
        // Two newcomers: neither.
        let r = resolve(claims(), &BTreeMap::new(), &none_running(), at(9));
        assert!(r.accepted.is_empty());
        assert!(reason(&r, "a.binary").contains("b (b.binary)"));
    }

    #[test]
    fn a_refused_route_leaves_the_id_unbound() {
        let b = bound(&[("b", "b.binary", 1)]);
        let r = resolve(
            vec![claim("a.binary", "a", "/r"), claim("b.binary", "b", "/r")],
            &b,
            &none_running(),
            at(9),
        );
        assert!(r.accepted.iter().all(|a| a.claim.file != "a.binary"));
    }

    /// Drives `read_metadata` on real short scripts: its output, its exit, its output cap, and
    /// that what it leaves behind is killed with its group once it exits.
    #[tokio::test]
    async fn read_metadata_validates_and_kills_what_the_run_left_behind() {
        use std::os::unix::fs::PermissionsExt;
        let iso = super::super::isolation::HostIsolation::new(&crate::config::Config::default());
        let dir = std::env::temp_dir().join(format!("toru-disco-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let t = Duration::from_secs(60);
        let ok = script(
            "ok.binary",
            r#"echo '{"id":"ok","name":"Ok","version":"1","icon":"x","route":"/ok"}'"#,
        );
        let found = read_metadata(&ok, t, &iso).await.unwrap();
        assert_eq!(found.metadata.id, "ok");
        let fails = script("fails.binary", "exit 3");
        assert!(
            read_metadata(&fails, t, &iso)
                .await
                .unwrap_err()
                .contains("code 3")
        );
        let chatty = script("chatty.binary", "head -c 70000 /dev/zero");
        assert!(
            read_metadata(&chatty, t, &iso)
                .await
                .unwrap_err()
                .contains("more than")
        );
        // A child that keeps the pipe open would make the read wait for the timeout (a minute
        // here, and an error); it is killed with its group when the leader exits, so the read
        // ends and the run succeeds.
        let leaves = script(
            "leaves.binary",
            r#"sleep 100000 &
echo '{"id":"leaves","name":"L","version":"1","icon":"x","route":"/l"}'"#,
        );
        assert_eq!(
            read_metadata(&leaves, t, &iso).await.unwrap().metadata.id,
            "leaves"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
