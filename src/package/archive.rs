//! Reading a `.toru` file: blocking, streaming extraction of the files its manifest names, with
//! limits ([`extract`]). Called by the package service (on a blocking thread) after the upload is
//! on disk and its signature checked; never holds the package or a file in memory.
//!
//! ```text
//! .toru = gzip( tar( manifest.toml, entry…, frontend, files…, [anything else: skipped] ) )
//! ```
//!
//! The rules, in the order a stream meets them:
//! - The file is read through gzip (one member; its CRC and length are checked at the end) into
//!   tar. The decompressed stream is counted as it is read: past `max_unpacked_bytes` reading stops
//!   with [`ArchiveError::TooLarge`], whatever the headers claim (a compression bomb stops at the
//!   cap, in a skipped entry too).
//! - Tar is read raw: GNU long names (`L`) and pax headers (`x`: only `path` is used; `size` is
//!   refused) are applied here, each read into at most [`MAX_EXTENSION_BYTES`]; pax global
//!   headers (`g`) and GNU long link names (`K`) are read and ignored.
//! - Every entry (named or not) needs a clean relative name (`manifest::check_relative_path`; a
//!   directory's one trailing `/` is allowed), must be a regular file or a directory, and must not
//!   repeat an earlier name. Symlinks, hard links, devices, FIFOs, sparse files and other types are
//!   refused ([`ArchiveError::Unsafe`]). At most `max_entries` entries (directories and skipped
//!   files count).
//! - The first entry is `manifest.toml`, a regular file of at most `max_manifest_bytes`, parsed and
//!   checked at once (anything else first is [`ArchiveError::ManifestNotFirst`], before any other
//!   check of that entry).
//! - An entry the manifest names is written below `dest` (executables `0755`, other files `0644`,
//!   directories `0755` created as needed, never through a symlink; each file created new with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW`, its contents fsync'd). Anything else is skipped and listed.
//!   Directory entries create nothing: a directory exists only if a named file needs it.
//! - At the end every named file must have been present ([`ArchiveError::Missing`]).
//!
//! **On any error `dest` is left as it is, partly written: the caller removes it.** On success
//! `dest` holds exactly the named files (and their directories) and nothing else.

// Until the package service (issue 11, the lead's part) calls the extraction report, some of this is used only by
// tests and fuzzing; the expectation turns into a warning once nothing is dead any more.
#![cfg_attr(
    not(test),
    expect(dead_code, reason = "the package service integrates these")
)]

use std::cell::Cell;
use std::collections::{BTreeSet, HashSet};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use tar::EntryType;

use super::manifest::{MANIFEST_NAME, Manifest, ManifestError, check_relative_path};

/// Largest GNU long name, pax header or pax global header read into memory, in bytes.
pub(crate) const MAX_EXTENSION_BYTES: u64 = 64 * 1024;
/// Bytes copied at a time while extracting (one heap buffer per extraction).
const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// What an extraction may use. `Default` is the spec's: 256 MiB unpacked, 1000 entries, a 64 KiB
/// manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most bytes the decompressed tar stream (headers, skipped entries and padding included)
    /// may have.
    pub(crate) max_unpacked_bytes: u64,
    /// Most entries (files, directories, skipped ones; not the pax/long-name headers).
    pub(crate) max_entries: u32,
    /// Largest `manifest.toml`.
    pub(crate) max_manifest_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_unpacked_bytes: 256 * 1024 * 1024,
            max_entries: 1000,
            max_manifest_bytes: 64 * 1024,
        }
    }
}

/// A package extracted into `dest`.
#[derive(Debug, Clone)]
pub(crate) struct Extracted {
    /// The checked manifest.
    pub(crate) manifest: Manifest,
    /// Its text as it was in the package (to store and to show).
    pub(crate) manifest_text: String,
    /// The files written, sorted (exactly the manifest's named files).
    pub(crate) files: Vec<String>,
    /// The bytes written.
    pub(crate) unpacked_bytes: u64,
    /// Entries that were in the package but not named by the manifest (not extracted), in order.
    pub(crate) skipped: Vec<String>,
}

