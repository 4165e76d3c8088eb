//! The plugin's Landlock ruleset, built in the parent with the `landlock` crate (best effort: on a
//! kernel without Landlock, or with an older ABI, it does what the kernel offers), and the "cover"
//! that turns "everything but the hidden paths" into rules.
//!
//! Landlock only allows (a rule grants rights on a file hierarchy); it cannot deny a subtree of a
//! granted one. So "read and execute everything except `hidden`" is spelled as [`cover`]: walk
//! down from `/` along the hidden paths' ancestors and grant every sibling met on the way. The
//! ancestors themselves get no rule (they cannot be listed: a right on a directory covers all
//! beneath it, hidden paths included); going through them to a granted path still works, as
//! Landlock does not restrict path traversal.
//!
//! Handled rights: every filesystem right up to ABI 9 (what the kernel offers of them), and on
//! ABI 6+ the signal scope (no signals to processes outside the plugin's domain — the host and
//! other plugins). The child only calls `landlock_restrict_self` on the descriptor made here
//! (`sys::PreExec`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use ::landlock::{
    ABI, Access, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, Scope,
};

use super::{FsRules, Protection};

/// The newest ABI whose rights were checked with this code. Later ABIs' rights stay unhandled
/// (allowed), as the crate advises: a right nobody reviewed must not start refusing things.
const VETTED_ABI: ABI = ABI::V9;

/// Reading, listing, executing, and connecting to Unix sockets (ABI 9) — what the cover grants.
fn read_exec() -> BitFlags<AccessFs> {
    AccessFs::from_read(VETTED_ABI) | AccessFs::ResolveUnix
}

/// Every right.
fn read_write() -> BitFlags<AccessFs> {
    AccessFs::from_all(VETTED_ABI)
}

/// The paths under `root` whose whole hierarchy may be granted while every path of `hidden` stays
/// out: `[root]` when nothing hidden lies under it, nothing when `root` itself is hidden. Symbolic
/// links are never granted: what they point to is granted (or not) where it really lives, and
/// path resolution through a link needs no right. `hidden` should be canonical (no `..`, no
/// links); a directory that cannot be listed is left out (not readable: the safe side).
pub(crate) fn cover(root: &Path, hidden: &[PathBuf]) -> Vec<PathBuf> {
    let hidden: Vec<&Path> = hidden
        .iter()
        .map(PathBuf::as_path)
        .filter(|h| h.starts_with(root))
        .collect();
    if hidden.contains(&root) {
        return Vec::new();
    }
    if hidden.is_empty() {
        return vec![root.to_path_buf()];
    }
    let mut out = Vec::new();
    walk(root, &hidden, &mut out);
    out
}

fn walk(dir: &Path, hidden: &[&Path], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if hidden.contains(&path.as_path()) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        if hidden.iter().any(|h| h.starts_with(&path)) {
            if meta.is_dir() {
                walk(&path, hidden, out);
            }
            continue;
        }
        out.push(path);
    }
}

/// What [`build`] made: the ruleset's descriptor for the child (`None`: nothing to enforce) and
/// what to report.
#[derive(Debug)]
pub(super) struct Built {
    pub(super) ruleset: Option<OwnedFd>,
    pub(super) protection: Protection,
}

