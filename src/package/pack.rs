//! Building a package from a directory ([`pack`]), for `toru plugin pack`: the author's side of
//! the format `archive` reads. Checks before it writes: the manifest parses, every file it names is
//! a regular file in the directory, and the executable for this machine (if the package has one)
//! prints `--metadata` that agrees with the manifest.
//!
//! The output is reproducible (same inputs, same bytes): `manifest.toml` first, then the named files
//! in sorted order, each with mode `0755` (executables) or `0644`, uid/gid 0, no user or group
//! names, mtime 0; gzip with no name and mtime 0. It is written to a temporary file beside `out`
//! and renamed into place, then signed (`OUT.minisig`) when a key is given.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use flate2::Compression;
use toru_plugin_api::protocol::PluginMetadata;

use super::manifest::{HOST_TRIPLE, MANIFEST_NAME, Manifest, ManifestError};
use super::sign::{self, SignError};

/// How long the executable may take to print `--metadata`.
pub(crate) const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Most `--metadata` output read, in bytes.
const MAX_METADATA_BYTES: u64 = 64 * 1024;
/// The `PATH` the executable's `--metadata` runs with: the one the host gives plugins (its
/// environment is otherwise empty, as on the device).
const METADATA_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Largest `manifest.toml` read (the extractor's default limit).
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// Why a directory could not be packed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PackError {
    /// The manifest is refused, or disagrees with `--metadata`.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A named file is not a regular file in the directory.
    #[error("{path:?} is named in manifest.toml but {why}")]
    File {
        /// The path from the manifest.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The executable's `--metadata` could not be read.
    #[error("{entry} --metadata: {why}")]
    Metadata {
        /// The entry that ran.
        entry: String,
        /// What went wrong.
        why: String,
    },
    /// Signing failed.
    #[error("cannot sign the package")]
    Sign(#[source] SignError),
    /// Reading the directory or writing the package failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What [`pack`] did.
#[derive(Debug, Clone)]
pub(crate) struct PackReport {
    /// The manifest packed.
    pub(crate) manifest: Manifest,
    /// The package written.
    pub(crate) out: PathBuf,
    /// Its size in bytes.
    pub(crate) bytes: u64,
    /// The files packed after the manifest, in order.
    pub(crate) files: Vec<String>,
    /// The signature written and the signing key's id, when a key was given.
    pub(crate) signature: Option<(PathBuf, String)>,
    /// The entry whose `--metadata` was checked; `None` when the package has no entry this machine
    /// can run (not checked).
    pub(crate) metadata_checked: Option<String>,
}

/// Pack `dir` (which holds `manifest.toml` and the files it names) into `out`, signed with the
/// secret key file `key` when given. See the module doc.
pub(crate) fn pack(dir: &Path, key: Option<&Path>, out: &Path) -> Result<PackReport, PackError> {
    let manifest_path = dir.join(MANIFEST_NAME);
    let manifest_text = read_manifest(&manifest_path)?;
    let manifest = Manifest::parse(&manifest_text)?;
    let files: Vec<String> = manifest.named_files().into_iter().collect();
    for f in &files {
        let why = match std::fs::metadata(dir.join(f)) {
            Ok(m) if m.is_file() => continue,
            Ok(_) => "is not a regular file".to_string(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                format!("is not in {}", dir.display())
            }
            Err(e) => format!("cannot be read: {e}"),
        };
        return Err(PackError::File {
            path: f.clone(),
            why,
        });
    }
    let metadata_checked = match manifest.entry_for(HOST_TRIPLE) {
        Ok(entry) => {
            let md = run_metadata(dir, entry)?;
            manifest.agrees_with(&md)?;
            Some(entry.to_string())
        }
        Err(_) => None,
    };
    if let Some(key) = key {
        // Load the key before writing anything: a bad key leaves no unsigned package behind.
        sign::public_key_of(key).map_err(PackError::Sign)?;
    }

    super::atomic::write_atomically(out, |w| {
        write_archive(w, dir, &manifest_text, &manifest, &files)
    })
    .map_err(|source| PackError::Io {
        what: format!("cannot write {}", out.display()),
        source,
    })?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let signature = match key {
        Some(key) => {
            let comment = format!(
                "timestamp:{}\tfile:{}\thashed",
                crate::clock::now().timestamp(),
                out.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            );
            let sig = sign::sign_file(out, key, &comment).map_err(PackError::Sign)?;
            let id = sign::public_key_of(key).map_err(PackError::Sign)?.key_id;
            Some((sig, id))
        }
        None => None,
    };
    Ok(PackReport {
        manifest,
        out: out.to_path_buf(),
        bytes,
        files,
        signature,
        metadata_checked,
    })
}

fn read_manifest(path: &Path) -> Result<String, PackError> {
    let io_err = |source| PackError::Io {
        what: format!("cannot read {}", path.display()),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(io_err)?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ManifestError::Toml(format!("larger than {MAX_MANIFEST_BYTES} bytes")).into());
    }
    String::from_utf8(bytes)
        .map_err(|_| ManifestError::Toml("the file is not UTF-8 text".into()).into())
}

/// The tar.gz stream: the manifest, then `files` (sorted) read from `dir`.
fn write_archive(
    w: &mut dyn Write,
    dir: &Path,
    manifest_text: &str,
    manifest: &Manifest,
    files: &[String],
) -> io::Result<()> {
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(w, Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let header = |size: u64, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h
    };
    tar.append_data(
        &mut header(manifest_text.len() as u64, 0o644),
        MANIFEST_NAME,
        manifest_text.as_bytes(),
    )?;
    for f in files {
        let file = File::open(dir.join(f))?;
        let size = file.metadata()?.len();
        let mode = if manifest.is_executable(f) {
            0o755
        } else {
            0o644
        };
        // `take`: a file that grows while it is read cannot overrun its header's size (one that
        // shrinks makes the tar crate fail).
        tar.append_data(&mut header(size, mode), f, file.take(size))?;
    }
    tar.into_inner()?.finish()?.flush()
}

/// Run `DIR/ENTRY --metadata` in `dir` with the plugins' environment (only `PATH` and `LANG`),
/// within [`METADATA_TIMEOUT`], and parse what it prints.
fn run_metadata(dir: &Path, entry: &str) -> Result<PluginMetadata, PackError> {
    let err = |why: String| PackError::Metadata {
        entry: entry.to_string(),
        why,
    };
    let exe =
        std::fs::canonicalize(dir.join(entry)).map_err(|e| err(format!("cannot find it: {e}")))?;
    let mut child = Command::new(&exe)
        .arg("--metadata")
        .current_dir(dir)
        .env_clear()
        .env("PATH", METADATA_PATH)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| err(format!("cannot run it: {e}")))?;
    let pid = child.id();
    let Some(stdout) = child.stdout.take() else {
        return Err(err("no output pipe".into()));
    };
    // The child is waited for on this thread; the caller waits for its message at most the
    // timeout, then kills the child (which ends the thread's read and wait).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let read = stdout.take(MAX_METADATA_BYTES + 1).read_to_end(&mut out);
        let status = child.wait();
        let _ = tx.send((read.map(|_| out), status));
    });
    let (out, status) = match rx.recv_timeout(METADATA_TIMEOUT) {
        Ok(got) => got,
        Err(_) => {
            crate::sys::signal_process(pid, libc::SIGKILL);
            return Err(err(format!(
                "did not finish within {} s",
                METADATA_TIMEOUT.as_secs()
            )));
        }
    };
    let out = out.map_err(|e| err(format!("reading its output: {e}")))?;
    let status = status.map_err(|e| err(format!("waiting for it: {e}")))?;
    if !status.success() {
        return Err(err(format!("exited with {status}")));
    }
    if out.len() as u64 > MAX_METADATA_BYTES {
        return Err(err(format!("printed more than {MAX_METADATA_BYTES} bytes")));
    }
    PluginMetadata::parse(&out).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use toru_test_kit::TempDir;
    use toru_test_kit::package::PackageDir;

    use super::*;
    use crate::package::archive::{Limits, extract};

    const MANIFEST: &str = "id = \"p\"\nname = \"P\"\nversion = \"0.2.0\"\nauthor = \"a\"\n\
        icon = \"x\"\nroute = \"/p\"\nprotocol = \"1.1\"\nmin_host = \"*\"\n\
        frontend = \"web/bundle.js\"\n[entry]\nany = \"run.sh\"\n";

    fn script(version: &str) -> String {
        format!(
            "#!/bin/sh\necho '{{\"id\":\"p\",\"name\":\"P\",\"version\":\"{version}\",\"author\":\"a\",\
             \"icon\":\"x\",\"route\":\"/p\",\"protocol\":\"1.1\"}}'\n"
        )
    }

    fn dir(t: &TempDir, manifest: &str, version: &str) -> PathBuf {
        let d = t.join("src");
        let p = PackageDir::new(&d, manifest).unwrap();
        p.file("run.sh", script(version).as_bytes()).unwrap();
        p.file("web/bundle.js", b"console.log(1)").unwrap();
        std::fs::set_permissions(d.join("run.sh"), std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn a_packed_dir_extracts_to_the_same_files_and_packs_reproducibly() {
        let t = TempDir::new("pack").unwrap();
        let d = dir(&t, MANIFEST, "0.2.0");
        let out = t.join("p.toru");
        let r = pack(&d, None, &out).unwrap();
        assert_eq!(r.files, vec!["run.sh", "web/bundle.js"]);
        assert_eq!(r.metadata_checked.as_deref(), Some("run.sh"));
        assert!(r.signature.is_none());
        let x = extract(&out, &t.join("x"), &Limits::default()).unwrap();
        assert_eq!(x.files, r.files);
        assert_eq!(x.manifest_text, MANIFEST);
        assert_eq!(
            std::fs::read(t.join("x/web/bundle.js")).unwrap(),
            b"console.log(1)"
        );
        assert_eq!(
            std::fs::metadata(t.join("x/run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        let again = t.join("again.toru");
        pack(&d, None, &again).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
        // No temporary file is left beside the package.
        let names: Vec<_> = std::fs::read_dir(&t.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn a_signed_pack_verifies() {
        let t = TempDir::new("pack").unwrap();
        let d = dir(&t, MANIFEST, "0.2.0");
        let (sk, pk) = sign::generate("k", &t.0).unwrap();
        let key = sign::PublicKey::parse(&std::fs::read_to_string(pk).unwrap()).unwrap();
        let out = t.join("p.toru");
        let r = pack(&d, Some(&sk), &out).unwrap();
        let (sig, id) = r.signature.unwrap();
        assert_eq!(id, key.key_id);
        let v = sign::verify(&out, &std::fs::read_to_string(sig).unwrap(), &[key]).unwrap();
        assert!(
            v.trusted_comment.contains("file:p.toru"),
            "{}",
            v.trusted_comment
        );
    }

    #[test]
    fn metadata_that_disagrees_is_refused_naming_both_values() {
        let t = TempDir::new("pack").unwrap();
        let d = dir(&t, MANIFEST, "0.1.0");
        let out = t.join("p.toru");
        let e = pack(&d, None, &out).unwrap_err();
        assert_eq!(
            e.to_string(),
            "manifest says version \"0.2.0\", --metadata prints \"0.1.0\""
        );
        assert!(!out.exists());
    }

    #[test]
    fn a_missing_or_odd_named_file_is_refused_before_writing() {
        let t = TempDir::new("pack").unwrap();
        let d = dir(&t, MANIFEST, "0.2.0");
        std::fs::remove_file(d.join("web/bundle.js")).unwrap();
        let out = t.join("p.toru");
        let e = pack(&d, None, &out).unwrap_err().to_string();
        assert!(
            e.starts_with("\"web/bundle.js\" is named in manifest.toml but is not in"),
            "{e}"
        );
        std::fs::create_dir(d.join("web/bundle.js")).unwrap();
        let e = pack(&d, None, &out).unwrap_err().to_string();
        assert!(e.contains("is not a regular file"), "{e}");
        assert!(!out.exists());
    }

    #[test]
    fn an_entry_for_another_machine_is_packed_without_running_it() {
        let t = TempDir::new("pack").unwrap();
        let other = if HOST_TRIPLE == "riscv64gc-unknown-linux-gnu" {
            "aarch64-unknown-linux-musl"
        } else {
            "riscv64gc-unknown-linux-gnu"
        };
        let manifest = MANIFEST.replace("any = ", &format!("{other} = "));
        let d = dir(&t, &manifest, "9.9.9");
        let r = pack(&d, None, &t.join("p.toru")).unwrap();
        assert_eq!(r.metadata_checked, None);
    }

    #[test]
    fn a_failing_metadata_run_is_reported() {
        let t = TempDir::new("pack").unwrap();
        let d = dir(&t, MANIFEST, "0.2.0");
        std::fs::write(d.join("run.sh"), "#!/bin/sh\necho not json\n").unwrap();
        let e = pack(&d, None, &t.join("p.toru")).unwrap_err().to_string();
        assert!(
            e.starts_with("run.sh --metadata: metadata is not valid JSON"),
            "{e}"
        );
        std::fs::write(d.join("run.sh"), "#!/bin/sh\nexit 3\n").unwrap();
        let e = pack(&d, None, &t.join("p.toru")).unwrap_err().to_string();
        assert!(e.contains("exited with exit status: 3"), "{e}");
    }

    #[test]
    fn a_bad_key_leaves_no_package() {
        let t = TempDir::new("pack").unwrap();
        let d = dir(&t, MANIFEST, "0.2.0");
        let bad = t.join("bad.key");
        std::fs::write(&bad, "nonsense").unwrap();
        let out = t.join("p.toru");
        let e = pack(&d, Some(&bad), &out).unwrap_err();
        assert!(matches!(e, PackError::Sign(_)), "{e:?}");
        assert!(!out.exists());
    }
}