/// Why a package could not be extracted. Each names the entry or the limit concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ArchiveError {
    /// Not gzip, not tar, a bad checksum, or a malformed header.
    #[error("the package is corrupt (not a valid gzip-compressed tar): {0}")]
    Corrupt(String),
    /// The stream ends before the archive does.
    #[error("the package is truncated: {0}")]
    Truncated(String),
    /// An entry that must not be in a package.
    #[error("entry {entry:?} is refused: {why}")]
    Unsafe {
        /// The entry's name as the archive has it (lossy UTF-8).
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// The decompressed stream passed `max_unpacked_bytes`.
    #[error("the package expands to more than {limit} bytes (the limit for unpacked packages)")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// `manifest.toml` is larger than `max_manifest_bytes`.
    #[error("manifest.toml is larger than {limit} bytes")]
    ManifestTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// More entries than `max_entries`.
    #[error("the package has more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u32,
    },
    /// The archive holds no entry at all.
    #[error("the package has no manifest.toml (the archive is empty)")]
    MissingManifest,
    /// The first entry is not `manifest.toml`.
    #[error("manifest.toml must be the first entry in the package; the first is {first:?}")]
    ManifestNotFirst {
        /// The first entry's name.
        first: String,
    },
    /// A file the manifest names is not in the package.
    #[error("{file:?} is named in manifest.toml but is not in the package")]
    Missing {
        /// The file.
        file: String,
    },
    /// The manifest is refused.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The disk (or the quota) is full.
    #[error("disk full while extracting {entry:?}")]
    DiskFull {
        /// The entry being written.
        entry: String,
        /// The cause (`ENOSPC` or `EDQUOT`).
        #[source]
        source: io::Error,
    },
    /// Reading the package or writing below `dest` failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What the readers under tar observed, to tell a limit or a read failure from corrupt data
/// (tar and gzip only pass on an `io::Error`).
#[derive(Debug, Default)]
struct StreamState {
    /// The decompressed stream went past the cap.
    over_cap: Cell<bool>,
    /// Reading the package file itself failed (`EIO`, …), not its contents.
    read_failed: Cell<bool>,
}

/// The package file; records read failures in [`StreamState::read_failed`].
struct FileReader {
    file: BufReader<File>,
    state: Rc<StreamState>,
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file
            .read(buf)
            .inspect_err(|_| self.state.read_failed.set(true))
    }
}

/// The decompressed stream, cut at the cap: reading past it fails and sets
/// [`StreamState::over_cap`].
struct Capped<R> {
    inner: R,
    left: u64,
    state: Rc<StreamState>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // At the cap: only the end of the stream is acceptable now.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.state.over_cap.set(true);
                    Err(io::Error::other("the package expands past the limit"))
                }
            };
        }
        let max = usize::try_from(self.left).map_or(buf.len(), |l| l.min(buf.len()));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Turns an error from the tar/gzip stream into what it means.
struct Classify<'a> {
    state: &'a StreamState,
    limit: u64,
}

impl Classify<'_> {
    fn err(&self, e: io::Error) -> ArchiveError {
        if self.state.over_cap.get() {
            return ArchiveError::TooLarge { limit: self.limit };
        }
        if self.state.read_failed.get() {
            return ArchiveError::Io {
                what: "cannot read the package".into(),
                source: e,
            };
        }
        let msg = e.to_string();
        if e.kind() == io::ErrorKind::UnexpectedEof
            || msg.contains("failed to read entire block")
            || msg.contains("unexpected EOF")
            || msg.contains("describing a future member")
        {
            ArchiveError::Truncated(msg)
        } else {
            ArchiveError::Corrupt(msg)
        }
    }
}