/// The ruleset for `rules` (see the module doc): the cover of `/` minus `rules.hidden` read and
/// executable, `/dev` read-write (device nodes: `/dev/null`, ttys), then the grants. A grant path
/// that cannot be opened is skipped and named in the report.
pub(super) fn build(rules: &FsRules) -> Built {
    let abi = match crate::sys::landlock_abi() {
        Ok(abi) => abi,
        Err(e) => {
            let why = if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                "the kernel does not offer Landlock (built in, not enabled at boot)".to_string()
            } else {
                "the kernel does not offer Landlock".to_string()
            };
            return degraded(why);
        }
    };
    let hidden: Vec<PathBuf> = rules.hidden.iter().map(|h| canonical(h)).collect();
    let mut ruleset = match Ruleset::default()
        .handle_access(read_write())
        .and_then(|r| r.scope(Scope::Signal))
        .and_then(Ruleset::create)
    {
        Ok(r) => r,
        Err(e) => return degraded(format!("cannot create a Landlock ruleset: {e}")),
    };
    let mut skipped = Vec::new();
    for path in cover(Path::new("/"), &hidden) {
        // A cover entry that vanished or cannot be opened is simply not granted.
        let _ = grant(&mut ruleset, &path, read_exec());
    }
    let dev = Path::new("/dev");
    if hidden.iter().any(|h| h.starts_with(dev)) {
        skipped.push("/dev (a hidden path lies under it)".to_string());
    } else if let Err(e) = grant(&mut ruleset, dev, read_write()) {
        skipped.push(format!("/dev ({e})"));
    }
    for (paths, access) in [
        (&rules.read_exec, read_exec()),
        (&rules.read_write, read_write()),
    ] {
        for path in paths {
            if let Err(e) = grant(&mut ruleset, path, access) {
                skipped.push(format!("{} ({e})", path.display()));
            }
        }
    }
    let Some(fd) = Option::<OwnedFd>::from(ruleset) else {
        return degraded("the kernel does not offer Landlock".to_string());
    };
    let mut detail = format!("Landlock ABI {abi}");
    if abi >= 6 {
        detail.push_str("; signals to processes outside the plugin refused");
    }
    if !skipped.is_empty() {
        detail.push_str("; grants skipped: ");
        detail.push_str(&skipped.join(", "));
    }
    Built {
        ruleset: Some(fd),
        protection: Protection::Enforced(detail),
    }
}

fn degraded(why: String) -> Built {
    Built {
        ruleset: None,
        protection: Protection::Degraded(why),
    }
}

/// Grant `access` beneath `path` (a directory) or on it (a file: only the rights files have).
fn grant(
    ruleset: &mut RulesetCreated,
    path: &Path,
    access: BitFlags<AccessFs>,
) -> Result<(), String> {
    let fd = PathFd::new(path).map_err(|e| e.to_string())?;
    let is_dir = std::fs::metadata(path).map_err(|e| e.to_string())?.is_dir();
    let access = if is_dir {
        access
    } else {
        access & AccessFs::from_file(VETTED_ABI)
    };
    ruleset
        .add_rule(PathBeneath::new(fd, access))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `path` with links and `..` resolved; as given when it does not exist (nothing to hide yet, and
/// its ancestors are still walked around).
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> PathBuf {
        let root = std::env::temp_dir().join(format!("toru-cover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in [
            "etc",
            "var/lib/toru/packages",
            "var/lib/other",
            "var/log",
            "run/toru",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("var/lib/file"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("run"), root.join("var/run")).unwrap();
        root
    }

    #[test]
    fn the_cover_grants_every_sibling_along_the_hidden_paths_and_nothing_hidden() {
        let root = tree();
        let hidden = [root.join("var/lib/toru"), root.join("run/toru")];
        let c = cover(&root, &hidden);
        let rel: Vec<String> = c
            .iter()
            .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        // `var/run` is a link to `run`, an ancestor of a hidden path: never granted.
        assert_eq!(rel, ["etc", "var/lib/file", "var/lib/other", "var/log"]);
        for p in &c {
            for h in &hidden {
                assert!(!h.starts_with(p) && !p.starts_with(h), "{p:?} vs {h:?}");
            }
        }
        assert_eq!(cover(&root, &[]), std::slice::from_ref(&root));
        let top: Vec<PathBuf> = ["etc", "run", "var"].iter().map(|d| root.join(d)).collect();
        assert_eq!(cover(&root, &[root.join("not-there")]), top);
        assert!(cover(&root, std::slice::from_ref(&root)).is_empty());
        // A hidden path outside the walked tree changes nothing.
        assert_eq!(
            cover(&root, &[PathBuf::from("/nonexistent")]),
            std::slice::from_ref(&root)
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