/// Extract the package at `package` into `dest` (created if missing; if it exists it must be an
/// empty directory). See the module doc for every rule. On error the caller removes `dest`.
pub(crate) fn extract(
    package: &Path,
    dest: &Path,
    limits: &Limits,
) -> Result<Extracted, ArchiveError> {
    let file = File::open(package).map_err(|source| ArchiveError::Io {
        what: format!("cannot open the package {}", package.display()),
        source,
    })?;
    prepare_dest(dest)?;
    let state = Rc::new(StreamState::default());
    let reader = Capped {
        inner: GzDecoder::new(FileReader {
            file: BufReader::new(file),
            state: state.clone(),
        }),
        left: limits.max_unpacked_bytes,
        state: state.clone(),
    };
    let classify = Classify {
        state: &state,
        limit: limits.max_unpacked_bytes,
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = Extractor {
        dest,
        limits,
        classify: &classify,
        manifest: None,
        named: BTreeSet::new(),
        seen: HashSet::new(),
        written: BTreeSet::new(),
        skipped: Vec::new(),
        unpacked_bytes: 0,
        entries: 0,
        buf: vec![0u8; COPY_BUFFER_BYTES],
    };
    {
        let entries = archive.entries().map_err(|e| classify.err(e))?.raw(true);
        let mut pending = Pending::default();
        for entry in entries {
            let mut entry = entry.map_err(|e| classify.err(e))?;
            if pending.absorb(&mut entry, &classify)? {
                continue;
            }
            let name = pending
                .name
                .take()
                .unwrap_or_else(|| entry.path_bytes().into_owned());
            pending = Pending::default();
            out.entry(name, &mut entry)?;
        }
        if pending.any() {
            return Err(ArchiveError::Truncated(
                "the archive ends after an extended header, before its entry".into(),
            ));
        }
    }
    // Read what follows the end of the tar (its zero blocks and padding) so that gzip checks its
    // CRC and length: a damaged or cut end is found here.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| classify.err(e))?;

    let Extractor {
        manifest,
        named,
        written,
        skipped,
        unpacked_bytes,
        ..
    } = out;
    let Some((manifest, manifest_text)) = manifest else {
        return Err(ArchiveError::MissingManifest);
    };
    if let Some(file) = named.difference(&written).next() {
        return Err(ArchiveError::Missing { file: file.clone() });
    }
    sync_dirs(dest, &written);
    Ok(Extracted {
        manifest,
        manifest_text,
        files: written.into_iter().collect(),
        unpacked_bytes,
        skipped,
    })
}

/// `dest` exists as an empty directory afterwards, `0755` whatever the umask (the host's on the
/// image is 0027, and the plugins' uids must reach the files: their `--metadata` runs from here and
/// the folder becomes the install folder).
fn prepare_dest(dest: &Path) -> Result<(), ArchiveError> {
    let io_err = |what: String| move |source| ArchiveError::Io { what, source };
    prepare_empty_dir(dest)?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err(format!("cannot make {} readable", dest.display())))
}

fn prepare_empty_dir(dest: &Path) -> Result<(), ArchiveError> {
    let io_err = |what: String| move |source| ArchiveError::Io { what, source };
    match DirBuilder::new().mode(0o755).create(dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dest)
                .map_err(io_err(format!("cannot inspect {}", dest.display())))?;
            let empty = meta.is_dir()
                && std::fs::read_dir(dest)
                    .map_err(io_err(format!("cannot list {}", dest.display())))?
                    .next()
                    .is_none();
            if empty {
                Ok(())
            } else {
                Err(ArchiveError::Io {
                    what: format!("cannot extract into {}", dest.display()),
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "it exists and is not an empty directory",
                    ),
                })
            }
        }
        Err(e) => Err(io_err(format!("cannot create {}", dest.display()))(e)),
    }
}

/// Extended headers seen since the last entry, applied to the next one.
#[derive(Default)]
struct Pending {
    /// From a GNU long name or a pax `path`.
    name: Option<Vec<u8>>,
    /// A GNU long link name or a pax global header was seen (ignored, but an entry must follow).
    other: bool,
}

impl Pending {
    fn any(&self) -> bool {
        self.name.is_some() || self.other
    }

    /// If `entry` is an extended header, take what it says and return `true`.
    fn absorb<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        classify: &Classify<'_>,
    ) -> Result<bool, ArchiveError> {
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname() {
            let mut name = read_extension(entry, "a GNU long name", classify)?;
            while name.last() == Some(&0) {
                name.pop();
            }
            if self.name.replace(name).is_some() {
                return Err(ArchiveError::Corrupt("two long names for one entry".into()));
            }
            return Ok(true);
        }
        if kind.is_pax_local_extensions() {
            let data = read_extension(entry, "a pax header", classify)?;
            for ext in tar::PaxExtensions::new(&data) {
                let ext = ext.map_err(|e| ArchiveError::Corrupt(format!("bad pax header: {e}")))?;
                match ext.key_bytes() {
                    b"path" => self.name = Some(ext.value_bytes().to_vec()),
                    b"size" => {
                        return Err(ArchiveError::Unsafe {
                            entry: String::from_utf8_lossy(self.name.as_deref().unwrap_or(b"?"))
                                .into_owned(),
                            why: "a pax `size` (files over 8 GiB) is not supported".into(),
                        });
                    }
                    _ => {}
                }
            }
            self.other = true;
            return Ok(true);
        }
        if kind.is_pax_global_extensions() || kind.is_gnu_longlink() {
            read_extension(entry, "an extended header", classify)?;
            self.other = true;
            return Ok(true);
        }
        Ok(false)
    }
}

/// The data of an extended header, at most [`MAX_EXTENSION_BYTES`].
fn read_extension<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    what: &str,
    classify: &Classify<'_>,
) -> Result<Vec<u8>, ArchiveError> {
    if entry.size() > MAX_EXTENSION_BYTES {
        return Err(ArchiveError::Corrupt(format!(
            "{what} of {} bytes (at most {MAX_EXTENSION_BYTES})",
            entry.size()
        )));
    }
    let mut data = Vec::new();
    entry
        .take(MAX_EXTENSION_BYTES)
        .read_to_end(&mut data)
        .map_err(|e| classify.err(e))?;
    Ok(data)
}

/// The state of one extraction.
struct Extractor<'a> {
    dest: &'a Path,
    limits: &'a Limits,
    classify: &'a Classify<'a>,
    /// Set by the first entry.
    manifest: Option<(Manifest, String)>,
    named: BTreeSet<String>,
    /// Every entry name so far (duplicates are refused).
    seen: HashSet<String>,
    written: BTreeSet<String>,
    skipped: Vec<String>,
    unpacked_bytes: u64,
    entries: u32,
    buf: Vec<u8>,
}

impl Extractor<'_> {
    /// One entry (extended headers already applied: `name` is its full name).
    fn entry<R: Read>(
        &mut self,
        name: Vec<u8>,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        let shown = String::from_utf8_lossy(&name).into_owned();
        let unsafe_entry = |why: &str| ArchiveError::Unsafe {
            entry: shown.clone(),
            why: why.to_string(),
        };
        let name = String::from_utf8(name).map_err(|_| unsafe_entry("its name is not UTF-8"))?;
        let kind = entry.header().entry_type();
        let is_dir = kind.is_dir();
        let path = if is_dir {
            name.strip_suffix('/').unwrap_or(&name)
        } else {
            &name
        };
        if self.manifest.is_none() {
            if path != MANIFEST_NAME {
                return Err(ArchiveError::ManifestNotFirst { first: shown });
            }
            if !matches!(kind, EntryType::Regular | EntryType::Continuous) {
                return Err(unsafe_entry("manifest.toml must be a regular file"));
            }
        }
        check_relative_path(path).map_err(|why| unsafe_entry(&format!("its name {why}")))?;
        if let Some(why) = refused_type(kind) {
            return Err(unsafe_entry(&why));
        }
        if !self.seen.insert(path.to_string()) {
            return Err(unsafe_entry("it appears twice in the archive"));
        }
        let Some((manifest, _)) = &self.manifest else {
            let text = self.read_manifest(entry)?;
            let manifest = Manifest::parse(&text)?;
            self.named = manifest.named_files();
            self.manifest = Some((manifest, text));
            return Ok(());
        };
        if is_dir {
            if self.named.contains(path) {
                return Err(unsafe_entry(
                    "it is a directory, but manifest.toml names it as a file",
                ));
            }
            return Ok(());
        }
        if !self.named.contains(path) {
            self.skipped.push(path.to_string());
            return Ok(());
        }
        let executable = manifest.is_executable(path);
        let path = path.to_string();
        self.write_file(&path, executable, entry)?;
        self.written.insert(path);
        Ok(())
    }

    /// The manifest's text (UTF-8, at most `max_manifest_bytes`).
    fn read_manifest<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<String, ArchiveError> {
        let limit = self.limits.max_manifest_bytes;
        if entry.size() > limit {
            return Err(ArchiveError::ManifestTooLarge { limit });
        }
        let mut bytes = Vec::new();
        entry
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| self.classify.err(e))?;
        if bytes.len() as u64 > limit {
            return Err(ArchiveError::ManifestTooLarge { limit });
        }
        if (bytes.len() as u64) < entry.size() {
            return Err(ArchiveError::Truncated("manifest.toml ends early".into()));
        }
        String::from_utf8(bytes)
            .map_err(|_| ManifestError::Toml("the file is not UTF-8 text".into()).into())
    }

    /// Write a named file below `dest`, creating its directories.
    fn write_file<R: Read>(
        &mut self,
        path: &str,
        executable: bool,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), ArchiveError> {
        let target = self.make_parents(path)?;
        let write_err = |source: io::Error| {
            if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                ArchiveError::DiskFull {
                    entry: path.to_string(),
                    source,
                }
            } else {
                ArchiveError::Io {
                    what: format!("cannot write {path:?} into {}", self.dest.display()),
                    source,
                }
            }
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&target)
            .map_err(write_err)?;
        let mut written = 0u64;
        loop {
            let n = entry
                .read(&mut self.buf)
                .map_err(|e| self.classify.err(e))?;
            if n == 0 {
                break;
            }
            file.write_all(&self.buf[..n]).map_err(write_err)?;
            written += n as u64;
        }
        if written < entry.size() {
            return Err(ArchiveError::Truncated(format!(
                "{path:?} ends after {written} of its {} bytes",
                entry.size()
            )));
        }
        let mode = if executable { 0o755 } else { 0o644 };
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        self.unpacked_bytes += written;
        Ok(())
    }

    /// Create the directories above `path` (`0755`), refusing any that is not a real directory
    /// (a symlink is never followed). Returns the file's full path.
    fn make_parents(&self, path: &str) -> Result<PathBuf, ArchiveError> {
        let mut at = self.dest.to_path_buf();
        let mut comps = path.split('/').peekable();
        while let Some(comp) = comps.next() {
            at.push(comp);
            if comps.peek().is_none() {
                break;
            }
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(ArchiveError::Unsafe {
                        entry: path.to_string(),
                        why: format!("{} is not a directory", at.display()),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let made = DirBuilder::new().mode(0o755).create(&at).and_then(|()| {
                        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755))
                    });
                    made.map_err(|source| ArchiveError::Io {
                        what: format!("cannot create the directory {}", at.display()),
                        source,
                    })?;
                }
                Err(source) => {
                    return Err(ArchiveError::Io {
                        what: format!("cannot inspect {}", at.display()),
                        source,
                    });
                }
            }
        }
        Ok(at)
    }
}

/// Why an entry of this type is refused (`None`: a regular file or a directory).
fn refused_type(kind: EntryType) -> Option<String> {
    Some(match kind {
        EntryType::Regular | EntryType::Continuous | EntryType::Directory => return None,
        EntryType::Symlink => "it is a symbolic link (packages hold only files)".into(),
        EntryType::Link => "it is a hard link (packages hold only files)".into(),
        EntryType::Char | EntryType::Block => "it is a device".into(),
        EntryType::Fifo => "it is a FIFO".into(),
        EntryType::GNUSparse => "sparse files are not supported".into(),
        other => format!(
            "its type {:?} is not supported (only files and directories)",
            char::from(other.as_byte())
        ),
    })
}

/// fsync `dest` and the directories holding the written files, so the extraction is durable
/// before the caller switches to it. Best effort: a failure here shows at the caller's own sync.
fn sync_dirs(dest: &Path, written: &BTreeSet<String>) {
    let mut dirs = BTreeSet::new();
    dirs.insert(dest.to_path_buf());
    for f in written {
        let mut p = dest.join(f);
        while p.pop() && p.starts_with(dest) && p != dest {
            dirs.insert(p.clone());
        }
    }
    for d in dirs {
        if let Ok(f) = File::open(&d) {
            let _ = f.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use toru_test_kit::TempDir;
    use toru_test_kit::package::{RawTar, kind};

    use super::*;

    const MANIFEST: &str = "id = \"t\"\nname = \"T\"\nversion = \"1.0.0\"\nauthor = \"a\"\n\
        route = \"/t\"\nmin_host = \"*\"\nfrontend = \"bundle.js\"\nfiles = [\"share/a.txt\"]\n\
        [entry]\nany = \"bin/run\"\n";

    /// A package with every named file, a directory entry and an unnamed file.
    fn good() -> RawTar {
        RawTar::new()
            .file("manifest.toml", MANIFEST.as_bytes())
            .dir("bin/")
            .exe("bin/run", b"#!/bin/sh\necho hi\n")
            .file("bundle.js", b"console.log(1)")
            .file("notes.txt", b"not named")
            .file("share/a.txt", b"a")
    }

    fn run(bytes: &[u8], limits: &Limits) -> (TempDir, Result<Extracted, ArchiveError>) {
        let t = TempDir::new("pkg").unwrap();
        let pkg = t.join("p.toru");
        std::fs::write(&pkg, bytes).unwrap();
        let r = extract(&pkg, &t.join("files"), limits);
        (t, r)
    }

    fn refused(bytes: &[u8]) -> ArchiveError {
        run(bytes, &Limits::default()).1.unwrap_err()
    }

    fn unsafe_why(e: ArchiveError) -> (String, String) {
        match e {
            ArchiveError::Unsafe { entry, why } => (entry, why),
            other => panic!("expected Unsafe, got {other:?}"),
        }
    }

    /// The destination ends up `0755` whatever it was made with: under a umask such as the
    /// image's 0027 it would be `0750`, and the plugins' uids could not reach their files (an
    /// existing empty folder stands for that here: changing the umask would race other tests).
    #[test]
    fn the_destination_is_made_readable_to_everyone() {
        let t = TempDir::new("pkg").unwrap();
        let pkg = t.join("p.toru");
        std::fs::write(&pkg, good().finish()).unwrap();
        let dest = t.join("files");
        DirBuilder::new().mode(0o700).create(&dest).unwrap();
        extract(&pkg, &dest, &Limits::default()).unwrap();
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
    }

    /// `good()` with `extra` appended before the end.
    fn good_with(extra: impl FnOnce(RawTar) -> RawTar) -> Vec<u8> {
        extra(good()).finish()
    }

    #[test]
    fn a_good_package_extracts_exactly_the_named_files_with_their_modes() {
        let (t, r) = run(&good().finish(), &Limits::default());
        let x = r.unwrap();
        assert_eq!(x.files, vec!["bin/run", "bundle.js", "share/a.txt"]);
        assert_eq!(x.skipped, vec!["notes.txt"]);
        assert_eq!(x.manifest.id, "t");
        assert_eq!(x.manifest_text, MANIFEST);
        assert_eq!(x.unpacked_bytes, 18 + 14 + 1);
        let files = t.join("files");
        let mode = |p: &str| {
            std::fs::symlink_metadata(files.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("bin/run"), 0o755);
        assert_eq!(mode("bundle.js"), 0o644);
        assert_eq!(mode("share"), 0o755);
        assert_eq!(std::fs::read(files.join("share/a.txt")).unwrap(), b"a");
        assert!(!files.join("notes.txt").exists());
        assert!(!files.join("manifest.toml").exists());
        let mut top: Vec<_> = std::fs::read_dir(&files)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(top, vec!["bin", "bundle.js", "share"]);
    }

    #[test]
    fn a_long_name_and_a_pax_path_are_followed() {
        let long = format!("share/{}/x.txt", "d".repeat(120));
        let manifest = MANIFEST.replace("share/a.txt", &long);
        let pax_record = b"22 path=share/pax.txt\n";
        let manifest = manifest.replace("files = [", "files = [\"share/pax.txt\", ");
        let bytes = RawTar::new()
            .file("manifest.toml", manifest.as_bytes())
            .exe("bin/run", b"x")
            .file("bundle.js", b"y")
            .file(&long, b"long")
            .entry(b"PaxHeader/p", b'x', b"", 0o644, pax_record)
            .file("short-name", b"pax")
            .finish();
        let (t, r) = run(&bytes, &Limits::default());
        let x = r.unwrap();
        assert!(x.files.contains(&long), "{:?}", x.files);
        assert_eq!(std::fs::read(t.join("files").join(&long)).unwrap(), b"long");
        assert_eq!(
            std::fs::read(t.join("files/share/pax.txt")).unwrap(),
            b"pax"
        );
    }

    #[test]
    fn garbage_and_a_damaged_stream_are_corrupt() {
        assert!(matches!(
            refused(b"this is not a package at all, just text"),
            ArchiveError::Corrupt(_)
        ));
        // The gzip trailer's CRC no longer matches (found after the last entry).
        let mut bytes = good().finish();
        let crc = bytes.len() - 8;
        bytes[crc] ^= 1;
        let e = refused(&bytes);
        assert!(matches!(e, ArchiveError::Corrupt(_)), "{e:?}");
        // Damaged compressed data.
        let mut bytes = good().finish();
        for b in &mut bytes[12..40] {
            *b = 0xff;
        }
        let e = refused(&bytes);
        assert!(matches!(e, ArchiveError::Corrupt(_)), "{e:?}");
        // A tar header whose checksum is wrong, in a sound gzip stream.
        let mut block = [0u8; 512];
        block[..8].copy_from_slice(b"manifest");
        block[148..156].copy_from_slice(b"0000000\0");
        let e = refused(&RawTar::new().raw(&block).finish());
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn a_cut_package_is_truncated() {
        let bytes = good().finish();
        for cut in [bytes.len() / 2, bytes.len() - 3] {
            let e = refused(&bytes[..cut]);
            assert!(
                matches!(e, ArchiveError::Truncated(_)),
                "cut at {cut}: {e:?}"
            );
        }
        // A sound gzip stream whose tar ends inside a file.
        let e = refused(
            &RawTar::new()
                .file("manifest.toml", MANIFEST.as_bytes())
                .header(b"bin/run", kind::FILE, b"", 0o755, 4096)
                .raw(b"only a little")
                .finish_without_end(),
        );
        assert!(matches!(e, ArchiveError::Truncated(_)), "{e:?}");
    }

    #[test]
    fn the_manifest_must_come_first_and_exist() {
        let e = refused(
            &RawTar::new()
                .file("bundle.js", b"x")
                .file("manifest.toml", MANIFEST.as_bytes())
                .finish(),
        );
        assert_eq!(
            e.to_string(),
            "manifest.toml must be the first entry in the package; the first is \"bundle.js\""
        );
        assert!(matches!(
            refused(&RawTar::new().finish()),
            ArchiveError::MissingManifest
        ));
        let (_, why) = unsafe_why(refused(
            &RawTar::new()
                .symlink("manifest.toml", "/etc/passwd")
                .finish(),
        ));
        assert_eq!(why, "manifest.toml must be a regular file");
        let e = refused(&RawTar::new().dir("./").file("manifest.toml", b"").finish());
        assert!(matches!(e, ArchiveError::ManifestNotFirst { first } if first == "./"));
        let e = refused(&RawTar::new().file("manifest.toml", b"id = 3").finish());
        assert!(
            matches!(e, ArchiveError::Manifest(ManifestError::Toml(_))),
            "{e:?}"
        );
    }

    #[test]
    fn traversal_and_absolute_names_are_refused_even_unnamed() {
        let (entry, why) = unsafe_why(refused(&good_with(|t| t.file("../x", b"evil"))));
        assert_eq!(entry, "../x");
        assert!(why.contains("`..`"), "{why}");
        let (entry, why) = unsafe_why(refused(&good_with(|t| t.file("/x", b"evil"))));
        assert_eq!(entry, "/x");
        assert!(why.contains("absolute"), "{why}");
        let (_, why) = unsafe_why(refused(&good_with(|t| t.file("a/./b", b"x"))));
        assert!(why.contains("`.`"), "{why}");
        let (_, why) = unsafe_why(refused(&good_with(|t| t.file("a\\b", b"x"))));
        assert!(why.contains("backslash"), "{why}");
        let e = refused(&good_with(|t| {
            t.entry(b"bad\xffname", kind::FILE, b"", 0o644, b"")
        }));
        assert!(unsafe_why(e).1.contains("UTF-8"));
        // A traversal hidden in a long name.
        let long = format!("{}/../../x", "d".repeat(120));
        let (entry, _) = unsafe_why(refused(&good_with(|t| t.file(&long, b"x"))));
        assert_eq!(entry, long);
    }

    #[test]
    fn links_devices_and_fifos_are_refused() {
        type AddEntry = fn(RawTar) -> RawTar;
        let cases: [(AddEntry, &str); 4] = [
            (|t| t.symlink("bundle2.js", "/etc/passwd"), "symbolic link"),
            (|t| t.hardlink("bundle2.js", "bundle.js"), "hard link"),
            (|t| t.device("null"), "device"),
            (|t| t.fifo("pipe"), "FIFO"),
        ];
        for (add, want) in cases {
            let (_, why) = unsafe_why(refused(&good_with(add)));
            assert!(why.contains(want), "{want}: {why}");
        }
        // A symlink in place of a named file is refused before anything is written through it.
        let bytes = RawTar::new()
            .file("manifest.toml", MANIFEST.as_bytes())
            .symlink("bin", "/tmp")
            .exe("bin/run", b"x")
            .finish();
        let (t, r) = run(&bytes, &Limits::default());
        assert!(unsafe_why(r.unwrap_err()).1.contains("symbolic link"));
        assert!(!t.join("files/bin").exists());
    }

    #[test]
    fn a_duplicate_entry_is_refused() {
        let (entry, why) = unsafe_why(refused(&good_with(|t| t.file("bundle.js", b"again"))));
        assert_eq!(entry, "bundle.js");
        assert!(why.contains("twice"), "{why}");
        let (_, why) = unsafe_why(refused(&good_with(|t| t.file("manifest.toml", b""))));
        assert!(why.contains("twice"), "{why}");
    }

    #[test]
    fn a_named_file_missing_or_a_directory_is_refused() {
        let bytes = RawTar::new()
            .file("manifest.toml", MANIFEST.as_bytes())
            .exe("bin/run", b"x")
            .file("share/a.txt", b"a")
            .finish();
        let e = refused(&bytes);
        assert_eq!(
            e.to_string(),
            "\"bundle.js\" is named in manifest.toml but is not in the package"
        );
        let (entry, why) = unsafe_why(refused(
            &RawTar::new()
                .file("manifest.toml", MANIFEST.as_bytes())
                .dir("bundle.js/")
                .finish(),
        ));
        assert_eq!(entry, "bundle.js/");
        assert!(why.contains("directory"), "{why}");
    }

    #[test]
    fn a_compression_bomb_stops_at_the_cap_named_or_skipped() {
        let limits = Limits {
            max_unpacked_bytes: 256 * 1024,
            ..Limits::default()
        };
        for name in ["bundle.js", "skipped.bin"] {
            let bytes = RawTar::new()
                .file("manifest.toml", MANIFEST.as_bytes())
                .exe("bin/run", b"x")
                .zeros(name, 8 * 1024 * 1024)
                .finish();
            assert!(bytes.len() < 64 * 1024, "{} bytes", bytes.len());
            let (t, r) = run(&bytes, &limits);
            let e = r.unwrap_err();
            assert!(
                matches!(e, ArchiveError::TooLarge { limit: 262144 }),
                "{name}: {e:?}"
            );
            if let Ok(m) = std::fs::metadata(t.join("files").join(name)) {
                assert!(m.len() <= 256 * 1024, "{} bytes written", m.len());
            }
        }
        // The same package fits a larger cap.
        let bytes = good_with(|t| t.zeros("big", 300 * 1024));
        assert!(run(&bytes, &Limits::default()).1.is_ok());
    }

    #[test]
    fn too_many_entries_and_a_large_manifest_are_refused() {
        let limits = Limits {
            max_entries: 5,
            ..Limits::default()
        };
        let e = run(&good().finish(), &limits).1.unwrap_err();
        assert!(
            matches!(e, ArchiveError::TooManyEntries { limit: 5 }),
            "{e:?}"
        );
        let limits = Limits {
            max_manifest_bytes: 50,
            ..Limits::default()
        };
        let e = run(&good().finish(), &limits).1.unwrap_err();
        assert!(
            matches!(e, ArchiveError::ManifestTooLarge { limit: 50 }),
            "{e:?}"
        );
    }

    #[test]
    fn dest_must_be_missing_or_empty() {
        let t = TempDir::new("pkg").unwrap();
        let pkg = t.join("p.toru");
        std::fs::write(&pkg, good().finish()).unwrap();
        let dest = t.join("files");
        std::fs::create_dir(&dest).unwrap();
        assert!(extract(&pkg, &dest, &Limits::default()).is_ok());
        let e = extract(&pkg, &dest, &Limits::default()).unwrap_err();
        assert!(e.to_string().starts_with("cannot extract into"), "{e}");
    }

    /// Disk full while extracting: a 64 KiB tmpfs as `dest` (needs `mount`, i.e. root; skipped
    /// with a message otherwise).
    #[test]
    fn disk_full_is_a_clear_error() {
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
            }
        }
        let t = TempDir::new("pkg").unwrap();
        let mnt = t.join("small");
        std::fs::create_dir(&mnt).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&mnt)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED disk_full_is_a_clear_error: cannot mount a tmpfs here (not root?)");
            return;
        }
        let _unmount = Unmount(mnt.clone());
        let pkg = t.join("p.toru");
        let bytes = RawTar::new()
            .file("manifest.toml", MANIFEST.as_bytes())
            .exe("bin/run", b"x")
            .zeros("bundle.js", 1024 * 1024)
            .file("share/a.txt", b"a")
            .finish();
        std::fs::write(&pkg, bytes).unwrap();
        let e = extract(&pkg, &mnt.join("files"), &Limits::default()).unwrap_err();
        assert_eq!(e.to_string(), "disk full while extracting \"bundle.js\"");
    }
}
